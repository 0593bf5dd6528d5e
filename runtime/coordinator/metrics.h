// Metrics: the prometheus-cpp registry, served at /metrics by net::HttpServer on the
// server's own loop (no threads; strangers' idle sockets cannot blind a scrape). Every
// value is pushed from the loop thread — set on each state change, or copied from module
// stats by refresh() — except the process memory, read from /proc at scrape time. All
// names start with cardnode_.
//
// Who may read it: anyone who can reach --metrics-listen, as Prometheus expects of an
// exporter (bind it to a management address, or 127.0.0.1 and scrape through a proxy).
// So nothing here may carry a secret: no token, no command line, no environment, no
// job or node name — only counts, the board's arch and the isolation/io modes.
//
// Threading: loop thread only.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <uv.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "net/http_server.h"
#include "proto/error.h"
#include "runtime/exec/task_runner.h"
#include "scheduler/cluster.h"

namespace cardnode::runtime {

// Every monotonic total /metrics shows, in one list: X(field, name, label, value, help).
// The list declares MetricSources' fields, registers the counters and drives refresh(),
// so a new counter is one line here and one assignment where the server fills it in.
#define CARDNODE_COUNTERS(X)                                                                     \
  X(jobs_submitted, "cardnode_jobs_submitted_total", "", "", "Jobs durably accepted")            \
  X(jobs_pruned, "cardnode_jobs_pruned_total", "", "", "Finished jobs dropped by retention")     \
  X(storage_bytes_written, "cardnode_storage_bytes_written_total", "", "",                       \
    "Bytes written to storage (WAL, snapshots, task logs)")                                      \
  X(storage_fsyncs, "cardnode_storage_fsyncs_total", "", "", "fdatasync calls")                  \
  X(wal_records, "cardnode_wal_records_total", "", "", "Records appended to the WAL")            \
  X(snapshots_written, "cardnode_snapshots_written_total", "", "", "Snapshots made durable")     \
  X(snapshot_failures, "cardnode_snapshot_failures_total", "", "",                               \
    "Snapshots abandoned (they are retried)")                                                    \
  X(refused_busy, "cardnode_requests_refused_total", "reason", "busy",                           \
    "Changes refused because the WAL could not take them (the client is told)")                  \
  X(refused_no_space, "cardnode_requests_refused_total", "reason", "no_space",                   \
    "Changes refused because the WAL could not take them (the client is told)")                  \
  X(log_bytes_dropped, "cardnode_log_bytes_dropped_total", "", "",                               \
    "Task output dropped over the per-task log bound")                                           \
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
#define CARDNODE_COUNTER_FIELD(field, name, label, value, help) uint64_t field = 0;
  CARDNODE_COUNTERS(CARDNODE_COUNTER_FIELD)
#undef CARDNODE_COUNTER_FIELD
  // Attempts that ended, by the state they ended in.
  std::array<uint64_t, sched::kTaskStateCount> tasks_ended{};
  uint64_t task_cpu_user_ms = 0;
  uint64_t task_cpu_system_ms = 0;
  std::array<uint64_t, 9> task_mem_peak_buckets{};  // CoordinatorStats' buckets
  uint64_t task_mem_peak_sum_bytes = 0;
};

class Metrics {
 public:
  // Serves /metrics on `listen` ("HOST:PORT"; port 0 picks one) from `loop`.
  [[nodiscard]] static Result<std::unique_ptr<Metrics>> start(uv_loop_t* loop,
                                                              const std::string& listen);
  // Closes the listener and open scrapes (handles finish closing on the loop).
  void stop();
  // The text exposition format, as a scrape gets it.
  std::string render() const;

  std::string bound_address() const;  // "127.0.0.1:41234"
  void set_info(const std::string& arch, const std::string& io_backend,
                const std::string& isolation);
  void set_tasks(const std::array<uint64_t, sched::kTaskStateCount>& totals);
  void set_node(uint32_t cpu_millis_used, uint64_t mem_bytes_used, uint32_t running);
  // This board's heat (runtime/node_facts.h BoardHeat), in base units: degrees Celsius
  // (absent while no thermal zone can be read), and 0/1 for the firmware's flags.
  void set_node_heat(std::optional<int32_t> millicelsius, bool throttled, bool under_voltage);
  void refresh(const MetricSources& now);
  // Runs at each scrape before render(), so counters that change without a request (a
  // refused connection, an eviction) are current when read.
  void on_scrape(std::function<void()> fn) { on_scrape_ = std::move(fn); }

 private:
  std::function<void()> on_scrape_;
  Metrics() = default;
  std::string bound_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<net::HttpServer> http_;
  std::array<prometheus::Gauge*, sched::kTaskStateCount> tasks_{};
  std::array<prometheus::Counter*, sched::kTaskStateCount> tasks_ended_{};
#define CARDNODE_COUNTER_MEMBER(field, name, label, value, help) \
  prometheus::Counter* field##_ = nullptr;
  CARDNODE_COUNTERS(CARDNODE_COUNTER_MEMBER)
#undef CARDNODE_COUNTER_MEMBER
  prometheus::Counter* task_cpu_user_ = nullptr;
  prometheus::Counter* task_cpu_system_ = nullptr;
  prometheus::Histogram* task_mem_peak_ = nullptr;
  prometheus::Gauge* cpu_used_ = nullptr;
  prometheus::Gauge* mem_used_ = nullptr;
  prometheus::Gauge* running_ = nullptr;
  prometheus::Family<prometheus::Gauge>* temperature_family_ = nullptr;
  prometheus::Gauge* temperature_ = nullptr;  // in temperature_family_ while known
  prometheus::Gauge* throttled_ = nullptr;
  prometheus::Gauge* under_voltage_ = nullptr;
  MetricSources last_;
  prometheus::Gauge* resident_ = nullptr;
};

}  // namespace cardnode::runtime
