// BoardMetrics: what every board's /metrics shows about the board itself — the process
// (build info, resident memory), its reservations and heat, its storage (bytes written,
// fdatasyncs and their latency) and the task output it dropped — and the endpoint that serves
// it: net::HttpServer on the process's own loop (no threads; strangers' idle sockets cannot
// blind a scrape). `cardnode agent` serves these alone; the server adds the cluster's
// families (runtime/coordinator/metrics.h) to the same registry. Names start with cardnode_
// and follow Prometheus' conventions: base units last (_seconds, _bytes, _celsius, _cores),
// counters end in _total (`promtool check metrics` is clean: tests/e2e_prometheus_test.cc).
//
// Who may read it: anyone who can reach --metrics-listen, as Prometheus expects of an
// exporter (bind it to a management address, or 127.0.0.1 and scrape through a proxy), with
// any Host header. So /metrics carries no secret: no token, no command line, no environment,
// no job or node name — only counts, the board's arch and the isolation/io modes. Every
// other path of a server's listener is its status page (serve_other_paths(); agents serve
// none): job and node names, states and counts to anyone who can reach it, but jobs' commands
// and users and task logs only on a loopback listener or with `server --status-logs`, no
// environment ever, and only to requests whose Host is an IP address, localhost, this host's
// name or a --status-host name (DNS rebinding): runtime/coordinator/status_page.h.
//
// Threading: loop thread only (the loop is the only writer and the only reader).
#pragma once

#include <uv.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "net/http_server.h"
#include "proto/error.h"
#include "runtime/prom.h"
#include "storage/io_engine.h"

namespace cardnode::runtime {

// Monotonic totals of this board, as its modules count them; refresh() adds the growth.
struct BoardSources {
  uint64_t storage_bytes_written = 0;  // storage::IoStats
  uint64_t storage_fsyncs = 0;
  std::array<uint64_t, storage::kFsyncBucketsSeconds.size() + 1> fsync_buckets{};
  uint64_t fsync_ns_sum = 0;
  uint64_t log_bytes_dropped = 0;  // storage::LogStore
};

// The sources as storage counts them.
BoardSources board_sources(const storage::IoStats& io, uint64_t log_bytes_dropped);

// Adds to `h` what a source's per-bucket counts (not cumulative, the last +Inf) grew by.
template <size_t N>
void observe_growth(prom::Histogram* h, const std::array<uint64_t, N>& now,
                    const std::array<uint64_t, N>& before, double sum_growth);

class BoardMetrics {
 public:
  // Serves /metrics on `listen` ("HOST:PORT"; port 0 picks one) from `loop`.
  [[nodiscard]] static Result<std::unique_ptr<BoardMetrics>> start(uv_loop_t* loop,
                                                                   const std::string& listen);
  // Closes the listener and open scrapes (handles finish closing on the loop).
  void stop();
  // The text exposition format, as a scrape gets it.
  std::string render() const;
  std::string bound_address() const { return bound_; }  // "127.0.0.1:41234"
  // Where other families of this process register (the server's cluster metrics).
  prom::Registry& registry() { return registry_; }

  void set_info(const std::string& arch, const std::string& io_backend,
                const std::string& isolation);
  void set_node(uint32_t cpu_millis_used, uint64_t mem_bytes_used, uint32_t running);
  // This board's heat (runtime/node_facts.h BoardHeat), in base units: degrees Celsius
  // (absent while no thermal zone can be read), and 0/1 for the firmware's flags.
  void set_node_heat(std::optional<int32_t> millicelsius, bool throttled, bool under_voltage);
  void refresh(const BoardSources& now);
  // Runs at each scrape before render(), so counters are current when read.
  void on_scrape(std::function<void()> fn) { on_scrape_ = std::move(fn); }
  // Serves every path but /metrics on the same listener (the server's status page).
  void serve_other_paths(net::HttpAsyncHandler fn) { other_paths_ = std::move(fn); }

 private:
  BoardMetrics() = default;
  std::function<void()> on_scrape_;
  net::HttpAsyncHandler other_paths_;
  std::string bound_;
  prom::Registry registry_;
  std::unique_ptr<net::HttpServer> http_;
  prom::Counter* bytes_written_ = nullptr;
  prom::Counter* fsyncs_ = nullptr;
  prom::Histogram* fsync_seconds_ = nullptr;
  prom::Counter* log_bytes_dropped_ = nullptr;
  prom::Gauge* cpu_used_ = nullptr;
  prom::Gauge* mem_used_ = nullptr;
  prom::Gauge* running_ = nullptr;
  prom::Family<prom::Gauge>* temperature_family_ = nullptr;
  prom::Gauge* temperature_ = nullptr;  // in temperature_family_ while known
  prom::Gauge* throttled_ = nullptr;
  prom::Gauge* under_voltage_ = nullptr;
  prom::Gauge* resident_ = nullptr;
  BoardSources last_;
};

template <size_t N>
void observe_growth(prom::Histogram* h, const std::array<uint64_t, N>& now,
                    const std::array<uint64_t, N>& before, double sum_growth) {
  std::array<double, N> increments{};
  bool grew = false;
  for (size_t b = 0; b < N; ++b) {
    increments[b] = static_cast<double>(now[b] - before[b]);
    grew = grew || now[b] > before[b];
  }
  if (grew) h->ObserveMultiple(increments, sum_growth);
}

}  // namespace cardnode::runtime
