#include "runtime/server.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <set>
#include <unordered_map>
#include <utility>
#include <vector>

#include "cardnode.pb.h"
#include "net/handshake.h"
#include "net/rpc_server.h"
#include "runtime/executor.h"
#include "runtime/isolation.h"
#include "runtime/log.h"
#include "runtime/metrics.h"
#include "runtime/node_facts.h"
#include "runtime/state.h"
#include "storage/io_engine.h"
#include "storage/log_store.h"
#include "storage/wal.h"

namespace cardnode::runtime {
namespace {

constexpr uint32_t kPlacementsPerTurn = 64;    // then yield to the loop
constexpr uint32_t kWaitersMax = 4096;         // clients blocked in WaitJob
constexpr uint32_t kJobsListedMax = 10'000;    // newest jobs in one ListJobs reply
constexpr uint32_t kTasksListedMax = 100'000;  // tasks in one GetJob reply (< frame bound)
// Cancel, timeout and stop send SIGTERM to the task's process group, then SIGKILL to the
// whole tree after this grace: Nomad's kill_timeout default (Slurm's KillWait is 30 s).
constexpr uint64_t kKillGraceMs = 5'000;
constexpr uint64_t kShutdownGraceMs = 10'000;  // > kKillGraceMs: tasks get their grace
constexpr uint64_t kMetricsRefreshMs = 1000;
constexpr uint32_t kLeftoverScanMax = 65536;  // pids killed by the environment scan at start

uint64_t wall_ms() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

// Creates the directory and its parents; the last one gets `mode` if it is new, so an
// operator's own permissions on an existing data dir are kept.
Status make_dirs(const std::string& path, std::filesystem::perms mode) {
  std::error_code ec;
  if (!std::filesystem::create_directories(path, ec)) {
    if (ec) return fail_errno(ec.value(), "create directory " + path);
    return {};
  }
  std::filesystem::permissions(path, mode, ec);
  if (ec) return fail_errno(ec.value(), "chmod " + path);
  return {};
}

// Written once per start, so a plain write + rename (atomic for readers) is enough.
Status write_file_atomic(const std::string& path, const std::string& content) {
  std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return fail_errno(errno, "create " + tmp);
  ssize_t n = ::write(fd, content.data(), content.size());
  int err = errno;
  ::close(fd);
  if (n != static_cast<ssize_t>(content.size())) return fail_errno(err, "write " + tmp);
  if (::rename(tmp.c_str(), path.c_str()) != 0) return fail_errno(errno, "rename " + tmp);
  return {};
}

pb::ErrorCode to_wire(Errc code) {
  return static_cast<pb::ErrorCode>(code);
}

pb::Response error_response(Errc code, const std::string& message) {
  pb::Response r;
  r.set_error(to_wire(code));
  r.set_error_message(message);
  return r;
}

// Task groups live under a parent named for the data dir, so two servers on one machine
// (tests, or two pools) never kill each other's leftovers. FNV-1a: stable across builds.
std::string cgroup_parent_name(const std::string& data_dir) {
  char real[PATH_MAX];
  std::string path = ::realpath(data_dir.c_str(), real) ? real : data_dir;
  uint32_t h = 2166136261u;
  for (unsigned char c : path) h = (h ^ c) * 16777619u;
  char name[32];
  std::snprintf(name, sizeof(name), "cardnode-%08x", h);
  return name;
}

}  // namespace

struct Server::Impl {
  ServerOptions options;
  uv_loop_t loop{};
  int lock_fd = -1;
  std::string token;

  std::unique_ptr<storage::IoEngine> engine;
  std::unique_ptr<storage::Wal> wal;
  std::unique_ptr<storage::LogStore> logs;
  Isolation isolation;
  std::unique_ptr<Executor> executor;
  std::unique_ptr<net::RpcServer> rpc;
  std::unique_ptr<Metrics> metrics;
  State state;
  NodeFacts facts;
  sched::NodeId local_node = 0;
  bool has_local_node = false;
  std::string node_name;
  std::string work_dir;
  std::string pool_tag;  // "cardnode-<hash of data dir>": cgroup parent and task env tag

  uv_poll_t io_poll{};
  uv_signal_t sigint{}, sigterm{};
  uv_idle_t schedule_idle{};
  uv_timer_t metrics_timer{};
  uv_timer_t shutdown_timer{};
  bool schedule_pending = false;
  bool stopping = false;
  uint64_t stop_started_ms = 0;
  int exit_code = 0;

