// Executor with real processes, real pipes, the real LogStore on a real IoEngine and —
// where this machine allows it (root) — the real cgroups. Every test runs in three
// modes: cgroups with exits seen through pidfds, rlimits only, and cgroups with exits seen
// through SIGCHLD (the fallback for kernels without pidfds).
#include "runtime/exec/executor.h"

#include <dirent.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "storage/io_engine.h"
#include "storage/log_store.h"

namespace cardnode::runtime {
namespace {

namespace fs = std::filesystem;
using storage::Stream;

constexpr auto kWaitMax = std::chrono::seconds(15);  // a hang fails, it never passes

struct Mode {
  const char* name;
  bool cgroups;
  PidfdSupport pidfd;
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// /proc/PID/stat fields after the command: state, ppid, pgrp.
bool proc_stat(pid_t pid, char* state, pid_t* pgrp) {
  std::string stat = slurp("/proc/" + std::to_string(pid) + "/stat");
  size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return false;
  std::istringstream in(stat.substr(paren + 1));
  long ppid = 0, pg = 0;
  if (!(in >> *state >> ppid >> pg)) return false;
  *pgrp = static_cast<pid_t>(pg);
  return true;
}

// Alive and not a zombie: an orphan we killed may linger as a zombie until init reaps
// it; it runs nothing and holds no memory.
bool alive(pid_t pid) {
  char state = 0;
  pid_t pgrp = 0;
  return ::kill(pid, 0) == 0 && proc_stat(pid, &state, &pgrp) && state != 'Z';
}

// Live (non-zombie) members of process group `pgid`.
int live_in_group(pid_t pgid) {
  int n = 0;
  DIR* d = ::opendir("/proc");
  while (struct dirent* e = d ? ::readdir(d) : nullptr) {
    char* end = nullptr;
    long pid = std::strtol(e->d_name, &end, 10);
    char state = 0;
    pid_t pgrp = 0;
    if (*end == '\0' && pid > 0 && proc_stat(static_cast<pid_t>(pid), &state, &pgrp) &&
        pgrp == pgid && state != 'Z') {
      ++n;
    }
  }
  if (d) ::closedir(d);
  return n;
}

std::vector<pid_t> pids_in(const std::string& text) {
  std::vector<pid_t> out;
  std::istringstream in(text);
  for (long p; in >> p;) out.push_back(static_cast<pid_t>(p));
  return out;
}

class ExecutorTest : public ::testing::TestWithParam<Mode> {
 protected:
  void SetUp() override {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base != nullptr ? base : "/tmp") + "/executor_test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    tmp_ = tmpl;

    auto engine = storage::IoEngine::create({}, nullptr);
    ASSERT_TRUE(engine) << engine.error().describe();
    engine_ = std::move(*engine);
    ASSERT_EQ(uv_loop_init(&loop_), 0);
    CARDNODE_CHECK(uv_poll_init(&loop_, &poll_, engine_->completion_fd()) == 0);
    loop_open_ = true;
    poll_.data = engine_.get();
    uv_poll_start(&poll_, UV_READABLE,
                  [](uv_poll_t* p, int, int) { static_cast<storage::IoEngine*>(p->data)->reap(); });
    // Wakes the loop now and then so run_until() can notice its deadline.
    uv_timer_init(&loop_, &tick_);
    uv_timer_start(
        &tick_, [](uv_timer_t*) {}, 50, 50);
    logs_ = std::make_unique<storage::LogStore>(*engine_,
                                                storage::LogStoreOptions{.dir = tmp_ / "logs"});

    // Our own parent group, so a cardnode on this machine and our groups never meet.
    group_parent_ = "cardnode-executor-test-" + std::to_string(::getpid());
    iso_ = Isolation::probe("/sys/fs/cgroup", group_parent_, !GetParam().cgroups);
    if (GetParam().cgroups && iso_.info().mode == IsolationMode::kRlimit) {
      GTEST_SKIP() << "no usable cgroups here (not root?)";
    }
    options_.pidfd = GetParam().pidfd;
    // Per process, like a server's per-data-dir tag: ctest runs test processes side by
    // side with the same job ids, and in rlimit mode tasks are found by this tag.
    options_.pool_tag = group_parent_;
    make_executor();
  }

  void make_executor() { exec_ = std::make_unique<Executor>(&loop_, *logs_, iso_, options_); }

  void TearDown() override {
    if (exec_) {
      exec_->kill_all();
      run_until([&] { return exec_->running() == 0; });
      exec_.reset();
    }
    if (loop_open_) {
      uv_close(reinterpret_cast<uv_handle_t*>(&poll_), nullptr);
      uv_close(reinterpret_cast<uv_handle_t*>(&tick_), nullptr);
      uv_run(&loop_, UV_RUN_DEFAULT);
      logs_.reset();
      EXPECT_EQ(uv_loop_close(&loop_), 0) << "a libuv handle was leaked";
    }
    iso_.destroy_all_groups();
    for (const char* h : {"", "memory", "cpu", "cpuacct", "cpu,cpuacct", "cpuacct,cpu", "pids"}) {
      ::rmdir((fs::path("/sys/fs/cgroup") / h / group_parent_).c_str());
    }
    if (!tmp_.empty()) fs::remove_all(tmp_);
  }

  template <class Pred>
  void run_until(Pred done) {
    auto deadline = std::chrono::steady_clock::now() + kWaitMax;
    while (!done()) {
      ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "gave up waiting";
      uv_run(&loop_, UV_RUN_ONCE);
    }
  }

  TaskLaunch launch(uint64_t job, std::vector<std::string> argv) {
    TaskLaunch l;
    l.job_id = job;
    l.index = 0;
    l.count = 1;
    l.argv = std::move(argv);
    l.cwd = tmp_.string();
    l.node_name = "pi-test";
    return l;
  }

