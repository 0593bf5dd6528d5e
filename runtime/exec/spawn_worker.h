// SpawnWorker: Spawner::spawn (runtime/exec/spawn.h) on a thread of its own, with each
// result handed back on the loop thread.
//
// Why a thread: a spawn returns only once the child has reached its execve (CLONE_VFORK:
// the child borrows our memory until then), and that wait is most of a spawn: ~0.5 ms of
// the loop per task on this VM, 10 ms or more on a loaded board. On the loop it serialised
// every start and exit of a board behind it, so two `/bin/true` slots ran one at a time.
// Here the loop only queues the request and goes on; one thread makes the clones in order.
//
// A request may come with a `prepare` step that runs on the worker just before its clone
// (the Executor creates the task's cgroups there: a dozen cgroupfs calls that would
// otherwise take the loop's time too); an error from it is the request's result.
//
// Ownership: a request's strings move into the worker. Its stdout/stderr descriptors stay
// the caller's, who keeps them open until the result has been delivered; the
// cgroup.procs descriptors in it (put there by the caller or by `prepare`) are the
// worker's, closed once the clone has returned (the child has its own copies).
//
// Bounds: the caller bounds what is in flight (the Executor: running_max tasks); the
// worker holds at most that many requests and results.
//
// Threading: the constructor, submit(), in_flight() and the destructor on the loop thread;
// `done` runs on the loop thread from the loop. The destructor requires nothing in flight
// (checked: a dropped result would leak a child and its pidfd) and joins the thread.
#pragma once

#include <sys/types.h>
#include <uv.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "proto/error.h"
#include "runtime/exec/spawn.h"

namespace cardnode::runtime {

class SpawnWorker {
 public:
  // tag: the caller's name for the request, given back with its result.
  using Done = std::function<void(uint64_t tag, Result<Spawned> result)>;
  // Runs on a worker thread: touches nothing the loop thread uses.
  using Prepare = std::function<Status(SpawnRequest& request)>;

  SpawnWorker(uv_loop_t* loop, PidfdSupport pidfd, Done done);
  ~SpawnWorker();
  SpawnWorker(const SpawnWorker&) = delete;
  SpawnWorker& operator=(const SpawnWorker&) = delete;

  // Errors (nothing queued, `done` never runs for it): kResourceExhausted when the thread
  // cannot be started (the process or thread limit).
  [[nodiscard]] Status submit(uint64_t tag, SpawnRequest request, Prepare prepare = nullptr);
  // Withdraws a request the worker has not begun: it is delivered (on a later loop turn,
  // as usual) as Errc::kCancelled, with no process made. False once its clone has begun.
  bool cancel(uint64_t tag);
  // The thread's id (gettid), 0 before the first submit(): the clones' parent, so the
  // children listed under it are tasks (runtime/exec/isolation.h own_children).
  pid_t thread_id() const { return thread_tid_.load(); }
  // Submitted, result not yet delivered.
  uint32_t in_flight() const { return in_flight_; }

 private:
  struct Job {
    uint64_t tag = 0;
    SpawnRequest request;
    Prepare prepare;
    Result<Spawned> result = fail(Errc::kInternal, "not spawned");
  };
  struct Wakeup;  // the uv_async_t, heap-owned: it may still be closing after we are gone

  void run();        // the thread
  void deliver();    // loop thread: hands out finished results
  Spawner spawner_;  // the thread's alone once it runs
  Done done_;
  Wakeup* wakeup_ = nullptr;
  uint32_t in_flight_ = 0;  // loop thread
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Job>> todo_;       // guarded by mu_
  std::deque<std::unique_ptr<Job>> done_jobs_;  // guarded by mu_
  bool stop_ = false;                           // guarded by mu_
  std::thread thread_;                          // started by the first submit()
  std::atomic<pid_t> thread_tid_{0};
};

}  // namespace cardnode::runtime
