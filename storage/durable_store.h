// DurableStore: everything the coordinator needs from durable storage, behind one narrow
// interface — recover (newest snapshot + the records after it), append records with a
// durability callback, and write snapshots that let old records go. LocalStore
// (storage/local_store.h) implements it with the WAL and snapshot files of one data dir;
// a replicated backend on an existing distributed store can implement it later without
// touching the scheduler or the client API.
//
// Contract for implementations:
//   - append() callbacks run in append order, each only once its record and every earlier
//     one are durable; a record's sequence number is next_sequence() at its append.
//   - reserve() refusals change nothing; after reserve(n) succeeded, append() of at most n
//     bytes, before any other reserve() or append(), is not refused.
//   - A snapshot covering seq S, once its finish() reported success, replaces every record
//     up to S at the next recover().
//
// Threading: loop thread only.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "proto/error.h"
#include "storage/wal.h"

namespace cardnode::storage {

class SnapshotSink {
 public:
  virtual ~SnapshotSink() = default;  // an unfinished snapshot is abandoned
  [[nodiscard]] virtual Status add(std::string_view chunk) = 0;
  // The sink holds as much as it should: the producer waits for the loop.
  virtual bool busy() const = 0;
  // Makes the snapshot durable and the newest, then drops what it makes unnecessary.
  // done runs once, later, from the loop.
  virtual void finish(std::function<void(Status)> done) = 0;
};

struct RecoveryReport {
  uint64_t snapshot_seq = 0;  // 0: no snapshot
  std::string snapshot_path;
  uint64_t snapshot_bytes = 0;
  std::vector<std::string> snapshots_skipped;  // damaged ones, newest first, with why
  ReplayStats wal;
};

using ChunkFn = std::function<Status(std::string_view chunk)>;

class DurableStore {
 public:
  virtual ~DurableStore() = default;

  // Once, before anything else: the newest usable snapshot's chunks (none if there is
  // none), then every record after it in order. A damaged snapshot is skipped for an
  // older one; damaged records stop recovery (kCorruption naming where).
  [[nodiscard]] virtual Result<RecoveryReport> recover(const ChunkFn& on_snapshot_chunk,
                                                       const ReplayFn& on_record) = 0;

  [[nodiscard]] virtual Status reserve(size_t payload_bytes) = 0;
  [[nodiscard]] virtual Status append(std::string_view payload, DurableCallback on_durable) = 0;
  virtual uint64_t next_sequence() const = 0;
  virtual uint64_t durable_sequence() const = 0;
  virtual uint64_t pending_records() const = 0;
  virtual bool failed() const = 0;

  // Record bytes appended since the newest snapshot's cut, and that snapshot's size: the
  // coordinator snapshots when the first outgrows the second (bounded replay, bounded
  // write amplification).
  virtual uint64_t bytes_since_snapshot() const = 0;
  virtual uint64_t snapshot_bytes() const = 0;
  // One snapshot at a time; covers_seq must be durable before finish() is called.
  [[nodiscard]] virtual Result<std::unique_ptr<SnapshotSink>> begin_snapshot(
      uint64_t covers_seq) = 0;

  // Blocks until every accepted record is durable or failed (shutdown, tests).
  virtual void drain() = 0;
  // Starts writing what appends queued, where the store holds them for a per-turn flush
  // (WalOptions::hold_appends). Default: nothing to do.
  virtual void flush() {}
};

}  // namespace cardnode::storage
