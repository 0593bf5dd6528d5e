#include "cli/format.h"

#include <algorithm>
#include <cstdio>

#include "scheduler/cluster.h"

namespace cardnode::cli {
uint32_t tasks_done(const pb::JobSummary& j) {
  uint32_t done = 0;
  for (size_t i = 0; i < sched::kTaskStateCount; ++i) {
    const auto s = static_cast<sched::TaskState>(i);
    if (sched::is_final(s)) done += runtime::state_count(j, sched::task_state_name(s));
  }
  return done;
}

std::string progress_line(const pb::JobSummary& j, uint64_t elapsed_ms) {
  const uint32_t done = tasks_done(j);
  const uint32_t left = j.count() > done ? j.count() - done : 0;
  const double rate = elapsed_ms > 0 ? done * 1000.0 / static_cast<double>(elapsed_ms) : 0;
  std::string eta = "?";
  if (left == 0) {
    eta = "0.0s";
  } else if (rate > 0) {
    eta = human_duration(static_cast<uint64_t>(left / rate * 1000));
  }
  char head[160];  // "job " + 20 digits + two 10-digit counts + the rate: fits
  (void)std::snprintf(head, sizeof head, "job %llu: %u/%u done, %.1f tasks/s",
                      static_cast<unsigned long long>(j.id()), done, j.count(), rate);
  return std::string(head) + ", elapsed " + human_duration(elapsed_ms) + ", ETA " + eta + " (" +
         states_text(j) + ")";
}

uint64_t next_poll_ms(const pb::JobSummary& j, uint64_t elapsed_ms, uint64_t last_wait_ms,
                      bool progressed) {
  const uint32_t done = tasks_done(j);
  if (done == 0) return kProgressPollMs;  // no rate yet
  const uint64_t left = j.count() > done ? j.count() - done : 0;
  const uint64_t eta_ms = left * elapsed_ms / done;  // < 2^32 * 2^32: no overflow in practice
  uint64_t wait = std::clamp(eta_ms, kProgressPollMinMs, kProgressPollMs);
  if (!progressed) wait = std::max(wait, std::min(last_wait_ms * 2, kProgressPollMs));
  return wait;
}

}  // namespace cardnode::cli
