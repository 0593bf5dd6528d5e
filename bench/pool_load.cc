// pool_load: a simulated pool. N agents on one libuv loop in this process against one real
// `cardnode server --no-exec` on loopback; what the issue asks of the server at 1,000 boards:
// <= 20 % of one core for heartbeats alone, <= 64 MB RSS, >= 10,000 placements/s.
//
// Every simulated agent is a net::RpcClient speaking the protocol of runtime/agent/agent.cc:
// AgentHello (its own random identity, facts named sim-NNNN), one AgentPoll always
// outstanding, an AgentHeartbeat every heartbeat_ms of the welcome, and for every TaskStart
// an AgentReport of `succeeded` at once, nothing run. Unacknowledged ends are sent again;
// a stale-session answer is met with a new hello. Three phases, each measured from the
// server's /proc/PID/stat (utime + stime) and /proc/PID/status (VmRSS, RssAnon, VmHWM):
//
//   join        until every agent is welcomed; then `cardnode nodes --json` must list N ready
//   heartbeats  a window with no jobs: the server's CPU share of one core, its memory
//   flow        M tasks in a few arrays, submitted as SubmitJob (the client path) from one
//               more connection: placements per second = M / the time from the first submit
//               until every task's end is acknowledged, i.e. durable; then `cardnode ps
//               --json` must show all M succeeded
//
// Output: a table on stderr, one `result` line (key=value) on stdout. Exit 0 when every
// phase completed (the goals are reported, not enforced), 1 otherwise.
//
// Threading: one thread. The loop runs between phases' start and end only; the blocking
// steps (starting the server, `cardnode nodes`/`ps`, reading /proc) happen with it stopped
// or in its timer callbacks, outside the measured work of the agents.
//
// Bounds: every wait has a deadline (flags below); at most kAgentsMax agents; an agent holds
// at most kOutboxMax unacknowledged ends (a server that places more is counted, not dropped:
// `outbox_over`); subprocess output is read up to kCaptureBytesMax. On any exit (an error,
// SIGINT, SIGTERM) the server is stopped (SIGTERM, SIGKILL after 10 s) and the temp dir
// removed (--keep-tmp keeps it, with the server's log). The server also gets SIGKILL if this
// process dies first (PR_SET_PDEATHSIG).
//
//   pool_load [--agents N] [--heartbeat-seconds S] [--tasks M] [--arrays A]
//             [--cardnode PATH] [--keep-tmp] [--agents-per-connection K] ...
#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "net/handshake.h"
#include "net/rpc_client.h"

namespace {

namespace pb = cardnode::pb;
namespace net = cardnode::net;
using cardnode::Errc;
using cardnode::Error;
using cardnode::fail;
using cardnode::Result;
using cardnode::Status;

// As runtime/agent/agent.cc.
constexpr uint64_t kRpcTimeoutMs = 30'000;
constexpr uint64_t kReportRetryMs = 1'000;  // an end the server did not acknowledge: again
constexpr uint32_t kReportBatchMax = 512;   // ends per AgentReport

constexpr uint32_t kAgentsMax = 10'000;
constexpr uint32_t kAgentsPerConnectionMax = 16;  // the server serves 64 requests per connection
constexpr uint32_t kSimTasksMax = 1024;           // an agent's default --tasks-max
// Unacknowledged ends: what the server placed and we have not reported yet (<= tasks_max)
// plus a report batch on its way.
constexpr size_t kOutboxMax = kSimTasksMax + kReportBatchMax;
constexpr uint64_t kServerStartMs = 10'000;
constexpr uint64_t kServerStopGraceMs = 10'000;
constexpr uint64_t kSubprocessMs = 30'000;
constexpr size_t kCaptureBytesMax = 16u << 20;
constexpr size_t kProcFileBytesMax = 16u << 10;
constexpr uint64_t kSettleMs = 3'000;  // after the join, before the heartbeat window
constexpr uint64_t kRssSampleMs = 250;
constexpr uint64_t kRssGoalKb = 64ull << 10;  // the goal: 64 MB

volatile std::sig_atomic_t g_signal = 0;

uint64_t mono_ns() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

double seconds_since(uint64_t start_ns) {
  return static_cast<double>(mono_ns() - start_ns) / 1e9;
}

// ------------------------------------------------------------------------------ /proc

Result<std::string> read_small_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return fail(Errc::kIo, "cannot read " + path);
  std::string text(kProcFileBytesMax, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  return text;
}

struct ProcSample {
  uint64_t cpu_ticks = 0;  // utime + stime, in clock ticks
  uint64_t rss_kb = 0;     // VmRSS
  uint64_t rss_anon_kb = 0;
  uint64_t hwm_kb = 0;  // VmHWM: the peak VmRSS of the process's life
};

uint64_t status_kb(const std::string& status, const std::string& field) {
  size_t at = status.find("\n" + field + ":");
  if (at == std::string::npos) return 0;
  return std::strtoull(status.c_str() + at + field.size() + 2, nullptr, 10);
}

// pid 0: this process.
Result<ProcSample> sample_proc(pid_t pid) {
  const std::string dir = pid == 0 ? "/proc/self" : "/proc/" + std::to_string(pid);
  auto stat = read_small_file(dir + "/stat");
  if (!stat) return std::unexpected(stat.error());
  // Fields after the command (which may hold spaces and parentheses): state is field 3,
  // utime 14 and stime 15 (proc(5)).
  const size_t close = stat->rfind(')');
  if (close == std::string::npos) return fail(Errc::kCorruption, dir + "/stat: no command");
  std::istringstream fields(stat->substr(close + 2));
  std::string f;
  ProcSample s;
  for (int field = 3; field <= 15 && fields >> f; ++field) {
    if (field == 14 || field == 15) s.cpu_ticks += std::strtoull(f.c_str(), nullptr, 10);
  }
  auto status = read_small_file(dir + "/status");
  if (!status) return std::unexpected(status.error());
  s.rss_kb = status_kb(*status, "VmRSS");
  s.rss_anon_kb = status_kb(*status, "RssAnon");
  s.hwm_kb = status_kb(*status, "VmHWM");
  return s;
}

uint64_t self_cpu_us() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  auto us = [](const timeval& t) {
    return static_cast<uint64_t>(t.tv_sec) * 1'000'000 + static_cast<uint64_t>(t.tv_usec);
  };
  return us(u.ru_utime) + us(u.ru_stime);
}

// TcpExt.ListenOverflows of /proc/net/netstat: connections the kernel dropped because a
// listener's accept queue was full. System-wide; on a quiet machine, the server's.
uint64_t listen_overflows() {
  auto text = read_small_file("/proc/net/netstat");
  if (!text) return 0;
  std::istringstream lines(*text);
  std::string names, values;
  while (std::getline(lines, names) && std::getline(lines, values)) {
    if (names.rfind("TcpExt:", 0) != 0) continue;
    std::istringstream n(names), v(values);
    std::string name, value;
    while (n >> name && v >> value) {
      if (name == "ListenOverflows") return std::strtoull(value.c_str(), nullptr, 10);
    }
  }
  return 0;
}