  // Starts a task and runs the loop until it has been reported.
  TaskExit run(const TaskLaunch& l, int32_t* pid_out = nullptr) {
    std::optional<TaskExit> exit;
    Status started = exec_->start(l, [&](TaskExit e) { exit = e; });
    EXPECT_TRUE(started) << started.error().describe();
    if (!started) return {pb::TASK_LOST, -1, -1};
    int32_t spawned = 0;  // the spawn thread makes the process
    run_until([&] {
      if (spawned == 0) spawned = exec_->pid_of(l.job_id, l.index);
      return spawned != 0 || exit.has_value();
    });
    if (pid_out) *pid_out = spawned;
    run_until([&] { return exit.has_value(); });
    return exit.value_or(TaskExit{pb::TASK_LOST, -1, -1});
  }

  std::string out(uint64_t job, uint32_t index = 0) {
    return slurp(logs_->path({job, index, Stream::kStdout}));
  }
  std::string err(uint64_t job, uint32_t index = 0) {
    return slurp(logs_->path({job, index, Stream::kStderr}));
  }
  // Lines printed by a still-running task: the LogStore writes them asynchronously.
  std::string wait_for_lines(uint64_t job, size_t lines) {
    std::string text;
    run_until([&] {
      text = out(job);
      return static_cast<size_t>(std::count(text.begin(), text.end(), '\n')) >= lines;
    });
    return text;
  }
  // The tree got SIGKILL before the report (and, with cgroups, left the group: see
  // group_exists). SIGKILL is delivered asynchronously: the last steps of an exit may
  // still be running when we look, so wait for them (bounded).
  void expect_dead(pid_t pid) {
    run_until([&] { return !alive(pid); });
  }
  // A held task's process: a new child of ours (not among `before`) that has not exec'd
  // (its name is still ours) and sleeps, which before its exec only the wait for its
  // release does. Its pid is not handed out before the release natively (the clone waits
  // for the exec), so it is found among our children.
  pid_t await_held_child(const std::vector<int32_t>& before) {
    const std::string own_comm = slurp("/proc/self/comm");
    pid_t found = 0;
    run_until([&] {
      for (int32_t pid : own_children(4096)) {
        if (std::find(before.begin(), before.end(), pid) != before.end()) continue;
        char state = 0;
        pid_t pgrp = 0;
        if (slurp("/proc/" + std::to_string(pid) + "/comm") == own_comm &&
            proc_stat(pid, &state, &pgrp) && state == 'S') {
          found = pid;
        }
      }
      return found != 0;
    });
    return found;
  }
  // own_children() needs /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN).
  static bool children_listed() {
    return ::access(("/proc/self/task/" + std::to_string(::gettid()) + "/children").c_str(),
                    R_OK) == 0;
  }
  bool group_exists(uint64_t job, uint32_t index) {
    std::string g = std::to_string(job) + "." + std::to_string(index);
    for (const char* h : {"", "memory", "cpu", "pids"}) {
      if (fs::exists(fs::path("/sys/fs/cgroup") / h / group_parent_ / g)) return true;
    }
    return false;
  }

