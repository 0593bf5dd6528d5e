// What the coordinator hands a node to run and what comes back: the one path for "run
// this task on that node". The local executor implements TaskRunner today; a remote
// agent's connection implements it the same way (issue: cluster).
//
// Threading: loop thread only.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "cardnode.pb.h"
#include "proto/error.h"

namespace cardnode::runtime {

struct TaskLimits {
  uint32_t cpu_millis = 0;  // 0: no cpu limit
  uint64_t mem_bytes = 0;   // 0: no memory limit
  uint32_t pids_max = 4096;
  bool operator==(const TaskLimits&) const = default;
};

struct TaskLaunch {
  uint64_t job_id = 0;
  uint32_t index = 0;
  uint32_t count = 1;
  uint32_t attempt = 1;
  std::vector<std::string> argv;
  std::vector<std::pair<std::string, std::string>> env;  // added to a minimal base env
  std::string cwd;  // the submitter's; the runner falls back when its board lacks it
  TaskLimits limits;
  uint64_t timeout_ms = 0;  // 0: none
  std::string node_name;
  std::string user;  // the job's JobSpec.user; empty: the board's task user
};

// What one attempt used, for `ps JOB` and metrics: from its cgroup (the whole tree), else
// from wait4's rusage (the command and the children it waited for). wall_us: from its
// spawn to its reap on the runner's monotonic clock; 0 when it got no process.
struct TaskUsage {
  uint64_t cpu_user_us = 0;
  uint64_t cpu_system_us = 0;
  uint64_t mem_peak_bytes = 0;
  uint64_t wall_us = 0;
};

// Bounds for a histogram of attempts' peak memory (metrics): 16 MiB .. 4 GiB, then +Inf.
inline constexpr std::array<uint64_t, 8> kTaskMemoryBucketsBytes = {
    16ull << 20,  64ull << 20, 128ull << 20, 256ull << 20,
    512ull << 20, 1ull << 30,  2ull << 30,   4ull << 30};

// Bounds for a histogram of attempts' wall time (metrics): 1 s .. 1 day, then +Inf.
inline constexpr std::array<uint64_t, 8> kTaskDurationBucketsMs = {
    1'000, 10'000, 60'000, 300'000, 900'000, 3'600'000, 14'400'000, 86'400'000};

// On the wire and in the WAL: milliseconds and KiB, 32 bits each (saturating).
inline pb::TaskUsage usage_to_pb(const TaskUsage& u) {
  auto u32 = [](uint64_t v) { return static_cast<uint32_t>(std::min<uint64_t>(v, UINT32_MAX)); };
  pb::TaskUsage out;
  out.set_cpu_user_ms(u32(u.cpu_user_us / 1000));
  out.set_cpu_system_ms(u32(u.cpu_system_us / 1000));
  out.set_mem_peak_kib(u32(u.mem_peak_bytes / 1024));
  out.set_wall_ms(u32(u.wall_us / 1000));
  return out;
}
// An older agent sends no wall_ms: 0, unknown.
inline TaskUsage usage_from_pb(const pb::TaskUsage& u) {
  return {uint64_t{u.cpu_user_ms()} * 1000, uint64_t{u.cpu_system_ms()} * 1000,
          uint64_t{u.mem_peak_kib()} * 1024, uint64_t{u.wall_ms()} * 1000};
}

struct TaskExit {
  pb::TaskState state = pb::TASK_SUCCEEDED;  // succeeded, failed, cancelled, timed_out,
                                             // oom_killed, or lost (killed by a shutdown)
  int32_t exit_code = 0;
  int32_t signal = 0;
  // lost only: stopped cleanly (KillReason::kShutdown), through no fault of the task or
  // the board, so the requeue does not use the task's lost budget (pb::TaskFinished).
  bool requeue_free = false;
  TaskUsage usage;
};

// kShutdown: a clean stop of the server or the board; the task ends lost, requeue-free.
enum class KillReason : uint8_t { kCancelled, kTimedOut, kShutdown };

class TaskRunner {
 public:
  using ExitCallback = std::function<void(TaskExit)>;
  virtual ~TaskRunner() = default;
  // Starts one attempt; on success on_exit runs exactly once, later, with its end. An
  // error means no process was started (on_exit never runs).
  [[nodiscard]] virtual Status start(const TaskLaunch& launch, ExitCallback on_exit) = 0;
  // Ends a running attempt's whole process tree; its on_exit reports the reason.
  // Unknown task: no-op.
  virtual void kill(uint64_t job_id, uint32_t index, KillReason reason) = 0;
  // Whether the coordinator may place standbys here (sched::Cluster::set_standby_node):
  // a start() costs no more than the board's own spawn, as the server's own board's does.
  virtual bool takes_standbys() const { return false; }
  // Whether start_held() would take a start now; cheap, so a caller asks before it
  // builds the launch.
  virtual bool can_hold_now() const { return false; }
  // For a coordinator whose record of the start is on its way to disk: as start(), but
  // the command does not run until release() (runtime/exec/executor.h start_held); a
  // kill() before then ends the attempt with nothing run. kUnavailable (the default):
  // this runner cannot hold, and the caller calls start() once the record is durable.
  [[nodiscard]] virtual Status start_held(const TaskLaunch& launch, ExitCallback on_exit) {
    (void)launch;
    const ExitCallback never_called = std::move(on_exit);
    return fail(Errc::kUnavailable, "this runner cannot hold a start");
  }
  // The record is durable: a held attempt runs its command. Unknown task: no-op.
  virtual void release(uint64_t job_id, uint32_t index) {
    (void)job_id;
    (void)index;
  }
};

}  // namespace cardnode::runtime
