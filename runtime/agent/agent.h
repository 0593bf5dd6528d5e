// Agent: `cardnode agent --join HOST:PORT` — a board that runs what the server gives it.
//
// One loop, like the server: an RpcClient to the server (net/rpc_client.h: reconnects with
// exponential backoff and jitter), the Executor and its isolation, a LogStore for task
// output (logs stay on this board; the server fetches them), and the AgentJournal.
//
// The session (runtime/agent_protocol.md): hello with identity, facts, what still runs and
// the ends not yet acknowledged; then one AgentPoll always outstanding (answered with work),
// heartbeats every heartbeat_ms, and reports of task ends until acknowledged. Each heartbeat
// carries the board's heat read afresh (temperature, throttle flags): the server decides
// from them whether the board takes new tasks. With --metrics-listen the agent serves its
// board's /metrics (runtime/board_metrics.h) on the same loop.
//
// Edge autonomy: when the server is away (crash, restart, partition) nothing here stops —
// tasks run on, their ends wait in the journal, and go out when the server is back.
// An agent restart kills what its previous run left (cgroups, the task tag) and reports
// those attempts lost: nothing runs untracked.
//
// Threading: run() owns the calling thread; request_stop() may be called from any thread.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "net/channel.h"
#include "proto/error.h"
#include "runtime/exec/task_user.h"

namespace cardnode::runtime {

struct AgentOptions {
  std::string join;  // HOST:PORT of the server
  // The cluster token (the CLI reads --token-file etc.) and --insecure / --tls-*.
  net::SecurityOptions security;
  std::string data_dir;   // node_id, journal/, logs/, work/
  std::string log_dir;    // empty: DATA_DIR/logs
  std::string node_name;  // empty: the hostname
  std::map<std::string, std::string> labels;
  TaskUserOptions task_users;  // --task-user, --allow-root-tasks, --allow-task-user
  bool disable_cgroups = false;
  bool favor_dynmods = false;    // as ServerOptions::favor_dynmods (the CLI sets it)
  uint32_t tasks_max = 1024;     // tasks at once: told to the server, which never sends more
  uint64_t heartbeat_ms = 1000;  // until the server says otherwise
  // Where the board's heat is read (runtime/node_facts.h), again with every heartbeat:
  // empty means $CARDNODE_SYSFS_ROOT, else "/".
  std::string sysfs_root;
  // This board's /metrics (runtime/board_metrics.h), "HOST:PORT" (port 0 picks one); empty:
  // none. The CLI's default is 0.0.0.0:9742, as the server's.
  std::string metrics_listen;
  // The address is the CLI's default, not asked for: when it is taken (a server, or another
  // agent, on the same board serves :9742) the agent warns and runs without /metrics, rather
  // than refusing to run tasks. An address given with --metrics-listen must bind.
  bool metrics_listen_default = false;
};

class Agent {
 public:
  [[nodiscard]] static Result<std::unique_ptr<Agent>> open(AgentOptions options);
  ~Agent();
  // Runs until SIGINT/SIGTERM: tasks are killed (their ends reported lost if the server can
  // be told, else kept in the journal). Returns the exit code.
  int run();
  // As SIGTERM, from any thread (a test, an embedding program): run() stops the same way.
  // Before run() it takes effect once run() starts; after run() returned it does nothing.
  void request_stop();

  struct Impl;

 private:
  explicit Agent(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace cardnode::runtime
