#include "runtime/coordinator/local_runner.h"

namespace cardnode::runtime {

Status LocalRunner::start(const TaskLaunch& launch, ExitCallback on_exit) {
  const TaskLaunch& l = launch;
  Status started = executor_.start(l, std::move(on_exit));
  if (started) return {};
  storage::LogKey key{l.job_id, l.index, storage::Stream::kStderr};
  if (logs_.open(key)) {
    logs_.append(key, "cardnode: cannot start task: " + started.error().describe() + "\n");
    logs_.close(key, [](Status) {});
  }
  return started;
}

}  // namespace cardnode::runtime
