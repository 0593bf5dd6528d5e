// What the coordinator hands a node to run and what comes back: the one path for "run
// this task on that node". The local executor implements TaskRunner today; a remote
// agent's connection implements it the same way (issue: cluster).
//
// Threading: loop thread only.
#pragma once

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
};

struct TaskExit {
  pb::TaskState state = pb::TASK_SUCCEEDED;  // succeeded, failed, cancelled, timed_out,
                                             // oom_killed, or lost (killed by a shutdown)
  int32_t exit_code = 0;
  int32_t signal = 0;
  // lost only: stopped cleanly (KillReason::kShutdown), through no fault of the task or
  // the board, so the requeue does not use the task's lost budget (pb::TaskFinished).
  bool requeue_free = false;
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
};

}  // namespace cardnode::runtime
