// LocalStore: the DurableStore of one board — DATA_DIR/wal (storage/wal.h) and
// DATA_DIR/snapshots (storage/snapshot.h).
//
// Compaction keeps one snapshot of slack: when snapshot N is installed, WAL segments
// covered by snapshot N-1 and snapshots older than N-1 are removed. If snapshot N is
// damaged later, recovery falls back to N-1 plus the WAL it still has, losing nothing.
//
// Threading: loop thread only. `engine` and options.fs must outlive the store.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "storage/durable_store.h"
#include "storage/fs.h"
#include "storage/io_engine.h"
#include "storage/wal.h"

namespace cardnode::storage {

struct LocalStoreOptions {
  std::string dir;  // DATA_DIR; wal/ and snapshots/ are made under it
  WalOptions wal;   // wal.dir and wal.fs are filled in from dir and fs
  uint64_t snapshot_buffer_bytes = 4ull << 20;
  Fs* fs = nullptr;  // nullptr: Fs::real()
};

struct LocalStoreStats {
  uint64_t snapshots_written = 0;
  uint64_t snapshot_failures = 0;
  uint64_t compaction_failures = 0;
};

class LocalStore final : public DurableStore {
 public:
  LocalStore(IoEngine& engine, LocalStoreOptions options);
  ~LocalStore() override;

  Result<RecoveryReport> recover(const ChunkFn& on_snapshot_chunk,
                                 const ReplayFn& on_record) override;
  Status reserve(size_t payload_bytes) override;
  Status append(std::string_view payload, DurableCallback on_durable) override;
  uint64_t next_sequence() const override;
  uint64_t durable_sequence() const override;
  uint64_t pending_records() const override;
  bool failed() const override;
  uint64_t bytes_since_snapshot() const override;
  uint64_t snapshot_bytes() const override { return snapshot_bytes_; }
  Result<std::unique_ptr<SnapshotSink>> begin_snapshot(uint64_t covers_seq) override;
  void drain() override;
  void flush() override { wal_->flush(); }

  const Wal& wal() const { return *wal_; }
  const LocalStoreStats& stats() const { return stats_; }
  std::string wal_dir() const { return options_.dir + "/wal"; }
  std::string snapshot_dir() const { return options_.dir + "/snapshots"; }

 private:
  class Sink;
  void installed(uint64_t covers_seq, uint64_t file_bytes, uint64_t wal_bytes_at_cut);

  IoEngine& engine_;
  LocalStoreOptions options_;
  Fs& fs_;
  std::unique_ptr<Wal> wal_;
  uint64_t snapshot_seq_ = 0;  // newest installed snapshot (0: none)
  uint64_t snapshot_bytes_ = 0;
  uint64_t replayed_bytes_ = 0;    // record bytes after the snapshot, read at recovery
  uint64_t wal_bytes_at_cut_ = 0;  // wal stats().bytes_appended when that snapshot was cut
  bool snapshot_in_progress_ = false;
  LocalStoreStats stats_;
};

}  // namespace cardnode::storage
