#include "cli/commands.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>
#include <utility>

#include "cli/format.h"
#include "cli/job_json.h"
#include "cli/json_out.h"
#include "net/client.h"
#include "net/handshake.h"
#include "proto/text.h"
#include "runtime/coordinator/fsck.h"
#include "runtime/data_dir.h"
#include "scheduler/cluster.h"
#include "scheduler/heat.h"

namespace cardnode::cli {
namespace {

constexpr uint32_t kConnectTimeoutMs = 5000;
constexpr uint32_t kCallTimeoutMs = 30'000;
// run --wait of one task: how long before a job still queued is told why (see there).
constexpr uint32_t kQueuedNoticeMs = 1'000;
constexpr uint32_t kLogChunkBytes = 1u << 20;
constexpr uint32_t kFollowPollMs = 500;
// A busy server (its WAL queue full) refuses without changing anything: the client tries
// again after a growing pause, for at most about this long.
constexpr uint32_t kBusyRetryMs = 30'000;
constexpr uint32_t kBusyBackoffFirstMs = 20;
constexpr uint32_t kBusyBackoffMaxMs = 1000;

int error_line(const std::string& message, int code) {
  (void)std::fprintf(stderr, "cardnode: %s\n", message.c_str());  // nowhere else to report to
  return code;
}

const char* env_or_null(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

Result<std::string> read_first_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) return fail(Errc::kNotFound, "cannot read " + path);
  return line;
}

// A server bound to the wildcard address is reached on loopback.
std::string connectable(std::string addr) {
  if (addr.rfind("0.0.0.0:", 0) == 0) return "127.0.0.1:" + addr.substr(8);
  if (addr.rfind("[::]:", 0) == 0) return "[::1]:" + addr.substr(5);
  return addr;
}

}  // namespace

net::SecurityOptions security_options(const ClientConfig& cfg) {
  net::SecurityOptions so;
  so.insecure = cfg.insecure;
  so.cert_file = cfg.tls_cert;
  so.key_file = cfg.tls_key;
  so.ca_file = cfg.tls_ca;
  return so;
}

namespace {

Result<std::unique_ptr<net::Client>> connect(const ClientConfig& cfg) {
  std::string dir = !cfg.data_dir.empty() ? cfg.data_dir : default_data_dir();
  std::string addr = cfg.server;
  if (addr.empty() && env_or_null("CARDNODE_ADDR")) addr = env_or_null("CARDNODE_ADDR");
  // On the server's board: its local socket, with no token and no TLS to set up, when
  // the client would otherwise take both address and token from the data dir (credentials
  // or transport flags of its own mean TCP, as given). No socket, no server behind it, or
  // not ours to use (EACCES): TCP below, whose errors say what is missing. A socket of
  // another user's is an error: the data dir is not what it should be.
  const bool own_credentials = !cfg.token_file.empty() || env_or_null("CARDNODE_TOKEN") ||
                               cfg.insecure || !cfg.tls_cert.empty() || !cfg.tls_key.empty() ||
                               !cfg.tls_ca.empty();
  if (addr.empty() && !own_credentials) {
    auto local =
        net::Client::connect_local(dir + "/" + runtime::kLocalSocketName, kConnectTimeoutMs);
    if (local) return local;
    const Error& e = local.error();
    if (e.code != Errc::kNotFound && !(e.code == Errc::kUnavailable && e.sys_errno == EACCES)) {
      return std::unexpected(e);
    }
  }
  if (addr.empty()) {
    auto line = read_first_line(dir + "/addr");
    if (!line) {
      return fail(Errc::kUnavailable,
                  "no server address: pass --server HOST:PORT, set "
                  "CARDNODE_ADDR, or --data-dir of a running server (" +
                      line.error().message + ")");
    }
    addr = *line;
  }
  net::SecurityOptions so = security_options(cfg);
  if (Status st = net::SecurityContext::check_flags(so); !st) return std::unexpected(st.error());
  if (so.cert_file.empty()) {  // certificate mode needs no token
    if (!cfg.token_file.empty()) {
      auto t = net::load_token(cfg.token_file);
      if (!t) return std::unexpected(t.error());
      so.token = *t;
    } else if (env_or_null("CARDNODE_TOKEN")) {
      so.token = env_or_null("CARDNODE_TOKEN");
    } else {
      auto t = net::load_token(dir + "/token");
      if (!t) {
        return fail(Errc::kUnauthenticated,
                    "no cluster token: pass --token-file F, set "
                    "CARDNODE_TOKEN, or --data-dir (" +
                        t.error().describe() + ")");
      }
      so.token = *t;
    }
  }
  auto security = net::SecurityContext::create(so, net::SecurityContext::Role::kClient);
  if (!security) return std::unexpected(security.error());
  return net::Client::connect(connectable(addr), *security, kConnectTimeoutMs);
}

// One request, one response; a transport or server error becomes a message. A busy
// refusal (nothing changed) is retried with backoff.
Result<pb::Response> call(net::Client& c, const pb::Request& req,
                          uint32_t timeout_ms = kCallTimeoutMs) {
  uint32_t waited_ms = 0;
  uint32_t pause_ms = kBusyBackoffFirstMs;
  for (;;) {  // bounded by kBusyRetryMs
    auto resp = c.call(pb::Request(req), timeout_ms);
    if (!resp) return std::unexpected(resp.error());
    if (resp->error() == pb::OK) return resp;
    if (resp->error() != pb::BUSY || waited_ms >= kBusyRetryMs) {
      return fail(static_cast<Errc>(resp->error()), resp->error_message());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms));
    waited_ms += pause_ms;
    pause_ms = std::min(pause_ms * 2, kBusyBackoffMaxMs);
  }
}

