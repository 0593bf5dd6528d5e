// LocalRunner: this board's Executor as a TaskRunner, with the decisions that belong to
// the board that runs a task: when no process could be started at all, the reason written
// into the task's stderr log. (The working directory falls back in the executor: the
// submitter's when the task user can enter it, else DATA_DIR/work, /tmp, /.)
//
// Threading: loop thread only. `executor` and `logs` must outlive the runner.
#pragma once

#include <string>

#include "runtime/exec/executor.h"
#include "runtime/exec/task_runner.h"
#include "storage/log_store.h"

namespace cardnode::runtime {

class LocalRunner final : public TaskRunner {
 public:
  LocalRunner(Executor& executor, storage::LogStore& logs) : executor_(executor), logs_(logs) {}

  Status start(const TaskLaunch& launch, ExitCallback on_exit) override;
  void kill(uint64_t job_id, uint32_t index, KillReason reason) override {
    executor_.kill(job_id, index, reason);
  }

 private:
  Executor& executor_;
  storage::LogStore& logs_;
};

}  // namespace cardnode::runtime
