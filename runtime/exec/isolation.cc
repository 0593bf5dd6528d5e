// Isolation: cgroup v2, cgroup v1 or rlimits. Every write is a small blocking write to
// cgroupfs (kernel memory, no disk): create_group runs on the executor's spawn thread,
// the rest (reaping, usage, signals) inline on the loop thread.
//
// Tests pass a fake tree of plain files as `cgroup_root`; that is why writes open with
// O_CREAT|O_TRUNC (harmless on cgroupfs, where every control file already exists) and
// why a v2 root is also recognised by its cgroup.controllers file, not only by statfs.
#include "runtime/exec/isolation.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string_view>

namespace cardnode::runtime {
namespace {

constexpr uint32_t kKillRounds = 50;  // destroy_group: at most 50 x 10 ms
constexpr long kKillPauseNs = 10L * 1000 * 1000;
constexpr size_t kControlFileBytesMax = 1 << 20;  // cgroup.procs of a 4096-pid group is ~32 KiB
constexpr uint32_t kGroupsMax = 65536;            // destroy_all_groups scans at most this many
constexpr uint64_t kCpuPeriodUs = 100000;
constexpr uint64_t kKernelDefaultCpuPeriodUs = 100000;  // default_cfs_period()
constexpr uint64_t kCpuQuotaMinUs = 1000;               // the kernel rejects smaller quotas
constexpr int kEintrRetriesMax = 1000;                  // a signal storm still ends in an error
// Kept groups' names: "spare.N" (a task group is "JOB.INDEX", all digits and a dot).
constexpr std::string_view kSparePrefix = "spare.";
// The leaf a delegated v2 service moves itself into, beside its parent group.
constexpr const char* kSupervisorLeaf = "supervisor";

bool exists(const std::string& path) {
  return ::access(path.c_str(), F_OK) == 0;
}

Status write_file(const std::string& path, std::string_view value) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return fail_errno(errno, "open " + path);
  // cgroup v1's memory.limit_in_bytes answers EINTR whenever a signal is pending
  // (mem_cgroup_resize_max checks before it reclaims anything), and the server has
  // SIGCHLD arriving all the time; the write had no effect, so it is retried.
  ssize_t n = -1;
  int err = 0;
  for (int attempt = 0; attempt < kEintrRetriesMax; ++attempt) {
    n = ::write(fd, value.data(), value.size());
    err = errno;
    if (n >= 0 || err != EINTR) break;
  }
  ::close(fd);
  if (n < 0) return fail_errno(err, "write " + path);
  if (static_cast<size_t>(n) != value.size()) return fail(Errc::kIo, "short write " + path);
  return {};
}

Result<std::string> read_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail_errno(errno, "open " + path);
  std::string out;
  char buf[4096];
  while (out.size() < kControlFileBytesMax) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(fd);
      return fail_errno(err, "read " + path);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

std::set<std::string> tokens(std::string_view text) {
  std::set<std::string> out;
  size_t i = 0;
  while (i < text.size()) {
    size_t j = text.find_first_of(" \t\n", i);
    if (j == std::string_view::npos) j = text.size();
    std::string_view tok = text.substr(i, j - i);
    if (!tok.empty() && tok.front() == '+') tok.remove_prefix(1);
    if (!tok.empty()) out.emplace(tok);
    i = j + 1;
  }
  return out;
}

std::vector<pid_t> parse_pids(std::string_view text) {
  std::vector<pid_t> out;
  for (const std::string& t : tokens(text)) {
    char* end = nullptr;
    long v = std::strtol(t.c_str(), &end, 10);
    if (end != t.c_str() && *end == '\0' && v > 0) out.push_back(static_cast<pid_t>(v));
  }
  return out;
}

// A decimal number at the start of `text` (trailing newline allowed); nullopt otherwise.
std::optional<uint64_t> parse_u64(std::string_view text) {
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end == text.data()) return std::nullopt;
  return v;
}

// "key N" lines (memory.oom_control, memory.events, cpu.stat, cpuacct.stat): the value of
// `key`; nullopt if absent or not a number.
std::optional<uint64_t> keyed(std::string_view text, std::string_view key) {
  size_t i = 0;
  while (i < text.size()) {
    size_t eol = text.find('\n', i);
    if (eol == std::string_view::npos) eol = text.size();
    std::string_view line = text.substr(i, eol - i);
    if (line.size() > key.size() && line.substr(0, key.size()) == key && line[key.size()] == ' ') {
      return parse_u64(line.substr(key.size() + 1));
    }
    i = eol + 1;
  }
  return std::nullopt;
}

bool valid_group_name(const std::string& n) {
  return !n.empty() && n.find('/') == std::string::npos && n[0] != '.';
}

