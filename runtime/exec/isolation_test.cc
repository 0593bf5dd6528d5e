// Isolation against fake cgroup trees (plain files under a temp dir: parsing, the files
// written, OOM detection) and against the real /sys/fs/cgroup of this machine (skipped
// when not root or when the machine offers no cgroups).
#include "runtime/exec/isolation.h"

#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

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
  EXPECT_EQ(slurp(tmp.path() / "cpu,cpuacct/cn/7.0/cpu.cfs_period_us"), "100000");
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
  for (Isolation iso : {Isolation::probe(tmp.path(), "cn", /*disable_cgroups=*/true),
                        Isolation::probe(tmp.path() / "nothing-here", "cn")}) {
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

// ---- the real cgroupfs of this machine ---------------------------------------------

class RealCgroups : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "cgroups need root";
    // Our own parent group: a cardnode server on this machine (or another test) keeps
    // its groups under "cardnode", which destroy_all_groups must not touch.
    name_ = "cardnode-isolation-test-" + std::to_string(::getpid());
    iso_ = Isolation::probe("/sys/fs/cgroup", name_);
    if (iso_.info().mode == IsolationMode::kRlimit) GTEST_SKIP() << "no usable cgroups here";
  }
  void TearDown() override {
    iso_.destroy_all_groups();
    for (const char* h : {"", "memory", "cpu", "cpu,cpuacct", "cpuacct,cpu", "pids"}) {
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
    auto procs = iso_.create_group(name, {.cpu_millis = 250, .mem_bytes = 64 << 20, .pids_max = 32});
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
  Isolation fresh = Isolation::probe("/sys/fs/cgroup", name_);
  EXPECT_EQ(fresh.destroy_all_groups(), 2u);
  for (pid_t p : {pa, pb}) {
    int status = 0;
    ASSERT_EQ(::waitpid(p, &status, 0), p);
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  }
  for (const std::string& p : *a) EXPECT_FALSE(fs::exists(fs::path(p).parent_path())) << p;
  EXPECT_EQ(fresh.destroy_all_groups(), 0u);
}

TEST_F(RealCgroups, DestroyParentRemovesEverything) {
  auto g = iso_.create_group("13.0", {});
  ASSERT_TRUE(g);
  pid_t p = spawn_sleep_into(*g);
  iso_.destroy_parent();
  int status = 0;
  ASSERT_EQ(::waitpid(p, &status, 0), p);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  for (const std::string& procs : *g) {
    EXPECT_FALSE(fs::exists(fs::path(procs).parent_path().parent_path())) << procs;
  }
  EXPECT_EQ(iso_.info().mode, IsolationMode::kRlimit);
}

TEST_F(RealCgroups, SignalGroupReachesEveryMember) {
  auto g = iso_.create_group("12.0", {});
  ASSERT_TRUE(g);
  pid_t p = spawn_sleep_into(*g);
  iso_.signal_group("12.0", SIGTERM);
  int status = 0;
  ASSERT_EQ(::waitpid(p, &status, 0), p);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM);
  iso_.destroy_group("12.0");
}

}  // namespace
}  // namespace cardnode::runtime
