#include "scheduler/heat.h"

#include <cstdio>

namespace cardnode::sched {

NodeHold HeatGate::update(std::optional<int32_t> millicelsius, bool throttled, bool under_voltage) {
  // int64: a bound near INT32_MIN minus a margin must not wrap.
  const int64_t release_at = int64_t{bounds_.hot_millicelsius} - bounds_.cool_margin_millicelsius;
  if (under_voltage) {
    hold_ = NodeHold::kUnderVoltage;
  } else if (throttled) {
    hold_ = NodeHold::kThrottled;
  } else if (millicelsius && (*millicelsius > bounds_.hot_millicelsius ||
                              // held, flags clear, not cool enough yet
                              (hold_ != NodeHold::kNone && *millicelsius > release_at))) {
    hold_ = NodeHold::kHot;
  } else {
    hold_ = NodeHold::kNone;
  }
  return hold_;
}

std::string celsius_text(int32_t millicelsius) {
  char out[24];  // "-2147483.6C" at most
  const int64_t tenths = int64_t{millicelsius} / 100;
  const int64_t whole = tenths / 10;
  const int64_t frac = (tenths < 0 ? -tenths : tenths) % 10;
  (void)std::snprintf(out, sizeof(out), "%s%lld.%lldC", tenths < 0 && whole == 0 ? "-" : "",
                      static_cast<long long>(whole), static_cast<long long>(frac));
  return out;
}

std::string describe_hold(NodeHold hold, std::optional<int32_t> millicelsius,
                          const HeatBounds& bounds) {
  switch (hold) {
    case NodeHold::kNone: return "";
    case NodeHold::kThrottled: return "throttled";
    case NodeHold::kUnderVoltage: return "under-voltage";
    case NodeHold::kHot: break;
  }
  if (!millicelsius) return "hot";
  std::string out = "hot " + celsius_text(*millicelsius);
  if (*millicelsius <= bounds.hot_millicelsius) {
    const int64_t release_at = int64_t{bounds.hot_millicelsius} - bounds.cool_margin_millicelsius;
    out += ", cooling to " + celsius_text(static_cast<int32_t>(release_at));
  }
  return out;
}

}  // namespace cardnode::sched
