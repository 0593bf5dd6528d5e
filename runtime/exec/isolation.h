// Resource limits for task processes, best available first: cgroup v2 (a controller
// enabled in the unified hierarchy), else cgroup v1 (memory, cpu, pids hierarchies),
// else rlimits (RLIMIT_AS for memory; nothing for cpu). `nodes` shows which limits are
// really enforced on each board.
//
// Each task attempt gets its own group, named "cardnode/JOB.INDEX" under every
// controller in use. The group is created before the process starts and the process
// joins it before exec (runtime/task_exec.cc), so nothing it forks escapes.
//
// Threading: plain blocking file writes to cgroupfs (no disk I/O): loop thread only.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "proto/error.h"
#include "runtime/exec/task_runner.h"

namespace cardnode::runtime {

enum class IsolationMode : uint8_t { kCgroupV2, kCgroupV1, kRlimit };
const char* isolation_name(IsolationMode m);  // "cgroup-v2", "cgroup-v1", "rlimit"

struct IsolationInfo {
  IsolationMode mode = IsolationMode::kRlimit;
  std::vector<std::string> enforced;  // subset of {"memory", "cpu", "pids"}
};

class Isolation {
 public:
  // Probes what this machine offers. `cgroup_root` is normally /sys/fs/cgroup; tests
  // pass a fake tree to inject faults. `name` is the parent group ("cardnode").
  static Isolation probe(const std::string& cgroup_root = "/sys/fs/cgroup",
                         const std::string& name = "cardnode", bool disable_cgroups = false);

  const IsolationInfo& info() const { return info_; }

  // Creates the group(s) for one task and writes its limits. Returns the cgroup.procs
  // paths the task must join (empty in rlimit mode).
  [[nodiscard]] Result<std::vector<std::string>> create_group(const std::string& task_name,
                                                              const TaskLimits& limits);
  // Kills every process still in the group (SIGKILL, repeated until empty, bounded) and
  // removes the group. Safe to call for a group that does not exist.
  void destroy_group(const std::string& task_name);
  // True if the kernel's OOM killer acted in this group (v1 memory.oom_control
  // oom_kill, v2 memory.events oom_kill).
  bool oom_killed(const std::string& task_name) const;
  // Kills and removes every task group left under the parent (a server or agent restart).
  // Returns how many groups were found.
  uint32_t destroy_all_groups();

  // destroy_all_groups(), then removes the parent group itself (a server whose data dir
  // goes away, tests). The Isolation is in rlimit mode afterwards.
  void destroy_parent();
  // Sends `sig` once to every process in the group (no waiting, no removal): the first
  // step of a kill, before destroy_group makes sure.
  void signal_group(const std::string& task_name, int sig);
  // True when the memory limit is RLIMIT_AS set by the task-exec trampoline (rlimit mode,
  // or cgroups without a memory controller) rather than a cgroup.
  bool memory_by_rlimit() const { return memory_by_rlimit_; }

 private:
  bool try_v2();
  bool try_v1();
  void kill_and_remove(const std::string& dir);

  IsolationInfo info_;
  std::string root_;
  std::string name_;
  std::vector<std::string> controller_dirs_;  // v1: root/memory/name, ...; v2: root/name
  std::string memory_dir_;                    // parent dir per controller; empty: not used
  std::string cpu_dir_;
  std::string pids_dir_;
  bool memsw_ = false;  // v1 memory.memsw.limit_in_bytes exists (swap accounting on)
  bool memory_by_rlimit_ = true;
};

// Pids of processes whose initial environment holds `entry` ("K=V"), or with `prefix`
// an entry that starts with it; from /proc/*/environ, at most `max`, this process
// excluded. Without cgroups this is how a task's processes are found after they left
// its process group (setsid), and how a restart finds tasks whose pid never reached the
// WAL. A task that clears its own environment escapes it; cgroups have no such hole.
std::vector<int32_t> pids_with_env(const std::string& entry, bool prefix, uint32_t max);

}  // namespace cardnode::runtime
