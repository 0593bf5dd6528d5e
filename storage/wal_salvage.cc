// `cardnode fsck --salvage` (storage/wal.h): cut the log at its first corruption. What is
// kept stays in place (the damaged batch trimmed to its intact records); what follows is
// copied or renamed into aside_dir before anything in the WAL changes, so no byte is lost.
//
// Order, so that a crash during salvage leaves a state that salvage (or open) handles:
// aside copies made durable first, then later segments renamed aside (newest first), then
// the damaged segment trimmed, then the seal lowered to the last kept record.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

#include "storage/wal.h"
#include "storage/wal_scan.h"

namespace cardnode::storage {
namespace {

using wal_detail::Corruption;
using wal_detail::WalScan;

constexpr uint32_t kCopyChunkBytes = 1u << 20;

uint64_t file_bytes(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

class Salvage {
 public:
  Salvage(const std::string& dir, const std::string& aside_dir, Fs& fs, uint64_t after_seq)
      : dir_(dir), aside_(aside_dir), fs_(fs), after_seq_(after_seq) {
    report_.aside_dir = aside_dir;
  }

  Result<SalvageReport> run();

 private:
  Status move_foreign(const std::vector<std::string>& paths);
  Status repair(const WalScan& scan);
  Status cut_batch(const WalScan& scan, const Corruption& c);
  Status copy_tail(const wal_detail::SegmentFile& seg, uint64_t from, uint64_t to);
  Status trim(const wal_detail::SegmentFile& seg, const Corruption& c);
  Status move_segments_from(const WalScan& scan, size_t first);
  Status move_aside(const std::string& path, const std::string& name);
  Status write_seal(bool replace);
  Status make_aside_dir();
  Result<std::string> aside_path(const std::string& name);

  std::string dir_;
  std::string aside_;
  Fs& fs_;
  uint64_t after_seq_;  // a snapshot holds every record up to here
  SalvageReport report_;
  uint64_t last_kept_seq_ = 0;
  bool aside_ready_ = false;
};

Result<SalvageReport> Salvage::run() {
  auto listed = wal_detail::list_wal_dir(dir_);
  if (!listed) return std::unexpected(listed.error());
  if (auto st = move_foreign(listed->foreign); !st) return std::unexpected(st.error());
  // The log is checked from its first segment on, or from the first one the snapshot does
  // not wholly cover.
  uint64_t after_seq = listed->segments.empty() ? 0 : listed->segments.front().first_seq - 1;
  after_seq = std::max(after_seq, after_seq_);
  auto scan = wal_detail::scan_wal(dir_, after_seq, nullptr);
  if (!scan) return std::unexpected(scan.error());
  if (!scan->first_problem()) {
    if (report_.damaged) {
      if (auto st = fs_.sync_dir(dir_); !st) return std::unexpected(st.error());
    }
    return report_;
  }
  // Cutting below the snapshot would drop the records after it too: the log would then end
  // before the snapshot, and no start could use either.
  const wal_detail::Corruption& problem = *scan->first_problem();
  const bool before_snapshot = problem.kind == wal_detail::Corruption::Kind::kBatch ||
                               problem.kind == wal_detail::Corruption::Kind::kSegment;
  if (after_seq_ > 0 && before_snapshot && problem.seq <= after_seq_) {
    return fail(Errc::kCorruption,
                problem.message + "; the damage is in records the snapshot through " +
                    std::to_string(after_seq_) +
                    " already holds, inside a segment that also holds later records: salvage "
                    "cannot cut there without losing those");
  }
  if (!report_.damaged) report_.damage = problem.message;
  report_.damaged = true;
  if (auto st = repair(*scan); !st) return std::unexpected(st.error());
  return report_;
}

Status Salvage::move_foreign(const std::vector<std::string>& paths) {
  for (const std::string& path : paths) {
    if (!report_.damaged) report_.damage = path + " at offset 0: not a segment name";
    report_.damaged = true;
    std::string name = path.substr(path.rfind('/') + 1);
    if (auto st = move_aside(path, name); !st) return st;
  }
  return {};
}

Status Salvage::repair(const WalScan& scan) {
  last_kept_seq_ = scan.next_seq - 1;
  report_.records_kept = scan.stats.records + scan.stats.skipped;
  if (scan.log_problem) {
    const Corruption& c = *scan.log_problem;
    switch (c.kind) {
      case Corruption::Kind::kBatch:
        if (auto st = cut_batch(scan, c); !st) return st;
        break;
      case Corruption::Kind::kSegment:
        last_kept_seq_ = c.seq - 1;
        if (auto st = move_segments_from(scan, c.segment); !st) return st;
        break;
      case Corruption::Kind::kLogEnd: break;  // nothing after the end: the seal comes down
      case Corruption::Kind::kSeal:
      case Corruption::Kind::kForeignName: CARDNODE_CHECK(!"not a log problem after listing");
    }
  }
  if (auto st = write_seal(scan.seal_problem.has_value()); !st) return st;
  if (aside_ready_) return fs_.sync_dir(aside_);
  return {};
}

// Damage at c.at in a segment: its bytes from there on go aside as "<segment>.tail", later
// segments go aside whole, and the segment keeps the intact records of the damaged batch.
Status Salvage::cut_batch(const WalScan& scan, const Corruption& c) {
  const auto& seg = scan.dir.segments[c.segment];
  uint32_t kept = c.header_intact ? c.records_intact : 0;
  last_kept_seq_ = c.seq - 1 + kept;
  report_.records_kept += kept;
  if (auto st = copy_tail(seg, c.at, c.dirty_end); !st) return st;
  if (auto st = move_segments_from(scan, c.segment + 1); !st) return st;
  return trim(seg, c);
}

Status Salvage::copy_tail(const wal_detail::SegmentFile& seg, uint64_t from, uint64_t to) {
  auto path = aside_path(seg.name + ".tail");
  if (!path) return std::unexpected(path.error());
  auto src = wal_detail::FileWindow::open(seg.path);
  if (!src) return std::unexpected(src.error());
  auto out = fs_.open(*path, O_WRONLY | O_CREAT | O_EXCL);
  if (!out) return std::unexpected(out.error());
  // Each pass copies one nonempty chunk, or returns.
  for (uint64_t at = from; at < to;) {
    auto chunk = src->get(at, std::min<uint64_t>(kCopyChunkBytes, to - at));
    if (!chunk) return std::unexpected(chunk.error());
    if (chunk->empty()) break;  // the file ends before `to`: nothing more to keep
    if (auto st = fs_.write_at(out->get(), *chunk, at - from, *path); !st) return st;
    at += chunk->size();
  }
  if (auto st = fs_.sync(out->get(), *path); !st) return st;
  report_.bytes_set_aside += file_bytes(*path);
  auto found = wal_detail::count_intact_records(*path, 0);
  if (!found) return std::unexpected(found.error());
  report_.records_set_aside += *found;
  return fs_.sync_dir(aside_);
}

// The damaged batch keeps its intact records under a rewritten header; everything after
// them in the segment becomes zeros (its original bytes are in the .tail).
Status Salvage::trim(const wal_detail::SegmentFile& seg, const Corruption& c) {
  auto fd = fs_.open(seg.path, O_RDWR);
  if (!fd) return std::unexpected(fd.error());
  uint64_t kept_end = c.at;
  if (c.header_intact && c.records_intact > 0) {
    auto body = static_cast<uint32_t>(c.records_end - c.at - kBatchHeaderBytes);
    auto header = wal_detail::encode_batch_header(c.records_intact, c.seq, body);
    if (auto st = fs_.write_at(fd->get(), {header.data(), header.size()}, c.at, seg.path); !st) {
      return st;
    }
    kept_end = c.records_end;
  }
  const std::string zeros(kCopyChunkBytes, '\0');
  for (uint64_t at = kept_end; at < c.dirty_end;) {  // at grows by a chunk per pass
    auto n = static_cast<size_t>(std::min<uint64_t>(kCopyChunkBytes, c.dirty_end - at));
    auto st = fs_.write_at(fd->get(), std::string_view(zeros).substr(0, n), at, seg.path);
    if (!st) return st;
    at += n;
  }
  return fs_.sync(fd->get(), seg.path);
}

Status Salvage::move_segments_from(const WalScan& scan, size_t first) {
  const auto& segments = scan.dir.segments;
  // Newest first: a crash midway leaves the log without holes.
  for (size_t i = segments.size(); i > first; --i) {
    const auto& seg = segments[i - 1];
    if (auto st = move_aside(seg.path, seg.name); !st) return st;
  }
  return fs_.sync_dir(dir_);
}

Status Salvage::move_aside(const std::string& path, const std::string& name) {
  auto to = aside_path(name);
  if (!to) return std::unexpected(to.error());
  if (auto st = fs_.rename(path, *to); !st) return st;
  report_.bytes_set_aside += file_bytes(*to);
  if (name.ends_with(".wal")) {
    auto found = wal_detail::count_intact_records(*to, 0);
    if (!found) return std::unexpected(found.error());
    report_.records_set_aside += *found;
  }
  return fs_.sync_dir(aside_);
}

// The seal names the last kept record. A damaged one goes aside first.
Status Salvage::write_seal(bool replace) {
  std::string path = dir_ + "/" + kSealFileName;
  if (replace && file_bytes(path) > 0) {
    if (auto st = move_aside(path, kSealFileName); !st) return st;
  }
  auto fd = fs_.open(path, O_RDWR | O_CREAT);
  if (!fd) return std::unexpected(fd.error());
  auto seal = wal_detail::encode_seal(last_kept_seq_);
  if (auto st = fs_.write_at(fd->get(), {seal.data(), seal.size()}, 0, path); !st) return st;
  if (auto st = fs_.sync(fd->get(), path); !st) return st;
  return fs_.sync_dir(dir_);
}

Status Salvage::make_aside_dir() {
  if (aside_ready_) return {};
  bool existed = ::access(aside_.c_str(), F_OK) == 0;
  if (auto st = make_dirs(aside_); !st) return st;
  aside_ready_ = true;
  if (existed) return {};
  return fs_.sync_dir(wal_detail::parent_dir(aside_));
}

// Where `name` goes in aside_dir; never over an existing file.
Result<std::string> Salvage::aside_path(const std::string& name) {
  if (auto st = make_aside_dir(); !st) return std::unexpected(st.error());
  std::string path = aside_ + "/" + name;
  if (::access(path.c_str(), F_OK) == 0) {
    return fail(Errc::kInvalidArgument,
                path + " already exists: salvage never replaces a file, choose a fresh aside dir");
  }
  return path;
}

}  // namespace

Result<SalvageReport> salvage_wal(const std::string& dir, const std::string& aside_dir, Fs& fs,
                                  uint64_t after_seq) {
  Salvage salvage(dir, aside_dir, fs, after_seq);
  return salvage.run();
}

}  // namespace cardnode::storage
