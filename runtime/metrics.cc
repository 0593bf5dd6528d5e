#include "runtime/metrics.h"

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include <string>
#include <vector>

#include "net/address.h"
#include "runtime/node_facts.h"

namespace cardnode::runtime {
namespace {

// Reads /proc/self/status at scrape time, on the exposer's thread: no shared state.
class ProcessCollector : public prometheus::Collectable {
 public:
  std::vector<prometheus::MetricFamily> Collect() const override {
    prometheus::MetricFamily rss;
    rss.name = "cardnode_process_resident_memory_bytes";
    rss.help = "Resident set size of this cardnode process (VmRSS)";
    rss.type = prometheus::MetricType::Gauge;
    prometheus::ClientMetric m;
    m.gauge.value = static_cast<double>(resident_bytes());
    rss.metric.push_back(m);
    return {rss};
  }
};

prometheus::Counter* counter(prometheus::Registry& r, const std::string& name,
                             const std::string& help, const prometheus::Labels& labels = {}) {
  return &prometheus::BuildCounter().Name(name).Help(help).Register(r).Add(labels);
}

void add_delta(prometheus::Counter* c, uint64_t now, uint64_t before) {
  if (now > before) c->Increment(static_cast<double>(now - before));
}

}  // namespace

Result<std::unique_ptr<Metrics>> Metrics::start(const std::string& listen) {
  auto hp = net::parse_host_port(listen);
  if (!hp) return std::unexpected(hp.error());
  std::unique_ptr<Metrics> m(new Metrics());
  m->registry_ = std::make_shared<prometheus::Registry>();
  auto& r = *m->registry_;
  m->jobs_submitted_ = counter(r, "cardnode_jobs_submitted_total", "Jobs durably accepted");
  auto& tasks = prometheus::BuildGauge()
                    .Name("cardnode_tasks")
                    .Help("Tasks known to this server, by state")
                    .Register(r);
  auto& finished = prometheus::BuildCounter()
                       .Name("cardnode_tasks_finished_total")
                       .Help("Task attempts that ended, by the state they ended in")
                       .Register(r);
  for (size_t s = 0; s < sched::kTaskStateCount; ++s) {
    const char* name = sched::task_state_name(static_cast<sched::TaskState>(s));
    m->tasks_[s] = &tasks.Add({{"state", name}});
    // Only end states of an attempt are counted; queued/running stay null.
    const auto st = static_cast<sched::TaskState>(s);
    if (sched::is_final(st) || st == sched::TaskState::kLost)
      m->tasks_finished_[s] = &finished.Add({{"state", name}});
  }
  m->bytes_written_ = counter(r, "cardnode_storage_bytes_written_total",
                              "Bytes written to storage (WAL and task logs)");
  m->fsyncs_ = counter(r, "cardnode_storage_fsyncs_total", "fdatasync calls");
  m->wal_records_ = counter(r, "cardnode_wal_records_total", "Records appended to the WAL");
  m->log_bytes_dropped_ = counter(r, "cardnode_log_bytes_dropped_total",
                                  "Task output dropped over the per-task log bound");
  m->accepted_ = counter(r, "cardnode_net_connections_accepted_total", "TCP connections accepted");
  const std::string rej = "cardnode_net_connections_rejected_total";
  const std::string rej_help = "Connections closed for bad input, by reason";
  auto& rejected = prometheus::BuildCounter().Name(rej).Help(rej_help).Register(r);
  m->rejected_auth_ = &rejected.Add({{"reason", "auth"}});
  m->rejected_protocol_ = &rejected.Add({{"reason", "protocol"}});
  m->rejected_limit_ = &rejected.Add({{"reason", "limit"}});
  m->requests_ = counter(r, "cardnode_net_requests_total", "Client requests served");
  auto gauge = [&r](const std::string& name, const std::string& help) {
    return &prometheus::BuildGauge().Name(name).Help(help).Register(r).Add({});
  };
  m->cpu_used_ =
      gauge("cardnode_node_cpu_millis_used", "CPU reserved by running tasks (1000 = one core)");
  m->mem_used_ = gauge("cardnode_node_memory_bytes_used", "Memory reserved by running tasks");
  m->running_ = gauge("cardnode_node_running_tasks", "Tasks running on this board");
  m->process_collector_ = std::make_shared<ProcessCollector>();

  try {  // prometheus-cpp reports a failed bind by throwing; nothing escapes this module.
    const std::string host = hp->host.empty() ? "0.0.0.0" : hp->host;
    m->exposer_ = std::make_unique<prometheus::Exposer>(
        host + ":" + std::to_string(hp->port), 1);  // one civetweb worker: scrapes are rare
  } catch (const std::exception& e) {
    return fail(Errc::kUnavailable, "cannot listen for metrics on " + listen + ": " + e.what());
  }
  m->exposer_->RegisterCollectable(m->registry_);
  m->exposer_->RegisterCollectable(m->process_collector_);
  auto ports = m->exposer_->GetListeningPorts();
  m->bound_ = hp->host + ":" + std::to_string(ports.empty() ? hp->port : ports.front());
  return m;
}

std::string Metrics::bound_address() const {
  return bound_;
}

void Metrics::set_info(const std::string& arch, const std::string& io_backend,
                       const std::string& isolation) {
  prometheus::BuildGauge()
      .Name("cardnode_build_info")
      .Help("Constant 1; labels describe this process")
      .Register(*registry_)
      .Add({{"arch", arch}, {"io_backend", io_backend}, {"isolation", isolation}})
      .Set(1);
}

void Metrics::set_tasks(const std::array<uint64_t, sched::kTaskStateCount>& totals) {
  for (size_t s = 0; s < totals.size(); ++s) tasks_[s]->Set(static_cast<double>(totals[s]));
}

void Metrics::set_node(uint32_t cpu_millis_used, uint64_t mem_bytes_used, uint32_t running) {
  cpu_used_->Set(cpu_millis_used);
  mem_used_->Set(static_cast<double>(mem_bytes_used));
  running_->Set(running);
}

void Metrics::refresh(const MetricSources& now) {
  add_delta(bytes_written_, now.storage_bytes_written, last_.storage_bytes_written);
  add_delta(fsyncs_, now.storage_fsyncs, last_.storage_fsyncs);
  add_delta(wal_records_, now.wal_records, last_.wal_records);
  add_delta(log_bytes_dropped_, now.log_bytes_dropped, last_.log_bytes_dropped);
  add_delta(accepted_, now.net_accepted, last_.net_accepted);
  add_delta(rejected_auth_, now.net_rejected_auth, last_.net_rejected_auth);
  add_delta(rejected_protocol_, now.net_rejected_protocol, last_.net_rejected_protocol);
  add_delta(rejected_limit_, now.net_rejected_limit, last_.net_rejected_limit);
  add_delta(requests_, now.net_requests, last_.net_requests);
  last_ = now;
}

}  // namespace cardnode::runtime
