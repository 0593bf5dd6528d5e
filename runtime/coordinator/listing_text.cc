#include "runtime/coordinator/listing_text.h"

#include <cstdio>

#include "scheduler/cluster.h"

namespace cardnode::runtime {
uint32_t state_count(const pb::JobSummary& j, const char* state) {
  auto it = j.states().find(state);
  return it == j.states().end() ? 0 : it->second;
}

std::string human_duration(uint64_t ms) {
  char buf[48];  // at most "213503982334.6d" (2^64 ms): snprintf cannot fail or cut here
  constexpr uint64_t kMinute = 60'000, kHour = 60 * kMinute, kDay = 24 * kHour;
  if (ms < 10'000) {
    (void)std::snprintf(buf, sizeof buf, "%.1fs", static_cast<double>(ms) / 1000);
  } else if (ms < kMinute) {
    (void)std::snprintf(buf, sizeof buf, "%llus", static_cast<unsigned long long>(ms / 1000));
  } else if (ms < kHour) {
    (void)std::snprintf(buf, sizeof buf, "%llum%02llus",
                        static_cast<unsigned long long>(ms / kMinute),
                        static_cast<unsigned long long>(ms % kMinute / 1000));
  } else if (ms < kDay) {
    (void)std::snprintf(buf, sizeof buf, "%.1fh", static_cast<double>(ms) / kHour);
  } else {
    (void)std::snprintf(buf, sizeof buf, "%.1fd", static_cast<double>(ms) / kDay);
  }
  return buf;
}

std::string human_bytes(uint64_t bytes) {
  static constexpr char kUnits[] = "BKMGTPE";
  double v = static_cast<double>(bytes);
  size_t unit = 0;
  while (v >= 1024 && unit + 1 < sizeof kUnits - 1) {
    v /= 1024;
    ++unit;
  }
  char buf[32];  // at most "1023.0E" and a few: snprintf cannot fail or cut here
  if (unit == 0 || v >= 9.95) {
    (void)std::snprintf(buf, sizeof buf, "%.0f%c", v, kUnits[unit]);
  } else {
    (void)std::snprintf(buf, sizeof buf, "%.1f%c", v, kUnits[unit]);
    std::string s = buf;
    if (s.size() > 3 && s.compare(s.size() - 3, 2, ".0") == 0) s.erase(s.size() - 3, 2);
    return s;
  }
  return buf;
}

std::string states_text(const pb::JobSummary& j) {
  std::string out;
  for (size_t i = 0; i < sched::kTaskStateCount; ++i) {
    const char* s = sched::task_state_name(static_cast<sched::TaskState>(i));
    if (uint32_t n = state_count(j, s))
      out += (out.empty() ? "" : " ") + std::string(s) + ":" + std::to_string(n);
  }
  return out;
}

std::optional<uint64_t> job_elapsed_ms(const pb::JobSummary& j, uint64_t server_now_ms) {
  if (j.submitted_ms() == 0) return std::nullopt;  // an older server
  const uint64_t end = j.finished_ms() != 0 ? j.finished_ms() : server_now_ms;
  if (end == 0) return std::nullopt;
  return end > j.submitted_ms() ? end - j.submitted_ms() : 0;
}

std::optional<uint64_t> task_duration_ms(const pb::TaskInfo& t, uint64_t server_now_ms) {
  if (t.state() == pb::TASK_RUNNING) {
    if (t.started_ms() == 0 || server_now_ms == 0) return std::nullopt;
    return server_now_ms > t.started_ms() ? server_now_ms - t.started_ms() : 0;
  }
  if (!t.has_usage() || t.usage().wall_ms() == 0) return std::nullopt;
  return t.usage().wall_ms();
}

}  // namespace cardnode::runtime
