// Why a job waits and why a board takes nothing (cluster.h: why_waiting, why_skipped), for
// `ps JOB` and `cardnode nodes`. Queries only: they read the state and, for the causes
// that depend on other work, simulate plan() up to the job's turn.
#include <algorithm>
#include <cinttypes>
#include <cstdio>

#include "scheduler/check.h"
#include "scheduler/cluster.h"

namespace cardnode::sched {
namespace {

// Placements simulated ahead of a job before why_waiting() gives up looking (1.5 MiB of
// scratch at most); past it the job is simply behind that much work.
constexpr uint32_t kExplainPlacementsMax = 65'536;

bool job_final(JobState s) {
  return s >= JobState::kSucceeded;
}

// "1 core", "1.5 cores", "0.25 cores".
std::string cores_text(uint32_t cpu_millis) {
  char buf[32];
  if (cpu_millis % 1000 == 0) {
    (void)std::snprintf(buf, sizeof buf, "%u", cpu_millis / 1000);
  } else {
    (void)std::snprintf(buf, sizeof buf, "%u.%03u", cpu_millis / 1000, cpu_millis % 1000);
    std::string s(buf);
    s.erase(s.find_last_not_of('0') + 1);
    return s + " cores";
  }
  return std::string(buf) + (cpu_millis == 1000 ? " core" : " cores");
}

// "512 MiB", "2 GiB", "1.5 GiB", "100 KiB", "12 bytes": one decimal at most.
std::string bytes_text(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"bytes", "KiB", "MiB", "GiB", "TiB"};
  size_t unit = 0;
  uint64_t scale = 1;
  while (unit + 1 < std::size(kUnits) && bytes >= scale * 1024) scale *= 1024, ++unit;
  const uint64_t whole = bytes / scale;
  const uint64_t tenth = (bytes % scale) * 10 / scale;
  char buf[48];
  if (tenth == 0) {
    (void)std::snprintf(buf, sizeof buf, "%" PRIu64 " %s", whole, kUnits[unit]);
  } else {
    (void)std::snprintf(buf, sizeof buf, "%" PRIu64 ".%" PRIu64 " %s", whole, tenth, kUnits[unit]);
  }
  return buf;
}

// ", 3 full, 1 hot" from the boards that could run the job, by why they take nothing.
std::string skipped_text(const WaitReason& r) {
  std::string out;
  for (size_t i = 1; i < kNodeSkipCount; ++i) {
    if (r.skipped[i] == 0) continue;
    out += out.empty() ? "" : ", ";
    out += std::to_string(r.skipped[i]) + " " + node_skip_name(static_cast<NodeSkip>(i));
  }
  return out;
}

}  // namespace

const char* node_skip_name(NodeSkip s) {
  switch (s) {
    case NodeSkip::kNone: return "";
    case NodeSkip::kRemoved: return "removed";
    case NodeSkip::kDown: return "down";
    case NodeSkip::kDraining: return "draining";
    case NodeSkip::kHot: return "hot";
    case NodeSkip::kThrottled: return "throttled";
    case NodeSkip::kUnderVoltage: return "under-voltage";
    case NodeSkip::kTaskLimit: return "task_limit";
    case NodeSkip::kFull: return "full";
  }
  return "unknown";
}

const char* wait_cause_name(WaitCause c) {
  switch (c) {
    case WaitCause::kNone: return "none";
    case WaitCause::kUnknownJob: return "unknown_job";
    case WaitCause::kAfterJob: return "after_job";
    case WaitCause::kNoReadyNodes: return "no_ready_nodes";
    case WaitCause::kConstraint: return "constraint";
    case WaitCause::kTooLarge: return "too_large";
    case WaitCause::kBoardsUnavailable: return "boards_unavailable";
    case WaitCause::kNoRoom: return "no_room";
    case WaitCause::kReserving: return "reserving";
    case WaitCause::kReservedForOther: return "reserved_for_other";
    case WaitCause::kPriority: return "priority";
    case WaitCause::kFairShare: return "fair_share";
    case WaitCause::kStartsNext: return "starts_next";
  }
  return "unknown";
}

std::string describe(const WaitReason& r) {
  const std::string need = cores_text(r.need.cpu_millis) + " and " + bytes_text(r.need.mem_bytes);
  switch (r.cause) {
    case WaitCause::kNone: return "not waiting";
    case WaitCause::kUnknownJob: return "no such job";
    case WaitCause::kAfterJob:
      return "waiting for job " + std::to_string(r.other_job) + " to succeed (--after)";
    case WaitCause::kNoReadyNodes: return "no board is ready";
    case WaitCause::kConstraint:
      return "constraint " + r.constraint.first + "=" + r.constraint.second + " matches no board";
    case WaitCause::kTooLarge: return "no board is big enough for a task of " + need;
    case WaitCause::kBoardsUnavailable:
      return "the boards big enough for it take no work now (" + skipped_text(r) + ")";
    case WaitCause::kNoRoom: return "no board has " + need + " free (" + skipped_text(r) + ")";
    case WaitCause::kReserving:
      return "waited too long: board " + r.node_name +
             " is reserved for it and starts nothing else until it fits";
    case WaitCause::kReservedForOther:
      return "the boards with room are reserved for job " + std::to_string(r.other_job) +
             ", which has waited longer";
    case WaitCause::kPriority:
      return "job " + std::to_string(r.other_job) + ", of higher priority, takes the room first";
    case WaitCause::kFairShare:
      return "job " + std::to_string(r.other_job) +
             " (same priority, fewer running tasks) goes first";
    case WaitCause::kStartsNext:
      if (r.ahead == 0) return "starts with the next placement";
      return "starts soon: " + std::to_string(r.ahead) +
             (r.ahead == 1 ? " placement ahead of it" : " placements ahead of it");
  }
  return "unknown";
}

