// SpawnWorker: Spawner::spawn (runtime/exec/spawn.h) on a thread of its own, with each
// result handed back on the loop thread.
//
// Why threads: a spawn returns only once the child has reached its execve (CLONE_VFORK:
// the child borrows our memory until then), and that wait is most of a spawn: ~0.5 ms of
// the loop per task on this VM, 10 ms or more on a loaded board. On the loop it serialised
// every start and exit of a board behind it, so two `/bin/true` slots ran one at a time.
// Here the loop only queues the request and goes on. One thread per CPU (`threads`) takes
// requests from one queue, so the clones of a board's slots overlap as xargs's forks do;
// with one thread, two slots' clones waited for each other. Requests begin in order;
// their results may come back in any order (each carries its tag).
//
// A request may come with a `prepare` step that runs on the worker just before its clone
// (the Executor creates the task's cgroups there: a dozen cgroupfs calls that would
// otherwise take the loop's time too); an error from it is the request's result.
//
// Ownership: a request's strings move into the worker. Its stdout/stderr descriptors stay
// the caller's, who keeps them open until the result has been delivered; the
// cgroup.procs descriptors in it (put there by the caller or by `prepare`) and its
// hold_fd are the worker's, closed once the clone has returned (the child has its own
// copies). A held request's clone returns only once its child is released or withdrawn
// (spawn.h), so its thread waits that long; the release comes from another thread.
//
// Bounds: the caller bounds what is in flight (the Executor: running_max tasks); the
// worker holds at most that many requests and results.
//
// Threading: the constructor, submit(), in_flight(), thread_ids() and the destructor on the
// loop thread; `done` runs on the loop thread from the loop. The destructor requires
// nothing in flight (checked: a dropped result would leak a child and its pidfd) and joins
// the threads. Each thread has its own Spawner; spawn.cc keeps the process-wide dumpable
// flag right when several of them clone at once.
#pragma once

#include <sys/types.h>
#include <uv.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "proto/error.h"
#include "runtime/exec/spawn.h"

namespace cardnode::runtime {

class SpawnWorker {
 public:
  // tag: the caller's name for the request, given back with its result.
  using Done = std::function<void(uint64_t tag, Result<Spawned> result)>;
  // Runs on a worker thread: touches nothing the loop thread uses.
  using Prepare = std::function<Status(SpawnRequest& request)>;

  // threads: how many clones may be under way at once (at least 1).
  SpawnWorker(uv_loop_t* loop, PidfdSupport pidfd, Done done, uint32_t threads = 1);
  ~SpawnWorker();
  SpawnWorker(const SpawnWorker&) = delete;
  SpawnWorker& operator=(const SpawnWorker&) = delete;

  // Errors (nothing queued, `done` never runs for it): kResourceExhausted when the thread
  // cannot be started (the process or thread limit).
  [[nodiscard]] Status submit(uint64_t tag, SpawnRequest request, Prepare prepare = nullptr);
  // Withdraws a request the worker has not begun: it is delivered (on a later loop turn,
  // as usual) as Errc::kCancelled, with no process made. False once its clone has begun.
  bool cancel(uint64_t tag);
  // The threads' ids (gettid), empty before the first submit(): the clones' parents, so
  // the children listed under them are tasks (runtime/exec/isolation.h own_children).
  const std::vector<pid_t>& thread_ids() const { return thread_tids_; }
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

  void run(Spawner& spawner);  // one thread
  void deliver();              // loop thread: hands out finished results
  // One per thread, each the thread's alone once it runs.
  std::vector<std::unique_ptr<Spawner>> spawners_;
  Done done_;
  Wakeup* wakeup_ = nullptr;
  uint32_t in_flight_ = 0;  // loop thread
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Job>> todo_;       // guarded by mu_
  std::deque<std::unique_ptr<Job>> done_jobs_;  // guarded by mu_
  bool stop_ = false;                           // guarded by mu_
  std::vector<std::thread> threads_;            // started by the first submit()
  std::vector<pid_t> started_tids_;             // guarded by mu_: filled as threads start
  std::vector<pid_t> thread_tids_;              // loop thread: a copy once all have started
};

}  // namespace cardnode::runtime
