#include "runtime/prom.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace cardnode::runtime::prom {
namespace {

TEST(Prom, ValuesAreWrittenInTheirShortestExactForm) {
  EXPECT_EQ(format_value(0), "0");
  EXPECT_EQ(format_value(1), "1");
  EXPECT_EQ(format_value(16777216), "16777216");
  EXPECT_EQ(format_value(0.001), "0.001");
  EXPECT_EQ(format_value(0.0025), "0.0025");
  EXPECT_EQ(format_value(-1.5), "-1.5");
  EXPECT_EQ(format_value(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(format_value(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(format_value(std::nan("")), "NaN");
  // What is written reads back as the same double.
  for (double v : {0.1, 1.0 / 3, 123456789.123, 1e-9, 4294967296.0 * 4096}) {
    EXPECT_EQ(std::stod(format_value(v)), v) << format_value(v);
  }
}

TEST(Prom, LabelValuesAndHelpAreEscapedAsTheFormatSays) {
  EXPECT_EQ(escape_label_value("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
  EXPECT_EQ(escape_help("a\\b\"c\nd"), "a\\\\b\"c\\nd");  // quotes stay in help text
}

TEST(Prom, CountersAndGaugesRenderWithHelpTypeAndSortedLabels) {
  Registry r;
  auto& refused = r.counter("x_refused_total", "Refused, by reason");
  refused.Add({{"reason", "busy"}}).Increment(2);
  refused.Add({{"reason", "auth"}}).Increment();
  refused.Add({{"reason", "busy"}}).Increment(0.5);  // the same metric again
  refused.Add({{"reason", "auth"}}).Increment(-3);   // a counter never goes down
  r.gauge("x_info", "Constant 1").Add({{"b", "2"}, {"a", "q\"uote"}}).Set(1);
  EXPECT_EQ(r.render(),
            "# HELP x_refused_total Refused, by reason\n"
            "# TYPE x_refused_total counter\n"
            "x_refused_total{reason=\"auth\"} 1\n"
            "x_refused_total{reason=\"busy\"} 2.5\n"
            "# HELP x_info Constant 1\n"
            "# TYPE x_info gauge\n"
            "x_info{a=\"q\\\"uote\",b=\"2\"} 1\n");
}

TEST(Prom, AskingForANameAgainGivesTheSameFamily) {
  Registry r;
  auto& a = r.counter("x_total", "first help");
  auto& b = r.counter("x_total", "second help");
  EXPECT_EQ(&a, &b);
  a.Add({{"k", "1"}}).Increment();
  b.Add({{"k", "2"}}).Increment();
  const std::string text = r.render();
  EXPECT_EQ(text.find("# HELP x_total first help\n"), 0u) << text;
  EXPECT_EQ(text.find("# TYPE x_total", 1), text.rfind("# TYPE x_total")) << "one header";
}

TEST(Prom, HistogramsAreCumulativeWithInfSumAndCount) {
  Registry r;
  auto& h = r.histogram("x_seconds", "Latency").Add({}, Histogram::BucketBoundaries{0.001, 0.01});
  h.Observe(0.001);  // on a bound: in that bucket (le)
  h.Observe(0.005);
  h.Observe(3);
  // Counts per bucket (not cumulative), the last +Inf, and the sum they add.
  const std::vector<double> grew = {2, 0, 1};
  h.ObserveMultiple(grew, 10.5);
  EXPECT_EQ(r.render(),
            "# HELP x_seconds Latency\n"
            "# TYPE x_seconds histogram\n"
            "x_seconds_bucket{le=\"0.001\"} 3\n"
            "x_seconds_bucket{le=\"0.01\"} 4\n"
            "x_seconds_bucket{le=\"+Inf\"} 6\n"
            "x_seconds_sum 13.506\n"
            "x_seconds_count 6\n");
}

TEST(Prom, LabelledHistogramsPutLeLast) {
  Registry r;
  r.histogram("x_bytes", "Peak").Add({{"node", "a"}}, Histogram::BucketBoundaries{16}).Observe(4);
  const std::string text = r.render();
  EXPECT_NE(text.find("x_bytes_bucket{node=\"a\",le=\"16\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("x_bytes_bucket{node=\"a\",le=\"+Inf\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("x_bytes_count{node=\"a\"} 1\n"), std::string::npos) << text;
}

TEST(Prom, ARemovedMetricLeavesThePageAndAnEmptyFamilyShowsNothing) {
  Registry r;
  auto& temp = r.gauge("x_celsius", "Heat");
  Gauge* g = &temp.Add({});
  g->Set(50);
  EXPECT_NE(r.render().find("x_celsius 50\n"), std::string::npos);
  temp.Remove(g);
  EXPECT_EQ(r.render(), "");
  temp.Add({}).Set(41.5);  // back again, as a new metric
  EXPECT_NE(r.render().find("x_celsius 41.5\n"), std::string::npos);
}

TEST(PromDeathTest, OneNameCannotBeTwoTypes) {
  Registry r;
  r.counter("x_total", "a");
  EXPECT_DEATH(r.gauge("x_total", "b"), "invariant");
}

}  // namespace
}  // namespace cardnode::runtime::prom