NodeSkip Cluster::why_skipped(NodeId id) const {
  if (id >= nodes_.size()) return NodeSkip::kRemoved;
  const Node& n = nodes_[id];
  if (n.removed) return NodeSkip::kRemoved;
  if (n.state == NodeState::kDraining || n.draining) return NodeSkip::kDraining;
  if (n.state != NodeState::kReady) return NodeSkip::kDown;
  switch (n.hold) {
    case NodeHold::kNone: break;
    case NodeHold::kHot: return NodeSkip::kHot;
    case NodeHold::kThrottled: return NodeSkip::kThrottled;
    case NodeHold::kUnderVoltage: return NodeSkip::kUnderVoltage;
  }
  if (n.spec.tasks_max != 0 && n.running >= n.spec.tasks_max) return NodeSkip::kTaskLimit;
  if (n.used.cpu_millis >= n.spec.capacity.cpu_millis ||
      n.used.mem_bytes >= n.spec.capacity.mem_bytes) {
    return NodeSkip::kFull;
  }
  return NodeSkip::kNone;
}

// The static causes first (dependency, boards, constraints, sizes, availability), each
// from the state alone; then the ones that depend on other queued work, from a simulated
// plan() that stops at this job's turn.
WaitReason Cluster::why_waiting(JobId id, uint64_t now_ms) const {
  WaitReason r;
  const Job* job = this->job(id);
  if (job == nullptr) {
    r.cause = WaitCause::kUnknownJob;
    return r;
  }
  r.need = job->spec.per_task;
  if (job_final(job->state) || job->state_counts[static_cast<size_t>(TaskState::kQueued)] == 0) {
    return r;
  }
  if (waiting(*job)) {
    r.cause = WaitCause::kAfterJob;
    r.other_job = job->spec.after;
    return r;
  }
  const auto live_ready = [](const Node& n) { return !n.removed && n.state == NodeState::kReady; };
  if (std::none_of(nodes_.begin(), nodes_.end(), live_ready)) {
    r.cause = WaitCause::kNoReadyNodes;
    return r;
  }
  const Constraints& constraints = job->spec.constraints;
  for (size_t i = 0; i < constraints.size(); ++i) {
    const Constraints first(constraints.begin(), constraints.begin() + std::ptrdiff_t(i) + 1);
    const bool any = std::any_of(nodes_.begin(), nodes_.end(),
                                 [&](const Node& n) { return !n.removed && matches(n, first); });
    if (!any) {
      r.cause = WaitCause::kConstraint;
      r.constraint = constraints[i];
      return r;
    }
  }
  // The boards that could run it, by why each takes nothing now (kNone: it has room).
  uint32_t big_enough = 0;
  std::vector<NodeId> roomy;
  for (const Node& n : nodes_) {
    if (n.removed || !matches(n, constraints) || n.spec.capacity.cpu_millis < r.need.cpu_millis ||
        n.spec.capacity.mem_bytes < r.need.mem_bytes) {
      continue;
    }
    ++big_enough;
    NodeSkip skip = why_skipped(n.id);
    if (skip == NodeSkip::kNone &&
        (n.spec.capacity.cpu_millis - n.used.cpu_millis < r.need.cpu_millis ||
         n.spec.capacity.mem_bytes - n.used.mem_bytes < r.need.mem_bytes)) {
      skip = NodeSkip::kFull;  // room, but not enough for this task
    }
    ++r.skipped[static_cast<size_t>(skip)];
    if (skip == NodeSkip::kNone) roomy.push_back(n.id);
  }
  if (big_enough == 0) {
    r.cause = WaitCause::kTooLarge;
    return r;
  }
  const uint32_t busy = r.skipped[static_cast<size_t>(NodeSkip::kFull)] +
                        r.skipped[static_cast<size_t>(NodeSkip::kTaskLimit)];
  if (roomy.empty() && busy == 0) {
    r.cause = WaitCause::kBoardsUnavailable;
    return r;
  }

  Trace trace{.job = id};
  std::vector<Placement> ahead;
  plan_into({kExplainPlacementsMax, now_ms}, &ahead, &trace);
  if (trace.placed) {
    r.cause = WaitCause::kStartsNext;
    r.ahead = trace.ahead;
    return r;
  }
  if (trace.reserved) {
    r.cause = WaitCause::kReserving;
    r.node = trace.node;
    r.node_name = nodes_[trace.node].spec.name;
    return r;
  }
  if (roomy.empty()) {
    r.cause = WaitCause::kNoRoom;
    return r;
  }
  // It had room when the plan began and none by its turn: the first job that took a
  // board it fitted, else a reservation on one.
  for (const Placement& p : ahead) {
    if (!std::binary_search(roomy.begin(), roomy.end(), p.node)) continue;
    const Job& other = *this->job(p.task.job);
    r.other_job = other.id;
    r.cause =
        other.spec.priority > job->spec.priority ? WaitCause::kPriority : WaitCause::kFairShare;
    return r;
  }
  for (const Reservation& res : reserved_) {
    if (res.job != id && std::binary_search(roomy.begin(), roomy.end(), res.node)) {
      r.cause = WaitCause::kReservedForOther;
      r.other_job = res.job;
      return r;
    }
  }
  // Not reached in this many placements: behind that much work.
  r.cause = WaitCause::kStartsNext;
  r.ahead = static_cast<uint32_t>(ahead.size());
  return r;
}

}  // namespace cardnode::sched