  sched::JobId next_job_id = 1;
  uint64_t wal_records = 0;
  uint64_t replay_apply_errors = 0;
  std::set<sched::TaskRef> awaiting_spawn;  // placed, TaskStarted not yet durable
  std::unordered_map<sched::JobId, std::vector<net::Responder>> waiters;
  uint32_t waiter_count = 0;

  // --- startup --------------------------------------------------------------------
  Status open_data_dir();
  Status open_storage();
  Status replay();
  void recover_running_tasks();
  Status start_listeners();
  void start_loop_handles();

  // --- the one path for state changes ---------------------------------------------
  void record(const pb::WalRecord& rec, std::function<void()> on_durable);
  // For client requests: a full or failed WAL refuses the request instead.
  [[nodiscard]] Status try_record(const pb::WalRecord& rec, std::function<void()> on_durable);
  Applied apply_live(const pb::WalRecord& rec);
  void fatal(const Error& e);

  // --- scheduling and tasks -------------------------------------------------------
  void schedule_soon();
  void schedule();
  void spawn(sched::TaskRef t, uint32_t attempt);
  void finish_task(sched::TaskRef t, pb::TaskState state, int32_t exit_code, int32_t signal);
  void notify_finished(const std::vector<sched::JobId>& jobs);
  TaskLaunch make_launch(sched::TaskRef t, uint32_t attempt) const;

  // --- API ------------------------------------------------------------------------
  void handle(pb::Request&& req, net::Responder responder);
  void on_submit(const pb::SubmitJob& m, net::Responder r);
  void on_cancel(const pb::CancelJob& m, net::Responder r);
  void on_wait(const pb::WaitJob& m, net::Responder r);
  void on_read_log(const pb::ReadLog& m, net::Responder r);
  pb::JobSummary summary(const sched::Job& job) const;
  pb::JobDetail detail(const sched::Job& job) const;
  pb::NodeList node_list() const;

  // --- metrics and shutdown -------------------------------------------------------
  void refresh_metrics();
  void begin_stop(const char* why);
  void shutdown_tick();
  void close_handles();
};

// ---------------------------------------------------------------------------- startup

Status Server::Impl::open_data_dir() {
  if (auto st = make_dirs(options.data_dir, std::filesystem::perms::owner_all); !st) return st;
  std::string lock_path = options.data_dir + "/lock";
  lock_fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd < 0) return fail_errno(errno, "open " + lock_path);
  if (::flock(lock_fd, LOCK_EX | LOCK_NB) != 0)
    return fail(Errc::kUnavailable,
                "another cardnode server is using data dir " + options.data_dir);
  auto tok = net::create_token_if_missing(options.data_dir + "/token");
  if (!tok) return std::unexpected(tok.error());
  token = *tok;
  if (options.log_dir.empty()) options.log_dir = options.data_dir + "/logs";
  work_dir = options.data_dir + "/work";
  for (const std::string& d : {options.log_dir, work_dir, options.data_dir + "/wal"})
    if (auto st = make_dirs(d, std::filesystem::perms(0755)); !st) return st;
  return {};
}

Status Server::Impl::open_storage() {
  std::string why;
  auto eng = storage::IoEngine::create(storage::IoOptions{}, &why);
  if (!eng) return std::unexpected(eng.error());
  engine = std::move(*eng);
  if (engine->backend() == storage::Backend::kIoUring)
    log(Level::kInfo, "storage", "io backend: io_uring");
  else
    log(Level::kWarn, "storage", "io backend: fallback (" + why + ")");
  storage::LogStoreOptions lo;
  lo.dir = options.log_dir;
  logs = std::make_unique<storage::LogStore>(*engine, lo);
  return {};
}

Status Server::Impl::replay() {
  storage::WalOptions wo;
  wo.dir = options.data_dir + "/wal";
  auto on_record = [this](std::string_view payload) -> Status {
    pb::WalRecord rec;
    if (!rec.ParseFromArray(payload.data(), static_cast<int>(payload.size())))
      return fail(Errc::kCorruption, "WAL record does not parse");
    // Live apply made the same call with the same result; an error then was an error
    // then too (e.g. a limit hit between check and apply), so replay goes on.
    if (auto a = state.apply(rec); !a) ++replay_apply_errors;
    return {};
  };
  storage::ReplayStats stats;
  auto w = storage::Wal::open(*engine, wo, on_record, &stats);
  if (!w) return std::unexpected(w.error());
  wal = std::move(*w);
  next_job_id = state.cluster().last_job_id() + 1;
  log(Level::kInfo, "storage",
      "replayed " + std::to_string(stats.records) + " WAL records from " +
          std::to_string(stats.segments) + " segments (" + std::to_string(stats.torn_tail_bytes) +
          " torn tail bytes dropped, " + std::to_string(replay_apply_errors) + " rejected)");
  return {};
}