// Transport and auth failures exit 2 (brief); a server-side refusal exits 1.
int report(const Error& e) {
  const bool client_side = e.code == Errc::kUnavailable || e.code == Errc::kUnauthenticated ||
                           e.code == Errc::kInvalidArgument;
  return error_line(e.describe(), client_side ? kExitUsage : 1);
}

// Every job, page by page: the server bounds each reply (runtime/coordinator/listing.h).
Result<pb::JobList> fetch_jobs(net::Client& c) {
  pb::JobList all;
  uint64_t after = 0;
  for (;;) {  // bounded by the jobs there are: each page starts past the last one
    pb::Request req;
    req.mutable_list_jobs()->set_after_job_id(after);
    auto resp = call(c, req);
    if (!resp) return std::unexpected(resp.error());
    pb::JobList* page = resp->mutable_jobs();
    for (pb::JobSummary& j : *page->mutable_jobs()) *all.add_jobs() = std::move(j);
    if (page->next_after() == 0) return all;
    if (page->next_after() <= after) return fail(Errc::kInternal, "the job list went backwards");
    after = page->next_after();
  }
}

// The tasks after the first page of a job (from GetJob or WaitJob), appended to it.
Status fetch_remaining_tasks(net::Client& c, pb::JobDetail* detail) {
  uint32_t next = detail->next_task();
  while (next != 0) {  // bounded by the job's tasks: each page starts past the last one
    pb::Request req;
    req.mutable_get_job()->set_job_id(detail->job().id());
    req.mutable_get_job()->set_first_task(next);
    auto resp = call(c, req);
    if (!resp) return std::unexpected(resp.error());
    pb::JobDetail* page = resp->mutable_job();
    if (page->tasks_size() == 0 || (page->next_task() != 0 && page->next_task() <= next)) {
      return fail(Errc::kInternal, "the task list of job " + std::to_string(detail->job().id()) +
                                       " does not advance");
    }
    for (pb::TaskInfo& t : *page->mutable_tasks()) *detail->add_tasks() = std::move(t);
    next = page->next_task();
  }
  detail->set_next_task(0);
  return {};
}

Result<pb::JobDetail> fetch_job(net::Client& c, uint64_t id) {
  pb::Request req;
  req.mutable_get_job()->set_job_id(id);
  auto resp = call(c, req);
  if (!resp) return std::unexpected(resp.error());
  pb::JobDetail detail = std::move(*resp->mutable_job());
  if (auto st = fetch_remaining_tasks(c, &detail); !st) return std::unexpected(st.error());
  return detail;
}

