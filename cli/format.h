// What people read on a terminal: durations, sizes, and the progress of `run --wait` for
// an array (docs/CLI.md). Pure functions of their arguments — the clock is the caller's, so
// tests pass times in. Threading: none shared.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "cardnode.pb.h"

namespace cardnode::cli {

// 420 -> "0.4s", 9'500 -> "9.5s", 83'000 -> "1m23s", 9'000'000 -> "2.5h", 3 days -> "3.0d".
std::string human_duration(uint64_t ms);
// Powers of 1024: 512 -> "512B", 3 << 19 -> "1.5M", 512 << 20 -> "512M", 3 << 29 -> "1.5G";
// one decimal below 10 of a unit (dropped when it is ".0"), none from 10 up.
std::string human_bytes(uint64_t bytes);
// "queued:3 running:2 succeeded:6", in the task states' order, zero counts left out.
std::string states_text(const pb::JobSummary& job);
// How long the job ran: to finished_ms once final, else to the server's now_ms (0: an older
// server that does not say; then there is no answer for a job that runs on).
std::optional<uint64_t> job_elapsed_ms(const pb::JobSummary& job, uint64_t server_now_ms);
// How long a task's attempt ran (`ps JOB`'s DURATION): a running task's attempt so far, to
// the server's now_ms (from TaskInfo.started_ms); any other task's latest finished attempt
// (TaskUsage.wall_ms). nullopt when unknown: an older server or agent that does not say, a
// running task restored from an older snapshot, a task that never started.
std::optional<uint64_t> task_duration_ms(const pb::TaskInfo& task, uint64_t server_now_ms);

// Tasks in a final state (succeeded, failed, cancelled, timed_out, oom_killed).
uint32_t tasks_done(const pb::JobSummary& job);
// One line on the progress of an array, elapsed_ms since it was submitted:
// "job 7: 120/500 done, 4.0 tasks/s, elapsed 30s, ETA 1m35s (queued:372 running:8 ...)".
// The rate is over the whole run; the ETA assumes it holds ("ETA ?" before a task ended).
std::string progress_line(const pb::JobSummary& job, uint64_t elapsed_ms);

// At most one event per interval: due(now) says whether one may happen at `now`, and if so
// counts it as having happened. The first is due one interval after `start_ms`.
class Pacer {
 public:
  Pacer(uint64_t start_ms, uint64_t interval_ms) : last_ms_(start_ms), interval_ms_(interval_ms) {}
  bool due(uint64_t now_ms) {
    if (now_ms < last_ms_ + interval_ms_) return false;
    last_ms_ = now_ms;
    return true;
  }

 private:
  uint64_t last_ms_;
  uint64_t interval_ms_;
};

// `run --wait` of an array: a terminal gets one line redrawn in place ("\r" and erase to its
// end) at most every kProgressRedrawMs; anything else gets a plain line at most every
// kProgressLineMs, and a last one at the end. The job is polled every kProgressPollMs.
inline constexpr uint64_t kProgressRedrawMs = 250;
inline constexpr uint64_t kProgressLineMs = 5000;
inline constexpr uint64_t kProgressPollMs = 250;

}  // namespace cardnode::cli