  fs::path tmp_;
  uv_loop_t loop_{};
  bool loop_open_ = false;
  uv_poll_t poll_{};
  uv_timer_t tick_{};
  std::unique_ptr<storage::IoEngine> engine_;
  std::unique_ptr<storage::LogStore> logs_;
  std::string group_parent_;
  Isolation iso_;
  ExecutorOptions options_;
  std::unique_ptr<Executor> exec_;
};

TEST_P(ExecutorTest, ExitCodeAndOutputAreCaptured) {
  TaskExit e = run(launch(1, {"sh", "-c", "echo hello; echo oops >&2; exit 3"}));
  EXPECT_EQ(e.state, pb::TASK_FAILED);
  EXPECT_EQ(e.exit_code, 3);
  EXPECT_EQ(e.signal, 0);
  EXPECT_EQ(out(1), "hello\n");
  EXPECT_EQ(err(1), "oops\n");
  EXPECT_EQ(exec_->running(), 0u);
  EXPECT_FALSE(group_exists(1, 0));
}

TEST_P(ExecutorTest, SuccessIsReported) {
  TaskExit e = run(launch(2, {"true"}));
  EXPECT_EQ(e.state, pb::TASK_SUCCEEDED);
  EXPECT_EQ(e.exit_code, 0);
  EXPECT_EQ(e.signal, 0);
  EXPECT_EQ(out(2), "");
}

TEST_P(ExecutorTest, AllOutputIsInTheLogBeforeTheReport) {
  TaskExit e = run(launch(3, {"sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x; echo"}));
  EXPECT_EQ(e.state, pb::TASK_SUCCEEDED);
  std::string text = out(3);
  EXPECT_EQ(text.size(), 3000001u);
  EXPECT_TRUE(text == std::string(3000000, 'x') + "\n");
}

TEST_P(ExecutorTest, DeathBySignalIsFailedWithTheSignal) {
  TaskExit e = run(launch(4, {"sh", "-c", "kill -TERM $$"}));
  EXPECT_EQ(e.state, pb::TASK_FAILED);
  EXPECT_EQ(e.signal, SIGTERM);
  EXPECT_EQ(e.exit_code, 0);
}

TEST_P(ExecutorTest, TaskSeesItsEnvironmentAndCwd) {
  ::setenv("CARDNODE_EXECUTOR_TEST_LEAK", "1", 1);
  TaskLaunch l = launch(5, {"sh", "-c",
                            "echo $CARDNODE_JOB_ID $CARDNODE_TASK_INDEX $CARDNODE_TASK_COUNT "
                            "$CARDNODE_NODE $CARDNODE_ATTEMPT $GREETING; pwd; "
                            "echo ${CARDNODE_EXECUTOR_TEST_LEAK:-clean}; echo $PATH"});
  l.index = 3;
  l.count = 8;
  l.attempt = 2;
  l.env = {{"GREETING", "hi there"}};
  TaskExit e = run(l);
  EXPECT_EQ(e.state, pb::TASK_SUCCEEDED);
  EXPECT_EQ(out(5, 3),
            "5 3 8 pi-test 2 hi there\n" + fs::canonical(tmp_).string() +
                "\nclean\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n");
}

TEST_P(ExecutorTest, JobEnvOverridesTheBase) {
  TaskLaunch l = launch(6, {"sh", "-c", "echo $PATH"});
  l.env = {{"PATH", "/bin:/usr/bin:/opt/x"}};
  EXPECT_EQ(run(l).state, pb::TASK_SUCCEEDED);
  EXPECT_EQ(out(6), "/bin:/usr/bin:/opt/x\n");
}

// The timeout must fire after `sh` has started its child, or there is no tree to check.
// How long `sh` takes to get there is the machine's business (qemu-user: hundreds of ms),
// so no timeout is guessed: an attempt whose timeout fired before the child's pid was
// printed still must end timed_out, and the next attempt doubles the timeout.
TEST_P(ExecutorTest, TimeoutKillsTheWholeTree) {
  constexpr uint32_t kAttemptsMax = 7;  // 200 ms .. 12.8 s, within kWaitMax
  uint64_t timeout_ms = 200;
  for (uint32_t attempt = 0; attempt < kAttemptsMax; ++attempt, timeout_ms *= 2) {
    const uint64_t job = 700 + attempt;
    TaskLaunch l = launch(job, {"sh", "-c", "sleep 30 & echo $!; wait"});
    l.timeout_ms = timeout_ms;
    int32_t pid = 0;
    TaskExit e = run(l, &pid);
    EXPECT_EQ(e.state, pb::TASK_TIMED_OUT);
    EXPECT_EQ(e.signal, SIGKILL);
    expect_dead(pid);
    EXPECT_EQ(live_in_group(pid), 0);
    EXPECT_FALSE(group_exists(job, 0));
    std::vector<pid_t> children = pids_in(out(job));
    if (children.empty()) continue;  // killed before the child existed: try a longer timeout
    ASSERT_EQ(children.size(), 1u);
    expect_dead(children[0]);
    return;
  }
  FAIL() << "sh never printed its child's pid within " << timeout_ms / 2 << " ms";
}

// A held start (the coordinator's TaskStarted not yet durable): the process may exist, in
// its groups, but its command has not run; the release lets it run.
TEST_P(ExecutorTest, AHeldStartRunsItsCommandOnlyOnceReleased) {
  if (!Spawner::can_hold()) GTEST_SKIP() << "no close_range here: starts are not held";
  if (!children_listed()) GTEST_SKIP() << "no /proc/PID/task/TID/children here";
  const fs::path ran = tmp_ / "ran";
  const std::vector<int32_t> before = own_children(4096);
  std::optional<TaskExit> exit;
  ASSERT_TRUE(exec_->start_held(launch(40, {"sh", "-c", "echo ran > " + ran.string()}),
                                [&](TaskExit e) { exit = e; }));
  const pid_t held = await_held_child(before);
  EXPECT_TRUE(alive(held));
  EXPECT_FALSE(fs::exists(ran)) << "the command ran before its release";
  EXPECT_FALSE(exit.has_value());
  exec_->release(40, 0);
  run_until([&] { return exit.has_value(); });
  EXPECT_EQ(exit->state, pb::TASK_SUCCEEDED);
  EXPECT_EQ(slurp(ran), "ran\n");
}

// Killed while held: the attempt ends with the kill's reason and its command never ran.
TEST_P(ExecutorTest, AKillBeforeTheReleaseRunsNothing) {
  if (!Spawner::can_hold()) GTEST_SKIP() << "no close_range here: starts are not held";
  if (!children_listed()) GTEST_SKIP() << "no /proc/PID/task/TID/children here";
  const fs::path ran = tmp_ / "ran";
  const std::vector<int32_t> before = own_children(4096);
  std::optional<TaskExit> exit;
  ASSERT_TRUE(exec_->start_held(launch(41, {"sh", "-c", "echo ran > " + ran.string()}),
                                [&](TaskExit e) { exit = e; }));
  const pid_t held = await_held_child(before);
  exec_->kill(41, 0, KillReason::kCancelled);
  run_until([&] { return exit.has_value(); });
  EXPECT_EQ(exit->state, pb::TASK_CANCELLED);
  EXPECT_EQ(exit->exit_code, 0);  // no command ran, so none exited 127
  expect_dead(held);
  EXPECT_FALSE(fs::exists(ran));
  exec_->release(41, 0);  // too late, and harmless
  EXPECT_FALSE(group_exists(41, 0));
}

// A start is held only on an idle board: with a task here already (an array, a burst), a
// start is refused as held (the coordinator then starts it once durable), and taken again
// once the board is idle.
TEST_P(ExecutorTest, AStartIsHeldOnlyOnAnIdleBoard) {
  if (!Spawner::can_hold()) GTEST_SKIP() << "no close_range here: starts are not held";
  std::optional<TaskExit> first, second;
  EXPECT_TRUE(exec_->can_hold_now());
  ASSERT_TRUE(exec_->start_held(launch(43, {"true"}), [&](TaskExit e) { first = e; }));
  EXPECT_FALSE(exec_->can_hold_now());
  Status refused = exec_->start_held(launch(44, {"true"}), [&](TaskExit e) { second = e; });
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, Errc::kUnavailable);
  exec_->release(43, 0);
  run_until([&] { return first.has_value(); });
  EXPECT_EQ(first->state, pb::TASK_SUCCEEDED);
  EXPECT_TRUE(exec_->can_hold_now());
  EXPECT_FALSE(second.has_value());  // refused: on_exit never runs
}

// Released at once, racing its spawn (the record was durable first): whether the child
// is waiting yet or not, the byte is there for it and it runs.
TEST_P(ExecutorTest, AReleaseRacingItsSpawnRunsIt) {
  if (!Spawner::can_hold()) GTEST_SKIP() << "no close_range here: starts are not held";
  std::optional<TaskExit> exit;
  ASSERT_TRUE(
      exec_->start_held(launch(42, {"sh", "-c", "echo hi"}), [&](TaskExit e) { exit = e; }));
  exec_->release(42, 0);
  run_until([&] { return exit.has_value(); });
  EXPECT_EQ(exit->state, pb::TASK_SUCCEEDED);
  EXPECT_EQ(out(42), "hi\n");
}

TEST_P(ExecutorTest, CancelKillsTheWholeTree) {
  std::optional<TaskExit> exit;
  Status started =
      exec_->start(launch(8, {"sh", "-c", "sleep 100 & echo $!; sleep 100 & echo $!; wait"}),
                   [&](TaskExit e) { exit = e; });
  ASSERT_TRUE(started) << started.error().describe();
  std::vector<pid_t> children = pids_in(wait_for_lines(8, 2));
  ASSERT_EQ(children.size(), 2u);
  for (pid_t c : children) EXPECT_TRUE(alive(c));
  EXPECT_EQ(exec_->running(), 1u);
  const int32_t pid = exec_->pid_of(8, 0);  // it printed: its process exists
  ASSERT_GT(pid, 0);
  exec_->kill(8, 0, KillReason::kCancelled);
  exec_->kill(8, 0, KillReason::kTimedOut);    // the first reason is the one reported
  exec_->kill(99, 0, KillReason::kCancelled);  // unknown: ignored
  run_until([&] { return exit.has_value(); });
  EXPECT_EQ(exit->state, pb::TASK_CANCELLED);
  EXPECT_EQ(exit->signal, SIGKILL);
  for (pid_t c : children) expect_dead(c);
  expect_dead(pid);
  EXPECT_EQ(live_in_group(pid), 0);
  EXPECT_FALSE(group_exists(8, 0));
}

TEST_P(ExecutorTest, BackgroundChildIsKilledBeforeTheReport) {
  TaskExit e = run(launch(9, {"sh", "-c", "sleep 100 & echo $!"}));
  EXPECT_EQ(e.state, pb::TASK_SUCCEEDED);  // the task itself exited 0
  std::vector<pid_t> children = pids_in(out(9));
  ASSERT_EQ(children.size(), 1u);
  expect_dead(children[0]);
}

// A process that left the task's process group (setsid) still dies before the report:
// through the cgroup, or without cgroups as an orphan adopted by the subreaper.
TEST_P(ExecutorTest, AnEscapeeFromTheProcessGroupDiesBeforeTheReport) {
  TaskExit e = run(launch(28, {"sh", "-c",
                               "setsid sleep 100 & p=$!; "
                               "until [ \"$(cut -d' ' -f6 /proc/$p/stat 2>/dev/null)\" = \"$p\" ]; "
                               "do :; done; echo $p"}));
  EXPECT_EQ(e.state, pb::TASK_SUCCEEDED) << err(28);
  std::vector<pid_t> escaped = pids_in(out(28));
  ASSERT_EQ(escaped.size(), 1u) << out(28);
  EXPECT_FALSE(alive(escaped[0]));  // already at the report, not eventually
}

TEST_P(ExecutorTest, CommandNotFound) {
  TaskLaunch l = launch(10, {"/nonexistent/command", "arg"});
  TaskExit e = run(l);
  EXPECT_EQ(e.state, pb::TASK_FAILED);
  EXPECT_EQ(e.exit_code, 127);
  EXPECT_EQ(err(10), "cardnode: cannot run /nonexistent/command: No such file or directory\n");
}

TEST_P(ExecutorTest, NotExecutableIs126) {
  fs::path script = tmp_ / "script.sh";
  std::ofstream(script) << "#!/bin/sh\necho hi\n";
  fs::permissions(script, fs::perms::owner_read);  // even root needs one x bit to exec
  TaskExit e = run(launch(11, {script.string()}));
  EXPECT_EQ(e.state, pb::TASK_FAILED);
  EXPECT_EQ(e.exit_code, 126);
  EXPECT_NE(err(11).find("Permission denied"), std::string::npos) << err(11);
}

TEST_P(ExecutorTest, CommandNotOnThePathIs127AndSaysSo) {
  TaskLaunch l = launch(12, {"no-such-command-anywhere"});
  l.env = {{"PATH", "/nonexistent:/usr/bin"}};
  TaskExit e = run(l);
  EXPECT_EQ(e.state, pb::TASK_FAILED);
  EXPECT_EQ(e.exit_code, 127);
  EXPECT_EQ(err(12), "cardnode: cannot run no-such-command-anywhere: No such file or directory\n");
}

// execvp's rule: a file without #! found on the PATH runs under /bin/sh.
TEST_P(ExecutorTest, AScriptWithoutShebangRunsUnderSh) {
  fs::create_directories(tmp_ / "bin");
  fs::path script = tmp_ / "bin" / "plain-script";
  std::ofstream(script) << "echo from the script $1\n";
  fs::permissions(script, fs::perms::owner_all | fs::perms::group_read | fs::perms::others_read);
  TaskLaunch l = launch(20, {"plain-script", "arg1"});
  l.env = {{"PATH", (tmp_ / "bin").string() + ":/usr/bin:/bin"}};
  EXPECT_EQ(run(l).state, pb::TASK_SUCCEEDED) << err(20);
  EXPECT_EQ(out(20), "from the script arg1\n");
}

// The spawned pid is the command's own (no helper in between), it leads its own process
// group, and it is in its cgroup before its first instruction.
TEST_P(ExecutorTest, ThePidIsTheCommandsAndItStartsInsideItsGroup) {
  int32_t pid = 0;
  TaskExit e = run(launch(21, {"sh", "-c", "echo $$; cat /proc/self/cgroup"}), &pid);
  EXPECT_EQ(e.state, pb::TASK_SUCCEEDED);
  std::string text = out(21);
  EXPECT_EQ(text.substr(0, text.find('\n')), std::to_string(pid));
  if (GetParam().cgroups) {
    EXPECT_NE(text.find(group_parent_ + "/21.0"), std::string::npos) << text;
  }
}

TEST_P(ExecutorTest, UsageIsReported) {
  // Busy for a while in user space, and 40 MiB held by one process (GNU tail keeps a
  // newline-free stream in memory).
  TaskExit e = run(launch(22, {"sh", "-c",
                               "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; "
                               "head -c 40M /dev/zero | tail >/dev/null"}));
  EXPECT_EQ(e.state, pb::TASK_SUCCEEDED) << err(22);
  EXPECT_GT(e.usage.cpu_user_us + e.usage.cpu_system_us, 0u);
  EXPECT_GE(e.usage.mem_peak_bytes, uint64_t{40} << 20);
}

// A task that ended well leaves its group for the next one with the same limits (v1,
// see Isolation): the next reports its own usage only, runs in a group of its own name,
// and the group of a failed task, or of a task that ran as root, is never kept.
TEST_P(ExecutorTest, AKeptGroupServesTheNextTaskAndCountsOnlyItsUsage) {
  if (::geteuid() != 0) GTEST_SKIP() << "switching users needs root";
  TaskLaunch busy = launch(23, {"sh", "-c", "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done"});
  busy.limits.mem_bytes = 64 << 20;
  // As root (this fixture's default: the test's own user) a task could have moved its
  // processes or rewritten its limits: its group goes.
  TaskLaunch as_root = launch(24, {"true"});
  as_root.limits = busy.limits;
  ASSERT_EQ(run(as_root).state, pb::TASK_SUCCEEDED) << err(24);
  EXPECT_EQ(iso_.spares(), 0u);

  auto users = resolve_task_users({.user = "nobody"});
  ASSERT_TRUE(users) << users.error().describe();
  options_.users = *users;
  make_executor();
  const bool keeps = iso_.info().mode == IsolationMode::kCgroupV1;
  TaskExit first = run(busy);
  ASSERT_EQ(first.state, pb::TASK_SUCCEEDED) << err(23);
  EXPECT_EQ(iso_.spares(), keeps ? 1u : 0u);
  EXPECT_FALSE(group_exists(23, 0));

  TaskLaunch next = launch(23, {"cat", "/proc/self/cgroup"});
  next.index = 1;
  next.limits = busy.limits;
  TaskExit second = run(next);
  ASSERT_EQ(second.state, pb::TASK_SUCCEEDED) << err(23, 1);
  if (GetParam().cgroups) {
    EXPECT_NE(out(23, 1).find(group_parent_ + "/23.1"), std::string::npos) << out(23, 1);
  }
  EXPECT_EQ(iso_.spares(), keeps ? 1u : 0u);
  // CPU in 10 ms ticks on v1: the shell loop is many; `cat` is at most a tick or two.
  if (first.usage.cpu_user_us + first.usage.cpu_system_us >= 50'000) {
    EXPECT_LT(second.usage.cpu_user_us + second.usage.cpu_system_us,
              first.usage.cpu_user_us + first.usage.cpu_system_us);
  }

  TaskLaunch failing = launch(23, {"sh", "-c", "exit 3"});
  failing.index = 2;
  failing.limits = busy.limits;
  TaskExit third = run(failing);
  EXPECT_EQ(third.state, pb::TASK_FAILED);
  EXPECT_EQ(iso_.spares(), 0u);  // it took the kept group, which went with it
  EXPECT_FALSE(group_exists(23, 2));
}

// Wall time from spawn to reap, on the monotonic clock: at least what the task slept.
TEST_P(ExecutorTest, WallTimeIsAtLeastWhatTheTaskSlept) {
  TaskExit e = run(launch(23, {"sleep", "0.3"}));
  EXPECT_EQ(e.state, pb::TASK_SUCCEEDED) << err(23);
  EXPECT_GE(e.usage.wall_us, 300'000u);
  EXPECT_LT(e.usage.wall_us, 60'000'000u);  // sanity only: a slow board is not a failure
  EXPECT_GE(usage_to_pb(e.usage).wall_ms(), 300u);
}

// To the WAL and over the wire in ms and KiB; a message without wall_ms (an older agent
// or record) reads as 0, unknown.
TEST(TaskUsagePb, WallTimeCrossesAndItsAbsenceIsZero) {
  const TaskUsage u{
      .cpu_user_us = 1'500, .cpu_system_us = 2'000, .mem_peak_bytes = 4096, .wall_us = 301'999};
  const pb::TaskUsage m = usage_to_pb(u);
  EXPECT_EQ(m.wall_ms(), 301u);
  const TaskUsage back = usage_from_pb(m);
  EXPECT_EQ(back.wall_us, 301'000u);
  EXPECT_EQ(back.cpu_user_us, 1'000u);
  pb::TaskUsage old;
  old.set_cpu_user_ms(5);
  EXPECT_EQ(usage_from_pb(old).wall_us, 0u);
  EXPECT_EQ(usage_to_pb(TaskUsage{.wall_us = uint64_t{1} << 50}).wall_ms(), UINT32_MAX);
}

// Least privilege (Guarantee 7): as root, a task runs as the task user, with no
// supplementary groups, no_new_privs, and no way into a 0700 data dir.
TEST_P(ExecutorTest, TasksRunAsTheTaskUserWithNothingElse) {
  if (::geteuid() != 0) GTEST_SKIP() << "switching users needs root";
  auto users = resolve_task_users({.user = "nobody"});
  ASSERT_TRUE(users) << users.error().describe();
  options_.users = *users;
  make_executor();
  // A data dir as the server makes it: 0700, the token 0600.
  fs::path data = tmp_ / "data";
  fs::create_directory(data);
  fs::permissions(data, fs::perms::owner_all, fs::perm_options::replace);
  std::ofstream(data / "token") << "secret\n";
  fs::permissions(data / "token", fs::perms::owner_read | fs::perms::owner_write,
                  fs::perm_options::replace);
  TaskLaunch l = launch(23, {"sh", "-c",
                             "id -u; id -g; grep -E '^(Groups|NoNewPrivs):' /proc/self/status; "
                             "echo $HOME $USER; cat " +
                                 (data / "token").string() + " || echo refused"});
  l.cwd = "/";
  TaskExit e = run(l);
  EXPECT_EQ(e.state, pb::TASK_SUCCEEDED) << err(23);
  // /proc/PID/status: "Groups:\t" then " GID" per supplementary group... here none.
  EXPECT_EQ(out(23), std::to_string(users->standard.uid) + "\n" +
                         std::to_string(users->standard.gid) + "\nGroups:\t \nNoNewPrivs:\t1\n" +
                         users->standard.home + " nobody\nrefused\n");
  EXPECT_NE(err(23).find("Permission denied"), std::string::npos) << err(23);
  // The child's setresuid made the memory it shares with us non-dumpable; we are again.
  EXPECT_EQ(::prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 1);
}

TEST_P(ExecutorTest, AJobMayNameOnlyAnAllowedUser) {
  if (::geteuid() != 0) GTEST_SKIP() << "switching users needs root";
  auto users = resolve_task_users({.user = "nobody", .allowed = {"daemon"}});
  ASSERT_TRUE(users) << users.error().describe();
  options_.users = *users;
  make_executor();
  TaskLaunch l = launch(24, {"id", "-un"});
  l.cwd = "/";
  l.user = "daemon";
  EXPECT_EQ(run(l).state, pb::TASK_SUCCEEDED) << err(24);
  EXPECT_EQ(out(24), "daemon\n");
  for (const char* user : {"root", "no-such-user"}) {
    l.job_id = 25;
    l.user = user;
    auto r = exec_->start(l, [](TaskExit) { ADD_FAILURE() << "on_exit after a refused start"; });
    ASSERT_FALSE(r) << user;
    EXPECT_EQ(r.error().code, Errc::kInvalidArgument);
    EXPECT_NE(r.error().message.find("--allow-task-user"), std::string::npos);
    EXPECT_EQ(exec_->running(), 0u);
    EXPECT_FALSE(group_exists(25, 0));
  }
}

// The submitter's directory the task user may not enter: the task starts in the fallback
// (here /tmp) and its log says why.
TEST_P(ExecutorTest, ADirectoryTheTaskUserCannotEnterFallsBack) {
  if (::geteuid() != 0) GTEST_SKIP() << "switching users needs root";
  auto users = resolve_task_users({.user = "nobody"});
  ASSERT_TRUE(users) << users.error().describe();
  options_.users = *users;
  make_executor();
  fs::path closed = tmp_ / "closed";
  fs::create_directory(closed);
  fs::permissions(closed, fs::perms::owner_all, fs::perm_options::replace);
  TaskLaunch l = launch(26, {"pwd"});
  l.cwd = closed.string();
  EXPECT_EQ(run(l).state, pb::TASK_SUCCEEDED) << err(26);
  EXPECT_EQ(out(26), "/tmp\n");
  EXPECT_EQ(err(26), "cardnode: cannot enter " + closed.string() + ": Permission denied\n");
}

// Three tasks writing 8 MiB each through a 256 KiB log queue: the executor stops reading
// a pipe while the queue is full, the task blocks on it, and nothing is dropped.
TEST_P(ExecutorTest, AFullLogQueuePushesBackInsteadOfDropping) {
  exec_.reset();
  logs_ = std::make_unique<storage::LogStore>(
      *engine_, storage::LogStoreOptions{.dir = tmp_ / "logs", .pending_bytes_max = 256 << 10});
  make_executor();
  constexpr uint32_t kTasks = 3;
  constexpr size_t kBytes = size_t{8} << 20;
  uint32_t done = 0;
  for (uint32_t i = 0; i < kTasks; ++i) {
    TaskLaunch l = launch(27, {"sh", "-c", "yes line-$CARDNODE_TASK_INDEX | head -c 8388608"});
    l.index = i;
    ASSERT_TRUE(exec_->start(l, [&](TaskExit e) {
      EXPECT_EQ(e.state, pb::TASK_SUCCEEDED);
      ++done;
    }));
  }
  run_until([&] { return done == kTasks; });
  for (uint32_t i = 0; i < kTasks; ++i) {
    std::string text = out(27, i);
    ASSERT_EQ(text.size(), kBytes) << "task " << i;
    std::string line = "line-" + std::to_string(i) + "\n";
    for (size_t at = 0; at + line.size() <= text.size(); at += line.size()) {
      ASSERT_EQ(text.compare(at, line.size(), line), 0) << "task " << i << " at " << at;
    }
  }
  EXPECT_EQ(logs_->stats().bytes_dropped, 0u);
}

// Output with nowhere to go (here: a log dir that cannot be made; in life, a full disk) is
// lost, and the task's own log cannot say so: the daemon's log does, once per 10 s.
TEST_P(ExecutorTest, LostOutputIsWarnedAboutInTheDaemonsLog) {
  exec_.reset();
  { std::ofstream(tmp_ / "not-a-dir") << "x"; }
  logs_ = std::make_unique<storage::LogStore>(
      *engine_, storage::LogStoreOptions{.dir = tmp_ / "not-a-dir" / "logs"});
  std::vector<std::string> warnings;
  options_.warn = [&](const std::string& line) { warnings.push_back(line); };
  make_executor();
  TaskExit first = run(launch(28, {"sh", "-c", "echo lost; echo also >&2"}));
  EXPECT_EQ(first.state, pb::TASK_SUCCEEDED);  // lost output does not fail the task
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("task 28.0: output lost: mkdir "), std::string::npos) << warnings[0];
  TaskLaunch again = launch(28, {"echo", "lost too"});
  again.index = 1;
  EXPECT_EQ(run(again).state, pb::TASK_SUCCEEDED);
  EXPECT_EQ(warnings.size(), 1u);  // counted for the next line, not printed again
  EXPECT_GT(logs_->stats().bytes_dropped, 0u);
}

TEST_P(ExecutorTest, MemoryLimitIsEnforced) {
  // qemu-user accepts setrlimit(RLIMIT_AS) and ignores it (it would starve the emulator).
  if (iso_.memory_by_rlimit() && std::getenv("CARDNODE_TEST_EMULATOR") != nullptr) {
    GTEST_SKIP() << "RLIMIT_AS is not enforced under " << std::getenv("CARDNODE_TEST_EMULATOR");
  }
  // GNU tail keeps a newline-free stream in memory: 300 MiB against a 64 MiB limit.
  std::string cmd = "head -c 300M /dev/zero | tail >/dev/null";
  TaskLaunch l = launch(13, {"sh", "-c", cmd});
  l.limits.mem_bytes = 64 << 20;
  TaskExit e = run(l);
  if (iso_.memory_by_rlimit()) {
    // RLIMIT_AS: tail's allocation fails and it says so.
    EXPECT_EQ(e.state, pb::TASK_FAILED);
    EXPECT_NE(err(13).find("tail"), std::string::npos) << err(13);
  } else {
    // The cgroup OOM killer ends tail (v2 with memory.oom.group: the whole group); the
    // shell then exits 137, and a failed task with an OOM kill in its group is OOM_KILLED.
    EXPECT_EQ(e.state, pb::TASK_OOM_KILLED) << "exit " << e.exit_code << " signal " << e.signal;
  }
  EXPECT_FALSE(group_exists(13, 0));
}

// A shell that outlives its child's OOM kill and exits 0 succeeded; its log says what the
// limit did (on cgroup v1, or v2 without memory.oom.group, where only the child dies).
TEST_P(ExecutorTest, AnOomKillInATaskThatSucceedsIsInItsLog) {
  if (iso_.memory_by_rlimit()) GTEST_SKIP() << "no memory cgroup in " << GetParam().name << " mode";
  TaskLaunch l = launch(29, {"sh", "-c", "head -c 300M /dev/zero | tail >/dev/null; exit 0"});
  l.limits.mem_bytes = 64 << 20;
  TaskExit e = run(l);
  const std::string marker = "[cardnode: the memory limit killed a process of this task";
  if (e.state == pb::TASK_OOM_KILLED) {
    // v2 with memory.oom.group: the whole group went. Under qemu-user the shell's own
    // emulator may be what the limit's OOM killer picks.
    EXPECT_TRUE(iso_.info().mode == IsolationMode::kCgroupV2 ||
                std::getenv("CARDNODE_TEST_EMULATOR") != nullptr);
  } else {
    EXPECT_EQ(e.state, pb::TASK_SUCCEEDED) << "exit " << e.exit_code << " signal " << e.signal;
    EXPECT_NE(err(29).find(marker), std::string::npos) << err(29);
  }
  // And a task that stays within its limit gets no such line.
  TaskLaunch small = launch(29, {"sh", "-c", "head -c 1M /dev/zero | tail >/dev/null"});
  small.index = 1;
  small.limits.mem_bytes = 64 << 20;
  EXPECT_EQ(run(small).state, pb::TASK_SUCCEEDED);
  EXPECT_EQ(err(29, 1).find(marker), std::string::npos) << err(29, 1);
}

TEST_P(ExecutorTest, APidsLimitContainsAForkBomb) {
  const auto& enforced = iso_.info().enforced;
  if (std::find(enforced.begin(), enforced.end(), "pids") == enforced.end()) {
    GTEST_SKIP() << "no pids controller in " << GetParam().name << " mode";
  }
  // Under qemu-user every emulated process is two host tasks, and a child whose second
  // thread cannot start dies while the shell's fork succeeded: the shell may go on forking
  // into the one free slot. The limit is the kernel's; it is checked natively and in the
  // arm64 VM (tests/vm/).
  if (const char* emulator = std::getenv("CARDNODE_TEST_EMULATOR"); emulator != nullptr) {
    GTEST_SKIP() << "pids accounting under " << emulator << " counts the emulator's threads";
  }
  // 64 background children against a limit of 16 tasks: the shell's forks fail once the
  // group is full, and it says so. Without the limit it prints "started 64" and succeeds;
  // the children die with the report either way.
  TaskLaunch l = launch(30, {"sh", "-c",
                             "n=0; while [ $n -lt 64 ]; do sleep 1000 & n=$((n+1)); done; "
                             "echo started $n"});
  l.limits.pids_max = 16;
  TaskExit e = run(l);
  EXPECT_NE(e.state, pb::TASK_SUCCEEDED) << out(30);
  EXPECT_EQ(out(30).find("started 64"), std::string::npos) << out(30);
  EXPECT_NE(err(30).find("fork"), std::string::npos) << err(30);
  EXPECT_FALSE(group_exists(30, 0));
}

TEST_P(ExecutorTest, RunningMaxAndDuplicatesAreRefused) {
  options_.running_max = 2;
  make_executor();
  int exits = 0;
  auto a = exec_->start(launch(14, {"sleep", "100"}), [&](TaskExit) { ++exits; });
  ASSERT_TRUE(a) << a.error().describe();
  auto dup = exec_->start(launch(14, {"sleep", "100"}), [&](TaskExit) { ++exits; });
  ASSERT_FALSE(dup);
  EXPECT_EQ(dup.error().code, Errc::kInvalidArgument);
  TaskLaunch second = launch(14, {"sleep", "100"});
  second.index = 1;
  ASSERT_TRUE(exec_->start(second, [&](TaskExit) { ++exits; }));
  auto third = exec_->start(launch(15, {"sleep", "100"}), [&](TaskExit) { ++exits; });
  ASSERT_FALSE(third);
  EXPECT_EQ(third.error().code, Errc::kResourceExhausted);
  EXPECT_EQ(exec_->running(), 2u);
  exec_->kill_all();
  run_until([&] { return exits == 2; });
  EXPECT_EQ(exec_->running(), 0u);
}

// A kill right after start finds the start queued on the loop, queued on the spawn thread
// (withdrawn before its clone), or in its clone (signalled once the pid arrives): whichever,
// the attempt ends cancelled, once, and leaves no group and no process.
TEST_P(ExecutorTest, AKillRightAfterStartEndsCancelledWithNothingLeft) {
  for (uint32_t i = 0; i < 20; ++i) {
    std::optional<TaskExit> exit;
    const uint64_t job = 900 + i;
    int exits = 0;
    ASSERT_TRUE(exec_->start(launch(job, {"sleep", "100"}), [&](TaskExit e) {
      exit = e;
      ++exits;
    }));
    exec_->kill(job, 0, KillReason::kCancelled);
    run_until([&] { return exit.has_value(); });
    ASSERT_TRUE(exit.has_value()) << i;
    EXPECT_EQ(exits, 1);
    EXPECT_EQ(exit->state, pb::TASK_CANCELLED) << i;
    EXPECT_FALSE(group_exists(job, 0)) << i;
    const std::string tag = task_key_prefix(options_.pool_tag) + std::to_string(job) + ".0";
    EXPECT_TRUE(pids_with_env(tag, /*prefix=*/false, 64).empty()) << i;
  }
  EXPECT_EQ(exec_->running(), 0u);
}

// A start that fails on the spawn thread (here the Spawner's bound on arguments, checked
// there before the clone) ends the attempt 127 with the reason in its stderr log.
TEST_P(ExecutorTest, AStartThatFailsOnTheSpawnThreadEnds127WithTheReason) {
  std::vector<std::string> argv(70'000, "x");
  argv[0] = "true";
  TaskExit e = run(launch(950, argv));
  EXPECT_EQ(e.state, pb::TASK_FAILED);
  EXPECT_EQ(e.exit_code, 127);
  EXPECT_NE(err(950).find("cardnode: cannot start task: "), std::string::npos) << err(950);
  EXPECT_FALSE(group_exists(950, 0));
}

// 200 starts in one go: each returns at once (its clone runs on the spawn worker; the
// loop's share of a start is paced by a budget per turn), a task killed before its process
// exists ends cancelled without ever having one, and the rest all get their processes.
TEST_P(ExecutorTest, ABurstOfStartsReturnsAtOnceAndAllGetProcesses) {
  constexpr uint32_t kTasks = 200;
  std::vector<TaskExit> exits;
  for (uint32_t i = 0; i < kTasks; ++i) {
    TaskLaunch l = launch(29, {"sleep", "100"});
    l.index = i;
    Status started = exec_->start(l, [&](TaskExit e) { exits.push_back(e); });
    ASSERT_TRUE(started) << started.error().describe();
  }
  // No start waited for its clone: not one process is known yet.
  for (uint32_t i = 0; i < kTasks; ++i) EXPECT_EQ(exec_->pid_of(29, i), 0) << i;
  EXPECT_EQ(exec_->running(), kTasks);
  // Queued for its turn, or for the worker: 199 clones cannot all have run meanwhile.
  exec_->kill(29, kTasks - 1, KillReason::kCancelled);
  run_until([&] { return !exits.empty(); });
  EXPECT_EQ(exits[0].state, pb::TASK_CANCELLED);
  EXPECT_EQ(exits[0].signal, 0);  // no process was ever signalled
  run_until([&] {
    for (uint32_t i = 0; i + 1 < kTasks; ++i) {
      if (exec_->pid_of(29, i) == 0) return false;
    }
    return true;
  });
  for (uint32_t i = 0; i + 1 < kTasks; ++i) EXPECT_TRUE(alive(exec_->pid_of(29, i))) << i;
  exec_->kill_all();
  run_until([&] { return exits.size() == kTasks; });
  EXPECT_EQ(exec_->running(), 0u);
}

TEST_P(ExecutorTest, ShutdownReportsTasksLostAndRequeueFree) {
  std::vector<TaskExit> exits;
  for (uint32_t i = 0; i < 3; ++i) {
    TaskLaunch l = launch(16, {"sleep", "100"});
    l.index = i;
    ASSERT_TRUE(exec_->start(l, [&](TaskExit e) { exits.push_back(e); }));
  }
  exec_->kill_all();
  run_until([&] { return exits.size() == 3; });
  for (const TaskExit& e : exits) {
    EXPECT_EQ(e.state, pb::TASK_LOST);
    EXPECT_TRUE(e.requeue_free);  // a clean stop is not the task's fault
  }
}

TEST_P(ExecutorTest, GraceLetsTheTaskCleanUp) {
  options_.kill_grace_ms = 5000;
  make_executor();
  std::optional<TaskExit> exit;
  ASSERT_TRUE(exec_->start(
      launch(17, {"sh", "-c", "trap 'echo cleaned; exit 7' TERM; echo ready; sleep 100 & wait"}),
      [&](TaskExit e) { exit = e; }));
  wait_for_lines(17, 1);
  exec_->kill(17, 0, KillReason::kCancelled);
  run_until([&] { return exit.has_value(); });
  EXPECT_EQ(exit->state, pb::TASK_CANCELLED);
  EXPECT_EQ(exit->exit_code, 7);
  EXPECT_EQ(out(17), "ready\ncleaned\n");
}

TEST_P(ExecutorTest, GraceEndsWithSigkill) {
  options_.kill_grace_ms = 100;
  make_executor();
  std::optional<TaskExit> exit;
  ASSERT_TRUE(exec_->start(launch(18, {"sh", "-c", "trap '' TERM; echo ready; sleep 100"}),
                           [&](TaskExit e) { exit = e; }));
  wait_for_lines(18, 1);
  exec_->kill(18, 0, KillReason::kTimedOut);
  run_until([&] { return exit.has_value(); });
  EXPECT_EQ(exit->state, pb::TASK_TIMED_OUT);
  EXPECT_EQ(exit->signal, SIGKILL);
}

TEST_P(ExecutorTest, RetryFromOnExitReusesTheTaskSlot) {
  std::vector<TaskExit> exits;
  TaskLaunch l = launch(19, {"sh", "-c", "echo attempt $CARDNODE_ATTEMPT; exit 1"});
  std::function<void(TaskExit)> on_exit = [&](TaskExit e) {
    exits.push_back(e);
    if (exits.size() == 1) {
      l.attempt = 2;
      EXPECT_TRUE(exec_->start(l, on_exit));
    }
  };
  ASSERT_TRUE(exec_->start(l, on_exit));
  run_until([&] { return exits.size() == 2; });
  EXPECT_EQ(out(19), "attempt 2\n");  // a new attempt starts its log afresh
}

INSTANTIATE_TEST_SUITE_P(Modes, ExecutorTest,
                         ::testing::Values(Mode{"cgroup", true, PidfdSupport::kAuto},
                                           Mode{"rlimit", false, PidfdSupport::kAuto},
                                           Mode{"sigchld", true, PidfdSupport::kNone}),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace cardnode::runtime
