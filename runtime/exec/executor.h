// Executor: runs task attempts on this board as plain processes — no helper process
// per task and no second exec. runtime/exec/spawn.h forks the command straight into its
// cgroups, limits and credentials, so the command's pid is the task's pid; the group and
// the clone are made on spawn threads (runtime/exec/spawn_worker.h), because a clone
// waits for its child's execve and the loop must not. stdout and
// stderr go through pipes into the LogStore; when the store's write queue is full the
// task's pipes are not read until it drains (the task blocks on a full pipe), so output
// is not dropped for speed.
//
// A process exit is seen through its pidfd (one poll handle per task, one wait4 per exit,
// nothing per other running task); kernels without pidfds fall back to SIGCHLD with one
// waitpid per running task. Nothing on this path sleeps: the rest of the tree is killed
// and the group removed by a timer that retries every few ms until the group is empty.
//
// When the command's process exits, the rest of its tree (cgroup, else process group)
// is killed, output is drained and written, and only then on_exit runs: a task
// reported finished has left no process in its group and has all its output in the log.
// (Without cgroups the tree is the process group plus every process carrying the task's
// environment tag: the Executor makes its process a child subreaper, so a process that
// left the group becomes its child once its parent is gone, and is found among its own
// children, not by reading all of /proc. Only a process that cleared its environment
// escapes; its pipes are closed on it after drain_ms.) A failed task whose group saw an
// OOM kill is reported TASK_OOM_KILLED.
//
// Threading: loop thread only (the spawn threads are internal: they call only
// Isolation::create_group, which reads nothing the loop changes). `loop`, `logs` and
// `isolation` must outlive the Executor.
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cardnode.pb.h"
#include "proto/error.h"
#include "runtime/exec/isolation.h"
#include "runtime/exec/spawn.h"
#include "runtime/exec/task_runner.h"
#include "runtime/exec/task_user.h"
#include "storage/log_store.h"

namespace cardnode::runtime {

struct ExecutorOptions {
  // Every task's environment gets CARDNODE_TASK_KEY=<pool_tag>:<job>.<index>, set after
  // the job's env so a job cannot override it. Without cgroups it is how the tree of a
  // task is found once processes left its process group; task_key_prefix() finds them all.
  std::string pool_tag = "cardnode";
  // Who tasks run as (runtime/exec/task_user.h). Default: this process's own user.
  TaskUsers users = task_users_self();
  // Where a task starts when its job's directory cannot be entered (after that: /tmp, /).
  std::string fallback_cwd;
  PidfdSupport pidfd = PidfdSupport::kAuto;  // kNone: the SIGCHLD fallback (tests)
  uint32_t running_max = 1024;               // tasks at once on this board
  uint32_t spawn_threads = 0;                // clones under way at once (0: one per CPU, <= 8)
  uint64_t kill_grace_ms = 0;  // SIGTERM first, then SIGKILL after this (0: SIGKILL at once)
  // After the process exits, how long its pipes may stay open (held by a process that
  // escaped the kill, possible only in rlimit mode) before we close them ourselves.
  uint64_t drain_ms = 2000;
  // One line for the daemon's log when a task's output could not be kept (a full disk, a
  // log dir that cannot be made): the task's own log may have no room for the marker.
  // At most one line per 10 s, counting the rest. Optional.
  std::function<void(const std::string&)> warn;
};

// Destruction: the owner calls kill_all() and runs the loop until running() == 0 before
// destroying the Executor; a task still running then is a bug (checked: libuv handles
// would point into freed memory).
class Executor {
 public:
  Executor(uv_loop_t* loop, storage::LogStore& logs, Isolation& isolation, ExecutorOptions options);
  ~Executor();

  // Starts one attempt: its process is made later, on a spawn thread (pid_of() has the
  // pid once it exists), after the loop's share of the start, paced at ~2 ms per turn so
  // a burst never stalls the loop. A spawn that then fails (cgroup, clone) ends the
  // attempt 127 with the reason in its stderr log. Either way on_exit runs exactly once.
  // Fails (on_exit never runs) if the task is already running here, running_max is
  // reached, or the job names a user this board was not given. A command that cannot be
  // run (ENOENT, EACCES) is a started task that ends 127/126 with the reason in its log.
  using ExitCallback = TaskRunner::ExitCallback;
  [[nodiscard]] Status start(const TaskLaunch& launch, ExitCallback on_exit);
  // As start(), but the command is held before it drops privileges and execs (its process
  // may already exist, in its groups, as root) until release(): for a caller whose record
  // of this start is not durable yet, so the spawn's work overlaps the fdatasync and a
  // command never runs before its record is on disk. A kill() before the release ends the
  // attempt with that reason and nothing run; so does the server's death (the child sees
  // its socket close). kUnavailable where spawns cannot be held (Spawner::can_hold), and
  // while any task is here (can_hold_now): the caller then start()s it once the record
  // is durable.
  [[nodiscard]] Status start_held(const TaskLaunch& launch, ExitCallback on_exit);
  // Whether start_held() would hold a start now: the kernel can, and no task is here
  // (running, starting or ending).
  bool can_hold_now() const;
  // Lets a held attempt run its command. Unknown or not held (any more): no-op.
  void release(uint64_t job_id, uint32_t index);
  // Kills the whole tree of a running task; its on_exit reports the reason
  // (cancelled / timed_out). Unknown task: no-op.
  void kill(uint64_t job_id, uint32_t index, KillReason reason);
  // Kills everything (shutdown): on_exit callbacks still run as processes are reaped,
  // reporting TASK_LOST, requeue-free (the task did not fail: it is to be run again, and
  // a clean stop does not use up its lost budget).
  void kill_all();
  uint32_t running() const;
  // The pid of a running task's command; 0 while its spawn waits, or for an unknown task.
  int32_t pid_of(uint64_t job_id, uint32_t index) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// "CARDNODE_TASK_KEY=<pool_tag>:": the environment prefix every task of a pool carries.
std::string task_key_prefix(const std::string& pool_tag);

}  // namespace cardnode::runtime
