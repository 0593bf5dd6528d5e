#include "runtime/prom.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "proto/error.h"

namespace cardnode::runtime::prom {

Histogram::Histogram(BucketBoundaries bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0.0) {
  for (size_t b = 1; b < bounds_.size(); ++b) CARDNODE_CHECK(bounds_[b - 1] < bounds_[b]);
}

void Histogram::Observe(double v) {
  size_t b = 0;
  while (b < bounds_.size() && v > bounds_[b]) ++b;  // le: a value on a bound is in it
  counts_[b] += 1;
  sum_ += v;
}

void Histogram::ObserveMultiple(std::span<const double> bucket_increments, double sum_of_values) {
  CARDNODE_CHECK(bucket_increments.size() == counts_.size());  // the caller's buckets are ours
  for (size_t b = 0; b < counts_.size(); ++b) {
    if (bucket_increments[b] > 0) counts_[b] += bucket_increments[b];  // counts only grow
  }
  if (sum_of_values > 0) sum_ += sum_of_values;
}

std::vector<double> Histogram::cumulative() const {
  std::vector<double> out(counts_.size());
  double running = 0;
  for (size_t b = 0; b < counts_.size(); ++b) out[b] = running += counts_[b];
  return out;
}

Registry::Entry& Registry::entry(const std::string& name, Type type) {
  auto it = index_.find(name);
  if (it != index_.end()) {
    Entry& e = families_[it->second];
    CARDNODE_CHECK(e.type == type);  // one name, one type: a bug otherwise
    return e;
  }
  index_[name] = families_.size();
  families_.push_back(Entry{type, nullptr, nullptr, nullptr});
  return families_.back();
}

Family<Counter>& Registry::counter(const std::string& name, const std::string& help) {
  Entry& e = entry(name, Type::kCounter);
  if (!e.counters) e.counters = std::make_unique<Family<Counter>>(name, help);
  return *e.counters;
}

Family<Gauge>& Registry::gauge(const std::string& name, const std::string& help) {
  Entry& e = entry(name, Type::kGauge);
  if (!e.gauges) e.gauges = std::make_unique<Family<Gauge>>(name, help);
  return *e.gauges;
}

Family<Histogram>& Registry::histogram(const std::string& name, const std::string& help) {
  Entry& e = entry(name, Type::kHistogram);
  if (!e.histograms) e.histograms = std::make_unique<Family<Histogram>>(name, help);
  return *e.histograms;
}

std::string format_value(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  // The shortest of 15, 16 and 17 significant digits that reads back as v (17 always
  // does). Not std::to_chars: libstdc++'s needs libm (fegetround), a shared library that
  // every start of the binary would then load (docs/PERFORMANCE.md).
  char buf[32];
  for (int digits = 15;; ++digits) {
    const int n = std::snprintf(buf, sizeof buf, "%.*g", digits, v);
    CARDNODE_CHECK(n > 0 && static_cast<size_t>(n) < sizeof buf);
    if (digits == 17 || std::strtod(buf, nullptr) == v)
      return std::string(buf, static_cast<size_t>(n));
  }
}

namespace {

// The format's escapes: backslash and newline everywhere, the double quote in label values.
std::string escape(const std::string& s, bool quote) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (c == '\\' || (quote && c == '"')) {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

std::string escape_label_value(const std::string& s) {
  return escape(s, /*quote=*/true);
}

std::string escape_help(const std::string& s) {
  return escape(s, /*quote=*/false);
}

namespace {

// `{k="v",...}` with `extra` (le="...") last; nothing when both are empty.
std::string label_text(const Labels& labels, const std::string& extra = {}) {
  if (labels.empty() && extra.empty()) return {};
  std::string out = "{";
  for (const auto& [k, v] : labels) {
    if (out.size() > 1) out += ',';
    out += k + "=\"" + escape_label_value(v) + '"';
  }
  if (!extra.empty()) {
    if (out.size() > 1) out += ',';
    out += extra;
  }
  return out + "}";
}

template <typename T>
void header(std::string& out, const Family<T>& f, const char* type) {
  out += "# HELP " + f.name() + ' ' + escape_help(f.help()) + '\n';
  out += "# TYPE " + f.name() + ' ' + type + '\n';
}

template <typename T>
void render_simple(std::string& out, const Family<T>& f, const char* type) {
  if (f.metrics().empty()) return;
  header(out, f, type);
  for (const auto& [labels, m] : f.metrics()) {
    out += f.name() + label_text(labels) + ' ' + format_value(m->Value()) + '\n';
  }
}

void render_histograms(std::string& out, const Family<Histogram>& f) {
  if (f.metrics().empty()) return;
  header(out, f, "histogram");
  for (const auto& [labels, h] : f.metrics()) {
    const std::vector<double> cumulative = h->cumulative();
    for (size_t b = 0; b < cumulative.size(); ++b) {
      const std::string le =
          b < h->bounds().size() ? format_value(h->bounds()[b]) : std::string("+Inf");
      out += f.name() + "_bucket" + label_text(labels, "le=\"" + le + '"') + ' ' +
             format_value(cumulative[b]) + '\n';
    }
    out += f.name() + "_sum" + label_text(labels) + ' ' + format_value(h->sum()) + '\n';
    out += f.name() + "_count" + label_text(labels) + ' ' + format_value(cumulative.back()) + '\n';
  }
}

}  // namespace

std::string Registry::render() const {
  std::string out;
  for (const Entry& e : families_) {
    switch (e.type) {
      case Type::kCounter: render_simple(out, *e.counters, "counter"); break;
      case Type::kGauge: render_simple(out, *e.gauges, "gauge"); break;
      case Type::kHistogram: render_histograms(out, *e.histograms); break;
    }
  }
  return out;
}

}  // namespace cardnode::runtime::prom
