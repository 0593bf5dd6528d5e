// Isolation against fake cgroup trees (plain files under a temp dir: parsing, the files
// written, OOM detection, usage, placement under a service from a fake
// /proc/self/cgroup) and against the real /sys/fs/cgroup of this machine (skipped when
// not root or when the machine offers no cgroups). The real-cgroupfs tests never move
// the test process: they probe with an empty or fake self-cgroup file.
#include "runtime/exec/isolation.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

namespace cardnode::runtime {
namespace {

namespace fs = std::filesystem;

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void put(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p) << text;
}

bool has(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base != nullptr ? base : "/tmp") + "/isolation_test.XXXXXX";
    CARDNODE_CHECK(::mkdtemp(tmpl.data()) != nullptr);
    path_ = tmpl;
  }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// A v1 hybrid as Debian mounts it: one directory per hierarchy. Control files of the
// parent group "cn" exist beforehand (the kernel creates them at mkdir).
void make_fake_v1(const fs::path& root, bool memory, bool memsw, bool cpu, bool pids) {
  if (memory) {
    put(root / "memory/cgroup.procs", "");
    put(root / "memory/cn/memory.limit_in_bytes", "9223372036854771712\n");
    if (memsw) put(root / "memory/cn/memory.memsw.limit_in_bytes", "9223372036854771712\n");
  }
  if (cpu) {
    put(root / "cpu,cpuacct/cgroup.procs", "");
    put(root / "cpu,cpuacct/cn/cpu.cfs_quota_us", "-1\n");
  }
  if (pids) {
    put(root / "pids/cgroup.procs", "");
    put(root / "pids/cn/pids.max", "max\n");
  }
}

TEST(IsolationFakeV1, WritesLimitsIntoEveryController) {
  TempDir tmp;
  make_fake_v1(tmp.path(), true, true, true, true);
  Isolation iso = Isolation::probe(tmp.path(), "cn");
  if (::geteuid() != 0) GTEST_SKIP() << "cgroups need root";
  ASSERT_EQ(iso.info().mode, IsolationMode::kCgroupV1);
  EXPECT_EQ(iso.info().enforced, (std::vector<std::string>{"memory", "cpu", "pids"}));
  EXPECT_FALSE(iso.memory_by_rlimit());

  auto procs = iso.create_group("7.0", {.cpu_millis = 500, .mem_bytes = 64 << 20, .pids_max = 100});
  ASSERT_TRUE(procs) << procs.error().describe();
  EXPECT_EQ(*procs, (std::vector<std::string>{tmp.path() / "memory/cn/7.0/cgroup.procs",
                                              tmp.path() / "cpu,cpuacct/cn/7.0/cgroup.procs",
                                              tmp.path() / "pids/cn/7.0/cgroup.procs"}));
  EXPECT_EQ(slurp(tmp.path() / "memory/cn/7.0/memory.limit_in_bytes"), "67108864");
  EXPECT_EQ(slurp(tmp.path() / "memory/cn/7.0/memory.memsw.limit_in_bytes"), "67108864");
  // The period is the kernel's default (100 ms) and is not written: each write walks
  // every task group of the hierarchy.
  EXPECT_FALSE(std::filesystem::exists(tmp.path() / "cpu,cpuacct/cn/7.0/cpu.cfs_period_us"));
  EXPECT_EQ(slurp(tmp.path() / "cpu,cpuacct/cn/7.0/cpu.cfs_quota_us"), "50000");
  EXPECT_EQ(slurp(tmp.path() / "pids/cn/7.0/pids.max"), "100");
}

TEST(IsolationFakeV1, NoLimitsMeansNoLimitFiles) {
  TempDir tmp;
  make_fake_v1(tmp.path(), true, false, true, true);
  Isolation iso = Isolation::probe(tmp.path(), "cn");
  if (::geteuid() != 0) GTEST_SKIP() << "cgroups need root";
  auto procs = iso.create_group("1.2", {.cpu_millis = 0, .mem_bytes = 0, .pids_max = 0});
  ASSERT_TRUE(procs) << procs.error().describe();
  EXPECT_FALSE(fs::exists(tmp.path() / "memory/cn/1.2/memory.limit_in_bytes"));
  EXPECT_FALSE(fs::exists(tmp.path() / "cpu,cpuacct/cn/1.2/cpu.cfs_quota_us"));
  EXPECT_EQ(slurp(tmp.path() / "pids/cn/1.2/pids.max"), "max");
}

TEST(IsolationFakeV1, TinyCpuLimitIsRaisedToKernelMinimum) {
  TempDir tmp;
  make_fake_v1(tmp.path(), false, false, true, false);
  Isolation iso = Isolation::probe(tmp.path(), "cn");
  if (::geteuid() != 0) GTEST_SKIP() << "cgroups need root";
  ASSERT_TRUE(iso.create_group("3.0", {.cpu_millis = 1, .mem_bytes = 0, .pids_max = 1}));
  EXPECT_EQ(slurp(tmp.path() / "cpu,cpuacct/cn/3.0/cpu.cfs_quota_us"), "1000");
}

TEST(IsolationFakeV1, MemoryFallsBackToRlimitWithoutMemoryController) {
  TempDir tmp;
  make_fake_v1(tmp.path(), false, false, false, true);
  Isolation iso = Isolation::probe(tmp.path(), "cn");
  if (::geteuid() != 0) GTEST_SKIP() << "cgroups need root";
  ASSERT_EQ(iso.info().mode, IsolationMode::kCgroupV1);
  EXPECT_EQ(iso.info().enforced, (std::vector<std::string>{"memory", "pids"}));
  EXPECT_TRUE(iso.memory_by_rlimit());
  EXPECT_FALSE(iso.oom_killed("1.0"));
}

TEST(IsolationFakeV1, OomDetectedFromOomControl) {
  TempDir tmp;
  make_fake_v1(tmp.path(), true, false, false, false);
  Isolation iso = Isolation::probe(tmp.path(), "cn");
  if (::geteuid() != 0) GTEST_SKIP() << "cgroups need root";
  ASSERT_TRUE(iso.create_group("7.1", {}));
  EXPECT_FALSE(iso.oom_killed("7.1"));  // no file at all
  put(tmp.path() / "memory/cn/7.1/memory.oom_control",
      "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n");
  EXPECT_FALSE(iso.oom_killed("7.1"));
  put(tmp.path() / "memory/cn/7.1/memory.oom_control",
      "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n");
  EXPECT_TRUE(iso.oom_killed("7.1"));
  EXPECT_FALSE(iso.oom_killed("7.2"));
}

TEST(IsolationFakeV1, HierarchyWithoutLimitFileIsNotUsed) {
  TempDir tmp;
  put(tmp.path() / "memory/cgroup.procs", "");  // mounted, but no memory.limit_in_bytes
  Isolation iso = Isolation::probe(tmp.path(), "cn");
  EXPECT_EQ(iso.info().mode, IsolationMode::kRlimit);
  EXPECT_FALSE(fs::exists(tmp.path() / "memory/cn"));  // the probe cleaned up after itself
}

// A v2 root: cgroup.controllers lists what the kernel has; the probe enables it for
// the parent group through cgroup.subtree_control.
void make_fake_v2(const fs::path& root, const std::string& controllers) {
  put(root / "cgroup.controllers", controllers);
  put(root / "cgroup.subtree_control", "");
  put(root / "cn/cgroup.subtree_control", "");
}

std::set<std::string> words(const std::string& s) {
  std::set<std::string> out;
  std::istringstream in(s);
  for (std::string w; in >> w;) out.insert(w);
  return out;
}

TEST(IsolationFakeV2, EnablesControllersAndWritesLimits) {
  TempDir tmp;
  make_fake_v2(tmp.path(), "cpuset cpu io memory hugetlb pids rdma misc\n");
  Isolation iso = Isolation::probe(tmp.path(), "cn");
  if (::geteuid() != 0) GTEST_SKIP() << "cgroups need root";
  ASSERT_EQ(iso.info().mode, IsolationMode::kCgroupV2);
  EXPECT_EQ(iso.info().enforced, (std::vector<std::string>{"memory", "cpu", "pids"}));
  std::set<std::string> want = {"+cpu", "+memory", "+pids"};
  EXPECT_EQ(words(slurp(tmp.path() / "cgroup.subtree_control")), want);
  EXPECT_EQ(words(slurp(tmp.path() / "cn/cgroup.subtree_control")), want);

  auto procs = iso.create_group("9.3", {.cpu_millis = 1500, .mem_bytes = 1 << 30, .pids_max = 64});
  ASSERT_TRUE(procs) << procs.error().describe();
  EXPECT_EQ(*procs, (std::vector<std::string>{tmp.path() / "cn/9.3/cgroup.procs"}));
  fs::path g = tmp.path() / "cn/9.3";
  EXPECT_EQ(slurp(g / "memory.max"), "1073741824");
  EXPECT_EQ(slurp(g / "memory.swap.max"), "0");
  EXPECT_EQ(slurp(g / "memory.oom.group"), "1");
  EXPECT_EQ(slurp(g / "cpu.max"), "150000 100000");
  EXPECT_EQ(slurp(g / "pids.max"), "64");
}

