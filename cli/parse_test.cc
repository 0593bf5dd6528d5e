#include "cli/parse.h"

#include <gtest/gtest.h>

#include <cmath>

#include "cli/commands.h"
#include "cli/job_json.h"
#include "cli/json_out.h"

namespace cardnode::cli {
namespace {

TEST(ParseSize, UnitsArePowersOf1024) {
  EXPECT_EQ(parse_size("4096").value(), 4096u);
  EXPECT_EQ(parse_size("512M").value(), 512ull << 20);
  EXPECT_EQ(parse_size("512Mi").value(), 512ull << 20);
  EXPECT_EQ(parse_size("512MB").value(), 512ull << 20);
  EXPECT_EQ(parse_size("2g").value(), 2ull << 30);
  EXPECT_EQ(parse_size("1.5G").value(), 3ull << 29);
  EXPECT_EQ(parse_size("1T").value(), 1ull << 40);
}

TEST(ParseSize, RejectsGarbage) {
  for (const char* bad : {"", "M", "12X", "-1", "0", "1e3", "1.2.3G", "99999999999T"})
    EXPECT_FALSE(parse_size(bad).has_value()) << bad;
}

TEST(ParseCpu, CoresAndMillicores) {
  EXPECT_EQ(parse_cpu("1").value(), 1000u);
  EXPECT_EQ(parse_cpu("0.5").value(), 500u);
  EXPECT_EQ(parse_cpu("250m").value(), 250u);
  EXPECT_FALSE(parse_cpu("0").has_value());
  EXPECT_FALSE(parse_cpu("two").has_value());
  EXPECT_FALSE(parse_cpu("1k").has_value());
}

TEST(ParseDuration, UnitsAndCompounds) {
  EXPECT_EQ(parse_duration_ms("90").value(), 90'000u);
  EXPECT_EQ(parse_duration_ms("90s").value(), 90'000u);
  EXPECT_EQ(parse_duration_ms("500ms").value(), 500u);
  EXPECT_EQ(parse_duration_ms("5m").value(), 300'000u);
  EXPECT_EQ(parse_duration_ms("1h30m").value(), 5'400'000u);
  for (const char* bad : {"", "s", "5x", "1h30", "0s"})
    EXPECT_FALSE(parse_duration_ms(bad).has_value()) << bad;
}

TEST(ParseTaskId, JobAndIndex) {
  auto t = parse_task_id("7").value();
  EXPECT_EQ(t.job, 7u);
  EXPECT_EQ(t.index, 0u);
  t = parse_task_id("7.12").value();
  EXPECT_EQ(t.job, 7u);
  EXPECT_EQ(t.index, 12u);
  for (const char* bad : {"", "0", "x", "7.", "7.x", ".3", "7.3.1", "-1"})
    EXPECT_FALSE(parse_task_id(bad).has_value()) << bad;
}

TEST(ParseLabel, KeyValue) {
  auto kv = parse_label("arch=aarch64").value();
  EXPECT_EQ(kv.first, "arch");
  EXPECT_EQ(kv.second, "aarch64");
  EXPECT_EQ(parse_label("k=").value().second, "");
  EXPECT_FALSE(parse_label("=v").has_value());
  EXPECT_FALSE(parse_label("novalue").has_value());
}

pb::JobDetail one_task(pb::TaskState state, int exit_code, int signal) {
  pb::JobDetail d;
  d.mutable_job()->set_id(1);
  d.mutable_job()->set_count(1);
  auto* t = d.add_tasks();
  t->set_state(state);
  t->set_exit_code(exit_code);
  t->set_signal(signal);
  return d;
}

TEST(WaitExitCode, FollowsTheBrief) {
  EXPECT_EQ(wait_exit_code(one_task(pb::TASK_SUCCEEDED, 0, 0)), 0);
  EXPECT_EQ(wait_exit_code(one_task(pb::TASK_FAILED, 3, 0)), 3);
  EXPECT_EQ(wait_exit_code(one_task(pb::TASK_FAILED, 0, 15)), 143);
  EXPECT_EQ(wait_exit_code(one_task(pb::TASK_TIMED_OUT, 0, 9)), 137);
  EXPECT_EQ(wait_exit_code(one_task(pb::TASK_CANCELLED, 0, 0)), 1);
  pb::JobDetail arr = one_task(pb::TASK_SUCCEEDED, 0, 0);
  arr.mutable_job()->set_count(2);
  arr.add_tasks()->set_state(pb::TASK_FAILED);
  arr.mutable_job()->set_state(pb::JOB_FAILED);
  EXPECT_EQ(wait_exit_code(arr), 1);
  arr.mutable_job()->set_state(pb::JOB_SUCCEEDED);
  EXPECT_EQ(wait_exit_code(arr), 0);
}

TEST(Json, JobMatchesTheStableShape) {
  pb::JobDetail d;
  auto* j = d.mutable_job();
  j->set_id(1);
  j->set_name("say \"hi\"\n");
  j->set_state(pb::JOB_FAILED);
  j->set_priority(50);
  j->set_count(1);
  (*j->mutable_states())["failed"] = 1;
  auto* t = d.add_tasks();
  t->set_state(pb::TASK_FAILED);
  t->set_exit_code(3);
  t->set_attempts(1);
  t->set_node("pi-1");
  EXPECT_EQ(
      job_json(d),
      "{\"id\":1,\"name\":\"say \\\"hi\\\"\\n\",\"state\":\"failed\",\"priority\":50,"
      "\"count\":1,\"states\":{\"failed\":1},\"command\":[],\"tasks\":[{\"index\":0,"
      "\"state\":\"failed\",\"exit_code\":3,\"signal\":0,\"attempts\":1,\"node\":\"pi-1\"}]}");
}

TEST(Json, EscapesControlBytesAndLabelKeys) {
  EXPECT_EQ(json_escape(std::string("a\x01"
                                    "b")),
            "\"a\\u0001b\"");
  pb::NodeList list;
  auto* n = list.add_nodes();
  n->set_name("pi");
  (*n->mutable_labels())["we\"ird"] = "v";
  EXPECT_NE(nodes_json(list).find("\"we\\\"ird\":\"v\""), std::string::npos);
}

// Commands and names are bytes: what is not UTF-8 becomes U+FFFD, so the output parses.
TEST(Json, BytesThatAreNotUtf8BecomeReplacementCharacters) {
  pb::JobList list;
  auto* j = list.add_jobs();
  j->set_id(1);
  j->set_name("caf\xe9");
  j->add_command("printf");
  j->add_command("caf\xe9 caf\xc3\xa9");
  const std::string out = jobs_json(list);
  EXPECT_NE(out.find("\"name\":\"caf\xef\xbf\xbd\""), std::string::npos) << out;
  EXPECT_NE(out.find("\"command\":[\"printf\",\"caf\xef\xbf\xbd caf\xc3\xa9\"]"), std::string::npos)
      << out;
}

TEST(Json, StateNamesMatchTheBrief) {
  EXPECT_STREQ(task_state_text(pb::TASK_TIMED_OUT), "timed_out");
  EXPECT_STREQ(task_state_text(pb::TASK_OOM_KILLED), "oom_killed");
  EXPECT_STREQ(job_state_text(pb::JOB_CANCELLED), "cancelled");
}

}  // namespace
}  // namespace cardnode::cli

namespace cardnode::cli {
namespace {

TEST(JobJson, ReadsEveryFieldInBothSpellings) {
  auto spec = job_spec_from_json(R"({
    "name": "render", "command": ["sh", "-c", "echo hi"], "count": 3, "cpuMillis": 500,
    "mem_bytes": "268435456", "retries": 2, "timeoutMs": 90000, "priority": 0,
    "constraints": {"arch": "aarch64"}, "after": 7, "env": {"K": "V"}, "cwd": "/tmp", "spread": true})");
  ASSERT_TRUE(spec) << spec.error().message;
  EXPECT_EQ(spec->name(), "render");
  ASSERT_EQ(spec->command_size(), 3);
  EXPECT_EQ(spec->command(2), "echo hi");
  EXPECT_EQ(spec->count(), 3u);
  EXPECT_EQ(spec->cpu_millis(), 500u);
  EXPECT_EQ(spec->mem_bytes(), 268435456u);
  EXPECT_EQ(spec->retries(), 2u);
  EXPECT_EQ(spec->timeout_ms(), 90000u);
  EXPECT_TRUE(spec->has_priority());  // 0 given is not "unset"
  EXPECT_EQ(spec->priority(), 0u);
  EXPECT_EQ(spec->constraints().at("arch"), "aarch64");
  EXPECT_EQ(spec->after(), 7u);
  EXPECT_EQ(spec->env().at("K"), "V");
  EXPECT_EQ(spec->cwd(), "/tmp");
  EXPECT_TRUE(spec->spread());
  auto minimal = job_spec_from_json(R"({"command": ["true"], "priority": null})");
  ASSERT_TRUE(minimal);
  EXPECT_FALSE(minimal->has_priority());
  EXPECT_EQ(minimal->count(), 0u);
  EXPECT_FALSE(minimal->spread());
}

TEST(JobJson, RefusesWhatIsNotAJobSpecWithTheFieldNamed) {
  const std::pair<const char*, const char*> cases[] = {
      {"", "not valid JSON"},
      {"[1]", "not a JSON object"},
      {R"({"command": ["true"], "cpus": 2})", "\"cpus\""},
      {R"({"count": -1})", "\"count\": must not be negative"},
      {R"({"count": 1.5})", "\"count\""},
      {R"({"count": 4294967296})", "\"count\": is above"},
      {R"({"count": "7x"})", "\"count\": is not a whole number"},
      {R"({"command": "true"})", "\"command\": must be an array"},
      {R"({"command": ["true", 1]})", "\"command\""},
      {R"({"env": {"K": 1}})", "\"env.K\""},
      {R"({"name": 5})", "\"name\": must be a string"},
      {R"({"spread": 1})", "\"spread\": must be true or false"},
      {R"({"cpu_millis": 1, "cpuMillis": 2})", "given twice"},
      {R"({"memBytes": "18446744073709551616"})", "\"memBytes\""},
      // 2^64 as a JSON number is a double equal to double(UINT64_MAX): it must be refused,
      // not converted (undefined behaviour, caught by UBSan in tests/fuzz/fuzz_job_json).
      {R"({"memBytes": 18446744073709551616})", "\"memBytes\": must be a whole number"},
      {R"({"timeout_ms": 1.8446744073709552e19})", "\"timeout_ms\": must be a whole number"},
  };
  for (const auto& [text, want] : cases) {
    auto spec = job_spec_from_json(text);
    ASSERT_FALSE(spec) << text;
    EXPECT_NE(spec.error().message.find(want), std::string::npos)
        << text << " -> " << spec.error().message;
  }
}

}  // namespace
}  // namespace cardnode::cli

namespace cardnode::cli {
namespace {

TEST(RoundHalfAway, MatchesLlround) {
  for (double v : {0.0, 0.4, 0.5, 0.6, 1.5, 2.5, -0.4, -0.5, -0.6, -1.5, -2.5, 999.5, 1e6 - 0.5,
                   0.49999999999999994, 123456.78, -98765.4321}) {
    EXPECT_EQ(round_half_away(v), std::llround(v)) << v;
  }
}

}  // namespace
}  // namespace cardnode::cli
