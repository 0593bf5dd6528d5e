// Task output: DATA_DIR/logs/JOB/INDEX.out and INDEX.err (or under --log-dir).
// Each attempt starts its files afresh. Writes go through the IoEngine without
// fdatasync: logs are output, not state; losing the last bytes on power loss is accepted
// (docs/GUARANTEES.md). A task's log stops growing at log_bytes_max per stream; bytes
// beyond are dropped and counted (bytes_dropped), and a marker line is appended.
//
// No output is lost silently. Bytes of an open log dropped for any other reason (the
// shared write queue was full, a write failed) are counted and marked in that log: one
// line per contiguous run of lost bytes, written where they would have been, before the
// next bytes kept or at close:
//   "\n[cardnode: N bytes of output dropped: log write queue full]\n"
//   "\n[cardnode: N bytes of output dropped: log write failed: <strerror>]\n"
// A failed write loses that log's queue (the write and what was queued behind it); the
// log stays writable, so a disk that was full takes the marker and later output once it
// has space again. Marker lines count against log_bytes_max like output, so a file
// never exceeds it; one that does not fit truncates the log there instead (the
// truncation marker stands for the loss). Bytes that have no file to be marked in are
// only counted: appends to a log not open or closing, the queue of an attempt replaced
// by open(), and a loss while closing after close's one attempt at its marker.
//
// Backpressure (bounds): the queue of bytes accepted but not yet written, all logs
// together, is bounded by pending_bytes_max. has_room() says whether it is below that;
// when_room() tells a producer when it has drained to half. A producer that reads one
// buffer (at most kAppendGrantBytes) per append and stops reading once has_room() is
// false after its append, until when_room() calls it, never loses a byte: each open log
// may place one such buffer beyond pending_bytes_max after its producer last saw room.
// So the queue holds at most pending_bytes_max + kAppendGrantBytes per open log, plus
// marker lines (tiny: they may pass the bound); a producer that checks has_room() right
// before each read (libuv: in the alloc callback) keeps the whole overshoot to one
// buffer. Whatever arrives beyond that is dropped and marked. The queue drains through
// at most 16 engine writes in flight; a write the engine refuses because its queue is
// full (of others' operations) is retried at the store's next completion or public
// call, so with none of the store's own writes in flight it waits for the next append,
// open, close, read or when_room.
//
// Threading: loop thread only. `engine` must outlive the LogStore. Callbacks (close's
// `done`, read's `done`, when_room's `ready`) are never called from inside append().
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "proto/error.h"
#include "storage/io_engine.h"

namespace cardnode::storage {

enum class Stream : uint8_t { kStdout = 0, kStderr = 1 };

struct LogKey {
  uint64_t job_id = 0;
  uint32_t index = 0;
  Stream stream = Stream::kStdout;
  bool operator==(const LogKey&) const = default;
};

struct LogStoreOptions {
  std::string dir;                          // DATA_DIR/logs
  uint64_t log_bytes_max = 64ull << 20;     // per task and stream
  uint64_t pending_bytes_max = 8ull << 20;  // queued writes, all logs together (see has_room)
};

struct LogStats {
  uint64_t bytes_appended = 0;
  uint64_t files_removed = 0;  // of jobs retention dropped
  // Over log_bytes_max, pending_bytes_max was full, a write failed, no log open.
  uint64_t bytes_dropped = 0;
  uint64_t drop_marks = 0;  // drop marker lines written (not the truncation marker)
};

class LogStore {
 public:
  // One pipe read: what a log may place beyond pending_bytes_max in an append made after
  // its producer last saw room. A producer's read buffer must not be larger (the
  // executor's is 64 KiB).
  static constexpr uint64_t kAppendGrantBytes = uint64_t{64} << 10;

  LogStore(IoEngine& engine, LogStoreOptions options);
  // Writes out what is queued and waits (engine.wait) for every operation in flight.
  ~LogStore();

  // Starts a new attempt's log: the previous attempt's file is removed at once, and the
  // new file (and the job's directory) is created by the first write: a task that prints
  // nothing leaves no file, a job none of whose tasks print leaves no directory, and
  // read() of either is empty. An error making them loses that output, counted and
  // marked as far as a file to mark it in exists (above).
  [[nodiscard]] Status open(const LogKey& key);
  // Queues bytes for the end of the file. Never blocks and never calls back. Takes what
  // fits (see the bounds above); the rest is dropped, counted and marked.
  void append(const LogKey& key, std::string_view bytes);
  // `done` runs once every append made so far for `key` is written (and a marker for any
  // loss at the end of the log: one attempt); then the file is closed for writing. The
  // status is the first write error of the attempt, if any, even when later writes and
  // the marker of the loss went through. `done` may run before close() returns if
  // nothing is pending. A when_room() waiter of the key is dropped unrun.
  void close(const LogKey& key, std::function<void(Status)> done);

  // True while the write queue is below pending_bytes_max: a producer may read again.
  // Synchronous, O(1).
  bool has_room() const;
  // Calls `ready` once when the producer of `key` may read again:
  //  - has_room() now: before when_room() returns (synchronously);
  //  - else once the queue has drained to pending_bytes_max / 2: from inside the engine's
  //    reap()/wait() (one of the store's completions), or, if it drained without one (a
  //    log reopened, a queue lost to a write the engine refused at submission), at the
  //    end of the next open(), close() or when_room() call. Never from inside append().
  // The waiter renews the log's kAppendGrantBytes, so the read it resumes is not cut
  // even if other resumed producers fill the queue first. `ready` may call any LogStore
  // function, when_room() included (it then waits for the next drain unless there is
  // room). At most one waiter per log, so at most as many as open logs. Errors (`ready`
  // is dropped unrun): kNotFound, the log is not open; kInvalidArgument, it is closing,
  // or a waiter of it has not run yet (that one still runs), or `ready` is empty. A
  // waiter is dropped unrun when its log is closed or reopened, and by ~LogStore.
  [[nodiscard]] Status when_room(const LogKey& key, std::function<void()> ready);

  // Reads up to max_bytes (at most 1 MiB) from offset. Result is empty at end of file.
  // Unknown key with no file: kNotFound. `done` may run before read() returns.
  void read(const LogKey& key, uint64_t offset, uint32_t max_bytes,
            std::function<void(Result<std::string>)> done);
  // As read(), of the last max_bytes (at most 1 MiB) the file holds now: a log's tail.
  void read_tail(const LogKey& key, uint32_t max_bytes,
                 std::function<void(Result<std::string>)> done);

  // Retention dropped the job: its files go, a bounded number per remove_some() call (a
  // million-task array has two million of them), so the loop never stalls on it.
  void forget_job(uint64_t job_id);
  // Removes up to max_files files of forgotten jobs; true while more remain.
  bool remove_some(uint32_t max_files);

  const LogStats& stats() const;
  std::string path(const LogKey& key) const;

 private:
  void read_at(const LogKey& key, uint64_t offset, bool tail, uint32_t max_bytes,
               std::function<void(Result<std::string>)> done);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cardnode::storage
