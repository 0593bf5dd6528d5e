// State: the server's durable state — the scheduler's cluster model plus what the
// scheduler does not need (job specs as submitted, node identities, retention order,
// counters) — and the one function that changes it: apply(record, seq).
//
// apply() is all or nothing: it checks the record against the state first and, if it does
// not fit, returns the error with nothing changed. The coordinator applies a record before
// it appends it to the WAL and logs it only if it applied; replay calls the same apply() in
// the same order, so a durable record is never rejected and replay reproduces the state
// exactly (docs/ARCHITECTURE.md, "Replay").
//
// No I/O, no clock. Threading: loop thread only.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "cardnode.pb.h"
#include "proto/error.h"
#include "scheduler/cluster.h"

namespace cardnode::runtime {

// Defaults a user of Slurm or Nomad would expect on a Pi (docs/ARCHITECTURE.md, "Defaults").
inline constexpr uint32_t kDefaultCpuMillis = 1000;         // one core, like Slurm
inline constexpr uint64_t kDefaultMemBytes = 128ull << 20;  // 128 MiB
// Below this no program starts: the exec itself is refused for memory, and so is the
// pipe write that would say why (Nomad's floor is 10 MB). New jobs only: replay takes any.
inline constexpr uint64_t kMemBytesMin = 1ull << 20;
inline constexpr uint32_t kDefaultPriority = 50;
inline constexpr uint32_t kCommandArgsMax = 4096;
inline constexpr uint32_t kSpecBytesMax = 256u << 10;  // serialized JobSpec
inline constexpr uint32_t kPrunedPerRecordMax = 4096;  // job ids in one JobsPruned
inline constexpr uint32_t kNodeIdentityBytesMax = 128;

// The compiler holds the mirrored enums together (scheduler <-> protobuf <-> error codes).
static_assert(static_cast<int>(sched::TaskState::kLost) == pb::TASK_LOST);
static_assert(sched::kTaskStateCount == pb::TaskState_ARRAYSIZE);
static_assert(static_cast<int>(sched::JobState::kCancelled) == pb::JOB_CANCELLED);
static_assert(static_cast<int>(sched::JobState::kCancelled) + 1 == pb::JobState_ARRAYSIZE);

inline sched::TaskState from_pb(pb::TaskState s) {
  return static_cast<sched::TaskState>(s);
}
inline pb::TaskState to_pb(sched::TaskState s) {
  return static_cast<pb::TaskState>(s);
}
inline pb::JobState to_pb(sched::JobState s) {
  return static_cast<pb::JobState>(s);
}

// What apply() changed, for the caller's side effects once the record is durable.
struct Applied {
  std::vector<sched::TaskRef> to_kill;      // running tasks of a just-cancelled job
  std::vector<sched::JobId> finished_jobs;  // jobs this record moved to a final state
  std::vector<sched::JobId> pruned_jobs;    // their logs can go
  std::vector<sched::TaskRef> promoted;     // standbys a task's end gave room to
};

class State final : private sched::JobObserver {
 public:
  explicit State(sched::Limits limits = {});
  State(const State&) = delete;
  State& operator=(const State&) = delete;

  // Fills defaults and checks a spec from a client; the error message is for the user.
  [[nodiscard]] Status normalize(pb::JobSpec* spec) const;
  // All or nothing (see above). seq is the record's WAL sequence number, > applied_seq().
  [[nodiscard]] Result<Applied> apply(const pb::WalRecord& record, uint64_t seq);
  uint64_t applied_seq() const { return applied_seq_; }

  sched::Cluster& cluster() { return cluster_; }
  const sched::Cluster& cluster() const { return cluster_; }
  const pb::JobSpec* spec(sched::JobId id) const;
  // An id that was handed out and whose job retention dropped.
  bool pruned(sched::JobId id) const;

  std::optional<sched::NodeId> node_by_identity(const std::string& identity) const;
  const std::string& node_identity(sched::NodeId id) const;

  // Finished jobs retention would drop now, oldest finished first, at most `max`: beyond
  // the newest keep_count, or finished more than keep_for_ms before now_ms.
  std::vector<sched::JobId> prune_candidates(uint32_t keep_count, uint64_t keep_for_ms,
                                             uint64_t now_ms, uint32_t max) const;
  uint64_t finished_jobs() const { return finished_.size(); }

  // Tasks per state over the jobs in memory, kept exact by apply(): the tasks gauge.
  const std::array<uint64_t, sched::kTaskStateCount>& task_totals() const { return totals_; }
  uint64_t jobs_submitted() const { return jobs_submitted_; }
  uint64_t jobs_pruned() const { return jobs_pruned_; }

  // A snapshot in progress observes changes through the state: the cluster has one
  // observer slot, and the state needs it to count what each record moves.
  void set_snapshot_observer(sched::JobObserver* observer) { snapshot_observer_ = observer; }

  // ---- snapshots (runtime/snapshot_codec.h) ------------------------------------------
  // Restores what a snapshot holds into an empty State. Each call is checked; the last,
  // finish_restore(), rebuilds every derived index and total.
  struct NodeImage {
    sched::NodeSpec spec;
    std::string identity;
    bool removed = false;
    bool draining = false;
    uint64_t drain_deadline_ms = 0;
  };
  [[nodiscard]] Status restore_node(NodeImage image);
  [[nodiscard]] Status restore_job(sched::Job job, pb::JobSpec spec, bool cancelling);
  [[nodiscard]] Status finish_restore(uint64_t covers_seq, sched::JobId last_job_id,
                                      uint64_t jobs_submitted, uint64_t jobs_pruned);

 private:
  using CountArray = std::array<uint32_t, sched::kTaskStateCount>;
  Result<Applied> apply_event(const pb::WalRecord& record);
  Result<Applied> apply_node_updated(const pb::NodeUpdated& r);
  Result<Applied> apply_jobs_pruned(const pb::JobsPruned& r);
  // The cluster tells us each job it is about to change: we keep its task counts from
  // before, so account() looks at exactly the jobs a record moved (cascades included).
  void before_change(const sched::Job& job, uint32_t first_task, uint32_t last_task) override;
  void account(Applied* out);

  sched::Cluster cluster_;
  uint64_t applied_seq_ = 0;
  std::unordered_map<sched::JobId, pb::JobSpec> specs_;
  std::vector<std::string> identities_;  // by NodeId
  std::unordered_map<std::string, sched::NodeId> node_of_identity_;
  std::set<std::pair<uint64_t, sched::JobId>> finished_;      // (finished_ms, id), for retention
  std::vector<std::pair<sched::JobId, CountArray>> touched_;  // this record's jobs, before
  std::unordered_set<sched::JobId> touched_ids_;
  sched::JobObserver* snapshot_observer_ = nullptr;
  std::array<uint64_t, sched::kTaskStateCount> totals_{};
  uint64_t jobs_submitted_ = 0;
  uint64_t jobs_pruned_ = 0;
};

sched::JobSpec to_sched_spec(const pb::JobSpec& spec);
sched::NodeSpec to_sched_node(const pb::NodeUpdated& r);
const char* sched_error_text(sched::SchedError e);

}  // namespace cardnode::runtime
