// Task output: DATA_DIR/logs/JOB/INDEX.out and INDEX.err (or under --log-dir).
// Each attempt starts its files afresh. Writes go through the IoEngine without
// fdatasync: logs are output, not state; losing the last bytes on power loss is accepted
// (docs/GUARANTEES.md). A task's log stops growing at log_bytes_max per stream; bytes
// beyond are dropped and counted (bytes_dropped), and a marker line is appended.
//
// Threading: loop thread only. `engine` must outlive the LogStore.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

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
  uint64_t pending_bytes_max = 8ull << 20;  // queued writes, all logs together
};

struct LogStats {
  uint64_t bytes_appended = 0;
  uint64_t files_removed = 0;  // of jobs retention dropped
  uint64_t bytes_dropped = 0;  // over log_bytes_max, or pending_bytes_max was full
};

class LogStore {
 public:
  LogStore(IoEngine& engine, LogStoreOptions options);
  // Writes out what is queued and waits (engine.wait) for every operation in flight.
  ~LogStore();

  // Creates (truncates) the file for a new attempt.
  [[nodiscard]] Status open(const LogKey& key);
  // Queues bytes for the end of the file. Never blocks; over a bound the bytes are dropped
  // and counted.
  void append(const LogKey& key, std::string_view bytes);
  // `done` runs once every append made so far for `key` is written; then the file is
  // closed for writing. `done` may run before close() returns if nothing is pending.
  void close(const LogKey& key, std::function<void(Status)> done);

  // Reads up to max_bytes (at most 1 MiB) from offset. Result is empty at end of file.
  // Unknown key with no file: kNotFound. `done` may run before read() returns.
  void read(const LogKey& key, uint64_t offset, uint32_t max_bytes,
            std::function<void(Result<std::string>)> done);

  // Retention dropped the job: its files go, a bounded number per remove_some() call (a
  // million-task array has two million of them), so the loop never stalls on it.
  void forget_job(uint64_t job_id);
  // Removes up to max_files files of forgotten jobs; true while more remain.
  bool remove_some(uint32_t max_files);

  const LogStats& stats() const;
  std::string path(const LogKey& key) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cardnode::storage
