#include "bench/durable_bench.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

namespace cardnode::bench {
namespace {

TEST(LatencyHistogram, EmptyReportsZero) {
  LatencyHistogram h;
  EXPECT_EQ(h.percentile_ns(0.5), 0u);
  EXPECT_EQ(h.max_ns(), 0u);
}

TEST(LatencyHistogram, ExactBelow128Nanoseconds) {
  LatencyHistogram h;
  for (uint64_t v = 1; v <= 100; ++v) h.add(v);
  EXPECT_EQ(h.percentile_ns(0.50), 50u);
  EXPECT_EQ(h.percentile_ns(0.99), 99u);
  EXPECT_EQ(h.percentile_ns(1.0), 100u);
}

TEST(LatencyHistogram, PercentilesWithinOnePercentOverManyDecades) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::vector<uint64_t> samples;
  LatencyHistogram h;
  for (int i = 0; i < 100'000; ++i) {
    // Log-uniform from 100 ns to 100 s.
    const double e = std::uniform_real_distribution<double>(2, 11)(rng);
    samples.push_back(static_cast<uint64_t>(std::pow(10.0, e)));
    h.add(samples.back());
  }
  std::sort(samples.begin(), samples.end());
  for (double q : {0.01, 0.5, 0.9, 0.99, 0.999}) {
    const uint64_t exact = samples[static_cast<size_t>(std::ceil(q * samples.size())) - 1];
    const double got = static_cast<double>(h.percentile_ns(q));
    EXPECT_NEAR(got / static_cast<double>(exact), 1.0, 0.01) << "q=" << q;
  }
  EXPECT_EQ(h.max_ns(), samples.back());
}

TEST(LatencyHistogram, MergeEqualsAddingAll) {
  LatencyHistogram a, b, both;
  for (uint64_t v = 1000; v < 2000; ++v) {
    (v % 2 ? a : b).add(v * 977);
    both.add(v * 977);
  }
  a.merge(b);
  EXPECT_EQ(a.total(), both.total());
  EXPECT_EQ(a.max_ns(), both.max_ns());
  EXPECT_EQ(a.percentile_ns(0.5), both.percentile_ns(0.5));
}

// Acks every call except every third, which it refuses once; fails at `fail_at`.
struct FakeWriter {
  uint64_t calls = 0;
  uint64_t fail_at = 0;
  std::string refusal = "busy";
  AttemptResult attempt() {
    ++calls;
    if (calls == fail_at) return std::unexpected(std::string("broken"));
    return calls % 3 == 0 ? Attempt::kRefused : Attempt::kAcked;
  }
  const std::string& last_refusal() const { return refusal; }
};

TEST(RunWriters, CountEndsTheRunAtExactlyThatManyWrites) {
  std::vector<std::unique_ptr<FakeWriter>> writers;
  for (int i = 0; i < 4; ++i) writers.push_back(std::make_unique<FakeWriter>());
  RunOptions o{.writers = 4, .count = 1000, .seconds = 0};
  auto r = run_writers("fake", o, writers);
  ASSERT_TRUE(r.has_value()) << r.error();
  EXPECT_EQ(r->ops, 1000u);
  EXPECT_EQ(r->latency.total(), 1000u);
  EXPECT_EQ(r->tail_ops, 0u);
  uint64_t calls = 0;
  for (const auto& w : writers) calls += w->calls;
  EXPECT_EQ(r->refused, calls - 1000);
  EXPECT_GT(r->refused, 0u);
}

TEST(RunWriters, AWriterErrorEndsTheRunWithIt) {
  std::vector<std::unique_ptr<FakeWriter>> writers;
  writers.push_back(std::make_unique<FakeWriter>());
  writers.back()->fail_at = 10;
  RunOptions o{.writers = 1, .count = 100, .seconds = 0};
  auto r = run_writers("fake", o, writers);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error(), "writer 0: broken");
}

}  // namespace
}  // namespace cardnode::bench
