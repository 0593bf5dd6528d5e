// The driver shared by the durable-write benchmarks (submit_bench, peers/sqlite_commit):
// N writer threads, each with its own connection, write back to back for a duration or
// a total count; a refused write is counted and retried after a short backoff. Per write
// it records the latency from the first attempt to the acknowledgement, and it prints
// the one result line that bench/storage_peers.sh parses:
//
//   result tool=NAME writers=N ops=K seconds=S ops_per_s=R p50_us=A p99_us=B max_us=C
//          refused=D tail_ops=T tail_s=U                                  (one line)
//
// ops: acknowledged durable writes, all of them. seconds: the measurement window, from
// the start to the deadline (or to the last ack, if a count ended the run sooner).
// ops_per_s: the writes acknowledged inside the window, over the window. tail_ops: writes
// in flight at the deadline, acknowledged after it, tail_s later at the latest; they
// count in the latencies but not in the rate. (A writer starved by SQLite's busy handler
// can finish seconds after the deadline; counting that time would report the rate of a
// lone straggler.) Everything else a program prints goes to stderr.
//
// Threading: run_writers() owns the threads; each Writer is used by one thread only.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <expected>
#include <latch>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace cardnode::bench {

using Clock = std::chrono::steady_clock;

inline uint64_t elapsed_ns(Clock::time_point from, Clock::time_point to) {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(to - from).count());
}

// Log-linear buckets: exact below 128 ns, then 128 buckets per power of two, so a
// reported percentile is within 0.8 % of the true one. Fixed size (58 KiB) whatever the
// run length.
class LatencyHistogram {
 public:
  void add(uint64_t ns) {
    ++counts_[bucket(ns)];
    ++total_;
    max_ns_ = std::max(max_ns_, ns);
  }
  void merge(const LatencyHistogram& other) {
    for (size_t i = 0; i < kBuckets; ++i) counts_[i] += other.counts_[i];
    total_ += other.total_;
    max_ns_ = std::max(max_ns_, other.max_ns_);
  }
  uint64_t total() const { return total_; }
  uint64_t max_ns() const { return max_ns_; }

  // The sample of rank ceil(q * total) (0 < q <= 1), as the middle of its bucket; 0 if empty.
  uint64_t percentile_ns(double q) const {
    if (total_ == 0) return 0;
    const double exact = q * static_cast<double>(total_);
    uint64_t rank = static_cast<uint64_t>(exact);
    if (static_cast<double>(rank) < exact) ++rank;
    rank = std::clamp<uint64_t>(rank, 1, total_);
    uint64_t seen = 0;
    for (size_t i = 0; i < kBuckets; ++i) {
      seen += counts_[i];
      if (seen >= rank) return std::min(middle(i), max_ns_);
    }
    return max_ns_;
  }

 private:
  static constexpr unsigned kSubBits = 7;
  static constexpr uint64_t kSub = uint64_t{1} << kSubBits;
  static constexpr size_t kBuckets = (64 - kSubBits + 1) * kSub;

  static size_t bucket(uint64_t v) {
    if (v < kSub) return static_cast<size_t>(v);
    const unsigned shift = static_cast<unsigned>(std::bit_width(v)) - 1 - kSubBits;
    return static_cast<size_t>((shift + 1) * kSub + ((v >> shift) - kSub));
  }
  static uint64_t middle(size_t i) {
    if (i < kSub) return i;
    const unsigned shift = static_cast<unsigned>(i / kSub) - 1;
    const uint64_t low = (i % kSub + kSub) << shift;
    return low + ((uint64_t{1} << shift) >> 1);
  }

  std::array<uint64_t, kBuckets> counts_{};
  uint64_t total_ = 0;
  uint64_t max_ns_ = 0;
};

// A run ends at `seconds` or after `count` writes in all, whichever comes first; 0 means
// no such bound (one of them must be set).
struct RunOptions {
  uint32_t writers = 1;
  uint64_t count = 0;
  double seconds = 10;
  // A write refused this long in a row ends the run with an error (a full job table
  // is refused forever; retrying it would only spin).
  uint32_t refused_for_max_ms = 10'000;
};

struct RunResult {
  std::string tool;
  uint32_t writers = 0;
  uint64_t ops = 0;
  uint64_t tail_ops = 0;  // acknowledged after the deadline
  uint64_t refused = 0;
  uint64_t window_ns = 0;  // start to the deadline, or to the last ack if that came sooner
  uint64_t tail_ns = 0;    // deadline to the last ack
  LatencyHistogram latency;
};

// One attempt at one durable write. A Writer has `AttemptResult attempt()` and
// `const std::string& last_refusal() const` (why the last refused attempt was refused).
enum class Attempt { kAcked, kRefused };
using AttemptResult = std::expected<Attempt, std::string>;  // error: stop the run