TEST(IsolationFakeV2, OomDetectedFromMemoryEvents) {
  TempDir tmp;
  make_fake_v2(tmp.path(), "memory pids");
  Isolation iso = Isolation::probe(tmp.path(), "cn");
  if (::geteuid() != 0) GTEST_SKIP() << "cgroups need root";
  ASSERT_TRUE(iso.create_group("4.0", {}));
  fs::path events = tmp.path() / "cn/4.0/memory.events";
  put(events, "low 0\nhigh 0\nmax 12\noom 1\noom_kill 0\noom_group_kill 1\n");
  EXPECT_FALSE(iso.oom_killed("4.0"));  // oom_group_kill is another key
  put(events, "low 0\nhigh 0\nmax 12\noom 1\noom_kill 3\noom_group_kill 1\n");
  EXPECT_TRUE(iso.oom_killed("4.0"));
}

TEST(IsolationFakeV2, WithoutMemoryControllerMemoryUsesRlimit) {
  TempDir tmp;
  make_fake_v2(tmp.path(), "cpu pids");  // a Pi kernel without cgroup_enable=memory
  Isolation iso = Isolation::probe(tmp.path(), "cn");
  if (::geteuid() != 0) GTEST_SKIP() << "cgroups need root";
  ASSERT_EQ(iso.info().mode, IsolationMode::kCgroupV2);
  EXPECT_TRUE(iso.memory_by_rlimit());
  EXPECT_EQ(iso.info().enforced, (std::vector<std::string>{"memory", "cpu", "pids"}));
  ASSERT_TRUE(iso.create_group("5.0", {.cpu_millis = 0, .mem_bytes = 1 << 20, .pids_max = 5}));
  EXPECT_FALSE(fs::exists(tmp.path() / "cn/5.0/memory.max"));
}

TEST(IsolationFakeV2, NoUsableControllerMeansRlimit) {
  TempDir tmp;
  make_fake_v2(tmp.path(), "cpuset io\n");
  Isolation iso = Isolation::probe(tmp.path(), "cn");
  EXPECT_EQ(iso.info().mode, IsolationMode::kRlimit);
}

TEST(IsolationRlimit, DisabledOrEmptyRootGivesRlimit) {
  TempDir tmp;
  make_fake_v1(tmp.path(), true, true, true, true);
  for (bool disabled : {true, false}) {
    Isolation iso = disabled ? Isolation::probe(tmp.path(), "cn", /*disable_cgroups=*/true)
                             : Isolation::probe(tmp.path() / "nothing-here", "cn");
    EXPECT_EQ(iso.info().mode, IsolationMode::kRlimit);
    EXPECT_STREQ(isolation_name(iso.info().mode), "rlimit");
    EXPECT_EQ(iso.info().enforced, (std::vector<std::string>{"memory"}));
    EXPECT_TRUE(iso.memory_by_rlimit());
    auto procs = iso.create_group("1.0", {.cpu_millis = 100, .mem_bytes = 1 << 20, .pids_max = 1});
    ASSERT_TRUE(procs);
    EXPECT_TRUE(procs->empty());
    EXPECT_FALSE(iso.oom_killed("1.0"));
    iso.destroy_group("1.0");
    EXPECT_EQ(iso.destroy_all_groups(), 0u);
  }
  EXPECT_FALSE(fs::exists(tmp.path() / "memory/cn/1.0"));
}

TEST(IsolationFakeV1, RejectsGroupNamesThatEscapeTheParent) {
  TempDir tmp;
  make_fake_v1(tmp.path(), true, false, false, false);
  Isolation iso = Isolation::probe(tmp.path(), "cn");
  if (::geteuid() != 0) GTEST_SKIP() << "cgroups need root";
  for (const char* bad : {"", "..", "../x", "a/b", ".hidden"}) {
    auto r = iso.create_group(bad, {});
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.error().code, Errc::kInvalidArgument);
  }
  EXPECT_FALSE(fs::exists(tmp.path() / "memory/x"));
}

// ---- teardown without blocking -------------------------------------------------------

