#include "runtime/coordinator/local_runner.h"

#include <sys/stat.h>

namespace cardnode::runtime {

Status LocalRunner::start(const TaskLaunch& launch, ExitCallback on_exit) {
  TaskLaunch l = launch;
  struct stat st {};
  bool have_cwd = !l.cwd.empty() && ::stat(l.cwd.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
  if (!have_cwd) l.cwd = work_dir_;
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
