// Write-ahead log with group commit (format and crash rules: storage/wal_format.h).
// append() queues a record; records queued while a batch is in flight go out together in
// the next batch, written and made durable by one operation (IoEngine::write_durably: the
// write and its fdatasync as one). on_durable runs, in
// append order, only after the record and every earlier one are on disk and the seal
// names it — the server acknowledges nothing before that.
//
// Two kinds of failure, kept apart:
//   - Refusals leave the WAL as it was and usable: a full pending queue (back-pressure:
//     kResourceExhausted), no room on the disk (kResourceExhausted with sys_errno ENOSPC,
//     found by preallocating when the record is accepted, never in the middle of a batch),
//     an empty or oversize payload (kInvalidArgument).
//   - A failed write or fdatasync is final (the kernel may have dropped the dirty pages,
//     so it is never retried): the WAL becomes failed, every pending and later append gets
//     the error, and the server stops (docs/GUARANTEES.md).
//
// Threading: loop thread only, like the IoEngine it uses. `engine` and options.fs must
// outlive the Wal.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "proto/error.h"
#include "storage/fs.h"
#include "storage/io_engine.h"
#include "storage/wal_format.h"

namespace cardnode::storage {

struct WalOptions {
  std::string dir;  // DATA_DIR/wal
  uint64_t segment_bytes = kSegmentBytesDefault;
  uint64_t prealloc_bytes = kPreallocBytesDefault;
  uint64_t pending_bytes_max = 16ull << 20;  // accepted, not yet durable
  Fs* fs = nullptr;                          // nullptr: Fs::real()
  // false: an append starts a batch at once when none is in flight. true: appends wait for
  // flush(), which the owner calls once per loop turn after everything that may append in
  // it (the server: from a uv_prepare, after its scheduling turn), so a task's end and the
  // start it frees room for share one durable write.
  bool hold_appends = false;
};

struct ReplayStats {
  uint64_t records = 0;   // delivered to on_record (seq > after_seq)
  uint64_t skipped = 0;   // read but covered by the snapshot (seq <= after_seq)
  uint64_t segments = 0;  // segments of the log read (not counting dropped ones)
  uint64_t last_seq = 0;  // last record in the log (0: none)
  uint64_t sealed_seq = 0;
  uint64_t torn_tail_bytes = 0;  // the unacknowledged last write, dropped at open
  std::string torn_tail_at;      // "FILE at offset N" when torn_tail_bytes > 0
  // Segments after the end of the log holding no batch (a roll a crash cut short, or one
  // whose record was never written), removed at open.
  uint64_t segments_dropped = 0;
};

struct WalStats {
  uint64_t records_appended = 0;
  uint64_t bytes_appended = 0;  // framed records and batch headers, since open
  uint64_t batches = 0;
  uint64_t fdatasyncs = 0;
  uint64_t segments_created = 0;
  uint64_t segments_removed = 0;
};

using DurableCallback = std::function<void(Status)>;
// seq is the record's sequence number; an error stops open() with that error.
using ReplayFn = std::function<Status(uint64_t seq, std::string_view payload)>;

class Wal {
 public:
  // Creates `dir` if needed and replays every intact record with seq > after_seq in order
  // (records up to after_seq are covered by a snapshot; segments holding only such records
  // may be gone). Corruption (wal_format.h) fails the open with kCorruption naming the file
  // and offset. A torn tail is zeroed and the intact end sealed, both fdatasynced, before
  // appends continue after the last record. Plain blocking reads: runs before the loop.
  // Records are delivered as their batch checks out, so a failed open may already have
  // delivered some: the caller discards what it built. An empty `dir` starts at after_seq+1.
  [[nodiscard]] static Result<std::unique_ptr<Wal>> open(IoEngine& engine, WalOptions options,
                                                         uint64_t after_seq,
                                                         const ReplayFn& on_record,
                                                         ReplayStats* stats);
  // Drains first (see drain()), so every callback has run when it returns. Not from
  // inside a DurableCallback.
  ~Wal();
  Wal(const Wal&) = delete;
  Wal& operator=(const Wal&) = delete;

