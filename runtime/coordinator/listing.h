// Listings: what `ps` shows, in pages that always fit a frame (net/frame.h, 4 MiB),
// whatever users submitted.
//
// A page is bounded by a count and by the encoded bytes of its entries (kPageBytesMax,
// well under the frame); a page always holds at least one entry, so paging progresses, and
// one entry is bounded by the records it comes from (a job spec is at most kSpecBytesMax).
// The client asks again from where a page ended — ListJobs.after_job_id = JobList.next_after,
// GetJob.first_task = JobDetail.next_task — until that is 0. Jobs come in id order, so a
// listing names each job once even while jobs are submitted or pruned between pages.
//
// Commands: a job list carries each command shortened (at most kListedArgsMax arguments
// and kListedCommandBytesMax bytes, cut on a UTF-8 boundary, command_shortened set); one
// job's page (GetJob, WaitJob) carries it whole, which always fits (kSpecBytesMax).
//
// Pure functions of the State. Threading: the caller's (the loop thread for the server's).
#pragma once

#include <cstdint>

#include "cardnode.pb.h"
#include "runtime/coordinator/state.h"

namespace cardnode::runtime {

inline constexpr uint32_t kPageBytesMax = 1u << 20;      // encoded entries in one page
inline constexpr uint32_t kJobsPageMax = 10'000;         // jobs in one ListJobs page
inline constexpr uint32_t kTasksPageMax = 100'000;       // tasks in one GetJob/WaitJob page
inline constexpr uint32_t kListedArgsMax = 16;           // a command in a job list ...
inline constexpr uint32_t kListedCommandBytesMax = 512;  // ... shortened to these

struct PageBounds {  // tests make them small to reach every boundary cheaply
  uint32_t bytes_max = kPageBytesMax;
  uint32_t jobs_max = kJobsPageMax;
  uint32_t tasks_max = kTasksPageMax;
};

// Jobs with an id above request.after_job_id, in id order: at most request.max_jobs (0: the
// page bound) and the bytes bound. next_after is the last id listed when more follow.
pb::JobList list_jobs(const State& state, const pb::ListJobs& request,
                      const PageBounds& bounds = {});

// The job, its command whole, and its tasks from first_task: at most max_tasks (0: the page
// bound) and the bytes bound, the job's own entry included. next_task is the first task
// not in the page when more follow, else 0 (and 0 for a first_task past the last task).
pb::JobDetail job_page(const State& state, const sched::Job& job, uint32_t first_task,
                       uint32_t max_tasks, const PageBounds& bounds = {});

// The newest max_jobs jobs, newest first, commands shortened (the status page's overview);
// next_after is 0. Only max_jobs is a bound: keep it small (the entries are not byte-bounded).
pb::JobList newest_job_list(const State& state, uint32_t max_jobs);

enum class Command : uint8_t { kWhole, kShortened };
pb::JobSummary job_summary(const State& state, const sched::Job& job, Command command);

}  // namespace cardnode::runtime
