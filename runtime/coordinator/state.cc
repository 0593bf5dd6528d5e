#include "runtime/coordinator/state.h"

#include <algorithm>
#include <utility>

#include "proto/text.h"

namespace cardnode::runtime {
namespace {

using CountArray = std::array<uint32_t, sched::kTaskStateCount>;

// A job is final when none of its tasks is queued or running.
bool job_is_final_counts(const CountArray& counts, uint32_t count) {
  uint32_t open = counts[static_cast<size_t>(sched::TaskState::kQueued)] +
                  counts[static_cast<size_t>(sched::TaskState::kRunning)];
  uint32_t total = 0;
  for (uint32_t c : counts) total += c;
  return total == count && open == 0;
}

std::unexpected<Error> sched_fail(sched::SchedError e, const std::string& what) {
  return fail(Errc::kInvalidArgument, what + ": " + sched_error_text(e));
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
    case sched::SchedError::kBadImage: return "snapshot image is inconsistent";
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
  out.spread = spec.spread();
  return out;
}

sched::NodeSpec to_sched_node(const pb::NodeUpdated& r) {
  sched::NodeSpec out;
  out.name = r.name();
  out.capacity = {r.cpu_millis(), r.mem_bytes()};
  out.tasks_max = r.tasks_max();
  for (const auto& [k, v] : r.labels()) out.labels[k] = v;
  return out;
}

State::State(sched::Limits limits) : cluster_(limits) {
  cluster_.set_observer(this);
}

Status State::normalize(pb::JobSpec* spec) const {
  if (spec->command_size() == 0 || spec->command(0).empty())
    return fail(Errc::kInvalidArgument, "job has no command");
  if (spec->command_size() > static_cast<int>(kCommandArgsMax))
    return fail(Errc::kInvalidArgument, "command has more than 4096 arguments");
  // The client checks too; a spec from another client must not reach an execve or a log.
  if (auto bad = job_spec_bytes_error(*spec)) return fail(Errc::kInvalidArgument, *bad);
  if (spec->count() == 0) spec->set_count(1);
  if (spec->cpu_millis() == 0) spec->set_cpu_millis(kDefaultCpuMillis);
  if (spec->mem_bytes() == 0) spec->set_mem_bytes(kDefaultMemBytes);
  if (spec->mem_bytes() < kMemBytesMin) {
    return fail(Errc::kInvalidArgument, "memory per task (--mem, memBytes) must be at least 1M (" +
                                            std::to_string(spec->mem_bytes()) + " bytes given)");
  }
  if (!spec->has_priority()) spec->set_priority(kDefaultPriority);
  if (spec->priority() > 100) return fail(Errc::kInvalidArgument, "priority must be 0-100");
  if (spec->retries() > 100) return fail(Errc::kInvalidArgument, "retries must be 0-100");
  if (spec->name().empty()) spec->set_name(spec->command(0));
  if (spec->ByteSizeLong() > kSpecBytesMax)
    return fail(Errc::kInvalidArgument, "job spec larger than 256 KiB");
  if (spec->after() != 0 && pruned(spec->after())) {
    return fail(Errc::kNotFound, "--after: job " + std::to_string(spec->after()) +
                                     " was pruned; its outcome is no longer known");
  }
  if (spec->after() != 0 && cluster_.job(spec->after()) == nullptr)
    return fail(Errc::kNotFound, "--after: no job " + std::to_string(spec->after()));
  if (spec->count() > cluster_.limits().tasks_per_job_max) {
    return fail(Errc::kInvalidArgument,
                "--count " + std::to_string(spec->count()) + " is over the limit of " +
                    std::to_string(cluster_.limits().tasks_per_job_max) + " tasks per job");
  }
  auto ok = cluster_.validate(to_sched_spec(*spec));
  if (!ok) return fail(Errc::kInvalidArgument, sched_error_text(ok.error()));
  return {};
}

const pb::JobSpec* State::spec(sched::JobId id) const {
  auto it = specs_.find(id);
  return it == specs_.end() ? nullptr : &it->second;
}

bool State::pruned(sched::JobId id) const {
  return id >= 1 && id <= cluster_.last_job_id() && cluster_.job(id) == nullptr;
}

std::optional<sched::NodeId> State::node_by_identity(const std::string& identity) const {
  auto it = node_of_identity_.find(identity);
  if (it == node_of_identity_.end()) return std::nullopt;
  return it->second;
}

const std::string& State::node_identity(sched::NodeId id) const {
  static const std::string kNone;
  return id < identities_.size() ? identities_[id] : kNone;
}

std::vector<sched::JobId> State::prune_candidates(uint32_t keep_count, uint64_t keep_for_ms,
                                                  uint64_t now_ms, uint32_t max) const {
  std::vector<sched::JobId> out;
  uint64_t left = finished_.size();
  // Oldest first; stops at the first job that is young enough and within the count.
  for (const auto& [finished_ms, id] : finished_) {
    if (out.size() >= max) break;
    bool over_count = left > keep_count;
    bool too_old = now_ms >= finished_ms && now_ms - finished_ms > keep_for_ms;
    if (!over_count && !too_old) break;
    out.push_back(id);
    --left;
  }
  return out;
}

void State::before_change(const sched::Job& job, uint32_t first_task, uint32_t last_task) {
  if (touched_ids_.insert(job.id).second) touched_.emplace_back(job.id, job.state_counts);
  if (snapshot_observer_ != nullptr) snapshot_observer_->before_change(job, first_task, last_task);
}

void State::account(Applied* out) {
  for (const auto& [id, counts] : touched_) {
    const sched::Job* job = cluster_.job(id);
    if (!job) continue;  // pruned: apply_jobs_pruned settled its totals
    for (size_t s = 0; s < sched::kTaskStateCount; ++s)
      totals_[s] += static_cast<uint64_t>(job->state_counts[s]) - counts[s];
    if (sched::is_final(job->state) && !job_is_final_counts(counts, job->spec.count)) {
      out->finished_jobs.push_back(id);
      finished_.emplace(job->finished_ms, id);
    }
  }
}

Result<Applied> State::apply(const pb::WalRecord& record, uint64_t seq) {
  if (seq <= applied_seq_) {
    return fail(Errc::kInternal, "record " + std::to_string(seq) + " applied after record " +
                                     std::to_string(applied_seq_));
  }
  touched_.clear();
  touched_ids_.clear();
  auto out = apply_event(record);
  if (out) {
    applied_seq_ = seq;
    account(&*out);
  }
  return out;
}

Result<Applied> State::apply_event(const pb::WalRecord& record) {
  Applied out;
  switch (record.event_case()) {
    case pb::WalRecord::kJobSubmitted: {
      const auto& r = record.job_submitted();
      auto ok = cluster_.submit(r.job_id(), to_sched_spec(r.spec()), r.submitted_ms());
      if (!ok) return sched_fail(ok.error(), "job " + std::to_string(r.job_id()));
      specs_[r.job_id()] = r.spec();
      ++jobs_submitted_;
      // New: counted from nothing (a job whose dependency already failed ends at once).
      if (touched_ids_.insert(r.job_id()).second) touched_.emplace_back(r.job_id(), CountArray{});
      return out;
    }
    case pb::WalRecord::kTaskStarted: {
      const auto& r = record.task_started();
      // start() counts attempts itself (saturating at 255); the record's is for reading.
      const auto attempt = static_cast<uint16_t>(std::min<uint32_t>(r.attempt(), UINT16_MAX));
      sched::Placement p{{r.job_id(), r.index()}, r.node_id(), attempt, r.standby()};
      auto ok = cluster_.start(p, r.started_ms());
      if (!ok) {
        return sched_fail(ok.error(), "start task " + std::to_string(r.job_id()) + "." +
                                          std::to_string(r.index()));
      }
      return out;
    }
    case pb::WalRecord::kTaskFinished: {
      const auto& r = record.task_finished();
      if (r.state() < 0 || r.state() >= pb::TaskState_ARRAYSIZE) {
        return fail(Errc::kInvalidArgument, "task finished in an unknown state");
      }
      sched::Outcome o{
          from_pb(r.state()),
          r.exit_code(),
          r.signal(),
          r.requeue_free() && r.state() == pb::TASK_LOST,
          {r.usage().cpu_user_ms(), r.usage().cpu_system_ms(), r.usage().mem_peak_kib(),
           r.usage().wall_ms()}};  // an older record has no wall_ms: 0, unknown
      auto ok = cluster_.finish({r.job_id(), r.index()}, o, r.finished_ms(), &out.promoted);
      if (!ok) {
        return sched_fail(ok.error(), "finish task " + std::to_string(r.job_id()) + "." +
                                          std::to_string(r.index()));
      }
      return out;
    }
    case pb::WalRecord::kJobCancelled: {
      const auto& r = record.job_cancelled();
      auto running = cluster_.cancel(r.job_id(), r.cancelled_ms());
      if (!running) return sched_fail(running.error(), "cancel job " + std::to_string(r.job_id()));
      out.to_kill = std::move(*running);
      return out;
    }
    case pb::WalRecord::kNodeUpdated: return apply_node_updated(record.node_updated());
    case pb::WalRecord::kNodeRemoved: {
      const auto& r = record.node_removed();
      auto ok = cluster_.remove_node(r.node_id());
      if (!ok) return sched_fail(ok.error(), "remove node " + std::to_string(r.node_id()));
      node_of_identity_.erase(identities_[r.node_id()]);
      return out;
    }
    case pb::WalRecord::kJobsPruned: return apply_jobs_pruned(record.jobs_pruned());
    case pb::WalRecord::kNodeDrain: {
      const auto& r = record.node_drain();
      auto ok = cluster_.set_draining(r.node_id(), r.draining(), r.deadline_ms());
      if (!ok) return sched_fail(ok.error(), "drain node " + std::to_string(r.node_id()));
      return out;
    }
    case pb::WalRecord::EVENT_NOT_SET: break;
  }
  return fail(Errc::kCorruption, "WAL record without an event");
}

Result<Applied> State::apply_node_updated(const pb::NodeUpdated& r) {
  const std::string& identity = r.identity();
  if (identity.empty() || identity.size() > kNodeIdentityBytesMax) {
    return fail(Errc::kInvalidArgument, "node identity must be 1-128 bytes");
  }
  auto known = node_by_identity(identity);
  const auto next_id = static_cast<sched::NodeId>(cluster_.nodes().size());
  if (r.node_id() == next_id) {  // a new board
    if (known) return fail(Errc::kInvalidArgument, "node identity already has an id");
    auto id = cluster_.add_node(to_sched_node(r));
    if (!id) return sched_fail(id.error(), "add node " + r.name());
    CARDNODE_CHECK(*id == next_id);
    identities_.push_back(identity);
    node_of_identity_[identity] = *id;
    return Applied{};
  }
  if (!known || *known != r.node_id()) {
    return fail(Errc::kInvalidArgument,
                "node " + std::to_string(r.node_id()) + " has another identity");
  }
  auto ok = cluster_.update_node(r.node_id(), to_sched_node(r));
  if (!ok) return sched_fail(ok.error(), "update node " + r.name());
  return Applied{};
}

Result<Applied> State::apply_jobs_pruned(const pb::JobsPruned& r) {
  if (r.job_ids_size() == 0 || r.job_ids_size() > static_cast<int>(kPrunedPerRecordMax)) {
    return fail(Errc::kInvalidArgument, "a prune names 1-4096 jobs");
  }
  std::set<sched::JobId> ids(r.job_ids().begin(), r.job_ids().end());
  if (ids.size() != static_cast<size_t>(r.job_ids_size())) {
    return fail(Errc::kInvalidArgument, "a prune names a job twice");
  }
  for (sched::JobId id : ids) {  // all checked before any is dropped
    const sched::Job* job = cluster_.job(id);
    if (job == nullptr || !sched::is_final(job->state)) {
      return fail(Errc::kInvalidArgument, "job " + std::to_string(id) + " cannot be pruned");
    }
  }
  Applied out;
  for (sched::JobId id : r.job_ids()) {
    const sched::Job& job = *cluster_.job(id);
    for (size_t s = 0; s < sched::kTaskStateCount; ++s) totals_[s] -= job.state_counts[s];
    finished_.erase({job.finished_ms, id});
    CARDNODE_CHECK(cluster_.prune(id).has_value());
    specs_.erase(id);
    ++jobs_pruned_;
    out.pruned_jobs.push_back(id);
  }
  return out;
}

// ------------------------------------------------------------------------ restore

Status State::restore_node(NodeImage image) {
  if (image.identity.empty() || image.identity.size() > kNodeIdentityBytesMax) {
    return fail(Errc::kCorruption, "snapshot: node without a valid identity");
  }
  if (!image.removed && node_by_identity(image.identity)) {
    return fail(Errc::kCorruption, "snapshot: two live nodes share an identity");
  }
  auto ok = cluster_.restore_node(std::move(image.spec), image.removed, image.draining,
                                  image.drain_deadline_ms);
  if (!ok)
    return fail(Errc::kCorruption, std::string("snapshot: node: ") + sched_error_text(ok.error()));
  if (!image.removed) {
    node_of_identity_[image.identity] = static_cast<sched::NodeId>(identities_.size());
  }
  identities_.push_back(std::move(image.identity));
  return {};
}

Status State::restore_job(sched::Job job, pb::JobSpec spec, bool cancelling) {
  sched::JobId id = job.id;
  auto ok = cluster_.restore_job(std::move(job), cancelling);
  if (!ok) {
    return fail(Errc::kCorruption,
                "snapshot: job " + std::to_string(id) + ": " + sched_error_text(ok.error()));
  }
  specs_[id] = std::move(spec);
  return {};
}

Status State::finish_restore(uint64_t covers_seq, sched::JobId last_job_id, uint64_t jobs_submitted,
                             uint64_t jobs_pruned) {
  auto ok = cluster_.finish_restore(last_job_id);
  if (!ok) return fail(Errc::kCorruption, std::string("snapshot: ") + sched_error_text(ok.error()));
  applied_seq_ = covers_seq;
  jobs_submitted_ = jobs_submitted;
  jobs_pruned_ = jobs_pruned;
  totals_ = {};
  finished_.clear();
  for (const auto& [id, job] : cluster_.jobs()) {
    for (size_t s = 0; s < sched::kTaskStateCount; ++s) totals_[s] += job.state_counts[s];
    if (sched::is_final(job.state)) finished_.emplace(job.finished_ms, id);
  }
  return {};
}

}  // namespace cardnode::runtime