// A forked child that only waits for signals; the test kills it at the end whatever
// happened. Fake trees list its pid, because reap_group really sends SIGKILL.
class PausedChild {
 public:
  PausedChild() {
    pid_ = ::fork();
    if (pid_ == 0) {
      for (;;) ::pause();
    }
  }
  ~PausedChild() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);  // a zombie by now, unless the test failed
      ::waitpid(pid_, nullptr, 0);
    }
  }
  pid_t pid() const { return pid_; }
  // The signal that ended the child, polling up to `deadline`; nullopt if still alive.
  // The child is left a zombie (WNOWAIT) so its pid cannot be reused while a fake
  // cgroup.procs still lists it.
  std::optional<int> wait_for_death(std::chrono::milliseconds deadline) {
    auto until = std::chrono::steady_clock::now() + deadline;
    while (std::chrono::steady_clock::now() < until) {
      siginfo_t info{};
      if (::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
          info.si_pid == pid_) {
        return info.si_code == CLD_KILLED || info.si_code == CLD_DUMPED ? info.si_status : 0;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return std::nullopt;
  }

 private:
  pid_t pid_ = -1;
};

TEST(IsolationFakeV1, ReapGroupIsFalseWhileAListedProcessLives) {
  TempDir tmp;
  make_fake_v1(tmp.path(), true, false, false, true);
  Isolation iso = Isolation::probe(tmp.path(), "cn", false, "");
  if (::geteuid() != 0) GTEST_SKIP() << "cgroups need root";
  ASSERT_TRUE(iso.create_group("5.1", {}));
  PausedChild child;
  ASSERT_GT(child.pid(), 0);
  // Only the memory hierarchy lists the child: one busy hierarchy keeps the group.
  put(tmp.path() / "memory/cn/5.1/cgroup.procs", std::to_string(child.pid()) + "\n");
  put(tmp.path() / "pids/cn/5.1/cgroup.procs", "");
  // A plain file stays as written: the group never empties, so it is never gone.
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(iso.reap_group("5.1")) << i;
  EXPECT_TRUE(fs::exists(tmp.path() / "memory/cn/5.1"));
  // It did try: the listed process got SIGKILL.
  std::optional<int> sig = child.wait_for_death(std::chrono::seconds(10));
  ASSERT_TRUE(sig.has_value()) << "reap_group did not signal the listed process";
  EXPECT_EQ(*sig, SIGKILL);
  EXPECT_FALSE(iso.reap_group("5.1"));  // a zombie, still listed: still not gone
}

TEST(IsolationFakeV1, ReapGroupIsTrueWhenNothingIsLeft) {
  TempDir tmp;
  make_fake_v1(tmp.path(), true, false, false, true);
  Isolation iso = Isolation::probe(tmp.path(), "cn", false, "");
  if (::geteuid() != 0) GTEST_SKIP() << "cgroups need root";
  EXPECT_TRUE(iso.reap_group("6.0"));   // never existed
  EXPECT_TRUE(iso.reap_group("../x"));  // never one of ours
  // Empty group directories (what rmdir of a cgroup sees) are removed.
  ASSERT_TRUE(fs::create_directory(tmp.path() / "memory/cn/6.1"));
  ASSERT_TRUE(fs::create_directory(tmp.path() / "pids/cn/6.1"));
  EXPECT_TRUE(iso.reap_group("6.1"));
  EXPECT_FALSE(fs::exists(tmp.path() / "memory/cn/6.1"));
  EXPECT_FALSE(fs::exists(tmp.path() / "pids/cn/6.1"));
  // A fake group with files and an empty cgroup.procs: rmdir says ENOTEMPTY, which no
  // retry changes, and nobody is left: gone as far as teardown goes.
  ASSERT_TRUE(iso.create_group("6.2", {.cpu_millis = 0, .mem_bytes = 1 << 20, .pids_max = 0}));
  EXPECT_TRUE(iso.reap_group("6.2"));
}

TEST(IsolationFakeV2, ReapGroupWritesCgroupKill) {
  TempDir tmp;
  make_fake_v2(tmp.path(), "memory pids");
  Isolation iso = Isolation::probe(tmp.path(), "cn", false, "");
  if (::geteuid() != 0) GTEST_SKIP() << "cgroups need root";
  ASSERT_TRUE(iso.create_group("8.0", {}));
  PausedChild child;
  ASSERT_GT(child.pid(), 0);
  put(tmp.path() / "cn/8.0/cgroup.kill", "");
  put(tmp.path() / "cn/8.0/cgroup.procs", std::to_string(child.pid()) + "\n");
  EXPECT_FALSE(iso.reap_group("8.0"));
  EXPECT_EQ(slurp(tmp.path() / "cn/8.0/cgroup.kill"), "1");
  std::optional<int> sig = child.wait_for_death(std::chrono::seconds(10));
  ASSERT_TRUE(sig.has_value());
  EXPECT_EQ(*sig, SIGKILL);
}

// ---- usage ---------------------------------------------------------------------------

uint64_t ticks_us(uint64_t ticks) {
  return ticks * 1000000 / static_cast<uint64_t>(::sysconf(_SC_CLK_TCK));
}

TEST(IsolationFakeV1, UsageFromCpuacctStatAndMaxUsage) {
  TempDir tmp;
  make_fake_v1(tmp.path(), true, false, true, true);
  // Debian mounts "cpu,cpuacct"; put cpuacct in the same hierarchy's parent.
  put(tmp.path() / "cpu,cpuacct/cn/cpuacct.stat", "user 0\nsystem 0\n");
  Isolation iso = Isolation::probe(tmp.path(), "cn", false, "");
  if (::geteuid() != 0) GTEST_SKIP() << "cgroups need root";
  auto procs = iso.create_group("2.0", {});
  ASSERT_TRUE(procs);
  EXPECT_EQ(procs->size(), 3u);  // one hierarchy for cpu and cpuacct: joined once
  put(tmp.path() / "cpu,cpuacct/cn/2.0/cpuacct.stat", "user 250\nsystem 31\n");
  put(tmp.path() / "memory/cn/2.0/memory.max_usage_in_bytes", "20971520\n");
  GroupUsage u = iso.usage("2.0");
  EXPECT_TRUE(u.has_cpu);
  EXPECT_TRUE(u.has_mem);
  EXPECT_EQ(u.cpu_user_us, ticks_us(250));
  EXPECT_EQ(u.cpu_system_us, ticks_us(31));
  EXPECT_EQ(u.mem_peak_bytes, 20971520u);
  // Missing or garbled files: nothing claimed.
  put(tmp.path() / "cpu,cpuacct/cn/2.0/cpuacct.stat", "user x\nsystem 1\n");
  fs::remove(tmp.path() / "memory/cn/2.0/memory.max_usage_in_bytes");
  u = iso.usage("2.0");
  EXPECT_FALSE(u.has_cpu);
  EXPECT_FALSE(u.has_mem);
  EXPECT_EQ(u.cpu_user_us, 0u);
  EXPECT_FALSE(iso.usage("2.9").has_cpu);
}

TEST(IsolationFakeV1, SeparateCpuacctHierarchyIsJoinedAndRead) {
  TempDir tmp;
  make_fake_v1(tmp.path(), false, false, false, true);
  put(tmp.path() / "cpu/cgroup.procs", "");  // cpu and cpuacct mounted apart
  put(tmp.path() / "cpu/cn/cpu.cfs_quota_us", "-1\n");
  put(tmp.path() / "cpuacct/cgroup.procs", "");
  put(tmp.path() / "cpuacct/cn/cpuacct.stat", "user 0\nsystem 0\n");
  Isolation iso = Isolation::probe(tmp.path(), "cn", false, "");
  if (::geteuid() != 0) GTEST_SKIP() << "cgroups need root";
  EXPECT_EQ(iso.info().enforced, (std::vector<std::string>{"memory", "cpu", "pids"}));
  auto procs = iso.create_group("2.1", {.cpu_millis = 500, .mem_bytes = 0, .pids_max = 0});
  ASSERT_TRUE(procs);
  EXPECT_EQ(*procs, (std::vector<std::string>{tmp.path() / "cpu/cn/2.1/cgroup.procs",
                                              tmp.path() / "pids/cn/2.1/cgroup.procs",
                                              tmp.path() / "cpuacct/cn/2.1/cgroup.procs"}));
  put(tmp.path() / "cpuacct/cn/2.1/cpuacct.stat", "user 7\nsystem 3\n");
  GroupUsage u = iso.usage("2.1");
  EXPECT_TRUE(u.has_cpu);
  EXPECT_FALSE(u.has_mem);  // no memory hierarchy
  EXPECT_EQ(u.cpu_user_us, ticks_us(7));
  EXPECT_EQ(u.cpu_system_us, ticks_us(3));
}

TEST(IsolationFakeV2, UsageFromCpuStatAndMemoryPeak) {
  TempDir tmp;
  make_fake_v2(tmp.path(), "cpu memory pids");
  Isolation iso = Isolation::probe(tmp.path(), "cn", false, "");
  if (::geteuid() != 0) GTEST_SKIP() << "cgroups need root";
  ASSERT_TRUE(iso.create_group("3.1", {}));
  put(tmp.path() / "cn/3.1/cpu.stat",
      "usage_usec 1500\nuser_usec 1200\nsystem_usec 300\nnr_periods 0\n");
  put(tmp.path() / "cn/3.1/memory.peak", "4096000\n");
  GroupUsage u = iso.usage("3.1");
  EXPECT_TRUE(u.has_cpu);
  EXPECT_TRUE(u.has_mem);
  EXPECT_EQ(u.cpu_user_us, 1200u);
  EXPECT_EQ(u.cpu_system_us, 300u);
  EXPECT_EQ(u.mem_peak_bytes, 4096000u);
  fs::remove(tmp.path() / "cn/3.1/memory.peak");  // before Linux 5.19
  u = iso.usage("3.1");
  EXPECT_TRUE(u.has_cpu);
  EXPECT_FALSE(u.has_mem);
}

// ---- spare groups (v1) ---------------------------------------------------------------

// A fake v1 group as a finished task leaves it: nobody in it, its counters as given.
void finished_fake_group(const fs::path& root, const std::string& g, int user_ticks,
                         int oom_kills) {
  put(root / "memory/cn" / g / "cgroup.procs", "");
  put(root / "memory/cn" / g / "memory.oom_control",
      "oom_kill_disable 0\nunder_oom 0\noom_kill " + std::to_string(oom_kills) + "\n");
  put(root / "memory/cn" / g / "memory.max_usage_in_bytes", "20971520\n");
  put(root / "memory/cn" / g / "memory.usage_in_bytes", "262144\n");  // a short task's
  put(root / "cpu,cpuacct/cn" / g / "cpuacct.stat",
      "user " + std::to_string(user_ticks) + "\nsystem 3\n");
}

TEST(IsolationFakeV1, ASpareGroupCountsOnlyItsNewTasksUsage) {
  TempDir tmp;
  make_fake_v1(tmp.path(), true, false, true, true);
  put(tmp.path() / "cpu,cpuacct/cn/cpuacct.stat", "user 0\nsystem 0\n");
  Isolation iso = Isolation::probe(tmp.path(), "cn", false, "");
  if (::geteuid() != 0) GTEST_SKIP() << "cgroups need root";
  const TaskLimits limits{.cpu_millis = 500, .mem_bytes = 64 << 20, .pids_max = 100};
  ASSERT_TRUE(iso.create_group("3.0", limits));
  finished_fake_group(tmp.path(), "3.0", 250, 0);
  ASSERT_TRUE(iso.recycle_group("3.0", limits));
  EXPECT_EQ(iso.spares(), 1u);
  EXPECT_FALSE(fs::exists(tmp.path() / "memory/cn/3.0"));
  EXPECT_FALSE(fs::exists(tmp.path() / "pids/cn/3.0"));
  // Another task with the same limits gets it, under its own name in every hierarchy.
  auto procs = iso.create_group("3.1", limits);
  ASSERT_TRUE(procs);
  EXPECT_EQ(iso.spares(), 0u);
  for (const char* h : {"memory", "cpu,cpuacct", "pids"}) {
    EXPECT_TRUE(fs::exists(tmp.path() / h / "cn/3.1")) << h;
  }
  // Its limits are the ones the spare was made with.
  EXPECT_EQ(slurp(tmp.path() / "pids/cn/3.1/pids.max"), "100");
  // The peak was reset, and the cpu the first task used is not counted again.
  EXPECT_EQ(slurp(tmp.path() / "memory/cn/3.1/memory.max_usage_in_bytes"), "0");
  put(tmp.path() / "cpu,cpuacct/cn/3.1/cpuacct.stat", "user 300\nsystem 3\n");
  put(tmp.path() / "memory/cn/3.1/memory.max_usage_in_bytes", "1048576\n");
  GroupUsage u = iso.usage("3.1");
  ASSERT_TRUE(u.has_cpu);
  EXPECT_EQ(u.cpu_user_us, ticks_us(50));
  EXPECT_EQ(u.cpu_system_us, 0u);
  EXPECT_EQ(u.mem_peak_bytes, 1048576u);
  // Torn down as usual, its baseline goes with it: a new 3.1 starts from its own zero.
  EXPECT_TRUE(iso.reap_group("3.1"));
  ASSERT_TRUE(iso.create_group("3.1", limits));
  put(tmp.path() / "cpu,cpuacct/cn/3.1/cpuacct.stat", "user 7\nsystem 1\n");
  EXPECT_EQ(iso.usage("3.1").cpu_user_us, ticks_us(7));
}

TEST(IsolationFakeV1, OnlyAnEmptyGroupWithoutOomKillsIsKept) {
  TempDir tmp;
  make_fake_v1(tmp.path(), true, false, true, true);
  Isolation iso = Isolation::probe(tmp.path(), "cn", false, "");
  if (::geteuid() != 0) GTEST_SKIP() << "cgroups need root";
  const TaskLimits limits{.cpu_millis = 0, .mem_bytes = 8 << 20, .pids_max = 10};
  // The OOM counter is never reset by the kernel: a later task would read it as its own.
  ASSERT_TRUE(iso.create_group("4.0", limits));
  finished_fake_group(tmp.path(), "4.0", 1, 1);
  EXPECT_FALSE(iso.recycle_group("4.0", limits));
  EXPECT_TRUE(fs::exists(tmp.path() / "memory/cn/4.0"));
  // A process still listed.
  ASSERT_TRUE(iso.create_group("4.1", limits));
  finished_fake_group(tmp.path(), "4.1", 1, 0);
  put(tmp.path() / "memory/cn/4.1/cgroup.procs", std::to_string(::getpid()) + "\n");
  EXPECT_FALSE(iso.recycle_group("4.1", limits));
  EXPECT_TRUE(fs::exists(tmp.path() / "memory/cn/4.1"));
  // A list that cannot be read says nothing about who is left.
  ASSERT_TRUE(iso.create_group("4.2", limits));
  finished_fake_group(tmp.path(), "4.2", 1, 0);
  fs::remove(tmp.path() / "memory/cn/4.2/cgroup.procs");
  EXPECT_FALSE(iso.recycle_group("4.2", limits));
  EXPECT_EQ(iso.spares(), 0u);
  // Still charged with more than a little (page cache, tmpfs files): the next task would
  // pay for it against its limit. Here the limit is 8 MiB, so a sixteenth of it is the bar.
  ASSERT_TRUE(iso.create_group("4.5", limits));
  finished_fake_group(tmp.path(), "4.5", 1, 0);
  put(tmp.path() / "memory/cn/4.5/memory.usage_in_bytes", "524289\n");
  EXPECT_FALSE(iso.recycle_group("4.5", limits));
  TaskLimits unlimited = limits;
  unlimited.mem_bytes = 0;
  put(tmp.path() / "memory/cn/4.5/memory.usage_in_bytes",
      std::to_string(Isolation::kSpareLeftoverMax + 1) + "\n");
  EXPECT_FALSE(iso.recycle_group("4.5", unlimited));
  fs::remove(tmp.path() / "memory/cn/4.5/memory.usage_in_bytes");
  EXPECT_FALSE(iso.recycle_group("4.5", unlimited));
  EXPECT_TRUE(fs::exists(tmp.path() / "memory/cn/4.5"));
  EXPECT_EQ(iso.spares(), 0u);
  // Different limits never share a spare.
  ASSERT_TRUE(iso.create_group("4.3", limits));
  finished_fake_group(tmp.path(), "4.3", 1, 0);
  ASSERT_TRUE(iso.recycle_group("4.3", limits));
  TaskLimits other = limits;
  other.pids_max = 11;
  ASSERT_TRUE(iso.create_group("4.4", other));
  EXPECT_EQ(iso.spares(), 1u);
  EXPECT_EQ(slurp(tmp.path() / "pids/cn/4.4/pids.max"), "11");
}

TEST(IsolationFakeV1, SparesAreBoundedTheOldestMakesRoomAndAllGoAtARestart) {
  TempDir tmp;
  make_fake_v1(tmp.path(), true, false, true, true);
  Isolation iso = Isolation::probe(tmp.path(), "cn", false, "");
  if (::geteuid() != 0) GTEST_SKIP() << "cgroups need root";
  // The first is kept for limits no later task asks for; then kSparesMax others.
  const TaskLimits odd{.cpu_millis = 0, .mem_bytes = 0, .pids_max = 7};
  const TaskLimits usual{};
  ASSERT_TRUE(iso.create_group("5.0", odd));
  finished_fake_group(tmp.path(), "5.0", 1, 0);
  // All made first (a create_group would take the spare just kept), then all ended.
  for (uint32_t i = 1; i <= Isolation::kSparesMax; ++i) {
    std::string g = "5." + std::to_string(i);
    ASSERT_TRUE(iso.create_group(g, usual));
    finished_fake_group(tmp.path(), g, 1, 0);
  }
  ASSERT_TRUE(iso.recycle_group("5.0", odd));
  for (uint32_t i = 1; i <= Isolation::kSparesMax; ++i) {
    EXPECT_TRUE(iso.recycle_group("5." + std::to_string(i), usual)) << i;
  }
  EXPECT_EQ(iso.spares(), Isolation::kSparesMax);
  // The odd one made room: a task with its limits gets a new group, a usual one a spare.
  ASSERT_TRUE(iso.create_group("6.0", odd));
  EXPECT_EQ(iso.spares(), Isolation::kSparesMax);
  ASSERT_TRUE(iso.create_group("6.1", usual));
  EXPECT_EQ(iso.spares(), Isolation::kSparesMax - 1);
  // A restart's cleanup removes the spares like any group and forgets them; it counts
  // only task groups (its "killed N leftovers" line): 6.0 and 6.1.
  EXPECT_EQ(iso.destroy_all_groups(), 2u);
  EXPECT_EQ(iso.spares(), 0u);
}

TEST(IsolationFakeV2, KeepsNoSpares) {
  TempDir tmp;
  make_fake_v2(tmp.path(), "memory pids");
  Isolation iso = Isolation::probe(tmp.path(), "cn", false, "");
  if (::geteuid() != 0) GTEST_SKIP() << "cgroups need root";
  ASSERT_TRUE(iso.create_group("6.0", {}));
  put(tmp.path() / "cn/6.0/cgroup.procs", "");
  EXPECT_FALSE(iso.recycle_group("6.0", {}));
  EXPECT_TRUE(fs::exists(tmp.path() / "cn/6.0"));
}

TEST(IsolationRlimit, UsageHasNothing) {
  Isolation iso = Isolation::probe("/nonexistent", "cn", true, "");
  GroupUsage u = iso.usage("1.0");
  EXPECT_FALSE(u.has_cpu || u.has_mem);
  EXPECT_TRUE(iso.reap_group("1.0"));
}

// ---- where the parent group lives ----------------------------------------------------

constexpr const char* kService = "/system.slice/cardnode.service";
constexpr const char* kScope = "/user.slice/user-0.slice/session-3.scope";

// /proc/self/cgroup of a process on a v1 hybrid (Debian 12 legacy/hybrid layout).
void put_self_v1(const fs::path& file, const std::string& path) {
  put(file, "12:pids:" + path + "\n5:memory:" + path + "\n3:cpu,cpuacct:" + path +
                "\n2:devices:" + path + "\n1:name=systemd:" + path + "\n0::" + path + "\n");
}

TEST(IsolationFakeV1, ServiceCgroupHoldsTheGroups) {
  TempDir tmp;
  fs::path root = tmp.path() / "fs";
  fs::path svc_mem = root / "memory" / (kService + 1);
  fs::path svc_cpu = root / "cpu,cpuacct" / (kService + 1);
  fs::path svc_pids = root / "pids" / (kService + 1);
  put(root / "memory/cgroup.procs", "");
  put(root / "cpu,cpuacct/cgroup.procs", "");
  put(root / "pids/cgroup.procs", "");
  put(svc_mem / "cn/memory.limit_in_bytes", "9223372036854771712\n");
  put(svc_cpu / "cn/cpu.cfs_quota_us", "-1\n");
  put(svc_cpu / "cn/cpuacct.stat", "user 0\nsystem 0\n");
  put(svc_pids / "cn/pids.max", "max\n");
  put_self_v1(tmp.path() / "self", kService);
  Isolation iso = Isolation::probe(root, "cn", false, tmp.path() / "self");
  if (::geteuid() != 0) GTEST_SKIP() << "cgroups need root";
  ASSERT_EQ(iso.info().mode, IsolationMode::kCgroupV1);
  EXPECT_TRUE(iso.under_service());
  EXPECT_EQ(iso.parent_dirs(),
            (std::vector<std::string>{svc_mem / "cn", svc_cpu / "cn", svc_pids / "cn"}));
  auto procs = iso.create_group("7.0", {.cpu_millis = 0, .mem_bytes = 1 << 20, .pids_max = 9});
  ASSERT_TRUE(procs) << procs.error().describe();
  EXPECT_EQ(*procs, (std::vector<std::string>{svc_mem / "cn/7.0/cgroup.procs",
                                              svc_cpu / "cn/7.0/cgroup.procs",
                                              svc_pids / "cn/7.0/cgroup.procs"}));
  EXPECT_EQ(slurp(svc_mem / "cn/7.0/memory.limit_in_bytes"), "1048576");
  EXPECT_FALSE(fs::exists(root / "memory/cn"));
  // A restart finds the groups there.
  Isolation fresh = Isolation::probe(root, "cn", false, tmp.path() / "self");
  EXPECT_EQ(fresh.destroy_all_groups(), 1u);
}

TEST(IsolationFakeV1, ScopeOrForeignPathKeepsGroupsAtTheRoot) {
  // A login session, the root, a ".service" that is no directory here, and one outside
  // our cgroup namespace (whose "../.." does lead to a directory in this fake tree): all
  // at the root as before.
  for (std::string own : {std::string(kScope), std::string("/"), std::string(kService),
                          "/../.." + std::string(kService)}) {
    TempDir tmp;
    fs::path root = tmp.path() / "a/fs";
    make_fake_v1(root, true, false, true, true);
    fs::create_directories(root / "memory" / (kScope + 1));
    fs::create_directories(tmp.path() / "a" / (kService + 1));  // root/memory/../..
    put_self_v1(tmp.path() / "self", own);
    Isolation iso = Isolation::probe(root, "cn", false, tmp.path() / "self");
    if (::geteuid() != 0) GTEST_SKIP() << "cgroups need root";
    EXPECT_FALSE(iso.under_service()) << own;
    EXPECT_EQ(
        iso.parent_dirs(),
        (std::vector<std::string>{root / "memory/cn", root / "cpu,cpuacct/cn", root / "pids/cn"}))
        << own;
  }
}

// A v2 service cgroup as systemd hands it out with Delegate=yes.
fs::path make_fake_v2_service(const fs::path& root) {
  make_fake_v2(root, "cpuset cpu io memory pids\n");
  fs::path svc = root / (kService + 1);
  put(svc / "cgroup.controllers", "cpu memory pids\n");
  put(svc / "cgroup.subtree_control", "");
  put(svc / "cgroup.procs", "");
  return svc;
}

TEST(IsolationFakeV2, ServiceMovesItselfToALeafAndDelegates) {
  TempDir tmp;
  fs::path root = tmp.path() / "fs";
  fs::path svc = make_fake_v2_service(root);
  put(tmp.path() / "self", std::string("0::") + kService + "\n");
  Isolation iso = Isolation::probe(root, "cn", false, tmp.path() / "self");
  if (::geteuid() != 0) GTEST_SKIP() << "cgroups need root";
  ASSERT_EQ(iso.info().mode, IsolationMode::kCgroupV2);
  EXPECT_TRUE(iso.under_service());
  EXPECT_EQ(slurp(svc / "supervisor/cgroup.procs"), "0");
  std::set<std::string> want = {"+cpu", "+memory", "+pids"};
  EXPECT_EQ(words(slurp(svc / "cgroup.subtree_control")), want);
  EXPECT_EQ(words(slurp(svc / "cn/cgroup.subtree_control")), want);
  EXPECT_EQ(slurp(root / "cgroup.subtree_control"), "");  // systemd's, not touched
  EXPECT_EQ(iso.parent_dirs(), (std::vector<std::string>{svc / "cn"}));
  auto procs = iso.create_group("9.3", {.cpu_millis = 0, .mem_bytes = 1 << 20, .pids_max = 0});
  ASSERT_TRUE(procs);
  EXPECT_EQ(*procs, (std::vector<std::string>{svc / "cn/9.3/cgroup.procs"}));
  EXPECT_EQ(slurp(svc / "cn/9.3/memory.max"), "1048576");

  // Probing again from the leaf (a restart inside the same process) keeps the place.
  put(tmp.path() / "self", std::string("0::") + kService + "/supervisor\n");
  Isolation again = Isolation::probe(root, "cn", false, tmp.path() / "self");
  EXPECT_EQ(again.parent_dirs(), (std::vector<std::string>{svc / "cn"}));
  EXPECT_EQ(again.destroy_all_groups(), 1u);
}

TEST(IsolationFakeV2, ScopeKeepsGroupsAtTheRootAndMovesNothing) {
  TempDir tmp;
  fs::path root = tmp.path() / "fs";
  make_fake_v2_service(root);
  fs::path scope = root / (kScope + 1);
  put(scope / "cgroup.controllers", "cpu memory pids\n");
  put(tmp.path() / "self", std::string("0::") + kScope + "\n");
  Isolation iso = Isolation::probe(root, "cn", false, tmp.path() / "self");
  if (::geteuid() != 0) GTEST_SKIP() << "cgroups need root";
  EXPECT_FALSE(iso.under_service());
  EXPECT_EQ(iso.parent_dirs(), (std::vector<std::string>{root / "cn"}));
  EXPECT_FALSE(fs::exists(scope / "supervisor"));
  EXPECT_FALSE(fs::exists(scope / "cn"));
  EXPECT_EQ(words(slurp(root / "cgroup.subtree_control")),
            (std::set<std::string>{"+cpu", "+memory", "+pids"}));
}

TEST(IsolationFakeV2, ServiceWithoutDelegationFallsBackToTheRoot) {
  TempDir tmp;
  fs::path root = tmp.path() / "fs";
  fs::path svc = make_fake_v2_service(root);
  put(svc / "cgroup.controllers", "");  // Delegate= not set: no controller to hand out
  put(tmp.path() / "self", std::string("0::") + kService + "\n");
  Isolation iso = Isolation::probe(root, "cn", false, tmp.path() / "self");
  if (::geteuid() != 0) GTEST_SKIP() << "cgroups need root";
  ASSERT_EQ(iso.info().mode, IsolationMode::kCgroupV2);
  EXPECT_FALSE(iso.under_service());
  EXPECT_EQ(iso.parent_dirs(), (std::vector<std::string>{root / "cn"}));
  EXPECT_FALSE(fs::exists(svc / "supervisor"));  // nothing moved for nothing
}

// ---- the real cgroupfs of this machine ---------------------------------------------

class RealCgroups : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "cgroups need root";
    // Our own parent group: a cardnode server on this machine (or another test) keeps
    // its groups under "cardnode", which destroy_all_groups must not touch.
    name_ = "cardnode-isolation-test-" + std::to_string(::getpid());
    // No self-cgroup file: root placement, so the test process is never moved (a CI
    // runner is often a systemd service itself).
    iso_ = Isolation::probe("/sys/fs/cgroup", name_, false, "");
    if (iso_.info().mode == IsolationMode::kRlimit) GTEST_SKIP() << "no usable cgroups here";
  }
  void TearDown() override {
    iso_.destroy_all_groups();
    for (const char* h : {"", "memory", "cpu", "cpuacct", "cpu,cpuacct", "cpuacct,cpu", "pids"}) {
      fs::path p = fs::path("/sys/fs/cgroup") / h / name_;
      ::rmdir(p.c_str());
    }
  }
  std::string name_;
  Isolation iso_;
};