namespace detail {

constexpr auto kBackoffFirst = std::chrono::milliseconds(1);
constexpr auto kBackoffMax = std::chrono::milliseconds(64);

// One writer thread's loop: claim a write, attempt it until acked, record its latency.
template <class Writer>
void writer_loop(Writer& w, const RunOptions& o, Clock::time_point deadline,
                 std::atomic<uint64_t>& claimed, std::atomic<bool>& stop, RunResult& mine,
                 std::string& error) {
  const auto refused_for_max = std::chrono::milliseconds(o.refused_for_max_ms);
  while (!stop.load(std::memory_order_relaxed)) {
    if (o.seconds > 0 && Clock::now() >= deadline) return;
    if (o.count != 0 && claimed.fetch_add(1) >= o.count) return;
    const Clock::time_point t0 = Clock::now();
    auto backoff = kBackoffFirst;
    for (;;) {
      AttemptResult r = w.attempt();
      if (!r) {
        error = r.error();
        stop = true;
        return;
      }
      if (*r == Attempt::kAcked) break;
      ++mine.refused;
      if (Clock::now() - t0 > refused_for_max) {
        error = "one write refused for over " + std::to_string(o.refused_for_max_ms) +
                " ms, last: " + w.last_refusal();
        stop = true;
        return;
      }
      std::this_thread::sleep_for(backoff);
      backoff = std::min(backoff * 2, kBackoffMax);
    }
    const Clock::time_point acked = Clock::now();
    mine.latency.add(elapsed_ns(t0, acked));
    ++mine.ops;
    if (o.seconds > 0 && acked > deadline) ++mine.tail_ops;
  }
}

}  // namespace detail

// Runs o.writers threads; writers[i] is used by thread i only. The clock starts once
// every thread is running.
template <class Writer>
std::expected<RunResult, std::string> run_writers(std::string tool, const RunOptions& o,
                                                  std::vector<std::unique_ptr<Writer>>& writers) {
  const uint32_t n = static_cast<uint32_t>(writers.size());
  std::vector<RunResult> per_thread(n);
  std::vector<std::string> errors(n);
  std::atomic<uint64_t> claimed{0};
  std::atomic<bool> stop{false};
  std::latch ready(n);
  std::latch go(1);
  Clock::time_point start;  // written before go.count_down(), read after go.wait()
  Clock::time_point deadline;
  {
    std::vector<std::jthread> threads;
    threads.reserve(n);
    for (uint32_t i = 0; i < n; ++i) {
      threads.emplace_back([&, i] {
        ready.arrive_and_wait();
        go.wait();
        detail::writer_loop(*writers[i], o, deadline, claimed, stop, per_thread[i], errors[i]);
      });
    }
    ready.wait();
    start = Clock::now();
    deadline = o.seconds > 0 ? start + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(o.seconds))
                             : Clock::time_point::max();
    go.count_down();
  }  // joins
  const Clock::time_point end = Clock::now();
  RunResult total;
  total.tool = std::move(tool);
  total.writers = n;
  total.window_ns = elapsed_ns(start, std::min(end, deadline));
  total.tail_ns = end > deadline ? elapsed_ns(deadline, end) : 0;
  for (uint32_t i = 0; i < n; ++i) {
    if (!errors[i].empty())
      return std::unexpected("writer " + std::to_string(i) + ": " + errors[i]);
    total.ops += per_thread[i].ops;
    total.tail_ops += per_thread[i].tail_ops;
    total.refused += per_thread[i].refused;
    total.latency.merge(per_thread[i].latency);
  }
  return total;
}

inline double us(uint64_t ns) {
  return static_cast<double>(ns) / 1000.0;
}

inline double ops_per_s(const RunResult& r) {
  if (r.window_ns == 0) return 0;
  return static_cast<double>(r.ops - r.tail_ops) * 1e9 / static_cast<double>(r.window_ns);
}

// The machine-readable line on stdout and a sentence for people on stderr.
inline void print_result(const RunResult& r, const char* what) {
  const double secs = static_cast<double>(r.window_ns) / 1e9;
  const double tail_s = static_cast<double>(r.tail_ns) / 1e9;
  const uint64_t p50 = r.latency.percentile_ns(0.50), p99 = r.latency.percentile_ns(0.99);
  const auto ull = [](uint64_t v) { return static_cast<unsigned long long>(v); };
  std::printf(
      "result tool=%s writers=%u ops=%llu seconds=%.3f ops_per_s=%.1f p50_us=%.1f p99_us=%.1f "
      "max_us=%.1f refused=%llu tail_ops=%llu tail_s=%.3f\n",
      r.tool.c_str(), r.writers, ull(r.ops), secs, ops_per_s(r), us(p50), us(p99),
      us(r.latency.max_ns()), ull(r.refused), ull(r.tail_ops), tail_s);
  std::fflush(stdout);
  std::fprintf(stderr,
               "%s, %u writer%s: %llu %s in %.2f s = %.0f/s; latency p50 %.3f ms, p99 %.3f ms, "
               "max %.3f ms; %llu refused and retried; %llu finished after the window (%.2f s "
               "later at most)\n",
               r.tool.c_str(), r.writers, r.writers == 1 ? "" : "s", ull(r.ops - r.tail_ops), what,
               secs, ops_per_s(r), us(p50) / 1000, us(p99) / 1000, us(r.latency.max_ns()) / 1000,
               ull(r.refused), ull(r.tail_ops), tail_s);
}

}  // namespace cardnode::bench
