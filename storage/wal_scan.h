// Private to storage/: the reading side of the WAL (wal_format.h), shared by Wal::open
// (replay, then repair), check_wal (read only) and salvage_wal. scan_wal() reads a WAL
// directory once, front to back, and says what it found — the intact log, a torn tail to
// drop, roll leftovers to remove, or the first corruption — without changing anything.
// The encoders for what the writer puts on disk live here too, next to their parsers.
//
// Memory: a segment is read through a window of at most one batch (kBatchHeaderBytes +
// kBatchBytesMax bytes), never whole: segments are 64 MiB by default and the boards have
// little RAM.
//
// Threading: none; plain blocking reads (storage/posix.h).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "proto/error.h"
#include "storage/posix.h"
#include "storage/wal.h"
#include "storage/wal_format.h"

namespace cardnode::storage::wal_detail {

// --- what the writer puts on disk -------------------------------------------------------

// The directory holding `path` ("a/wal" and "a/wal/" give "a"; "wal" gives ".").
std::string parent_dir(const std::string& path);

std::string segment_name(uint64_t first_seq);  // "00000000000000000001.wal"
std::string encode_segment_header(uint64_t first_seq);
std::array<char, kBatchHeaderBytes> encode_batch_header(uint32_t count, uint64_t first_seq,
                                                        uint32_t body_bytes);
void append_record(std::string& out, std::string_view payload);  // length | crc | payload
std::array<char, kSealBytes> encode_seal(uint64_t sealed_seq);

// --- reading ----------------------------------------------------------------------------

inline constexpr uint32_t kReadChunkBytes = 1u << 20;
// A WAL directory holding more entries than this is not one we wrote.
inline constexpr uint32_t kDirEntriesMax = 1u << 16;

// Bounded positional reads of one file whose size is taken once, at open.
class FileWindow {
 public:
  [[nodiscard]] static Result<FileWindow> open(const std::string& path);
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // The buffered bytes from `offset` on: at least min(len, size - offset) of them (more when
  // already buffered), empty at or past the end. Valid until the next call.
  [[nodiscard]] Result<std::string_view> view(uint64_t offset, uint64_t len);
  // Exactly [offset, offset + len), clipped to the end of the file.
  [[nodiscard]] Result<std::string_view> get(uint64_t offset, uint64_t len);
  // The first / last nonzero byte in [from, size); nullopt when they are all 0.
  [[nodiscard]] Result<std::optional<uint64_t>> first_nonzero(uint64_t from);
  [[nodiscard]] Result<std::optional<uint64_t>> last_nonzero(uint64_t from);

 private:
  UniqueFd fd_;
  std::string path_;
  uint64_t size_ = 0;
  std::string buf_;
  uint64_t buf_offset_ = 0;
};

struct SegmentFile {
  uint64_t first_seq = 0;  // from the name
  std::string name;
  std::string path;
};

struct WalDir {
  std::vector<SegmentFile> segments;  // sorted by first_seq
  std::vector<std::string> foreign;   // *.wal names that are not 20 digits (paths)
};

// Names ending in ".wal" are segments and must be exactly 20 digits (> 0) + ".wal"; the
// seal and every other name (an operator's notes, salvage's .tail files, lost+found) are
// not the log's and are left alone.
[[nodiscard]] Result<WalDir> list_wal_dir(const std::string& dir);

// Where a scan found the log broken, with what salvage needs to cut it there.
struct Corruption {
  enum class Kind : uint8_t {
    kSeal,         // the seal file is damaged, or missing while segments exist
    kForeignName,  // a *.wal file that is not a segment
    kBatch,        // damage at `at` inside segment `segment`, which is kept up to there
    kSegment,      // segment `segment` is unusable from its first byte (header, sequence)
    kLogEnd,       // the log ends before the seal (or the snapshot): nothing after to cut
  };
  Kind kind = Kind::kBatch;
  std::string message;          // "FILE at offset N: what (why it is not a torn write)"
  size_t segment = 0;           // index into WalScan::dir.segments (kBatch, kSegment)
  uint64_t at = 0;              // D: the damaged batch's start (kBatch)
  uint64_t seq = 0;             // the first record lost at `at` (kBatch, kSegment)
  bool header_intact = false;   // kBatch: the batch header at `at` is whole and in sequence
  uint32_t records_intact = 0;  // kBatch: leading records of that batch that check out
  uint64_t records_end = 0;     // kBatch: just past them
  uint64_t dirty_end = 0;       // kBatch: just past the segment's last nonzero byte
};

struct TornTail {
  size_t segment = 0;
  uint64_t at = 0;         // D
  uint64_t dirty_end = 0;  // just past the last nonzero byte: [at, dirty_end) is zeroed
};

struct WalScan {
  WalDir dir;
  bool seal_present = false;  // a seal file with 24 bytes in it
  ReplayStats stats;
  uint64_t next_seq = 1;  // where appends continue
  // The segment appends continue in and the offset they start at; nullopt when none is
  // left (empty directory, or every needed segment is a roll leftover).
  std::optional<size_t> append_segment;
  uint64_t append_offset = 0;
  std::optional<TornTail> torn;
  std::vector<size_t> leftovers;  // batchless segments after the end of the log
  // open() and check_wal() fail on the first of these; salvage repairs both.
  std::optional<Corruption> seal_problem;
  std::optional<Corruption> log_problem;

  const std::optional<Corruption>& first_problem() const {
    return seal_problem ? seal_problem : log_problem;
  }
};

// Reads `dir` (see wal_format.h for the rules): replays records with seq > after_seq
// through on_record (when not null) as soon as their batch checks out — so a failed open
// may have delivered some — and classifies the first damage. Errors are I/O failures and
// on_record's own; damage is reported in the WalScan, not as an error.
[[nodiscard]] Result<WalScan> scan_wal(const std::string& dir, uint64_t after_seq,
                                       const ReplayFn* on_record);

// Records in whole, intact batches found anywhere in [from, end of file) of `path`,
// searching byte by byte for batch headers: what salvage can tell about bytes it set aside.
[[nodiscard]] Result<uint64_t> count_intact_records(const std::string& path, uint64_t from);

}  // namespace cardnode::storage::wal_detail
