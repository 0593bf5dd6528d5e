// Heat and power end to end: real agents (and the server's own board) whose heat is read
// from fake sysfs trees (CARDNODE_SYSFS_ROOT) that the test rewrites while they run. A hot,
// throttled or under-voltage board gets no new task until it has cooled, and `nodes` says
// why. Waits are bounded polls of `ps --json` / `nodes --json` / /metrics, never sleeps:
// "still queued" is checked only after other work went through the same scheduler.
#include <gtest/gtest.h>

#include "tests/e2e_pool.h"

namespace cardnode::e2e {
namespace {

class Heat : public Pool {
 protected:
  // A fake sysfs tree under the test's root: thermal_zone0 and, when given, get_throttled.
  std::string fake_sysfs(const std::string& name, int millicelsius,
                         const std::string& throttled = "") {
    const std::string root = root_ + "/sysfs-" + name;
    fs::create_directories(root + "/sys/class/thermal/thermal_zone0");
    set_temperature(root, millicelsius);
    if (!throttled.empty()) set_throttled(root, throttled);
    return root;
  }
  // Whole-file replacement (rename), so a reader never sees a half-written value.
  static void put(const std::string& path, const std::string& text) {
    fs::create_directories(fs::path(path).parent_path());
    const std::string tmp = path + ".tmp";
    std::ofstream(tmp) << text;
    fs::rename(tmp, path);
  }
  static void set_temperature(const std::string& root, int millicelsius) {
    put(root + "/sys/class/thermal/thermal_zone0/temp", std::to_string(millicelsius) + "\n");
  }
  static void set_throttled(const std::string& root, const std::string& hex) {
    put(root + "/sys/devices/platform/soc/soc:firmware/get_throttled", hex + "\n");
  }

  Json node_json(const std::string& name) {
    const Json j = try_json(cli({"nodes", "--json"}));
    if (j.is_discarded() || !j.contains("nodes")) return Json();
    for (const auto& n : j["nodes"]) {
      if (n["name"] == name) return n;
    }
    return Json();
  }
  std::string skip_reason(const std::string& name) {
    const Json n = node_json(name);
    return n.is_object() ? n.value("skip_reason", std::string("(none)")) : "(absent)";
  }