// At most `width` bytes of shown (escaped) text, "..." where it was cut.
std::string fit(const std::string& text, size_t width) {
  if (text.size() <= width) return text;
  return text.substr(0, shown_prefix_bytes(text, width - 3)) + "...";
}

// A command for the table: arguments shown escaped (proto/text.h: one line, \xHH for
// bytes that are not printable UTF-8) and joined by spaces, cut to `width` bytes with
// "..." where it was cut, here or by the server.
std::string command_text(const pb::JobSummary& j, size_t width) {
  std::string text;
  for (const std::string& arg : j.command()) {
    if (!text.empty()) text.push_back(' ');
    // Enough to tell that it is too long: escaping only lengthens.
    text += shown(std::string_view(arg).substr(0, width + 1));
    if (text.size() > width) break;
  }
  if (text.size() <= width && !j.command_shortened()) return text;
  return text.substr(0, shown_prefix_bytes(text, width - 3)) + "...";
}

uint64_t steady_ms() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

// An array's progress on stderr until it is final, from its summary (a one-job page of
// ListJobs: no tasks, and none of the per-job work of GetJob such as the wait reason)
// every kProgressPollMs, more often near its end (next_poll_ms). A terminal sees one line redrawn
// in place; a pipe or file a plain line every kProgressLineMs and a last one. Best effort: the exit
// code says how the job ended.
Status show_progress(net::Client& c, uint64_t id, uint64_t start_ms) {
  const bool tty = ::isatty(STDERR_FILENO) == 1;
  Pacer pacer(start_ms, tty ? kProgressRedrawMs : kProgressLineMs);
  uint32_t last_done = 0;
  uint64_t wait_ms = kProgressPollMs;
  for (;;) {  // bounded by the job's run: it ends, or the server goes and call() fails
    pb::Request req;
    req.mutable_list_jobs()->set_after_job_id(id - 1);
    req.mutable_list_jobs()->set_max_jobs(1);
    auto resp = call(c, req);
    if (!resp) return std::unexpected(resp.error());
    if (resp->jobs().jobs_size() != 1 || resp->jobs().jobs(0).id() != id) {
      return fail(Errc::kNotFound, "job " + std::to_string(id) + " is gone");  // pruned
    }
    const pb::JobSummary& j = resp->jobs().jobs(0);
    const uint64_t now = steady_ms();
    const bool final = j.state() != pb::JOB_QUEUED && j.state() != pb::JOB_RUNNING;
    if (final || pacer.due(now)) {
      std::string line = progress_line(j, now - start_ms);
      if (tty) {
        // A line longer than the terminal wraps, and "\r" then redraws only its last part.
        struct winsize ws {};
        if (::ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 1 &&
            line.size() >= ws.ws_col) {
          line.resize(ws.ws_col - 1u);  // ASCII only: any cut is a character boundary
        }
        (void)std::fprintf(stderr, "\r%s\x1b[K%s", line.c_str(), final ? "\n" : "");
      } else {
        (void)std::fprintf(stderr, "cardnode: %s\n", line.c_str());
      }
      (void)std::fflush(stderr);
    }
    if (final) return {};
    const uint32_t done = tasks_done(j);
    wait_ms = next_poll_ms(j, now - start_ms, wait_ms, done != last_done);
    last_done = done;
    std::this_thread::sleep_for(std::chrono::milliseconds(wait_ms));
  }
}

// Copies one log of a task to `out` from its start: all of it, or (follow) on until the
// task is final. 0, or the exit code of a failure whose line was printed. Bounded by the
// log's size (log_bytes_max) unless following a task that runs on.
int copy_log(net::Client& c, TaskId task, pb::LogStream stream, std::FILE* out, bool follow) {
  uint64_t offset = 0;
  for (;;) {
    pb::Request req;
    auto* r = req.mutable_read_log();
    r->set_job_id(task.job);
    r->set_index(task.index);
    r->set_stream(stream);
    r->set_offset(offset);
    r->set_max_bytes(kLogChunkBytes);
    auto resp = call(c, req);
    if (!resp) return report(resp.error());
    const pb::LogChunk& chunk = resp->log();
    if (!chunk.data().empty()) {
      // A reader that went away (SIGPIPE is ignored) or a full disk: stop, rather than
      // follow on writing nowhere.
      if (std::fwrite(chunk.data().data(), 1, chunk.data().size(), out) != chunk.data().size() ||
          std::fflush(out) != 0) {
        return error_line(
            out == stdout ? "cannot write the log to stdout" : "cannot write the log to stderr", 1);
      }
      offset = chunk.next_offset();
      continue;
    }
    if (chunk.final() || !follow) return 0;
    std::this_thread::sleep_for(std::chrono::milliseconds(kFollowPollMs));
  }
}