TEST_F(RealCgroups, ProbeMatchesTheMountedHierarchy) {
  bool v1_memory = fs::exists("/sys/fs/cgroup/memory/cgroup.procs");
  bool v2_root = fs::exists("/sys/fs/cgroup/cgroup.controllers");
  if (v2_root) {
    EXPECT_EQ(iso_.info().mode, IsolationMode::kCgroupV2);
  } else if (v1_memory) {
    // Debian 12 with the v1/v2 hybrid (this machine): all three v1 controllers.
    EXPECT_EQ(iso_.info().mode, IsolationMode::kCgroupV1);
    EXPECT_TRUE(has(iso_.info().enforced, "memory"));
    EXPECT_FALSE(iso_.memory_by_rlimit());
    if (fs::exists("/sys/fs/cgroup/pids/cgroup.procs")) {
      EXPECT_TRUE(has(iso_.info().enforced, "pids"));
    }
    if (fs::exists("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")) {
      EXPECT_TRUE(has(iso_.info().enforced, "cpu"));
    }
  }
  std::printf("isolation: %s, enforced:", isolation_name(iso_.info().mode));
  for (const auto& e : iso_.info().enforced) std::printf(" %s", e.c_str());
  std::printf("\n");
}

TEST_F(RealCgroups, KernelAcceptsTheLimits) {
  auto procs = iso_.create_group("7.0", {.cpu_millis = 250, .mem_bytes = 64 << 20, .pids_max = 32});
  ASSERT_TRUE(procs) << procs.error().describe();
  for (const std::string& p : *procs) EXPECT_TRUE(fs::exists(p)) << p;
  bool v2 = iso_.info().mode == IsolationMode::kCgroupV2;
  if (has(iso_.info().enforced, "pids")) {
    fs::path dir = fs::path(v2 ? "/sys/fs/cgroup" : "/sys/fs/cgroup/pids") / name_ / "7.0";
    EXPECT_EQ(slurp(dir / "pids.max"), "32\n");
  }
  if (!iso_.memory_by_rlimit()) {
    fs::path dir = fs::path(v2 ? "/sys/fs/cgroup" : "/sys/fs/cgroup/memory") / name_ / "7.0";
    EXPECT_EQ(slurp(dir / (v2 ? "memory.max" : "memory.limit_in_bytes")), "67108864\n");
  }
  iso_.destroy_group("7.0");
  for (const std::string& p : *procs) EXPECT_FALSE(fs::exists(fs::path(p).parent_path())) << p;
  iso_.destroy_group("7.0");  // again: a group that does not exist is fine
}

