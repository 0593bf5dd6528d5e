// Resource limits for task processes, best available first: cgroup v2 (a controller
// enabled in the unified hierarchy), else cgroup v1 (memory, cpu, pids hierarchies),
// else rlimits (RLIMIT_AS for memory; nothing for cpu). `nodes` shows which limits are
// really enforced on each board.
//
// Each task attempt gets its own group, named "JOB.INDEX" below a parent group `name`
// under every controller in use. The group is created before the process starts and the
// process joins it before exec (runtime/exec/spawn.h), so nothing it forks escapes. On v1
// a separate cpuacct hierarchy is joined too, for usage() (accounting, not a limit).
//
// Where the parent group lives. Under systemd with Delegate=yes (deploy/*.service) the
// parent goes inside the unit's own cgroup, so KillMode=mixed and `systemctl stop` reach
// every task; anywhere else (a terminal, a test, a container) it goes at the root of each
// hierarchy, as before. The decision reads this process's own cgroup (/proc/self/cgroup):
//   - "Under a service" means: the path ends in ".service" (or ".service/supervisor",
//     where a previous probe in this process put itself). The path alone decides, not
//     INVOCATION_ID: that variable is inherited by whatever a service spawns and says
//     nothing about the cgroup this process is in now; the path is the kernel's answer
//     (and a file tests can fake). A ".scope" (login session, `systemd-run --scope`), a
//     ".slice" or "/" is not a service. A path with ".." (a cgroup outside our cgroup
//     namespace) is not trusted.
//   - v2: the parent is ROOT/<own path>/<name>. cgroup v2 puts processes only in leaves
//     ("no internal processes"), so this process first moves itself (its whole thread
//     group: "0" into cgroup.procs) into the leaf ROOT/<own path>/supervisor, then enables
//     +memory +cpu +pids in <own path>/cgroup.subtree_control and <name>/'s. If that
//     fails (another process left in the unit's cgroup, controllers not delegated) the
//     parent goes at the root instead.
//   - v1: per hierarchy, the parent is ROOT/<hier>/<own path in that hierarchy>/<name>
//     when that path is a service's and exists; else ROOT/<hier>/<name>.
//   - An empty `self_cgroup` skips the check (root placement, nothing moved): tests on
//     the real cgroupfs use it so the test process is never moved.
// destroy_all_groups and destroy_parent work on the parent group wherever it is; groups
// a previous version left at the root are not found from under a service.
//
// Teardown: reap_group is one non-blocking round for the loop thread (a timer calls it
// again until it says the group is gone); destroy_group loops over it with short pauses,
// bounded (startup cleanup, shutdown, tests). create_group still waits the same way for a
// leftover group of the same name (rare: a retried attempt whose teardown never ended).
//
// Spare groups (v1 only). A task that ended well leaves an empty group; recycle_group
// keeps it, renamed "spare.N", and the next create_group with the same limits renames it
// to its own name instead of a mkdir and an rmdir in each of v1's (up to four)
// hierarchies: a rename is ~8 us, a mkdir or rmdir 20-50 us, and each removed memory
// group lingers in the kernel as a dying memcg. What the kernel cannot reset is made
// right here: the cpu counters are read at the recycle and subtracted by usage(), the
// memory peak is reset on reuse (written 0, so it starts at what the group still holds),
// a group still charged with more than kSpareLeftoverMax (a previous task's page cache or
// tmpfs files: a few hundred KiB after a short task) is not kept, nor one whose OOM
// counter is not 0. v2 keeps no spares: a v2 group
// cannot be renamed, and memory.peak cannot be reset before Linux 6.12.
//
// Threading: plain blocking file writes to cgroupfs (no disk I/O). The probed layout is
// read-only after construction (until destroy_parent), so calls on different groups may
// run on different threads: the executor's spawn thread makes groups while its loop
// thread reaps others. The spares and the cpu baselines are under one mutex.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <span>
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

// A group's cumulative usage, read from its accounting files (see Isolation::usage).
struct GroupUsage {
  uint64_t cpu_user_us = 0;
  uint64_t cpu_system_us = 0;
  uint64_t mem_peak_bytes = 0;
  bool has_cpu = false;  // read from the group's cpu accounting
  bool has_mem = false;  // read from the group's memory peak
};

