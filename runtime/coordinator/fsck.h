// `cardnode fsck DATA_DIR [--salvage]`: checks a data dir's durable state without
// changing it, and — only when asked — salvages a damaged WAL.
//
// The check reads every snapshot (checksums), decodes the newest whole one into a State
// (so a snapshot that passes its checksums but describes no state we could have made is
// reported too), then checks the WAL after it with the same rules the server starts with
// (storage/wal_format.h): framing, checksums, sequence, the seal. It does not apply the
// records (a record that passes its checksums but does not apply is found only by a start).
// A torn tail is reported but is not an error: it is the last write, never acknowledged,
// and the next start drops it. On a running server's data dir the check may race with
// compaction and report a segment missing; stop the server for a conclusive answer.
//
// Threading: plain blocking calls; for the CLI.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "proto/error.h"
#include "storage/wal.h"

namespace cardnode::runtime {

struct FsckReport {
  uint32_t snapshots = 0;
  uint64_t snapshot_seq = 0;  // newest whole snapshot (0: none)
  uint64_t snapshot_bytes = 0;
  uint64_t snapshot_jobs = 0;
  std::vector<std::string> snapshots_damaged;  // older ones stand in; not fatal
  storage::ReplayStats wal;
};

// kCorruption (file and offset in the message) when the server would refuse to start.
[[nodiscard]] Result<FsckReport> fsck(const std::string& data_dir);

// Takes the data dir's lock (no server may run), keeps every WAL record before the first
// corruption and moves the rest to DATA_DIR/salvaged-<time>/ (storage/wal.h salvage_wal).
[[nodiscard]] Result<storage::SalvageReport> salvage(const std::string& data_dir);

}  // namespace cardnode::runtime
