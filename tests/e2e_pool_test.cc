// End-to-end across processes: a server (`--no-exec`) and agents, each its own process with
// its own data dir, on loopback — the pool of boards, on one machine. Failures are real:
// kill -9 of an agent or of the server, restarts on the same address. Waits are bounded
// polls of `ps --json` / `nodes --json`, never guessed sleeps.
//
// Heartbeats are 200 ms and the grace 2 s here (both are server flags) so that a test that
// waits for a node to be declared down waits seconds, not tens of them.
#include "tests/e2e_pool.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <set>

namespace cardnode::e2e {
namespace {

// The final view of a job's tasks: index -> {state, attempts, node}.
struct TaskView {
  std::string state, node;
  int attempts = 0;
  std::vector<std::pair<std::string, std::string>> earlier;  // {state, node}, oldest first
};
std::map<int, TaskView> tasks_of(Pool* t, int job) {
  std::map<int, TaskView> out;
  const Json j = try_json(t->cli({"ps", std::to_string(job), "--json"}));
  if (j.is_discarded() || !j.contains("tasks")) return out;
  for (const auto& task : j["tasks"]) {
    TaskView& v = out[task["index"].get<int>()];
    v = {task["state"].get<std::string>(),
         task.value("node", std::string()),
         task["attempts"].get<int>(),
         {}};
    if (task.contains("earlier")) {
      for (const auto& a : task["earlier"]) v.earlier.emplace_back(a["state"], a["node"]);
    }
  }
  return out;
}

int count_state(const std::map<int, TaskView>& tasks, const std::string& state) {
  int n = 0;
  for (const auto& [i, t] : tasks) n += t.state == state;
  return n;
}

TEST_F(Pool, ThreeAgentsShareAnArrayAndTheSurvivorsFinishAKilledOnesTasks) {
  ASSERT_NO_FATAL_FAILURE(start_pool_server());
  for (const char* name : {"a1", "a2", "a3"}) ASSERT_NO_FATAL_FAILURE(start_agent(name));
  ASSERT_TRUE(eventually([&] { return ready_nodes() == 3; })) << logs();

  // 300 tasks, small enough that all three boards hold some at once.
  Output r =
      cli({"run", "--count", "300", "--cpu", "0.1", "--mem", "16M", "--", "sh", "-c", "sleep 0.5"});
  ASSERT_EQ(r.code, 0) << r.err;
  // Every agent runs some, then a2 dies with tasks running.
  ASSERT_TRUE(eventually(
      [&] {
        std::set<std::string> nodes;
        int running_on_a2 = 0;
        for (const auto& [i, t] : tasks_of(this, 1)) {
          if (t.state == "running" || t.state == "succeeded") nodes.insert(t.node);
          running_on_a2 += t.state == "running" && t.node == "a2";
        }
        return nodes.size() == 3 && running_on_a2 > 0;
      },
      60s))
      << logs();
  kill_agent("a2", SIGKILL);

  // Grace (2 s) plus a few seconds per round of the remaining work.
  ASSERT_TRUE(eventually([&] { return count_state(tasks_of(this, 1), "succeeded") == 300; }, 90s))
      << cli({"ps", "1"}).out << logs();
  auto tasks = tasks_of(this, 1);
  int moved = 0;
  for (const auto& [i, t] : tasks) {
    EXPECT_EQ(t.state, "succeeded") << i;
    // A task that needed a second attempt got it on a survivor.
    if (t.attempts > 1) {
      ++moved;
      EXPECT_NE(t.node, "a2") << "task " << i << " ran again on the dead agent";
      // ps shows each attempt and its node: the first was lost with a2.
      ASSERT_EQ(t.earlier.size(), static_cast<size_t>(t.attempts - 1)) << i;
      EXPECT_EQ(t.earlier[0], (std::pair<std::string, std::string>{"lost", "a2"})) << i;
    }
  }
  EXPECT_GT(moved, 0) << "a2 had running tasks when it died";
  EXPECT_EQ(node_state("a2"), "down");
}

// Placement policy per job: by default small tasks pack onto one board (idle boards stay
// idle); `run --spread` puts one task on each board first.
// An agent reports each attempt's wall time with its usage (TaskOutcome.usage.wall_ms).
TEST_F(Pool, AnAgentReportsHowLongATaskRan) {
  ASSERT_NO_FATAL_FAILURE(start_pool_server());
  ASSERT_NO_FATAL_FAILURE(start_agent("a1"));
  ASSERT_TRUE(eventually([&] { return ready_nodes() == 1; })) << logs();
  Output r = cli({"run", "--wait", "--", "sleep", "0.3"});
  ASSERT_EQ(r.code, 0) << r.err << logs();
  Json job = json_of(cli({"ps", "1", "--json"}));
  const Json& t = job["tasks"][0];
  EXPECT_EQ(t["node"], "a1") << job.dump();
  ASSERT_TRUE(t.contains("duration_seconds")) << job.dump();
  EXPECT_GE(t["duration_seconds"].get<double>(), 0.3) << job.dump();
}

TEST_F(Pool, PackingFillsOneBoardAndSpreadPutsOneTaskOnEach) {
  ASSERT_NO_FATAL_FAILURE(start_pool_server());
  for (const char* name : {"a1", "a2", "a3"}) ASSERT_NO_FATAL_FAILURE(start_agent(name));
  ASSERT_TRUE(eventually([&] { return ready_nodes() == 3; })) << logs();
  auto nodes_running = [&](int job) {
    std::set<std::string> nodes;
    int running = 0;
    for (const auto& [i, t] : tasks_of(this, job)) {
      if (t.state != "running") continue;
      ++running;
      nodes.insert(t.node);
    }
    return std::pair{running, nodes};
  };
  const std::vector<std::string> task = {"--count", "3", "--cpu", "0.1", "--mem", "16M"};
  std::vector<std::string> packed = {"run"};
  packed.insert(packed.end(), task.begin(), task.end());
  packed.insert(packed.end(), {"--", "sleep", "60"});
  ASSERT_EQ(cli(packed).code, 0);
  ASSERT_TRUE(eventually([&] { return nodes_running(1).first == 3; }, 30s)) << logs();
  EXPECT_EQ(nodes_running(1).second.size(), 1u) << cli({"ps", "1"}).out;

  std::vector<std::string> spread = {"run", "--spread"};
  spread.insert(spread.end(), task.begin(), task.end());
  spread.insert(spread.end(), {"--", "sleep", "60"});
  ASSERT_EQ(cli(spread).code, 0);
  ASSERT_TRUE(eventually([&] { return nodes_running(2).first == 3; }, 30s)) << logs();
  EXPECT_EQ(nodes_running(2).second, (std::set<std::string>{"a1", "a2", "a3"}))
      << cli({"ps", "2"}).out;
  EXPECT_EQ(cli({"cancel", "1"}).code, 0);
  EXPECT_EQ(cli({"cancel", "2"}).code, 0);
}

// An agent on a board whose server (or another agent) already serves the default metrics
// address runs tasks anyway, without /metrics, and says so; an address asked for with
// --metrics-listen must bind, or the agent does not start.
TEST_F(Pool, AnAgentWhoseDefaultMetricsPortIsTakenStillRunsTasks) {
  // Hold 0.0.0.0:9742 for the test (or find it held already: taken either way).
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(9742);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0) {
    ASSERT_EQ(::listen(fd, 1), 0);
  } else if (errno != EADDRINUSE) {
    ::close(fd);
    GTEST_SKIP() << "cannot hold port 9742: " << std::strerror(errno);
  }
  ASSERT_NO_FATAL_FAILURE(start_pool_server());
  agent_default_metrics_ = true;
  ASSERT_NO_FATAL_FAILURE(start_agent("a1"));
  ASSERT_TRUE(eventually([&] { return ready_nodes() == 1; })) << logs();
  ASSERT_EQ(cli({"run", "--wait", "--", "true"}).code, 0) << logs();
  EXPECT_NE(slurp(agent_log("a1")).find("serves no /metrics"), std::string::npos) << logs();
  EXPECT_FALSE(fs::exists(agent_dir("a1") + "/metrics_addr"));