// The parent group of the tasks run for one data dir: "cardnode-" and a hash (FNV-1a,
// stable across builds) of its real path, so two servers or agents on one machine never
// kill each other's leftovers, and a restart finds its own.
std::string pool_group_name(const std::string& data_dir);

class Isolation {
 public:
  Isolation();
  ~Isolation();
  Isolation(Isolation&&) noexcept;
  Isolation& operator=(Isolation&&) noexcept;
  // Probes what this machine offers. `cgroup_root` is normally /sys/fs/cgroup; tests
  // pass a fake tree to inject faults. `name` is the parent group ("cardnode").
  // `self_cgroup` is this process's cgroup file ("" = not under systemd: see the top).
  // Under a delegated v2 service this moves the calling process (see the top).
  static Isolation probe(const std::string& cgroup_root = "/sys/fs/cgroup",
                         const std::string& name = "cardnode", bool disable_cgroups = false,
                         const std::string& self_cgroup = "/proc/self/cgroup");

  const IsolationInfo& info() const { return info_; }
  // The parent group's directory in every hierarchy in use (one on v2; empty in rlimit
  // mode), for logs: where the task groups live.
  const std::vector<std::string>& parent_dirs() const { return controller_dirs_; }
  // True when the parent group is inside this process's systemd service cgroup (in at
  // least one hierarchy on v1).
  bool under_service() const { return under_service_; }

  // Creates the group(s) for one task and writes its limits. Returns the cgroup.procs
  // paths the task must join (empty in rlimit mode). A parent group removed from outside
  // while it was empty (an idle board's cleanup script) is made again, not an error.
  [[nodiscard]] Result<std::vector<std::string>> create_group(const std::string& task_name,
                                                              const TaskLimits& limits);
  // Keeps the group of a task that ended well as a spare for the next task with the same
  // `limits` (see the top). True if kept: `task_name` no longer exists. False (nothing
  // changed; the caller reaps it as usual) unless the isolation is v1, the group's
  // cgroup.procs reads empty, its OOM counter is 0 and it holds little memory (see
  // kSpareLeftoverMax). At most kSparesMax are kept: the oldest goes for a new one.
  // The caller keeps only groups of tasks that did not run as root: root could have
  // moved its processes between hierarchies (one hierarchy's list is read), made child
  // groups or rewritten limits.
  [[nodiscard]] bool recycle_group(const std::string& task_name, const TaskLimits& limits);
  // Spare groups kept now (tests, metrics).
  uint32_t spares() const;
  static constexpr uint32_t kSparesMax = 8;
  // A group still charged with more memory than this (or than a sixteenth of its limit)
  // when its task ends is not kept.
  static constexpr uint64_t kSpareLeftoverMax = 1u << 20;
  // One round of teardown, never sleeps (loop thread): SIGKILLs every process still in the
  // group (cgroup.kill on v2 when present) and tries to remove it in every hierarchy.
  // True once the group is gone everywhere (or never existed); false while processes
  // remain or rmdir says EBUSY — the caller tries again later (a timer). Never true while
  // a hierarchy's cgroup.procs lists a process or cannot be read. A directory that rmdir
  // refuses for another reason (not a cgroup: a fake tree; EPERM) counts as gone: no
  // retry would change it.
  [[nodiscard]] bool reap_group(const std::string& task_name);
  // reap_group until it is gone, pausing 10 ms between rounds, at most 50 rounds
  // (blocks up to ~0.5 s: startup cleanup and shutdown only). Safe to call for a group
  // that does not exist.
  void destroy_group(const std::string& task_name);
  // Reads the group's usage since create_group; call after the task exited, before
  // reap_group removes it. v2: cpu.stat user_usec/system_usec (present in every v2 group) and
  // memory.peak (Linux 5.19+, memory controller). v1: cpuacct.stat user/system (USER_HZ
  // ticks, so 10 ms steps at 100 Hz) and memory.max_usage_in_bytes. What cannot be read
  // leaves has_cpu / has_mem false.
  GroupUsage usage(const std::string& task_name) const;
  // True if the kernel's OOM killer acted in this group (v1 memory.oom_control
  // oom_kill, v2 memory.events oom_kill).
  bool oom_killed(const std::string& task_name) const;
  // Kills and removes every task group left under the parent (a server or agent restart).
  // Returns how many task groups were found (kept spares are removed too, not counted).
  uint32_t destroy_all_groups();