// Tasks the WAL says are running died with the previous server (their cgroups were
// emptied at startup): kill any survivor found by pid, then requeue them as lost.
void Server::Impl::recover_running_tasks() {
  std::vector<sched::TaskRef> running;
  for (const auto& [id, job] : state.cluster().jobs()) {
    if (job.state_counts[static_cast<size_t>(sched::TaskState::kRunning)] == 0) continue;
    for (uint32_t i = 0; i < job.tasks.size(); ++i)
      if (job.tasks[i].state == sched::TaskState::kRunning) running.push_back({id, i});
  }
  for (const auto& [task, pid] : state.spawned()) {
    auto ticks = process_start_ticks(pid.pid);
    if (ticks && *ticks == pid.start_ticks) ::kill(-pid.pid, SIGKILL);
  }
  // Without cgroups, a task that left its process group, or one spawned just before the
  // crash (its pid not yet in the WAL), is still found by the tag in its environment.
  for (int32_t pid : pids_with_env(task_key_prefix(pool_tag), /*prefix=*/true, kLeftoverScanMax))
    ::kill(pid, SIGKILL);
  for (const auto& t : running) finish_task(t, pb::TASK_LOST, 0, 0);
  if (!running.empty())
    log(Level::kInfo, "server",
        "requeued " + std::to_string(running.size()) + " tasks that were running at the last stop");
}

Status Server::Impl::start_listeners() {
  net::RpcServerOptions ro;
  ro.listen = options.listen;
  rpc = std::make_unique<net::RpcServer>(
      &loop, token, ro, [this](pb::Request&& req, net::Responder r) { handle(std::move(req), r); });
  auto bound = rpc->start();
  if (!bound) return std::unexpected(bound.error());
  auto m = Metrics::start(options.metrics_listen);
  if (!m) return std::unexpected(m.error());
  metrics = std::move(*m);
  metrics->set_info(facts.arch, storage::backend_name(engine->backend()),
                    isolation_name(isolation.info().mode));
  metrics->set_tasks(state.task_totals());
  if (auto st = write_file_atomic(options.data_dir + "/addr", *bound + "\n"); !st) return st;
  if (auto st =
          write_file_atomic(options.data_dir + "/metrics_addr", metrics->bound_address() + "\n");
      !st)
    return st;
  log(Level::kInfo, "server",
      "listening on " + *bound + ", metrics on " + metrics->bound_address() + ", data dir " +
          options.data_dir);
  return {};
}

void Server::Impl::start_loop_handles() {
  uv_poll_init(&loop, &io_poll, engine->completion_fd());
  io_poll.data = this;
  uv_poll_start(&io_poll, UV_READABLE, [](uv_poll_t* h, int, int) {
    auto* self = static_cast<Impl*>(h->data);
    self->engine->reap();
    self->refresh_metrics();  // a few counter adds: keeps /metrics current, no timer lag
  });
  for (uv_signal_t* s : {&sigint, &sigterm}) {
    uv_signal_init(&loop, s);
    s->data = this;
  }
  uv_signal_start(
      &sigint, [](uv_signal_t* h, int) { static_cast<Impl*>(h->data)->begin_stop("SIGINT"); },
      SIGINT);
  uv_signal_start(
      &sigterm, [](uv_signal_t* h, int) { static_cast<Impl*>(h->data)->begin_stop("SIGTERM"); },
      SIGTERM);
  uv_idle_init(&loop, &schedule_idle);
  schedule_idle.data = this;
  // Metrics refresh wakes the loop once a second but writes nothing (guarantee 5).
  uv_timer_init(&loop, &metrics_timer);
  metrics_timer.data = this;
  uv_timer_start(
      &metrics_timer, [](uv_timer_t* h) { static_cast<Impl*>(h->data)->refresh_metrics(); },
      kMetricsRefreshMs, kMetricsRefreshMs);
  uv_timer_init(&loop, &shutdown_timer);
  shutdown_timer.data = this;
}