bool is_dir(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// Same directory reached by two names (Debian: cpu and cpuacct are symlinks to
// "cpu,cpuacct"), so a group is not made twice in one hierarchy.
bool same_dir(const std::string& a, const std::string& b) {
  struct stat sa {};
  struct stat sb {};
  return ::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev &&
         sa.st_ino == sb.st_ino;
}

// The part of a cgroup path that is a systemd service's own cgroup, or "" when it is not
// under a service (see isolation.h for why the path alone decides).
std::string service_path(std::string_view path) {
  constexpr std::string_view kService = ".service";
  constexpr std::string_view kLeaf = "/supervisor";
  if (path.empty() || path.front() != '/') return "";
  // A previous probe in this process moved it into the leaf: its service is the parent.
  if (path.ends_with(kLeaf)) path.remove_suffix(kLeaf.size());
  if (!path.ends_with(kService) || path.ends_with("/" + std::string(kService))) return "";
  // "/../.." is a cgroup outside our cgroup namespace: not one we can reach from here.
  for (size_t i = 0; i < path.size();) {
    size_t j = path.find('/', i + 1);
    if (j == std::string_view::npos) j = path.size();
    std::string_view seg = path.substr(i + 1, j - i - 1);
    if (seg == ".." || seg == ".") return "";
    i = j;
  }
  return std::string(path);
}

bool is_cgroup2(const std::string& root) {
  struct statfs st {};
  if (::statfs(root.c_str(), &st) == 0 && st.f_type == CGROUP2_SUPER_MAGIC) return true;
  return exists(root + "/cgroup.controllers");  // fake trees in tests
}

bool make_dir(const std::string& path) {
  return ::mkdir(path.c_str(), 0755) == 0 || errno == EEXIST;
}

// USER_HZ ticks (v1 cpuacct.stat) to microseconds, without overflow for any tick count
// a machine can reach.
uint64_t ticks_to_us(uint64_t ticks) {
  long hz = ::sysconf(_SC_CLK_TCK);
  uint64_t h = hz > 0 ? static_cast<uint64_t>(hz) : 100;
  return ticks / h * 1000000 + ticks % h * 1000000 / h;
}

void pause_briefly() {
  struct timespec ts {
    0, kKillPauseNs
  };
  ::nanosleep(&ts, nullptr);
}

// Asks for +memory +cpu +pids in one write (all or nothing in the kernel), then one by
// one so a controller the kernel refuses does not take the others down with it.
void enable_controllers(const std::string& subtree_control, const std::set<std::string>& want) {
  std::set<std::string> have;
  if (auto cur = read_file(subtree_control)) have = tokens(*cur);
  std::string all;
  for (const std::string& c : want) {
    if (have.contains(c)) continue;
    if (!all.empty()) all += ' ';
    all += "+" + c;
  }
  if (all.empty() || write_file(subtree_control, all)) return;
  for (const std::string& c : want) {
    if (!have.contains(c)) (void)write_file(subtree_control, "+" + c);
  }
}

}  // namespace

// This process's cgroup paths, from /proc/self/cgroup: "0::/path" (v2) and
// "N:controller[,controller]:/path" (v1, one line per hierarchy).
struct Isolation::SelfCgroup {
  std::string unified;                               // the "0::" path; "" if none
  std::map<std::string, std::string> by_controller;  // v1: "memory" -> "/system.slice/x.service"

  static SelfCgroup read(const std::string& file) {
    SelfCgroup self;
    if (file.empty()) return self;
    auto text = read_file(file);
    if (!text) return self;
    std::string_view t = *text;
    size_t i = 0;
    while (i < t.size()) {
      size_t eol = t.find('\n', i);
      if (eol == std::string_view::npos) eol = t.size();
      std::string_view line = t.substr(i, eol - i);
      i = eol + 1;
      size_t c1 = line.find(':');
      size_t c2 = c1 == std::string_view::npos ? c1 : line.find(':', c1 + 1);
      if (c2 == std::string_view::npos) continue;
      std::string_view id = line.substr(0, c1);
      std::string_view controllers = line.substr(c1 + 1, c2 - c1 - 1);
      std::string path(line.substr(c2 + 1));  // a path may itself hold ':'
      if (id == "0" && controllers.empty()) {
        self.unified = path;
        continue;
      }
      size_t k = 0;
      while (k <= controllers.size()) {
        size_t comma = controllers.find(',', k);
        if (comma == std::string_view::npos) comma = controllers.size();
        if (comma > k) self.by_controller[std::string(controllers.substr(k, comma - k))] = path;
        k = comma + 1;
      }
    }
    return self;
  }
  std::string v1_service(const std::string& controller) const {
    auto it = by_controller.find(controller);
    return it == by_controller.end() ? std::string() : service_path(it->second);
  }
};

