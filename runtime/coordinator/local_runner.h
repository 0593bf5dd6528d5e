// LocalRunner: this board's Executor as a TaskRunner, with the decisions that belong to
// the board that runs a task: when no process could be started at all, the reason written
// into the task's stderr log. (The working directory falls back in the executor: the
// submitter's when the task user can enter it, else DATA_DIR/work, /tmp, /.)
//
// Threading: loop thread only. `executor` and `logs` must outlive the runner.
#pragma once

#include <string>
#include <utility>

#include "runtime/exec/executor.h"
#include "runtime/exec/task_runner.h"
#include "storage/log_store.h"

namespace cardnode::runtime {

class LocalRunner final : public TaskRunner {
 public:
  LocalRunner(Executor& executor, storage::LogStore& logs) : executor_(executor), logs_(logs) {}

  Status start(const TaskLaunch& launch, ExitCallback on_exit) override;
  bool takes_standbys() const override { return true; }
  // Errors leave nothing behind and write nothing: the coordinator then start()s the
  // attempt the usual way, which says why in the task's log if it fails again.
  bool can_hold_now() const override { return executor_.can_hold_now(); }
  Status start_held(const TaskLaunch& launch, ExitCallback on_exit) override {
    return executor_.start_held(launch, std::move(on_exit));
  }
  void release(uint64_t job_id, uint32_t index) override { executor_.release(job_id, index); }
  void kill(uint64_t job_id, uint32_t index, KillReason reason) override {
    executor_.kill(job_id, index, reason);
  }

 private:
  Executor& executor_;
  storage::LogStore& logs_;
};

}  // namespace cardnode::runtime