Result<pb::Response> wait_job(net::Client& c, uint64_t id) {
  pb::Request w;
  w.mutable_wait_job()->set_job_id(id);
  return call(c, w, /*timeout_ms=*/0);
}

// WaitJob for a one-task job. One that has not ended after kQueuedNoticeMs and cannot
// start says why, once, as srun says a job is queued and waiting for resources, and the
// wait goes on for the same answer: one waiter on the server, which keeps the job from
// pruning until it has answered. The reason is asked on a second connection (this one is
// waiting); best effort.
Result<pb::Response> wait_one(net::Client& c, const ClientConfig& cfg, uint64_t id) {
  pb::Request w;
  w.mutable_wait_job()->set_job_id(id);
  auto sent = c.send(w, kCallTimeoutMs);
  if (!sent) return std::unexpected(sent.error());
  auto answer = c.receive(*sent, kQueuedNoticeMs);
  if (answer && !*answer) {
    if (auto other = connect(cfg)) {
      if (auto d = fetch_job(**other, id);
          d && d->job().state() == pb::JOB_QUEUED && !d->job().wait_reason().empty()) {
        (void)std::fprintf(stderr, "cardnode: job %llu queued: %s\n",
                           static_cast<unsigned long long>(id),
                           shown(d->job().wait_reason()).c_str());
      }
    }
    answer = c.receive(*sent, /*timeout_ms=*/0);
  }
  if (!answer) return std::unexpected(answer.error());
  pb::Response r = std::move(**answer);
  if (r.error() == pb::OK) return r;
  if (r.error() == pb::BUSY) return wait_job(c, id);  // call() retries as for any request
  return fail(static_cast<Errc>(r.error()), r.error_message());
}

int submit_and_maybe_wait(const ClientConfig& cfg, pb::JobSpec spec, bool wait) {
  // Before connecting: a spec the server would refuse (or that protobuf would not send,
  // a map key that is not UTF-8) is a usage error, and nothing is sent.
  if (auto bad = job_spec_bytes_error(spec)) return error_line(*bad, kExitUsage);
  auto c = connect(cfg);
  if (!c) return report(c.error());
  const uint32_t count = std::max(spec.count(), 1u);  // a JobSpec without a count has one task
  const uint64_t submitted_at = steady_ms();
  pb::Request req;
  *req.mutable_submit()->mutable_spec() = std::move(spec);
  req.mutable_submit()->set_then_wait(wait);  // kept for our WaitJob, however short its end
  auto resp = call(**c, req);
  if (!resp) return report(resp.error());
  const uint64_t id = resp->submitted().job_id();
  if (!wait) {
    std::printf("%llu\n", static_cast<unsigned long long>(id));
    return 0;
  }
  // Progress and outcome go to stderr, best effort: the exit code carries the result.
  (void)std::fprintf(stderr, "cardnode: job %llu submitted, waiting\n",
                     static_cast<unsigned long long>(id));
  if (count > 1) {
    if (auto st = show_progress(**c, id, submitted_at); !st) return report(st.error());
  }
  auto done = count == 1 ? wait_one(**c, cfg, id) : wait_job(**c, id);
  if (!done) return report(done.error());
  // The first page of tasks is enough: a one-task job's task is on it, and an array's exit
  // code is its job's state.
  const pb::JobSummary& j = done->job().job();
  if (count == 1) {
    // A one-task job's output, once it has ended, as srun shows it (`logs -f` follows it
    // live): its stdout on stdout, its stderr on stderr. A log that cannot be read says so
    // on stderr; the exit code stays the task's.
    // A stream the server knows to be empty is not asked for (a silent task: two round
    // trips fewer); an older server never says so, and both are read.
    const pb::TaskInfo* t = done->job().tasks_size() > 0 ? &done->job().tasks(0) : nullptr;
    for (auto [stream, out] : {std::pair{pb::STDOUT, stdout}, std::pair{pb::STDERR, stderr}}) {
      if (t != nullptr && (stream == pb::STDOUT ? t->stdout_empty() : t->stderr_empty())) continue;
      if (copy_log(**c, TaskId{id, 0}, stream, out, /*follow=*/false) != 0) break;
    }
  }
  (void)std::fprintf(stderr, "cardnode: job %llu %s (%s)\n", static_cast<unsigned long long>(id),
                     job_state_text(j.state()), states_text(j).c_str());
  return wait_exit_code(done->job());
}

}  // namespace