const char* isolation_name(IsolationMode m) {
  switch (m) {
    case IsolationMode::kCgroupV2: return "cgroup-v2";
    case IsolationMode::kCgroupV1: return "cgroup-v1";
    case IsolationMode::kRlimit: return "rlimit";
  }
  return "unknown";
}

std::string pool_group_name(const std::string& data_dir) {
  char real[PATH_MAX];
  std::string path = ::realpath(data_dir.c_str(), real) != nullptr ? real : data_dir;
  uint32_t h = 2166136261u;
  for (unsigned char c : path) h = (h ^ c) * 16777619u;
  char name[32];  // "cardnode-" and 8 hex digits: cannot fail or be cut
  (void)std::snprintf(name, sizeof(name), "cardnode-%08x", h);
  return name;
}

// The spare groups and, per task group made from one, the cpu counters it started with.
struct Isolation::Spares {
  struct Spare {
    std::string name;  // "spare.N" in every hierarchy
    TaskLimits limits;
    GroupUsage base;  // cumulative cpu at the recycle
  };
  mutable std::mutex mu;
  std::vector<Spare> kept;                  // at most kSparesMax
  std::map<std::string, GroupUsage> bases;  // task group -> its spare's counters
  uint64_t next = 0;                        // names spares
};

Isolation::Isolation() = default;
Isolation::~Isolation() = default;
Isolation::Isolation(Isolation&&) noexcept = default;
Isolation& Isolation::operator=(Isolation&&) noexcept = default;

Isolation Isolation::probe(const std::string& cgroup_root, const std::string& name,
                           bool disable_cgroups, const std::string& self_cgroup) {
  Isolation iso;
  iso.root_ = cgroup_root;
  iso.name_ = name;
  bool cgroups = !disable_cgroups && ::geteuid() == 0;
  SelfCgroup self = cgroups ? SelfCgroup::read(self_cgroup) : SelfCgroup{};
  if (cgroups && is_cgroup2(cgroup_root)) {
    std::string svc = service_path(self.unified);
    // Under a service that cannot be set up (not delegated, not a directory here), the
    // root as before: limits enforced, only systemd does not see the tasks.
    bool in_service = !svc.empty() && name != kSupervisorLeaf && is_dir(cgroup_root + svc) &&
                      iso.try_v2(cgroup_root + svc, true);
    cgroups = in_service || iso.try_v2(cgroup_root, false);
  } else if (cgroups) {
    cgroups = iso.try_v1(self);
  }
  if (!cgroups) {
    // RLIMIT_AS caps virtual address space, not resident memory: it over-counts (mapped
    // but untouched memory, thread stacks, big reservations by JVMs and Go) and is per
    // process, not per tree. Better than nothing on a board without the memory cgroup.
    iso.info_.mode = IsolationMode::kRlimit;
    iso.info_.enforced = {"memory"};
    iso.memory_by_rlimit_ = true;
    iso.memory_dir_.clear();
    iso.cpu_dir_.clear();
    iso.pids_dir_.clear();
    iso.cpuacct_dir_.clear();
    iso.controller_dirs_.clear();
    iso.under_service_ = false;
    return iso;
  }
  // Without a memory controller (Raspberry Pi OS kernels ship with it off unless
  // cgroup_enable=memory), memory still gets RLIMIT_AS; cpu and pids use the cgroups.
  iso.memory_by_rlimit_ = iso.memory_dir_.empty();
  iso.info_.enforced.push_back("memory");
  if (!iso.cpu_dir_.empty()) iso.info_.enforced.push_back("cpu");
  if (!iso.pids_dir_.empty()) iso.info_.enforced.push_back("pids");
  for (const std::string* d :
       {&iso.memory_dir_, &iso.cpu_dir_, &iso.pids_dir_, &iso.cpuacct_dir_}) {
    if (d->empty()) continue;
    bool seen = false;
    for (const std::string& c : iso.controller_dirs_) seen = seen || c == *d;
    if (!seen) iso.controller_dirs_.push_back(*d);
  }
  if (iso.info_.mode == IsolationMode::kCgroupV1) iso.spares_ = std::make_unique<Spares>();
  return iso;
}

