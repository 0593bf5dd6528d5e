#include "runtime/board_metrics.h"

#include <string>

#include "net/address.h"
#include "runtime/node_facts.h"

namespace cardnode::runtime {
namespace {

prom::Counter* counter(prom::Registry& r, const std::string& name, const std::string& help) {
  return &r.counter(name, help).Add({});
}

prom::Gauge* gauge(prom::Registry& r, const std::string& name, const std::string& help) {
  return &r.gauge(name, help).Add({});
}

void add_growth(prom::Counter* c, uint64_t now, uint64_t before) {
  if (now > before) c->Increment(static_cast<double>(now - before));
}

}  // namespace

BoardSources board_sources(const storage::IoStats& io, uint64_t log_bytes_dropped) {
  return {.storage_bytes_written = io.bytes_written,
          .storage_fsyncs = io.fsyncs,
          .fsync_buckets = io.fsync_buckets,
          .fsync_ns_sum = io.fsync_ns_sum,
          .log_bytes_dropped = log_bytes_dropped};
}

Result<std::unique_ptr<BoardMetrics>> BoardMetrics::start(uv_loop_t* loop,
                                                          const std::string& listen) {
  auto hp = net::parse_host_port(listen);
  if (!hp) return std::unexpected(hp.error());
  std::unique_ptr<BoardMetrics> m(new BoardMetrics());
  auto& r = m->registry_;
  m->bytes_written_ = counter(r, "cardnode_storage_bytes_written_total",
                              "Bytes written to storage (WAL, snapshots, task logs)");
  m->fsyncs_ = counter(r, "cardnode_storage_fsyncs_total",
                       "fdatasync calls, and writes with RWF_DSYNC (a WAL batch)");
  m->fsync_seconds_ =
      &r.histogram(
            "cardnode_storage_fsync_duration_seconds",
            "fdatasync latency, from submission to completion (WAL, snapshots, task logs); a "
            "WAL batch's is its whole write with RWF_DSYNC")
           .Add({}, prom::Histogram::BucketBoundaries(storage::kFsyncBucketsSeconds.begin(),
                                                      storage::kFsyncBucketsSeconds.end()));
  m->log_bytes_dropped_ = counter(r, "cardnode_log_bytes_dropped_total",
                                  "Task output dropped over the per-task log bound");
  m->cpu_used_ =
      gauge(r, "cardnode_node_cpu_used_cores", "CPU reserved by running tasks, in cores");
  m->mem_used_ = gauge(r, "cardnode_node_memory_used_bytes", "Memory reserved by running tasks");
  m->running_ = gauge(r, "cardnode_node_running_tasks", "Tasks running on this board");
  m->temperature_family_ =
      &r.gauge("cardnode_node_temperature_celsius",
               "This board's hottest thermal zone (absent when none can be read)");
  m->throttled_ = gauge(r, "cardnode_node_throttled",
                        "1 while the firmware throttles this board (get_throttled bits 1-3)");
  m->under_voltage_ = gauge(r, "cardnode_node_under_voltage",
                            "1 while the firmware reports under-voltage (get_throttled bit 0)");
  m->resident_ = gauge(r, "cardnode_process_resident_memory_bytes",
                       "Resident set size of this cardnode process (VmRSS)");

  net::HttpServerOptions ho;
  ho.listen = listen;
  BoardMetrics* self = m.get();
  m->http_ = std::make_unique<net::HttpServer>(
      loop, ho, [self](const net::HttpRequest& req, net::HttpResponder r) {
        const std::string& path = req.path;
        if (path == "/metrics") {
          if (self->on_scrape_) self->on_scrape_();
          return r.reply({200, "text/plain; version=0.0.4; charset=utf-8", self->render()});
        }
        if (self->other_paths_) return self->other_paths_(req, std::move(r));
        if (path == "/") return r.reply({200, "text/plain; charset=utf-8", "see /metrics\n"});
        r.reply({404, "text/plain; charset=utf-8", "not found\n"});
      });
  auto bound = m->http_->start();
  if (!bound) return std::unexpected(bound.error());
  auto bound_hp = net::parse_host_port(*bound);
  // As asked for ("0.0.0.0:9420" stays 0.0.0.0), with the port really bound.
  m->bound_ = hp->host + ":" + std::to_string(bound_hp ? bound_hp->port : hp->port);
  return m;
}

void BoardMetrics::stop() {
  if (http_) http_->stop();
}

std::string BoardMetrics::render() const {
  resident_->Set(static_cast<double>(resident_bytes()));
  return registry_.render();
}

void BoardMetrics::set_info(const std::string& arch, const std::string& io_backend,
                            const std::string& isolation) {
  registry_.gauge("cardnode_build_info", "Constant 1; labels describe this process")
      .Add({{"arch", arch}, {"io_backend", io_backend}, {"isolation", isolation}})
      .Set(1);
}

void BoardMetrics::set_node(uint32_t cpu_millis_used, uint64_t mem_bytes_used, uint32_t running) {
  cpu_used_->Set(cpu_millis_used / 1000.0);
  mem_used_->Set(static_cast<double>(mem_bytes_used));
  running_->Set(running);
}

void BoardMetrics::set_node_heat(std::optional<int32_t> millicelsius, bool throttled,
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

void BoardMetrics::refresh(const BoardSources& now) {
  add_growth(bytes_written_, now.storage_bytes_written, last_.storage_bytes_written);
  add_growth(fsyncs_, now.storage_fsyncs, last_.storage_fsyncs);
  add_growth(log_bytes_dropped_, now.log_bytes_dropped, last_.log_bytes_dropped);
  observe_growth(fsync_seconds_, now.fsync_buckets, last_.fsync_buckets,
                 static_cast<double>(now.fsync_ns_sum - last_.fsync_ns_sum) / 1e9);
  last_ = now;
}

}  // namespace cardnode::runtime
