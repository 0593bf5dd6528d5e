// Write-ahead log with group commit. append() queues a record; records queued while a
// write+fdatasync is in flight go out together in the next one, so one fdatasync
// covers a whole batch. on_durable runs, in append order, only after the record and
// every earlier one are on disk — the server acknowledges nothing before that.
//
// An fdatasync failure is not retried (the kernel may have dropped the dirty pages):
// the WAL becomes failed, every pending and later append gets the error, and the
// server stops (docs/GUARANTEES.md).
//
// Threading: loop thread only, like the IoEngine it uses. `engine` must outlive the Wal.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "proto/error.h"
#include "storage/io_engine.h"
#include "storage/wal_format.h"

namespace cardnode::storage {

struct WalOptions {
  std::string dir;  // DATA_DIR/wal
  uint64_t segment_bytes = kSegmentBytesDefault;
  uint64_t prealloc_bytes = kPreallocBytesDefault;
  uint64_t pending_bytes_max = 16ull << 20;  // queued, not yet written; beyond: kResourceExhausted
};

struct ReplayStats {
  uint64_t records = 0;
  uint64_t segments = 0;
  uint64_t torn_tail_bytes = 0;  // bytes dropped from the newest segment's tail
};

using DurableCallback = std::function<void(Status)>;
using ReplayFn = std::function<Status(std::string_view payload)>;

class Wal {
 public:
  // Creates `dir` if needed, replays every intact record in order through `on_record`
  // (an error from it stops the open), drops a torn tail, and positions for appends.
  // Replay uses plain reads: it runs once, before the loop starts.
  [[nodiscard]] static Result<std::unique_ptr<Wal>> open(IoEngine& engine, WalOptions options,
                                                         const ReplayFn& on_record,
                                                         ReplayStats* stats);
  // Drains first (see drain()), so every callback has run when it returns. Not from
  // inside a DurableCallback.
  ~Wal();
  Wal(const Wal&) = delete;
  Wal& operator=(const Wal&) = delete;

  // Queues one record. Fails at once (callback not called) for an empty or oversize
  // payload, a full pending queue, or a failed WAL.
  [[nodiscard]] Status append(std::string_view payload, DurableCallback on_durable);

  uint64_t next_sequence() const;    // sequence number the next append gets
  uint64_t pending_records() const;  // queued or in flight
  bool failed() const;

  // Blocks (engine.wait) until every queued record is durable or failed. For shutdown
  // and tests.
  void drain();

 private:
  struct Impl;
  explicit Wal(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Reads a WAL directory without changing it, for `cardnode fsck`. Returns the number
// of intact records, or the first problem found.
[[nodiscard]] Result<ReplayStats> check_wal(const std::string& dir);

}  // namespace cardnode::storage