// `base` is the cgroup the parent group goes in: the root, or a service's own cgroup.
bool Isolation::try_v2(const std::string& base, bool service) {
  auto avail = read_file(base + "/cgroup.controllers");
  if (!avail) return false;
  std::set<std::string> want;
  for (const std::string& c : tokens(*avail)) {
    if (c == "memory" || c == "cpu" || c == "pids") want.insert(c);
  }
  if (want.empty()) return false;
  if (service) {
    // No internal processes: the service cgroup can hand out controllers only once it
    // holds no process, so this process (all its threads: "0" is the writer's thread
    // group) moves into a leaf of its own first.
    std::string leaf = base + "/" + kSupervisorLeaf;
    if (!make_dir(leaf) || !write_file(leaf + "/cgroup.procs", "0")) return false;
  }
  enable_controllers(base + "/cgroup.subtree_control", want);
  std::string parent = base + "/" + name_;
  if (!make_dir(parent)) return false;
  enable_controllers(parent + "/cgroup.subtree_control", want);
  auto enabled = read_file(parent + "/cgroup.subtree_control");
  std::set<std::string> on = enabled ? tokens(*enabled) : std::set<std::string>{};
  if (on.contains("memory")) memory_dir_ = parent;
  if (on.contains("cpu")) cpu_dir_ = parent;
  if (on.contains("pids")) pids_dir_ = parent;
  info_.mode = IsolationMode::kCgroupV2;
  if (memory_dir_.empty() && cpu_dir_.empty() && pids_dir_.empty()) {
    ::rmdir(parent.c_str());
    return false;
  }
  under_service_ = service;
  return true;
}

bool Isolation::try_v1(const SelfCgroup& self) {
  // Returns HIERARCHY/name if the hierarchy is mounted, the parent group can be made and
  // it has `probe_file` (the file proves the controller is there). HIERARCHY is
  // root/h/<own path> under a service whose cgroup exists there, else root/h.
  auto parent_for = [&](const std::string& controller,
                        std::initializer_list<const char*> hierarchies, const char* probe_file) {
    for (const char* h : hierarchies) {
      std::string hier = root_ + "/" + h;
      if (!exists(hier + "/cgroup.procs")) continue;
      std::string svc = self.v1_service(controller);
      bool in_service = !svc.empty() && is_dir(hier + svc);
      std::string parent = (in_service ? hier + svc : hier) + "/" + name_;
      bool made = ::mkdir(parent.c_str(), 0755) == 0;
      if (!made && errno != EEXIST) return std::string();
      if (exists(parent + "/" + probe_file)) {
        under_service_ = under_service_ || in_service;
        return parent;
      }
      // Only what this probe made: the cpuacct probe may look into the cpu hierarchy's
      // parent, which is in use.
      if (made) ::rmdir(parent.c_str());
      return std::string();
    }
    return std::string();
  };
  memory_dir_ = parent_for("memory", {"memory"}, "memory.limit_in_bytes");
  cpu_dir_ = parent_for("cpu", {"cpu", "cpu,cpuacct", "cpuacct,cpu"}, "cpu.cfs_quota_us");
  pids_dir_ = parent_for("pids", {"pids"}, "pids.max");
  cpuacct_dir_ = parent_for("cpuacct", {"cpuacct", "cpu,cpuacct", "cpuacct,cpu"}, "cpuacct.stat");
  if (!cpuacct_dir_.empty() && !cpu_dir_.empty() && same_dir(cpuacct_dir_, cpu_dir_)) {
    cpuacct_dir_ = cpu_dir_;
  }
  memsw_ = !memory_dir_.empty() && exists(memory_dir_ + "/memory.memsw.limit_in_bytes");
  info_.mode = IsolationMode::kCgroupV1;
  // Accounting alone is no reason for cgroups: without a limit, rlimit mode as before.
  bool limits = !memory_dir_.empty() || !cpu_dir_.empty() || !pids_dir_.empty();
  if (!limits && !cpuacct_dir_.empty()) ::rmdir(cpuacct_dir_.c_str());
  return limits;
}