// ------------------------------------------------------------- the path of a change

void Server::Impl::fatal(const Error& e) {
  log(Level::kError, "storage", "cannot write the WAL, stopping: " + e.describe());
  exit_code = 1;
  begin_stop("storage failure");
}

Status Server::Impl::try_record(const pb::WalRecord& rec, std::function<void()> on_durable) {
  std::string bytes = rec.SerializeAsString();
  auto st = wal->append(bytes, [this, cb = std::move(on_durable)](Status s) {
    if (!s) {
      fatal(s.error());
      return;
    }
    cb();
  });
  if (st) ++wal_records;
  return st;
}

// For events that already happened (a placement made, a process exited): if they cannot
// be logged, the server cannot keep its promises, so it stops.
void Server::Impl::record(const pb::WalRecord& rec, std::function<void()> on_durable) {
  if (auto st = try_record(rec, std::move(on_durable)); !st) fatal(st.error());
}

Applied Server::Impl::apply_live(const pb::WalRecord& rec) {
  auto a = state.apply(rec);
  // Live events are checked before they are logged; a failure here is our bug.
  if (!a) {
    log(Level::kError, "server", "apply failed: " + a.error().describe());
    CARDNODE_CHECK(false);
  }
  if (metrics) metrics->set_tasks(state.task_totals());
  return std::move(*a);
}

// --------------------------------------------------------------- scheduling and tasks

void Server::Impl::schedule_soon() {
  if (schedule_pending || stopping || !has_local_node) return;
  schedule_pending = true;
  uv_idle_start(&schedule_idle, [](uv_idle_t* h) {
    auto* self = static_cast<Impl*>(h->data);
    uv_idle_stop(h);
    self->schedule_pending = false;
    self->schedule();
  });
}

void Server::Impl::schedule() {
  if (stopping) return;
  auto plan = state.cluster().plan(kPlacementsPerTurn);
  for (const auto& p : plan) {
    pb::WalRecord rec;
    auto* s = rec.mutable_task_started();
    s->set_job_id(p.task.job);
    s->set_index(p.task.index);
    s->set_node(state.cluster().node(p.node)->spec.name);
    s->set_attempt(p.attempt);
    s->set_started_ms(wall_ms());
    apply_live(rec);  // reserve the capacity now, so the next plan() sees it
    awaiting_spawn.insert(p.task);
    record(rec, [this, t = p.task, attempt = p.attempt] { spawn(t, attempt); });
  }
  if (plan.size() == kPlacementsPerTurn) schedule_soon();
}

TaskLaunch Server::Impl::make_launch(sched::TaskRef t, uint32_t attempt) const {
  const pb::JobSpec& spec = *state.spec(t.job);
  TaskLaunch l;
  l.job_id = t.job;
  l.index = t.index;
  l.count = spec.count();
  l.attempt = attempt;
  l.argv.assign(spec.command().begin(), spec.command().end());
  for (const auto& [k, v] : spec.env()) l.env.emplace_back(k, v);
  // The submitter's directory when this board has it (a shared or local path), else
  // DATA_DIR/work: what Slurm users expect from `sbatch` in a project folder.
  struct stat st {};
  l.cwd = (!spec.cwd().empty() && ::stat(spec.cwd().c_str(), &st) == 0 && S_ISDIR(st.st_mode))
              ? spec.cwd()
              : work_dir;
  l.limits.cpu_millis = spec.cpu_millis();
  l.limits.mem_bytes = spec.mem_bytes();
  l.timeout_ms = spec.timeout_ms();
  l.node_name = node_name;
  return l;
}

void Server::Impl::spawn(sched::TaskRef t, uint32_t attempt) {
  if (awaiting_spawn.erase(t) == 0) return;  // cancelled while its record was in flight
  if (stopping) return;                      // requeued as lost at the next start
  auto pid = executor->start(make_launch(t, attempt), [this, t](TaskExit e) {
    finish_task(t, e.state, e.exit_code, e.signal);
  });
  if (!pid) {
    // Not the command's failure (that is exit 127 from __task-exec): the board could
    // not start a process at all. Say so in the task's stderr and fail the attempt.
    storage::LogKey key{t.job, t.index, storage::Stream::kStderr};
    if (logs->open(key)) {
      logs->append(key, "cardnode: cannot start task: " + pid.error().describe() + "\n");
      logs->close(key, [](Status) {});
    }
    log(Level::kWarn, "executor",
        "cannot start task " + std::to_string(t.job) + "." + std::to_string(t.index) + ": " +
            pid.error().describe());
    finish_task(t, pb::TASK_FAILED, 127, 0);
    return;
  }
  pb::WalRecord rec;
  auto* s = rec.mutable_task_spawned();
  s->set_job_id(t.job);
  s->set_index(t.index);
  s->set_pid(*pid);
  s->set_start_ticks(process_start_ticks(*pid).value_or(0));
  apply_live(rec);
  record(rec, [] {});
}