  // Makes room for one record of `payload_bytes`: checks the pending bound and
  // preallocates disk space, rolling to a new segment when the current one is full (a
  // blocking create + fdatasync + directory fsync, once per segment). Refuses as described
  // above; nothing is queued either way. After it succeeds, an append() of at most that
  // many bytes, before any other reserve() or append(), cannot be refused (it still fails
  // if the WAL failed in between). Any error of a roll is a refusal: the half-made segment
  // is removed and nothing acknowledged depends on it.
  [[nodiscard]] Status reserve(size_t payload_bytes);
  // Queues one record (reserving first if reserve() was not called for it). On success
  // on_durable runs exactly once, later, from IoEngine::reap() or wait(); on a refusal it
  // never runs.
  [[nodiscard]] Status append(std::string_view payload, DurableCallback on_durable);
  // Starts a batch of what is queued, if none is in flight (options.hold_appends).
  void flush();

  uint64_t next_sequence() const;     // the sequence number the next append gets
  uint64_t durable_sequence() const;  // every record up to this one is durable and sealed
  uint64_t pending_records() const;   // accepted, not yet durable
  bool failed() const;
  const WalStats& stats() const;

  // Blocks (engine.wait) until every accepted record is durable or failed, then makes the
  // seal durable too. For shutdown and tests.
  void drain();

  // The next record goes into a new segment (if the current one holds any). Called at a
  // snapshot's cut, so every record after the cut is in segments that begin after it: the
  // segments the snapshot covers are then never read, and damage in them cannot stop a
  // start that does not need them.
  void start_segment_at_next_record();

  // Removes every segment all of whose records are <= seq (a snapshot covers them),
  // never the segment appends go to, then fsyncs the directory. Returns how many went.
  // seq above durable_sequence() is kInvalidArgument (a snapshot covers durable records).
  [[nodiscard]] Result<uint32_t> remove_segments_through(uint64_t seq);

 private:
  struct Impl;
  explicit Wal(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Reads a WAL directory without changing it, for `cardnode fsck`: the same checks as
// open(), records with seq <= after_seq counted as skipped. A torn tail is reported in
// the stats, not as an error; corruption is kCorruption naming the file and offset.
[[nodiscard]] Result<ReplayStats> check_wal(const std::string& dir, uint64_t after_seq = 0);

struct SalvageReport {
  bool damaged = false;            // false: nothing was wrong, nothing changed
  std::string damage;              // what and where ("FILE at offset N: crc mismatch")
  uint64_t records_kept = 0;       // intact records before the damage
  uint64_t records_set_aside = 0;  // intact records found after it, now in aside_dir
  uint64_t bytes_set_aside = 0;
  std::string aside_dir;
};

// `cardnode fsck --salvage`: for an operator who accepts losing what follows the first
// corruption. Keeps every intact record before it (trimming the damaged batch to its
// intact records and sealing the new end), and moves everything after it into aside_dir —
// the damaged segment's tail as "<segment>.tail", later segments whole — never deleting a
// byte. A WAL without corruption is left alone (a torn tail is not corruption).
// The whole log is checked, from its first segment (no snapshot is assumed). aside_dir is
// created if needed and must be on the same file system (files are renamed into it); a
// file already there is never replaced (kInvalidArgument: choose a fresh aside_dir). The
// .tail holds the bytes from the damaged batch's start to the segment's last nonzero byte
// (the rest is preallocated zeros); a damaged seal is moved aside as "seal", and *.wal
// names that are not segments are moved aside whole.
// after_seq: the newest valid snapshot holds every record up to it (0: none). Segments it
// wholly covers are not read; damage in records it holds, inside a segment that also
// holds later ones, is not cut (kCorruption: cutting there would lose the later records).
[[nodiscard]] Result<SalvageReport> salvage_wal(const std::string& dir,
                                                const std::string& aside_dir, Fs& fs = Fs::real(),
                                                uint64_t after_seq = 0);

}  // namespace cardnode::storage