// The server's loop gets SIGCHLD all the time, and cgroup v1 answers a limit write
// with EINTR whenever a signal is pending: a group must still be made, every time.
// (Seen in CI: "write .../memory.limit_in_bytes: Interrupted system call" failed a task.)
TEST_F(RealCgroups, LimitsAreWrittenWhileSignalsKeepArriving) {
  struct sigaction sa {};
  sa.sa_handler = [](int) {};
  sa.sa_flags = 0;  // no SA_RESTART: the write sees EINTR, as libuv's handlers allow
  struct sigaction old {};
  ASSERT_EQ(::sigaction(SIGUSR2, &sa, &old), 0);
  std::atomic<bool> stop{false};
  pthread_t target = ::pthread_self();
  std::thread storm([&] {
    while (!stop.load()) {
      ::pthread_kill(target, SIGUSR2);
      std::this_thread::yield();
    }
  });
  int failures = 0;
  std::string first_error;
  for (int i = 0; i < 300; ++i) {
    std::string name = "21." + std::to_string(i);
    auto procs =
        iso_.create_group(name, {.cpu_millis = 250, .mem_bytes = 64 << 20, .pids_max = 32});
    if (!procs) {
      if (failures++ == 0) first_error = procs.error().describe();
    }
    iso_.destroy_group(name);
  }
  stop = true;
  storm.join();
  ::sigaction(SIGUSR2, &old, nullptr);
  EXPECT_EQ(failures, 0) << first_error;
}