void Server::Impl::finish_task(sched::TaskRef t, pb::TaskState st, int32_t exit_code,
                               int32_t signal) {
  pb::WalRecord rec;
  auto* f = rec.mutable_task_finished();
  f->set_job_id(t.job);
  f->set_index(t.index);
  f->set_state(st);
  f->set_exit_code(exit_code);
  f->set_signal(signal);
  f->set_finished_ms(wall_ms());
  Applied a = apply_live(rec);  // frees the capacity now
  if (metrics) metrics->task_finished(static_cast<sched::TaskState>(st));
  record(rec, [this, jobs = std::move(a.finished_jobs)] { notify_finished(jobs); });
  schedule_soon();
}

void Server::Impl::notify_finished(const std::vector<sched::JobId>& jobs) {
  for (sched::JobId id : jobs) {
    auto it = waiters.find(id);
    if (it == waiters.end()) continue;
    const sched::Job* job = state.cluster().job(id);
    for (const auto& r : it->second) {
      pb::Response resp;
      *resp.mutable_job() = detail(*job);
      r.reply(std::move(resp));
    }
    waiter_count -= static_cast<uint32_t>(it->second.size());
    waiters.erase(it);
  }
}

// ------------------------------------------------------------------------------- API

void Server::Impl::handle(pb::Request&& req, net::Responder r) {
  refresh_metrics();
  if (stopping) {
    r.reply(error_response(Errc::kUnavailable, "server is stopping"));
    return;
  }
  switch (req.body_case()) {
    case pb::Request::kSubmit: return on_submit(req.submit(), r);
    case pb::Request::kCancel: return on_cancel(req.cancel(), r);
    case pb::Request::kWaitJob: return on_wait(req.wait_job(), r);
    case pb::Request::kReadLog: return on_read_log(req.read_log(), r);
    case pb::Request::kListJobs: {
      pb::Response resp;
      auto* list = resp.mutable_jobs();
      const auto& jobs = state.cluster().jobs();
      uint32_t n = 0;
      for (auto it = jobs.rbegin(); it != jobs.rend() && n < kJobsListedMax; ++it, ++n)
        *list->add_jobs() = summary(it->second);
      std::reverse(list->mutable_jobs()->begin(), list->mutable_jobs()->end());
      return r.reply(std::move(resp));
    }
    case pb::Request::kGetJob: {
      const sched::Job* job = state.cluster().job(req.get_job().job_id());
      if (!job)
        return r.reply(
            error_response(Errc::kNotFound, "no job " + std::to_string(req.get_job().job_id())));
      pb::Response resp;
      *resp.mutable_job() = detail(*job);
      return r.reply(std::move(resp));
    }
    case pb::Request::kListNodes: {
      pb::Response resp;
      *resp.mutable_nodes() = node_list();
      return r.reply(std::move(resp));
    }
    case pb::Request::BODY_NOT_SET: break;
  }
  r.reply(error_response(Errc::kInvalidArgument, "request has no body"));
}

void Server::Impl::on_submit(const pb::SubmitJob& m, net::Responder r) {
  pb::JobSpec spec = m.spec();
  if (auto st = state.normalize(&spec); !st)
    return r.reply(error_response(st.error().code, st.error().message));
  if (!has_local_node)
    log(Level::kWarn, "server", "job accepted but no node can run it (--no-exec, no agents)");
  pb::WalRecord rec;
  auto* s = rec.mutable_job_submitted();
  const sched::JobId id = next_job_id++;
  s->set_job_id(id);
  *s->mutable_spec() = std::move(spec);
  s->set_submitted_ms(wall_ms());
  auto st = try_record(rec, [this, rec, r, id] {
    auto a = state.apply(rec);
    if (!a) return r.reply(error_response(Errc::kResourceExhausted, a.error().message));
    metrics->set_tasks(state.task_totals());
    metrics->job_submitted();
    pb::Response resp;
    resp.mutable_submitted()->set_job_id(id);
    r.reply(std::move(resp));
    notify_finished(a->finished_jobs);
    schedule_soon();
  });
  if (!st) {
    --next_job_id;  // nothing was queued: the id is free again
    r.reply(error_response(Errc::kUnavailable, "cannot log the job: " + st.error().describe()));
  }
}

