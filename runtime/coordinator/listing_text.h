// How listings read to people: durations, sizes, task-state counts, elapsed and run times, in
// one place for the CLI's tables (cli/format.h) and the server's status page
// (runtime/coordinator/status_page.h), so both say the same thing the same way. Pure
// functions of their arguments (the clock is the caller's). Threading: none shared.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "cardnode.pb.h"

namespace cardnode::runtime {

// 420 -> "0.4s", 9'500 -> "9.5s", 83'000 -> "1m23s", 9'000'000 -> "2.5h", 3 days -> "3.0d".
std::string human_duration(uint64_t ms);
// Powers of 1024: 512 -> "512B", 3 << 19 -> "1.5M", 512 << 20 -> "512M", 3 << 29 -> "1.5G";
// one decimal below 10 of a unit (dropped when it is ".0"), none from 10 up.
std::string human_bytes(uint64_t bytes);
// "queued:3 running:2 succeeded:6", in the task states' order, zero counts left out.
std::string states_text(const pb::JobSummary& job);
// Tasks of `job` in `state` (a sched::task_state_name), 0 when none.
uint32_t state_count(const pb::JobSummary& job, const char* state);
// How long the job ran: to finished_ms once final, else to the server's now_ms (0: an older
// server that does not say; then there is no answer for a job that runs on).
std::optional<uint64_t> job_elapsed_ms(const pb::JobSummary& job, uint64_t server_now_ms);
// How long a task's attempt ran (`ps JOB`'s DURATION): a running task's attempt so far, to
// the server's now_ms (from TaskInfo.started_ms); any other task's latest finished attempt
// (TaskUsage.wall_ms). nullopt when unknown: an older server or agent that does not say, a
// running task restored from an older snapshot, a task that never started.
std::optional<uint64_t> task_duration_ms(const pb::TaskInfo& task, uint64_t server_now_ms);

}  // namespace cardnode::runtime
