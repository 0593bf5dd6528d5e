// Snapshot codec: a State as a run of pb::SnapshotChunk messages, and back.
//
// SnapshotBuilder writes the state as it was at one WAL sequence number (the cut) without
// stopping the loop: step() encodes a bounded number of tasks per call, and because it
// observes the state's changes, what a record is about to change after the cut is written
// first, as it still is (copy-before-write): the job's own fields, and the slices of tasks
// the change may touch. Every chunk therefore shows the state at the cut, whatever happened
// since. The cost of one step is bounded by its task budget; a copy-before-write costs one
// slice (kTasksPerSlice tasks) for a task's start or end, and no more than the change it
// precedes for a change of many tasks (a cancel, a cascade, a prune).
//
// SnapshotLoader rebuilds a State from the chunks of one snapshot, checking everything
// (counts, node ids, task states) as it goes: a snapshot that passed its checksums but
// does not describe a state we could have made is kCorruption, never a crash.
//
// Threading: loop thread only. The State must outlive the builder or loader; a builder
// holds the cluster's observer slot from construction to destruction.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "proto/error.h"
#include "runtime/coordinator/state.h"

namespace cardnode::runtime {

inline constexpr uint32_t kSnapshotFormat = 1;
inline constexpr uint32_t kTaskImageBytes = 12;
inline constexpr uint32_t kTasksPerSlice = 4096;      // 48 KiB of tasks per chunk
inline constexpr uint32_t kTasksPerSliceMax = 65536;  // what a reader accepts per chunk

class SnapshotBuilder final : public sched::JobObserver {
 public:
  // Takes the cut now (meta, nodes, the ids of every job) and observes the state.
  explicit SnapshotBuilder(State& state, uint32_t tasks_per_slice = kTasksPerSlice);
  // Without observing: only for a state that does not change until the builder is done.
  SnapshotBuilder(const State& state, uint32_t tasks_per_slice, bool observe);
  ~SnapshotBuilder() override;
  SnapshotBuilder(const SnapshotBuilder&) = delete;
  SnapshotBuilder& operator=(const SnapshotBuilder&) = delete;

  uint64_t covers_seq() const { return covers_seq_; }
  // Encodes jobs in id order, whole slices, until about `tasks_budget` tasks are encoded (a
  // job's own fields count one; the last slice may go past the budget by less than a
  // slice). Returns true once every job of the cut is encoded.
  bool step(uint64_t tasks_budget);
  bool encoded_all() const { return cursor_ >= ids_.size(); }
  // Encoded chunks not yet taken, oldest first.
  bool has_chunk() const { return !chunks_.empty(); }
  std::string take_chunk();
  uint64_t chunk_bytes_queued() const { return queued_bytes_; }
  uint64_t slices_copied_early() const { return slices_copied_early_; }

  void before_change(const sched::Job& job, uint32_t first_task, uint32_t last_task) override;

 private:
  // What has been written of one job; kept only for jobs a change reached before step().
  struct Progress {
    bool image = false;
    std::vector<bool> slices;  // by slice index
    uint32_t slices_left = 0;
  };
  Progress& progress(const sched::Job& job);
  void write_image(const sched::Job& job);
  void write_slice(const sched::Job& job, Progress& p, uint32_t slice);
  void put(const pb::SnapshotChunk& chunk);

  const State& state_;
  State* observed_ = nullptr;  // whose changes we observe, if any
  uint32_t tasks_per_slice_;
  uint64_t covers_seq_;
  std::vector<sched::JobId> ids_;  // every job at the cut, ascending
  size_t cursor_ = 0;              // ids_[cursor_] is the job step() works on
  std::unordered_map<sched::JobId, Progress> progress_;
  uint64_t slices_copied_early_ = 0;
  std::deque<std::string> chunks_;
  uint64_t queued_bytes_ = 0;
};

class SnapshotLoader {
 public:
  explicit SnapshotLoader(State& state) : state_(state) {}
  [[nodiscard]] Status feed(std::string_view chunk);
  // Every job complete and counted; rebuilds the derived state.
  [[nodiscard]] Status finish();

 private:
  struct Partial {
    sched::Job job;
    pb::JobSpec spec;
    bool cancelling = false;
    std::map<uint32_t, uint32_t> covered;  // task ranges [first, end) received so far
    uint64_t tasks_received = 0;
  };
  Status feed_job(const pb::JobImage& image);
  Status feed_tasks(const pb::TaskSlice& slice);

  State& state_;
  bool have_meta_ = false;
  pb::SnapshotMeta meta_;
  uint64_t nodes_ = 0;
  uint64_t jobs_done_ = 0;
  std::unordered_map<sched::JobId, Partial> partial_;
};

// The whole state at once, jobs in id order: the canonical image tests compare.
std::vector<std::string> encode_snapshot(const State& state);

}  // namespace cardnode::runtime
