// HeatGate: whether a board's heat and power let it take new tasks, with hysteresis.
//
// A board is held (no new placements; what runs goes on) while it is above the hot bound,
// or its firmware says it is throttled or under-voltage now. Once held, it is released only
// when it has cooled to hot - cool_margin or below AND both flags are clear: a board that
// just crossed the bound would otherwise flap in and out with every task it is given.
//
//   hold enters:   temperature > hot            -> kHot
//                  throttled                    -> kThrottled
//                  under_voltage                -> kUnderVoltage (the strongest reason)
//   hold stays:    held and temperature > hot - cool_margin   -> kHot ("cooling")
//   hold ends:     flags clear and temperature <= hot - cool_margin, or unknown
//
// An unknown temperature (no thermal zone could be read) never holds a board: a board
// without a sensor must still run work, and a sensor that vanished must not hold its board
// for ever. The flags alone still hold it.
//
// Pure: no I/O, no clock; the server feeds it each board's facts as they arrive (the
// agent's heartbeat, the server's own board on the same period) and hands the result to
// Cluster::set_node_hold. Not durable, like ready/down: after a restart the next facts
// decide again. Threading: none inside.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "scheduler/cluster.h"

namespace cardnode::sched {

struct HeatBounds {
  int32_t hot_millicelsius = 80'000;         // --hot-celsius: above this, no new tasks
  int32_t cool_margin_millicelsius = 5'000;  // --cool-margin: released at hot - this
};

class HeatGate {
 public:
  explicit HeatGate(HeatBounds bounds = {}) : bounds_(bounds) {}

  // The board's latest facts; returns (and keeps) the hold they give.
  NodeHold update(std::optional<int32_t> millicelsius, bool throttled, bool under_voltage);
  NodeHold hold() const { return hold_; }
  const HeatBounds& bounds() const { return bounds_; }

 private:
  HeatBounds bounds_;
  NodeHold hold_ = NodeHold::kNone;
};

// What `nodes` says of a held board: "hot 83.0C", "hot 78.0C, cooling to 75.0C",
// "throttled", "under-voltage"; empty for kNone. At most ~40 bytes.
std::string describe_hold(NodeHold hold, std::optional<int32_t> millicelsius,
                          const HeatBounds& bounds);

// "61.2C": tenths of a degree, rounded toward zero.
std::string celsius_text(int32_t millicelsius);

}  // namespace cardnode::sched