Result<std::vector<std::string>> Isolation::create_group(const std::string& task_name,
                                                         const TaskLimits& limits) {
  std::vector<std::string> procs;
  if (info_.mode == IsolationMode::kRlimit) return procs;
  if (!valid_group_name(task_name)) {
    return fail(Errc::kInvalidArgument, "bad task group name '" + task_name + "'");
  }
  if (take_spare(task_name, limits)) {
    for (const std::string& parent : controller_dirs_) {
      procs.push_back(parent + "/" + task_name + "/cgroup.procs");
    }
    return procs;
  }
  if (spares_) {
    // A new group counts from zero, whatever an earlier group of this name left behind.
    std::lock_guard lock(spares_->mu);
    spares_->bases.erase(task_name);
  }
  for (const std::string& parent : controller_dirs_) {
    std::string dir = parent + "/" + task_name;
    int rc = ::mkdir(dir.c_str(), 0755);
    if (rc != 0 && errno == EEXIST) {
      kill_and_remove(dir);  // left over from an earlier attempt
      rc = ::mkdir(dir.c_str(), 0755);
    }
    if (rc != 0 && errno == ENOENT) {  // someone removed our idle parent (a cleanup script)
      if (!remake_parent(parent)) {
        int err = errno;
        destroy_group(task_name);
        return fail_errno(err, "mkdir " + parent);
      }
      rc = ::mkdir(dir.c_str(), 0755);
    }
    if (rc != 0 && errno != EEXIST) {
      int err = errno;
      destroy_group(task_name);
      return fail_errno(err, "mkdir " + dir);
    }
    procs.push_back(dir + "/cgroup.procs");
  }

  bool v2 = info_.mode == IsolationMode::kCgroupV2;
  auto set = [&](const std::string& parent, const char* file, const std::string& value) {
    return write_file(parent + "/" + task_name + "/" + file, value);
  };
  Status st;
  if (!memory_dir_.empty() && limits.mem_bytes > 0) {
    std::string bytes = std::to_string(limits.mem_bytes);
    st = set(memory_dir_, v2 ? "memory.max" : "memory.limit_in_bytes", bytes);
    // Swap must not dodge the limit; refused where swap accounting is off.
    if (st && v2) (void)set(memory_dir_, "memory.swap.max", "0");
    if (st && !v2 && memsw_) (void)set(memory_dir_, "memory.memsw.limit_in_bytes", bytes);
  }
  // A task is one unit: on OOM the kernel kills the whole group, not one random process.
  if (st && v2 && !memory_dir_.empty()) (void)set(memory_dir_, "memory.oom.group", "1");
  if (st && !cpu_dir_.empty() && limits.cpu_millis > 0) {
    uint64_t quota_us = uint64_t{limits.cpu_millis} * kCpuPeriodUs / 1000;
    if (quota_us < kCpuQuotaMinUs) quota_us = kCpuQuotaMinUs;
    if (v2) {
      st = set(cpu_dir_, "cpu.max", std::to_string(quota_us) + " " + std::to_string(kCpuPeriodUs));
    } else {
      // A new group's period is the kernel's default; each write of either file walks
      // every task group of the hierarchy (tg_set_bandwidth), so the period is left be.
      static_assert(kCpuPeriodUs == kKernelDefaultCpuPeriodUs);
      st = set(cpu_dir_, "cpu.cfs_quota_us", std::to_string(quota_us));
    }
  }
  if (st && !pids_dir_.empty()) {
    st = set(pids_dir_, "pids.max", limits.pids_max > 0 ? std::to_string(limits.pids_max) : "max");
  }
  if (!st) {
    destroy_group(task_name);
    return std::unexpected(st.error());
  }
  return procs;
}

bool Isolation::rename_group(const std::string& from, const std::string& to) const {
  for (size_t i = 0; i < controller_dirs_.size(); ++i) {
    const std::string& parent = controller_dirs_[i];
    if (::rename((parent + "/" + from).c_str(), (parent + "/" + to).c_str()) == 0) continue;
    for (size_t j = 0; j < i; ++j) {
      const std::string& p = controller_dirs_[j];
      (void)::rename((p + "/" + to).c_str(), (p + "/" + from).c_str());
    }
    return false;
  }
  return true;
}

bool Isolation::take_spare(const std::string& task_name, const TaskLimits& limits) {
  if (!spares_) return false;
  Spares::Spare spare;
  {
    std::lock_guard lock(spares_->mu);
    auto& kept = spares_->kept;
    auto it = std::find_if(kept.begin(), kept.end(),
                           [&](const Spares::Spare& s) { return s.limits == limits; });
    if (it == kept.end()) return false;
    spare = std::move(*it);
    kept.erase(it);
  }
  // The peak restarts at what the group holds now; a failed reset would report the
  // previous task's peak as this one's, so such a spare is not used.
  bool reset = memory_dir_.empty() ||
               write_file(memory_dir_ + "/" + spare.name + "/memory.max_usage_in_bytes", "0");
  if (!reset || !rename_group(spare.name, task_name)) {
    // A leftover group of this name (a retried attempt's), or a tree changed under us:
    // both go, and the caller makes a new group.
    destroy_group(spare.name);
    return false;
  }
  std::lock_guard lock(spares_->mu);
  spares_->bases[task_name] = spare.base;
  return true;
}

