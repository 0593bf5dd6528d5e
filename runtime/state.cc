#include "runtime/state.h"

#include <algorithm>
#include <utility>

namespace cardnode::runtime {
namespace {

using CountArray = std::array<uint32_t, sched::kTaskStateCount>;

sched::TaskState to_sched_state(pb::TaskState s) {
  return static_cast<sched::TaskState>(s);
}

// A job is final when none of its tasks is queued or running.
bool job_is_final_counts(const CountArray& counts, uint32_t count) {
  uint32_t open = counts[static_cast<size_t>(sched::TaskState::kQueued)] +
                  counts[static_cast<size_t>(sched::TaskState::kRunning)];
  uint32_t total = 0;
  for (uint32_t c : counts) total += c;
  return total == count && open == 0;
}

bool job_is_final(const sched::Job* job) {
  return job && sched::is_final(job->state);
}

}  // namespace

const char* sched_error_text(sched::SchedError e) {
  switch (e) {
    case sched::SchedError::kInvalidSpec: return "invalid job spec";
    case sched::SchedError::kTooManyJobs: return "too many unfinished jobs";
    case sched::SchedError::kTooManyTasks: return "too many queued tasks";
    case sched::SchedError::kTooManyNodes: return "too many nodes";
    case sched::SchedError::kDuplicateId: return "duplicate id";
    case sched::SchedError::kUnknownJob: return "no such job";
    case sched::SchedError::kUnknownNode: return "no such node";
    case sched::SchedError::kBadTransition: return "task is not in a state that allows this";
  }
  return "scheduler error";
}

sched::JobSpec to_sched_spec(const pb::JobSpec& spec) {
  sched::JobSpec out;
  out.name = spec.name();
  out.count = spec.count();
  out.per_task.cpu_millis = spec.cpu_millis();
  out.per_task.mem_bytes = spec.mem_bytes();
  out.retries = spec.retries();
  out.priority = spec.has_priority() ? spec.priority() : kDefaultPriority;
  for (const auto& [k, v] : spec.constraints()) out.constraints.emplace_back(k, v);
  // Map order is unspecified in protobuf; sort so replay builds the identical spec.
  std::sort(out.constraints.begin(), out.constraints.end());
  out.after = spec.after();
  return out;
}

State::State(sched::Limits limits) : cluster_(limits) {}

Status State::normalize(pb::JobSpec* spec) const {
  if (spec->command_size() == 0 || spec->command(0).empty())
    return fail(Errc::kInvalidArgument, "job has no command");
  if (spec->command_size() > static_cast<int>(kCommandArgsMax))
    return fail(Errc::kInvalidArgument, "command has more than 4096 arguments");
  if (spec->count() == 0) spec->set_count(1);
  if (spec->cpu_millis() == 0) spec->set_cpu_millis(kDefaultCpuMillis);
  if (spec->mem_bytes() == 0) spec->set_mem_bytes(kDefaultMemBytes);
  if (!spec->has_priority()) spec->set_priority(kDefaultPriority);
  if (spec->priority() > 100) return fail(Errc::kInvalidArgument, "priority must be 0-100");
  if (spec->retries() > 100) return fail(Errc::kInvalidArgument, "retries must be 0-100");
  if (spec->name().empty()) spec->set_name(spec->command(0));
  if (spec->ByteSizeLong() > kSpecBytesMax)
    return fail(Errc::kInvalidArgument, "job spec larger than 256 KiB");
  if (spec->after() != 0 && cluster_.job(spec->after()) == nullptr)
    return fail(Errc::kNotFound, "--after: no job " + std::to_string(spec->after()));
  auto ok = cluster_.validate(to_sched_spec(*spec));
  if (!ok) return fail(Errc::kInvalidArgument, sched_error_text(ok.error()));
  return {};
}

const pb::JobSpec* State::spec(sched::JobId id) const {
  auto it = specs_.find(id);
  return it == specs_.end() ? nullptr : &it->second;
}

std::vector<std::pair<sched::JobId, State::CountArray>> State::snapshot(sched::JobId id) const {
  std::vector<std::pair<sched::JobId, CountArray>> out;
  if (const sched::Job* job = cluster_.job(id)) out.emplace_back(id, job->state_counts);
  // Bounded by the number of unfinished jobs with a dependency (sched::Limits::jobs_max).
  for (sched::JobId dep : waiting_) {
    if (dep == id) continue;
    if (const sched::Job* job = cluster_.job(dep)) out.emplace_back(dep, job->state_counts);
  }
  return out;
}

void State::account(const std::vector<std::pair<sched::JobId, CountArray>>& before, Applied* out) {
  for (const auto& [id, counts] : before) {
    const sched::Job* job = cluster_.job(id);
    if (!job) continue;
    for (size_t s = 0; s < sched::kTaskStateCount; ++s)
      totals_[s] += static_cast<uint64_t>(job->state_counts[s]) - counts[s];
    if (job_is_final(job) && !job_is_final_counts(counts, job->spec.count)) {
      out->finished_jobs.push_back(id);
      waiting_.erase(id);
    }
  }
}

Result<Applied> State::apply(const pb::WalRecord& record) {
  Applied out;
  switch (record.event_case()) {
    case pb::WalRecord::kJobSubmitted: {
      const auto& r = record.job_submitted();
      auto ok = cluster_.submit(r.job_id(), to_sched_spec(r.spec()), r.submitted_ms());
      if (!ok) return fail(Errc::kInvalidArgument, sched_error_text(ok.error()));
      specs_[r.job_id()] = r.spec();
      ++jobs_submitted_;
      if (r.spec().after() != 0) waiting_.insert(r.job_id());
      // A job whose dependency already failed ends at once, cancelled.
      account({{r.job_id(), CountArray{}}}, &out);
      return out;
    }
    case pb::WalRecord::kTaskStarted: {
      const auto& r = record.task_started();
      const sched::Node* node = cluster_.node_by_name(r.node());
      if (!node) return fail(Errc::kNotFound, "task started on unknown node " + r.node());
      auto before = snapshot(r.job_id());
      sched::Placement p{{r.job_id(), r.index()}, node->id, r.attempt()};
      auto ok = cluster_.start(p, r.started_ms());
      if (!ok) return fail(Errc::kInvalidArgument, sched_error_text(ok.error()));
      account(before, &out);
      return out;
    }
    case pb::WalRecord::kTaskSpawned: {
      const auto& r = record.task_spawned();
      spawned_[{r.job_id(), r.index()}] = SpawnedPid{r.pid(), r.start_ticks()};
      return out;
    }
    case pb::WalRecord::kTaskFinished: {
      const auto& r = record.task_finished();
      auto before = snapshot(r.job_id());
      sched::Outcome o{to_sched_state(r.state()), r.exit_code(), r.signal()};
      auto ok = cluster_.finish({r.job_id(), r.index()}, o, r.finished_ms());
      if (!ok) return fail(Errc::kInvalidArgument, sched_error_text(ok.error()));
      spawned_.erase({r.job_id(), r.index()});
      account(before, &out);
      return out;
    }
    case pb::WalRecord::kJobCancelled: {
      const auto& r = record.job_cancelled();
      auto before = snapshot(r.job_id());
      auto running = cluster_.cancel(r.job_id(), r.cancelled_ms());
      if (!running) return fail(Errc::kNotFound, sched_error_text(running.error()));
      account(before, &out);
      out.to_kill = std::move(*running);
      return out;
    }
    case pb::WalRecord::EVENT_NOT_SET: break;
  }
  return fail(Errc::kCorruption, "WAL record without an event");
}

}  // namespace cardnode::runtime
