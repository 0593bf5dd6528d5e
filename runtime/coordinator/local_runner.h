// LocalRunner: this board's Executor as a TaskRunner, with the decisions that belong to
// the board that runs a task: the working directory (the submitter's when this board has
// it, else DATA_DIR/work, as `sbatch` users expect) and, when no process could be started
// at all, the reason written into the task's stderr log.
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
  LocalRunner(Executor& executor, storage::LogStore& logs, std::string work_dir)
      : executor_(executor), logs_(logs), work_dir_(std::move(work_dir)) {}

  Status start(const TaskLaunch& launch, ExitCallback on_exit) override;
  void kill(uint64_t job_id, uint32_t index, KillReason reason) override {
    executor_.kill(job_id, index, reason);
  }

 private:
  Executor& executor_;
  storage::LogStore& logs_;
  std::string work_dir_;
};

}  // namespace cardnode::runtime