// waitpid, polling up to `deadline`: the status, or nullopt if `pid` is still alive (a
// failing test must not hang).
std::optional<int> wait_status(pid_t pid, std::chrono::milliseconds deadline) {
  auto until = std::chrono::steady_clock::now() + deadline;
  while (std::chrono::steady_clock::now() < until) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) return status;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return std::nullopt;
}

// The signal that ended child `pid`, waiting up to 10 s; 0 if it exited or is still alive
// (then it is killed, so a failing test neither hangs nor leaks it).
int death_signal(pid_t pid) {
  std::optional<int> status = wait_status(pid, std::chrono::seconds(10));
  if (!status) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    return 0;
  }
  return WIFSIGNALED(*status) ? WTERMSIG(*status) : 0;
}

pid_t spawn_sleep_into(const std::vector<std::string>& procs) {
  pid_t pid = ::fork();
  if (pid == 0) {
    ::execlp("sleep", "sleep", "100", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  for (const std::string& p : procs) std::ofstream(p) << pid;
  return pid;
}

TEST_F(RealCgroups, DestroyAllGroupsKillsLeftovers) {
  auto a = iso_.create_group("11.0", {.cpu_millis = 0, .mem_bytes = 0, .pids_max = 16});
  auto b = iso_.create_group("11.1", {.cpu_millis = 0, .mem_bytes = 0, .pids_max = 16});
  ASSERT_TRUE(a && b);
  pid_t pa = spawn_sleep_into(*a);
  pid_t pb = spawn_sleep_into(*b);
  ASSERT_GT(pa, 0);
  ASSERT_GT(pb, 0);
  EXPECT_NE(slurp((*a)[0]).find(std::to_string(pa)), std::string::npos);

  // A restarted server has a fresh Isolation: it finds the groups on disk.
  Isolation fresh = Isolation::probe("/sys/fs/cgroup", name_, false, "");
  EXPECT_EQ(fresh.destroy_all_groups(), 2u);
  for (pid_t p : {pa, pb}) EXPECT_EQ(death_signal(p), SIGKILL) << p;
  for (const std::string& p : *a) EXPECT_FALSE(fs::exists(fs::path(p).parent_path())) << p;
  EXPECT_EQ(fresh.destroy_all_groups(), 0u);
}

TEST_F(RealCgroups, DestroyParentRemovesEverything) {
  auto g = iso_.create_group("13.0", {});
  ASSERT_TRUE(g);
  pid_t p = spawn_sleep_into(*g);
  iso_.destroy_parent();
  EXPECT_EQ(death_signal(p), SIGKILL);
  for (const std::string& procs : *g) {
    EXPECT_FALSE(fs::exists(fs::path(procs).parent_path().parent_path())) << procs;
  }
  EXPECT_EQ(iso_.info().mode, IsolationMode::kRlimit);
}

// An idle server's parent group holds nothing, so anyone may rmdir it (a cleanup script,
// an admin); the next task must still get its group and its limits.
TEST_F(RealCgroups, AParentRemovedFromOutsideIsMadeAgain) {
  auto first = iso_.create_group("14.0", {});
  ASSERT_TRUE(first);
  iso_.destroy_group("14.0");
  for (const std::string& procs : *first) {
    fs::path parent = fs::path(procs).parent_path().parent_path();
    ASSERT_EQ(::rmdir(parent.c_str()), 0) << parent << ": " << std::strerror(errno);
  }
  auto again = iso_.create_group("14.1", {.cpu_millis = 500, .mem_bytes = 32 << 20, .pids_max = 8});
  ASSERT_TRUE(again) << again.error().describe();
  EXPECT_EQ(again->size(), first->size());
  if (has(iso_.info().enforced, "pids")) {
    bool v2 = iso_.info().mode == IsolationMode::kCgroupV2;
    fs::path dir = fs::path(v2 ? "/sys/fs/cgroup" : "/sys/fs/cgroup/pids") / name_ / "14.1";
    EXPECT_EQ(slurp(dir / "pids.max"), "8\n");
  }
  pid_t p = spawn_sleep_into(*again);
  ASSERT_GT(p, 0);
  EXPECT_NE(slurp((*again)[0]).find(std::to_string(p)), std::string::npos);
  iso_.signal_group("14.1", SIGKILL);
  EXPECT_EQ(death_signal(p), SIGKILL);
}

TEST_F(RealCgroups, SignalGroupReachesEveryMember) {
  auto g = iso_.create_group("12.0", {});
  ASSERT_TRUE(g);
  pid_t p = spawn_sleep_into(*g);
  iso_.signal_group("12.0", SIGTERM);
  EXPECT_EQ(death_signal(p), SIGTERM);
  iso_.destroy_group("12.0");
}

// A parent and `n` grandchildren, all in the group: the parent joins before it forks.
struct Tree {
  pid_t child = -1;
  std::vector<pid_t> grandchildren;
};

// SIGKILLs what is left of `pids` at the end of a test, so a failing one leaks nothing.
struct KillAtExit {
  std::vector<pid_t> pids;
  ~KillAtExit() {
    for (pid_t p : pids) {
      if (p > 0) ::kill(p, SIGKILL);
    }
  }
};

Tree spawn_tree_into(const std::vector<std::string>& procs, int n) {
  int go[2], report[2];
  CARDNODE_CHECK(::pipe(go) == 0 && ::pipe(report) == 0);
  Tree t;
  t.child = ::fork();
  if (t.child == 0) {
    char c = 0;
    if (::read(go[0], &c, 1) != 1) ::_exit(1);
    for (int i = 0; i < n; ++i) {
      pid_t g = ::fork();
      if (g == 0) {
        for (;;) ::pause();
      }
      (void)!::write(report[1], &g, sizeof g);
    }
    for (;;) ::pause();
  }
  ::close(go[0]);
  ::close(report[1]);
  for (const std::string& p : procs) std::ofstream(p) << t.child;
  (void)!::write(go[1], "x", 1);
  for (int i = 0; i < n; ++i) {
    pid_t g = -1;
    if (::read(report[0], &g, sizeof g) != sizeof g) break;
    t.grandchildren.push_back(g);
  }
  ::close(go[1]);
  ::close(report[0]);
  return t;
}

// Grandchildren are reparented to us when their parent dies, so we can see how they died.
class Subreaper {
 public:
  Subreaper() {
    ::prctl(PR_GET_CHILD_SUBREAPER, &was_);
    ok_ = ::prctl(PR_SET_CHILD_SUBREAPER, 1) == 0;
  }
  ~Subreaper() { ::prctl(PR_SET_CHILD_SUBREAPER, was_); }
  bool ok() const { return ok_; }

 private:
  int was_ = 0;
  bool ok_ = false;
};

TEST_F(RealCgroups, ReapGroupKillsATreeAndRemovesTheGroup) {
  Subreaper subreaper;
  if (!subreaper.ok()) GTEST_SKIP() << "no PR_SET_CHILD_SUBREAPER here (qemu-user)";
  auto procs = iso_.create_group("15.0", {.cpu_millis = 0, .mem_bytes = 0, .pids_max = 32});
  ASSERT_TRUE(procs) << procs.error().describe();
  Tree tree = spawn_tree_into(*procs, 3);
  KillAtExit leftovers{tree.grandchildren};
  leftovers.pids.push_back(tree.child);
  ASSERT_GT(tree.child, 0);
  ASSERT_EQ(tree.grandchildren.size(), 3u);
  for (const std::string& p : *procs) {
    std::set<std::string> listed = words(slurp(p));
    EXPECT_TRUE(listed.contains(std::to_string(tree.child))) << p;
    for (pid_t g : tree.grandchildren) EXPECT_TRUE(listed.contains(std::to_string(g))) << p;
  }

  // One round. v1 sends SIGKILL to the pids it read, alive then, so the group is not gone
  // yet. v2's cgroup.kill may have finished them before the round reads cgroup.procs and
  // removes the empty group (seen in the arm64 guest), so there either answer is right.
  bool first = iso_.reap_group("15.0");
  if (iso_.info().mode != IsolationMode::kCgroupV2) {
    EXPECT_FALSE(first);
  }

  bool gone = first;
  int rounds = 1;
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!gone && std::chrono::steady_clock::now() < until) {
    gone = iso_.reap_group("15.0");
    ++rounds;
    if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_TRUE(gone) << "after " << rounds << " rounds";
  for (const std::string& p : *procs) EXPECT_FALSE(fs::exists(fs::path(p).parent_path())) << p;
  std::vector<pid_t> all = tree.grandchildren;
  all.push_back(tree.child);
  for (pid_t p : all) {
    EXPECT_EQ(death_signal(p), SIGKILL) << "pid " << p;
  }
  EXPECT_TRUE(iso_.reap_group("15.0"));  // gone stays gone
}

// rmdir answers EBUSY for a group with a child group (a task that made its own) even
// with no process left: not gone, the caller tries again.
TEST_F(RealCgroups, ReapGroupIsFalseWhileRmdirSaysBusy) {
  auto procs = iso_.create_group("18.0", {});
  ASSERT_TRUE(procs) << procs.error().describe();
  fs::path group = fs::path(procs->front()).parent_path();
  ASSERT_TRUE(fs::create_directory(group / "sub"));
  EXPECT_FALSE(iso_.reap_group("18.0"));
  EXPECT_FALSE(iso_.reap_group("18.0"));
  EXPECT_TRUE(fs::exists(group));
  ASSERT_EQ(::rmdir((group / "sub").c_str()), 0);
  EXPECT_TRUE(iso_.reap_group("18.0"));
  for (const std::string& p : *procs) EXPECT_FALSE(fs::exists(fs::path(p).parent_path())) << p;
}

// Runs, in the group whose cgroup.procs files are `procs`, a child that touches
// `touch_bytes` of memory, burns `cpu_ms` of CPU and, with a `file`, writes `touch_bytes`
// into it; true once it exited 0.
::testing::AssertionResult run_in_group(const std::vector<std::string>& procs, size_t touch_bytes,
                                        int cpu_ms, const char* file = nullptr) {
  int go[2];
  if (::pipe(go) != 0) return ::testing::AssertionFailure() << "pipe";
  pid_t pid = ::fork();
  if (pid == 0) {
    char c = 0;
    if (::read(go[0], &c, 1) != 1) ::_exit(1);
    // Only async-signal-safe calls after fork: mmap, not malloc.
    if (touch_bytes > 0) {
      void* mem =
          ::mmap(nullptr, touch_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (mem == MAP_FAILED) ::_exit(2);
      std::memset(mem, 1, touch_bytes);
      if (file != nullptr) {
        int fd = ::open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0 || ::write(fd, mem, touch_bytes) != static_cast<ssize_t>(touch_bytes)) {
          ::_exit(4);
        }
        ::close(fd);
      }
    }
    // CPU in user space, bounded by 30 s of wall time on a starved machine.
    struct timespec start {
    }, now{}, cpu{};
    ::clock_gettime(CLOCK_MONOTONIC, &start);
    volatile uint64_t x = 0;
    while (cpu_ms > 0) {
      for (int i = 0; i < 100000; ++i) x = x + i;
      ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu);
      ::clock_gettime(CLOCK_MONOTONIC, &now);
      if (cpu.tv_sec * 1000 + cpu.tv_nsec / 1000000 >= cpu_ms) break;
      if (now.tv_sec - start.tv_sec > 30) ::_exit(3);
    }
    ::_exit(0);
  }
  ::close(go[0]);
  if (pid < 0) return ::testing::AssertionFailure() << "fork";
  for (const std::string& p : procs) std::ofstream(p) << pid;
  for (const std::string& p : procs) {
    if (!words(slurp(p)).contains(std::to_string(pid))) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
      return ::testing::AssertionFailure() << "not in " << p;
    }
  }
  bool sent = ::write(go[1], "x", 1) == 1;
  ::close(go[1]);
  std::optional<int> status = sent ? wait_status(pid, std::chrono::seconds(60)) : std::nullopt;
  if (!status) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    return ::testing::AssertionFailure() << "the child did not finish";
  }
  if (!WIFEXITED(*status) || WEXITSTATUS(*status) != 0) {
    return ::testing::AssertionFailure() << "status " << *status;
  }
  return ::testing::AssertionSuccess();
}