bool Isolation::recycle_group(const std::string& task_name, const TaskLimits& limits) {
  if (!spares_ || !valid_group_name(task_name) || controller_dirs_.empty()) return false;
  // Empty: a task's processes are in every hierarchy's group at once (they join all of
  // them before exec, forks inherit, and only root may move them), so one list tells.
  auto procs = read_file(controller_dirs_.front() + "/" + task_name + "/cgroup.procs");
  if (!procs || !parse_pids(*procs).empty()) return false;
  if (!memory_dir_.empty()) {
    // Never an OOM kill behind it: oom_killed() reads a counter the kernel never resets.
    const std::string dir = memory_dir_ + "/" + task_name;
    auto oom = read_file(dir + "/memory.oom_control");
    if (!oom || keyed(*oom, "oom_kill").value_or(1) != 0) return false;
    // Little left charged to it: page cache, tmpfs and kernel memory stay with a v1 group
    // after its processes are gone, and would count against the next task's limit and in
    // its peak (tmpfs cannot even be reclaimed without swap).
    auto held = read_file(dir + "/memory.usage_in_bytes");
    auto bytes = held ? parse_u64(*held) : std::nullopt;
    uint64_t most = kSpareLeftoverMax;
    if (limits.mem_bytes > 0) most = std::min(most, limits.mem_bytes / 16);
    if (!bytes || *bytes > most) return false;
  }
  Spares::Spare spare;
  spare.limits = limits;
  {
    // Cumulative: the counters without the baseline usage() takes off.
    std::lock_guard lock(spares_->mu);
    spares_->bases.erase(task_name);
    spare.name = std::string(kSparePrefix) + std::to_string(spares_->next++);
  }
  if (!cpuacct_dir_.empty()) {
    auto text = read_file(cpuacct_dir_ + "/" + task_name + "/cpuacct.stat");
    auto user = text ? keyed(*text, "user") : std::nullopt;
    auto system = text ? keyed(*text, "system") : std::nullopt;
    if (!user || !system) return false;
    spare.base.cpu_user_us = ticks_to_us(*user);
    spare.base.cpu_system_us = ticks_to_us(*system);
    spare.base.has_cpu = true;
  }
  if (!rename_group(task_name, spare.name)) return false;
  // At most kSparesMax: the oldest goes to make room, or spares kept for limits no later
  // task asks for would hold every place for good. Empty, it goes at once.
  std::optional<std::string> evicted;
  {
    std::lock_guard lock(spares_->mu);
    if (spares_->kept.size() >= kSparesMax) {
      evicted = std::move(spares_->kept.front().name);
      spares_->kept.erase(spares_->kept.begin());
    }
    spares_->kept.push_back(std::move(spare));
  }
  if (evicted) destroy_group(*evicted);
  return true;
}

uint32_t Isolation::spares() const {
  if (!spares_) return 0;
  std::lock_guard lock(spares_->mu);
  return static_cast<uint32_t>(spares_->kept.size());
}

bool Isolation::remake_parent(const std::string& parent) const {
  if (!make_dir(parent)) return false;
  if (info_.mode == IsolationMode::kCgroupV2) {
    std::set<std::string> want;
    if (memory_dir_ == parent) want.insert("memory");
    if (cpu_dir_ == parent) want.insert("cpu");
    if (pids_dir_ == parent) want.insert("pids");
    enable_controllers(parent + "/cgroup.subtree_control", want);
  }
  return true;
}

void Isolation::signal_group(const std::string& task_name, int sig) {
  for (const std::string& parent : controller_dirs_) {
    auto text = read_file(parent + "/" + task_name + "/cgroup.procs");
    if (!text) continue;
    for (pid_t pid : parse_pids(*text)) ::kill(pid, sig);
  }
}

// One round for one hierarchy's group directory; see reap_group.
bool Isolation::reap_dir(const std::string& dir) {
  // The usual end: the task's processes are gone and the empty group goes at once. The
  // kernel refuses (EBUSY) to remove a group that still has a process, so no read of
  // cgroup.procs is needed to be sure: 12 fewer calls per task on v1's four hierarchies.
  if (::rmdir(dir.c_str()) == 0 || errno == ENOENT) return true;
  // cgroup.kill (v2, Linux 5.14+) kills the whole group atomically, forks included.
  if (info_.mode == IsolationMode::kCgroupV2 && exists(dir + "/cgroup.kill")) {
    (void)write_file(dir + "/cgroup.kill", "1");
  }
  auto text = read_file(dir + "/cgroup.procs");
  if (!text) {
    if (text.error().sys_errno != ENOENT) return false;  // cannot tell who is left
    if (!exists(dir)) return true;
    // A directory without cgroup.procs is no cgroup (a fake tree): nobody to kill.
  }
  std::vector<pid_t> pids = text ? parse_pids(*text) : std::vector<pid_t>{};
  // SIGKILL is delivered asynchronously: the exits land before a later round. (A pid
  // that exited and was reused between the read and the kill is v1's race; cgroup.kill
  // closes it on v2.)
  for (pid_t pid : pids) ::kill(pid, SIGKILL);
  if (!pids.empty()) return false;
  if (::rmdir(dir.c_str()) == 0 || errno == ENOENT) return true;
  // EBUSY: exits still being accounted, or a child group. Anything else (ENOTEMPTY on a
  // plain directory, EPERM) does not change with time.
  return errno != EBUSY;
}

