// SpawnWorker: clones off the loop thread, results on it, cancel before the clone.
#include "runtime/exec/spawn_worker.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
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
  void make() {
    worker_ = std::make_unique<SpawnWorker>(
        &loop_, PidfdSupport::kAuto, [this](uint64_t tag, Result<Spawned> r) {
          results_.push_back({tag, std::move(r), std::this_thread::get_id()});
        });
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

// Tasks are the spawn thread's children; orphans a subreaper adopts go to the main thread.
// The executor tells them apart by that (own_children's skip_tid).
TEST_F(SpawnWorkerTest, TasksAreChildrenOfTheSpawnThread) {
  make();
  EXPECT_EQ(worker_->thread_id(), 0);
  ASSERT_TRUE(worker_->submit(1, request({"sleep", "30"})));
  const pid_t tid = worker_->thread_id();
  EXPECT_GT(tid, 0);
  EXPECT_NE(tid, ::gettid());
  await(1);
  ASSERT_TRUE(results_[0].spawned) << results_[0].spawned.error().describe();
  const pid_t pid = results_[0].spawned->pid;
  auto has = [pid](const std::vector<int32_t>& v) {
    return std::find(v.begin(), v.end(), pid) != v.end();
  };
  EXPECT_TRUE(has(own_children(4096)));
  EXPECT_FALSE(has(own_children(4096, tid)));
  ::kill(pid, SIGKILL);
  reap(*results_[0].spawned);
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

}  // namespace
}  // namespace cardnode::runtime
