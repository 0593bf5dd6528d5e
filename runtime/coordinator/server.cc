#include "runtime/coordinator/server.h"

#include <malloc.h>
#include <signal.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <utility>

#include "net/address.h"
#include "net/rpc_server.h"
#include "runtime/coordinator/agent_hub.h"
#include "runtime/coordinator/api.h"
#include "runtime/coordinator/coordinator.h"
#include "runtime/coordinator/local_runner.h"
#include "runtime/coordinator/metrics.h"
#include "runtime/coordinator/status_page.h"
#include "runtime/coordinator/status_site.h"
#include "runtime/data_dir.h"
#include "runtime/exec/cgroup_mode.h"
#include "runtime/exec/executor.h"
#include "runtime/exec/isolation.h"
#include "runtime/fd_limit.h"
#include "runtime/log.h"
#include "runtime/node_facts.h"
#include "storage/io_engine.h"
#include "storage/local_store.h"
#include "storage/log_store.h"
#include "storage/posix.h"

namespace cardnode::runtime {
namespace {

// Cancel, timeout and stop send SIGTERM to the task's process group, then SIGKILL to the
// whole tree after this grace: Nomad's kill_timeout default (Slurm's KillWait is 30 s).
constexpr uint64_t kKillGraceMs = 5'000;
constexpr uint64_t kShutdownGraceMs = 10'000;  // > kKillGraceMs: tasks get their grace
constexpr uint64_t kTickMs = 1000;             // metrics, retries, age-based retention
constexpr uint64_t kTrimAfterAccepts = 64;     // handshakes in a burst before the heap is trimmed
constexpr uint32_t kLeftoverScanMax = 65536;   // pids killed by the environment scan at start
constexpr uint32_t kLogFilesRemovedPerTurn = 256;
// Agents and clients, when the fd limit allows. The scheduler takes up to
// sched::Limits::nodes_max (16,384) boards; this bound caps a pool at about 4,000 agents.
constexpr uint64_t kConnectionsMax = 4096;
constexpr uint32_t kLogDirEntriesMax = 1'000'000;  // job dirs listed at start

uint64_t wall_ms() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

}  // namespace

struct Server::Impl {
  ServerOptions options;
  uv_loop_t loop{};
  std::optional<DataDir> dir;
  std::unique_ptr<storage::IoEngine> engine;
  std::unique_ptr<storage::LogStore> logs;
  std::unique_ptr<storage::LocalStore> store;
  std::unique_ptr<Coordinator> coordinator;
  std::unique_ptr<AgentHub> hub;
  std::unique_ptr<ClientApi> api;
  Isolation isolation;
  TaskUsers task_users;
  std::unique_ptr<Executor> executor;
  std::unique_ptr<LocalRunner> runner;
  std::unique_ptr<net::RpcServer> rpc;
  std::unique_ptr<Metrics> metrics;
  std::unique_ptr<StatusSite> status;
  NodeFacts facts;
  std::string heat_root;  // options.sysfs_root, else $CARDNODE_SYSFS_ROOT, else "/"
  BoardHeat heat;         // this board's, as last read
  std::optional<sched::NodeId> local_node;

  uv_poll_t io_poll{};
  uv_signal_t sigint{}, sigterm{}, sighup{};
  uv_idle_t turn_idle{};
  uv_prepare_t flush_prepare{};
  uv_timer_t tick_timer{};
  uv_timer_t hub_timer{};   // failure detection, log fetch timeouts
  uv_timer_t heat_timer{};  // this board's heat, every heartbeat_ms
  uv_timer_t shutdown_timer{};
  bool handles_started = false;
  bool turn_pending = false;
  bool stopping = false;
  uint64_t stop_started_ms = 0;
  int exit_code = 0;

  Status open_storage();
  Status recover();
  Status start_executor();
  Status start_listeners();
  void start_loop_handles();
  void start_status_site();
  CoordinatorHooks hooks();

