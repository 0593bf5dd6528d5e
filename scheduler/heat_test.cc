// HeatGate's hysteresis at its edges, the hold's text, and the cluster's side of a hold:
// a held node gets no placements and keeps what it runs.
#include "scheduler/heat.h"

#include <gtest/gtest.h>

namespace cardnode::sched {
namespace {

constexpr HeatBounds kBounds{.hot_millicelsius = 80'000, .cool_margin_millicelsius = 5'000};

TEST(HeatGate, ACoolBoardWithClearFlagsIsNotHeld) {
  HeatGate g(kBounds);
  EXPECT_EQ(g.update(45'000, false, false), NodeHold::kNone);
  EXPECT_EQ(g.update(std::nullopt, false, false), NodeHold::kNone);
}

TEST(HeatGate, HoldStartsAboveTheBoundNotAtIt) {
  HeatGate g(kBounds);
  EXPECT_EQ(g.update(80'000, false, false), NodeHold::kNone);
  EXPECT_EQ(g.update(80'001, false, false), NodeHold::kHot);
}

TEST(HeatGate, AHotBoardIsReleasedOnlyOnceCooledByTheMargin) {
  HeatGate g(kBounds);
  ASSERT_EQ(g.update(85'000, false, false), NodeHold::kHot);
  EXPECT_EQ(g.update(80'000, false, false), NodeHold::kHot);   // at the bound: still cooling
  EXPECT_EQ(g.update(75'001, false, false), NodeHold::kHot);   // one millidegree short
  EXPECT_EQ(g.update(75'000, false, false), NodeHold::kNone);  // cooled by exactly the margin
  // Released, it is held again only above the bound, not anywhere in the band.
  EXPECT_EQ(g.update(79'000, false, false), NodeHold::kNone);
  EXPECT_EQ(g.update(80'000, false, false), NodeHold::kNone);
  EXPECT_EQ(g.update(80'001, false, false), NodeHold::kHot);
}

TEST(HeatGate, FlagsHoldWhateverTheTemperature) {
  HeatGate g(kBounds);
  EXPECT_EQ(g.update(40'000, true, false), NodeHold::kThrottled);
  EXPECT_EQ(g.update(40'000, false, true), NodeHold::kUnderVoltage);
  EXPECT_EQ(g.update(std::nullopt, true, false), NodeHold::kThrottled);
  // Under-voltage is the strongest reason (it is what the operator must fix), then throttling.
  EXPECT_EQ(g.update(90'000, true, true), NodeHold::kUnderVoltage);
  EXPECT_EQ(g.update(90'000, true, false), NodeHold::kThrottled);
  EXPECT_EQ(g.update(90'000, false, false), NodeHold::kHot);
}

TEST(HeatGate, FlagsClearedInTheBandLeaveTheBoardHeldUntilCool) {
  HeatGate g(kBounds);
  ASSERT_EQ(g.update(78'000, true, false), NodeHold::kThrottled);
  EXPECT_EQ(g.update(78'000, false, false), NodeHold::kHot);
  EXPECT_EQ(g.update(75'000, false, false), NodeHold::kNone);
  // Flags that clear on a cool board release it at once.
  ASSERT_EQ(g.update(50'000, false, true), NodeHold::kUnderVoltage);
  EXPECT_EQ(g.update(50'000, false, false), NodeHold::kNone);
}

TEST(HeatGate, AnUnknownTemperatureNeverHolds) {
  HeatGate g(kBounds);
  ASSERT_EQ(g.update(90'000, false, false), NodeHold::kHot);
  EXPECT_EQ(g.update(std::nullopt, false, false), NodeHold::kNone);
}

TEST(HeatGate, ZeroMarginReleasesAtTheBound) {
  HeatGate g({.hot_millicelsius = 70'000, .cool_margin_millicelsius = 0});
  ASSERT_EQ(g.update(70'001, false, false), NodeHold::kHot);
  EXPECT_EQ(g.update(70'000, false, false), NodeHold::kNone);
  EXPECT_EQ(g.hold(), NodeHold::kNone);
}

TEST(HeatText, SaysWhyAndHowFarToCool) {
  EXPECT_EQ(celsius_text(61'234), "61.2C");
  EXPECT_EQ(celsius_text(0), "0.0C");
  EXPECT_EQ(celsius_text(-500), "-0.5C");
  EXPECT_EQ(celsius_text(-12'345), "-12.3C");
  EXPECT_EQ(describe_hold(NodeHold::kNone, 90'000, kBounds), "");
  EXPECT_EQ(describe_hold(NodeHold::kHot, 83'000, kBounds), "hot 83.0C");
  EXPECT_EQ(describe_hold(NodeHold::kHot, 78'000, kBounds), "hot 78.0C, cooling to 75.0C");
  EXPECT_EQ(describe_hold(NodeHold::kHot, std::nullopt, kBounds), "hot");
  EXPECT_EQ(describe_hold(NodeHold::kThrottled, 50'000, kBounds), "throttled");
  EXPECT_EQ(describe_hold(NodeHold::kUnderVoltage, 50'000, kBounds), "under-voltage");
  EXPECT_STREQ(node_hold_name(NodeHold::kHot), "hot");
  EXPECT_STREQ(node_hold_name(NodeHold::kThrottled), "throttled");
  EXPECT_STREQ(node_hold_name(NodeHold::kUnderVoltage), "under-voltage");
}

TEST(ClusterHold, AHeldNodeGetsNoPlacementsAndKeepsWhatItRuns) {
  Cluster c;
  auto a = c.add_node({"a", {4000, 1ull << 30}, {}});
  auto b = c.add_node({"b", {1000, 1ull << 30}, {}});
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(c.submit(1, JobSpec{.name = std::string("j"), .count = 6, .per_task = {1000, 1}}, 1));
  // a runs one task, then gets hot. (Started by hand: plan() packs, and would choose b.)
  ASSERT_TRUE(c.start({{1, 0}, *a, 1}, 2));
  ASSERT_TRUE(c.set_node_hold(*a, NodeHold::kHot));
  EXPECT_EQ(c.node(*a)->hold, NodeHold::kHot);
  auto plan = c.plan(10, 2);
  ASSERT_EQ(plan.size(), 1u);
  EXPECT_EQ(plan[0].node, *b);
  EXPECT_EQ(c.running_on(*a).size(), 1u);  // a hold stops nothing
  // Every reason holds; kNone releases.
  ASSERT_TRUE(c.set_node_hold(*b, NodeHold::kUnderVoltage));
  EXPECT_TRUE(c.plan(10, 2).empty());
  ASSERT_TRUE(c.set_node_hold(*a, NodeHold::kThrottled));
  EXPECT_TRUE(c.plan(10, 2).empty());
  ASSERT_TRUE(c.set_node_hold(*a, NodeHold::kNone));
  EXPECT_EQ(c.plan(10, 2).size(), 3u);  // a's three free cores
}

TEST(ClusterHold, AnUnknownOrRemovedNodeIsAnError) {
  Cluster c;
  EXPECT_EQ(c.set_node_hold(0, NodeHold::kHot).error(), SchedError::kUnknownNode);
  auto a = c.add_node({"a", {1000, 1ull << 30}, {}});
  ASSERT_TRUE(a);
  ASSERT_TRUE(c.remove_node(*a));
  EXPECT_EQ(c.set_node_hold(*a, NodeHold::kHot).error(), SchedError::kUnknownNode);
}

}  // namespace
}  // namespace cardnode::sched
