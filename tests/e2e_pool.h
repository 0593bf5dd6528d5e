// The pool fixture: Cluster (tests/e2e_util.h) plus agents — each `cardnode agent` its own
// process with its own data dir under the test's root, joined to the server over loopback.
#pragma once

#include <sys/file.h>

#include <map>

#include "tests/e2e_util.h"

namespace cardnode::e2e {

// A port nothing listens on now (bound, read, released): for a server that must come back
// on the same address after kill -9.
inline int free_port() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa));
  socklen_t len = sizeof(sa);
  getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
  close(fd);
  return ntohs(sa.sin_port);
}

// Tasks that wait, without spinning, until the test lets them finish: the test holds an
// exclusive flock on a file; each task takes a shared one (flock(1), util-linux).
class Gate {
 public:
  explicit Gate(std::string path) : path_(std::move(path)) {
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    EXPECT_EQ(::flock(fd_, LOCK_EX), 0);
  }
  ~Gate() { open(); }
  // Shell words for a task command: "flock -s PATH true".
  std::string wait_command() const { return "flock -s " + path_ + " true"; }
  void open() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  std::string path_;
  int fd_ = -1;
};

class Pool : public Cluster {
 public:
  void TearDown() override {
    // SIGTERM: an agent kills its tasks and removes its cgroups on the way out.
    for (auto& [name, pid] : agents_) {
      if (pid > 0) kill(pid, SIGTERM);
    }
    for (auto& [name, pid] : agents_) {
      if (pid <= 0) continue;
      if (!eventually([&] { return waitpid(pid, nullptr, WNOHANG) == pid; }, 20s)) {
        kill(pid, SIGKILL);
        waitpid(pid, nullptr, 0);
      }
    }
    agents_.clear();
    Cluster::TearDown();
  }

  // A coordinating server with fast failure detection (see the test file's header).
  void start_pool_server(std::vector<std::string> extra = {},
                         const std::vector<std::string>& env = {}) {
    extra.push_back("--no-exec");
    for (auto [flag, value] : {std::pair{"--heartbeat", "200ms"}, std::pair{"--grace", "2s"}}) {
      if (std::find(extra.begin(), extra.end(), flag) == extra.end()) {
        extra.insert(extra.end(), {flag, value});
      }
    }
    start_server(extra, env);
  }

  std::string agent_dir(const std::string& name) const { return root_ + "/agents/" + name; }
  std::string agent_log(const std::string& name) const { return agent_dir(name) + ".log"; }

  // Starts `cardnode agent --join <server> --name NAME` with DATA_DIR root/agents/NAME and
  // the server's token copied there (as an operator would).
  void start_agent(const std::string& name, const std::vector<std::string>& extra = {},
                   bool copy_token = true, const std::vector<std::string>& wrapper = {}) {
    ASSERT_FALSE(addr_.empty()) << "start the server first";
    const std::string dir = agent_dir(name);
    fs::create_directories(dir);
    if (copy_token) {
      fs::copy_file(data_ + "/token", dir + "/token", fs::copy_options::overwrite_existing);
    }
    const std::string log = agent_log(name);
    const std::string join = addr_;
    pid_t pid = fork();
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      dup2(fd, 2);
      dup2(fd, 1);
      // Heat from an empty tree, as the server's (a wrapper "env CARDNODE_SYSFS_ROOT=..."
      // gives the agent another).
      setenv("CARDNODE_SYSFS_ROOT", no_sysfs().c_str(), 1);
      // wrapper: a command the agent runs under ("ip netns exec NS").
      std::vector<std::string> args = wrapper;
      args.insert(args.end(), {CARDNODE_BIN, "agent", "--data-dir", dir, "--join", join, "--name",
                               name, "--no-favordynmods"});  // host-wide: see start_server
      // Its /metrics on port 0 (DATA_DIR/metrics_addr), unless the test names an address or
      // wants the binary's default.
      if (!agent_default_metrics_ &&
          std::find(extra.begin(), extra.end(), "--metrics-listen") == extra.end()) {
        args.insert(args.end(), {"--metrics-listen", "127.0.0.1:0"});
      }
      args.insert(args.end(), extra.begin(), extra.end());
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execvp(argv[0], argv.data());
      _exit(127);
    }
    agents_[name] = pid;
  }

  void kill_agent(const std::string& name, int sig) {
    pid_t pid = agents_[name];
    if (pid <= 0) return;
    kill(pid, sig);
    waitpid(pid, nullptr, 0);
    agents_[name] = -1;
  }

  int ready_nodes() {
    const Json j = try_json(cli({"nodes", "--json"}));
    int n = 0;
    if (j.is_discarded() || !j.contains("nodes")) return 0;
    for (const auto& node : j["nodes"]) n += node["state"] == "ready";
    return n;
  }

  std::string node_state(const std::string& name) {
    const Json j = try_json(cli({"nodes", "--json"}));
    if (j.is_discarded() || !j.contains("nodes")) return "";
    for (const auto& node : j["nodes"]) {
      if (node["name"] == name) return node["state"].get<std::string>();
    }
    return "";
  }

  // Everything the pool's processes said: for a failing assertion's message.
  std::string logs() {
    std::string out = "--- server\n" + slurp(root_ + "/server.log");
    for (const auto& [name, pid] : agents_)
      out += "--- agent " + name + "\n" + slurp(agent_log(name));
    return out;
  }

  std::map<std::string, pid_t> agents_;
  bool agent_default_metrics_ = false;  // start_agent leaves --metrics-listen to the binary
};

}  // namespace cardnode::e2e
