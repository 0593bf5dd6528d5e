// End-to-end: the real `cardnode` binary as a user runs it (tests/e2e_util.h).
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <atomic>
#include <deque>
#include <thread>

#include "tests/e2e_util.h"

namespace cardnode::e2e {
namespace {

TEST_F(Cluster, RunWaitLogsPsSurviveKill9) {
  start_server();
  // The exact scenario of the foundation issue.
  Output r = cardnode(
      {"run", "--data-dir", data_, "--wait", "--", "sh", "-c", "echo hello; echo oops >&2; exit 3"},
      root_);
  EXPECT_EQ(r.code, 3) << r.err;
  // A one-task run --wait shows the task's output once it ended, each stream on its own.
  EXPECT_EQ(r.out, "hello\n");
  EXPECT_NE(r.err.find("oops\n"), std::string::npos) << r.err;
  EXPECT_LT(r.err.find("oops\n"), r.err.find("cardnode: job 1 failed")) << r.err;
  Output r2 = cardnode({"--data-dir", data_, "run", "--wait", "--", "sh", "-c", "exit 5"}, root_);
  EXPECT_EQ(r2.code, 5) << r2.err;
  // The server made its token on first start, readable by its owner only.
  struct stat st {};
  ASSERT_EQ(stat((data_ + "/token").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(stat(data_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);

  Output out = cli({"logs", "1"});
  EXPECT_EQ(out.code, 0);
  EXPECT_EQ(out.out, "hello\n");
  Output err = cli({"logs", "1", "--stderr"});
  EXPECT_EQ(err.out, "oops\n");

  Output ps = cli({"ps", "1", "--json"});
  EXPECT_EQ(ps.code, 0);
  EXPECT_NE(ps.out.find("\"state\":\"failed\",\"exit_code\":3"), std::string::npos) << ps.out;
  EXPECT_NE(ps.out.find("\"id\":1,"), std::string::npos);

  // kill -9 the server; after a restart job 1 is still there with its result.
  stop_server(SIGKILL);
  start_server();
  Output ps2 = cli({"ps", "--json"});
  EXPECT_EQ(ps2.code, 0) << ps2.err;
  EXPECT_NE(ps2.out.find("{\"id\":1,"), std::string::npos) << ps2.out;
  EXPECT_NE(ps2.out.find("\"states\":{\"failed\":1}"), std::string::npos) << ps2.out;
  Output ps3 = cli({"ps", "1", "--json"});
  EXPECT_NE(ps3.out.find("\"exit_code\":3"), std::string::npos) << ps3.out;
  EXPECT_EQ(cli({"logs", "1"}).out, "hello\n");
}

TEST_F(Cluster, ArrayTasksSeeTheirIndexAndNoIdLoss) {
  start_server();
  Output r =
      cli({"run", "--count", "6", "--cpu", "0.5", "--mem", "32M", "--", "sh", "-c",
           "echo $CARDNODE_JOB_ID.$CARDNODE_TASK_INDEX/$CARDNODE_TASK_COUNT on $CARDNODE_NODE"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "1\n");  // the job id alone, once durable
  ASSERT_TRUE(eventually([&] {
    return cli({"ps", "1", "--json"}).out.find("\"state\":\"succeeded\",\"priority\"") !=
           std::string::npos;
  }));
  Output log = cli({"logs", "1.4"});
  EXPECT_EQ(log.out.rfind("1.4/6 on ", 0), 0u) << log.out;
  // Every task ran exactly once.
  Output ps = cli({"ps", "1", "--json"});
  EXPECT_NE(ps.out.find("\"states\":{\"succeeded\":6}"), std::string::npos) << ps.out;
  EXPECT_EQ(ps.out.find("\"attempts\":2"), std::string::npos) << ps.out;
}

// A short array on the server's own board runs its next tasks from standby (placed, and
// durable, while their predecessors run: docs/ARCHITECTURE.md, "Placement"), and still
// runs every task exactly once.
TEST_F(Cluster, AShortArrayStartsItsNextTasksFromStandbyAndRunsEachOnce) {
  start_server();
  const std::string seen = shared_ + "/seen";
  Output r = cli({"run", "--count", "300", "--wait", "--", "sh", "-c",
                  "echo $CARDNODE_TASK_INDEX >> " + seen});
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string metrics = http_get(metrics_addr_, "/metrics");
  EXPECT_GT(metric(metrics, "cardnode_standby_promotions_total"), 0) << metrics;
  EXPECT_EQ(metric(metrics, "cardnode_standby_promotions_total"),
            metric(metrics, "cardnode_standby_placements_total"));
  std::istringstream lines(slurp(seen));
  std::map<int, int> runs;
  for (std::string line; std::getline(lines, line);) ++runs[std::stoi(line)];
  ASSERT_EQ(runs.size(), 300u);
  for (const auto& [index, n] : runs) EXPECT_EQ(n, 1) << "task " << index;
  Output ps = cli({"ps", "1", "--json"});
  EXPECT_NE(ps.out.find("\"states\":{\"succeeded\":300}"), std::string::npos) << ps.out;
  EXPECT_EQ(ps.out.find("\"attempts\":2"), std::string::npos) << ps.out;
}

// The task also starts an escapee in a new session (out of the process group): after
// kill -9 of the server and a restart, the old attempt and its escapee are gone, and the
// new attempt is the only instance.
void kill_nine_leaves_one_instance(Cluster* t, const std::string& marker) {
  Output r = t->cli({"run", "--", "sh", "-c",
                     "setsid sh -c 'sleep 60; : " + marker + "-esc' & sleep 60; : " + marker});
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_TRUE(eventually([&] { return count_with_marker(marker + "-esc") == 1; }));
  t->stop_server(SIGKILL);
  t->start_server();
  ASSERT_TRUE(eventually([&] {
    return t->cli({"ps", "1", "--json"}).out.find("\"attempts\":2") != std::string::npos;
  }));
  // One task instance (the new attempt) with its one escapee; the old ones were killed.
  EXPECT_TRUE(eventually([&] {
    return count_with_marker(marker + "-esc") == 1 && count_with_marker(marker) == 1;
  })) << count_with_marker(marker)
      << " " << count_with_marker(marker + "-esc");
  EXPECT_EQ(t->cli({"cancel", "1"}).code, 0);
  EXPECT_TRUE(eventually(
      [&] { return count_with_marker(marker) == 0 && count_with_marker(marker + "-esc") == 0; }));
  // The processes go first; the task's end is recorded once its exit is reaped and durable.
  Output ps;
  EXPECT_TRUE(eventually([&] {
    ps = t->cli({"ps", "1", "--json"});
    return ps.out.find("\"state\":\"cancelled\"") != std::string::npos;
  })) << ps.out;
}

TEST_F(Cluster, KillNineWhileRunningRequeuesAndLeavesNoProcess) {
  start_server();
  kill_nine_leaves_one_instance(this, "cnmark-" + std::to_string(getpid()) + "-k9");
}

TEST_F(Cluster, KillNineWithoutCgroupsLeavesNoProcess) {
  setenv("CARDNODE_NO_CGROUPS", "1", 1);  // inherited by the servers this test starts
  start_server();
  unsetenv("CARDNODE_NO_CGROUPS");
  EXPECT_NE(cli({"nodes", "--json"}).out.find("\"isolation\":\"rlimit\""), std::string::npos);
  setenv("CARDNODE_NO_CGROUPS", "1", 1);
  kill_nine_leaves_one_instance(this, "cnmark-" + std::to_string(getpid()) + "-k9r");
  unsetenv("CARDNODE_NO_CGROUPS");
}

TEST_F(Cluster, CancelAndTimeoutKillTheWholeTree) {
  start_server();
  const std::string marker = "cnmark-" + std::to_string(getpid()) + "-tree";
  ASSERT_EQ(cli({"run", "--count", "2", "--cpu", "0.1", "--", "sh", "-c",
                 "sleep 60 & sleep 61 & wait; : " + marker})
                .code,
            0);
  ASSERT_TRUE(eventually([&] { return process_with_marker_exists(marker); }));
  Output c = cli({"cancel", "1"});
  EXPECT_EQ(c.code, 0) << c.err;
  EXPECT_TRUE(eventually([&] { return !process_with_marker_exists(marker); }));
  EXPECT_TRUE(eventually([&] {
    return cli({"ps", "1", "--json"}).out.find("\"states\":{\"cancelled\":2}") != std::string::npos;
  }));

  // A timeout sends SIGTERM first: sleep dies of it.
  Output t = cli({"run", "--wait", "--timeout", "300ms", "--", "sleep", "30"});
  EXPECT_EQ(t.code, 128 + SIGTERM) << t.err;
  // A task that ignores SIGTERM gets SIGKILL after the grace. On a slow machine the
  // timeout may fire before `sh` has set its trap (then SIGTERM ends it); each such
  // attempt still ends timed_out, and the next one doubles the timeout.
  int job = 2;
  Output k;
  for (int timeout_ms = 300; timeout_ms <= 9600; timeout_ms *= 2) {
    k = cli({"run", "--wait", "--timeout", std::to_string(timeout_ms) + "ms", "--", "sh", "-c",
             "trap '' TERM; sleep 30"});
    ++job;
    EXPECT_NE(cli({"ps", std::to_string(job), "--json"}).out.find("\"state\":\"timed_out\""),
              std::string::npos);
    if (k.code != 128 + SIGTERM) break;
  }
  EXPECT_EQ(k.code, 128 + SIGKILL) << k.err;
  EXPECT_NE(cli({"ps", "2", "--json"}).out.find("\"state\":\"timed_out\""), std::string::npos);
}

// `ps JOB` says why a queued task waits; `ps JOB --json` has it as "wait_reason".
TEST_F(Cluster, PsSaysWhyAQueuedTaskWaits) {
  start_server();
  ASSERT_EQ(cli({"run", "--cpu", "64", "--", "true"}).code, 0);
  EXPECT_TRUE(eventually([&] {
    return cli({"ps", "1"}).out.find("waiting: no board is big enough for a task of 64") !=
           std::string::npos;
  })) << cli({"ps", "1"}).out;
  ASSERT_EQ(cli({"run", "--constraint", "arch=armv7l-nowhere", "--", "true"}).code, 0);
  Json two = try_json(cli({"ps", "2", "--json"}));
  ASSERT_FALSE(two.is_discarded());
  EXPECT_NE(two.value("wait_reason", std::string()).find("arch=armv7l-nowhere matches no board"),
            std::string::npos)
      << two.dump();
  ASSERT_EQ(cli({"run", "--after", "1", "--", "true"}).code, 0);
  EXPECT_NE(cli({"ps", "3"}).out.find("waiting: waiting for job 1 to succeed (--after)"),
            std::string::npos)
      << cli({"ps", "3"}).out;
  // A board whose CPUs are all taken says so in `nodes`.
  Json nodes = try_json(cli({"nodes", "--json"}));
  ASSERT_FALSE(nodes.is_discarded());
  EXPECT_EQ(nodes["nodes"][0].value("skip_reason", std::string("?")), "");
  const std::string all_cpus =
      std::to_string(nodes["nodes"][0]["cpu_millis"].get<uint64_t>()) + "m";
  ASSERT_EQ(cli({"run", "--cpu", all_cpus, "--", "sleep", "60"}).code, 0);
  EXPECT_TRUE(eventually([&] {
    Json n = try_json(cli({"nodes", "--json"}));
    return !n.is_discarded() && n["nodes"][0].value("skip_reason", std::string()) == "full";
  })) << cli({"nodes"}).out;
  ASSERT_EQ(cli({"cancel", "4"}).code, 0);
  // A job that runs says nothing; nor does a listing.
  ASSERT_EQ(cli({"run", "--wait", "--", "true"}).code, 0);
  EXPECT_EQ(cli({"ps", "5"}).out.find("waiting:"), std::string::npos);
  EXPECT_EQ(cli({"ps", "--json"}).out.find("wait_reason"), std::string::npos);
}

// `run --wait` of a job that cannot start says why on stderr (once, after a second), as
// srun says a job is queued; the wait goes on, and a cancel still ends it.
TEST_F(Cluster, RunWaitSaysWhyItsJobIsQueued) {
  start_server();
  Output waiter;
  std::thread client([&] {
    waiter = run_program(
        {CARDNODE_BIN, "--data-dir", data_, "run", "--wait", "--cpu", "64", "--", "true"}, root_,
        {}, "", "waiter");
  });
  const std::string notice = "cardnode: job 1 queued: no board is big enough for a task of 64";
  // The client's own stderr file, read while it waits: no guessed time.
  const bool told = eventually(
      [&] { return slurp(root_ + "/waiter.err").find(notice) != std::string::npos; }, 60s);
  EXPECT_EQ(cli({"cancel", "1"}).code, 0);  // the wait must end either way
  client.join();
  EXPECT_TRUE(told) << slurp(root_ + "/waiter.err");
  EXPECT_NE(waiter.code, 0);
  EXPECT_NE(waiter.err.find("job 1 cancelled"), std::string::npos) << waiter.err;
  EXPECT_EQ(waiter.err.find(notice), waiter.err.rfind(notice)) << "said more than once";
  // A job that runs at once says nothing of the kind.
  Output quick = cli({"run", "--wait", "--", "true"});
  EXPECT_EQ(quick.code, 0);
  EXPECT_EQ(quick.err.find("queued:"), std::string::npos) << quick.err;
}

// The notice's first wait and the rest are one WaitJob: a task that outlives the first
// wait on a server that prunes each job once answered (--keep-finished 0) still gets its
// own end and exit code (its logs go with the job, as docs/CLI.md says), and a running
// job is not called queued.
TEST_F(Cluster, RunWaitOutlivingTheNoticeKeepsItsJobUntilAnswered) {
  start_server({"--keep-finished", "0"});
  Output slow = cli({"run", "--wait", "--", "sh", "-c", "sleep 1.5; exit 3"});
  EXPECT_EQ(slow.code, 3) << slow.err;
  EXPECT_NE(slow.err.find("cardnode: job 1 failed"), std::string::npos) << slow.err;
  EXPECT_EQ(slow.err.find("queued:"), std::string::npos) << slow.err;
}

TEST_F(Cluster, BadInputGetsOneLineAndExit2) {
  start_server();
  std::string bad = root_ + "/bad-token";
  { std::ofstream(bad) << "this-is-not-the-cluster-token\n"; }
  chmod(bad.c_str(), 0600);
  Output wrong = cli({"ps", "--token-file", bad});
  EXPECT_EQ(wrong.code, 2);
  EXPECT_NE(wrong.err.find("wrong cluster token"), std::string::npos) << wrong.err;

  Output unreachable = cardnode({"ps", "--server", "127.0.0.1:1", "--token-file", bad}, root_);
  EXPECT_EQ(unreachable.code, 2);
  EXPECT_NE(unreachable.err.find("cannot reach server"), std::string::npos) << unreachable.err;

  // Each usage error is one line on stderr, and exit 2.
  auto one_line = [](const Output& o) {
    return !o.err.empty() && o.err.find('\n') + 1 == o.err.size();
  };
  Output unknown = cli({"frobnicate"});
  EXPECT_EQ(unknown.code, 2);
  EXPECT_TRUE(one_line(unknown)) << unknown.err;
  Output flag = cli({"ps", "--no-such-flag"});
  EXPECT_EQ(flag.code, 2);
  EXPECT_TRUE(one_line(flag)) << flag.err;
  Output badmem = cli({"run", "--mem", "lots", "--", "true"});
  EXPECT_EQ(badmem.code, 2);
  EXPECT_NE(badmem.err.find("bad size"), std::string::npos);
  EXPECT_TRUE(one_line(badmem)) << badmem.err;
  Output tiny = cli({"run", "--mem", "1K", "--", "true"});  // the server refuses it
  EXPECT_EQ(tiny.code, 2);
  EXPECT_NE(tiny.err.find("must be at least 1M"), std::string::npos) << tiny.err;
  EXPECT_TRUE(one_line(tiny)) << tiny.err;
  Output nothing = cli({"run", "--"});
  EXPECT_EQ(nothing.code, 2);
  EXPECT_TRUE(one_line(nothing)) << nothing.err;
  Output control = cli({"bad\nname"});  // what was typed is shown escaped: still one line
  EXPECT_EQ(control.code, 2);
  EXPECT_TRUE(one_line(control)) << control.err;
  EXPECT_EQ(cli({"logs", "x.y"}).code, 2);
  // Nothing above reached the state: no job exists.
  EXPECT_EQ(cli({"ps", "--json"}).out, "{\"jobs\":[]}\n");
}

TEST_F(Cluster, GarbageOnThePortClosesOnlyThatConnection) {
  start_server();
  int idle = dial(addr_);  // a well-behaved client that stays connected
  ASSERT_GE(idle, 0);

  int g = dial(addr_);
  ASSERT_GE(g, 0);
  std::string junk(300, '\x5a');
  (void)!write(g, junk.data(), junk.size());
  EXPECT_TRUE(closed_by_peer(g));
  close(g);

  // An HTTP request is garbage too.
  int h = dial(addr_);
  (void)!write(h, "GET / HTTP/1.0\r\n\r\n", 18);
  EXPECT_TRUE(closed_by_peer(h));
  close(h);

  Output ok = cli({"run", "--wait", "--", "true"});
  EXPECT_EQ(ok.code, 0) << ok.err;
  EXPECT_TRUE(eventually([&] {
    return metric(http_get(metrics_addr_, "/metrics"),
                  "cardnode_net_connections_rejected_total{reason=\"protocol\"}") >= 2;
  }));
  close(idle);
}

// The lock-out measured on the foundation (~300 half-open sockets made 40 of 68 `ps` fail):
// thousands of half-open connections from 80 source addresses (127.0.0.2-81) and a garbage
// sender, all the while a token holder runs `ps` and `run --wait` again and again. Every
// call of the token holder succeeds.
TEST_F(Cluster, AFloodOfStrangersNeverLocksOutATokenHolder) {
  start_server();
  rlimit nofile{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &nofile), 0);
  nofile.rlim_cur = std::min<rlim_t>(nofile.rlim_max, 16384);
  setrlimit(RLIMIT_NOFILE, &nofile);
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &nofile), 0);
  // Half-open sockets held at once: more than the server's whole connection limit (4,096
  // authenticated + 1,024 in handshake), which is what locked clients out before.
  const size_t held_max = std::min<size_t>(6000, nofile.rlim_cur - 256);

  const auto colon = addr_.rfind(':');
  sockaddr_in server{};
  server.sin_family = AF_INET;
  server.sin_port = htons(static_cast<uint16_t>(std::stoi(addr_.substr(colon + 1))));
  ASSERT_EQ(inet_pton(AF_INET, addr_.substr(0, colon).c_str(), &server.sin_addr), 1);

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> opened{0}, garbage_sent{0};
  std::thread half_open, garbage;
  // Whatever ends the test (a failed ASSERT too), the flood stops and its threads are joined.
  struct Joiner {
    std::atomic<bool>& stop;
    std::thread& a;
    std::thread& b;
    ~Joiner() {
      stop = true;
      if (a.joinable()) a.join();
      if (b.joinable()) b.join();
    }
  } joiner{stop, half_open, garbage};
  half_open = std::thread([&] {
    std::deque<int> held;
    for (uint32_t n = 0; !stop.load(); ++n) {
      int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
      if (fd < 0) break;
      sockaddr_in from{};
      from.sin_family = AF_INET;
      // 80 sources x 16 handshakes each > the 1,024 of the whole budget: both the
      // per-source and the global eviction are at work.
      from.sin_addr.s_addr = htonl(0x7f000002u + n % 80);
      if (bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof from) == 0) {
        (void)connect(fd, reinterpret_cast<const sockaddr*>(&server), sizeof server);
        opened++;
      }
      held.push_back(fd);
      if (held.size() > held_max) {
        close(held.front());
        held.pop_front();
      }
      // Paced below what one server core accepts: past it, the kernel drops SYNs for every
      // client alike (a SYN flood, for the kernel and a firewall, not the server, to absorb).
      if (n % 20 == 19) std::this_thread::sleep_for(1ms);
    }
    for (int fd : held) close(fd);
  });
  garbage = std::thread([&] {
    while (!stop.load()) {
      int g = dial(addr_);
      if (g < 0) continue;
      (void)!write(g, "GET / HTTP/1.0\r\n\r\n", 18);
      (void)closed_by_peer(g);
      close(g);
      garbage_sent++;
    }
  });
  ASSERT_TRUE(eventually([&] { return opened.load() >= 2 * held_max && garbage_sent > 10; }));

  int ok = 0, calls = 0;
  std::string failures;
  for (int i = 0; i < 20; ++i) {
    Output r = i % 4 == 3 ? cli({"run", "--wait", "--", "true"}) : cli({"ps"});
    ++calls;
    if (r.code == 0) {
      ++ok;
    } else {
      failures += r.err;
    }
  }
  stop = true;
  half_open.join();
  garbage.join();
  EXPECT_EQ(ok, calls) << failures;
  const std::string m = http_get(metrics_addr_, "/metrics");
  EXPECT_GT(metric(m, "cardnode_net_connections_rejected_total{reason=\"evicted\"}"), 0) << m;
  EXPECT_GT(metric(m, "cardnode_net_connections_rejected_total{reason=\"protocol\"}"), 10);
  std::printf("flood: %llu half-open opened, %llu garbage connections, %d/%d calls served\n",
              static_cast<unsigned long long>(opened.load()),
              static_cast<unsigned long long>(garbage_sent.load()), ok, calls);
}

// /metrics is for anyone who can reach it (docs/GUARANTEES.md), so it carries no secret; and
// strangers' idle sockets on it (one of them blocked every scrape of the old civetweb
// exposer for good) never keep Prometheus from its scrape.
TEST_F(Cluster, MetricsShowNoSecretAndIdleSocketsNeverBlindAScrape) {
  start_server();
  const std::string secret_cmd = "metrics-cmd-" + std::to_string(getpid());
  const std::string secret_env = "metrics-env-" + std::to_string(getpid());
  Output r = cli({"run", "--wait", "--env", "SECRET_VALUE=" + secret_env, "--", "sh", "-c",
                  "true " + secret_cmd});
  ASSERT_EQ(r.code, 0) << r.err;
  std::vector<int> idle;
  for (int i = 0; i < 200; ++i) {
    int fd = dial(metrics_addr_);
    if (fd >= 0) idle.push_back(fd);
  }
  ASSERT_EQ(idle.size(), 200u);
  for (int round = 0; round < 3; ++round) {
    const std::string m = http_get(metrics_addr_, "/metrics");
    ASSERT_EQ(m.rfind("HTTP/1.1 200 OK", 0), 0u) << "round " << round << ": " << m;
    EXPECT_GE(metric(m, "cardnode_jobs_submitted_total"), 1);
    EXPECT_GT(metric(m, "cardnode_process_resident_memory_bytes"), 0);
    const std::string token = slurp(data_ + "/token");
    ASSERT_GE(token.size(), 32u);
    EXPECT_EQ(m.find(token.substr(0, 32)), std::string::npos);
    EXPECT_EQ(m.find(secret_cmd), std::string::npos);
    EXPECT_EQ(m.find(secret_env), std::string::npos);
    EXPECT_EQ(m.find("SECRET_VALUE"), std::string::npos);
  }
  for (int fd : idle) close(fd);
}

TEST_F(Cluster, MetricsAndNodesDescribeTheBoard) {
  start_server();
  ASSERT_EQ(cli({"run", "--wait", "--", "true"}).code, 0);
  std::string text;
  ASSERT_TRUE(eventually([&] {
    text = http_get(metrics_addr_, "/metrics");
    return metric(text, "cardnode_tasks{state=\"succeeded\"}") == 1;
  })) << text;
  EXPECT_EQ(metric(text, "cardnode_jobs_submitted_total"), 1);
  EXPECT_GT(metric(text, "cardnode_process_resident_memory_bytes"), 0);
  EXPECT_GT(metric(text, "cardnode_storage_fsyncs_total"), 0);

  Output nodes = cli({"nodes", "--json"});
  EXPECT_EQ(nodes.code, 0);
  EXPECT_EQ(nodes.out.rfind("{\"nodes\":[{\"name\":", 0), 0u) << nodes.out;
  EXPECT_NE(nodes.out.find("\"state\":\"ready\""), std::string::npos);
  EXPECT_NE(nodes.out.find("\"isolation\":"), std::string::npos);
  // The native path is io_uring, not the fallback (which only qemu or a forced setting picks).
  if (std::getenv("CARDNODE_IO_BACKEND") == nullptr) {
    EXPECT_NE(nodes.out.find("\"io_backend\":\"io_uring\""), std::string::npos) << nodes.out;
    EXPECT_NE(text.find("io_backend=\"io_uring\""), std::string::npos);
  }
}

TEST_F(Cluster, IdleClusterWritesNothing) {
  start_server();
  ASSERT_EQ(cli({"run", "--wait", "--count", "3", "--cpu", "0.1", "--", "echo", "x"}).code, 0);
  std::string before_metrics;
  // Let the last completions and the metrics refresh settle.
  ASSERT_TRUE(eventually([&] {
    before_metrics = http_get(metrics_addr_, "/metrics");
    return metric(before_metrics, "cardnode_tasks{state=\"succeeded\"}") == 3;
  }));
  auto sizes = [&] {
    uintmax_t total = 0;
    for (const auto& e : fs::recursive_directory_iterator(data_))
      if (e.is_regular_file()) total += e.file_size();
    return total;
  };
  // Settled: the last records' writes have completed (two scrapes agree).
  double written = -1;
  ASSERT_TRUE(eventually([&] {
    double now =
        metric(http_get(metrics_addr_, "/metrics"), "cardnode_storage_bytes_written_total");
    bool same = now == written && now > 0;
    written = now;
    std::this_thread::sleep_for(200ms);
    return same;
  }));
  uintmax_t size = sizes();
  std::this_thread::sleep_for(2500ms);  // idle on purpose: two metric refreshes
  std::string after = http_get(metrics_addr_, "/metrics");
  EXPECT_EQ(metric(after, "cardnode_storage_bytes_written_total"), written);
  EXPECT_EQ(sizes(), size);
}

TEST_F(Cluster, SigtermStopsCleanlyAndKillsTasks) {
  start_server();
  const std::string marker = "cnmark-" + std::to_string(getpid()) + "-term";
  ASSERT_EQ(cli({"run", "--", "sh", "-c", "sleep 60; : " + marker}).code, 0);
  ASSERT_TRUE(eventually([&] { return process_with_marker_exists(marker); }));
  int status = stop_server(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_FALSE(process_with_marker_exists(marker));
  EXPECT_NE(slurp(root_ + "/server.log").find("stopped"), std::string::npos);
}

// A clean stop is no fault of a task: it is requeued without using its lost budget (a
// task lost more than 5 times ends lost), so it survives any number of clean restarts.
TEST_F(Cluster, ARunningTaskSurvivesCleanRestartsThenCompletes) {
  start_server();
  ASSERT_EQ(
      cli({"run", "--", "sh", "-c", "[ \"$CARDNODE_ATTEMPT\" -ge 8 ] && exit 0; sleep 60"}).code,
      0);
  auto task = [&] { return json_of(cli({"ps", "1", "--json"}))["tasks"][0]; };
  for (int attempt = 1; attempt <= 7; ++attempt) {
    Json t;
    ASSERT_TRUE(eventually([&] {
      t = task();
      EXPECT_NE(t["state"], "lost") << t;
      return t["state"] == "running" && t["attempts"] == attempt;
    })) << t
        << slurp(root_ + "/server.log");
    int status = stop_server(SIGTERM);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
    start_server();
  }
  Json t;
  ASSERT_TRUE(eventually([&] {
    t = task();
    EXPECT_NE(t["state"], "lost") << t;
    return t["state"] == "succeeded";
  })) << t;
  EXPECT_EQ(t["attempts"], 8);
}

// SIGHUP (a closed terminal, `systemctl reload`) leaves the server serving and its tasks
// running; tasks themselves get the default action for it.
TEST_F(Cluster, SighupLeavesTheServerServing) {
  start_server();
  const std::string marker = "cnmark-" + std::to_string(getpid()) + "-hup";
  ASSERT_EQ(cli({"run", "--", "sh", "-c", "sleep 60; : " + marker}).code, 0);
  ASSERT_TRUE(eventually([&] { return process_with_marker_exists(marker); }));
  ASSERT_EQ(kill(server_, SIGHUP), 0);
  EXPECT_TRUE(eventually(
      [&] { return slurp(root_ + "/server.log").find("SIGHUP ignored") != std::string::npos; }));
  EXPECT_EQ(waitpid(server_, nullptr, WNOHANG), 0) << "the server is gone";
  Output ps = cli({"ps", "1", "--json"});
  ASSERT_EQ(ps.code, 0) << ps.err;
  EXPECT_EQ(json_of(ps)["tasks"][0]["state"], "running");
  EXPECT_TRUE(process_with_marker_exists(marker));
  // SigIgn of a task: bit 0 is SIGHUP.
  Output r = cli({"run", "--wait", "--", "sh", "-c", "grep SigIgn /proc/self/status"});
  ASSERT_EQ(r.code, 0) << r.err;
  std::string ign = cli({"logs", "2"}).out;
  ASSERT_EQ(ign.rfind("SigIgn:", 0), 0u) << ign;
  EXPECT_EQ(std::stoull(ign.substr(7), nullptr, 16) & 1, 0u) << ign;
}

TEST_F(Cluster, SubmitJsonSpec) {
  start_server();
  std::string spec = root_ + "/job.json";
  std::ofstream(spec) << R"({"name":"frames","command":["sh","-c","echo f$CARDNODE_TASK_INDEX"],)"
                      << R"("count":3,"cpuMillis":250,"memBytes":"33554432"})";
  Output r = cli({"submit", spec, "--wait"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(cli({"logs", "1.2"}).out, "f2\n");
  EXPECT_NE(cli({"ps", "--json"}).out.find("\"name\":\"frames\""), std::string::npos);
  std::ofstream(root_ + "/bad.json") << "{\"command\": 7}";
  EXPECT_EQ(cli({"submit", root_ + "/bad.json"}).code, 2);
}

// CLI11 reads "[a,b]" as a list; the words after -- must reach the task as typed.
TEST_F(Cluster, RunPassesTheWordsAfterDashesAsTyped) {
  start_server();
  Output test = cli({"run", "--wait", "--", "sh", "-c", "[ 1 -eq 1 ] && [ -d / ]"});
  EXPECT_EQ(test.code, 0) << test.err << cli({"logs", "1", "--stderr"}).out;
  Output echo = cli({"run", "--wait", "--", "printf", "%s|", "[x]", "[]", "[a,b]", "--", "-x"});
  ASSERT_EQ(echo.code, 0) << echo.err;
  EXPECT_EQ(cli({"logs", "2"}).out, "[x]|[]|[a,b]|--|-x|");
  // Elsewhere `--` ends the options as it always did.
  EXPECT_EQ(cli({"logs", "--", "2"}).out, "[x]|[]|[a,b]|--|-x|");
  // The least memory a job may ask for still runs a program (under a cgroup as root).
  Output least = cli({"run", "--mem", "1M", "--wait", "--", "sh", "-c", "echo fits"});
  EXPECT_EQ(least.code, 0) << least.err << cli({"logs", "3", "--stderr"}).out;
  EXPECT_EQ(cli({"logs", "3"}).out, "fits\n");
}

// A one-task job's output comes with run --wait, and a stream the server knows to be empty
// (no log file on its own board) is not asked for: a silent task costs the submit and the
// wait, two requests, not four.
TEST_F(Cluster, RunWaitAsksOnlyForTheOutputATaskWrote) {
  start_server();
  auto requests = [&] {
    return metric(http_get(metrics_addr_, "/metrics"), "cardnode_net_requests_total");
  };
  ASSERT_EQ(cli({"run", "--wait", "--", "true"}).code, 0);  // the connection path warmed up
  const double before = requests();
  Output silent = cli({"run", "--wait", "--", "true"});
  ASSERT_EQ(silent.code, 0) << silent.err;
  EXPECT_EQ(silent.out, "");
  EXPECT_EQ(requests() - before, 2) << "a silent task's logs were asked for";
  Output err_only = cli({"run", "--wait", "--", "sh", "-c", "echo oops >&2; exit 3"});
  EXPECT_EQ(err_only.code, 3);
  EXPECT_EQ(err_only.out, "");
  EXPECT_NE(err_only.err.find("oops\n"), std::string::npos) << err_only.err;
  Output both = cli({"run", "--wait", "--", "sh", "-c", "echo out; echo err >&2"});
  EXPECT_EQ(both.code, 0);
  EXPECT_EQ(both.out, "out\n");
  EXPECT_NE(both.err.find("err\n"), std::string::npos) << both.err;
}

TEST_F(Cluster, FsckReadsTheWalOfARealDataDir) {
  start_server();
  ASSERT_EQ(cli({"run", "--wait", "--count", "2", "--cpu", "0.1", "--", "true"}).code, 0);
  ASSERT_EQ(stop_server(SIGTERM), 0);
  Output ok = cardnode({"fsck", data_}, root_);
  EXPECT_EQ(ok.code, 0) << ok.err;
  EXPECT_NE(ok.out.find(": ok"), std::string::npos) << ok.out;
  EXPECT_NE(ok.out.find(" records in 1 segments"), std::string::npos) << ok.out;
  Output missing = cardnode({"fsck", root_ + "/nope"}, root_);
  EXPECT_EQ(missing.code, 1);
  EXPECT_NE(missing.err.find("fsck"), std::string::npos);
}

TEST_F(Cluster, NoExecCoordinatesOnlyAndStopsOnSigint) {
  start_server({"--no-exec"});
  Output r = cli({"run", "--", "true"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "1\n");
  EXPECT_EQ(cli({"nodes", "--json"}).out, "{\"nodes\":[]}\n");
  // Accepted and durable, but no board runs it.
  EXPECT_NE(cli({"ps", "1", "--json"}).out.find("\"states\":{\"queued\":1}"), std::string::npos);
  int status = stop_server(SIGINT);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

}  // namespace
}  // namespace cardnode::e2e