std::string default_data_dir() {
  if (const char* d = env_or_null("CARDNODE_DATA_DIR")) return d;
  if (::geteuid() == 0) return "/var/lib/cardnode";
  const char* home = env_or_null("HOME");
  return std::string(home ? home : ".") + "/.local/share/cardnode";
}

int wait_exit_code(const pb::JobDetail& d) {
  if (d.job().count() == 1) {
    if (d.tasks_size() == 0) return 1;  // never sent by a server: a task page is never empty
    const pb::TaskInfo& t = d.tasks(0);
    if (t.state() == pb::TASK_SUCCEEDED) return 0;
    if (t.signal() > 0) return 128 + t.signal();
    if (t.exit_code() != 0) return t.exit_code() & 0xff;
    return 1;  // cancelled before it ran, lost: not a success, and no code of its own
  }
  return d.job().state() == pb::JOB_SUCCEEDED ? 0 : 1;
}

int cmd_server(runtime::ServerOptions options) {
  if (options.data_dir.empty()) options.data_dir = default_data_dir();
  // Bad --tls-* flags or files are a usage error, found before the data dir is made or
  // locked. The token lives in the data dir: a stand-in lets the flags be checked alone.
  net::SecurityOptions flags = options.security;
  flags.token = "stand-in";
  if (auto st = net::SecurityContext::create(flags, net::SecurityContext::Role::kServer); !st) {
    return error_line(st.error().describe(), kExitUsage);
  }
  if (const char* v = env_or_null("CARDNODE_NO_CGROUPS"))
    options.disable_cgroups = std::string(v) == "1";
  if (options.exec) {
    if (auto users = runtime::resolve_task_users(options.task_users); !users) {
      return error_line(users.error().describe(), kExitUsage);
    }
  }
  auto server = runtime::Server::open(std::move(options));
  if (!server) return error_line(server.error().describe(), 1);
  return (*server)->run();
}

int cmd_agent(const ClientConfig& cfg, runtime::AgentOptions options) {
  options.data_dir = !cfg.data_dir.empty() ? cfg.data_dir : default_data_dir();
  if (const char* v = env_or_null("CARDNODE_NO_CGROUPS"))
    options.disable_cgroups = std::string(v) == "1";
  options.security = security_options(cfg);
  if (Status st = net::SecurityContext::check_flags(options.security); !st) {
    return error_line(st.error().describe(), kExitUsage);
  }
  if (auto users = runtime::resolve_task_users(options.task_users); !users) {
    return error_line(users.error().describe(), kExitUsage);
  }
  // The cluster token: --token-file, else CARDNODE_TOKEN, else DATA_DIR/token (copied there
  // from the server's data dir). Certificate mode needs none.
  if (!options.security.cert_file.empty()) {
    // nothing to read
  } else if (!cfg.token_file.empty()) {
    auto t = net::load_token(cfg.token_file);
    if (!t) return error_line(t.error().describe(), kExitUsage);
    options.security.token = *t;
  } else if (const char* env = env_or_null("CARDNODE_TOKEN")) {
    options.security.token = env;
  } else {
    auto t = net::load_token(options.data_dir + "/token");
    if (!t) {
      return error_line(
          "no cluster token: pass --token-file F (the server's DATA_DIR/token), set "
          "CARDNODE_TOKEN, or copy it to " +
              options.data_dir + "/token (" + t.error().describe() + ")",
          kExitUsage);
    }
    options.security.token = *t;
  }
  if (auto st = net::SecurityContext::create(options.security, net::SecurityContext::Role::kClient);
      !st) {
    return error_line(st.error().describe(), kExitUsage);
  }
  auto agent = runtime::Agent::open(std::move(options));
  if (!agent) return error_line(agent.error().describe(), 1);
  return (*agent)->run();
}

