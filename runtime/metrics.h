// Metrics: the prometheus-cpp registry and exposer (its civetweb threads are the only
// threads besides the loop; they read prometheus-cpp's atomics, never our state).
// Every value is pushed from the loop thread — set on each state change, or copied
// from module stats by refresh() — except the process memory, which a collector reads
// from /proc at scrape time. All names start with cardnode_.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>

#include "proto/error.h"
#include "scheduler/cluster.h"

namespace cardnode::runtime {

// Monotonic totals kept by other modules; refresh() adds the growth since last time.
struct MetricSources {
  uint64_t storage_bytes_written = 0;
  uint64_t storage_fsyncs = 0;
  uint64_t wal_records = 0;
  uint64_t log_bytes_dropped = 0;
  uint64_t net_accepted = 0;
  uint64_t net_rejected_auth = 0;
  uint64_t net_rejected_protocol = 0;
  uint64_t net_rejected_limit = 0;
  uint64_t net_requests = 0;
};

class Metrics {
 public:
  // Starts the exposer on `listen` ("HOST:PORT"; port 0 picks one).
  [[nodiscard]] static Result<std::unique_ptr<Metrics>> start(const std::string& listen);

  std::string bound_address() const;  // "127.0.0.1:41234"
  void set_info(const std::string& arch, const std::string& io_backend,
                const std::string& isolation);
  void job_submitted() { jobs_submitted_->Increment(); }
  void task_finished(sched::TaskState s) {
    if (auto* c = tasks_finished_[static_cast<size_t>(s)]) c->Increment();
  }
  void set_tasks(const std::array<uint64_t, sched::kTaskStateCount>& totals);
  void set_node(uint32_t cpu_millis_used, uint64_t mem_bytes_used, uint32_t running);
  void refresh(const MetricSources& now);

 private:
  Metrics() = default;
  std::string bound_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  prometheus::Counter* jobs_submitted_ = nullptr;
  std::array<prometheus::Gauge*, sched::kTaskStateCount> tasks_{};
  std::array<prometheus::Counter*, sched::kTaskStateCount> tasks_finished_{};
  prometheus::Counter* bytes_written_ = nullptr;
  prometheus::Counter* fsyncs_ = nullptr;
  prometheus::Counter* wal_records_ = nullptr;
  prometheus::Counter* log_bytes_dropped_ = nullptr;
  prometheus::Counter* accepted_ = nullptr;
  prometheus::Counter* rejected_auth_ = nullptr;
  prometheus::Counter* rejected_protocol_ = nullptr;
  prometheus::Counter* rejected_limit_ = nullptr;
  prometheus::Counter* requests_ = nullptr;
  prometheus::Gauge* cpu_used_ = nullptr;
  prometheus::Gauge* mem_used_ = nullptr;
  prometheus::Gauge* running_ = nullptr;
  MetricSources last_;
  std::shared_ptr<prometheus::Collectable> process_collector_;
};

}  // namespace cardnode::runtime
