// End-to-end: argv, env values and paths are bytes on Linux (tests/e2e_util.h). A Latin-1
// file name once made `run` fail with "server closed the connection": the schema said
// `string`, which protobuf requires to be UTF-8. Raw bytes go in through execve here.
#include <gtest/gtest.h>

#include "tests/e2e_pool.h"
#include "tests/e2e_util.h"

namespace cardnode::e2e {
namespace {

const std::string kLatin1 = "caf\xe9";        // "café" in Latin-1: not UTF-8
const std::string kShown = "caf\\xe9";        // how tables show it (docs/CLI.md)
const std::string kJson = "caf\xef\xbf\xbd";  // how JSON carries it: U+FFFD
const char* kProtobufComplaint = "UTF-8";     // libprotobuf's "invalid UTF-8 data"

// The job's command, name and first task through `ps`, `ps --json` and `ps JOB --json`.
void expect_listed_escaped(Cluster* t, uint64_t id, const std::string& name_json) {
  Output table = t->cli({"ps"});
  ASSERT_EQ(table.code, 0) << table.err;
  EXPECT_NE(table.out.find("printf %s " + kShown), std::string::npos) << table.out;
  EXPECT_EQ(table.out.find(kLatin1), std::string::npos) << "raw bytes in the table";
  Output one = t->cli({"ps", std::to_string(id)});
  ASSERT_EQ(one.code, 0) << one.err;
  EXPECT_NE(one.out.find("printf %s " + kShown), std::string::npos) << one.out;

  Output list = t->cli({"ps", "--json"});
  ASSERT_EQ(list.code, 0) << list.err;
  Json l = json_of(list);
  ASSERT_TRUE(l.contains("jobs")) << list.out;
  const Json* job = nullptr;
  for (const auto& j : l["jobs"]) {
    if (j["id"] == id) job = &j;
  }
  ASSERT_NE(job, nullptr) << list.out;
  EXPECT_EQ((*job)["command"], Json::array({"printf", "%s", kJson}));
  EXPECT_EQ((*job)["name"], name_json);

  Output detail = t->cli({"ps", std::to_string(id), "--json"});
  ASSERT_EQ(detail.code, 0) << detail.err;
  Json d = json_of(detail);
  EXPECT_EQ(d["command"], Json::array({"printf", "%s", kJson})) << detail.out;
  EXPECT_EQ(d["tasks"][0]["state"], "succeeded") << detail.out;
}

TEST_F(Cluster, CommandEnvAndCwdThatAreNotUtf8RunAndAreShownEscaped) {
  start_server();
  Output r = cli({"run", "--wait", "--", "printf", "%s", kLatin1});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(cli({"logs", "1"}).out, kLatin1);  // exactly the bytes
  expect_listed_escaped(this, 1, "printf");

  // An env value and a job name that are not UTF-8.
  Output e = cli({"run", "--wait", "--name", kLatin1, "--env", "V=" + kLatin1, "--", "sh", "-c",
                  "printf '%s' \"$V\""});
  ASSERT_EQ(e.code, 0) << e.err;
  EXPECT_EQ(cli({"logs", "2"}).out, kLatin1);
  Output table = cli({"ps"});
  EXPECT_NE(table.out.find("\n2      " + kShown + " "), std::string::npos) << table.out;
  Output two = cli({"ps", "2", "--json"});
  ASSERT_EQ(two.code, 0) << two.err;
  EXPECT_EQ(json_of(two)["name"], kJson);

  // A working directory that is not UTF-8: the client sends its own.
  const std::string dir = root_ + "/" + kLatin1;
  ASSERT_TRUE(fs::create_directory(dir));
  char here[4096];
  ASSERT_NE(getcwd(here, sizeof(here)), nullptr);
  ASSERT_EQ(chdir(dir.c_str()), 0);
  Output c = cli({"run", "--wait", "--", "sh", "-c", "pwd"});
  ASSERT_EQ(chdir(here), 0);
  ASSERT_EQ(c.code, 0) << c.err;
  EXPECT_EQ(cli({"logs", "3"}).out, dir + "\n");

  EXPECT_EQ(slurp(root_ + "/server.log").find(kProtobufComplaint), std::string::npos)
      << slurp(root_ + "/server.log");
}

// An env name must be a protobuf string (UTF-8) and a name execve can set: the client says
// so in one line, exits 2 and sends nothing.
TEST_F(Cluster, ClientRefusesABadEnvNameAndSendsNothing) {
  auto expect_refused = [&](const Output& o, const std::string& words) {
    EXPECT_EQ(o.code, 2) << o.err;
    EXPECT_EQ(std::count(o.err.begin(), o.err.end(), '\n'), 1) << o.err;
    EXPECT_NE(o.err.find(words), std::string::npos) << o.err;
  };
  // No server yet: the refusal comes before any attempt to connect.
  expect_refused(cli({"run", "--env", kLatin1 + "=1", "--", "true"}),
                 "environment variable name '" + kShown + "' is not UTF-8");
  start_server();
  expect_refused(cli({"run", "--env", kLatin1 + "=1", "--", "true"}), "is not UTF-8");
  expect_refused(cli({"run", "--env", "=1", "--", "true"}), "name is empty");
  const std::string spec = root_ + "/spec.json";
  std::ofstream(spec) << R"({"command":["true"],"env":{"A=B":"1"}})";
  expect_refused(cli({"submit", spec}), "environment variable name 'A=B' holds '='");

  Output ps = cli({"ps", "--json"});
  ASSERT_EQ(ps.code, 0) << ps.err;
  EXPECT_EQ(json_of(ps)["jobs"].size(), 0u) << ps.out;
  EXPECT_EQ(slurp(root_ + "/server.log").find(kProtobufComplaint), std::string::npos);
}

// The agent protocol carries them as bytes too (TaskStart).
TEST_F(Pool, AnAgentRunsACommandThatIsNotUtf8) {
  ASSERT_NO_FATAL_FAILURE(start_pool_server());
  ASSERT_NO_FATAL_FAILURE(start_agent("a1"));
  ASSERT_TRUE(eventually([&] { return ready_nodes() == 1; })) << slurp(agent_log("a1"));
  Output r = cli({"run", "--wait", "--env", "V=" + kLatin1, "--", "printf", "%s", kLatin1});
  ASSERT_EQ(r.code, 0) << r.err << slurp(agent_log("a1"));
  EXPECT_EQ(cli({"logs", "1"}).out, kLatin1);
  ASSERT_NO_FATAL_FAILURE(expect_listed_escaped(this, 1, "printf"));
  EXPECT_EQ(slurp(agent_log("a1")).find(kProtobufComplaint), std::string::npos);
}

}  // namespace
}  // namespace cardnode::e2e