  // {state, node} of each task of a job.
  std::vector<std::pair<std::string, std::string>> tasks(int job) {
    std::vector<std::pair<std::string, std::string>> out;
    const Json j = try_json(cli({"ps", std::to_string(job), "--json"}));
    if (j.is_discarded() || !j.contains("tasks")) return out;
    for (const auto& t : j["tasks"]) {
      out.emplace_back(t["state"].get<std::string>(), t.value("node", std::string()));
    }
    return out;
  }
  bool all_in(int job, const std::string& state, size_t count) {
    auto ts = tasks(job);
    return ts.size() == count &&
           std::all_of(ts.begin(), ts.end(), [&](const auto& t) { return t.first == state; });
  }
};

TEST_F(Heat, AHotAgentGetsNoTaskUntilItHasCooledAndNodesSaysWhy) {
  const std::string hot = fake_sysfs("hot", 85'000);
  const std::string cool = fake_sysfs("cool", 50'000, "0x0");
  ASSERT_NO_FATAL_FAILURE(start_pool_server());
  ASSERT_NO_FATAL_FAILURE(
      start_agent("hot", {"--label", "heat=hot"}, true, {"env", "CARDNODE_SYSFS_ROOT=" + hot}));
  ASSERT_NO_FATAL_FAILURE(start_agent("cool", {}, true, {"env", "CARDNODE_SYSFS_ROOT=" + cool}));
  ASSERT_TRUE(eventually([&] { return ready_nodes() == 2; }, 30s)) << logs();
  ASSERT_TRUE(eventually([&] { return skip_reason("hot") == "hot 85.0C"; }, 30s))
      << cli({"nodes", "--json"}).out << logs();
  const Json h = node_json("hot");
  EXPECT_EQ(h["state"], "ready");
  EXPECT_EQ(h["temperature_millicelsius"], 85'000);
  EXPECT_EQ(h["throttled"], false);
  EXPECT_EQ(h["under_voltage"], false);
  EXPECT_EQ(skip_reason("cool"), "");
  const std::string table = cli({"nodes"}).out;
  EXPECT_NE(table.find("SKIP-REASON"), std::string::npos) << table;
  EXPECT_NE(table.find("hot 85.0C"), std::string::npos) << table;
  EXPECT_NE(table.find("50.0C"), std::string::npos) << table;

  // Job 1 fits only the hot board; job 2 fits anywhere. Job 2 runs to its end on the
  // cool board while job 1 waits: the scheduler passed the hot board over turn after turn.
  Output r = cli({"run", "--constraint", "heat=hot", "--cpu", "0.1", "--mem", "16M", "--", "true"});
  ASSERT_EQ(r.code, 0) << r.err;
  r = cli({"run", "--count", "6", "--cpu", "0.1", "--mem", "16M", "--", "sh", "-c", "sleep 0.1"});
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_TRUE(eventually([&] { return all_in(2, "succeeded", 6); }, 60s))
      << cli({"ps", "2"}).out << logs();
  for (const auto& [state, node] : tasks(2)) EXPECT_EQ(node, "cool");
  EXPECT_TRUE(all_in(1, "queued", 1)) << cli({"ps", "1"}).out;
  EXPECT_EQ(node_json("hot")["running_tasks"], 0);
  // `ps` says why job 1 waits: the one board that would take it is hot.
  const std::string why = cli({"ps", "1"}).out;
  EXPECT_NE(why.find("waiting: "), std::string::npos) << why;
  EXPECT_NE(why.find("hot"), std::string::npos) << why;

  // Cooled, but not by the margin (80 - 5): still held, and `nodes` says how far to go.
  set_temperature(hot, 78'000);
  ASSERT_TRUE(eventually([&] { return skip_reason("hot") == "hot 78.0C, cooling to 75.0C"; }, 30s))
      << cli({"nodes", "--json"}).out;
  r = cli({"run", "--count", "4", "--cpu", "0.1", "--mem", "16M", "--", "true"});
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_TRUE(eventually([&] { return all_in(3, "succeeded", 4); }, 60s)) << cli({"ps", "3"}).out;
  for (const auto& [state, node] : tasks(3)) EXPECT_EQ(node, "cool");
  EXPECT_TRUE(all_in(1, "queued", 1)) << cli({"ps", "1"}).out;

  // Cool enough: the waiting task runs there, and the board is no longer skipped.
  set_temperature(hot, 70'000);
  ASSERT_TRUE(eventually([&] { return all_in(1, "succeeded", 1); }, 60s))
      << cli({"ps", "1"}).out << cli({"nodes"}).out << logs();
  EXPECT_EQ(tasks(1).at(0).second, "hot");
  EXPECT_EQ(skip_reason("hot"), "");
  EXPECT_EQ(node_json("hot")["temperature_millicelsius"], 70'000);
}

TEST_F(Heat, TheServersOwnBoardIsHeldWhileThrottledAndMetricsSayIt) {
  const std::string board = fake_sysfs("server", 50'000, "0x50004");
  ASSERT_NO_FATAL_FAILURE(start_server(
      {"--name", "srv", "--label", "heat=srv", "--heartbeat", "200ms", "--grace", "2s"},
      {"CARDNODE_SYSFS_ROOT=" + board}));
  ASSERT_TRUE(eventually([&] { return skip_reason("srv") == "throttled"; }, 30s))
      << cli({"nodes", "--json"}).out << slurp(root_ + "/server.log");
  const Json n = node_json("srv");
  EXPECT_EQ(n["throttled"], true);
  EXPECT_EQ(n["under_voltage"], false);
  EXPECT_EQ(n["temperature_millicelsius"], 50'000);
  std::string text = http_get(metrics_addr_, "/metrics");
  EXPECT_EQ(metric(text, "cardnode_node_throttled"), 1) << text;
  EXPECT_EQ(metric(text, "cardnode_node_under_voltage"), 0) << text;
  EXPECT_EQ(metric(text, "cardnode_node_temperature_celsius"), 50) << text;

  Output r = cli({"run", "--constraint", "heat=srv", "--cpu", "0.1", "--mem", "16M", "--", "true"});
  ASSERT_EQ(r.code, 0) << r.err;
  // Under-voltage too now: the stronger reason shows.
  set_throttled(board, "0x50005");
  ASSERT_TRUE(eventually([&] { return skip_reason("srv") == "under-voltage"; }, 30s))
      << cli({"nodes", "--json"}).out;
  EXPECT_TRUE(all_in(1, "queued", 1)) << cli({"ps", "1"}).out;

  // The firmware's "now" bits clear (the "has occurred" ones stay): the board takes tasks.
  set_throttled(board, "0x50000");
  ASSERT_TRUE(eventually([&] { return all_in(1, "succeeded", 1); }, 60s))
      << cli({"ps", "1"}).out << cli({"nodes"}).out << slurp(root_ + "/server.log");
  EXPECT_EQ(skip_reason("srv"), "");
  ASSERT_TRUE(eventually(
      [&] { return metric(http_get(metrics_addr_, "/metrics"), "cardnode_node_throttled") == 0; },
      30s));
}

}  // namespace
}  // namespace cardnode::e2e