TEST_F(RealCgroups, UsageCountsCpuAndPeakMemory) {
  constexpr size_t kTouchBytes = 20u << 20;
  auto procs = iso_.create_group("16.0", {});
  ASSERT_TRUE(procs) << procs.error().describe();
  ASSERT_TRUE(run_in_group(*procs, kTouchBytes, 200));  // ~0.2 s of CPU

  GroupUsage u = iso_.usage("16.0");
  bool v2 = iso_.info().mode == IsolationMode::kCgroupV2;
  bool cpuacct = v2 || fs::exists("/sys/fs/cgroup/cpuacct/cpuacct.stat");
  if (cpuacct) {
    EXPECT_TRUE(u.has_cpu);
    EXPECT_GT(u.cpu_user_us, 0u);
    EXPECT_GE(u.cpu_user_us + u.cpu_system_us, 100000u);  // 0.2 s burnt; ticks are coarse
  }
  bool peak = !v2 || fs::exists(fs::path(iso_.parent_dirs()[0]) / "memory.peak");  // 5.19+
  if (!iso_.memory_by_rlimit() && peak) {
    EXPECT_TRUE(u.has_mem);
    EXPECT_GE(u.mem_peak_bytes, kTouchBytes);
  }
  std::printf("usage: user %llu us, system %llu us, peak %llu bytes\n",
              static_cast<unsigned long long>(u.cpu_user_us),
              static_cast<unsigned long long>(u.cpu_system_us),
              static_cast<unsigned long long>(u.mem_peak_bytes));
  iso_.destroy_group("16.0");
}

