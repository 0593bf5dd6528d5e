#include "runtime/exec/spawn_worker.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <system_error>
#include <utility>

#include "proto/error.h"

namespace cardnode::runtime {

namespace {

// The request's descriptors that are the worker's (spawn_worker.h, Ownership), and its
// hold settled: a held request released but never cloned (its prepare failed, a check in
// spawn() refused it, or it was cancelled) leaves the dumpable window its release entered.
// After a clone the state is 2 already, and this is a no-op.
void close_request_fds(SpawnRequest& r) {
  for (int fd : r.cgroup_procs_fds) ::close(fd);
  r.cgroup_procs_fds.clear();
  if (r.hold_fd >= 0) ::close(r.hold_fd);
  r.hold_fd = -1;
  if (r.hold && r.creds.drop && r.hold->state.exchange(2) == 1) leave_task_user_window();
}

}  // namespace

struct SpawnWorker::Wakeup {
  uv_async_t async{};
  SpawnWorker* owner = nullptr;  // nullptr once the worker is gone
};

SpawnWorker::SpawnWorker(uv_loop_t* loop, PidfdSupport pidfd, Done done, uint32_t threads)
    : done_(std::move(done)), wakeup_(new Wakeup) {
  for (uint32_t i = 0; i < std::max(threads, 1u); ++i) {
    spawners_.push_back(std::make_unique<Spawner>(pidfd));
  }
  wakeup_->owner = this;
  wakeup_->async.data = wakeup_;
  CARDNODE_CHECK(uv_async_init(loop, &wakeup_->async, [](uv_async_t* a) {
                   auto* w = static_cast<Wakeup*>(a->data);
                   if (w->owner != nullptr) w->owner->deliver();
                 }) == 0);
  // It keeps the loop alive only while a result is owed (submit/deliver ref and unref it).
  uv_unref(reinterpret_cast<uv_handle_t*>(&wakeup_->async));
}

SpawnWorker::~SpawnWorker() {
  CARDNODE_CHECK(in_flight_ == 0);
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : threads_) t.join();
  wakeup_->owner = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(&wakeup_->async),
           [](uv_handle_t* h) { delete static_cast<Wakeup*>(h->data); });
}

Status SpawnWorker::submit(uint64_t tag, SpawnRequest request, Prepare prepare) {
  if (threads_.empty()) {
    // As many as the system allows, at least one; the destructor joins those that started.
    for (const auto& spawner : spawners_) {
      try {
        threads_.emplace_back([this, s = spawner.get()] { run(*s); });
      } catch (const std::system_error& e) {
        if (threads_.empty()) {
          return fail(Errc::kResourceExhausted,
                      std::string("cannot start the spawn thread: ") + e.what());
        }
        break;  // fewer threads than asked: still correct, only slower
      }
    }
    // Known before any clone: the loop tells tasks from orphans by them.
    std::unique_lock lock(mu_);
    cv_.wait(lock, [this] { return started_tids_.size() == threads_.size(); });
    thread_tids_ = started_tids_;
  }
  auto job = std::make_unique<Job>();
  job->tag = tag;
  job->request = std::move(request);
  job->prepare = std::move(prepare);
  if (in_flight_++ == 0) uv_ref(reinterpret_cast<uv_handle_t*>(&wakeup_->async));
  {
    std::lock_guard lock(mu_);
    todo_.push_back(std::move(job));
  }
  cv_.notify_one();
  return {};
}

bool SpawnWorker::cancel(uint64_t tag) {
  {
    std::lock_guard lock(mu_);
    auto it = std::find_if(todo_.begin(), todo_.end(),
                           [tag](const std::unique_ptr<Job>& j) { return j->tag == tag; });
    if (it == todo_.end()) return false;
    std::unique_ptr<Job> job = std::move(*it);
    todo_.erase(it);
    close_request_fds(job->request);
    job->result = fail(Errc::kCancelled, "withdrawn before its spawn");
    done_jobs_.push_back(std::move(job));
  }
  uv_async_send(&wakeup_->async);
  return true;
}

void SpawnWorker::run(Spawner& spawner) {
  // Signals are the loop thread's business (libuv's handlers, SIGCHLD for the fallback).
  sigset_t all;
  sigfillset(&all);
  ::pthread_sigmask(SIG_BLOCK, &all, nullptr);
  {
    std::lock_guard lock(mu_);
    started_tids_.push_back(::gettid());
  }
  cv_.notify_all();
  for (;;) {  // until stop_; one iteration per request
    std::unique_ptr<Job> job;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [this] { return stop_ || !todo_.empty(); });
      if (todo_.empty()) return;  // stop_, nothing left
      job = std::move(todo_.front());
      todo_.pop_front();
    }
    Status ready = job->prepare ? job->prepare(job->request) : Status{};
    if (ready) {
      job->result = spawner.spawn(job->request);
    } else {
      job->result = std::unexpected(ready.error());
    }
    close_request_fds(job->request);
    {
      std::lock_guard lock(mu_);
      done_jobs_.push_back(std::move(job));
    }
    uv_async_send(&wakeup_->async);
  }
}

void SpawnWorker::deliver() {
  std::deque<std::unique_ptr<Job>> ready;
  {
    std::lock_guard lock(mu_);
    ready.swap(done_jobs_);
  }
  for (auto& job : ready) {  // bounded by what was submitted
    if (--in_flight_ == 0) uv_unref(reinterpret_cast<uv_handle_t*>(&wakeup_->async));
    done_(job->tag, std::move(job->result));
  }
}

}  // namespace cardnode::runtime
