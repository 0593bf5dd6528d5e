// A partition, for real: an agent in its own network namespace, joined to the server over a
// veth pair, cut off with `ip link set ... down` (this kernel has no netem) for longer than
// the grace, then let back. Needs root and iproute2; skipped with the reason otherwise.
#include <gtest/gtest.h>

#include "tests/e2e_pool.h"

namespace cardnode::e2e {
namespace {

int sh(const std::string& command) {
  int rc = std::system((command + " >/dev/null 2>&1").c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

class Partition : public Pool {
 public:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root (network namespaces)";
    if (sh("ip -V") != 0) GTEST_SKIP() << "needs iproute2 (ip)";
    Pool::SetUp();
    // Names unique per test process: parallel ctest runs do not collide.
    const int id = getpid() % 60000;
    ns_ = "cn" + std::to_string(id);
    host_if_ = "cnh" + std::to_string(id);
    const std::string ns_if = "cnn" + std::to_string(id);
    const std::string net = "10." + std::to_string(200 + id % 50) + "." + std::to_string(id % 250);
    host_ip_ = net + ".1";
    ASSERT_EQ(sh("ip netns add " + ns_), 0) << "ip netns add";
    made_ = true;
    ASSERT_EQ(sh("ip link add " + host_if_ + " type veth peer name " + ns_if), 0);
    ASSERT_EQ(sh("ip link set " + ns_if + " netns " + ns_), 0);
    ASSERT_EQ(sh("ip addr add " + host_ip_ + "/24 dev " + host_if_), 0);
    ASSERT_EQ(sh("ip link set " + host_if_ + " up"), 0);
    ASSERT_EQ(sh("ip -n " + ns_ + " addr add " + net + ".2/24 dev " + ns_if), 0);
    ASSERT_EQ(sh("ip -n " + ns_ + " link set " + ns_if + " up"), 0);
    ASSERT_EQ(sh("ip -n " + ns_ + " link set lo up"), 0);
  }
  void TearDown() override {
    if (!made_) return;
    Pool::TearDown();
    sh("ip link del " + host_if_);
    sh("ip netns del " + ns_);
  }

  // An agent whose every packet to the server crosses the veth pair.
  void start_agent_in_netns(const std::string& name) {
    start_agent(name, {}, true, {"ip", "netns", "exec", ns_});
  }
  void cut(bool down) { ASSERT_EQ(sh("ip link set " + host_if_ + (down ? " down" : " up")), 0); }

  std::string ns_, host_if_, host_ip_;
  bool made_ = false;
};

TEST_F(Partition, ACutOffAgentsTasksMoveAndItsStaleCopiesDieWhenTheLinkReturns) {
  ASSERT_NO_FATAL_FAILURE(
      start_pool_server({"--listen", host_ip_ + ":" + std::to_string(free_port())}));
  ASSERT_NO_FATAL_FAILURE(start_agent_in_netns("island"));
  ASSERT_TRUE(eventually([&] { return ready_nodes() == 1; }, 20s)) << logs();

  const std::string marker = "partition-" + std::to_string(getpid());
  Output r =
      cli({"run", "--count", "2", "--cpu", "0.5", "--", "sh", "-c", "sleep 600; : " + marker});
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_TRUE(eventually([&] { return count_with_marker(marker) == 2; }, 30s)) << logs();
  ASSERT_NO_FATAL_FAILURE(start_agent("mainland"));

  ASSERT_NO_FATAL_FAILURE(cut(true));
  // Past the grace (2 s) the island is down and its tasks run again on the mainland; the
  // island's copies run on meanwhile (edge autonomy: it cannot tell a partition from a
  // server crash).
  ASSERT_TRUE(eventually([&] { return node_state("island") == "down"; }, 20s)) << logs();
  ASSERT_TRUE(eventually([&] { return count_with_marker(marker) == 4; }, 30s))
      << cli({"ps", "1"}).out << logs();
  Json ps = json_of(cli({"ps", "1", "--json"}));
  for (const auto& t : ps["tasks"]) {
    EXPECT_EQ(t["node"], "mainland");
    EXPECT_EQ(t["attempts"], 2);
  }

  // The link returns: the island says what it runs, hears those attempts are no longer its
  // own, and kills them. Two instances remain, the mainland's.
  ASSERT_NO_FATAL_FAILURE(cut(false));
  ASSERT_TRUE(eventually([&] { return node_state("island") == "ready"; }, 30s)) << logs();
  ASSERT_TRUE(eventually([&] { return count_with_marker(marker) == 2; }, 30s)) << logs();
  Json after = json_of(cli({"ps", "1", "--json"}));
  for (const auto& t : after["tasks"]) {
    EXPECT_EQ(t["state"], "running");
    EXPECT_EQ(t["node"], "mainland");
  }
  EXPECT_EQ(cli({"cancel", "1"}).code, 0);
  ASSERT_TRUE(eventually([&] { return count_with_marker(marker) == 0; }, 20s));
}

TEST_F(Partition, AShortCutWithinTheGraceChangesNothing) {
  ASSERT_NO_FATAL_FAILURE(start_pool_server(
      {"--listen", host_ip_ + ":" + std::to_string(free_port()), "--grace", "10s"}));
  ASSERT_NO_FATAL_FAILURE(start_agent_in_netns("island"));
  ASSERT_TRUE(eventually([&] { return ready_nodes() == 1; }, 20s)) << logs();
  const std::string marker = "short-cut-" + std::to_string(getpid());
  ASSERT_EQ(cli({"run", "--", "sh", "-c", "sleep 600; : " + marker}).code, 0);
  ASSERT_TRUE(eventually([&] { return count_with_marker(marker) == 1; }, 30s)) << logs();
  ASSERT_NO_FATAL_FAILURE(cut(true));
  // Heartbeats stop; the server notices (the last one ages) but the node is not down yet.
  ASSERT_TRUE(eventually(
      [&] {
        const Json n = try_json(cli({"nodes", "--json"}));
        return !n.is_discarded() && !n["nodes"].empty() &&
               n["nodes"][0].value("last_seen_ms_ago", 0) >= 1000;
      },
      10s))
      << cli({"nodes", "--json"}).out;
  ASSERT_NO_FATAL_FAILURE(cut(false));
  ASSERT_TRUE(eventually(
      [&] {
        const Json n = try_json(cli({"nodes", "--json"}));
        return !n.is_discarded() && !n["nodes"].empty() &&
               n["nodes"][0].value("last_seen_ms_ago", 99999) < 1000;
      },
      20s));
  EXPECT_EQ(node_state("island"), "ready");
  Json ps = json_of(cli({"ps", "1", "--json"}));
  EXPECT_EQ(ps["tasks"][0]["attempts"], 1);
  EXPECT_EQ(count_with_marker(marker), 1);
  EXPECT_EQ(cli({"cancel", "1"}).code, 0);
  ASSERT_TRUE(eventually([&] { return count_with_marker(marker) == 0; }, 20s));
}

}  // namespace
}  // namespace cardnode::e2e
