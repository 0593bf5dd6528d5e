// Snapshot codec: a State as a run of pb::SnapshotChunk messages, and back.
//
// SnapshotBuilder writes the state as it was at one WAL sequence number (the cut) without
// stopping the loop: step() encodes a bounded number of tasks per call, and because it is
// the cluster's JobObserver, a job about to change after the cut is written first, whole,
// as it still is (copy-before-write). Every job's chunks therefore show it at the cut,
// whatever happened since. The cost of one step is bounded by its task budget; the cost of
// one copy-before-write by the size of one job.
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
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "proto/error.h"
#include "runtime/state.h"

namespace cardnode::runtime {

inline constexpr uint32_t kSnapshotFormat = 1;
inline constexpr uint32_t kTaskImageBytes = 12;
inline constexpr uint32_t kTasksPerSliceMax = 65536;  // 768 KiB of tasks per chunk

class SnapshotBuilder final : public sched::JobObserver {
 public:
  // Takes the cut now (meta, nodes, the ids of every job) and becomes the observer.
  explicit SnapshotBuilder(State& state, uint32_t tasks_per_slice = kTasksPerSliceMax);
  // Without observing: only for a state that does not change until the builder is done.
  SnapshotBuilder(const State& state, uint32_t tasks_per_slice, bool observe);
  ~SnapshotBuilder() override;
  SnapshotBuilder(const SnapshotBuilder&) = delete;
  SnapshotBuilder& operator=(const SnapshotBuilder&) = delete;

  uint64_t covers_seq() const { return covers_seq_; }
  // Encodes jobs in id order, at most about `tasks_budget` tasks' worth (a job counts at
  // least one). Returns true once every job of the cut is encoded.
  bool step(uint64_t tasks_budget);
  bool encoded_all() const { return cursor_ >= ids_.size(); }
  // Encoded chunks not yet taken, oldest first.
  bool has_chunk() const { return !chunks_.empty(); }
  std::string take_chunk();
  uint64_t chunk_bytes_queued() const { return queued_bytes_; }
  uint64_t jobs_written_early() const { return early_.size(); }

  void before_change(const sched::Job& job) override;

 private:
  void write_image(const sched::Job& job);
  void write_tasks(const sched::Job& job, uint32_t from, uint32_t to);
  void put(const pb::SnapshotChunk& chunk);

  const State& state_;
  sched::Cluster* observed_ = nullptr;  // whose observer we are, if any
  uint32_t tasks_per_slice_;
  uint64_t covers_seq_;
  std::vector<sched::JobId> ids_;  // every job at the cut, ascending
  size_t cursor_ = 0;              // ids_[cursor_] is the job step() works on
  uint32_t cursor_next_task_ = 0;  // its next task to encode; 0: image not yet written
  bool cursor_image_written_ = false;
  std::unordered_set<sched::JobId> early_;  // written whole by before_change
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
    uint32_t next_task = 0;
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
