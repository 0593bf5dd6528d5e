#include "runtime/coordinator/local_runner.h"

namespace cardnode::runtime {

Status LocalRunner::start(const TaskLaunch& launch, ExitCallback on_exit) {
  const TaskLaunch& l = launch;
  auto pid = executor_.start(l, std::move(on_exit));
  if (pid) return {};
  storage::LogKey key{l.job_id, l.index, storage::Stream::kStderr};
  if (logs_.open(key)) {
    logs_.append(key, "cardnode: cannot start task: " + pid.error().describe() + "\n");
    logs_.close(key, [](Status) {});
  }
  return std::unexpected(pid.error());
}

}  // namespace cardnode::runtime
