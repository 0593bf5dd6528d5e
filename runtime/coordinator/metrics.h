// Metrics: the server's /metrics — the board's own families (runtime/board_metrics.h, which
// also serves them) plus the cluster's: jobs, tasks by state, task CPU and memory, the WAL,
// snapshots, refusals, connections. Every value is pushed from the loop thread — set on each
// state change, or copied from module stats by refresh() — except the process memory, read
// from /proc at scrape time. All names start with cardnode_; none carries a secret or a job
// or node name (board_metrics.h says why).
//
// Threading: loop thread only.
#pragma once

#include <uv.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "proto/error.h"
#include "runtime/board_metrics.h"
#include "runtime/exec/task_runner.h"
#include "runtime/prom.h"
#include "scheduler/cluster.h"

namespace cardnode::runtime {

// Every monotonic total of the cluster /metrics shows, in one list: X(field, name, label, value,
// help). The list declares MetricSources' fields, registers the counters and drives refresh(), so a
// new counter is one line here and one assignment where the server fills it in.
#define CARDNODE_COUNTERS(X)                                                                     \
  X(jobs_submitted, "cardnode_jobs_submitted_total", "", "", "Jobs durably accepted")            \
  X(jobs_pruned, "cardnode_jobs_pruned_total", "", "", "Finished jobs dropped by retention")     \
  X(wal_records, "cardnode_wal_records_total", "", "", "Records appended to the WAL")            \
  X(standby_placements, "cardnode_standby_placements_total", "", "",                             \
    "Tasks placed in standby on a full board, to start when a task there ends")                  \
  X(standby_promotions, "cardnode_standby_promotions_total", "", "",                             \
    "Standby tasks that a task's end on their board gave room to")                               \
  X(snapshots_written, "cardnode_snapshots_written_total", "", "", "Snapshots made durable")     \
  X(snapshot_failures, "cardnode_snapshot_failures_total", "", "",                               \
    "Snapshots abandoned (they are retried)")                                                    \
  X(refused_busy, "cardnode_requests_refused_total", "reason", "busy",                           \
    "Changes refused because the WAL could not take them (the client is told)")                  \
  X(refused_no_space, "cardnode_requests_refused_total", "reason", "no_space",                   \
    "Changes refused because the WAL could not take them (the client is told)")                  \
  X(net_accepted, "cardnode_net_connections_accepted_total", "", "", "TCP connections accepted") \
  X(net_rejected_auth, "cardnode_net_connections_rejected_total", "reason", "auth",              \
    "Connections closed for bad input, by reason")                                               \
  X(net_rejected_protocol, "cardnode_net_connections_rejected_total", "reason", "protocol",      \
    "Connections closed for bad input, by reason")                                               \
  X(net_rejected_limit, "cardnode_net_connections_rejected_total", "reason", "limit",            \
    "Connections closed for bad input, by reason")                                               \
  X(net_rejected_rate, "cardnode_net_connections_rejected_total", "reason", "rate",              \
    "Connections closed for bad input, by reason")                                               \
  X(net_evicted, "cardnode_net_connections_rejected_total", "reason", "evicted",                 \
    "Connections closed for bad input, by reason")                                               \
  X(net_closed_idle, "cardnode_net_connections_idle_closed_total", "", "",                       \
    "Authenticated connections closed after the idle timeout")                                   \
  X(net_requests, "cardnode_net_requests_total", "", "", "Client requests served")

// Monotonic totals kept by other modules; refresh() adds the growth since last time.
struct MetricSources {
  BoardSources board;  // this board's storage and logs
#define CARDNODE_COUNTER_FIELD(field, name, label, value, help) uint64_t field = 0;
  CARDNODE_COUNTERS(CARDNODE_COUNTER_FIELD)
#undef CARDNODE_COUNTER_FIELD
  // Attempts that ended, by the state they ended in.
  std::array<uint64_t, sched::kTaskStateCount> tasks_ended{};
  uint64_t task_cpu_user_ms = 0;
  uint64_t task_cpu_system_ms = 0;
  std::array<uint64_t, 9> task_mem_peak_buckets{};  // CoordinatorStats' buckets
  uint64_t task_mem_peak_sum_bytes = 0;
  std::array<uint64_t, 9> task_duration_buckets{};  // CoordinatorStats' buckets
  uint64_t task_duration_sum_ms = 0;
};

class Metrics {
 public:
  // Serves /metrics on `listen` ("HOST:PORT"; port 0 picks one) from `loop`.
  [[nodiscard]] static Result<std::unique_ptr<Metrics>> start(uv_loop_t* loop,
                                                              const std::string& listen);
  // Closes the listener and open scrapes (handles finish closing on the loop).
  void stop() { board_->stop(); }
  // The text exposition format, as a scrape gets it.
  std::string render() const { return board_->render(); }
  std::string bound_address() const { return board_->bound_address(); }  // "127.0.0.1:41234"

  // This board's: as BoardMetrics.
  BoardMetrics& board() { return *board_; }
  void set_tasks(const std::array<uint64_t, sched::kTaskStateCount>& totals);
  void refresh(const MetricSources& now);
  // Runs at each scrape before render(), so counters that change without a request (a
  // refused connection, an eviction) are current when read.
  void on_scrape(std::function<void()> fn) { board_->on_scrape(std::move(fn)); }
  // Every other path of the listener: the status page (status_site.h).
  void serve_other_paths(net::HttpAsyncHandler fn) { board_->serve_other_paths(std::move(fn)); }

 private:
  Metrics() = default;
  std::unique_ptr<BoardMetrics> board_;
  std::array<prom::Gauge*, sched::kTaskStateCount> tasks_{};
  std::array<prom::Counter*, sched::kTaskStateCount> tasks_ended_{};
#define CARDNODE_COUNTER_MEMBER(field, name, label, value, help) prom::Counter* field##_ = nullptr;
  CARDNODE_COUNTERS(CARDNODE_COUNTER_MEMBER)
#undef CARDNODE_COUNTER_MEMBER
  prom::Counter* task_cpu_user_ = nullptr;
  prom::Counter* task_cpu_system_ = nullptr;
  prom::Histogram* task_mem_peak_ = nullptr;
  prom::Histogram* task_duration_ = nullptr;
  MetricSources last_;
};

}  // namespace cardnode::runtime