bool Isolation::reap_group(const std::string& task_name) {
  if (!valid_group_name(task_name)) return true;  // never one of ours
  bool gone = true;
  // Every hierarchy each round, so each gets its SIGKILLs now, not after the others.
  for (const std::string& parent : controller_dirs_) {
    gone = reap_dir(parent + "/" + task_name) && gone;
  }
  if (gone && spares_) {
    std::lock_guard lock(spares_->mu);
    spares_->bases.erase(task_name);
  }
  return gone;
}

void Isolation::kill_and_remove(const std::string& dir) {
  for (uint32_t round = 0; round < kKillRounds; ++round) {
    if (reap_dir(dir)) return;
    pause_briefly();
  }
}

void Isolation::destroy_group(const std::string& task_name) {
  for (uint32_t round = 0; round < kKillRounds; ++round) {
    if (reap_group(task_name)) return;
    pause_briefly();
  }
}

GroupUsage Isolation::usage(const std::string& task_name) const {
  GroupUsage u;
  if (!valid_group_name(task_name) || controller_dirs_.empty()) return u;
  if (info_.mode == IsolationMode::kCgroupV2) {
    // One directory per group on v2; cpu.stat is there with or without the cpu controller.
    std::string dir = controller_dirs_.front() + "/" + task_name;
    if (auto text = read_file(dir + "/cpu.stat")) {
      auto user = keyed(*text, "user_usec");
      auto system = keyed(*text, "system_usec");
      if (user && system) {
        u.cpu_user_us = *user;
        u.cpu_system_us = *system;
        u.has_cpu = true;
      }
    }
    if (auto text = read_file(dir + "/memory.peak")) {
      if (auto peak = parse_u64(*text)) {
        u.mem_peak_bytes = *peak;
        u.has_mem = true;
      }
    }
    return u;
  }
  if (!cpuacct_dir_.empty()) {
    if (auto text = read_file(cpuacct_dir_ + "/" + task_name + "/cpuacct.stat")) {
      auto user = keyed(*text, "user");
      auto system = keyed(*text, "system");
      if (user && system) {
        u.cpu_user_us = ticks_to_us(*user);
        u.cpu_system_us = ticks_to_us(*system);
        u.has_cpu = true;
      }
    }
    // A group made from a spare: what the earlier tasks in it used is not this one's.
    if (u.has_cpu && spares_) {
      std::lock_guard lock(spares_->mu);
      if (auto it = spares_->bases.find(task_name); it != spares_->bases.end()) {
        u.cpu_user_us -= std::min(u.cpu_user_us, it->second.cpu_user_us);
        u.cpu_system_us -= std::min(u.cpu_system_us, it->second.cpu_system_us);
      }
    }
  }
  if (!memory_dir_.empty()) {
    if (auto text = read_file(memory_dir_ + "/" + task_name + "/memory.max_usage_in_bytes")) {
      if (auto peak = parse_u64(*text)) {
        u.mem_peak_bytes = *peak;
        u.has_mem = true;
      }
    }
  }
  return u;
}

bool Isolation::oom_killed(const std::string& task_name) const {
  if (memory_dir_.empty()) return false;
  std::string dir = memory_dir_ + "/" + task_name;
  if (info_.mode == IsolationMode::kCgroupV2) {
    auto text = read_file(dir + "/memory.events");
    return text && keyed(*text, "oom_kill").value_or(0) > 0;
  }
  auto text = read_file(dir + "/memory.oom_control");
  return text && keyed(*text, "oom_kill").value_or(0) > 0;
}

uint32_t Isolation::destroy_all_groups() {
  if (spares_) {
    // Spares are found below like any group; what was kept of them is forgotten first.
    // Called before any task starts (a restart) or after the executor is gone, so no
    // spawn thread is taking one meanwhile.
    std::lock_guard lock(spares_->mu);
    spares_->kept.clear();
    spares_->bases.clear();
  }
  std::set<std::string> names;
  for (const std::string& parent : controller_dirs_) {
    DIR* d = ::opendir(parent.c_str());
    if (d == nullptr) continue;
    while (struct dirent* e = ::readdir(d)) {
      if (names.size() >= kGroupsMax) break;
      if (e->d_name[0] == '.') continue;
      struct stat st {};
      std::string path = parent + "/" + e->d_name;
      if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) names.insert(e->d_name);
    }
    ::closedir(d);
  }
  uint32_t tasks = 0;
  for (const std::string& n : names) {
    destroy_group(n);
    if (!n.starts_with(kSparePrefix)) ++tasks;
  }
  return tasks;
}

