// SpawnWorker: clones off the loop thread, results on it, cancel before the clone.
#include "runtime/exec/spawn_worker.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <future>
#include <optional>
#include <thread>
#include <vector>

#include "runtime/exec/isolation.h"

namespace cardnode::runtime {
namespace {

struct Result1 {
  uint64_t tag = 0;
  Result<Spawned> spawned = fail(Errc::kInternal, "none");
  std::thread::id thread;
};

class SpawnWorkerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(uv_loop_init(&loop_), 0);
    ASSERT_EQ(::pipe2(out_, O_CLOEXEC), 0);
    for (int& fd : out_) fd = above_stdio(fd);
  }
  void TearDown() override {
    worker_.reset();
    uv_run(&loop_, UV_RUN_DEFAULT);  // the worker's wake-up handle closes
    EXPECT_EQ(uv_loop_close(&loop_), 0);
    for (int fd : out_) ::close(fd);
  }
  void make(uint32_t threads = 1) {
    worker_ = std::make_unique<SpawnWorker>(
        &loop_, PidfdSupport::kAuto,
        [this](uint64_t tag, Result<Spawned> r) {
          results_.push_back({tag, std::move(r), std::this_thread::get_id()});
        },
        threads);
  }
  SpawnRequest request(std::vector<std::string> argv) {
    SpawnRequest r;
    r.argv = std::move(argv);
    r.env = {"PATH=/usr/bin:/bin"};
    r.stdout_fd = out_[1];
    r.stderr_fd = out_[1];
    return r;
  }
  // Runs the loop until `n` results are in; bounded: a lost result fails, not hangs.
  void await(size_t n) {
    uv_timer_t guard;
    uv_timer_init(&loop_, &guard);
    uv_timer_start(
        &guard, [](uv_timer_t* t) { uv_stop(t->loop); }, 30'000, 0);
    while (results_.size() < n) {
      if (uv_run(&loop_, UV_RUN_ONCE) == 0 && results_.size() < n) break;
      if (!uv_is_active(reinterpret_cast<uv_handle_t*>(&guard))) break;
    }
    uv_close(reinterpret_cast<uv_handle_t*>(&guard), nullptr);
    uv_run(&loop_, UV_RUN_NOWAIT);
    ASSERT_GE(results_.size(), n) << "results never came";
  }
  // Runs the loop until the result for `tag` is in (bounded); nullptr if it never came.
  const Result1* await_tag(uint64_t tag) {
    auto find = [&]() -> const Result1* {
      for (const Result1& r : results_) {
        if (r.tag == tag) return &r;
      }
      return nullptr;
    };
    for (size_t n = 1; find() == nullptr && n <= 64 && !::testing::Test::HasFatalFailure(); ++n) {
      await(std::max(n, results_.size() + 1));
    }
    return find();
  }
  static int reap(const Spawned& s) {
    int status = 0;
    EXPECT_EQ(::waitpid(s.pid, &status, 0), s.pid);
    if (s.pidfd >= 0) ::close(s.pidfd);
    return status;
  }

  uv_loop_t loop_{};
  int out_[2] = {-1, -1};
  std::unique_ptr<SpawnWorker> worker_;
  std::vector<Result1> results_;
};

TEST_F(SpawnWorkerTest, ResultsComeBackOnTheLoopThread) {
  make();
  for (uint64_t tag = 1; tag <= 3; ++tag) ASSERT_TRUE(worker_->submit(tag, request({"true"})));
  EXPECT_EQ(worker_->in_flight(), 3u);
  await(3);
  EXPECT_EQ(worker_->in_flight(), 0u);
  std::vector<uint64_t> tags;
  for (Result1& r : results_) {
    tags.push_back(r.tag);
    EXPECT_EQ(r.thread, std::this_thread::get_id());
    ASSERT_TRUE(r.spawned) << r.spawned.error().describe();
    EXPECT_GT(r.spawned->pid, 0);
    int status = reap(*r.spawned);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  std::sort(tags.begin(), tags.end());
  EXPECT_EQ(tags, (std::vector<uint64_t>{1, 2, 3}));
}

// Tasks are the spawn threads' children; orphans a subreaper adopts go to the main thread.
// The executor tells them apart by that (own_children's skip_tids).
TEST_F(SpawnWorkerTest, TasksAreChildrenOfTheSpawnThreads) {
  make(2);
  EXPECT_TRUE(worker_->thread_ids().empty());
  ASSERT_TRUE(worker_->submit(1, request({"sleep", "30"})));
  ASSERT_TRUE(worker_->submit(2, request({"sleep", "30"})));
  const std::vector<pid_t> tids = worker_->thread_ids();
  ASSERT_EQ(tids.size(), 2u);
  for (pid_t tid : tids) {
    EXPECT_GT(tid, 0);
    EXPECT_NE(tid, ::gettid());
  }
  EXPECT_NE(tids[0], tids[1]);
  await(2);
  for (Result1& r : results_) {
    ASSERT_TRUE(r.spawned) << r.spawned.error().describe();
    const pid_t pid = r.spawned->pid;
    auto has = [pid](const std::vector<int32_t>& v) {
      return std::find(v.begin(), v.end(), pid) != v.end();
    };
    EXPECT_TRUE(has(own_children(4096)));
    EXPECT_FALSE(has(own_children(4096, tids)));
  }
  for (Result1& r : results_) {
    ::kill(r.spawned->pid, SIGKILL);
    reap(*r.spawned);
  }
}

// Two threads: a second request is made while the first is still being made (two slots'
// clones overlap, as xargs's forks do). Its prepare step waits until the other's has
// begun; with one thread that never happens, and the test fails on the bound.
TEST_F(SpawnWorkerTest, TwoThreadsMakeTwoSpawnsAtOnce) {
  make(2);
  std::atomic<int> begun{0};
  std::atomic<bool> overlapped{false};
  auto both = [&](SpawnRequest&) {
    ++begun;
    for (int i = 0; i < 10'000 && begun.load() < 2; ++i) {  // bounded: 10 s
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (begun.load() == 2) overlapped = true;
    return Status{};
  };
  ASSERT_TRUE(worker_->submit(1, request({"true"}), both));
  ASSERT_TRUE(worker_->submit(2, request({"true"}), both));
  await(2);
  EXPECT_TRUE(overlapped);
  for (Result1& r : results_) {
    ASSERT_TRUE(r.spawned) << r.spawned.error().describe();
    int status = reap(*r.spawned);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
}

// The point of the worker: while a spawn is being made, the loop runs. Its prepare step
// stands in for a slow spawn (a child's long execve, a slow cgroupfs): it blocks until a
// timer on the loop releases it; were it run on the loop, the timer would never fire.
TEST_F(SpawnWorkerTest, TheLoopRunsWhileASpawnIsBeingMade) {
  make();
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<bool> preparing{false};
  Status queued = worker_->submit(7, request({"true"}), [&](SpawnRequest&) {
    preparing = true;
    released.wait_for(std::chrono::seconds(30));  // bounded: a held loop fails, not hangs
    return Status{};
  });
  ASSERT_TRUE(queued);
  struct Ctx {
    std::atomic<bool>* preparing;
    std::promise<void>* release;
    bool fired = false;
  } ctx{&preparing, &release};
  uv_timer_t tick;
  uv_timer_init(&loop_, &tick);
  tick.data = &ctx;
  uv_timer_start(
      &tick,
      [](uv_timer_t* t) {
        auto* c = static_cast<Ctx*>(t->data);
        if (!c->preparing->load()) return;  // the worker has not begun yet: next tick
        c->fired = true;
        c->release->set_value();
        uv_timer_stop(t);
      },
      1, 1);
  await(1);
  uv_close(reinterpret_cast<uv_handle_t*>(&tick), nullptr);
  uv_run(&loop_, UV_RUN_NOWAIT);  // its close callback: `tick` ends with this scope
  EXPECT_TRUE(ctx.fired);
  ASSERT_TRUE(results_[0].spawned) << results_[0].spawned.error().describe();
  reap(*results_[0].spawned);
}

TEST_F(SpawnWorkerTest, APrepareErrorIsTheResultAndItsDescriptorsAreClosed) {
  make();
  int opened = -1;
  Status queued = worker_->submit(3, request({"true"}), [&](SpawnRequest& r) -> Status {
    opened = above_stdio(::open("/dev/null", O_WRONLY | O_CLOEXEC));
    r.cgroup_procs_fds.push_back(opened);
    return fail(Errc::kIo, "no group");
  });
  ASSERT_TRUE(queued);
  await(1);
  ASSERT_FALSE(results_[0].spawned);
  EXPECT_EQ(results_[0].spawned.error().message, "no group");
  ASSERT_GE(opened, 0);
  EXPECT_EQ(::fcntl(opened, F_GETFD), -1);  // the worker closed it
}

TEST_F(SpawnWorkerTest, ACancelBeforeTheCloneMakesNoProcess) {
  make();  // one thread: the second request waits behind the first
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<bool> preparing{false};
  Status queued = worker_->submit(1, request({"true"}), [&](SpawnRequest&) {
    preparing = true;
    released.wait_for(std::chrono::seconds(30));  // bounded: a held loop fails, not hangs
    return Status{};
  });
  ASSERT_TRUE(queued);
  ASSERT_TRUE(worker_->submit(2, request({"true"})));
  for (int i = 0; i < 30'000 && !preparing; ++i) {  // bounded: 30 s
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_TRUE(preparing);
  EXPECT_FALSE(worker_->cancel(1));  // begun
  EXPECT_TRUE(worker_->cancel(2));
  EXPECT_FALSE(worker_->cancel(2));  // once
  release.set_value();
  await(2);
  for (Result1& r : results_) {
    if (r.tag == 1) {
      ASSERT_TRUE(r.spawned) << r.spawned.error().describe();
      reap(*r.spawned);
    } else {
      ASSERT_FALSE(r.spawned);
      EXPECT_EQ(r.spawned.error().code, Errc::kCancelled);
    }
  }
  // No other child exists: the cancelled request made none.
  EXPECT_EQ(::waitpid(-1, nullptr, WNOHANG), -1);
  EXPECT_EQ(errno, ECHILD);
}

// Held children on two threads: withdrawing A (closing our end unsent, as a kill does, or
// as the kernel does when the server dies) ends A at once, although B's child was cloned
// while A's end was open and took a copy of it: a held child closes every descriptor but
// its own before it waits. Then B, released, runs its command.
TEST_F(SpawnWorkerTest, AWithdrawnHeldChildEndsWhileAnotherIsHeld) {
  if (!Spawner::can_hold()) GTEST_SKIP() << "no close_range here: spawns are not held";
  if (::access(("/proc/self/task/" + std::to_string(::gettid()) + "/children").c_str(), R_OK) !=
      0) {
    GTEST_SKIP() << "no /proc/PID/task/TID/children here";
  }
  make(2);
  // Our ends of the two sockets, closed on every way out: a failed assertion must not
  // leave a child held (the worker's destructor requires nothing in flight).
  int a[2] = {-1, -1};
  int b[2] = {-1, -1};
  struct Closer {
    int* fds[2];
    ~Closer() {
      for (int* fd : fds) {
        if (*fd >= 0) ::close(*fd);
      }
    }
  } closer{{&a[1], &b[1]}};
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, a), 0);
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, b), 0);
  for (int* fd : {&a[0], &a[1], &b[0], &b[1]}) *fd = above_stdio(*fd);
  const std::vector<int32_t> before = own_children(4096);
  SpawnRequest ra = request({"sh", "-c", "exit 3"});
  ra.hold_fd = a[0];  // the worker's from here on
  ra.hold = std::make_shared<HeldSpawn>();
  SpawnRequest rb = request({"sh", "-c", "exit 4"});
  rb.hold_fd = b[0];
  rb.hold = std::make_shared<HeldSpawn>();
  std::shared_ptr<HeldSpawn> hold_b = rb.hold;
  ASSERT_TRUE(worker_->submit(1, std::move(ra)));
  ASSERT_TRUE(worker_->submit(2, std::move(rb)));
  // Both children exist (held): the spawn threads have two new children between them.
  auto new_children = [&] {
    size_t n = 0;
    for (int32_t pid : own_children(4096)) {
      n += std::find(before.begin(), before.end(), pid) == before.end() ? 1 : 0;
    }
    return n;
  };
  for (int i = 0; i < 30'000 && new_children() < 2; ++i) {  // bounded: 30 s
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_EQ(new_children(), 2u);
  ::close(a[1]);  // A withdrawn
  a[1] = -1;
  // (Natively A's result comes now and B's only after its release; under qemu-user, whose
  // clone does not wait for the exec, both may be in already.)
  const Result1* ra_done = await_tag(1);
  ASSERT_NE(ra_done, nullptr);
  ASSERT_TRUE(ra_done->spawned) << ra_done->spawned.error().describe();
  int status = reap(*ra_done->spawned);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 127) << status;  // nothing ran
  ASSERT_TRUE(release_held(b[1], *hold_b, /*drop=*/false));
  ::close(b[1]);
  b[1] = -1;
  const Result1* rb_done = await_tag(2);
  ASSERT_NE(rb_done, nullptr);
  ASSERT_TRUE(rb_done->spawned) << rb_done->spawned.error().describe();
  status = reap(*rb_done->spawned);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 4) << status;  // its command ran
}