int cmd_drain(const ClientConfig& cfg, const std::string& node, bool undrain,
              uint64_t deadline_ms) {
  if (!is_utf8(node)) return error_line("node name '" + shown(node) + "' is not UTF-8", kExitUsage);
  auto c = connect(cfg);
  if (!c) return report(c.error());
  pb::Request req;
  req.mutable_drain()->set_node(node);
  req.mutable_drain()->set_undrain(undrain);
  req.mutable_drain()->set_deadline_ms(deadline_ms);
  auto resp = call(**c, req);
  if (!resp) return report(resp.error());
  std::printf("%s %s\n", undrain ? "undrained" : "draining", node.c_str());
  return 0;
}

int cmd_run(const ClientConfig& cfg, pb::JobSpec spec, bool wait) {
  char cwd[4096];
  if (::getcwd(cwd, sizeof(cwd)) != nullptr) spec.set_cwd(cwd);
  return submit_and_maybe_wait(cfg, std::move(spec), wait);
}

int cmd_submit(const ClientConfig& cfg, const std::string& file, bool wait) {
  std::ifstream in(file);
  if (!in) return error_line("cannot read " + file, kExitUsage);
  std::stringstream text;
  text << in.rdbuf();
  if (text.str().size() > (1u << 20)) return error_line(file + " is larger than 1 MiB", kExitUsage);
  auto parsed = job_spec_from_json(text.str());
  if (!parsed) return error_line(file + ": not a JobSpec: " + parsed.error().message, kExitUsage);
  pb::JobSpec spec = std::move(*parsed);
  if (spec.cwd().empty()) {
    char cwd[4096];
    if (::getcwd(cwd, sizeof(cwd)) != nullptr) spec.set_cwd(cwd);
  }
  return submit_and_maybe_wait(cfg, std::move(spec), wait);
}

int cmd_ps(const ClientConfig& cfg, std::optional<uint64_t> job, bool json) {
  auto c = connect(cfg);
  if (!c) return report(c.error());
  // Fetched whole before anything is printed: a failure half-way prints no partial table.
  pb::JobList list;
  pb::JobDetail detail;
  if (job) {
    auto d = fetch_job(**c, *job);
    if (!d) return report(d.error());
    detail = std::move(*d);
  } else {
    auto l = fetch_jobs(**c);
    if (!l) return report(l.error());
    list = std::move(*l);
  }
  if (json) {
    std::printf("%s\n", job ? job_json(detail).c_str() : jobs_json(list).c_str());
    return 0;
  }
  constexpr int kCommandWidth = 32;
  // ELAPSED: since the job was submitted, to its end once final, by the server's clock.
  std::printf("%-6s %-20s %-10s %4s %6s %7s  %-*s  %s\n", "ID", "NAME", "STATE", "PRI", "TASKS",
              "ELAPSED", kCommandWidth, "COMMAND", "STATES");
  const uint64_t now_ms = job ? detail.now_ms() : list.now_ms();
  auto row = [now_ms](const pb::JobSummary& j) {
    const auto elapsed = job_elapsed_ms(j, now_ms);
    std::printf("%-6llu %-20s %-10s %4u %6u %7s  %-*s  %s\n",
                static_cast<unsigned long long>(j.id()), fit(shown(j.name()), 20).c_str(),
                job_state_text(j.state()), j.priority(), j.count(),
                elapsed ? human_duration(*elapsed).c_str() : "-", kCommandWidth,
                command_text(j, kCommandWidth).c_str(), states_text(j).c_str());
  };
  if (!job) {
    for (const auto& j : list.jobs()) row(j);
    return 0;
  }
  row(detail.job());
  if (!detail.job().wait_reason().empty()) {
    std::printf("waiting: %s\n", shown(detail.job().wait_reason()).c_str());
  }
  // DURATION: wall time of the running attempt so far, else of the latest finished one.
  std::printf("\n%-12s %-11s %5s %6s %8s %8s %9s %9s  %s\n", "TASK", "STATE", "EXIT", "SIGNAL",
              "ATTEMPTS", "DURATION", "CPU", "PEAK-MEM", "NODE");
  for (const auto& t : detail.tasks()) {
    // CPU seconds (user + system) and peak memory of the latest finished attempt.
    // Hundredths of a second below a minute, where they tell tasks apart; then 1m23s, 2.5h.
    std::string cpu = "-";
    std::string peak = "-";
    if (t.has_usage()) {
      const uint64_t cpu_ms = t.usage().cpu_user_ms() + uint64_t{t.usage().cpu_system_ms()};
      if (cpu_ms < 60'000) {
        char secs[16];  // "59.99s": fits
        (void)std::snprintf(secs, sizeof secs, "%.2fs", static_cast<double>(cpu_ms) / 1e3);
        cpu = secs;
      } else {
        cpu = human_duration(cpu_ms);
      }
      peak = human_bytes(uint64_t{t.usage().mem_peak_kib()} * 1024);
    }
    const auto duration = task_duration_ms(t, detail.now_ms());
    std::printf("%-12s %-11s %5d %6d %8u %8s %9s %9s  %s\n",
                (std::to_string(*job) + "." + std::to_string(t.index())).c_str(),
                task_state_text(t.state()), t.exit_code(), t.signal(), t.attempts(),
                duration ? human_duration(*duration).c_str() : "-", cpu.c_str(), peak.c_str(),
                shown(t.node()).c_str());
    // Earlier attempts under their task, indented: "  #1 lost on board-2".
    for (const auto& a : t.earlier()) {
      std::printf("  #%-9u %-11s %5d %6d %8s %8s %9s %9s  %s\n", a.attempt(),
                  task_state_text(a.state()), a.exit_code(), a.signal(), "", "", "", "",
                  shown(a.node()).c_str());
    }
  }
  return 0;
}

