#include "runtime/coordinator/fsck.h"

#include <fcntl.h>
#include <sys/file.h>

#include <chrono>

#include "runtime/coordinator/snapshot_codec.h"
#include "runtime/coordinator/state.h"
#include "storage/fs.h"
#include "storage/posix.h"
#include "storage/snapshot.h"

namespace cardnode::runtime {

namespace {

struct SnapshotCheck {
  uint32_t snapshots = 0;
  uint64_t seq = 0;  // newest whole one (0: none)
  uint64_t bytes = 0;
  uint64_t jobs = 0;
  std::vector<std::string> damaged;
};

// The newest snapshot whose checksums pass, decoded into a State (a snapshot that passes
// its checksums yet does not decode is an error: not damage an older one can stand in for).
Result<SnapshotCheck> newest_snapshot(const std::string& data_dir) {
  SnapshotCheck out;
  auto snapshots = storage::list_snapshots(data_dir + "/snapshots");
  if (!snapshots) return std::unexpected(snapshots.error());
  out.snapshots = static_cast<uint32_t>(snapshots->size());
  for (const storage::SnapshotInfo& info : *snapshots) {
    State state;
    SnapshotLoader loader(state);
    bool decode_failed = false;
    auto read = storage::read_snapshot(info.path, [&](std::string_view c) {
      auto st = loader.feed(c);
      decode_failed = !st.has_value();
      return st;
    });
    if (read) {
      if (auto st = loader.finish(); !st) return std::unexpected(st.error());
      out.seq = read->covers_seq;
      out.bytes = read->file_bytes;
      out.jobs = state.cluster().jobs().size();
      return out;
    }
    if (decode_failed || read.error().code != Errc::kCorruption) {
      return std::unexpected(read.error());
    }
    out.damaged.push_back(read.error().describe());
  }
  return out;
}

}  // namespace

Result<FsckReport> fsck(const std::string& data_dir) {
  auto snapshot = newest_snapshot(data_dir);
  if (!snapshot) return std::unexpected(snapshot.error());
  FsckReport report;
  report.snapshots = snapshot->snapshots;
  report.snapshot_seq = snapshot->seq;
  report.snapshot_bytes = snapshot->bytes;
  report.snapshot_jobs = snapshot->jobs;
  report.snapshots_damaged = snapshot->damaged;
  auto wal = storage::check_wal(data_dir + "/wal", report.snapshot_seq);
  if (!wal) return std::unexpected(wal.error());
  report.wal = *wal;
  return report;
}

Result<storage::SalvageReport> salvage(const std::string& data_dir) {
  auto lock = storage::open_fd(data_dir + "/lock", O_RDWR | O_CREAT, 0600);
  if (!lock) return std::unexpected(lock.error());
  if (::flock(lock->get(), LOCK_EX | LOCK_NB) != 0) {
    return fail(Errc::kUnavailable, "a cardnode server is using " + data_dir + "; stop it first");
  }
  auto snapshot = newest_snapshot(data_dir);
  if (!snapshot) return std::unexpected(snapshot.error());
  const auto now_s = std::chrono::duration_cast<std::chrono::seconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count();
  const std::string aside = data_dir + "/salvaged-" + std::to_string(now_s);
  return storage::salvage_wal(data_dir + "/wal", aside, storage::Fs::real(), snapshot->seq);
}

}  // namespace cardnode::runtime
