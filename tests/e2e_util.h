// Shared by the end-to-end tests: the real `cardnode` binary as a user runs it — a server
// on port 0 in a temp data dir, clients as separate processes, real tasks, kill -9 and
// restart. Waits are bounded polls of observable state, never guessed sleeps.
#pragma once
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "runtime/exec/test_cgroups.h"

namespace cardnode::e2e {

using Json = nlohmann::json;

namespace fs = std::filesystem;
using namespace std::chrono_literals;

struct Output {
  int code = -1;
  std::string out;
  std::string err;
};

inline std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Polls `pred` every 20 ms for at most `limit`.
template <class Pred>
inline bool eventually(Pred pred, std::chrono::milliseconds limit = 10s) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return pred();
}

// Runs argv (argv[0] a path) to completion; captures stdout and stderr through files
// named scratch/NAME.out and .err (no pipe deadlocks for large output); stdin from `in`
// when given. Bounded by the test timeout in ctest.
inline Output run_program(const std::vector<std::string>& argv, const std::string& scratch,
                          const std::vector<std::string>& env = {}, const std::string& in = "",
                          const std::string& name = "cli") {
  std::string out_path = scratch + "/" + name + ".out", err_path = scratch + "/" + name + ".err";
  pid_t pid = fork();
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (!in.empty()) dup2(::open(in.c_str(), O_RDONLY), 0);
    dup2(::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644), 1);
    dup2(::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644), 2);
    for (const auto& kv : env) putenv(const_cast<char*>(kv.c_str()));
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  Output r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = slurp(out_path);
  r.err = slurp(err_path);
  return r;
}

// Runs the cardnode binary with args (see run_program).
inline Output cardnode(const std::vector<std::string>& args, const std::string& scratch,
                       const std::vector<std::string>& env = {}) {
  std::vector<std::string> argv{CARDNODE_BIN};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_program(argv, scratch, env);
}

// As cardnode(), for a command that is expected to exit by itself (a server that refuses
// to start): killed with SIGKILL after `limit`, then code is -1.
inline Output cardnode_bounded(const std::vector<std::string>& args, const std::string& scratch,
                               std::chrono::milliseconds limit) {
  std::string out_path = scratch + "/bounded.out", err_path = scratch + "/bounded.err";
  pid_t pid = fork();
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    int o = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int e = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(o, 1);
    dup2(e, 2);
    std::vector<char*> argv{const_cast<char*>(CARDNODE_BIN)};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(CARDNODE_BIN, argv.data());
    _exit(127);
  }
  int status = 0;
  bool exited = eventually([&] { return waitpid(pid, &status, WNOHANG) == pid; }, limit);
  Output r;
  if (!exited) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
  } else {
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  r.out = slurp(out_path);
  r.err = slurp(err_path);
  return r;
}

// For polling: the document, or a discarded value when the command failed (a server busy
// spawning a thousand tasks may miss one client's timeout); the next poll tries again.
inline Json try_json(const Output& o) {
  if (o.code != 0) return Json(Json::value_t::discarded);
  return Json::parse(o.out, nullptr, /*allow_exceptions=*/false);
}

// The one JSON document `ps --json` / `nodes --json` print; a parse failure fails the test.
inline Json json_of(const Output& o) {
  Json j = Json::parse(o.out, nullptr, /*allow_exceptions=*/false);
  EXPECT_FALSE(j.is_discarded()) << "not JSON: " << o.out << o.err;
  return j;
}

// A connected TCP socket to "HOST:PORT" (IPv4 loopback in these tests).
inline int dial(const std::string& addr) {
  auto colon = addr.rfind(':');
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(std::stoi(addr.substr(colon + 1))));
  inet_pton(AF_INET, addr.substr(0, colon).c_str(), &sa.sin_addr);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
    close(fd);
    return -1;
  }
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

// Reads until the peer closes; true if it closed (EOF or reset) within the timeout.
inline bool closed_by_peer(int fd) {
  char buf[256];
  for (int i = 0; i < 100; ++i) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n == 0 || (n < 0 && errno == ECONNRESET)) return true;
    if (n < 0) return false;  // timeout
  }
  return false;
}

// Host: the address dialled (an IP literal), as a browser sends it; `host` overrides it.
inline std::string http_get(const std::string& addr, const std::string& path,
                            const std::string& host = "") {
  int fd = dial(addr);
  if (fd < 0) return "";
  std::string req =
      "GET " + path + " HTTP/1.0\r\nHost: " + (host.empty() ? addr : host) + "\r\n\r\n";
  (void)!write(fd, req.data(), req.size());
  std::string resp;
  char buf[4096];
  for (ssize_t n; (n = read(fd, buf, sizeof(buf))) > 0 && resp.size() < (8u << 20);)
    resp.append(buf, n);
  close(fd);
  return resp;
}

// Value of an unlabelled or fully-labelled sample line "name{...} value".
inline double metric(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
  return -1;
}

inline bool process_with_marker_exists(const std::string& marker) {
  for (const auto& entry : fs::directory_iterator("/proc")) {
    std::string name = entry.path().filename();
    if (name.empty() || !isdigit(static_cast<unsigned char>(name[0]))) continue;
    std::string cmd = slurp(entry.path().string() + "/cmdline");
    for (char& c : cmd)
      if (c == '\0') c = ' ';
    if (cmd.find(marker) != std::string::npos) return true;
  }
  return false;
}

