// Why a task start can cost a kernel RCU grace period, and the one switch that removes it.
//
// Every write to a cgroup.procs file (the task joining its group before exec, v1 and v2
// alike) takes the kernel's cgroup_threadgroup_rwsem for writing. That is a per-cpu
// rwsem: unless the kernel keeps its reader side in slow mode, a writer first waits for
// an RCU grace period (rcu_sync). Measured on this project's x86 VM (kernel 6.18, v1
// hierarchies): after 50 ms idle, a vfork spawn that joins three v1 groups took 6.6 ms
// against 0.9 ms without the joins; back-to-back spawns did not pay it (the rcu_sync
// stays entered for a while). So an idle board pays ~6 ms on every `run --wait`.
//
// cgroup2's `favordynmods` mount option (Linux 6.0+) keeps that reader side in slow mode:
// the join costs a few µs, and forks and exits pay an atomic operation instead of a per-cpu
// one (the kernel's documented trade-off; on a 4-core board it does not show). The rwsem
// is global, so turning it on at the cgroup2 mount helps the v1 joins of a hybrid
// system too.
//
// favor_dynamic_moves() turns it on when it is off: it reconfigures the cgroup2
// superblock through fspick()/fsconfig() with every option it already has plus
// favordynmods (a cgroup2 reconfigure clears the flags it is not given, e.g. systemd's
// nsdelegate and memory_recursiveprot; the mount's own flags, nosuid etc., are not
// touched by a superblock reconfigure). It needs root in the initial cgroup namespace; the
// kernel ignores the flag elsewhere. It stays on after cardnode exits (a system setting;
// `--no-favordynmods` leaves it alone). Docs: docs/ARCHITECTURE.md, "Isolation".
//
// Threading: start-up only, before the loop runs (blocking reads of /proc and a mount
// reconfigure).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace cardnode::runtime {

// One line of /proc/self/mountinfo, the fields used here.
struct MountEntry {
  std::string mount_point;    // field 5, octal escapes (\040) decoded
  std::string fs_type;        // after the " - " separator
  std::string super_options;  // the last field: "rw,nsdelegate,memory_recursiveprot"
};

// Parses mountinfo text; malformed lines are skipped. At most `max` entries.
std::vector<MountEntry> parse_mountinfo(std::string_view text, size_t max = 4096);

// True when a comma-separated option list holds `option` exactly.
bool has_mount_option(std::string_view options, std::string_view option);

enum class DynmodsResult : uint8_t {
  kAlreadyOn,     // the cgroup2 mount has favordynmods
  kTurnedOn,      // reconfigured now
  kNoCgroup2,     // no cgroup2 mount (a v1-only system): nothing to switch
  kUnsupported,   // the kernel does not know the option (before 6.0): EINVAL
  kNotPermitted,  // EPERM: not root, or not in the initial namespaces
  kFailed,        // another error
};
const char* dynmods_result_name(DynmodsResult r);  // "already on", "turned on", ...

struct DynmodsOutcome {
  DynmodsResult result = DynmodsResult::kFailed;
  std::string mount_point;  // the cgroup2 mount used
  std::string detail;       // the failing step and errno text; empty on success
};

// See the top. `mountinfo` is /proc/self/mountinfo, a file for tests.
DynmodsOutcome favor_dynamic_moves(const std::string& mountinfo = "/proc/self/mountinfo");
// One line for the start-up log: "favordynmods: turned on at /sys/fs/cgroup/unified".
std::string describe(const DynmodsOutcome& o);

}  // namespace cardnode::runtime
