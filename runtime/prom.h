// Prometheus metric families and the text exposition format (version 0.0.4), for /metrics.
//
// Why not prometheus-cpp: Debian ships it only as a shared library, and it needs the shared
// libstdc++. Linking it made every `cardnode` process load libstdc++.so, libm, libgcc_s and
// prometheus-cpp-core, and resolve ~2,000 symbols against them, at each start. The CLI is
// such a process, and `run --wait` runs one per task. With this file the binary links
// libstdc++ statically (CMakeLists.txt) and starts about 1 ms sooner (docs/PERFORMANCE.md).
// What cardnode needs of a client library is small: counters, gauges and histograms with
// fixed bucket bounds, in families with labels, written as text. tests/e2e_prometheus_test.cc
// has a real Prometheus scrape it and promtool check it.
//
// The API follows prometheus-cpp's (Family::Add, Counter::Increment, Gauge::Set,
// Histogram::ObserveMultiple), so the code that uses it reads as before.
//
// Ownership: the Registry owns its families, and a family owns its metrics. Pointers to
// both stay valid until the Registry goes, or until Family::Remove for that metric.
// Threading: none. Only the loop thread uses a registry (it sets and it renders).
// Bounds: families and metrics are made only at start-up or from fixed lists (a task
// state, a label set of the build). Nothing a client sends adds one.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace cardnode::runtime::prom {

using Labels = std::map<std::string, std::string>;

class Counter {
 public:
  // Adds v (a counter only grows: a negative v is ignored).
  void Increment(double v = 1.0) {
    if (v > 0) value_ += v;
  }
  double Value() const { return value_; }

 private:
  double value_ = 0;
};

class Gauge {
 public:
  void Set(double v) { value_ = v; }
  double Value() const { return value_; }

 private:
  double value_ = 0;
};

class Histogram {
 public:
  using BucketBoundaries = std::vector<double>;
  // bounds: the upper bounds, strictly ascending (checked); one more bucket, +Inf, follows.
  explicit Histogram(BucketBoundaries bounds);
  void Observe(double v);
  // Adds the count each bucket grew by (not cumulative; exactly bounds.size() + 1 entries,
  // the last +Inf: checked) and what their sum grew by. Negative growth is ignored: a
  // histogram's counts only grow, and so does the sum of the non-negative values it counts.
  void ObserveMultiple(std::span<const double> bucket_increments, double sum_of_values);
  const BucketBoundaries& bounds() const { return bounds_; }
  // Cumulative count at each bound, then at +Inf (the total count).
  std::vector<double> cumulative() const;
  double sum() const { return sum_; }

 private:
  BucketBoundaries bounds_;
  std::vector<double> counts_;  // per bucket, not cumulative
  double sum_ = 0;
};

enum class Type : uint8_t { kCounter, kGauge, kHistogram };

// The metrics of one name, one per label set.
template <typename T>
class Family {
 public:
  Family(std::string name, std::string help) : name_(std::move(name)), help_(std::move(help)) {}
  // The metric with these labels, made on first use (with `args` for its constructor).
  template <typename... Args>
  T& Add(const Labels& labels, Args&&... args) {
    auto& slot = metrics_[labels];
    if (!slot) slot = std::make_unique<T>(std::forward<Args>(args)...);
    return *slot;
  }
  // Drops the metric (it is no longer shown); `metric` dangles after this.
  void Remove(T* metric);
  const std::string& name() const { return name_; }
  const std::string& help() const { return help_; }
  const std::map<Labels, std::unique_ptr<T>>& metrics() const { return metrics_; }

 private:
  std::string name_;
  std::string help_;
  std::map<Labels, std::unique_ptr<T>> metrics_;  // sorted by labels: a stable page
};

class Registry {
 public:
  // The family of that name, made on first use. Asking again for a name returns the same
  // family (the help of the first ask stands); asking for it as another type is a bug (checked).
  Family<Counter>& counter(const std::string& name, const std::string& help);
  Family<Gauge>& gauge(const std::string& name, const std::string& help);
  Family<Histogram>& histogram(const std::string& name, const std::string& help);

  // Every family with at least one metric, in the order they were made, as text.
  std::string render() const;

 private:
  struct Entry {
    Type type;
    std::unique_ptr<Family<Counter>> counters;
    std::unique_ptr<Family<Gauge>> gauges;
    std::unique_ptr<Family<Histogram>> histograms;
  };
  Entry& entry(const std::string& name, Type type);
  std::vector<Entry> families_;
  std::map<std::string, size_t> index_;  // name -> families_ position
};

// For tests and the renderer: a value as the text format writes it (shortest round-trip
// form; NaN, +Inf, -Inf), and a label value or help text escaped.
std::string format_value(double v);
std::string escape_label_value(const std::string& s);
std::string escape_help(const std::string& s);

template <typename T>
void Family<T>::Remove(T* metric) {
  for (auto it = metrics_.begin(); it != metrics_.end(); ++it) {
    if (it->second.get() == metric) {
      metrics_.erase(it);
      return;
    }
  }
}

}  // namespace cardnode::runtime::prom
