// AgentHub: the server's side of remote boards (`cardnode agent --join`).
//
// Each connected agent has a Session: its RemoteRunner (the coordinator's TaskRunner for
// that node: "run this task on that node" is one path, local or remote), the AgentPoll it
// keeps outstanding (answered with work as soon as there is some), its last heartbeat and
// its facts. The protocol is in runtime/agent_protocol.md.
//
// - Dispatch keeps the durability rule: the coordinator hands a task to a runner only once
//   its placement is durable; the agent journals it before it spawns.
// - Reports: an agent's task ends go to Coordinator::report_end; the agent hears back only
//   once they are durable, and keeps them (and re-sends them) until then.
// - Failure detection: a node whose heartbeats stop for grace_ms is down; its running tasks
//   end lost and are requeued. Heartbeats are never written anywhere (guarantee 5).
// - Heat and power: every hello and heartbeat carries the board's temperature and throttle
//   flags; they go to Coordinator::report_heat, which holds a hot, throttled or
//   under-voltage board (no new tasks) until it has cooled (scheduler/heat.h). Not durable.
// - Reconciliation: an agent that (re)connects says what it still runs and what ended;
//   attempts that are still its own are kept, others are stopped there without a report,
//   and attempts it no longer knows end lost (but starts the old session never sent, which
//   go out on the new one).
// - After a server start, nodes with tasks the log says run get grace_ms to come back
//   before those tasks end lost: a server restart does not start anything twice.
//
// Threading: loop thread only. The coordinator must outlive the hub.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>

#include "cardnode.pb.h"
#include "net/rpc_server.h"
#include "runtime/coordinator/coordinator.h"

namespace cardnode::runtime {

struct AgentHubOptions {
  uint64_t heartbeat_ms = 1000;  // what agents are told to use
  uint64_t grace_ms = 10'000;    // silence after which a node is down
  uint32_t sessions_max = 10'000;
  uint32_t log_fetches_max = 4096;       // log reads waiting on agents, all together
  uint64_t work_bytes_max = 1ull << 20;  // per AgentWork reply (well under a frame)
  uint64_t log_fetch_timeout_ms = 30'000;
};

struct AgentHubStats {
  uint64_t hellos = 0;
  uint64_t heartbeats = 0;
  uint64_t nodes_declared_down = 0;
  uint64_t stale_stopped = 0;  // attempts an agent ran that were no longer its own
  uint64_t reports = 0;
  uint64_t stale_sessions = 0;  // requests from a session that was replaced
};

class AgentHub {
 public:
  // now_ms: a monotonic clock (the loop's), for heartbeat ages.
  AgentHub(Coordinator& coordinator, AgentHubOptions options, std::function<uint64_t()> now_ms);
  ~AgentHub();
  AgentHub(const AgentHub&) = delete;
  AgentHub& operator=(const AgentHub&) = delete;

  // Agent requests (the client API routes them here).
  void on_hello(const pb::AgentHello& m, const net::Responder& r);
  void on_heartbeat(const pb::AgentHeartbeat& m, const net::Responder& r);
  void on_poll(const pb::AgentPoll& m, net::Responder r);
  void on_report(const pb::AgentReport& m, const net::Responder& r);
  void on_log(const pb::AgentLog& m, const net::Responder& r);

  // Task logs stay on the board that ran the task: a read of one is fetched from its agent.
  // reply runs once: with the chunk, or an error saying why (the board is down...).
  bool serves(sched::NodeId node) const;
  void fetch_log(sched::NodeId node, const pb::ReadLog& m, uint32_t wait_ms,
                 std::function<void(pb::Response)> reply);

  // After a server start: nodes (but `local`) that the log says run tasks get grace_ms to
  // come back before those tasks end lost.
  void await_returning_nodes(std::optional<sched::NodeId> local);
  // Failure detection, the start-up grace, and fetch timeouts. Call about once a second.
  void tick();
  // Ends every session (the server is stopping): held polls get an empty answer.
  void stop();

  // What `nodes` shows of a remote node (facts, last heartbeat).
  void describe(const sched::Node& node, pb::NodeInfo* info) const;
  const AgentHubStats& stats() const { return stats_; }

 private:
  class RemoteRunner;
  struct Session;
  struct Fetch {
    std::function<void(pb::Response)> reply;
    uint64_t deadline_ms;
  };

  Session* session_for(uint64_t session_id);
  void flush(Session& s);
  void declare_down(Session& s);
  sched::NodeSpec spec_from(const pb::NodeFacts& facts) const;

  Coordinator& c_;
  AgentHubOptions options_;
  std::function<uint64_t()> now_ms_;
  std::unordered_map<sched::NodeId, std::unique_ptr<Session>> sessions_;
  std::unordered_map<uint64_t, sched::NodeId> session_ids_;
  // Nodes the log says run tasks, not back yet since this start: when their grace ends.
  std::unordered_map<sched::NodeId, uint64_t> awaited_;
  std::unordered_map<uint64_t, Fetch> fetches_;
  uint64_t next_fetch_id_ = 1;
  AgentHubStats stats_;
};

}  // namespace cardnode::runtime