int cmd_logs(const ClientConfig& cfg, TaskId task, bool follow, bool stderr_stream) {
  auto c = connect(cfg);
  if (!c) return report(c.error());
  return copy_log(**c, task, stderr_stream ? pb::STDERR : pb::STDOUT, stdout, follow);
}

int cmd_cancel(const ClientConfig& cfg, uint64_t job) {
  auto c = connect(cfg);
  if (!c) return report(c.error());
  pb::Request req;
  req.mutable_cancel()->set_job_id(job);
  auto resp = call(**c, req);
  if (!resp) return report(resp.error());
  const uint32_t killed = resp->cancelled().tasks_cancelled();
  std::printf("cancelled job %llu (%u running task%s killed)\n",
              static_cast<unsigned long long>(job), killed, killed == 1 ? "" : "s");
  return 0;
}

int cmd_nodes(const ClientConfig& cfg, bool json) {
  auto c = connect(cfg);
  if (!c) return report(c.error());
  pb::Request req;
  req.mutable_list_nodes();
  auto resp = call(**c, req);
  if (!resp) return report(resp.error());
  if (json) {
    std::printf("%s\n", nodes_json(resp->nodes()).c_str());
    return 0;
  }
  // SKIP-REASON last: why a board gets no new tasks (down, draining, hot 83.0C, throttled,
  // under-voltage), "-" when it takes them.
  // LOAD: the board's 1-minute load average, as its last heartbeat read it.
  std::printf("%-16s %-8s %-8s %11s %13s %7s %7s %6s  %-10s %-18s %-10s %-22s %s\n", "NAME",
              "STATE", "ARCH", "CPU", "MEMORY", "TASKS", "TEMP", "LOAD", "ISOLATION", "ENFORCED",
              "TRANSPORT", "TASK-USER", "SKIP-REASON");
  bool plaintext = false;
  std::string root_nodes;
  for (const auto& n : resp->nodes().nodes()) {
    std::string enforced;
    for (const auto& e : n.enforced()) enforced += (enforced.empty() ? "" : ",") + e;
    // Both fit: two uint32 millis as cores, two human_bytes() of at most 14 characters.
    char cpu[32], mem[48];
    (void)std::snprintf(cpu, sizeof(cpu), "%.1f/%.1f", n.cpu_millis_used() / 1000.0,
                        n.cpu_millis() / 1000.0);
    (void)std::snprintf(mem, sizeof(mem), "%s/%s", human_bytes(n.mem_bytes_used()).c_str(),
                        human_bytes(n.mem_bytes()).c_str());
    std::string user = n.task_user().empty() ? "-" : shown(n.task_user());
    if (n.root_tasks()) user += " (root allowed)";
    const std::string temp = n.has_temperature_millicelsius()
                                 ? sched::celsius_text(n.temperature_millicelsius())
                                 : std::string("-");
    const std::string skip = n.skip_reason().empty() ? "-" : shown(n.skip_reason());
    char load[16] = "-";  // a uint32 / 1000 with two decimals: fits
    if (n.has_load1_milli()) {
      (void)std::snprintf(load, sizeof load, "%.2f", n.load1_milli() / 1000.0);
    }
    std::printf("%-16s %-8s %-8s %11s %13s %7u %7s %6s  %-10s %-18s %-10s %-22s %s\n",
                shown(n.name()).c_str(), n.state().c_str(), n.arch().c_str(), cpu, mem,
                n.running_tasks(), temp.c_str(), load, n.isolation().c_str(),
                enforced.empty() ? "none" : enforced.c_str(),
                n.transport().empty() ? "-" : n.transport().c_str(), user.c_str(), skip.c_str());
    plaintext = plaintext || n.transport() == "plaintext";
    if (n.root_tasks()) root_nodes += (root_nodes.empty() ? "" : ", ") + shown(n.name());
  }
  if (!root_nodes.empty()) {
    std::printf("warning: tasks may run as root on %s (--allow-root-tasks)\n", root_nodes.c_str());
  }
  if (plaintext) {
    std::printf(
        "warning: the pool runs --insecure: its connections are not encrypted, and anyone on "
        "the path can read and rewrite them\n");
  }
  return 0;
}

