// Server: the coordinator process (`cardnode server`). It owns the event loop and wires
// the parts together; each part does one job behind a narrow interface:
//
//   DataDir (runtime/data_dir.h)          lock, token, identity, published addresses
//   LocalStore (storage/local_store.h)    WAL + snapshots: the durable store
//   Coordinator (runtime/coordinator.h)   record -> apply -> schedule -> dispatch
//   ClientApi (runtime/api.h)             one handler per client request
//   LocalRunner + Executor                this board's tasks (unless --no-exec)
//   RpcServer (net/), Metrics             the two listeners
//   StatusSite (runtime/status_site.h)    the status page, on the metrics listener
//
// The server decides only what needs the loop: when the coordinator takes a turn (a
// uv_idle after any event, and a 1 s tick), when its own board's heat is read (every
// heartbeat period, as agents do), how storage completions reach it (an eventfd
// watched with uv_poll), and how it stops (SIGINT/SIGTERM, or a storage failure; SIGHUP
// is logged and ignored).
//
// Threading: run() owns the calling thread; the metrics exposer keeps its own thread.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "net/channel.h"
#include "proto/error.h"
#include "runtime/exec/task_user.h"

namespace cardnode::runtime {

struct ServerOptions {
  std::string data_dir;
  std::string listen = "0.0.0.0:7420";
  std::string metrics_listen = "0.0.0.0:9742";
  // The status page next to /metrics (status_site.h): --no-status-page turns it off; task
  // logs and jobs' commands are shown on a loopback listener, or anywhere with --status-logs.
  bool status_page = true;
  bool status_logs = false;
  // Host names the status page answers besides IP literals, localhost and this hostname
  // (--status-host; status_page.h host_allowed).
  std::vector<std::string> status_hosts;
  std::string log_dir;    // empty: DATA_DIR/logs
  bool exec = true;       // false: --no-exec, coordinate only
  std::string node_name;  // empty: the hostname
  std::map<std::string, std::string> labels;
  TaskUserOptions task_users;    // --task-user, --allow-root-tasks, --allow-task-user
  bool disable_cgroups = false;  // rlimits only (CARDNODE_NO_CGROUPS=1)
  // Turn on cgroup2 favordynmods (exec/cgroup_mode.h). The CLI sets it unless
  // --no-favordynmods; off here so a library user (a test) never changes the host.
  bool favor_dynmods = false;
  uint32_t keep_finished = 10'000;                          // --keep-finished
  uint64_t keep_finished_for_ms = 7ull * 24 * 3600 * 1000;  // --keep-finished-for
  uint64_t snapshot_wal_bytes = 8ull << 20;                 // --snapshot-wal-bytes
  uint64_t heartbeat_ms = 1000;                             // --heartbeat: agents' interval
  uint64_t grace_ms = 10'000;                               // --grace: silence before down
  // Heat and power (scheduler/heat.h): a board above hot_millicelsius, or throttled or
  // under-voltage now, gets no new tasks until it has cooled to hot - cool_margin.
  int32_t hot_millicelsius = 80'000;         // --hot-celsius
  int32_t cool_margin_millicelsius = 5'000;  // --cool-margin
  // Where this board's heat is read, every heartbeat_ms (runtime/node_facts.h): empty means
  // $CARDNODE_SYSFS_ROOT, else "/".
  std::string sysfs_root;
  // --insecure, --tls-cert/--tls-key/--tls-ca; the token is DATA_DIR/token (set by open()).
  net::SecurityOptions security;
};

class Server {
 public:
  // Opens (creating if needed) the data dir, recovers the state from the newest snapshot
  // and the WAL after it, and binds both listeners. Errors are for the operator: one line,
  // then exit 1.
  [[nodiscard]] static Result<std::unique_ptr<Server>> open(ServerOptions options);
  ~Server();

  // Serves until SIGINT or SIGTERM (clean stop: tasks killed and requeued without using
  // their lost budget, WAL drained) or a storage failure. Returns the process exit code.
  int run();

  struct Impl;

 private:
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace cardnode::runtime