// Task instances whose command line holds `marker` as a whole word. Counted by process
// group (each task is its own): a task's shell between fork and exec has the same command
// line for a moment and must not count twice.
inline int count_with_marker(const std::string& marker) {
  std::set<long> groups;
  for (const auto& entry : fs::directory_iterator("/proc")) {
    std::string name = entry.path().filename();
    if (name.empty() || !isdigit(static_cast<unsigned char>(name[0]))) continue;
    std::string cmd = slurp(entry.path().string() + "/cmdline");
    for (char& c : cmd)
      if (c == '\0') c = ' ';
    // Whole words: "m" must not count "m-esc".
    cmd += ' ';
    if (cmd.find(" " + marker + " ") == std::string::npos) continue;
    // /proc/PID/stat: "pid (comm) state ppid pgrp ...", comm may hold spaces and ')'.
    std::string stat = slurp(entry.path().string() + "/stat");
    size_t close = stat.rfind(')');
    if (close == std::string::npos) continue;  // exited meanwhile
    std::istringstream fields(stat.substr(close + 1));
    std::string state;
    long ppid = 0, pgrp = 0;
    if (fields >> state >> ppid >> pgrp) groups.insert(pgrp);
  }
  return static_cast<int>(groups.size());
}

// Bytes the process caused to be written to the block layer (/proc/PID/io).
inline uint64_t proc_write_bytes(pid_t pid) {
  std::istringstream in(slurp("/proc/" + std::to_string(pid) + "/io"));
  std::string key;
  uint64_t value = 0;
  while (in >> key >> value) {
    if (key == "write_bytes:") return value;
  }
  return UINT64_MAX;
}

class Cluster : public ::testing::Test {
 public:
  void SetUp() override {
    char tmpl[] = "/tmp/cardnode-e2e-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    // The CLI runs here, so tasks start here: the task user (not root) must get in.
    fs::permissions(root_, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                               fs::perms::others_read | fs::perms::others_exec);
    data_ = root_ + "/data";
    // Where tasks may write (as root, the server runs them as an unprivileged user).
    shared_ = root_ + "/shared";
    fs::create_directory(shared_);
    fs::permissions(shared_, fs::perms::all | fs::perms::sticky_bit);
  }
  void TearDown() override {
    // A clean stop also removes the server's cgroups; SIGKILL only if it hangs.
    if (server_ > 0) {
      kill(server_, SIGTERM);
      bool exited = eventually([&] { return waitpid(server_, nullptr, WNOHANG) == server_; }, 15s);
      if (exited) server_ = -1;
    }
    stop_server(SIGKILL);
    cardnode::runtime::testing::remove_pool_groups_under(root_);
    fs::remove_all(root_);
  }

  // env: "NAME=VALUE" entries added to the server's environment (CARDNODE_SYSFS_ROOT...).
  void start_server(const std::vector<std::string>& extra = {},
                    const std::vector<std::string>& env = {}) {
    fs::remove(data_ + "/addr");
    std::string log = root_ + "/server.log";
    server_ = fork();
    if (server_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // a test that dies takes its server with it
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      dup2(fd, 2);
      dup2(fd, 1);
      // The board's heat comes from an empty tree unless the test gives one: a hot CI
      // machine must not hold the server's board (runtime/node_facts.h).
      setenv("CARDNODE_SYSFS_ROOT", no_sysfs().c_str(), 1);
      for (const auto& kv : env) putenv(const_cast<char*>(kv.c_str()));
      std::vector<std::string> args{CARDNODE_BIN, "server", "--data-dir", data_};
      // favordynmods is host-wide: only the test about it lets the server turn it on.
      if (!favor_dynmods_) args.push_back("--no-favordynmods");
      // Port 0 unless the test names an address (a restart on the same one).
      for (const char* opt : {"--listen", "--metrics-listen"}) {
        if (std::find(extra.begin(), extra.end(), opt) == extra.end()) {
          args.insert(args.end(), {opt, "127.0.0.1:0"});
        }
      }
      args.insert(args.end(), extra.begin(), extra.end());
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(CARDNODE_BIN, argv.data());
      _exit(127);
    }
    // Both files, whatever order they are written in.
    ASSERT_TRUE(eventually([&] {
      return fs::exists(data_ + "/addr") && fs::exists(data_ + "/metrics_addr");
    })) << "server did not start:\n"
        << slurp(log);
    addr_ = slurp(data_ + "/addr");
    addr_.erase(addr_.find_last_not_of("\n") + 1);
    metrics_addr_ = slurp(data_ + "/metrics_addr");
    metrics_addr_.erase(metrics_addr_.find_last_not_of("\n") + 1);
  }

  // Returns the server's exit status (waitpid), or -1 if none was running.
  int stop_server(int sig) {
    if (server_ <= 0) return -1;
    kill(server_, sig);
    int status = 0;
    waitpid(server_, &status, 0);
    server_ = -1;
    return status;
  }

  // A server that must refuse to start (damaged data dir): its exit code and stderr.
  Output server_refuses(const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args{"server",      "--data-dir",       data_,        "--listen",
                                  "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"};
    args.insert(args.end(), extra.begin(), extra.end());
    return cardnode_bounded(args, root_, 20s);
  }

  // A sysfs root with nothing in it: no temperature, no throttle flags.
  std::string no_sysfs() const { return root_ + "/no-sysfs"; }

  Output cli(std::vector<std::string> args, const std::vector<std::string>& env = {}) {
    args.insert(args.begin(), {"--data-dir", data_});
    return cardnode(args, root_, env);
  }

  std::string root_, data_, shared_, addr_, metrics_addr_;
  pid_t server_ = -1;
  bool favor_dynmods_ = false;  // start_server passes --no-favordynmods unless set
};

}  // namespace cardnode::e2e
