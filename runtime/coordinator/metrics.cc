#include "runtime/coordinator/metrics.h"

#include <prometheus/text_serializer.h>

#include <string>
#include <string_view>
#include <vector>

#include "net/address.h"
#include "runtime/node_facts.h"

namespace cardnode::runtime {
namespace {

prometheus::Counter* counter(prometheus::Registry& r, const std::string& name,
                             const std::string& help, const prometheus::Labels& labels = {}) {
  return &prometheus::BuildCounter().Name(name).Help(help).Register(r).Add(labels);
}

void add_delta(prometheus::Counter* c, uint64_t now, uint64_t before) {
  if (now > before) c->Increment(static_cast<double>(now - before));
}

}  // namespace

Result<std::unique_ptr<Metrics>> Metrics::start(uv_loop_t* loop, const std::string& listen) {
  auto hp = net::parse_host_port(listen);
  if (!hp) return std::unexpected(hp.error());
  std::unique_ptr<Metrics> m(new Metrics());
  m->registry_ = std::make_shared<prometheus::Registry>();
  auto& r = *m->registry_;
  auto& tasks = prometheus::BuildGauge()
                    .Name("cardnode_tasks")
                    .Help("Tasks known to this server, by state")
                    .Register(r);
  auto& ended = prometheus::BuildCounter()
                    .Name("cardnode_tasks_finished_total")
                    .Help("Task attempts that ended, by the state they ended in")
                    .Register(r);
  for (size_t s = 0; s < sched::kTaskStateCount; ++s) {
    const auto st = static_cast<sched::TaskState>(s);
    const char* name = sched::task_state_name(st);
    m->tasks_[s] = &tasks.Add({{"state", name}});
    // Only the end of an attempt counts; queued/running stay null.
    if (sched::is_final(st)) m->tasks_ended_[s] = &ended.Add({{"state", name}});
  }
#define CARDNODE_COUNTER_REGISTER(field, name, label, value, help)       \
  m->field##_ = std::string_view(label).empty() ? counter(r, name, help) \
                                                : counter(r, name, help, {{label, value}});
  CARDNODE_COUNTERS(CARDNODE_COUNTER_REGISTER)
#undef CARDNODE_COUNTER_REGISTER
  auto& cpu = prometheus::BuildCounter()
                  .Name("cardnode_task_cpu_seconds_total")
                  .Help("CPU time used by finished task attempts, by mode")
                  .Register(r);
  m->task_cpu_user_ = &cpu.Add({{"mode", "user"}});
  m->task_cpu_system_ = &cpu.Add({{"mode", "system"}});
  prometheus::Histogram::BucketBoundaries bounds;
  for (uint64_t b : kTaskMemoryBucketsBytes) bounds.push_back(static_cast<double>(b));
  m->task_mem_peak_ = &prometheus::BuildHistogram()
                           .Name("cardnode_task_memory_peak_bytes")
                           .Help("Peak memory of each finished task attempt")
                           .Register(r)
                           .Add({}, bounds);
  auto gauge = [&r](const std::string& name, const std::string& help) {
    return &prometheus::BuildGauge().Name(name).Help(help).Register(r).Add({});
  };
  m->cpu_used_ =
      gauge("cardnode_node_cpu_millis_used", "CPU reserved by running tasks (1000 = one core)");
  m->mem_used_ = gauge("cardnode_node_memory_bytes_used", "Memory reserved by running tasks");
  m->running_ = gauge("cardnode_node_running_tasks", "Tasks running on this board");
  m->temperature_family_ =
      &prometheus::BuildGauge()
           .Name("cardnode_node_temperature_celsius")
           .Help("This board's hottest thermal zone (absent when none can be read)")
           .Register(r);
  m->throttled_ = gauge("cardnode_node_throttled",
                        "1 while the firmware throttles this board (get_throttled bits 1-3)");
  m->under_voltage_ = gauge("cardnode_node_under_voltage",
                            "1 while the firmware reports under-voltage (get_throttled bit 0)");
  m->resident_ = gauge("cardnode_process_resident_memory_bytes",
                       "Resident set size of this cardnode process (VmRSS)");

  net::HttpServerOptions ho;
  ho.listen = listen;
  Metrics* self = m.get();
  m->http_ = std::make_unique<net::HttpServer>(loop, ho, [self](const std::string& path) {
    if (path == "/metrics") {
      if (self->on_scrape_) self->on_scrape_();
      return net::HttpReply{200, "text/plain; version=0.0.4; charset=utf-8", self->render()};
    }
    if (path == "/") return net::HttpReply{200, "text/plain; charset=utf-8", "see /metrics\n"};
    return net::HttpReply{404, "text/plain; charset=utf-8", "not found\n"};
  });
  auto bound = m->http_->start();
  if (!bound) return std::unexpected(bound.error());
  auto bound_hp = net::parse_host_port(*bound);
  // As asked for ("0.0.0.0:9420" stays 0.0.0.0), with the port really bound.
  m->bound_ = hp->host + ":" + std::to_string(bound_hp ? bound_hp->port : hp->port);
  return m;
}

void Metrics::stop() {
  if (http_) http_->stop();
}

std::string Metrics::render() const {
  resident_->Set(static_cast<double>(resident_bytes()));
  return prometheus::TextSerializer().Serialize(registry_->Collect());
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

void Metrics::set_node_heat(std::optional<int32_t> millicelsius, bool throttled,
                            bool under_voltage) {
  if (millicelsius) {
    if (temperature_ == nullptr) temperature_ = &temperature_family_->Add({});
    temperature_->Set(*millicelsius / 1000.0);
  } else if (temperature_ != nullptr) {
    temperature_family_->Remove(temperature_);  // no reading: no sample, rather than a stale one
    temperature_ = nullptr;
  }
  throttled_->Set(throttled ? 1 : 0);
  under_voltage_->Set(under_voltage ? 1 : 0);
}

void Metrics::refresh(const MetricSources& now) {
#define CARDNODE_COUNTER_REFRESH(field, name, label, value, help) \
  add_delta(field##_, now.field, last_.field);
  CARDNODE_COUNTERS(CARDNODE_COUNTER_REFRESH)
#undef CARDNODE_COUNTER_REFRESH
  for (size_t s = 0; s < sched::kTaskStateCount; ++s) {
    if (tasks_ended_[s] != nullptr)
      add_delta(tasks_ended_[s], now.tasks_ended[s], last_.tasks_ended[s]);
  }
  auto add_ms = [](prometheus::Counter* c, uint64_t now_ms, uint64_t before_ms) {
    if (now_ms > before_ms) c->Increment(static_cast<double>(now_ms - before_ms) / 1e3);
  };
  add_ms(task_cpu_user_, now.task_cpu_user_ms, last_.task_cpu_user_ms);
  add_ms(task_cpu_system_, now.task_cpu_system_ms, last_.task_cpu_system_ms);
  std::vector<double> increments;
  bool grew = false;
  for (size_t b = 0; b < now.task_mem_peak_buckets.size(); ++b) {
    uint64_t d = now.task_mem_peak_buckets[b] - last_.task_mem_peak_buckets[b];
    grew = grew || d > 0;
    increments.push_back(static_cast<double>(d));
  }
  if (grew) {
    task_mem_peak_->ObserveMultiple(increments, static_cast<double>(now.task_mem_peak_sum_bytes -
                                                                    last_.task_mem_peak_sum_bytes));
  }
  last_ = now;
}

}  // namespace cardnode::runtime