// The spare path on the real cgroupfs: the next task in a kept group reports its own
// usage, not the sum with the task before it; v2 keeps nothing.
TEST_F(RealCgroups, ATaskInASpareGroupReportsOnlyItsOwnUsage) {
  constexpr size_t kTouchBytes = 20u << 20;
  const TaskLimits limits{.cpu_millis = 0, .mem_bytes = 256u << 20, .pids_max = 64};
  auto first = iso_.create_group("17.0", limits);
  ASSERT_TRUE(first) << first.error().describe();
  ASSERT_TRUE(run_in_group(*first, kTouchBytes, 300));
  GroupUsage u0 = iso_.usage("17.0");
  if (iso_.info().mode != IsolationMode::kCgroupV1) {
    EXPECT_FALSE(iso_.recycle_group("17.0", limits));
    EXPECT_TRUE(iso_.reap_group("17.0"));
    return;
  }
  ASSERT_TRUE(iso_.recycle_group("17.0", limits));
  EXPECT_EQ(iso_.spares(), 1u);
  for (const std::string& parent : iso_.parent_dirs()) {
    EXPECT_FALSE(fs::exists(fs::path(parent) / "17.0")) << parent;
  }
  auto second = iso_.create_group("17.1", limits);
  ASSERT_TRUE(second) << second.error().describe();
  EXPECT_EQ(iso_.spares(), 0u);
  ASSERT_TRUE(run_in_group(*second, 0, 0));
  GroupUsage u1 = iso_.usage("17.1");
  if (u0.has_cpu) {
    ASSERT_TRUE(u1.has_cpu);
    EXPECT_GE(u0.cpu_user_us + u0.cpu_system_us, 150000u);
    EXPECT_LT(u1.cpu_user_us + u1.cpu_system_us, 100000u);  // not the first task's 0.3 s
  }
  if (u0.has_mem) {
    ASSERT_TRUE(u1.has_mem);
    EXPECT_GE(u0.mem_peak_bytes, kTouchBytes);
    EXPECT_LT(u1.mem_peak_bytes, kTouchBytes);  // the peak restarted
  }
  // The limits went with the group: the kernel still enforces them.
  uint32_t limited = 0;
  for (const std::string& parent : iso_.parent_dirs()) {
    fs::path file = fs::path(parent) / "17.1/memory.limit_in_bytes";
    if (!fs::exists(file)) continue;
    EXPECT_EQ(slurp(file), std::to_string(256u << 20) + "\n");
    ++limited;
  }
  EXPECT_EQ(limited, iso_.memory_by_rlimit() ? 0u : 1u);
  // Kept again, a restart's cleanup removes it in every hierarchy without counting it.
  ASSERT_TRUE(iso_.recycle_group("17.1", limits));
  EXPECT_EQ(iso_.destroy_all_groups(), 0u);
  for (const std::string& parent : iso_.parent_dirs()) {
    for (const auto& e : fs::directory_iterator(parent)) {
      EXPECT_FALSE(e.is_directory()) << e.path();
    }
  }
}

// What a task leaves charged to its group (here a tmpfs file, which nothing reclaims
// without swap) would count against the next task's limit: such a group is not kept.
TEST_F(RealCgroups, AGroupStillChargedWithATasksFilesIsNotKept) {
  if (iso_.info().mode != IsolationMode::kCgroupV1 || iso_.memory_by_rlimit()) {
    GTEST_SKIP() << "spares are kept on v1 with a memory controller only";
  }
  if (!fs::is_directory("/dev/shm")) GTEST_SKIP() << "no /dev/shm";
  const std::string file = "/dev/shm/cardnode-isolation-test-" + std::to_string(::getpid());
  const TaskLimits limits{.cpu_millis = 0, .mem_bytes = 0, .pids_max = 64};
  auto procs = iso_.create_group("18.0", limits);
  ASSERT_TRUE(procs) << procs.error().describe();
  struct Unlink {
    const std::string& path;
    ~Unlink() { ::unlink(path.c_str()); }
  } unlink_file{file};
  ASSERT_TRUE(run_in_group(*procs, 4u << 20, 0, file.c_str()));
  EXPECT_FALSE(iso_.recycle_group("18.0", limits));
  EXPECT_EQ(iso_.spares(), 0u);
  EXPECT_TRUE(iso_.reap_group("18.0"));
}

// The delegated placement on the real v1 cgroupfs, with a fake self-cgroup file naming
// a ".service" cgroup this test makes in every hierarchy (nothing is moved: on v1 the
// parent just goes below it). On v2 the probe would move this process: skipped.
TEST_F(RealCgroups, ServiceCgroupOnV1HoldsTheGroups) {
  if (iso_.info().mode != IsolationMode::kCgroupV1) GTEST_SKIP() << "v1 only";
  std::string unit = "/" + name_ + ".service";
  TempDir tmp;
  // Undoes what the test made even when an assertion ends it early.
  struct Cleanup {
    fs::path self;
    std::vector<fs::path> made;
    ~Cleanup() {
      Isolation::probe("/sys/fs/cgroup", "cn", false, self).destroy_parent();
      for (const fs::path& d : made) ::rmdir(d.c_str());
    }
  } cleanup{tmp.path() / "self", {}};
  std::vector<fs::path>& made = cleanup.made;
  std::string self;
  int id = 1;
  for (const char* h : {"memory", "cpu", "cpuacct", "cpu,cpuacct", "pids"}) {
    fs::path hier = fs::path("/sys/fs/cgroup") / h;
    if (fs::is_symlink(hier) || !fs::exists(hier / "cgroup.procs")) continue;
    fs::path dir = hier / unit.substr(1);
    ASSERT_TRUE(fs::create_directory(dir)) << dir;
    made.push_back(dir);
    self += std::to_string(id++) + ":" + h + ":" + unit + "\n";
  }
  put(tmp.path() / "self", self + "0::/\n");
  {
    Isolation iso = Isolation::probe("/sys/fs/cgroup", "cn", false, tmp.path() / "self");
    EXPECT_TRUE(iso.under_service());
    for (const std::string& d : iso.parent_dirs()) {
      EXPECT_NE(d.find(unit + "/cn"), std::string::npos) << d;
    }
    auto procs =
        iso.create_group("17.0", {.cpu_millis = 250, .mem_bytes = 64 << 20, .pids_max = 8});
    ASSERT_TRUE(procs) << procs.error().describe();
    pid_t p = spawn_sleep_into(*procs);
    ASSERT_GT(p, 0);
    Isolation fresh = Isolation::probe("/sys/fs/cgroup", "cn", false, tmp.path() / "self");
    EXPECT_EQ(fresh.destroy_all_groups(), 1u);
    EXPECT_EQ(death_signal(p), SIGKILL);
    fresh.destroy_parent();
  }
  for (const fs::path& d : made) {
    EXPECT_EQ(::rmdir(d.c_str()), 0) << d << ": " << std::strerror(errno);
  }
  made.clear();
}

}  // namespace
}  // namespace cardnode::runtime

namespace cardnode::runtime {
namespace {

// What adopted_children() rests on: a subreaper's orphan is handed to its main thread,
// even when its parent was a child of another thread. A thread forks a child, the child
// forks a grandchild and exits; the grandchild is then listed among the main thread's
// children (and the thread's child never was).
TEST(AdoptedChildren, AnOrphanGoesToTheMainThreadWhicheverThreadMadeItsParent) {
  if (::access(("/proc/self/task/" + std::to_string(::getpid()) + "/children").c_str(), R_OK) !=
      0) {
    GTEST_SKIP() << "no /proc/PID/task/TID/children here";
  }
  int subreaper = 0;  // as it was, to restore; qemu-user cannot report it (then 0)
  if (::prctl(PR_GET_CHILD_SUBREAPER, &subreaper, 0, 0, 0) != 0) subreaper = 0;
  if (::prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) {
    GTEST_SKIP() << "no PR_SET_CHILD_SUBREAPER here (the executor then scans /proc)";
  }
  int pipe_fds[2];
  ASSERT_EQ(::pipe2(pipe_fds, O_CLOEXEC), 0);
  pid_t parent = -1;
  std::thread maker([&] {
    parent = ::fork();
    if (parent == 0) {
      pid_t grandchild = ::fork();
      if (grandchild == 0) {
        ::close(pipe_fds[0]);
        ::pause();  // until the test kills it
        ::_exit(0);
      }
      (void)!::write(pipe_fds[1], &grandchild, sizeof grandchild);
      ::_exit(0);  // the grandchild is orphaned now
    }
    int status = 0;
    ::waitpid(parent, &status, 0);  // this thread's child: reaped by this thread
  });
  maker.join();
  ::close(pipe_fds[1]);
  pid_t orphan = 0;
  ASSERT_EQ(::read(pipe_fds[0], &orphan, sizeof orphan), static_cast<ssize_t>(sizeof orphan));
  ::close(pipe_fds[0]);
  const std::vector<int32_t> adopted = adopted_children(4096);
  EXPECT_NE(std::find(adopted.begin(), adopted.end(), orphan), adopted.end());
  EXPECT_EQ(std::find(adopted.begin(), adopted.end(), parent), adopted.end());
  ::kill(orphan, SIGKILL);
  int status = 0;
  EXPECT_EQ(::waitpid(orphan, &status, 0), orphan);  // ours to reap: we adopted it
  ::prctl(PR_SET_CHILD_SUBREAPER, subreaper, 0, 0, 0);
}

}  // namespace
}  // namespace cardnode::runtime