// A held request released but never cloned (here its prepare fails after the release, as
// a cgroup mkdir can) still leaves the dumpable window its release entered: the count goes
// back to 0, so the next clone out makes the process dumpable again.
TEST_F(SpawnWorkerTest, AReleasedRequestThatIsNeverClonedLeavesTheWindow) {
  ASSERT_EQ(::prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 1);
  make();
  int go[2] = {-1, -1};
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, go), 0);
  for (int& fd : go) fd = above_stdio(fd);
  SpawnRequest r = request({"true"});
  r.creds.drop = true;  // no clone happens: no root needed
  r.hold_fd = go[0];    // the worker's from here on
  r.hold = std::make_shared<HeldSpawn>();
  std::shared_ptr<HeldSpawn> hold = r.hold;
  const int ours = go[1];
  ASSERT_TRUE(worker_->submit(1, std::move(r), [hold, ours](SpawnRequest&) -> Status {
    (void)release_held(ours, *hold, /*drop=*/true);  // enters the window
    return fail(Errc::kIo, "no group");
  }));
  await(1);
  ASSERT_FALSE(results_[0].spawned);
  ::close(ours);
  enter_task_user_window();  // the first in the window again, if the count is back at 0
  ASSERT_EQ(::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), 0);
  leave_task_user_window();
  EXPECT_EQ(::prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 1) << "the window's count leaked";
  ASSERT_EQ(::prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), 0);
}

