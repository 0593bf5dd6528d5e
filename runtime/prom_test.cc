#include "runtime/prom.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
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
  EXPECT_EQ(format_value(1e6), "1000000");
  EXPECT_EQ(format_value(0.1), "0.1");  // 15 digits read back: no 0.10000000000000001
  EXPECT_EQ(format_value(1.0 / 3), "0.3333333333333333");  // 16 needed
  EXPECT_EQ(format_value(2.5e-300), "2.5e-300");
  for (double v : {0.1 + 0.2, 1.0 / 3, 1e300 / 7, 123456789.123456789, -9.87654321e-5}) {
    EXPECT_EQ(std::strtod(format_value(v).c_str(), nullptr), v) << format_value(v);
  }
  EXPECT_EQ(format_value(2e-5), "2e-05");
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
  const size_t type = text.find("# TYPE x_total counter\n");
  ASSERT_NE(type, std::string::npos) << text;
  EXPECT_EQ(text.find("# TYPE", type + 1), std::string::npos) << "one header: " << text;
  EXPECT_EQ(text.find("# HELP", 1), std::string::npos) << text;
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

TEST(Prom, FamiliesRenderInTheOrderTheyWereMadeAndStayPutAsMoreAreMade) {
  Registry r;
  auto& first = r.gauge("x_first", "made first, a gauge");
  Gauge* g = &first.Add({});
  for (int i = 0; i < 200; ++i) r.counter("x_c" + std::to_string(i) + "_total", "h").Add({});
  EXPECT_EQ(&r.gauge("x_first", "again"), &first);
  EXPECT_EQ(&first.Add({}), g);
  g->Set(7);
  const std::string text = r.render();
  EXPECT_EQ(text.find("# HELP x_first made first, a gauge\n"), 0u) << text.substr(0, 200);
  EXPECT_NE(text.find("\nx_first 7\n"), std::string::npos);
  EXPECT_LT(text.find("x_c0_total"), text.find("x_c199_total"));
}

TEST(Prom, HelpIsEscapedOnThePage) {
  Registry r;
  r.gauge("x_g", "a \\ and a\nnewline").Add({}).Set(1);
  const std::string text = r.render();
  EXPECT_TRUE(text.starts_with("# HELP x_g a \\\\ and a\\nnewline\n# TYPE x_g gauge\n")) << text;
}

// The bounds dashboards and alert tests name by their `le` text (deploy/alerts_test.yml).
TEST(Prom, TheBoundsInUseKeepTheirLeText) {
  // 0.001, 0.0025, 1 and 16777216: in ValuesAreWrittenInTheirShortestExactForm.
  EXPECT_EQ(format_value(0.25), "0.25");
  EXPECT_EQ(format_value(4294967296.0), "4294967296");
  EXPECT_EQ(format_value(86400.0), "86400");
}

TEST(PromDeathTest, ObserveMultipleTakesExactlyOneIncrementPerBucket) {
  Histogram h({1.0, 2.0});
  const std::vector<double> short_list = {1, 1};
  EXPECT_DEATH(h.ObserveMultiple(short_list, 1), "invariant");
}

TEST(PromDeathTest, BoundsMustAscend) {
  EXPECT_DEATH(Histogram({2.0, 1.0}), "invariant");
}

TEST(PromDeathTest, OneNameCannotBeTwoTypes) {
  Registry r;
  r.counter("x_total", "a");
  EXPECT_DEATH(r.gauge("x_total", "b"), "invariant");
}

}  // namespace
}  // namespace cardnode::runtime::prom