// A CPU window: the server's ticks and this process's rusage between begin() and end().
struct CpuWindow {
  pid_t server = 0;
  uint64_t start_ns = 0, server_ticks = 0, self_us = 0;
  double seconds = 0, server_pct = 0, self_pct = 0;

  Status begin(pid_t pid) {
    server = pid;
    auto s = sample_proc(server);
    if (!s) return std::unexpected(s.error());
    server_ticks = s->cpu_ticks;
    self_us = self_cpu_us();
    start_ns = mono_ns();
    return {};
  }
  Status end() {
    auto s = sample_proc(server);
    if (!s) return std::unexpected(s.error());
    seconds = seconds_since(start_ns);
    const double tick_s = 1.0 / static_cast<double>(::sysconf(_SC_CLK_TCK));
    server_pct = 100.0 * static_cast<double>(s->cpu_ticks - server_ticks) * tick_s / seconds;
    self_pct = 100.0 * static_cast<double>(self_cpu_us() - self_us) / 1e6 / seconds;
    return {};
  }
};

// ------------------------------------------------------------------------ processes

// Runs argv with stdout captured (stderr goes to `log_path`), at most timeout_ms; killed
// after that. The output is returned only for exit status 0. `what` names it in errors.
Result<std::string> run_capture(const std::string& what, const std::vector<std::string>& argv,
                                const std::string& log_path, uint64_t timeout_ms) {
  int out[2];
  if (::pipe2(out, O_CLOEXEC) != 0) return cardnode::fail_errno(errno, "pipe");
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(out[0]);
    ::close(out[1]);
    return cardnode::fail_errno(errno, "fork");
  }
  if (pid == 0) {
    ::dup2(out[1], STDOUT_FILENO);
    const int err = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (err >= 0) ::dup2(err, STDERR_FILENO);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  ::close(out[1]);
  std::string text;
  const uint64_t deadline_ns = mono_ns() + timeout_ms * 1'000'000;
  bool timed_out = false;
  for (;;) {  // ends at EOF, at the deadline, or at the size bound
    const uint64_t now = mono_ns();
    if (now >= deadline_ns || text.size() > kCaptureBytesMax) {
      timed_out = now >= deadline_ns;
      ::kill(pid, SIGKILL);
      break;
    }
    pollfd p{out[0], POLLIN, 0};
    const int n = ::poll(
        &p, 1, static_cast<int>(std::min<uint64_t>((deadline_ns - now) / 1'000'000 + 1, 1000)));
    if (n < 0 && errno != EINTR) break;
    if (n <= 0) continue;
    char buf[16384];
    const ssize_t got = ::read(out[0], buf, sizeof buf);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    text.append(buf, static_cast<size_t>(got));
  }
  ::close(out[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (timed_out) return fail(Errc::kUnavailable, what + ": timed out");
  if (text.size() > kCaptureBytesMax)
    return fail(Errc::kResourceExhausted, what + ": output too long");
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return fail(Errc::kInternal,
                what + " failed (wait status " + std::to_string(status) + "); see " + log_path);
  }
  return text;
}

// A fresh directory under $TMPDIR, removed with everything in it unless kept.
class TempDir {
 public:
  static Result<std::unique_ptr<TempDir>> make(bool keep) {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base != nullptr && *base != '\0' ? base : "/tmp") +
                       "/cardnode-pool-load.XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) return cardnode::fail_errno(errno, "mkdtemp " + tmpl);
    return std::unique_ptr<TempDir>(new TempDir(std::move(tmpl), keep));
  }
  ~TempDir() {
    if (keep_) {
      std::fprintf(stderr, "pool_load: kept %s\n", path_.c_str());
      return;
    }
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  TempDir(std::string path, bool keep) : path_(std::move(path)), keep_(keep) {}
  std::string path_;
  bool keep_;
};

// The server under test, a child process. Stopped by the destructor: SIGTERM, then SIGKILL
// after kServerStopGraceMs. It dies with us too (PR_SET_PDEATHSIG), should we be killed.
class ServerProcess {
 public:
  static Result<std::unique_ptr<ServerProcess>> start(const std::string& bin,
                                                      const std::string& data_dir,
                                                      const std::string& log_path,
                                                      uint64_t heartbeat_ms) {
    const uint64_t grace_ms = std::max<uint64_t>(10'000, 3 * heartbeat_ms);
    std::vector<std::string> argv = {bin,
                                     "server",
                                     "--no-exec",
                                     "--data-dir",
                                     data_dir,
                                     "--listen",
                                     "127.0.0.1:0",
                                     "--metrics-listen",
                                     "127.0.0.1:0",
                                     "--heartbeat",
                                     std::to_string(heartbeat_ms) + "ms",
                                     "--grace",
                                     std::to_string(grace_ms) + "ms"};
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) return cardnode::fail_errno(errno, "fork");
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(1);  // the parent died before prctl
      const int log = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (log >= 0) {
        ::dup2(log, STDOUT_FILENO);
        ::dup2(log, STDERR_FILENO);
      }
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    std::unique_ptr<ServerProcess> s(new ServerProcess(pid));
    // Bounded: the server publishes DATA_DIR/addr once it listens.
    const uint64_t deadline_ns = mono_ns() + kServerStartMs * 1'000'000;
    while (mono_ns() < deadline_ns && g_signal == 0) {
      if (!s->alive())
        return fail(Errc::kUnavailable, "the server exited during start-up; see " + log_path);
      std::ifstream in(data_dir + "/addr");
      std::string line;
      if (in && std::getline(in, line) && !line.empty()) {
        s->addr_ = line;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (g_signal != 0) return fail(Errc::kCancelled, "signalled");
    if (s->addr_.empty()) {
      return fail(Errc::kUnavailable, "no DATA_DIR/addr within " +
                                          std::to_string(kServerStartMs / 1000) + " s; see " +
                                          log_path);
    }
    auto token = net::load_token(data_dir + "/token");
    if (!token) return std::unexpected(token.error());
    s->token_ = std::move(*token);
    return s;
  }

  ~ServerProcess() { stop(); }

  bool alive() {
    if (exited_) return false;
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) exited_ = true;
    return !exited_;
  }

  void stop() {
    if (!alive()) return;
    ::kill(pid_, SIGTERM);
    const uint64_t deadline_ns = mono_ns() + kServerStopGraceMs * 1'000'000;
    while (alive() && mono_ns() < deadline_ns)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (alive()) {
      std::fprintf(stderr, "pool_load: the server ignored SIGTERM for 10 s; SIGKILL\n");
      ::kill(pid_, SIGKILL);
      int status = 0;
      while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
      exited_ = true;
    }
  }

  pid_t pid() const { return pid_; }
  const std::string& addr() const { return addr_; }
  const std::string& token() const { return token_; }

 private:
  explicit ServerProcess(pid_t pid) : pid_(pid) {}
  pid_t pid_;
  bool exited_ = false;
  std::string addr_, token_;
};

// ---------------------------------------------------------------------- the agents

using AttemptKey = std::tuple<uint64_t, uint32_t, uint32_t>;  // job, index, attempt
AttemptKey key_of(const pb::TaskAttempt& a) {
  return {a.job_id(), a.index(), a.attempt()};
}

struct Counters {
  uint64_t welcomes = 0;       // every welcome, the first of each agent included
  uint64_t agents_joined = 0;  // agents welcomed at least once
  uint64_t hello_refused = 0;  // hello answered with an error
  uint64_t stale_answers = 0;  // a poll or heartbeat said "stale session": hello again
  uint64_t heartbeats_sent = 0;
  uint64_t heartbeats_ok = 0;
  uint64_t polls_sent = 0;
  uint64_t work_answers = 0;      // polls answered with work
  uint64_t starts = 0;            // TaskStarts received
  uint64_t duplicate_starts = 0;  // the same attempt again while its end was not acknowledged
  uint64_t stops = 0;             // TaskStops received (nothing runs: ignored, as the agent does)
  uint64_t log_fetches = 0;       // answered empty and final: nothing ran, nothing was written
  uint64_t reports_sent = 0;
  uint64_t report_failures = 0;  // transport errors or error answers: sent again in 1 s
  uint64_t acked = 0;            // ends acknowledged (reports and welcomes)
  uint64_t call_refused = 0;     // RpcClient::call failed at once (not up, busy)
  uint64_t rpc_errors = 0;       // calls that ended without a response (session ended, timeout)
  uint64_t outbox_over = 0;      // starts past kOutboxMax (kept all the same)
  uint64_t disconnects = 0;      // sessions that ended (on_down)
};

// The tasks the flow phase submitted, by job: which indexes have a durable end.
struct JobTrack {
  uint32_t count = 0;
  uint32_t done = 0;
  std::vector<bool> ended;
};

struct Pool;

// One simulated board. Mirrors runtime/agent/agent.cc's session logic; the executor, the
// journal and the logs are left out (every task ends `succeeded` at once).
class SimAgent {
 public:
  SimAgent(Pool& pool, net::RpcClient*& client, uint32_t index, std::string identity);
  void init_timers(uv_loop_t* loop);
  void close_timers();
  void on_up() { send_hello(); }
  void on_down();

 private:
  void reset_session();
  void send_hello();
  void on_welcome(const pb::AgentWelcome& w);
  void send_poll();
  void on_work(const pb::AgentWork& work);
  void send_heartbeat();
  void send_report();
  void forget(const pb::TaskAttempt& a);
  void after_report_ms(uint64_t ms);
  Status call(pb::Request req, net::RpcClient::OnResponse cb, uint64_t timeout_ms);

  Pool& pool_;
  net::RpcClient*& client_;  // the link's, set before any callback runs
  uint32_t index_;
  std::string identity_;
  pb::NodeFacts facts_;
  uint64_t session_ = 0;  // 0: none (not connected, or hello not answered yet)
  bool welcomed_ = false;
  bool hello_in_flight_ = false, poll_in_flight_ = false, report_in_flight_ = false;
  uint64_t heartbeat_ms_ = 1000;
  std::map<AttemptKey, pb::TaskOutcome> outbox_;  // ends not acknowledged; <= kOutboxMax
  uv_timer_t heartbeat_timer_{}, report_timer_{};
};

// One connection: one agent, or several with --agents-per-connection (the server keys agent
// sessions by session id, not by connection).
struct Link {
  net::RpcClient* client = nullptr;  // owned by `owner`
  std::unique_ptr<net::RpcClient> owner;
  std::vector<SimAgent*> agents;
};

struct Pool {
  Counters c;
  std::unordered_map<uint64_t, JobTrack> jobs;
  uint64_t tasks_ended = 0;      // distinct submitted tasks with a durable end
  uint64_t acked_untracked = 0;  // acknowledged ends of no job we submitted
  std::vector<std::unique_ptr<SimAgent>> agents;
  std::vector<std::unique_ptr<Link>> links;

  void on_acked(const pb::TaskAttempt& a) {
    ++c.acked;
    auto it = jobs.find(a.job_id());
    if (it == jobs.end() || a.index() >= it->second.count) {
      ++acked_untracked;
      return;
    }
    JobTrack& j = it->second;
    if (j.ended[a.index()]) return;
    j.ended[a.index()] = true;
    ++j.done;
    ++tasks_ended;
  }
};

SimAgent::SimAgent(Pool& pool, net::RpcClient*& client, uint32_t index, std::string identity)
    : pool_(pool), client_(client), index_(index), identity_(std::move(identity)) {
  char name[32];
  std::snprintf(name, sizeof name, "sim-%04u", index_);
  facts_.set_name(name);
  facts_.set_arch("aarch64");
  facts_.set_cpu_millis(4000);
  facts_.set_mem_bytes(4ull << 30);
  facts_.set_tasks_max(kSimTasksMax);
  facts_.set_isolation("rlimit");
  facts_.set_io_backend("sim");
  facts_.set_board_model("pool_load simulated board");
}

void SimAgent::init_timers(uv_loop_t* loop) {
  for (uv_timer_t* t : {&heartbeat_timer_, &report_timer_}) {
    uv_timer_init(loop, t);
    t->data = this;
  }
}

void SimAgent::close_timers() {
  for (uv_timer_t* t : {&heartbeat_timer_, &report_timer_}) {
    auto* h = reinterpret_cast<uv_handle_t*>(t);
    if (!uv_is_closing(h)) uv_close(h, nullptr);
  }
}

Status SimAgent::call(pb::Request req, net::RpcClient::OnResponse cb, uint64_t timeout_ms) {
  auto st = client_->call(std::move(req), std::move(cb), timeout_ms);
  if (!st) ++pool_.c.call_refused;
  return st;
}

void SimAgent::on_down() {
  if (session_ != 0) ++pool_.c.disconnects;
  reset_session();
}

void SimAgent::reset_session() {
  session_ = 0;
  hello_in_flight_ = poll_in_flight_ = report_in_flight_ = false;
  uv_timer_stop(&heartbeat_timer_);
}

void SimAgent::send_hello() {
  if (hello_in_flight_ || !client_->up()) return;
  pb::Request req;
  pb::AgentHello* h = req.mutable_agent_hello();
  h->set_identity(identity_);
  *h->mutable_facts() = facts_;
  for (const auto& [k, o] : outbox_) *h->add_ended() = o;  // nothing runs here
  hello_in_flight_ = true;
  auto st = call(
      std::move(req),
      [this](Result<pb::Response> r) {
        hello_in_flight_ = false;
        if (!r) {  // the session ended; on_up says hello again
          ++pool_.c.rpc_errors;
          return;
        }
        if (r->error() != pb::OK || !r->has_welcome()) {
          ++pool_.c.hello_refused;  // retried at the next connection, as the agent does
          return;
        }
        on_welcome(r->welcome());
      },
      kRpcTimeoutMs);
  if (!st) hello_in_flight_ = false;
}

void SimAgent::on_welcome(const pb::AgentWelcome& w) {
  session_ = w.session();
  ++pool_.c.welcomes;
  if (!welcomed_) ++pool_.c.agents_joined;
  welcomed_ = true;
  if (w.heartbeat_ms() > 0) heartbeat_ms_ = w.heartbeat_ms();
  for (const pb::TaskAttempt& a : w.acked()) forget(a);
  // w.stop(): attempts we still run that are no longer ours. We run nothing.
  uv_timer_start(
      &heartbeat_timer_, [](uv_timer_t* h) { static_cast<SimAgent*>(h->data)->send_heartbeat(); },
      heartbeat_ms_, heartbeat_ms_);
  send_poll();
  send_report();
}

void SimAgent::send_poll() {
  if (poll_in_flight_ || session_ == 0) return;
  pb::Request req;
  req.mutable_agent_poll()->set_session(session_);
  poll_in_flight_ = true;
  ++pool_.c.polls_sent;
  const uint64_t for_session = session_;
  auto st = call(
      std::move(req),
      [this, for_session](Result<pb::Response> r) {
        poll_in_flight_ = false;
        if (!r) ++pool_.c.rpc_errors;
        if (!r || for_session != session_) return;
        if (r->error() != pb::OK) {  // the server forgot us (declared down, restarted): hello again
          ++pool_.c.stale_answers;
          reset_session();
          send_hello();
          return;
        }
        if (r->has_work()) {
          ++pool_.c.work_answers;
          on_work(r->work());
        }
        send_poll();
      },
      0);
  if (!st) poll_in_flight_ = false;
}

void SimAgent::send_heartbeat() {
  if (session_ == 0 || !client_->up()) return;
  pb::Request req;
  req.mutable_agent_heartbeat()->set_session(session_);
  *req.mutable_agent_heartbeat()->mutable_facts() = facts_;
  ++pool_.c.heartbeats_sent;
  const uint64_t for_session = session_;
  (void)call(
      std::move(req),
      [this, for_session](Result<pb::Response> r) {
        if (!r) {
          ++pool_.c.rpc_errors;
          return;
        }
        if (r->error() == pb::OK) {
          ++pool_.c.heartbeats_ok;
        } else if (session_ != 0 && for_session == session_) {  // stale: declared down
          ++pool_.c.stale_answers;
          reset_session();
          send_hello();
        }
      },
      kRpcTimeoutMs);
}

// Every start ends at once: its outcome goes straight to the outbox, as the agent's does
// once the end is journaled.
void SimAgent::on_work(const pb::AgentWork& work) {
  pool_.c.stops += static_cast<uint64_t>(work.stop_size());
  for (const pb::TaskStart& s : work.start()) {
    ++pool_.c.starts;
    const AttemptKey key = key_of(s.task());
    if (outbox_.contains(key)) {  // sent twice (the agent's journal->knows())
      ++pool_.c.duplicate_starts;
      continue;
    }
    if (outbox_.size() >= kOutboxMax) ++pool_.c.outbox_over;
    pb::TaskOutcome& o = outbox_[key];
    *o.mutable_task() = s.task();
    o.set_state(pb::TASK_SUCCEEDED);
  }
  for (const pb::LogFetch& f : work.logs()) {  // nothing ran here, so nothing was written
    ++pool_.c.log_fetches;
    pb::Request req;
    pb::AgentLog* out = req.mutable_agent_log();
    out->set_session(session_);
    out->set_fetch_id(f.fetch_id());
    out->set_final(true);
    (void)call(
        std::move(req), [](Result<pb::Response>) {}, kRpcTimeoutMs);
  }
  send_report();
}

void SimAgent::forget(const pb::TaskAttempt& a) {
  if (outbox_.erase(key_of(a)) > 0) pool_.on_acked(a);
}

void SimAgent::after_report_ms(uint64_t ms) {
  uv_timer_start(
      &report_timer_, [](uv_timer_t* h) { static_cast<SimAgent*>(h->data)->send_report(); }, ms, 0);
}

void SimAgent::send_report() {
  if (report_in_flight_ || session_ == 0 || outbox_.empty()) return;
  pb::Request req;
  pb::AgentReport* rep = req.mutable_agent_report();
  rep->set_session(session_);
  for (const auto& [k, o] : outbox_) {
    if (rep->outcomes_size() >= static_cast<int>(kReportBatchMax)) break;
    *rep->add_outcomes() = o;
  }
  report_in_flight_ = true;
  ++pool_.c.reports_sent;
  auto st = call(
      std::move(req),
      [this](Result<pb::Response> r) {
        report_in_flight_ = false;
        if (!r || r->error() != pb::OK) {
          ++pool_.c.report_failures;
          // A stale session is found by the poll too, which says hello; the ends go again then.
          after_report_ms(kReportRetryMs);
          return;
        }
        for (const pb::TaskAttempt& a : r->report_ack().acked()) forget(a);
        if (!outbox_.empty())
          after_report_ms(r->report_ack().acked_size() > 0 ? 0 : kReportRetryMs);
      },
      kRpcTimeoutMs);
  if (!st) report_in_flight_ = false;
}

// ------------------------------------------------------------------------- the loop

// Runs the loop until done() holds, timeout_ms passes, or a signal came; `each` runs at
// every check (every check_ms). The loop's own work goes on in between.
enum class Wait { kDone, kTimedOut, kSignalled };

struct Waiter {
  uv_timer_t timer{};
  std::function<bool()> done;
  std::function<void()> each;
  uint64_t deadline_ns = 0;
  Wait result = Wait::kTimedOut;
};

Wait run_until(uv_loop_t* loop, Waiter& w, uint64_t timeout_ms, uint64_t check_ms,
               std::function<bool()> done, std::function<void()> each = {}) {
  w.done = std::move(done);
  w.each = std::move(each);
  w.deadline_ns = mono_ns() + timeout_ms * 1'000'000;
  w.result = Wait::kTimedOut;
  w.timer.data = &w;
  uv_update_time(loop);
  uv_timer_start(
      &w.timer,
      [](uv_timer_t* t) {
        auto* w = static_cast<Waiter*>(t->data);
        if (w->each) w->each();
        Wait r = Wait::kTimedOut;
        if (g_signal != 0) {
          r = Wait::kSignalled;
        } else if (w->done()) {
          r = Wait::kDone;
        } else if (mono_ns() < w->deadline_ns) {
          return;
        }
        w->result = r;
        uv_timer_stop(t);
        uv_stop(t->loop);
      },
      check_ms, check_ms);
  uv_run(loop, UV_RUN_DEFAULT);
  w.done = nullptr;  // they hold references into the caller's frame
  w.each = nullptr;
  return w.result;
}

// ----------------------------------------------------------------------- reporting

struct Figures {
  uint32_t agents = 0, links = 0;
  uint64_t heartbeat_ms = 0, tasks = 0;
  uint32_t arrays = 0;
  double join_s = 0;       // all agents welcomed
  double join_half_s = 0;  // half of them
  uint32_t nodes_ready = 0;
  uint64_t join_attempts = 0;          // connection attempts, all agents' (1 each at best)
  uint64_t join_connect_failures = 0;  // RpcClientStats over every link, during the join
  uint64_t join_handshake_failures = 0;
  uint64_t join_listen_overflows = 0;
  bool hb_measured = false;  // the heartbeat window ran to its end
  CpuWindow hb;
  ProcSample hb_mem;
  uint64_t hb_acked = 0;       // heartbeats acknowledged in the window
  bool flow_measured = false;  // every task ended
  CpuWindow flow;
  double flow_s = 0, placements_per_s = 0, peak_1s = 0;
  uint64_t flow_rss_peak_kb = 0;
  ProcSample flow_mem;
  uint64_t ps_succeeded = 0;
  uint64_t gen_rss_kb = 0;
};

double mb(uint64_t kb) {
  return static_cast<double>(kb) / 1024.0;
}

double per(uint64_t n, double d) {
  return d > 0 ? static_cast<double>(n) / d : 0;
}

// "met", "MISSED", or "n/a" for a phase that did not finish.
const char* verdict(bool measured, bool ok) {
  return !measured ? "n/a" : ok ? "met" : "MISSED";
}

void print_table(const Figures& f, const Counters& c) {
  std::fprintf(
      stderr,
      "\npool_load: %u agents on %u connections, heartbeat %llu ms; %llu tasks in %u arrays\n",
      f.agents, f.links, static_cast<unsigned long long>(f.heartbeat_ms),
      static_cast<unsigned long long>(f.tasks), f.arrays);
  std::fprintf(stderr, "%-11s %9s %11s %11s  %s\n", "phase", "wall", "server CPU", "generator",
               "server memory (MB), rate");
  std::fprintf(stderr,
               "%-11s %8.2fs %11s %11s  %llu of %u welcomed (half by %.2f s), %u nodes ready; %llu "
               "connection attempts (%llu failed to connect, %llu in the handshake), %llu listen "
               "overflows\n",
               "join", f.join_s, "", "", static_cast<unsigned long long>(c.agents_joined), f.agents,
               f.join_half_s, f.nodes_ready, static_cast<unsigned long long>(f.join_attempts),
               static_cast<unsigned long long>(f.join_connect_failures),
               static_cast<unsigned long long>(f.join_handshake_failures),
               static_cast<unsigned long long>(f.join_listen_overflows));
  if (f.hb_measured) {
    std::fprintf(
        stderr,
        "%-11s %8.2fs %10.1f%% %10.1f%%  VmRSS %.1f, RssAnon %.1f, VmHWM %.1f; %.0f heartbeats/s\n",
        "heartbeats", f.hb.seconds, f.hb.server_pct, f.hb.self_pct, mb(f.hb_mem.rss_kb),
        mb(f.hb_mem.rss_anon_kb), mb(f.hb_mem.hwm_kb), per(f.hb_acked, f.hb.seconds));
  }
  if (f.flow_measured) {
    std::fprintf(stderr,
                 "%-11s %8.2fs %10.1f%% %10.1f%%  peak VmRSS %.1f, RssAnon %.1f, VmHWM %.1f; %.0f "
                 "placements/s (best second %.0f)\n",
                 "flow", f.flow_s, f.flow.server_pct, f.flow.self_pct, mb(f.flow_rss_peak_kb),
                 mb(f.flow_mem.rss_anon_kb), mb(f.flow_mem.hwm_kb), f.placements_per_s, f.peak_1s);
  }
  const uint64_t hwm = std::max(f.hb_mem.hwm_kb, f.flow_mem.hwm_kb);
  std::fprintf(
      stderr,
      "goals: heartbeats <= 20%% of a core: %s (%.1f%%); RSS <= 64 MB: %s (VmHWM %.1f MB); "
      ">= 10,000 placements/s: %s (%.0f)\n",
      verdict(f.hb_measured, f.hb.server_pct <= 20.0), f.hb.server_pct,
      verdict(f.hb_measured, hwm <= kRssGoalKb), mb(hwm),
      verdict(f.flow_measured, f.placements_per_s >= 10'000), f.placements_per_s);
  auto ull = [](uint64_t v) { return static_cast<unsigned long long>(v); };
  std::fprintf(
      stderr,
      "agents: %llu welcomes, %llu hellos refused, %llu stale answers, %llu disconnects, %llu "
      "rpc errors, %llu refused calls; %llu work answers (%.1f starts each), %llu reports "
      "(%.1f ends each), %llu duplicate starts, %llu over the outbox bound; generator VmRSS "
      "%.1f MB\n",
      ull(c.welcomes), ull(c.hello_refused), ull(c.stale_answers), ull(c.disconnects),
      ull(c.rpc_errors), ull(c.call_refused), ull(c.work_answers),
      per(c.starts, static_cast<double>(c.work_answers)), ull(c.reports_sent),
      per(c.acked, static_cast<double>(c.reports_sent)), ull(c.duplicate_starts),
      ull(c.outbox_over), mb(f.gen_rss_kb));
}

void print_result(const Figures& f, const Counters& c, bool complete) {
  auto ull = [](uint64_t v) { return static_cast<unsigned long long>(v); };
  const uint64_t hwm = std::max(f.hb_mem.hwm_kb, f.flow_mem.hwm_kb);
  std::printf(
      "result tool=pool_load complete=%d agents=%u connections=%u heartbeat_ms=%llu join_s=%.3f "
      "join_half_s=%.3f nodes_ready=%u join_attempts=%llu join_listen_overflows=%llu "
      "hb_window_s=%.2f hb_server_cpu_pct=%.2f hb_generator_cpu_pct=%.2f "
      "hb_per_s=%.1f hb_rss_kb=%llu hb_rss_anon_kb=%llu hb_hwm_kb=%llu tasks=%llu arrays=%u "
      "flow_s=%.3f placements_per_s=%.1f best_second=%.0f flow_server_cpu_pct=%.2f "
      "flow_generator_cpu_pct=%.2f flow_rss_peak_kb=%llu flow_rss_anon_kb=%llu flow_hwm_kb=%llu "
      "ps_succeeded=%llu welcomes=%llu stale=%llu disconnects=%llu rpc_errors=%llu "
      "work_answers=%llu reports=%llu goal_hb_cpu=%s goal_rss=%s goal_placements=%s\n",
      complete ? 1 : 0, f.agents, f.links, ull(f.heartbeat_ms), f.join_s, f.join_half_s,
      f.nodes_ready, ull(f.join_attempts), ull(f.join_listen_overflows), f.hb.seconds,
      f.hb.server_pct, f.hb.self_pct, per(f.hb_acked, f.hb.seconds), ull(f.hb_mem.rss_kb),
      ull(f.hb_mem.rss_anon_kb), ull(f.hb_mem.hwm_kb), ull(f.tasks), f.arrays, f.flow_s,
      f.placements_per_s, f.peak_1s, f.flow.server_pct, f.flow.self_pct, ull(f.flow_rss_peak_kb),
      ull(f.flow_mem.rss_anon_kb), ull(f.flow_mem.hwm_kb), ull(f.ps_succeeded), ull(c.welcomes),
      ull(c.stale_answers), ull(c.disconnects), ull(c.rpc_errors), ull(c.work_answers),
      ull(c.reports_sent), verdict(f.hb_measured, f.hb.server_pct <= 20.0),
      verdict(f.hb_measured, hwm <= kRssGoalKb),
      verdict(f.flow_measured, f.placements_per_s >= 10'000));
  std::fflush(stdout);
}

// ---------------------------------------------------------------------- JSON checks

using Json = nlohmann::json;

Result<Json> parse_json(const std::string& text) {
  Json doc = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) return fail(Errc::kCorruption, "cannot parse JSON");
  return doc;
}

// `cardnode nodes --json`: how many nodes are ready.
Result<uint32_t> nodes_ready(const std::string& bin, const std::string& data_dir,
                             const std::string& log) {
  auto out = run_capture("cardnode nodes --json", {bin, "--data-dir", data_dir, "nodes", "--json"},
                         log, kSubprocessMs);
  if (!out) return std::unexpected(out.error());
  auto doc = parse_json(*out);
  if (!doc) return std::unexpected(doc.error());
  uint32_t ready = 0;
  for (const Json& n : doc->value("nodes", Json::array())) {
    if (n.value("state", "") == "ready") ++ready;
  }
  return ready;
}

// `cardnode ps --json`: the succeeded tasks of our jobs; an error unless every one of our
// jobs is listed, succeeded, with all its tasks succeeded.
Result<uint64_t> ps_succeeded(const std::string& bin, const std::string& data_dir,
                              const std::string& log,
                              const std::unordered_map<uint64_t, JobTrack>& jobs) {
  auto out = run_capture("cardnode ps --json", {bin, "--data-dir", data_dir, "ps", "--json"}, log,
                         kSubprocessMs);
  if (!out) return std::unexpected(out.error());
  auto doc = parse_json(*out);
  if (!doc) return std::unexpected(doc.error());
  uint64_t succeeded = 0;
  size_t seen = 0;
  std::string wrong;
  for (const Json& job : doc->value("jobs", Json::array())) {
    const auto id = job.value("id", uint64_t{0});
    auto track = jobs.find(id);
    if (track == jobs.end()) continue;
    ++seen;
    const auto ok = job.value("states", Json::object()).value("succeeded", uint64_t{0});
    succeeded += ok;
    const std::string state = job.value("state", "");
    if (state != "succeeded" || ok != track->second.count) {
      wrong += " job " + std::to_string(id) + " is " + state + " with " + std::to_string(ok) +
               " of " + std::to_string(track->second.count) + " tasks succeeded;";
    }
  }
  if (seen != jobs.size()) wrong += " it lists " + std::to_string(seen) + " of our jobs;";
  if (!wrong.empty()) return fail(Errc::kInternal, "cardnode ps --json:" + wrong);
  return succeeded;
}

// ----------------------------------------------------------------------------- main

struct Options {
  uint32_t agents = 1000;
  uint32_t per_connection = 1;
  double heartbeat_s = 1.0;
  uint64_t tasks = 200'000;
  uint32_t arrays = 4;
  double window_s = 20;
  double join_timeout_s = 60;
  double flow_timeout_s = 300;
  std::string cardnode;
  bool keep_tmp = false;
  uint64_t seed = 0;
};

uint64_t ms_of(double seconds) {
  return static_cast<uint64_t>(std::llround(seconds * 1000.0));
}

// build/release/bench/pool_load finds build/release/cli/cardnode beside it; else the path
// relative to the repo, as bench/idle_rss.sh resolves it.
std::string default_cardnode() {
  std::error_code ec;
  auto self = std::filesystem::canonical("/proc/self/exe", ec);
  if (!ec) {
    auto sibling = self.parent_path().parent_path() / "cli" / "cardnode";
    if (std::filesystem::exists(sibling, ec)) return sibling.string();
  }
  return "build/release/cli/cardnode";
}

// 32 hex digits, the form of a DATA_DIR/node_id.
std::string hex_identity(std::mt19937_64& rng) {
  char buf[33];
  std::snprintf(buf, sizeof buf, "%016llx%016llx", static_cast<unsigned long long>(rng()),
                static_cast<unsigned long long>(rng()));
  return buf;
}

int fail_line(const std::string& message) {
  std::fprintf(stderr, "pool_load: %s\n", message.c_str());
  return 1;
}

const char* wait_text(Wait w) {
  return w == Wait::kSignalled ? "signalled" : "timed out";
}

// Everything the loop's callbacks reach. close() stops the clients (their waiting calls'
// callbacks run there, and touch only what is in here) and runs the loop until every
// handle has closed.
struct Run {
  uv_loop_t loop{};
  bool loop_open = false;
  Waiter waiter;
  Pool pool;
  std::unique_ptr<net::RpcClient> submitter;
  bool submitter_up = false;
  uint32_t submits_answered = 0;
  std::string submit_error;

  ~Run() { close(); }
  Status open() {
    if (int rc = uv_loop_init(&loop); rc != 0) return fail(Errc::kInternal, uv_strerror(rc));
    loop_open = true;
    uv_timer_init(&loop, &waiter.timer);
    return {};
  }
  void close() {
    if (!loop_open) return;
    loop_open = false;
    if (submitter) submitter->stop();
    for (auto& l : pool.links) l->owner->stop();
    for (auto& a : pool.agents) a->close_timers();
    uv_close(reinterpret_cast<uv_handle_t*>(&waiter.timer), nullptr);
    uv_run(&loop, UV_RUN_DEFAULT);  // returns once every handle has closed
    submitter.reset();
    pool.links.clear();
    uv_loop_close(&loop);
  }
};

// Every agent starts at once, as after a server restart; the phase ends when all are
// welcomed and `cardnode nodes --json` lists them ready.
Status join_phase(const Options& o, Run& r, const net::RpcClientOptions& base, std::mt19937_64& rng,
                  const std::string& data_dir, const std::string& cli_log, Figures& f) {
  Pool& pool = r.pool;
  net::RpcClientOptions co = base;
  for (uint32_t i = 0; i < o.agents; i += o.per_connection) {
    auto link = std::make_unique<Link>();
    for (uint32_t k = i; k < std::min(o.agents, i + o.per_connection); ++k) {
      pool.agents.push_back(std::make_unique<SimAgent>(pool, link->client, k, hex_identity(rng)));
      pool.agents.back()->init_timers(&r.loop);
      link->agents.push_back(pool.agents.back().get());
    }
    co.jitter_seed = rng() | 1;
    // Each board its own address, as on a real network (the server budgets handshakes per
    // source address): 127.1.x.y, all on lo.
    if (co.address.starts_with("127.")) {
      const uint32_t n = i / o.per_connection;
      co.source_address = "127.1." + std::to_string(n / 250) + "." + std::to_string(n % 250 + 1);
    }
    Link* l = link.get();
    link->owner = std::make_unique<net::RpcClient>(
        &r.loop, co,
        [l] {
          for (SimAgent* a : l->agents) a->on_up();
        },
        [l](const Error&) {
          for (SimAgent* a : l->agents) a->on_down();
        });
    link->client = link->owner.get();
    pool.links.push_back(std::move(link));
  }
  f.links = static_cast<uint32_t>(pool.links.size());
  const uint64_t overflows_before = listen_overflows();  // start() sends the SYN at once
  const uint64_t start = mono_ns();
  for (auto& l : pool.links) {
    if (auto st = l->owner->start(); !st) return st;
  }
  const Wait w = run_until(&r.loop, r.waiter, ms_of(o.join_timeout_s), 5, [&] {
    if (f.join_half_s == 0 && 2 * pool.c.agents_joined >= o.agents)
      f.join_half_s = seconds_since(start);
    return pool.c.agents_joined == o.agents;
  });
  f.join_s = seconds_since(start);
  f.join_listen_overflows = listen_overflows() - overflows_before;
  uint64_t up = 0;
  for (auto& l : pool.links) {
    const net::RpcClientStats& s = l->owner->stats();
    f.join_attempts += s.attempts;
    f.join_connect_failures += s.connect_failures;
    f.join_handshake_failures += s.handshake_failures;
    up += l->owner->up() ? 1 : 0;
  }
  if (w != Wait::kDone) {
    return fail(Errc::kUnavailable,
                std::string(wait_text(w)) + ": " + std::to_string(pool.c.agents_joined) + " of " +
                    std::to_string(o.agents) + " agents joined in " + std::to_string(f.join_s) +
                    " s; " + std::to_string(up) + " of " + std::to_string(pool.links.size()) +
                    " connections up; " + std::to_string(f.join_handshake_failures) +
                    " attempts were closed before the handshake finished (the server's "
                    "connection limit?)");
  }
  auto ready = nodes_ready(o.cardnode, data_dir, cli_log);
  if (!ready) return std::unexpected(ready.error());
  f.nodes_ready = *ready;
  if (f.nodes_ready != o.agents) {
    return fail(Errc::kInternal, "cardnode nodes --json lists " + std::to_string(f.nodes_ready) +
                                     " ready nodes, not " + std::to_string(o.agents));
  }
  return {};
}

// No jobs: what N agents' heartbeats (and their held polls) cost the server. The join's
// burst is over after kSettleMs.
Status heartbeat_phase(const Options& o, Run& r, pid_t server, Figures& f) {
  if (run_until(&r.loop, r.waiter, kSettleMs, 100, [] { return false; }) == Wait::kSignalled) {
    return fail(Errc::kCancelled, "signalled");
  }
  if (auto st = f.hb.begin(server); !st) return st;
  const uint64_t acked_before = r.pool.c.heartbeats_ok;
  if (run_until(&r.loop, r.waiter, ms_of(o.window_s), 100, [] { return false; }) ==
      Wait::kSignalled) {
    return fail(Errc::kCancelled, "signalled");
  }
  if (auto st = f.hb.end(); !st) return st;
  f.hb_acked = r.pool.c.heartbeats_ok - acked_before;
  auto mem = sample_proc(server);
  if (!mem) return std::unexpected(mem.error());
  f.hb_mem = *mem;
  f.hb_measured = true;
  return {};
}

// Sends the arrays' SubmitJobs, all at once, on one more connection.
Status submit_arrays(const Options& o, Run& r) {
  for (uint32_t a = 0; a < o.arrays; ++a) {
    const uint32_t count =
        static_cast<uint32_t>(o.tasks / o.arrays + (a < o.tasks % o.arrays ? 1 : 0));
    pb::Request req;
    pb::JobSpec* spec = req.mutable_submit()->mutable_spec();
    spec->set_name("pool-load-" + std::to_string(a));
    spec->add_command("true");
    spec->set_count(count);
    spec->set_cpu_millis(1);        // `run --cpu 0.001`
    spec->set_mem_bytes(1u << 20);  // `run --mem 1M`
    auto st = r.submitter->call(
        std::move(req),
        [&r, count](Result<pb::Response> resp) {
          ++r.submits_answered;
          if (!resp) {
            r.submit_error = resp.error().describe();
          } else if (resp->error() != pb::OK) {
            r.submit_error = pb::ErrorCode_Name(resp->error()) + ": " + resp->error_message();
          } else {
            JobTrack& j = r.pool.jobs[resp->submitted().job_id()];
            j.count = count;
            j.ended.assign(count, false);
          }
        },
        kRpcTimeoutMs);
    if (!st) return st;
  }
  return {};
}

// From the first submit until every task's end is durable; then `cardnode ps --json`.
Status flow_phase(const Options& o, Run& r, const net::RpcClientOptions& co, pid_t server,
                  const std::string& data_dir, const std::string& cli_log, Figures& f) {
  Pool& pool = r.pool;
  r.submitter = std::make_unique<net::RpcClient>(
      &r.loop, co, [&r] { r.submitter_up = true; }, [&r](const Error&) { r.submitter_up = false; });
  if (auto st = r.submitter->start(); !st) return st;
  if (run_until(&r.loop, r.waiter, 5000, 5, [&r] { return r.submitter_up; }) != Wait::kDone) {
    return fail(Errc::kUnavailable, "the submitting connection did not come up within 5 s");
  }
  if (auto st = f.flow.begin(server); !st) return st;
  const uint64_t start = mono_ns();
  if (auto st = submit_arrays(o, r); !st) return st;
  uint64_t second_start = start, rss_sampled = start, ended_before = 0;
  const Wait w = run_until(
      &r.loop, r.waiter, ms_of(o.flow_timeout_s), 5,
      [&] {
        return !r.submit_error.empty() ||
               (r.submits_answered == o.arrays && pool.tasks_ended == o.tasks);
      },
      [&] {  // the best second, and the peak RSS (VmHWM also holds the join's)
        const uint64_t now = mono_ns();
        if (now - second_start >= 1'000'000'000ull) {
          f.peak_1s = std::max(f.peak_1s, static_cast<double>(pool.tasks_ended - ended_before));
          ended_before = pool.tasks_ended;
          second_start = now;
        }
        if (now - rss_sampled >= kRssSampleMs * 1'000'000) {
          rss_sampled = now;
          if (auto s = sample_proc(server))
            f.flow_rss_peak_kb = std::max(f.flow_rss_peak_kb, s->rss_kb);
        }
      });
  f.flow_s = seconds_since(start);
  if (auto st = f.flow.end(); !st) return st;
  auto mem = sample_proc(server);
  if (!mem) return std::unexpected(mem.error());
  f.flow_mem = *mem;
  f.flow_rss_peak_kb = std::max(f.flow_rss_peak_kb, mem->rss_kb);
  f.placements_per_s = static_cast<double>(pool.tasks_ended) / f.flow_s;
  if (!r.submit_error.empty()) return fail(Errc::kInternal, "submit: " + r.submit_error);
  f.flow_measured = w == Wait::kDone;
  if (w != Wait::kDone) {
    return fail(Errc::kUnavailable,
                std::string(wait_text(w)) + ": " + std::to_string(pool.tasks_ended) + " of " +
                    std::to_string(o.tasks) + " tasks ended in " + std::to_string(f.flow_s) + " s");
  }
  auto ok = ps_succeeded(o.cardnode, data_dir, cli_log, pool.jobs);
  if (!ok) return std::unexpected(ok.error());
  f.ps_succeeded = *ok;
  return {};
}

int run(const Options& o) {
  auto tmp = TempDir::make(o.keep_tmp);
  if (!tmp) return fail_line(tmp.error().describe());
  const std::string data_dir = (*tmp)->path() + "/data";
  const std::string server_log = (*tmp)->path() + "/server.log";
  const std::string cli_log = (*tmp)->path() + "/cli.log";
  Figures f;
  f.agents = o.agents;
  f.heartbeat_ms = ms_of(o.heartbeat_s);
  f.tasks = o.tasks;
  f.arrays = o.arrays;

  auto server = ServerProcess::start(o.cardnode, data_dir, server_log, f.heartbeat_ms);
  if (!server) return fail_line(server.error().describe());
  const pid_t pid = (*server)->pid();
  std::fprintf(stderr, "pool_load: server pid %d on %s, data dir %s, seed %llu\n", pid,
               (*server)->addr().c_str(), data_dir.c_str(),
               static_cast<unsigned long long>(o.seed));

  Run r;  // after the server: destroyed first, so the agents leave before it stops
  if (auto st = r.open(); !st) return fail_line(st.error().describe());
  std::mt19937_64 rng(o.seed);
  net::RpcClientOptions co;
  co.address = (*server)->addr();
  co.token = (*server)->token();
  co.backoff_first_ms = 100;  // as runtime/agent/agent.cc
  co.backoff_max_ms = 2000;
  co.dead_peer_ms = 15'000;

  Status st = join_phase(o, r, co, rng, data_dir, cli_log, f);
  if (st) st = heartbeat_phase(o, r, pid, f);
  co.jitter_seed = rng() | 1;
  if (st) st = flow_phase(o, r, co, pid, data_dir, cli_log, f);
  if (auto self = sample_proc(0)) f.gen_rss_kb = self->rss_kb;
  print_table(f, r.pool.c);
  print_result(f, r.pool.c, st.has_value());
  if (!st) return fail_line(st.error().describe());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"A simulated pool: N agents against one cardnode server on loopback", "pool_load"};
  Options o;
  app.add_option("--agents", o.agents, "Simulated agents")
      ->check(CLI::Range(1u, kAgentsMax))
      ->capture_default_str();
  app.add_option("--agents-per-connection", o.per_connection,
                 "Agents sharing one connection (1: each its own, as real boards)")
      ->check(CLI::Range(1u, kAgentsPerConnectionMax))
      ->capture_default_str();
  app.add_option("--heartbeat-seconds", o.heartbeat_s, "The server's --heartbeat (told to agents)")
      ->check(CLI::Range(0.01, 60.0))
      ->capture_default_str();
  app.add_option("--tasks", o.tasks, "Tasks in the flow phase")
      ->check(CLI::Range(uint64_t{1}, uint64_t{10'000'000}))
      ->capture_default_str();
  app.add_option("--arrays", o.arrays, "Jobs (arrays) the tasks are split into")
      ->check(CLI::Range(1u, 1000u))
      ->capture_default_str();
  app.add_option("--window-seconds", o.window_s, "The heartbeats-alone window")
      ->check(CLI::Range(1.0, 3600.0))
      ->capture_default_str();
  app.add_option("--join-timeout-seconds", o.join_timeout_s, "Give up joining after this long")
      ->check(CLI::Range(1.0, 3600.0))
      ->capture_default_str();
  app.add_option("--flow-timeout-seconds", o.flow_timeout_s, "Give up on the flow after this long")
      ->check(CLI::Range(1.0, 36'000.0))
      ->capture_default_str();
  o.cardnode = default_cardnode();
  app.add_option("--cardnode", o.cardnode, "The cardnode binary")->capture_default_str();
  app.add_flag("--keep-tmp", o.keep_tmp, "Keep the temp dir (server data dir and log)");
  auto* seed = app.add_option("--seed", o.seed, "Seed of identities and jitter (default: random)");
  CLI11_PARSE(app, argc, argv);
  if (seed->count() == 0)
    o.seed = (uint64_t{std::random_device{}()} << 32) | std::random_device{}();
  if (o.arrays > o.tasks) return fail_line("more arrays than tasks");
  if (o.tasks / o.arrays >= 1'000'000) return fail_line("more than 1,000,000 tasks per array");
  if (::access(o.cardnode.c_str(), X_OK) != 0) {
    return fail_line("no cardnode binary at " + o.cardnode +
                     " (cmake --build build/release --target cardnode, or pass --cardnode)");
  }
  o.cardnode = std::filesystem::absolute(o.cardnode).string();

  // One descriptor per connection here and in the server (which inherits the limit).
  rlimit nofile{};
  if (::getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    (void)::setrlimit(RLIMIT_NOFILE, &nofile);
  }
  const uint64_t fds_needed = o.agents / o.per_connection + 256;
  if (::getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < fds_needed) {
    return fail_line("RLIMIT_NOFILE is " + std::to_string(nofile.rlim_cur) + ", need " +
                     std::to_string(fds_needed) + " (raise the hard limit: ulimit -Hn)");
  }
  struct sigaction sa {};
  sa.sa_handler = [](int sig) { g_signal = sig; };
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
  const int rc = run(o);
  if (g_signal != 0) return 128 + g_signal;
  return rc;
}