// Between its setresuid and its execve a child runs as the task user in our memory, which
// the kernel has made non-dumpable. With two spawn threads the windows overlap: the first
// clone to return must not make the process dumpable while the other's child is still in
// its window; the last one out does.
TEST(TaskUserWindow, OnlyTheLastCloneOutMakesTheProcessDumpableAgain) {
  ASSERT_EQ(::prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 1);  // as a test binary starts
  enter_task_user_window();                            // thread A clones
  ASSERT_EQ(::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), 0);  // A's child drops to the task user
  enter_task_user_window();                            // thread B clones; its child drops too
  leave_task_user_window();                            // A's child has exec'd
  EXPECT_EQ(::prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 0);  // B's child has not
  leave_task_user_window();
  EXPECT_EQ(::prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 1);
}

// A held child waits as root, outside the window: its release enters the window for it,
// and the return of its clone leaves it. A release that comes after the clone returned
// (qemu-user's clone does not wait for the exec) leaves no count behind.
TEST(TaskUserWindow, AHeldChildIsInTheWindowFromItsReleaseToItsReturn) {
  ASSERT_EQ(::prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 1);
  int fds[2] = {-1, -1};
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  HeldSpawn in_order;
  ASSERT_TRUE(release_held(fds[1], in_order, /*drop=*/true));  // the window is entered
  ASSERT_EQ(::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), 0);          // the child's setresuid
  EXPECT_EQ(in_order.state.exchange(2), 1);                    // its clone returns ...
  leave_task_user_window();                                    // ... and the thread leaves
  EXPECT_EQ(::prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 1);
  HeldSpawn returned_first;
  returned_first.state = 2;
  ASSERT_TRUE(release_held(fds[1], returned_first, /*drop=*/true));
  enter_task_user_window();  // the count is back at 0: this one is the first again
  ASSERT_EQ(::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), 0);
  leave_task_user_window();
  EXPECT_EQ(::prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 1);
  ::close(fds[0]);
  ::close(fds[1]);
}

// A process that was not dumpable to begin with (a daemon that chose so) stays so.
TEST(TaskUserWindow, ANonDumpableProcessStaysSo) {
  ASSERT_EQ(::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), 0);
  enter_task_user_window();
  leave_task_user_window();
  EXPECT_EQ(::prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 0);
  ASSERT_EQ(::prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), 0);
}

}  // namespace
}  // namespace cardnode::runtime
