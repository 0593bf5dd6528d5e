// What people read on a terminal: durations, sizes, and the progress of `run --wait` for
// an array (docs/CLI.md). Pure functions of their arguments — the clock is the caller's, so
// tests pass times in. Threading: none shared.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "cardnode.pb.h"
#include "runtime/coordinator/listing_text.h"

namespace cardnode::cli {

// Durations, sizes, state counts, elapsed: shared with the status page (listing_text.h).
using runtime::human_bytes;
using runtime::human_duration;
using runtime::job_elapsed_ms;
using runtime::states_text;
using runtime::task_duration_ms;

// Tasks in a final state (succeeded, failed, cancelled, timed_out, oom_killed).
uint32_t tasks_done(const pb::JobSummary& job);
// One line on the progress of an array, elapsed_ms since it was submitted:
// "job 7: 120/500 done, 4.0 tasks/s, elapsed 30s, ETA 1m35s (queued:372 running:8 ...)".
// The rate is over the whole run; the ETA assumes it holds ("ETA ?" before a task ended).
std::string progress_line(const pb::JobSummary& job, uint64_t elapsed_ms);
// How long `run --wait` of an array waits before it looks at the job again:
// kProgressPollMs, or the ETA at the rate so far when that is sooner (at least
// kProgressPollMinMs), so the end is seen within a few ms of it rather than up to a whole
// poll late (a 2-second array was reported ~6% slower than it ran). A look that found no
// task newly done doubles the last wait (up to kProgressPollMs): a slow last task is not
// polled for 200 times a second. last_wait_ms: the wait before this look; progressed:
// this look found more tasks done than the one before.
uint64_t next_poll_ms(const pb::JobSummary& job, uint64_t elapsed_ms, uint64_t last_wait_ms,
                      bool progressed);

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
inline constexpr uint64_t kProgressPollMinMs = 5;

}  // namespace cardnode::cli
