#include "runtime/agent/agent.h"

#include <signal.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <deque>
#include <mutex>
#include <optional>
#include <set>

#include "net/rpc_client.h"
#include "runtime/agent/agent_journal.h"
#include "runtime/board_metrics.h"
#include "runtime/data_dir.h"
#include "runtime/exec/cgroup_mode.h"
#include "runtime/exec/executor.h"
#include "runtime/exec/isolation.h"
#include "runtime/fd_limit.h"
#include "runtime/log.h"
#include "runtime/node_facts.h"
#include "storage/io_engine.h"
#include "storage/log_store.h"

namespace cardnode::runtime {
namespace {

constexpr uint64_t kKillGraceMs = 5'000;       // as the server's executor
constexpr uint64_t kShutdownGraceMs = 10'000;  // > kKillGraceMs
constexpr uint64_t kReportRetryMs = 1'000;     // an end the server refused: try again
constexpr uint64_t kLogWaitTickMs = 100;       // held log reads look for new bytes this often
constexpr uint32_t kReportBatchMax = 512;      // ends per AgentReport
constexpr uint32_t kHeldLogReadsMax = 1024;
constexpr uint32_t kLeftoverScanMax = 65536;
constexpr uint64_t kRpcTimeoutMs = 30'000;
constexpr uint64_t kHelloRetryFirstMs = 500;   // a refused hello is tried again, slower each
constexpr uint64_t kHelloRetryMaxMs = 10'000;  //   time (a second board with our identity)

KillReason kill_reason(pb::StopReason r) {
  switch (r) {
    case pb::STOP_CANCELLED: return KillReason::kCancelled;
    case pb::STOP_TIMED_OUT: return KillReason::kTimedOut;
    default: return KillReason::kShutdown;
  }
}

// How an attempt stopped before its process started ends: as the executor reports a kill.
TaskExit unspawned_exit(KillReason r) {
  switch (r) {
    case KillReason::kCancelled: return TaskExit{pb::TASK_CANCELLED, 0, 0};
    case KillReason::kTimedOut: return TaskExit{pb::TASK_TIMED_OUT, 0, 0};
    case KillReason::kShutdown: return TaskExit{pb::TASK_LOST, 0, 0, true};
  }
  return TaskExit{pb::TASK_CANCELLED, 0, 0};
}

pb::TaskOutcome outcome_of(const pb::TaskAttempt& a, const TaskExit& e) {
  pb::TaskOutcome o;
  *o.mutable_task() = a;
  o.set_state(e.state);
  o.set_exit_code(e.exit_code);
  o.set_signal(e.signal);
  o.set_requeue_free(e.requeue_free);
  *o.mutable_usage() = usage_to_pb(e.usage);
  return o;
}

}  // namespace

// One per process, its fields grouped by what they serve: 32 bytes of padding do not matter.
struct Agent::Impl {  // NOLINT(clang-analyzer-optin.performance.Padding)
  AgentOptions options;
  uv_loop_t loop{};
  std::optional<DataDir> dir;
  std::unique_ptr<storage::IoEngine> engine;
  std::unique_ptr<storage::LogStore> logs;
  std::unique_ptr<AgentJournal> journal;
  Isolation isolation;
  TaskUsers task_users;
  std::unique_ptr<Executor> executor;
  std::unique_ptr<net::RpcClient> client;
  NodeFacts facts;
  std::string heat_root;  // options.sysfs_root, else $CARDNODE_SYSFS_ROOT, else "/"
  std::string name;

  // Session
  uint64_t session = 0;  // 0: none (not connected, or hello not answered yet)
  bool hello_in_flight = false;
  bool poll_in_flight = false;
  bool report_in_flight = false;
  uint64_t heartbeat_ms = 0;
  Errc last_down = Errc::kOk;  // the last connection failure's kind, to log changes only

  // Attempts running here (by job and index: one attempt of a task at a time), from the
  // moment their start arrives: a start is journaled before it spawns, and a hello in that
  // window must still list it (else the server reruns it elsewhere while it starts here).
  std::map<std::pair<uint64_t, uint32_t>, pb::TaskAttempt> running;
  // What each of them reserved (cpu millis, memory bytes): for /metrics. Same keys as running.
  std::map<std::pair<uint64_t, uint32_t>, std::pair<uint32_t, uint64_t>> reserved;
  // Starts not spawned yet: journaling (nothing to signal), or waiting for an older attempt
  // of the same task that is still being killed here. A stop for one ends it unspawned.
  std::set<AttemptKey> journaling;  // started, the record not durable yet: not spawned
  uint32_t ends_journaling = 0;     // ends whose record is not durable yet: not in the outbox
  bool journal_failed = false;      // its records in flight never become durable
  std::map<AttemptKey, KillReason> stopped_before_spawn;
  std::map<std::pair<uint64_t, uint32_t>, pb::TaskStart> held;  // behind an older attempt
  uint64_t incarnation = 0;     // this process's: tells a reconnect from a second board
  std::set<AttemptKey> silent;  // stopped as not ours: their end is not reported
  std::map<AttemptKey, pb::TaskOutcome> outbox;  // ends journaled, not acknowledged

