#include "runtime/fsck.h"

#include <fcntl.h>
#include <sys/file.h>

#include <chrono>

#include "runtime/snapshot_codec.h"
#include "runtime/state.h"
#include "storage/posix.h"
#include "storage/snapshot.h"

namespace cardnode::runtime {

Result<FsckReport> fsck(const std::string& data_dir) {
  FsckReport report;
  auto snapshots = storage::list_snapshots(data_dir + "/snapshots");
  if (!snapshots) return std::unexpected(snapshots.error());
  report.snapshots = static_cast<uint32_t>(snapshots->size());
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
      report.snapshot_seq = read->covers_seq;
      report.snapshot_bytes = read->file_bytes;
      report.snapshot_jobs = state.cluster().jobs().size();
      break;
    }
    // A snapshot that passed its checksums yet does not decode is not ours to step around.
    if (decode_failed || read.error().code != Errc::kCorruption) {
      return std::unexpected(read.error());
    }
    report.snapshots_damaged.push_back(read.error().describe());
  }
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
  const auto now_s = std::chrono::duration_cast<std::chrono::seconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count();
  const std::string aside = data_dir + "/salvaged-" + std::to_string(now_s);
  return storage::salvage_wal(data_dir + "/wal", aside);
}

}  // namespace cardnode::runtime
