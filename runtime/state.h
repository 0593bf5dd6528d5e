// State: the server's durable state — the scheduler's cluster model plus what the
// scheduler does not need (commands, environment, pids) — and the one function that
// changes it: apply(record). The server calls apply() for live events and for every
// record replayed from the WAL, so replay reproduces the same state (guarantee 1).
//
// No I/O. Threading: loop thread only.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "cardnode.pb.h"
#include "proto/error.h"
#include "scheduler/cluster.h"

namespace cardnode::runtime {

// Defaults a user of Slurm or Nomad would expect on a Pi (docs/ARCHITECTURE.md, "Defaults").
inline constexpr uint32_t kDefaultCpuMillis = 1000;         // one core, like Slurm
inline constexpr uint64_t kDefaultMemBytes = 128ull << 20;  // 128 MiB
inline constexpr uint32_t kDefaultPriority = 50;
inline constexpr uint32_t kCommandArgsMax = 4096;
inline constexpr uint32_t kSpecBytesMax = 256u << 10;  // serialized JobSpec

struct SpawnedPid {
  int32_t pid = 0;
  uint64_t start_ticks = 0;
};

// What apply() changed, for the caller's side effects (kills, waiters, metrics).
struct Applied {
  std::vector<sched::TaskRef> to_kill;      // running tasks of a just-cancelled job
  std::vector<sched::JobId> finished_jobs;  // jobs this record moved to a final state
};

class State {
 public:
  explicit State(sched::Limits limits = {});

  // Fills defaults and checks a spec from a client; the error message is for the user.
  [[nodiscard]] Status normalize(pb::JobSpec* spec) const;
  [[nodiscard]] Result<Applied> apply(const pb::WalRecord& record);

  sched::Cluster& cluster() { return cluster_; }
  const sched::Cluster& cluster() const { return cluster_; }
  const pb::JobSpec* spec(sched::JobId id) const;
  const std::map<sched::TaskRef, SpawnedPid>& spawned() const { return spawned_; }

  // Tasks per state over all jobs, kept exact by apply(): the tasks gauge.
  const std::array<uint64_t, sched::kTaskStateCount>& task_totals() const { return totals_; }
  uint64_t jobs_submitted() const { return jobs_submitted_; }

 private:
  using CountArray = std::array<uint32_t, sched::kTaskStateCount>;
  // Jobs whose task counts a record may move: `id` itself and every unfinished job
  // waiting on another (a job's end cancels or releases its dependents).
  std::vector<std::pair<sched::JobId, CountArray>> snapshot(sched::JobId id) const;
  void account(const std::vector<std::pair<sched::JobId, CountArray>>& before, Applied* out);

  sched::Cluster cluster_;
  std::unordered_map<sched::JobId, pb::JobSpec> specs_;
  std::map<sched::TaskRef, SpawnedPid> spawned_;
  std::set<sched::JobId> waiting_;  // unfinished jobs with a dependency
  std::array<uint64_t, sched::kTaskStateCount> totals_{};
  uint64_t jobs_submitted_ = 0;
};

sched::JobSpec to_sched_spec(const pb::JobSpec& spec);
const char* sched_error_text(sched::SchedError e);

}  // namespace cardnode::runtime