void Server::Impl::on_cancel(const pb::CancelJob& m, net::Responder r) {
  const sched::Job* job = state.cluster().job(m.job_id());
  if (!job) return r.reply(error_response(Errc::kNotFound, "no job " + std::to_string(m.job_id())));
  if (sched::is_final(job->state)) {  // nothing to change, so nothing to write
    pb::Response resp;
    resp.mutable_cancelled()->set_tasks_cancelled(0);
    return r.reply(std::move(resp));
  }
  pb::WalRecord rec;
  rec.mutable_job_cancelled()->set_job_id(m.job_id());
  rec.mutable_job_cancelled()->set_cancelled_ms(wall_ms());
  auto st = try_record(rec, [this, rec, r] {
    Applied a = apply_live(rec);
    for (const auto& t : a.to_kill) {
      if (awaiting_spawn.erase(t) != 0)
        finish_task(t, pb::TASK_CANCELLED, 0, 0);  // never started: nothing to kill
      else
        executor->kill(t.job, t.index, KillReason::kCancelled);
    }
    pb::Response resp;
    resp.mutable_cancelled()->set_tasks_cancelled(static_cast<uint32_t>(a.to_kill.size()));
    r.reply(std::move(resp));
    notify_finished(a.finished_jobs);
  });
  if (!st)
    r.reply(error_response(Errc::kUnavailable, "cannot log the cancel: " + st.error().describe()));
}

void Server::Impl::on_wait(const pb::WaitJob& m, net::Responder r) {
  const sched::Job* job = state.cluster().job(m.job_id());
  if (!job) return r.reply(error_response(Errc::kNotFound, "no job " + std::to_string(m.job_id())));
  if (sched::is_final(job->state)) {
    pb::Response resp;
    *resp.mutable_job() = detail(*job);
    return r.reply(std::move(resp));
  }
  if (waiter_count >= kWaitersMax)
    return r.reply(error_response(Errc::kResourceExhausted, "too many clients waiting"));
  waiters[m.job_id()].push_back(r);
  ++waiter_count;
}

void Server::Impl::on_read_log(const pb::ReadLog& m, net::Responder r) {
  const sched::Job* job = state.cluster().job(m.job_id());
  if (!job || m.index() >= job->tasks.size())
    return r.reply(error_response(Errc::kNotFound, "no task " + std::to_string(m.job_id()) + "." +
                                                       std::to_string(m.index())));
  const bool final = sched::is_final(job->tasks[m.index()].state);
  const bool started = job->tasks[m.index()].attempts > 0;
  if (!started) {
    pb::Response resp;
    resp.mutable_log()->set_next_offset(m.offset());
    resp.mutable_log()->set_final(final);
    return r.reply(std::move(resp));
  }
  storage::LogKey key{
      m.job_id(), m.index(),
      m.stream() == pb::STDERR ? storage::Stream::kStderr : storage::Stream::kStdout};
  uint32_t max = m.max_bytes() == 0 ? (1u << 20) : std::min<uint32_t>(m.max_bytes(), 1u << 20);
  logs->read(key, m.offset(), max, [r, final, offset = m.offset()](Result<std::string> data) {
    pb::Response resp;
    if (!data && data.error().code != Errc::kNotFound)
      return r.reply(error_response(data.error().code, data.error().describe()));
    std::string bytes = data ? std::move(*data) : std::string();
    auto* chunk = resp.mutable_log();
    chunk->set_next_offset(offset + bytes.size());
    chunk->set_final(final && bytes.empty());
    chunk->set_data(std::move(bytes));
    r.reply(std::move(resp));
  });
}

