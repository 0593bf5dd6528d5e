// AgentJournal: what an agent runs and what ended there, durable before it matters.
//
//   started(attempt)  durable before the process is spawned: after a crash or restart the
//                     agent knows what may still run (and kills it: never untracked);
//   ended(outcome)    durable before it is reported: an end survives an agent restart and
//                     a server that is away, and is sent until acknowledged;
//   forget(attempt)   once the server acknowledged the end (durable there), or said the
//                     attempt was not this node's.
//
// Backed by a LocalStore (storage/local_store.h) in DATA_DIR/journal: a WAL plus a snapshot
// of the live entries whenever the WAL outgrows the last snapshot, so the journal stays as
// small as what runs and what waits for an acknowledgement: at most twice the board's task
// limit (the executor runs at most tasks_max; the agent asks for no work while tasks_max
// ends wait for an acknowledgement, runtime/agent/agent.cc send_poll).
//
// Threading: loop thread only. `engine` must outlive the journal.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "cardnode.pb.h"
#include "proto/error.h"
#include "storage/io_engine.h"
#include "storage/local_store.h"

namespace cardnode::runtime {

using AttemptKey = std::tuple<uint64_t, uint32_t, uint32_t>;  // job, index, attempt
inline AttemptKey key_of(const pb::TaskAttempt& a) {
  return {a.job_id(), a.index(), a.attempt()};
}

class AgentJournal {
 public:
  // Recovers the journal in `dir` (creating it).
  [[nodiscard]] static Result<std::unique_ptr<AgentJournal>> open(storage::IoEngine& engine,
                                                                  const std::string& dir);
  ~AgentJournal();

  // `durable` runs once the record is on disk. Refused (nothing changed) when the store
  // refuses; a store failure reaches on_failure.
  [[nodiscard]] Status started(const pb::TaskAttempt& attempt, std::function<void()> durable);
  [[nodiscard]] Status ended(const pb::TaskOutcome& outcome, std::function<void()> durable);
  [[nodiscard]] Status forget(const pb::TaskAttempt& attempt);

  bool knows(const pb::TaskAttempt& attempt) const { return entries_.contains(key_of(attempt)); }
  // Attempts started and not ended; ends not yet forgotten.
  std::vector<pb::TaskAttempt> running() const;
  std::vector<pb::TaskOutcome> ended() const;
  size_t size() const { return entries_.size(); }

  // Compaction: a snapshot of the live entries once the WAL has grown. Call from the loop.
  void turn();
  void drain();
  void on_failure(std::function<void(const Error&)> f) { on_failure_ = std::move(f); }

 private:
  struct Entry {
    pb::TaskAttempt attempt;
    std::optional<pb::TaskOutcome> outcome;
  };
  explicit AgentJournal(std::unique_ptr<storage::LocalStore> store);
  Status append(const pb::JournalRecord& record, std::function<void()> durable);
  void apply(const pb::JournalRecord& record);

  std::unique_ptr<storage::LocalStore> store_;
  std::map<AttemptKey, Entry> entries_;
  std::unique_ptr<storage::SnapshotSink> sink_;
  std::unique_ptr<storage::SnapshotSink> retired_;
  bool snapshot_done_ = false;
  std::function<void(const Error&)> on_failure_;
};

}  // namespace cardnode::runtime
