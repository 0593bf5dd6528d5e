// Least privilege end to end (Guarantee 7), exec failures and per-task accounting, through
// the real binary: a server as root runs tasks as its task user, never as root unless it
// was started with --allow-root-tasks, and says so in `nodes`.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <pwd.h>
#include <sys/file.h>
#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "runtime/exec/cgroup_mode.h"
#include "tests/e2e_util.h"

namespace cardnode::e2e {
namespace {

using nlohmann::json;

// The cgroup2 mount's superblock options; empty without one.
std::string cgroup2_options() {
  std::ifstream in("/proc/self/mountinfo");
  std::stringstream ss;
  ss << in.rdbuf();
  for (const runtime::MountEntry& m : runtime::parse_mountinfo(ss.str())) {
    if (m.fs_type == "cgroup2") return m.super_options;
  }
  return {};
}

// The uid `resolve_task_users` picks by default: cardnode-task, else nobody.
uid_t default_task_uid() {
  for (const char* name : {"cardnode-task", "nobody"}) {
    if (const struct passwd* pw = ::getpwnam(name)) return pw->pw_uid;  // NOLINT: one thread
  }
  return 0;
}

class Privilege : public Cluster {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "switching users needs root";
    Cluster::SetUp();
  }
  // The task's stdout once it ended, as `logs` reads it.
  std::string task_out(const std::string& task) { return cli({"logs", task}).out; }
};

TEST_F(Privilege, AsRootTasksRunAsTheTaskUserAndCannotReadTheToken) {
  start_server();
  // run --wait shows a one-task job's output once it ended; `logs` has it too.
  Output id = cli({"run", "--wait", "--", "id", "-u"});
  ASSERT_EQ(id.code, 0) << id.err;
  EXPECT_EQ(id.out, std::to_string(default_task_uid()) + "\n");
  EXPECT_EQ(task_out("1"), std::to_string(default_task_uid()) + "\n");
  EXPECT_NE(default_task_uid(), 0u);
  // No supplementary groups, no way back up through a setuid binary.
  ASSERT_EQ(
      cli({"run", "--wait", "--", "grep", "-E", "^(Groups|NoNewPrivs):", "/proc/self/status"}).code,
      0);
  EXPECT_EQ(task_out("2"), "Groups:\t \nNoNewPrivs:\t1\n");
  // The token and the data dir are the server's alone.
  Output cat = cli({"run", "--wait", "--", "cat", data_ + "/token"});
  EXPECT_EQ(cat.code, 1);
  EXPECT_NE(cli({"logs", "3", "--stderr"}).out.find("Permission denied"), std::string::npos);
  Output ls = cli({"run", "--wait", "--", "ls", data_ + "/wal"});
  EXPECT_NE(ls.code, 0);
  // `nodes` names the task user and says root is not allowed.
  json nodes = json::parse(cli({"nodes", "--json"}).out);
  EXPECT_EQ(nodes["nodes"][0]["root_tasks"], false);
  EXPECT_FALSE(nodes["nodes"][0]["task_user"].get<std::string>().empty());
  EXPECT_EQ(cli({"nodes"}).out.find("root"), std::string::npos);
}

TEST_F(Privilege, RootTasksNeedAllowRootTasksAndShowInNodes) {
  // --task-user root alone is refused before anything starts.
  Output refused = server_refuses({"--task-user", "root"});
  EXPECT_EQ(refused.code, 2);
  EXPECT_NE(refused.err.find("--allow-root-tasks"), std::string::npos) << refused.err;
  EXPECT_FALSE(fs::exists(data_)) << "a refused start made the data dir";
  start_server({"--allow-root-tasks"});
  Output id = cli({"run", "--wait", "--", "id", "-u"});
  ASSERT_EQ(id.code, 0) << id.err;
  EXPECT_EQ(id.out, "0\n");
  EXPECT_EQ(task_out("1"), "0\n");
  json nodes = json::parse(cli({"nodes", "--json"}).out);
  EXPECT_EQ(nodes["nodes"][0]["root_tasks"], true);
  EXPECT_NE(cli({"nodes"}).out.find("warning: tasks may run as root"), std::string::npos);
}

// As root with cgroups, the server turns on cgroup2's favordynmods (or finds it on) and
// logs it; --no-favordynmods leaves the mount alone and logs nothing about it.
TEST_F(Privilege, TheServerTurnsOnFavordynmodsUnlessToldNot) {
  const std::string log = root_ + "/server.log";
  // Not at once with the unit test that switches the flag (runtime/exec/cgroup_mode.h).
  int lock = ::open(runtime::kCgroup2FlagLock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock >= 0) (void)::flock(lock, LOCK_EX);
  struct Unlock {
    int fd;
    ~Unlock() {
      if (fd >= 0) ::close(fd);
    }
  } unlock{lock};
  // The host is left as it was found (the option is a host-wide setting).
  struct Restore {
    bool was_on = runtime::has_mount_option(cgroup2_options(), "favordynmods");
    ~Restore() {
      if (!was_on) (void)runtime::set_favor_dynamic_moves(false);
    }
  } restore;
  start_server({"--no-favordynmods"});
  ASSERT_TRUE(eventually([&] { return slurp(log).find("isolation: ") != std::string::npos; }));
  if (slurp(log).find("isolation: rlimit") != std::string::npos)
    GTEST_SKIP() << "no cgroups here: nothing to switch";
  ASSERT_EQ(cli({"run", "--wait", "--", "true"}).code, 0);
  EXPECT_EQ(slurp(log).find("favordynmods"), std::string::npos) << slurp(log);
  ASSERT_EQ(stop_server(SIGTERM), 0);

  favor_dynmods_ = true;
  start_server();
  ASSERT_EQ(cli({"run", "--wait", "--", "true"}).code, 0);
  std::string text = slurp(log);
  size_t at = text.find("favordynmods: ");
  ASSERT_NE(at, std::string::npos) << text;
  std::string line = text.substr(at, text.find('\n', at) - at);
  if (line.find("not supported") != std::string::npos ||
      line.find("not permitted") != std::string::npos ||
      line.find("no cgroup2") != std::string::npos ||
      line.find("not taken by the kernel") != std::string::npos)
    GTEST_SKIP() << line;
  EXPECT_NE(line.find(restore.was_on ? "already on" : "turned on"), std::string::npos) << line;
  EXPECT_TRUE(runtime::has_mount_option(cgroup2_options(), "favordynmods")) << cgroup2_options();
}

TEST_F(Privilege, AJobNamesAUserOnlyFromTheAllowList) {
  start_server({"--task-user", "nobody", "--allow-task-user", "daemon"});
  ASSERT_EQ(cli({"run", "--wait", "--user", "daemon", "--", "id", "-un"}).code, 0);
  EXPECT_EQ(task_out("1"), "daemon\n");
  // Not on the list: the task fails with the reason in its log; nothing runs.
  EXPECT_NE(cli({"run", "--wait", "--user", "root", "--", "id", "-un"}).code, 0);
  EXPECT_NE(cli({"logs", "2", "--stderr"}).out.find("--allow-task-user"), std::string::npos);
  EXPECT_EQ(task_out("2"), "");
  // A name that is no user name is the client's usage error.
  Output bad = cli({"run", "--user", "../etc", "--", "true"});
  EXPECT_EQ(bad.code, 2);
}

TEST_F(Privilege, ExecFailuresEndWith127Or126AndTheReasonIsLogged) {
  start_server();
  EXPECT_EQ(cli({"run", "--wait", "--", "/nonexistent/cmd"}).code, 127);
  EXPECT_EQ(cli({"logs", "1", "--stderr"}).out,
            "cardnode: cannot run /nonexistent/cmd: No such file or directory\n");
  std::string script = root_ + "/not-executable.sh";
  { std::ofstream(script) << "#!/bin/sh\necho hi\n"; }
  fs::permissions(script, fs::perms::owner_read | fs::perms::others_read,
                  fs::perm_options::replace);
  EXPECT_EQ(cli({"run", "--wait", "--", script}).code, 126);
  EXPECT_NE(cli({"logs", "2", "--stderr"}).out.find("Permission denied"), std::string::npos);
}

TEST_F(Privilege, PsShowsWhatEachTaskUsed) {
  start_server();
  ASSERT_EQ(cli({"run", "--wait", "--", "sh", "-c",
                 "head -c 32M /dev/zero | tail; i=0; while [ $i -lt 50000 ]; do i=$((i+1)); done"})
                .code,
            0);
  json job = json::parse(cli({"ps", "1", "--json"}).out);
  const json& t = job["tasks"][0];
  ASSERT_TRUE(t.contains("cpu_user_seconds")) << job.dump();
  EXPECT_GT(t["cpu_user_seconds"].get<double>() + t["cpu_system_seconds"].get<double>(), 0.0);
  EXPECT_GE(t["mem_peak_bytes"].get<uint64_t>(), uint64_t{32} << 20);
  std::string text = cli({"ps", "1"}).out;
  EXPECT_NE(text.find("PEAK-MEM"), std::string::npos) << text;
  // And as metrics.
  std::string metrics = http_get(metrics_addr_, "/metrics");
  EXPECT_GT(metric(metrics, "cardnode_task_cpu_seconds_total{mode=\"user\"}") +
                metric(metrics, "cardnode_task_cpu_seconds_total{mode=\"system\"}"),
            0.0);
  EXPECT_EQ(metric(metrics, "cardnode_task_memory_peak_bytes_count"), 1.0);
}

}  // namespace
}  // namespace cardnode::e2e
