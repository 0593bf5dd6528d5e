// Tests only: removes the cgroups of servers and agents a test killed. A clean stop
// removes its own parent group (Isolation::destroy_parent); one killed with SIGKILL
// leaves it for a restart on the same data dir, which a test's temporary data dir never
// gets, so every such test left a group behind (32 per `make test`), and each slows every
// later cgroup-v1 quota write on the machine (the kernel walks all cpu groups).
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "runtime/exec/isolation.h"

namespace cardnode::runtime::testing {

// For `root` and every directory up to two levels below it (data dirs of a server and
// its agents), kills and removes the pool group named for it, if there is one. Call
// after the processes were stopped and before `root` is removed. As root only.
inline void remove_pool_groups_under(const std::string& root) {
  namespace fs = std::filesystem;
  if (::geteuid() != 0) return;
  std::vector<std::string> dirs{root};
  std::error_code ec;
  for (fs::recursive_directory_iterator it(root, fs::directory_options::skip_permission_denied, ec),
       end;
       !ec && it != end; it.increment(ec)) {
    if (it.depth() >= 2) it.disable_recursion_pending();
    if (it->is_directory(ec) && !it->is_symlink(ec)) dirs.push_back(it->path().string());
  }
  for (const std::string& d : dirs) {
    const std::string name = pool_group_name(d);
    bool found = false;
    for (const char* h : {"", "memory", "cpu", "cpuacct", "cpu,cpuacct", "pids"}) {
      found = found || fs::exists(fs::path("/sys/fs/cgroup") / h / name, ec);
    }
    // Root placement, as the test started them (no service cgroup to look into).
    if (found) Isolation::probe("/sys/fs/cgroup", name, false, "").destroy_parent();
  }
}

}  // namespace cardnode::runtime::testing