int cmd_fsck(const std::string& data_dir) {
  auto r = runtime::fsck(data_dir);
  if (!r) return error_line("fsck " + data_dir + ": " + r.error().describe(), 1);
  std::printf("%s: ok\n", data_dir.c_str());
  if (r->snapshot_seq > 0) {
    std::printf("  snapshot through record %llu: %llu jobs, %llu bytes (%u snapshots)\n",
                static_cast<unsigned long long>(r->snapshot_seq),
                static_cast<unsigned long long>(r->snapshot_jobs),
                static_cast<unsigned long long>(r->snapshot_bytes), r->snapshots);
  } else {
    std::printf("  no snapshot\n");
  }
  for (const std::string& d : r->snapshots_damaged) {
    std::printf("  damaged snapshot, an older one stands in: %s\n", d.c_str());
  }
  std::printf("  WAL: %llu records in %llu segments%s\n",
              static_cast<unsigned long long>(r->wal.records),
              static_cast<unsigned long long>(r->wal.segments),
              r->snapshot_seq > 0 ? " after the snapshot" : "");
  if (r->wal.torn_tail_bytes > 0) {
    std::printf(
        "  torn tail: %llu bytes at %s (the last write, never acknowledged; the next "
        "start drops it)\n",
        static_cast<unsigned long long>(r->wal.torn_tail_bytes), r->wal.torn_tail_at.c_str());
  }
  return 0;
}

int cmd_salvage(const std::string& data_dir) {
  auto r = runtime::salvage(data_dir);
  if (!r) return error_line("fsck --salvage " + data_dir + ": " + r.error().describe(), 1);
  if (!r->damaged) {
    std::printf("%s: no corruption; nothing changed\n", data_dir.c_str());
    return 0;
  }
  std::printf("%s: %s\n", data_dir.c_str(), r->damage.c_str());
  std::printf("  kept %llu records; set aside %llu records (%llu bytes) in %s\n",
              static_cast<unsigned long long>(r->records_kept),
              static_cast<unsigned long long>(r->records_set_aside),
              static_cast<unsigned long long>(r->bytes_set_aside), r->aside_dir.c_str());
  return 0;
}

}  // namespace cardnode::cli