  struct HeldRead {
    pb::LogFetch fetch;
    uint64_t deadline;
  };
  std::deque<HeldRead> held_reads;

  std::unique_ptr<BoardMetrics> metrics;  // null without --metrics-listen

  uv_poll_t io_poll{};
  uv_signal_t sigint{}, sigterm{}, sighup{};
  // request_stop() from another thread: uv_async_send is the one libuv call that may come
  // from there. The mutex keeps it off the handle once close_handles() closed it.
  uv_async_t stop_async{};
  std::mutex stop_async_mu;
  bool stop_async_open = false;
  uv_timer_t heartbeat_timer{}, report_timer{}, log_timer{}, journal_timer{}, shutdown_timer{},
      hello_timer{};
  uint64_t hello_retry_ms = 0;  // after a refused hello: grows to kHelloRetryMaxMs
  bool stopping = false;
  uint64_t stop_started_ms = 0;
  int exit_code = 0;

  Status open();
  void recover_journal();
  void start_handles();
  pb::NodeFacts node_facts() const;

  void on_up();
  void on_down(const Error& e);
  void send_hello();
  void on_welcome(const pb::AgentWelcome& w);
  void send_poll();
  void on_work(const pb::AgentWork& work);
  void start_task(const pb::TaskStart& s);
  void spawn(const pb::TaskStart& s);
  void start_held(std::pair<uint64_t, uint32_t> task);
  void retry_hello_later(const std::string& why);
  void task_exited(const pb::TaskAttempt& a, TaskExit e);
  void send_report();
  void send_heartbeat();
  Status start_metrics();
  void refresh_metrics();
  void serve_log(const pb::LogFetch& f, bool may_hold);
  void check_held_reads();
  void reset_session();