  fs::create_directories(agent_dir("a2"));
  fs::copy_file(data_ + "/token", agent_dir("a2") + "/token");
  Output asked =
      cardnode_bounded({"agent", "--join", addr_, "--data-dir", agent_dir("a2"), "--name", "a2",
                        "--no-favordynmods", "--metrics-listen", "0.0.0.0:9742"},
                       root_, 20s);
  EXPECT_EQ(asked.code, 1) << asked.err;
  EXPECT_NE(asked.err.find("9742"), std::string::npos) << asked.err;
  ::close(fd);
}

TEST_F(Pool, ServerKill9RestartsOnTheSameAddressAndNothingRunsTwice) {
  const std::string listen = "127.0.0.1:" + std::to_string(free_port());
  // The agents' reconnect backoff reaches 2 s, the pool tests' grace: a slow restart on a
  // busy machine could let the grace end before an agent is back, and its tasks would be
  // requeued as lost. This test is about the restart, not about that race: a wider grace.
  const std::vector<std::string> server = {"--listen", listen, "--grace", "8s"};
  ASSERT_NO_FATAL_FAILURE(start_pool_server(server));
  ASSERT_NO_FATAL_FAILURE(start_agent("a1"));
  ASSERT_NO_FATAL_FAILURE(start_agent("a2"));
  ASSERT_TRUE(eventually([&] { return ready_nodes() == 2; })) << logs();

  // Each task appends its index to a file once it has slept: the side effect counts runs.
  const std::string side = shared_ + "/side";
  Output r = cli({"run", "--count", "12", "--cpu", "0.1", "--mem", "16M", "--", "sh", "-c",
                  "sleep 2; echo $CARDNODE_TASK_INDEX >> " + side});
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_TRUE(eventually([&] { return count_state(tasks_of(this, 1), "running") == 12; }, 30s))
      << logs();
  stop_server(SIGKILL);
  ASSERT_NO_FATAL_FAILURE(start_pool_server(server));

  ASSERT_TRUE(eventually([&] { return count_state(tasks_of(this, 1), "succeeded") == 12; }, 60s))
      << cli({"ps", "1"}).out << logs();
  std::map<std::string, int> lines;
  std::istringstream in(slurp(side));
  for (std::string l; std::getline(in, l);) ++lines[l];
  EXPECT_EQ(lines.size(), 12u) << slurp(side);
  for (const auto& [l, n] : lines) EXPECT_EQ(n, 1) << "task " << l << " ran " << n << " times";
  for (const auto& [i, t] : tasks_of(this, 1)) EXPECT_EQ(t.attempts, 1) << i;
}

TEST_F(Pool, AgentKill9AndRestartLeavesNoUntrackedProcess) {
  ASSERT_NO_FATAL_FAILURE(start_pool_server());
  ASSERT_NO_FATAL_FAILURE(start_agent("a1"));
  ASSERT_TRUE(eventually([&] { return ready_nodes() == 1; })) << logs();
  const std::string marker = "agent-restart-" + std::to_string(getpid());
  Output r = cli({"run", "--count", "3", "--cpu", "0.1", "--mem", "16M", "--", "sh", "-c",
                  "sleep 300; : " + marker});
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_TRUE(eventually([&] { return count_with_marker(marker) == 3; }, 30s)) << logs();

  kill_agent("a1", SIGKILL);
  ASSERT_NO_FATAL_FAILURE(start_agent("a1"));
  // The restarted agent killed its previous run's tasks and reported them lost; the server
  // requeued them, so each task runs once more: three instances, never six.
  ASSERT_TRUE(eventually(
      [&] {
        auto tasks = tasks_of(this, 1);
        int second = 0;
        for (const auto& [i, t] : tasks) second += t.state == "running" && t.attempts == 2;
        return second == 3;
      },
      30s))
      << cli({"ps", "1"}).out << logs();
  ASSERT_TRUE(eventually([&] { return count_with_marker(marker) == 3; }, 10s));
  EXPECT_EQ(count_with_marker(marker), 3);

  // And a cancel leaves nothing at all.
  EXPECT_EQ(cli({"cancel", "1"}).code, 0);
  ASSERT_TRUE(eventually([&] { return count_with_marker(marker) == 0; }, 20s));
  ASSERT_TRUE(eventually([&] { return count_state(tasks_of(this, 1), "cancelled") == 3; }, 20s))
      << cli({"ps", "1"}).out;
}

TEST_F(Pool, DrainLetsRunningTasksFinishAndPlacesNothingNew) {
  ASSERT_NO_FATAL_FAILURE(start_pool_server());
  ASSERT_NO_FATAL_FAILURE(start_agent("a1"));
  ASSERT_NO_FATAL_FAILURE(start_agent("a2"));
  ASSERT_TRUE(eventually([&] { return ready_nodes() == 2; })) << logs();
  Gate gate(root_ + "/gate");
  // Two long tasks per node (2 cores each, 1 core per task), finishing when the gate opens.
  Output r = cli({"run", "--count", "4", "--", "sh", "-c", gate.wait_command()});
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_TRUE(eventually([&] { return count_state(tasks_of(this, 1), "running") == 4; }, 30s));

  Output d = cli({"drain", "a1"});
  ASSERT_EQ(d.code, 0) << d.err;
  EXPECT_EQ(node_state("a1"), "draining");
  // New work goes elsewhere only: a2 is full, so the new job waits rather than use a1.
  ASSERT_EQ(cli({"run", "--count", "2", "--", "true"}).code, 0);
  gate.open();
  ASSERT_TRUE(eventually([&] { return count_state(tasks_of(this, 2), "succeeded") == 2; }, 30s));
  for (const auto& [i, t] : tasks_of(this, 2)) EXPECT_EQ(t.node, "a2") << i;
  ASSERT_TRUE(eventually([&] { return node_state("a1") == "drained"; }, 10s));
  // Tasks that ran on a1 finished there: a drain without a deadline stops nothing.
  for (const auto& [i, t] : tasks_of(this, 1)) {
    EXPECT_EQ(t.state, "succeeded") << i;
    EXPECT_EQ(t.attempts, 1) << i;
  }

  EXPECT_EQ(cli({"drain", "a1", "--undrain"}).code, 0);
  EXPECT_EQ(node_state("a1"), "ready");
  EXPECT_NE(cli({"drain", "no-such-node"}).code, 0);
}

TEST_F(Pool, DrainWithADeadlineStopsAndRequeuesWhatStillRuns) {
  ASSERT_NO_FATAL_FAILURE(start_pool_server());
  ASSERT_NO_FATAL_FAILURE(start_agent("a1"));
  ASSERT_TRUE(eventually([&] { return ready_nodes() == 1; })) << logs();
  const std::string marker = "drain-deadline-" + std::to_string(getpid());
  Output r =
      cli({"run", "--count", "2", "--cpu", "0.5", "--", "sh", "-c", "sleep 300; : " + marker});
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_TRUE(eventually([&] { return count_with_marker(marker) == 2; }, 30s));

  ASSERT_EQ(cli({"drain", "a1", "--deadline", "1s"}).code, 0);
  // After the deadline the tasks are stopped (their whole tree) and back in the queue.
  ASSERT_TRUE(eventually([&] { return count_state(tasks_of(this, 1), "queued") == 2; }, 30s))
      << cli({"ps", "1"}).out << logs();
  ASSERT_TRUE(eventually([&] { return count_with_marker(marker) == 0; }, 20s));
  ASSERT_TRUE(eventually([&] { return node_state("a1") == "drained"; }, 10s));

  // A second board takes them.
  ASSERT_NO_FATAL_FAILURE(start_agent("a2"));
  ASSERT_TRUE(eventually([&] { return count_state(tasks_of(this, 1), "running") == 2; }, 30s))
      << logs();
  for (const auto& [i, t] : tasks_of(this, 1)) EXPECT_EQ(t.node, "a2") << i;
  EXPECT_EQ(cli({"cancel", "1"}).code, 0);
  ASSERT_TRUE(eventually([&] { return count_with_marker(marker) == 0; }, 20s));
}

TEST_F(Pool, LogsComeFromTheBoardThatRanTheTaskAndFollowPushesOutput) {
  ASSERT_NO_FATAL_FAILURE(start_pool_server());
  ASSERT_NO_FATAL_FAILURE(start_agent("a1"));
  ASSERT_TRUE(eventually([&] { return ready_nodes() == 1; })) << logs();
  ASSERT_EQ(cli({"run", "--wait", "--", "sh", "-c", "echo out; echo err >&2"}).code, 0);
  EXPECT_EQ(cli({"logs", "1"}).out, "out\n");
  EXPECT_EQ(cli({"logs", "1", "--stderr"}).out, "err\n");
  // The bytes live under the agent's data dir, not the server's.
  EXPECT_TRUE(fs::exists(agent_dir("a1") + "/logs"));

  // -f follows a running task to its end, seeing lines as they come.
  Gate gate(root_ + "/gate");
  ASSERT_EQ(
      cli({"run", "--", "sh", "-c", "echo first; " + gate.wait_command() + "; echo last"}).code, 0);
  ASSERT_TRUE(eventually([&] { return cli({"logs", "2"}).out == "first\n"; }, 20s));
  gate.open();
  Output f = cli({"logs", "-f", "2"});
  EXPECT_EQ(f.code, 0) << f.err;
  EXPECT_EQ(f.out, "first\nlast\n");

  // A board that is down says so, in one line.
  kill_agent("a1", SIGKILL);
  ASSERT_TRUE(eventually([&] { return node_state("a1") == "down"; }, 20s));
  Output down = cli({"logs", "1"});
  EXPECT_NE(down.code, 0);
  EXPECT_NE(down.err.find("down"), std::string::npos) << down.err;
  EXPECT_EQ(std::count(down.err.begin(), down.err.end(), '\n'), 1) << down.err;
}

TEST_F(Pool, ANodeNeverGetsMoreTasksThanItSaidItCanRun) {
  ASSERT_NO_FATAL_FAILURE(start_pool_server());
  ASSERT_NO_FATAL_FAILURE(start_agent("small", {"--tasks-max", "3"}));
  ASSERT_TRUE(eventually([&] { return ready_nodes() == 1; })) << logs();
  // Tiny tasks: cores and memory would allow dozens at once; the agent's limit is 3.
  Output r =
      cli({"run", "--count", "30", "--cpu", "0.01", "--mem", "4M", "--", "sh", "-c", "sleep 0.2"});
  ASSERT_EQ(r.code, 0) << r.err;
  int most = 0;
  ASSERT_TRUE(eventually(
      [&] {
        auto tasks = tasks_of(this, 1);
        most = std::max(most, count_state(tasks, "running"));
        return count_state(tasks, "succeeded") == 30;
      },
      60s))
      << cli({"ps", "1"}).out;
  EXPECT_LE(most, 3);
  EXPECT_GT(most, 0);
  // The agent's executor refuses a fourth task (exit 127, a failed attempt): one attempt
  // each means the server never sent one.
  for (const auto& [i, t] : tasks_of(this, 1)) EXPECT_EQ(t.attempts, 1) << i;
}

// Guarantee 5 across the pool: heartbeats (5 a second here) and held polls write nothing,
// on the server or on the agents, once the work is done and settled.
TEST_F(Pool, AnIdlePoolWritesNothingWhileAgentsHeartbeat) {
  ASSERT_NO_FATAL_FAILURE(start_pool_server());
  ASSERT_NO_FATAL_FAILURE(start_agent("a1"));
  ASSERT_NO_FATAL_FAILURE(start_agent("a2"));
  ASSERT_TRUE(eventually([&] { return ready_nodes() == 2; })) << logs();
  ASSERT_EQ(cli({"run", "--wait", "--count", "20", "--cpu", "0.1", "--", "true"}).code, 0);
  // Settled: the agents' acknowledged ends are forgotten in their journals, and the
  // server's counter stands still across more than a tick.
  double written = -1;
  ASSERT_TRUE(eventually(
      [&] {
        double now =
            metric(http_get(metrics_addr_, "/metrics"), "cardnode_storage_bytes_written_total");
        bool same = now == written && now > 0;
        written = now;
        if (!same) std::this_thread::sleep_for(1500ms);
        return same;
      },
      60s));
  std::this_thread::sleep_for(1500ms);  // the agents' journals settle as well (1 s turns)
  const uint64_t server_io = proc_write_bytes(server_);
  const uint64_t a1_io = proc_write_bytes(agents_["a1"]);
  const uint64_t a2_io = proc_write_bytes(agents_["a2"]);
  const std::string a1_journal = agent_dir("a1") + "/journal";
  auto journal_bytes = [&](const std::string& dir) {
    uint64_t n = 0;
    for (const auto& e : fs::recursive_directory_iterator(dir)) {
      if (e.is_regular_file()) n += e.file_size();
    }
    return n;
  };
  const uint64_t journal_before = journal_bytes(a1_journal);
  std::this_thread::sleep_for(3s);  // 15 heartbeats per agent
  EXPECT_EQ(metric(http_get(metrics_addr_, "/metrics"), "cardnode_storage_bytes_written_total"),
            written);
  EXPECT_EQ(proc_write_bytes(server_), server_io);
  EXPECT_EQ(proc_write_bytes(agents_["a1"]), a1_io);
  EXPECT_EQ(proc_write_bytes(agents_["a2"]), a2_io);
  EXPECT_EQ(journal_bytes(a1_journal), journal_before);
}

// The server's own board: more tiny tasks than its executor runs at once. The scheduler
// knows the executor's limit, so none is refused at spawn (exit 127) and burns a retry.
TEST_F(Pool, MoreTinyTasksThanTheLocalExecutorTakesAllSucceed) {
  ASSERT_NO_FATAL_FAILURE(start_server());
  Gate gate(root_ + "/gate");
  Output r = cli({"run", "--count", "1100", "--cpu", "0.001", "--mem", "1M", "--", "sh", "-c",
                  gate.wait_command()});
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_TRUE(eventually([&] { return count_state(tasks_of(this, 1), "running") == 1024; }, 120s))
      << cli({"ps", "1"}).out;
  gate.open();
  ASSERT_TRUE(eventually([&] { return count_state(tasks_of(this, 1), "succeeded") == 1100; }, 180s))
      << cli({"ps", "1"}).out;
  for (const auto& [i, t] : tasks_of(this, 1)) EXPECT_EQ(t.attempts, 1) << i;
}

// A cloned SD card: a second board with the first one's DATA_DIR/node_id. It is refused
// (and says why) while the first is alive, instead of the two displacing each other.
TEST_F(Pool, ASecondBoardWithACopiedIdentityIsRefusedAndTheFirstKeepsWorking) {
  ASSERT_NO_FATAL_FAILURE(start_pool_server());
  ASSERT_NO_FATAL_FAILURE(start_agent("first"));
  ASSERT_TRUE(eventually([&] { return ready_nodes() == 1; })) << logs();
  fs::create_directories(agent_dir("clone"));
  fs::copy_file(agent_dir("first") + "/node_id", agent_dir("clone") + "/node_id");
  ASSERT_NO_FATAL_FAILURE(start_agent("clone"));
  ASSERT_TRUE(eventually(
      [&] { return slurp(agent_log("clone")).find("node_id") != std::string::npos; }, 20s))
      << logs();
  const double records = metric(http_get(metrics_addr_, "/metrics"), "cardnode_wal_records_total");
  std::this_thread::sleep_for(1s);  // five heartbeats: the clone keeps trying, slower each time
  EXPECT_EQ(metric(http_get(metrics_addr_, "/metrics"), "cardnode_wal_records_total"), records);
  EXPECT_EQ(node_state("first"), "ready");
  EXPECT_EQ(node_state("clone"), "");
  ASSERT_EQ(cli({"run", "--wait", "--", "true"}).code, 0);
}

TEST_F(Pool, AnAgentWithTheWrongTokenIsRefusedAndChangesNothing) {
  ASSERT_NO_FATAL_FAILURE(start_pool_server());
  fs::create_directories(agent_dir("bad"));
  { std::ofstream(agent_dir("bad") + "/token") << std::string(64, 'f') << "\n"; }
  ::chmod((agent_dir("bad") + "/token").c_str(), 0600);
  ASSERT_NO_FATAL_FAILURE(start_agent("bad", {}, /*copy_token=*/false));
  // It keeps trying (backoff) but never joins.
  ASSERT_TRUE(eventually(
      [&] {
        return slurp(agent_log("bad")).find("token") != std::string::npos ||
               slurp(agent_log("bad")).find("auth") != std::string::npos;
      },
      20s))
      << slurp(agent_log("bad"));
  Json nodes = json_of(cli({"nodes", "--json"}));
  EXPECT_TRUE(nodes["nodes"].empty()) << nodes.dump();
}

}  // namespace
}  // namespace cardnode::e2e