  // destroy_all_groups(), then removes the parent group itself (a server whose data dir
  // goes away, tests). The Isolation is in rlimit mode afterwards.
  void destroy_parent();
  // Sends `sig` once to every process in the group (no waiting, no removal): the first
  // step of a kill, before reap_group / destroy_group make sure.
  void signal_group(const std::string& task_name, int sig);
  // True when the memory limit is RLIMIT_AS set by the spawned child (rlimit mode,
  // or cgroups without a memory controller) rather than a cgroup.
  bool memory_by_rlimit() const { return memory_by_rlimit_; }

 private:
  struct SelfCgroup;
  bool try_v2(const std::string& base, bool service);
  bool try_v1(const SelfCgroup& self);
  bool reap_dir(const std::string& dir);
  // Renames `from` to `to` in every hierarchy; on a failure, back again. False if any
  // failed (then both names may need destroying).
  bool rename_group(const std::string& from, const std::string& to) const;
  // A spare with these limits renamed to `task_name`, its baselines recorded. False: none.
  bool take_spare(const std::string& task_name, const TaskLimits& limits);
  void kill_and_remove(const std::string& dir);
  // Makes `parent` (one of controller_dirs_) again, with its v2 controllers enabled.
  bool remake_parent(const std::string& parent) const;

  IsolationInfo info_;
  std::string root_;
  std::string name_;
  std::vector<std::string> controller_dirs_;  // v1: root/memory/name, ...; v2: root/name
  std::string memory_dir_;                    // parent dir per controller; empty: not used
  std::string cpu_dir_;
  std::string pids_dir_;
  std::string cpuacct_dir_;  // v1 accounting; == cpu_dir_ when they share a hierarchy
  bool under_service_ = false;
  bool memsw_ = false;  // v1 memory.memsw.limit_in_bytes exists (swap accounting on)
  bool memory_by_rlimit_ = true;
  struct Spares;
  std::unique_ptr<Spares> spares_;  // set by probe() in v1 mode
};

// Pids of processes whose initial environment holds `entry` ("K=V"), or with `prefix`
// an entry that starts with it; from /proc/*/environ, at most `max`, this process
// excluded. Without cgroups this is how a task's processes are found after they left
// its process group (setsid), and how a restart finds tasks whose pid never reached the
// WAL. A task that clears its own environment escapes it; cgroups have no such hole.
std::vector<int32_t> pids_with_env(const std::string& entry, bool prefix, uint32_t max);
// The same test for one process: its initial environment holds `entry` ("K=V").
bool environ_has(int32_t pid, const std::string& entry);
// As environ_has, and whether the environment could be read at all: it reads as empty
// while the process is between the two halves of an execve, or gone.
enum class EnvironMatch : uint8_t { kYes, kNo, kUnreadable };
EnvironMatch environ_match(int32_t pid, const std::string& entry);
// This process's children (/proc/self/task/*/children), at most `max`. With
// PR_SET_CHILD_SUBREAPER they include every orphan of a task: how the executor finds, in
// rlimit mode, what escaped a task's process group without reading all of /proc.
// skip_tids: threads whose children are left out.
std::vector<int32_t> own_children(uint32_t max, std::span<const pid_t> skip_tids = {});
// The children of this process's main thread alone (/proc/self/task/PID/children): where a
// subreaper's adopted orphans go. The kernel hands an orphan to the first live thread of
// the subreaper (find_new_reaper), which is the thread-group leader for as long as it
// lives, and cardnode's main thread runs until the process ends. One file instead of one
// per thread: the executor reads it at every task's end (rlimit mode).
std::vector<int32_t> adopted_children(uint32_t max);

}  // namespace cardnode::runtime