  void begin_stop(const char* why);
  void shutdown_tick();
  void close_handles();
};

// ---------------------------------------------------------------------------- start-up

Status Agent::Impl::open() {
  raise_open_files_limit();  // each running task holds pipes and cgroup files
  // Before the data dir exists: a wrong user is the operator's typo.
  auto users = resolve_task_users(options.task_users);
  if (!users) return std::unexpected(users.error());
  task_users = std::move(*users);
  while (incarnation == 0) {
    if (::getrandom(&incarnation, sizeof incarnation, 0) !=
        static_cast<ssize_t>(sizeof incarnation)) {
      return fail_errno(errno, "getrandom");
    }
  }
  auto d = DataDir::open(options.data_dir, options.log_dir, /*make_token=*/false);
  if (!d) return std::unexpected(d.error());
  dir.emplace(std::move(*d));
  std::string why;
  auto eng = storage::IoEngine::create(storage::IoOptions{}, &why);
  if (!eng) return std::unexpected(eng.error());
  engine = std::move(*eng);
  logs =
      std::make_unique<storage::LogStore>(*engine, storage::LogStoreOptions{.dir = dir->log_dir()});
  auto j = AgentJournal::open(*engine, dir->path() + "/journal");
  if (!j) return std::unexpected(j.error());
  journal = std::move(*j);
  journal->on_failure([this](const Error& e) {
    log(Level::kError, "agent", "cannot write the journal, stopping: " + e.describe());
    journal_failed = true;
    exit_code = 1;
    begin_stop("journal failure");
  });
  facts = read_node_facts();
  heat_root = options.sysfs_root.empty() ? sysfs_root() : options.sysfs_root;
  name = options.node_name.empty() ? facts.hostname : options.node_name;
  const std::string pool_tag = pool_group_name(options.data_dir);
  isolation = Isolation::probe("/sys/fs/cgroup", pool_tag, options.disable_cgroups);
  if (options.favor_dynmods && isolation.info().mode != IsolationMode::kRlimit)
    log(Level::kInfo, "agent", describe(favor_dynamic_moves()));
  ExecutorOptions eo;
  eo.pool_tag = pool_tag;
  eo.warn = [](const std::string& line) { log(Level::kWarn, "executor", line); };
  eo.kill_grace_ms = kKillGraceMs;
  eo.running_max = options.tasks_max;
  eo.users = task_users;
  eo.fallback_cwd = dir->work_dir();
  log(Level::kInfo, "agent", "tasks run as " + describe_task_user(task_users));
  executor = std::make_unique<Executor>(&loop, *logs, isolation, eo);
  recover_journal();
  net::RpcClientOptions co;
  co.address = options.join;
  auto security =
      net::SecurityContext::create(options.security, net::SecurityContext::Role::kClient);
  if (!security) return std::unexpected(security.error());
  co.security = *security;
  // Reconnect well within the server's grace (10 s by default): after a server restart the
  // agent must be back before its tasks would be declared lost. Cheap at pool sizes of
  // boards: 1,000 agents at one attempt per 2 s is 500 connects/s at most.
  co.backoff_first_ms = 100;
  co.backoff_max_ms = 2000;
  co.dead_peer_ms = 15'000;
  client = std::make_unique<net::RpcClient>(
      &loop, co, [this] { on_up(); }, [this](const Error& e) { on_down(e); });
  heartbeat_ms = options.heartbeat_ms;
  if (auto st = start_metrics(); !st) return st;
  log(Level::kInfo, "agent",
      "node " + name + ", joining " + options.join + ", isolation " +
          isolation_name(isolation.info().mode) + ", " + std::to_string(journal->size()) +
          " journal entries");
  return {};
}

// What the journal says ran here died with the previous run of this agent, or is killed now
// (its cgroups, else the task tag): reported lost. Ends not yet acknowledged go out again.
void Agent::Impl::recover_journal() {
  uint32_t killed = isolation.destroy_all_groups();
  for (int32_t pid :
       pids_with_env(task_key_prefix(pool_group_name(options.data_dir)), true, kLeftoverScanMax)) {
    ::kill(pid, SIGKILL);
    ++killed;
  }
  if (killed > 0) log(Level::kInfo, "agent", "killed " + std::to_string(killed) + " leftovers");
  for (const pb::TaskAttempt& a : journal->running()) {
    pb::TaskOutcome o = outcome_of(a, TaskExit{pb::TASK_LOST, 0, 0});
    if (journal->ended(o, nullptr)) outbox[key_of(a)] = o;
  }
  for (const pb::TaskOutcome& o : journal->ended()) outbox[key_of(o.task())] = o;
}

pb::NodeFacts Agent::Impl::node_facts() const {
  pb::NodeFacts f;
  f.set_name(name);
  f.set_arch(facts.arch);
  f.set_cpu_millis(facts.cpu_millis);
  f.set_mem_bytes(facts.mem_bytes);
  f.set_tasks_max(options.tasks_max);
  f.set_isolation(isolation_name(isolation.info().mode));
  for (const auto& e : isolation.info().enforced) f.add_enforced(e);
  f.set_io_backend(storage::backend_name(engine->backend()));
  f.set_board_model(facts.board_model);
  // Heat and load move (the rest does not): read afresh for every hello and heartbeat.
  const BoardHeat heat = read_board_heat(heat_root);
  if (heat.temperature_millicelsius) f.set_temperature_millicelsius(*heat.temperature_millicelsius);
  f.set_throttled(heat.throttled);
  f.set_under_voltage(heat.under_voltage);
  if (heat.load1_milli) f.set_load1_milli(*heat.load1_milli);
  for (const auto& [k, v] : options.labels) (*f.mutable_labels())[k] = v;
  f.set_task_user(task_users.standard.name);
  f.set_root_tasks(task_users.root_tasks);
  return f;
}

// ---------------------------------------------------------------------------- session

void Agent::Impl::on_up() {
  log(Level::kInfo, "agent", "connected to " + options.join);
  send_hello();
}

void Agent::Impl::on_down(const Error& e) {
  if (session != 0) {
    log(Level::kWarn, "agent", "lost the server: " + e.describe() + "; tasks go on");
  } else if (e.code != last_down) {
    // Said once per kind of failure, not at every retry: a refused token is an operator's
    // mistake worth one line; a server not up yet is the normal start of a boot.
    log(e.code == Errc::kUnauthenticated ? Level::kError : Level::kInfo, "agent",
        "cannot join " + options.join + ": " + e.describe() + "; retrying");
  }
  last_down = e.code;
  reset_session();
}

void Agent::Impl::reset_session() {
  session = 0;
  hello_in_flight = poll_in_flight = report_in_flight = false;
  uv_timer_stop(&heartbeat_timer);
}

void Agent::Impl::send_hello() {
  if (hello_in_flight || stopping || !client->up()) return;
  pb::Request req;
  pb::AgentHello* h = req.mutable_agent_hello();
  h->set_identity(dir->node_identity());
  h->set_incarnation(incarnation);
  *h->mutable_facts() = node_facts();
  for (const auto& [task, a] : running) *h->add_running() = a;
  for (const auto& [task, st] : held) *h->add_running() = st.task();
  for (const auto& [k, o] : outbox) *h->add_ended() = o;
  hello_in_flight = true;
  auto st = client->call(
      std::move(req),
      [this](Result<pb::Response> r) {
        hello_in_flight = false;
        if (!r) return;  // the session ended; on_up says hello again
        if (r->error() != pb::OK || !r->has_welcome()) {
          // The connection is fine (so on_up will not come again): try again on a timer.
          retry_hello_later(r->error_message());
          return;
        }
        hello_retry_ms = 0;
        on_welcome(r->welcome());
      },
      kRpcTimeoutMs);
  if (!st) hello_in_flight = false;
}

void Agent::Impl::retry_hello_later(const std::string& why) {
  const bool first = hello_retry_ms == 0;
  hello_retry_ms = first ? kHelloRetryFirstMs : std::min(hello_retry_ms * 2, kHelloRetryMaxMs);
  if (first) log(Level::kWarn, "agent", "the server refused us: " + why + "; retrying");
  uv_timer_start(
      &hello_timer, [](uv_timer_t* h) { static_cast<Impl*>(h->data)->send_hello(); },
      hello_retry_ms, 0);
}

void Agent::Impl::on_welcome(const pb::AgentWelcome& w) {
  session = w.session();
  if (w.heartbeat_ms() > 0) heartbeat_ms = w.heartbeat_ms();
  for (const pb::TaskAttempt& a : w.acked()) {
    outbox.erase(key_of(a));
    (void)journal->forget(a);
  }
  // Running here but the server gave the task to someone else meanwhile: kill, no report.
  for (const pb::TaskAttempt& a : w.stop()) {
    auto h = held.find({a.job_id(), a.index()});
    if (h != held.end() && h->second.task().attempt() == a.attempt()) {
      held.erase(h);  // never started: nothing to kill
      (void)journal->forget(a);
      continue;
    }
    silent.insert(key_of(a));
    if (journaling.contains(key_of(a))) continue;  // dropped once journaled, never spawned
    executor->kill(a.job_id(), a.index(), KillReason::kShutdown);
  }
  log(Level::kInfo, "agent",
      "joined as node " + std::to_string(w.node_id()) + " (" + std::to_string(w.stop_size()) +
          " stale tasks stopped)");
  uv_timer_start(
      &heartbeat_timer, [](uv_timer_t* h) { static_cast<Impl*>(h->data)->send_heartbeat(); },
      heartbeat_ms, heartbeat_ms);
  send_poll();
  send_report();
}

void Agent::Impl::send_poll() {
  if (poll_in_flight || session == 0 || stopping) return;
  // Backpressure that bounds the journal: with as many ends waiting for an acknowledgement
  // as the tasks this board runs at once, it asks for no work until acks come back.
  if (outbox.size() >= options.tasks_max) return;
  pb::Request req;
  req.mutable_agent_poll()->set_session(session);
  poll_in_flight = true;
  const uint64_t for_session = session;
  auto st = client->call(std::move(req), [this, for_session](Result<pb::Response> r) {
    poll_in_flight = false;
    if (!r || for_session != session) return;
    if (r->error() != pb::OK) {  // the server forgot us (declared down, restarted): hello again
      reset_session();
      send_hello();
      return;
    }
    if (r->has_work()) on_work(r->work());
    send_poll();
  });
  if (!st) poll_in_flight = false;
}

void Agent::Impl::send_heartbeat() {
  if (session == 0 || !client->up()) return;
  pb::Request req;
  req.mutable_agent_heartbeat()->set_session(session);
  *req.mutable_agent_heartbeat()->mutable_facts() = node_facts();
  (void)client->call(
      std::move(req),
      [this](Result<pb::Response> r) {
        if (r && r->error() != pb::OK && session != 0) {  // stale: the server declared us down
          reset_session();
          send_hello();
        }
      },
      kRpcTimeoutMs);
}

// ---------------------------------------------------------------------------- metrics

// This board's /metrics, as the server's board serves them (runtime/board_metrics.h); the
// address bound goes to DATA_DIR/metrics_addr, as the server's does.
Status Agent::Impl::start_metrics() {
  if (options.metrics_listen.empty()) return {};
  auto m = BoardMetrics::start(&loop, options.metrics_listen);
  if (!m && options.metrics_listen_default) {
    log(Level::kWarn, "agent",
        m.error().describe() + "; this board serves no /metrics (give it --metrics-listen)");
    return {};
  }
  if (!m) return std::unexpected(m.error());
  metrics = std::move(*m);
  metrics->set_info(facts.arch, storage::backend_name(engine->backend()),
                    isolation_name(isolation.info().mode));
  metrics->on_scrape([this] { refresh_metrics(); });
  refresh_metrics();
  return dir->publish("metrics_addr", metrics->bound_address() + "\n");
}

// At each scrape: the counters, what runs, and the heat read afresh (a few sysfs files).
void Agent::Impl::refresh_metrics() {
  if (!metrics) return;
  metrics->refresh(board_sources(engine->stats(), logs->stats().bytes_dropped));
  uint32_t cpu_millis = 0;
  uint64_t mem_bytes = 0;
  for (const auto& [task, r] : reserved) {
    cpu_millis += r.first;
    mem_bytes += r.second;
  }
  metrics->set_node(cpu_millis, mem_bytes, static_cast<uint32_t>(running.size()));
  const BoardHeat heat = read_board_heat(heat_root);
  metrics->set_node_heat(heat.temperature_millicelsius, heat.throttled, heat.under_voltage);
}

// ---------------------------------------------------------------------------- work

void Agent::Impl::on_work(const pb::AgentWork& work) {
  for (const pb::TaskStop& s : work.stop()) {
    const auto task = std::make_pair(s.task().job_id(), s.task().index());
    const KillReason reason = kill_reason(s.reason());
    auto h = held.find(task);
    if (h != held.end() && h->second.task().attempt() == s.task().attempt()) {
      // Never started (it waited for an older attempt): it ends here, unspawned.
      const pb::TaskAttempt a = h->second.task();
      held.erase(h);
      task_exited(a, unspawned_exit(reason));
      continue;
    }
    auto it = running.find(task);
    if (it == running.end() || it->second.attempt() != s.task().attempt()) continue;
    if (journaling.contains(key_of(s.task()))) {
      stopped_before_spawn.emplace(key_of(s.task()), reason);  // ends once journaled
      continue;
    }
    executor->kill(s.task().job_id(), s.task().index(), reason);
  }
  for (const pb::TaskStart& s : work.start()) start_task(s);
  for (const pb::LogFetch& f : work.logs()) serve_log(f, true);
}

// Journaled first: a crash after the spawn leaves the attempt in the journal, to be killed
// and reported at the next start. The attempt counts as running here from now on (a hello
// lists it), and a stop that comes before the journal record is durable ends it unspawned.
void Agent::Impl::start_task(const pb::TaskStart& s) {
  const pb::TaskAttempt& a = s.task();
  const auto task = std::make_pair(a.job_id(), a.index());
  if (journal->knows(a)) return;  // sent twice (a re-sent answer, a hello's re-queue)
  if (auto h = held.find(task); h != held.end()) {
    if (h->second.task().attempt() == a.attempt()) return;
  }
  if (auto it = running.find(task); it != running.end()) {
    if (it->second.attempt() == a.attempt()) return;
    // An older attempt of the task is still being killed here (it was stale, or stopped):
    // this one waits for its exit, so the task never runs twice at once on this board.
    held[task] = s;
    return;
  }
  running[task] = a;
  reserved[task] = {s.cpu_millis(), s.mem_bytes()};
  journaling.insert(key_of(a));
  auto st = journal->started(a, [this, s] {
    const pb::TaskAttempt& attempt = s.task();
    journaling.erase(key_of(attempt));
    if (silent.erase(key_of(attempt)) > 0) {  // the server said it is no longer ours
      stopped_before_spawn.erase(key_of(attempt));
      running.erase({attempt.job_id(), attempt.index()});
      reserved.erase({attempt.job_id(), attempt.index()});
      (void)journal->forget(attempt);
      start_held({attempt.job_id(), attempt.index()});
      return;
    }
    if (auto stop = stopped_before_spawn.find(key_of(attempt));
        stop != stopped_before_spawn.end()) {
      const KillReason reason = stop->second;
      stopped_before_spawn.erase(stop);
      task_exited(attempt, unspawned_exit(reason));
      return;
    }
    // Stopping: kill_all() is done, so a start that came since (a poll answered meanwhile, a
    // start held behind a killed attempt) ends as the shutdown ended the rest.
    if (stopping) {
      task_exited(attempt, unspawned_exit(KillReason::kShutdown));
      return;
    }
    spawn(s);
  });
  if (!st) {
    // The journal refused (its disk is full): the task cannot start here. Said as a failure
    // to start, which the server's rules retry.
    running.erase(task);
    reserved.erase(task);
    journaling.erase(key_of(a));
    log(Level::kWarn, "agent", "cannot journal a task start: " + st.error().describe());
    pb::TaskOutcome o = outcome_of(a, TaskExit{pb::TASK_FAILED, 127, 0});
    outbox[key_of(a)] = o;
    send_report();
  }
}

void Agent::Impl::spawn(const pb::TaskStart& s) {
  TaskLaunch l;
  l.job_id = s.task().job_id();
  l.index = s.task().index();
  l.count = s.count();
  l.attempt = s.task().attempt();
  l.argv.assign(s.command().begin(), s.command().end());
  for (const auto& [k, v] : s.env()) l.env.emplace_back(k, v);
  std::sort(l.env.begin(), l.env.end());
  l.cwd = s.cwd();  // the executor falls back to work/, /tmp, / when it cannot enter it
  l.user = s.user();
  l.limits.cpu_millis = s.cpu_millis();
  l.limits.mem_bytes = s.mem_bytes();
  l.timeout_ms = s.timeout_ms();
  l.node_name = s.node_name();
  // A copy, not a reference into s: it must outlive whatever task_exited() below releases.
  const pb::TaskAttempt attempt = s.task();  // NOLINT(performance-unnecessary-copy-initialization)
  Status started = executor->start(l, [this, attempt](TaskExit e) { task_exited(attempt, e); });
  if (started) return;
  storage::LogKey key{l.job_id, l.index, storage::Stream::kStderr};
  if (logs->open(key)) {
    logs->append(key, "cardnode: cannot start task: " + started.error().describe() + "\n");
    logs->close(key, [](Status) {});
  }
  task_exited(attempt, TaskExit{pb::TASK_FAILED, 127, 0});
}

// A start that waited for an older attempt of its task goes now.
void Agent::Impl::start_held(std::pair<uint64_t, uint32_t> task) {
  auto h = held.find(task);
  if (h == held.end()) return;
  const pb::TaskStart next = std::move(h->second);
  held.erase(h);
  start_task(next);
}

void Agent::Impl::task_exited(const pb::TaskAttempt& a, TaskExit e) {
  const auto task = std::make_pair(a.job_id(), a.index());
  if (auto it = running.find(task); it != running.end() && it->second.attempt() == a.attempt()) {
    running.erase(it);
    reserved.erase(task);
  }
  if (silent.erase(key_of(a)) > 0) {
    (void)journal->forget(a);
  } else {
    pb::TaskOutcome o = outcome_of(a, e);
    auto st = journal->ended(o, [this, o] {
      --ends_journaling;
      outbox[key_of(o.task())] = o;
      send_report();
    });
    if (st) {
      ++ends_journaling;
    } else {  // kept in memory: reported all the same, just not across an agent restart
      outbox[key_of(a)] = o;
      send_report();
    }
  }
  if (!running.contains(task)) start_held(task);
}

void Agent::Impl::send_report() {
  if (report_in_flight || session == 0 || outbox.empty()) return;
  pb::Request req;
  pb::AgentReport* rep = req.mutable_agent_report();
  rep->set_session(session);
  for (const auto& [k, o] : outbox) {
    if (rep->outcomes_size() >= static_cast<int>(kReportBatchMax)) break;
    *rep->add_outcomes() = o;
  }
  report_in_flight = true;
  auto st = client->call(
      std::move(req),
      [this](Result<pb::Response> r) {
        report_in_flight = false;
        if (!r || r->error() != pb::OK) {
          uv_timer_start(
              &report_timer, [](uv_timer_t* h) { static_cast<Impl*>(h->data)->send_report(); },
              kReportRetryMs, 0);
          return;
        }
        for (const pb::TaskAttempt& a : r->report_ack().acked()) {
          outbox.erase(key_of(a));
          (void)journal->forget(a);
        }
        send_poll();  // if the outbox was full, work may come again
        if (!outbox.empty()) {
          uv_timer_start(
              &report_timer, [](uv_timer_t* h) { static_cast<Impl*>(h->data)->send_report(); },
              r->report_ack().acked_size() > 0 ? 0 : kReportRetryMs, 0);
        }
      },
      kRpcTimeoutMs);
  if (!st) report_in_flight = false;
}

// ---------------------------------------------------------------------------- logs

// A read with wait_ms and nothing to read yet, for a task still running here, is held and
// looked at again until bytes come or its time is up: the server pushes them on at once.
void Agent::Impl::serve_log(const pb::LogFetch& f, bool may_hold) {
  storage::LogKey key{
      f.job_id(), f.index(),
      f.stream() == pb::STDERR ? storage::Stream::kStderr : storage::Stream::kStdout};
  auto done = [this, f, may_hold](Result<std::string> data) {
    if (!data && data.error().code != Errc::kNotFound) {
      pb::Request req;
      pb::AgentLog* out = req.mutable_agent_log();
      out->set_session(session);
      out->set_fetch_id(f.fetch_id());
      out->set_error(static_cast<pb::ErrorCode>(data.error().code));
      out->set_error_message(data.error().describe());
      (void)client->call(std::move(req), [](Result<pb::Response>) {});
      return;
    }
    std::string bytes = data ? std::move(*data) : std::string();
    const bool runs = running.contains({f.job_id(), f.index()});
    if (bytes.empty() && runs && may_hold && f.wait_ms() > 0 &&
        held_reads.size() < kHeldLogReadsMax) {
      held_reads.push_back({f, uv_now(&loop) + f.wait_ms()});
      return;
    }
    pb::Request req;
    pb::AgentLog* out = req.mutable_agent_log();
    out->set_session(session);
    out->set_fetch_id(f.fetch_id());
    out->set_final(bytes.empty() && !runs);
    out->set_data(std::move(bytes));
    (void)client->call(std::move(req), [](Result<pb::Response>) {});
  };
  if (f.tail()) return logs->read_tail(key, f.max_bytes(), std::move(done));
  logs->read(key, f.offset(), f.max_bytes(), std::move(done));
}

void Agent::Impl::check_held_reads() {
  const uint64_t now = uv_now(&loop);
  std::deque<HeldRead> again;
  again.swap(held_reads);
  for (HeldRead& h : again) {
    // Past its time: answered as it is (maybe empty). Else looked at again, held if still empty.
    serve_log(h.fetch, now < h.deadline);
  }
}

// ---------------------------------------------------------------------------- handles

void Agent::Impl::start_handles() {
  uv_poll_init(&loop, &io_poll, engine->completion_fd());
  io_poll.data = this;
  uv_poll_start(&io_poll, UV_READABLE, [](uv_poll_t* h, int, int) {
    auto* self = static_cast<Impl*>(h->data);
    self->engine->reap();
  });
  for (uv_signal_t* sig : {&sigint, &sigterm, &sighup}) {
    uv_signal_init(&loop, sig);
    sig->data = this;
  }
  uv_signal_start(
      &sigint, [](uv_signal_t* h, int) { static_cast<Impl*>(h->data)->begin_stop("SIGINT"); },
      SIGINT);
  uv_signal_start(
      &sigterm, [](uv_signal_t* h, int) { static_cast<Impl*>(h->data)->begin_stop("SIGTERM"); },
      SIGTERM);
  // SIGHUP (a closed terminal, a reload): try the server now rather than die.
  uv_signal_start(
      &sighup,
      [](uv_signal_t* h, int) {
        auto* self = static_cast<Impl*>(h->data);
        log(Level::kInfo, "agent", "SIGHUP: reconnecting");
        self->client->reconnect_now();
      },
      SIGHUP);
  uv_async_init(&loop, &stop_async,
                [](uv_async_t* h) { static_cast<Impl*>(h->data)->begin_stop("stop requested"); });
  stop_async.data = this;
  {
    std::lock_guard lock(stop_async_mu);
    stop_async_open = true;
  }
  for (uv_timer_t* t : {&heartbeat_timer, &report_timer, &log_timer, &journal_timer,
                        &shutdown_timer, &hello_timer}) {
    uv_timer_init(&loop, t);
    t->data = this;
  }
  uv_timer_start(
      &log_timer, [](uv_timer_t* h) { static_cast<Impl*>(h->data)->check_held_reads(); },
      kLogWaitTickMs, kLogWaitTickMs);
  uv_timer_start(
      &journal_timer, [](uv_timer_t* h) { static_cast<Impl*>(h->data)->journal->turn(); }, 1000,
      1000);
  if (auto st = client->start(); !st) {
    log(Level::kError, "agent", "cannot join " + options.join + ": " + st.error().describe());
    exit_code = 2;
    begin_stop("bad --join address");
  }
}

void Agent::Impl::begin_stop(const char* why) {
  if (stopping) return;
  stopping = true;
  stop_started_ms = uv_now(&loop);
  log(Level::kInfo, "agent", std::string("stopping (") + why + ")");
  executor->kill_all();  // ends lost, journaled, reported if the server can hear it now
  uv_timer_start(
      &shutdown_timer, [](uv_timer_t* h) { static_cast<Impl*>(h->data)->shutdown_tick(); }, 0, 20);
}

void Agent::Impl::shutdown_tick() {
  // Done once nothing runs and no start or end waits for its journal record: a start would
  // end unspawned and an end go to the outbox, both to be reported.
  const bool tasks_done =
      executor->running() == 0 && (journal_failed || (journaling.empty() && ends_journaling == 0));
  const bool reported = outbox.empty() || session == 0;
  const bool overdue = uv_now(&loop) - stop_started_ms > kShutdownGraceMs;
  // A short wait for the report of the ends: kept in the journal otherwise.
  const bool report_wait_over = uv_now(&loop) - stop_started_ms > kKillGraceMs + 2000;
  if (!((tasks_done && (reported || report_wait_over)) || overdue)) return;
  close_handles();
}

void Agent::Impl::close_handles() {
  uv_timer_stop(&shutdown_timer);
  client->stop();
  if (metrics) metrics->stop();
  {
    std::lock_guard lock(stop_async_mu);
    if (stop_async_open) uv_close(reinterpret_cast<uv_handle_t*>(&stop_async), nullptr);
    stop_async_open = false;
  }
  for (uv_handle_t* h :
       {reinterpret_cast<uv_handle_t*>(&io_poll), reinterpret_cast<uv_handle_t*>(&sigint),
        reinterpret_cast<uv_handle_t*>(&sigterm), reinterpret_cast<uv_handle_t*>(&sighup),
        reinterpret_cast<uv_handle_t*>(&heartbeat_timer),
        reinterpret_cast<uv_handle_t*>(&report_timer), reinterpret_cast<uv_handle_t*>(&log_timer),
        reinterpret_cast<uv_handle_t*>(&journal_timer),
        reinterpret_cast<uv_handle_t*>(&hello_timer),
        reinterpret_cast<uv_handle_t*>(&shutdown_timer)}) {
    if (!uv_is_closing(h)) uv_close(h, nullptr);
  }
}

// ---------------------------------------------------------------------------- Agent

Agent::Agent(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Agent::~Agent() {
  if (!impl_) return;
  Impl& a = *impl_;
  // First: the callbacks of records still in flight (a stop that was overdue) use the client
  // and the executor, which must still be there (stopped: they do nothing).
  if (a.journal) a.journal->drain();
  a.client.reset();
  if (a.executor && a.executor->running() > 0) {
    (void)a.executor.release();  // exiting; processes were signalled
  } else if (a.executor) {
    a.executor.reset();
    a.isolation.destroy_parent();  // clean stop: no task left, remove our cgroups (as the server)
  }
  a.journal.reset();
  a.logs.reset();
  if (a.metrics) a.metrics->stop();  // as the client's: closed before the loop is
  uv_run(&a.loop, UV_RUN_NOWAIT);    // close callbacks of the client's and metrics' handles
  a.engine.reset();
  uv_loop_close(&a.loop);
}

Result<std::unique_ptr<Agent>> Agent::open(AgentOptions options) {
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  if (int rc = uv_loop_init(&impl->loop); rc != 0) {
    return fail(Errc::kInternal, std::string("uv_loop_init: ") + uv_strerror(rc));
  }
  Impl& a = *impl;
  std::unique_ptr<Agent> agent(new Agent(std::move(impl)));
  if (auto st = a.open(); !st) return std::unexpected(st.error());
  a.start_handles();
  return agent;
}

void Agent::request_stop() {
  std::lock_guard lock(impl_->stop_async_mu);
  if (impl_->stop_async_open) uv_async_send(&impl_->stop_async);
}

int Agent::run() {
  uv_run(&impl_->loop, UV_RUN_DEFAULT);
  log(Level::kInfo, "agent", "stopped");
  return impl_->exit_code;
}

}  // namespace cardnode::runtime