pb::JobSummary Server::Impl::summary(const sched::Job& job) const {
  pb::JobSummary s;
  s.set_id(job.id);
  s.set_name(job.spec.name);
  s.set_state(static_cast<pb::JobState>(job.state));
  s.set_priority(job.spec.priority);
  s.set_count(job.spec.count);
  for (size_t i = 0; i < sched::kTaskStateCount; ++i)
    if (job.state_counts[i] > 0)
      (*s.mutable_states())[sched::task_state_name(static_cast<sched::TaskState>(i))] =
          job.state_counts[i];
  if (const pb::JobSpec* spec = state.spec(job.id)) *s.mutable_command() = spec->command();
  return s;
}

pb::JobDetail Server::Impl::detail(const sched::Job& job) const {
  pb::JobDetail d;
  *d.mutable_job() = summary(job);
  const uint32_t n = std::min<uint32_t>(static_cast<uint32_t>(job.tasks.size()), kTasksListedMax);
  for (uint32_t i = 0; i < n; ++i) {
    const sched::Task& t = job.tasks[i];
    auto* ti = d.add_tasks();
    ti->set_index(i);
    ti->set_state(static_cast<pb::TaskState>(t.state));
    ti->set_exit_code(t.exit_code);
    ti->set_signal(t.signal);
    ti->set_attempts(t.attempts);
    if (t.attempts > 0) {
      if (const sched::Node* node = state.cluster().node(t.node)) ti->set_node(node->spec.name);
    }
  }
  return d;
}

pb::NodeList Server::Impl::node_list() const {
  pb::NodeList list;
  for (const sched::Node& n : state.cluster().nodes()) {
    auto* ni = list.add_nodes();
    ni->set_name(n.spec.name);
    ni->set_state(sched::node_state_name(n.state));
    ni->set_cpu_millis(n.spec.capacity.cpu_millis);
    ni->set_mem_bytes(n.spec.capacity.mem_bytes);
    ni->set_cpu_millis_used(n.used.cpu_millis);
    ni->set_mem_bytes_used(n.used.mem_bytes);
    ni->set_running_tasks(n.running);
    for (const auto& [k, v] : n.spec.labels) (*ni->mutable_labels())[k] = v;
    if (has_local_node && n.id == local_node) {
      ni->set_arch(facts.arch);
      ni->set_isolation(isolation_name(isolation.info().mode));
      for (const auto& e : isolation.info().enforced) ni->add_enforced(e);
      ni->set_io_backend(storage::backend_name(engine->backend()));
    }
  }
  return list;
}

// ----------------------------------------------------------------- metrics, shutdown

void Server::Impl::refresh_metrics() {
  if (!metrics) return;
  MetricSources s;
  const auto& io = engine->stats();
  s.storage_bytes_written = io.bytes_written;
  s.storage_fsyncs = io.fsyncs;
  s.wal_records = wal_records;
  s.log_bytes_dropped = logs->stats().bytes_dropped;
  const auto& ns = rpc->stats();
  s.net_accepted = ns.accepted;
  s.net_rejected_auth = ns.rejected_auth;
  s.net_rejected_protocol = ns.rejected_protocol;
  s.net_rejected_limit = ns.rejected_limit;
  s.net_requests = ns.requests;
  metrics->refresh(s);
  if (has_local_node) {
    const sched::Node* n = state.cluster().node(local_node);
    metrics->set_node(n->used.cpu_millis, n->used.mem_bytes, n->running);
  }
}

void Server::Impl::begin_stop(const char* why) {
  if (stopping) return;
  stopping = true;
  stop_started_ms = uv_now(&loop);
  log(Level::kInfo, "server", std::string("stopping (") + why + ")");
  rpc->stop();
  for (auto& [id, rs] : waiters)
    for (const auto& r : rs) r.reply(error_response(Errc::kUnavailable, "server is stopping"));
  waiters.clear();
  waiter_count = 0;
  // Killed tasks report as lost and run again after the next start.
  if (executor) executor->kill_all();
  uv_timer_start(
      &shutdown_timer, [](uv_timer_t* h) { static_cast<Impl*>(h->data)->shutdown_tick(); }, 0, 20);
}

void Server::Impl::shutdown_tick() {
  const bool tasks_done = !executor || executor->running() == 0;
  const bool wal_done = wal->pending_records() == 0 || wal->failed();
  const bool overdue = uv_now(&loop) - stop_started_ms > kShutdownGraceMs;
  if (!((tasks_done && wal_done) || overdue)) return;
  if (overdue) log(Level::kWarn, "server", "shutdown grace exceeded; closing anyway");
  close_handles();
}