  void sweep_pruned_logs();
  void request_turn();
  void take_turn();
  void describe(const sched::Node& n, pb::NodeInfo* info) const;
  void trim_heap();
  uint64_t trimmed_at_accepted = 0;
  net::Transport transport = net::Transport::kTlsPsk;  // of every connection
  void refresh_metrics();
  void refresh_heat();
  void begin_stop(const char* why);
  void shutdown_tick();
  void close_handles();
};

// ---------------------------------------------------------------------------- startup

CoordinatorHooks Server::Impl::hooks() {
  CoordinatorHooks h;
  h.now_ms = wall_ms;
  h.request_turn = [this] { request_turn(); };
  h.jobs_pruned = [this](const std::vector<sched::JobId>& jobs) {
    for (sched::JobId id : jobs) logs->forget_job(id);
    request_turn();
  };
  h.fatal = [this](const Error& e) {
    log(Level::kError, "storage", "cannot write the WAL, stopping: " + e.describe());
    exit_code = 1;
    begin_stop("storage failure");
  };
  h.log_info = [](const std::string& m) { log(Level::kInfo, "coordinator", m); };
  h.log_warn = [](const std::string& m) { log(Level::kWarn, "coordinator", m); };
  return h;
}

Status Server::Impl::open_storage() {
  std::string why;
  auto eng = storage::IoEngine::create(storage::IoOptions{}, &why);
  if (!eng) return std::unexpected(eng.error());
  engine = std::move(*eng);
  if (engine->backend() == storage::Backend::kIoUring) {
    log(Level::kInfo, "storage", "io backend: io_uring");
  } else {
    log(Level::kWarn, "storage", "io backend: fallback (" + why + ")");
  }
  logs =
      std::make_unique<storage::LogStore>(*engine, storage::LogStoreOptions{.dir = dir->log_dir()});
  // Appends are flushed once per loop turn (flush_prepare): a task's end and the start it
  // makes room for go out in one durable write (RWF_DSYNC).
  store = std::make_unique<storage::LocalStore>(
      *engine, storage::LocalStoreOptions{.dir = dir->path(), .wal = {.hold_appends = true}});
  CoordinatorOptions co;
  co.keep_finished = options.keep_finished;
  co.keep_finished_for_ms = options.keep_finished_for_ms;
  co.snapshot_wal_bytes_min = options.snapshot_wal_bytes;
  co.heat = {.hot_millicelsius = options.hot_millicelsius,
             .cool_margin_millicelsius = options.cool_margin_millicelsius};
  coordinator = std::make_unique<Coordinator>(*store, co, hooks());
  return {};
}

Status Server::Impl::recover() {
  auto report = coordinator->recover();
  if (!report) return std::unexpected(report.error());
  for (const std::string& skipped : report->snapshots_skipped) {
    log(Level::kWarn, "storage", "damaged snapshot skipped: " + skipped);
  }
  const storage::ReplayStats& w = report->wal;
  std::string from = report->snapshot_seq == 0
                         ? std::string("no snapshot")
                         : "snapshot through record " + std::to_string(report->snapshot_seq);
  log(Level::kInfo, "storage",
      "recovered from " + from + " and " + std::to_string(w.records) + " WAL records in " +
          std::to_string(w.segments) + " segments; " +
          std::to_string(coordinator->state().cluster().jobs().size()) + " jobs");
  if (w.torn_tail_bytes > 0) {
    log(Level::kWarn, "storage",
        "dropped the last write, never acknowledged, cut short by a crash: " +
            std::to_string(w.torn_tail_bytes) + " bytes at " + w.torn_tail_at);
  }
  return {};
}

Status Server::Impl::start_executor() {
  const std::string pool_tag = pool_group_name(options.data_dir);
  isolation = Isolation::probe("/sys/fs/cgroup", pool_tag, options.disable_cgroups);
  if (options.favor_dynmods && isolation.info().mode != IsolationMode::kRlimit)
    log(Level::kInfo, "executor", runtime::describe(favor_dynamic_moves()));
  // Tasks of a previous run died with it, or are killed now: through their cgroups, and
  // without cgroups by the pool's tag in their environment.
  uint32_t stale = isolation.destroy_all_groups();
  for (int32_t pid : pids_with_env(task_key_prefix(pool_tag), /*prefix=*/true, kLeftoverScanMax)) {
    ::kill(pid, SIGKILL);
    ++stale;
  }
  if (stale > 0) log(Level::kInfo, "executor", "killed " + std::to_string(stale) + " leftovers");
  std::string enforced;
  for (const auto& e : isolation.info().enforced) enforced += (enforced.empty() ? "" : ",") + e;
  log(Level::kInfo, "executor",
      std::string("isolation: ") + isolation_name(isolation.info().mode) +
          " (enforced: " + (enforced.empty() ? "none" : enforced) + ")");
  ExecutorOptions eo;
  eo.pool_tag = pool_tag;
  eo.warn = [](const std::string& line) { log(Level::kWarn, "executor", line); };
  eo.kill_grace_ms = kKillGraceMs;
  eo.users = task_users;
  eo.fallback_cwd = dir->work_dir();
  log(Level::kInfo, "executor", "tasks run as " + describe_task_user(task_users));
  executor = std::make_unique<Executor>(&loop, *logs, isolation, eo);
  runner = std::make_unique<LocalRunner>(*executor, *logs);
  return {};
}

// This board's node, by its identity: a rename or new capacity is a logged update of the
// same node, so its tasks' history stays its own.
Status register_local_node(Server::Impl& s) {
  sched::NodeSpec spec;
  spec.name = s.options.node_name.empty() ? s.facts.hostname : s.options.node_name;
  spec.capacity = {s.facts.cpu_millis, s.facts.mem_bytes};
  spec.labels = s.options.labels;
  spec.labels["arch"] = s.facts.arch;
  spec.tasks_max = ExecutorOptions{}.running_max;  // what the executor below will take
  auto id = s.coordinator->register_node(s.dir->node_identity(), spec);
  if (!id) {
    return fail(id.error().code,
                "cannot register this board as node " + spec.name + ": " + id.error().describe());
  }
  s.local_node = *id;
  return {};
}

Status Server::Impl::start_listeners() {
  net::RpcServerOptions ro;
  ro.listen = options.listen;
  // Every agent holds a connection, and clients come and go: room for agents and clients
  // together up to kConnectionsMax, within the fd limit.
  // Handshakes in progress have their own budget (a quarter of what is left, at most
  // 1,024), so strangers holding sockets open never take a token holder's place.
  const uint64_t fds = raise_open_files_limit();
  const uint64_t usable = fds > 256 ? fds - 256 : 128;
  ro.max_unauthenticated = static_cast<uint32_t>(std::clamp<uint64_t>(usable / 4, 32, 1024));
  ro.max_connections = static_cast<uint32_t>(std::clamp<uint64_t>(
      usable - std::min(usable, uint64_t{ro.max_unauthenticated}), 64, kConnectionsMax));
  if (ro.max_connections < kConnectionsMax) {
    log(Level::kWarn, "server",
        "open-files limit " + std::to_string(fds) + ": at most " +
            std::to_string(ro.max_connections) + " connections (agents and clients)");
  }
  api = std::make_unique<ClientApi>(
      *coordinator, *logs, *hub, local_node,
      [this](const sched::Node& n, pb::NodeInfo* info) { describe(n, info); });
  net::SecurityOptions so = options.security;
  so.token = dir->token();
  auto security = net::SecurityContext::create(so, net::SecurityContext::Role::kServer);
  if (!security) return std::unexpected(security.error());
  transport = (*security)->transport();
  if (transport == net::Transport::kPlaintext) {
    log(Level::kWarn, "server",
        "--insecure: connections are authenticated by the token but not encrypted; anyone "
        "on the path can read and rewrite them");
  }
  rpc = std::make_unique<net::RpcServer>(&loop, *security, ro,
                                         [this](pb::Request&& req, const net::Responder& r) {
                                           api->handle(std::move(req), r);
                                           refresh_metrics();
                                         });
  auto bound = rpc->start();
  if (!bound) return std::unexpected(bound.error());
  // Clients on this board connect here: no token, no TLS (net/rpc_server.h). Without it
  // (a data dir path over sun_path's 107 bytes, a file system without sockets, a data
  // dir others may write to) they use TCP as before.
  const std::string sock = dir->path() + "/" + kLocalSocketName;
  if (Status st = rpc->listen_local(sock); !st) {
    log(Level::kWarn, "server",
        "no local socket (" + st.error().describe() + "); clients on this board use TCP");
  }
  auto m = Metrics::start(&loop, options.metrics_listen);
  if (!m) return std::unexpected(m.error());
  metrics = std::move(*m);
  metrics->on_scrape([this] { refresh_metrics(); });
  start_status_site();
  metrics->board().set_info(facts.arch, storage::backend_name(engine->backend()),
                            options.exec ? isolation_name(isolation.info().mode) : "none");
  refresh_metrics();
  // addr last: scripts and tests take it as the sign that the server is up.
  if (auto st = dir->publish("metrics_addr", metrics->bound_address() + "\n"); !st) return st;
  if (auto st = dir->publish("addr", *bound + "\n"); !st) return st;
  log(Level::kInfo, "server",
      "listening on " + *bound + ", metrics on " + metrics->bound_address() + ", data dir " +
          options.data_dir);
  return {};
}

// The status page shares the metrics listener; whether it shows task logs depends on where
// that listener is reachable from (status_page.h logs_allowed).
void Server::Impl::start_status_site() {
  if (!options.status_page) {
    metrics->serve_other_paths([](const net::HttpRequest&, const net::HttpResponder& r) {
      r.reply({404, "text/plain; charset=utf-8", "not found (the status page is off)\n"});
    });
    return;
  }
  sockaddr_storage bound{};  // AF_UNSPEC, not loopback, unless the address resolves
  if (auto hp = net::parse_host_port(metrics->bound_address())) {
    if (auto addr = net::resolve(*hp)) bound = *addr;
  }
  const bool logs = status::logs_allowed(bound, options.status_logs);
  // Names the page answers to (DNS-rebinding guard), besides IP literals and localhost.
  std::vector<std::string> hosts = options.status_hosts;
  char hostname[HOST_NAME_MAX + 1] = {};
  if (::gethostname(hostname, sizeof hostname - 1) == 0 && hostname[0] != '\0') {
    hosts.emplace_back(hostname);
    hosts.push_back(std::string(hostname) + ".local");
  }
  status = std::make_unique<StatusSite>(*coordinator, *api,
                                        StatusSiteOptions{.logs = logs, .hosts = std::move(hosts)});
  metrics->serve_other_paths(
      [this](const net::HttpRequest& req, const net::HttpResponder& r) { status->serve(req, r); });
  log(Level::kInfo, "server",
      std::string("status page on http://") + metrics->bound_address() + "/" +
          (logs ? " (with commands and task logs)"
                : " (commands and task logs hidden: the listener is not loopback; "
                  "--status-logs shows them)"));
}

void Server::Impl::start_loop_handles() {
  handles_started = true;
  uv_poll_init(&loop, &io_poll, engine->completion_fd());
  io_poll.data = this;
  uv_poll_start(&io_poll, UV_READABLE, [](uv_poll_t* h, int, int) {
    auto* self = static_cast<Impl*>(h->data);
    self->engine->reap();
    self->request_turn();     // a snapshot or a deferred task end may continue now
    self->refresh_metrics();  // a few counter adds: /metrics without a timer's lag
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
  // A hangup (a closed terminal, `systemctl reload`) must not stop the pool. The server
  // logs to stderr and holds no file to reopen, so there is nothing to reload.
  uv_signal_start(
      &sighup,
      [](uv_signal_t*, int) {
        log(Level::kInfo, "server", "SIGHUP ignored (nothing to reload); SIGTERM stops the server");
      },
      SIGHUP);
  uv_idle_init(&loop, &turn_idle);
  turn_idle.data = this;
  // After the turn (idle handles run before prepare handles), before the loop blocks.
  uv_prepare_init(&loop, &flush_prepare);
  flush_prepare.data = this;
  uv_prepare_start(&flush_prepare, [](uv_prepare_t* h) {
    auto* self = static_cast<Impl*>(h->data);
    if (self->store) self->store->flush();
  });
  uv_unref(reinterpret_cast<uv_handle_t*>(&flush_prepare));
  // The tick wakes the loop once a second; it writes nothing unless there is work
  // (guarantee 5: an idle cluster writes nothing).
  uv_timer_init(&loop, &tick_timer);
  tick_timer.data = this;
  uv_timer_start(
      &tick_timer,
      [](uv_timer_t* h) {
        auto* self = static_cast<Impl*>(h->data);
        self->take_turn();
        self->refresh_metrics();
        self->trim_heap();
      },
      kTickMs, kTickMs);
  // Failure detection looks at heartbeat ages every tenth of the grace (50 ms to 1 s): a
  // silent node is declared down within 10% of --grace, not up to a whole tick late.
  const uint64_t detect_ms = std::clamp<uint64_t>(options.grace_ms / 10, 50, kTickMs);
  uv_timer_init(&loop, &hub_timer);
  hub_timer.data = this;
  uv_timer_start(
      &hub_timer, [](uv_timer_t* h) { static_cast<Impl*>(h->data)->hub->tick(); }, detect_ms,
      detect_ms);
  // This board's heat on the agents' heartbeat period: a hot server board is held (and
  // released) as quickly as a hot agent. Reads a few sysfs files; writes nothing.
  uv_timer_init(&loop, &heat_timer);
  heat_timer.data = this;
  if (local_node) {
    uv_timer_start(
        &heat_timer, [](uv_timer_t* h) { static_cast<Impl*>(h->data)->refresh_heat(); },
        options.heartbeat_ms, options.heartbeat_ms);
  }
  uv_timer_init(&loop, &shutdown_timer);
  shutdown_timer.data = this;
}

void Server::Impl::refresh_heat() {
  if (!local_node) return;
  heat = read_board_heat(heat_root);
  (void)coordinator->report_heat(*local_node, heat.temperature_millicelsius, heat.throttled,
                                 heat.under_voltage);
}

// Logs of jobs pruned before a stop that left no time to remove them: found by name, and
// removed in the background like any pruned job's.
void Server::Impl::sweep_pruned_logs() {
  auto names = storage::list_dir(dir->log_dir(), kLogDirEntriesMax);
  if (!names) {
    log(Level::kWarn, "server", "cannot list task logs: " + names.error().describe());
    return;
  }
  uint32_t found = 0;
  for (const std::string& name : *names) {
    if (name.empty() || name.size() > 20 ||
        name.find_first_not_of("0123456789") != std::string::npos) {
      continue;
    }
    const sched::JobId id = std::stoull(name);
    if (!coordinator->state().pruned(id)) continue;
    logs->forget_job(id);
    ++found;
  }
  if (found > 0)
    log(Level::kInfo, "server", "removing the logs of " + std::to_string(found) + " pruned jobs");
}

// ------------------------------------------------------------------------- the loop

void Server::Impl::request_turn() {
  if (turn_pending || !handles_started) return;
  turn_pending = true;
  uv_idle_start(&turn_idle, [](uv_idle_t* h) {
    auto* self = static_cast<Impl*>(h->data);
    uv_idle_stop(h);
    self->turn_pending = false;
    self->take_turn();
  });
}

void Server::Impl::take_turn() {
  coordinator->turn();
  if (logs->remove_some(kLogFilesRemovedPerTurn)) request_turn();
}

// A burst of handshakes (a pool's agents all reconnecting after a restart) holds ~40 KiB
// each while in flight; freed in between live connections, glibc keeps those pages. Once
// the burst is over, they go back to the system: malloc_trim releases whole free pages
// anywhere in the heap. Only after a burst, so an idle server does no work here.
void Server::Impl::trim_heap() {
  if (!rpc) return;
  const net::RpcServerStats& st = rpc->stats();
  if (st.unauthenticated != 0 || st.accepted < trimmed_at_accepted + kTrimAfterAccepts) return;
  trimmed_at_accepted = st.accepted;
  malloc_trim(0);
}

void Server::Impl::describe(const sched::Node& n, pb::NodeInfo* info) const {
  info->set_transport(net::transport_name(transport));
  if (!local_node || n.id != *local_node) return hub->describe(n, info);
  info->set_arch(facts.arch);
  info->set_isolation(isolation_name(isolation.info().mode));
  for (const auto& e : isolation.info().enforced) info->add_enforced(e);
  info->set_io_backend(storage::backend_name(engine->backend()));
  info->set_task_user(task_users.standard.name);
  info->set_root_tasks(task_users.root_tasks);
  info->set_board_model(facts.board_model);
  if (heat.temperature_millicelsius)
    info->set_temperature_millicelsius(*heat.temperature_millicelsius);
  info->set_throttled(heat.throttled);
  info->set_under_voltage(heat.under_voltage);
  if (heat.load1_milli) info->set_load1_milli(*heat.load1_milli);
}

void Server::Impl::refresh_metrics() {
  if (!metrics) return;
  const State& state = coordinator->state();
  const CoordinatorStats& cs = coordinator->stats();
  MetricSources s;
  s.jobs_submitted = state.jobs_submitted();
  s.jobs_pruned = state.jobs_pruned();
  s.board = board_sources(engine->stats(), logs->stats().bytes_dropped);
  s.wal_records = cs.records;
  s.standby_placements = cs.standby_placements;
  s.standby_promotions = cs.standby_promotions;
  s.snapshots_written = cs.snapshots_written;
  s.snapshot_failures = cs.snapshot_failures;
  s.refused_busy = cs.refused_busy;
  s.refused_no_space = cs.refused_no_space;
  const net::RpcServerStats& ns = rpc->stats();
  s.net_accepted = ns.accepted;
  s.net_rejected_auth = ns.rejected_auth;
  s.net_rejected_protocol = ns.rejected_protocol;
  s.net_rejected_limit = ns.rejected_limit;
  s.net_rejected_rate = ns.rejected_rate;
  s.net_evicted = ns.evicted;
  s.net_closed_idle = ns.closed_idle;
  s.net_requests = ns.requests;
  s.tasks_ended = cs.tasks_ended;
  s.task_cpu_user_ms = cs.task_cpu_user_ms;
  s.task_cpu_system_ms = cs.task_cpu_system_ms;
  s.task_mem_peak_buckets = cs.task_mem_peak_buckets;
  s.task_mem_peak_sum_bytes = cs.task_mem_peak_sum_bytes;
  s.task_duration_buckets = cs.task_duration_buckets;
  s.task_duration_sum_ms = cs.task_duration_sum_ms;
  metrics->refresh(s);
  metrics->set_tasks(state.task_totals());
  if (local_node) {
    const sched::Node* n = state.cluster().node(*local_node);
    metrics->board().set_node(n->used.cpu_millis, n->used.mem_bytes, n->running);
    metrics->board().set_node_heat(heat.temperature_millicelsius, heat.throttled,
                                   heat.under_voltage);
  }
}

// ------------------------------------------------------------------------ shutdown

void Server::Impl::begin_stop(const char* why) {
  if (stopping) return;
  stopping = true;
  stop_started_ms = uv_now(&loop);
  log(Level::kInfo, "server", std::string("stopping (") + why + ")");
  coordinator->stop();
  hub->stop();
  rpc->stop();
  if (metrics) metrics->stop();
  // Killed tasks end lost (logged) and run again after the next start.
  if (executor) executor->kill_all();
  uv_timer_start(
      &shutdown_timer, [](uv_timer_t* h) { static_cast<Impl*>(h->data)->shutdown_tick(); }, 0, 20);
}

void Server::Impl::shutdown_tick() {
  const bool tasks_done = !executor || executor->running() == 0;
  const bool wal_done = store->pending_records() == 0 || store->failed();
  const bool overdue = uv_now(&loop) - stop_started_ms > kShutdownGraceMs;
  if (!((tasks_done && wal_done) || overdue)) return;
  if (overdue) {
    log(Level::kWarn, "server", "shutdown grace exceeded; closing anyway");
    // Still stopping cleanly: what has not been reaped yet ends requeue-free, like the rest
    // (its reports come too late and are dropped as stale; the next start kills leftovers).
    if (local_node) coordinator->end_running_tasks(*local_node, /*requeue_free=*/true);
  }
  close_handles();
}

void Server::Impl::close_handles() {
  uv_timer_stop(&shutdown_timer);
  for (uv_handle_t* h :
       {reinterpret_cast<uv_handle_t*>(&io_poll), reinterpret_cast<uv_handle_t*>(&sigint),
        reinterpret_cast<uv_handle_t*>(&sigterm), reinterpret_cast<uv_handle_t*>(&sighup),
        reinterpret_cast<uv_handle_t*>(&turn_idle), reinterpret_cast<uv_handle_t*>(&flush_prepare),
        reinterpret_cast<uv_handle_t*>(&tick_timer), reinterpret_cast<uv_handle_t*>(&hub_timer),
        reinterpret_cast<uv_handle_t*>(&heat_timer),
        reinterpret_cast<uv_handle_t*>(&shutdown_timer)}) {
    if (!uv_is_closing(h)) uv_close(h, nullptr);
  }
}

// -------------------------------------------------------------------------- Server

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Server::~Server() {
  if (!impl_) return;
  Impl& s = *impl_;
  // What the store still owes (an open() that failed after logging, a stop cut short) runs
  // now, while everything its callbacks reach is alive; stopped, they start nothing.
  if (s.coordinator) {
    s.coordinator->stop();
    s.store->drain();
  }
  s.rpc.reset();
  s.api.reset();
  if (s.hub) s.hub->stop();
  s.hub.reset();
  if (s.executor && s.executor->running() > 0) {
    // The shutdown grace ran out with processes still being reaped. The Executor may
    // not be destroyed with live handles; the process is exiting, so let it go.
    log(Level::kWarn, "server",
        "exiting with " + std::to_string(s.executor->running()) + " tasks not yet reaped");
    (void)s.runner.release();
    (void)s.executor.release();
  } else if (s.executor) {
    s.runner.reset();
    s.executor.reset();
    s.isolation.destroy_parent();  // clean stop: no task left, remove our cgroups
  }
  s.coordinator.reset();  // before the store it writes to
  s.store.reset();        // drains the WAL
  s.logs.reset();
  s.engine.reset();
  if (s.metrics) s.metrics->stop();
  uv_run(&s.loop, UV_RUN_NOWAIT);  // close callbacks of what an early failure left open
  uv_loop_close(&s.loop);
}

Result<std::unique_ptr<Server>> Server::open(ServerOptions options) {
  // Until the loop's handler is in place (start_loop_handles), a hangup during recovery
  // is ignored too; spawned tasks get the default action back (libuv resets it).
  (void)::signal(SIGHUP, SIG_IGN);  // fails only for an invalid signal number
  auto impl = std::make_unique<Impl>();
  Impl& s = *impl;
  s.options = std::move(options);
  // Before the data dir exists: a wrong user is the operator's typo, not a new pool.
  if (s.options.exec) {
    auto users = resolve_task_users(s.options.task_users);
    if (!users) return std::unexpected(users.error());
    s.task_users = std::move(*users);
  }
  if (int rc = uv_loop_init(&s.loop); rc != 0) {
    return fail(Errc::kInternal, std::string("uv_loop_init: ") + uv_strerror(rc));
  }
  std::unique_ptr<Server> server(new Server(std::move(impl)));
  auto dir = DataDir::open(s.options.data_dir, s.options.log_dir);
  if (!dir) return std::unexpected(dir.error());
  s.dir.emplace(std::move(*dir));
  if (auto st = s.open_storage(); !st) return std::unexpected(st.error());
  if (auto st = s.recover(); !st) return std::unexpected(st.error());
  s.facts = read_node_facts();
  s.heat_root = s.options.sysfs_root.empty() ? sysfs_root() : s.options.sysfs_root;
  if (s.options.exec) {
    if (auto st = s.start_executor(); !st) return std::unexpected(st.error());
    if (auto st = register_local_node(s); !st) return std::unexpected(st.error());
    s.refresh_heat();  // before the runner attaches: a hot board gets nothing meanwhile
    s.coordinator->attach_runner(*s.local_node, s.runner.get());
  }
  // This board's executor starts empty: what the log says ran here died with the last run.
  // Other boards' agents still run their tasks and get a grace to come back and say so.
  if (s.local_node) s.coordinator->end_running_tasks(*s.local_node);
  AgentHubOptions ho;
  ho.heartbeat_ms = s.options.heartbeat_ms;
  ho.grace_ms = s.options.grace_ms;
  s.hub = std::make_unique<AgentHub>(*s.coordinator, ho, [&s] { return uv_now(&s.loop); });
  s.hub->await_returning_nodes(s.local_node);
  s.sweep_pruned_logs();
  if (auto st = s.start_listeners(); !st) return std::unexpected(st.error());
  s.start_loop_handles();
  s.request_turn();
  return server;
}

int Server::run() {
  uv_run(&impl_->loop, UV_RUN_DEFAULT);
  if (impl_->store) impl_->store->drain();
  log(Level::kInfo, "server", "stopped");
  return impl_->exit_code;
}

}  // namespace cardnode::runtime
