// End-to-end: listings of any size (tests/e2e_util.h). `ps` once failed for good when the
// job list outgrew the 4 MiB frame (18 jobs with 250 KB command lines, across restarts);
// replies are pages now, and commands are shortened in job lists.
#include <gtest/gtest.h>

#include "tests/e2e_util.h"

namespace cardnode::e2e {
namespace {

constexpr size_t kListedCommandBytesMax = 512;  // runtime/coordinator/listing.h
constexpr size_t kListedArgsMax = 16;

size_t command_bytes(const Json& job) {
  size_t n = 0;
  for (const auto& a : job["command"]) n += a.get<std::string>().size();
  return n;
}

void expect_listing_of_huge_commands(Cluster* t, size_t jobs, size_t arg_bytes, size_t args) {
  Output table = t->cli({"ps"});
  ASSERT_EQ(table.code, 0) << table.err;
  EXPECT_EQ(static_cast<size_t>(std::count(table.out.begin(), table.out.end(), '\n')), jobs + 1);
  EXPECT_LT(table.out.size(), (jobs + 1) * 200) << "commands are shortened in the table";
  EXPECT_NE(table.out.find("true aaaa"), std::string::npos) << table.out;

  Output ps = t->cli({"ps", "--json"});
  ASSERT_EQ(ps.code, 0) << ps.err;
  Json list = json_of(ps);
  ASSERT_EQ(list["jobs"].size(), jobs);
  for (size_t i = 0; i < jobs; ++i) {
    const Json& j = list["jobs"][i];
    EXPECT_EQ(j["id"], i + 1);
    for (const char* key : {"name", "state", "priority", "count", "states", "command"}) {
      EXPECT_TRUE(j.contains(key)) << key;
    }
    EXPECT_EQ(j["command_shortened"], true) << j.dump().substr(0, 200);
    EXPECT_LE(command_bytes(j), kListedCommandBytesMax);
    EXPECT_LE(j["command"].size(), kListedArgsMax);
    EXPECT_EQ(j["command"][0], "true");
  }

  // One job: its command whole, as submitted.
  Output one = t->cli({"ps", "7", "--json"});
  ASSERT_EQ(one.code, 0) << one.err;
  Json job = json_of(one);
  ASSERT_EQ(job["command"].size(), args + 1);
  EXPECT_EQ(job["command"][args].get<std::string>().size(), arg_bytes);
  EXPECT_FALSE(job.contains("command_shortened"));
  EXPECT_EQ(job["tasks"].size(), 1u);
  Output one_table = t->cli({"ps", "7"});
  EXPECT_EQ(one_table.code, 0) << one_table.err;
  EXPECT_LT(one_table.out.size(), 1000u);
}

TEST_F(Cluster, HugeCommandLinesNeverBreakListingsAcrossRestarts) {
  start_server();
  constexpr size_t kArgs = 25, kArgBytes = 10'000;  // 250 KB a job, each argument < 128 KiB
  std::string spec = root_ + "/huge.json";
  {
    std::ofstream f(spec);
    f << R"({"command":["true")";
    for (size_t i = 0; i < kArgs; ++i) f << ",\"" << std::string(kArgBytes, 'a') << "\"";
    f << R"(],"cpuMillis":100,"memBytes":"16777216"})";
  }
  constexpr size_t kJobs = 18;  // 4.5 MB of commands: more than a frame
  for (size_t i = 0; i < kJobs; ++i) {
    Output r = cli({"submit", spec});
    ASSERT_EQ(r.code, 0) << r.err;
  }
  expect_listing_of_huge_commands(this, kJobs, kArgBytes, kArgs);
  // They ran, with their whole command lines.
  auto all_succeeded = [&] {
    const Json doc = json_of(cli({"ps", "--json"}));  // outlives the loop over its jobs
    for (const auto& j : doc["jobs"]) {
      if (j["state"] != "succeeded") return false;
    }
    return true;
  };
  ASSERT_TRUE(eventually(all_succeeded, 60s)) << slurp(root_ + "/server.log");

  stop_server(SIGKILL);
  start_server();
  expect_listing_of_huge_commands(this, kJobs, kArgBytes, kArgs);
  ASSERT_EQ(stop_server(SIGTERM), 0);
  start_server();
  expect_listing_of_huge_commands(this, kJobs, kArgBytes, kArgs);
}

// A job of 200,000 tasks (the old reply stopped at 100,000): `ps JOB` reads every page.
TEST_F(Cluster, PsOfAHugeArrayListsEveryTask) {
  start_server({"--no-exec"});
  constexpr size_t kTasks = 200'000;
  Output r = cli({"run", "--count", std::to_string(kTasks), "--", "true"});
  ASSERT_EQ(r.code, 0) << r.err;
  Output ps = cli({"ps", "1", "--json"});
  ASSERT_EQ(ps.code, 0) << ps.err;
  Json job = json_of(ps);
  EXPECT_EQ(job["states"]["queued"], kTasks);
  const Json& tasks = job["tasks"];
  ASSERT_EQ(tasks.size(), kTasks);
  for (size_t i = 0; i < kTasks; ++i) {
    if (tasks[i]["index"] != i || tasks[i]["state"] != "queued") {
      FAIL() << "task " << i << ": " << tasks[i].dump();
    }
  }
  Output table = cli({"ps", "1"});
  ASSERT_EQ(table.code, 0) << table.err;
  EXPECT_EQ(static_cast<size_t>(std::count(table.out.begin(), table.out.end(), '\n')),
            kTasks + 5);  // job header and row, why it waits, a blank line, task header, tasks
  EXPECT_NE(table.out.find("\nwaiting: no board is ready\n"), std::string::npos);
  EXPECT_NE(table.out.find("\n1.199999 "), std::string::npos);
}

}  // namespace
}  // namespace cardnode::e2e