void Server::Impl::close_handles() {
  uv_timer_stop(&shutdown_timer);
  for (uv_handle_t* h :
       {reinterpret_cast<uv_handle_t*>(&io_poll), reinterpret_cast<uv_handle_t*>(&sigint),
        reinterpret_cast<uv_handle_t*>(&sigterm), reinterpret_cast<uv_handle_t*>(&schedule_idle),
        reinterpret_cast<uv_handle_t*>(&metrics_timer),
        reinterpret_cast<uv_handle_t*>(&shutdown_timer)})
    if (!uv_is_closing(h)) uv_close(h, nullptr);
}

// ------------------------------------------------------------------------- Server

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Server::~Server() {
  if (!impl_) return;
  impl_->rpc.reset();
  if (impl_->executor && impl_->executor->running() > 0) {
    // The shutdown grace ran out with processes still being reaped. The Executor may
    // not be destroyed with live handles; the process is exiting, so let it go.
    log(Level::kWarn, "server",
        "exiting with " + std::to_string(impl_->executor->running()) + " tasks not yet reaped");
    (void)impl_->executor.release();
  } else if (impl_->executor) {
    impl_->executor.reset();
    impl_->isolation.destroy_parent();  // clean stop: no task left, remove our cgroups
  }
  uv_loop_close(&impl_->loop);
  if (impl_->lock_fd >= 0) ::close(impl_->lock_fd);
}

Result<std::unique_ptr<Server>> Server::open(ServerOptions options) {
  auto impl = std::make_unique<Impl>();
  Impl& s = *impl;
  s.options = std::move(options);
  if (int rc = uv_loop_init(&s.loop); rc != 0)
    return fail(Errc::kInternal, std::string("uv_loop_init: ") + uv_strerror(rc));
  std::unique_ptr<Server> server(new Server(std::move(impl)));
  if (auto st = s.open_data_dir(); !st) return std::unexpected(st.error());
  if (auto st = s.open_storage(); !st) return std::unexpected(st.error());
  s.facts = read_node_facts();
  s.node_name = s.options.node_name.empty() ? s.facts.hostname : s.options.node_name;
  if (s.options.exec) {
    s.pool_tag = cgroup_parent_name(s.options.data_dir);
    s.isolation = Isolation::probe("/sys/fs/cgroup", s.pool_tag, s.options.disable_cgroups);
    uint32_t stale = s.isolation.destroy_all_groups();
    if (stale > 0)
      log(Level::kInfo, "executor", "killed " + std::to_string(stale) + " leftover task groups");
    std::string enforced;
    for (const auto& e : s.isolation.info().enforced) enforced += (enforced.empty() ? "" : ",") + e;
    log(Level::kInfo, "executor",
        std::string("isolation: ") + isolation_name(s.isolation.info().mode) +
            " (enforced: " + (enforced.empty() ? "none" : enforced) + ")");
    sched::NodeSpec ns;
    ns.name = s.node_name;
    ns.capacity = {s.facts.cpu_millis, s.facts.mem_bytes};
    ns.labels = s.options.labels;
    ns.labels["arch"] = s.facts.arch;
    auto id = s.state.cluster().add_node(ns);
    if (!id) return fail(Errc::kInternal, sched_error_text(id.error()));
    s.local_node = *id;
    s.has_local_node = true;
    ExecutorOptions eo;
    eo.pool_tag = s.pool_tag;
    eo.kill_grace_ms = kKillGraceMs;
    if (s.options.task_exec_program.empty()) {
      char self[PATH_MAX] = {};
      ssize_t n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
      if (n <= 0) return fail_errno(errno, "readlink /proc/self/exe");
      eo.task_exec_program.assign(self, static_cast<size_t>(n));
    } else {
      eo.task_exec_program = s.options.task_exec_program;
    }
    s.executor = std::make_unique<Executor>(&s.loop, *s.logs, s.isolation, eo);
  }
  if (auto st = s.replay(); !st) return std::unexpected(st.error());
  if (auto st = s.start_listeners(); !st) return std::unexpected(st.error());
  s.start_loop_handles();
  if (s.has_local_node) s.recover_running_tasks();
  s.schedule_soon();
  return server;
}

int Server::run() {
  uv_run(&impl_->loop, UV_RUN_DEFAULT);
  if (impl_->wal) impl_->wal->drain();
  log(Level::kInfo, "server", "stopped");
  return impl_->exit_code;
}

}  // namespace cardnode::runtime