void Isolation::destroy_parent() {
  destroy_all_groups();
  for (const std::string& parent : controller_dirs_) ::rmdir(parent.c_str());
  *this = Isolation();
  info_.enforced = {"memory"};  // as probe() reports rlimit mode
}

namespace {

// True if /proc/PID/environ holds `entry` ("K=V"; with `prefix`, an entry starting so).
EnvironMatch environ_matches_checked(int32_t pid, const std::string& entry, bool prefix) {
  constexpr size_t kEnvironBytesMax = 256u << 10;  // larger environments are not read
  std::string needle;
  needle.push_back('\0');
  needle += entry;
  if (!prefix) needle.push_back('\0');
  std::ifstream in("/proc/" + std::to_string(pid) + "/environ", std::ios::binary);
  std::string env(1, '\0');  // so the first entry matches "\0K=V\0" too
  char buf[4096];
  while (in && env.size() < kEnvironBytesMax) {
    in.read(buf, sizeof(buf));
    env.append(buf, static_cast<size_t>(in.gcount()));
  }
  if (env.size() == 1) return EnvironMatch::kUnreadable;
  env.push_back('\0');
  return env.find(needle) != std::string::npos ? EnvironMatch::kYes : EnvironMatch::kNo;
}

bool environ_matches(int32_t pid, const std::string& entry, bool prefix) {
  return environ_matches_checked(pid, entry, prefix) == EnvironMatch::kYes;
}

}  // namespace

bool environ_has(int32_t pid, const std::string& entry) {
  return environ_matches(pid, entry, /*prefix=*/false);
}

EnvironMatch environ_match(int32_t pid, const std::string& entry) {
  return environ_matches_checked(pid, entry, /*prefix=*/false);
}

std::vector<int32_t> pids_with_env(const std::string& entry, bool prefix, uint32_t max) {
  std::vector<int32_t> out;
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) return out;
  const int32_t self = static_cast<int32_t>(::getpid());
  while (struct dirent* e = ::readdir(proc)) {
    if (out.size() >= max) break;
    char* end = nullptr;
    long pid = std::strtol(e->d_name, &end, 10);
    if (pid <= 0 || *end != '\0' || pid == self) continue;
    if (environ_matches(static_cast<int32_t>(pid), entry, prefix)) {
      out.push_back(static_cast<int32_t>(pid));
    }
  }
  ::closedir(proc);
  return out;
}

std::vector<int32_t> adopted_children(uint32_t max) {
  std::vector<int32_t> out;
  const std::string path = "/proc/self/task/" + std::to_string(::getpid()) + "/children";
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return out;
  // "PID PID ... " in chunks; a number split between two reads is carried over. Bounded:
  // each pass reads something or ends, and at most `max` pids are kept.
  char buf[4096];
  int64_t pid = -1;  // the number being read, -1 between numbers
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    for (ssize_t i = 0; i < n; ++i) {
      if (buf[i] >= '0' && buf[i] <= '9') {
        pid = (pid < 0 ? 0 : pid * 10) + (buf[i] - '0');
        if (pid > INT32_MAX) pid = INT32_MAX;  // not a pid: let kill() refuse it
      } else if (pid >= 0) {
        if (out.size() < max) out.push_back(static_cast<int32_t>(pid));
        pid = -1;
      }
    }
  }
  if (pid >= 0 && out.size() < max) out.push_back(static_cast<int32_t>(pid));
  ::close(fd);
  return out;
}

std::vector<int32_t> own_children(uint32_t max, std::span<const pid_t> skip_tids) {
  std::vector<int32_t> out;
  DIR* tasks = ::opendir("/proc/self/task");
  if (tasks == nullptr) return out;
  while (struct dirent* e = ::readdir(tasks)) {
    if (e->d_name[0] == '.') continue;
    const long tid = std::strtol(e->d_name, nullptr, 10);
    if (std::find(skip_tids.begin(), skip_tids.end(), static_cast<pid_t>(tid)) != skip_tids.end()) {
      continue;
    }
    std::ifstream in(std::string("/proc/self/task/") + e->d_name + "/children");
    for (long pid = 0; out.size() < max && in >> pid;) out.push_back(static_cast<int32_t>(pid));
  }
  ::closedir(tasks);
  return out;
}

}  // namespace cardnode::runtime
