// Snapshots: the whole durable state at one WAL sequence number, so the WAL before it can
// go and start-up reads the snapshot plus the records after it. Storage sees a snapshot
// as an ordered run of opaque chunks (runtime/ decides what a chunk holds).
//
// DATA_DIR/snapshots/NNNNNNNNNNNNNNNNNNNN.snap, named by covers_seq (the last WAL record it
// includes), 20 digits. Integers little-endian, crc32 is zlib's:
//
//   file   := header | chunk* | end
//   header (24) := "CNSNAP01" | covers_seq u64 | crc32 of the 16 bytes before it | 0 u32
//   chunk  := length u32 (1..kSnapshotChunkBytesMax) | crc32 of (length bytes | payload)
//             | payload
//   end (24) := 0 u32 | chunks u64 | payload_bytes u64 | crc32 of (covers_seq | chunks
//               | payload_bytes)
//
// Written as NNN.snap.tmp through the IoEngine, fdatasynced, renamed to NNN.snap and the
// directory fsynced (both through Fs): a crash leaves either no new snapshot or a whole
// one. A file that fails any check (crc, end marker, trailing bytes, name) is damaged;
// readers fall back to an older snapshot.
//
// Threading: loop thread only. `engine` and `fs` must outlive the writer.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "proto/error.h"
#include "storage/fs.h"
#include "storage/io_engine.h"

namespace cardnode::storage {

inline constexpr uint32_t kSnapshotChunkBytesMax = 4u << 20;
inline constexpr uint64_t kSnapshotFileBytesMax = 4ull << 30;  // a bigger file is not ours

struct SnapshotInfo {
  uint64_t covers_seq = 0;
  std::string path;
  uint64_t file_bytes = 0;
  uint64_t chunks = 0;
};

class SnapshotWriter {
 public:
  // Creates DIR/NNN.snap.tmp (replacing a stale one) and writes its header.
  [[nodiscard]] static Result<std::unique_ptr<SnapshotWriter>> begin(
      IoEngine& engine, Fs& fs, const std::string& dir, uint64_t covers_seq,
      uint64_t buffer_bytes_max = 4ull << 20);
  // Abandons an unfinished snapshot: waits (engine.wait) for its writes in flight and
  // removes the .tmp file. Not from inside one of its callbacks.
  ~SnapshotWriter();
  SnapshotWriter(const SnapshotWriter&) = delete;
  SnapshotWriter& operator=(const SnapshotWriter&) = delete;

  // Queues one chunk; bytes go out in large engine writes. Fails for an empty or oversize
  // chunk, after a write error (every later call fails the same way), or with
  // kResourceExhausted while busy().
  [[nodiscard]] Status add(std::string_view chunk);
  // More than buffer_bytes_max queued or in flight: the producer waits for the engine.
  bool busy() const;
  // Writes the end marker, fdatasyncs, renames to NNN.snap and fsyncs the directory, then
  // calls done (from a later reap()). On any failure the .tmp file is removed and done gets
  // the error; nothing that was durable changed.
  void finish(std::function<void(Status)> done);

  uint64_t covers_seq() const;
  uint64_t bytes_written() const;

 private:
  struct Impl;
  explicit SnapshotWriter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Snapshots in `dir`, newest (highest covers_seq) first, by name only: not verified.
// *.tmp files are ignored; a missing dir is an empty list; any other file name is
// kCorruption.
[[nodiscard]] Result<std::vector<SnapshotInfo>> list_snapshots(const std::string& dir);

// Verifies the whole file first, then hands each chunk to on_chunk in order, so a
// damaged file delivers nothing. Damage is kCorruption naming the file and offset; an
// error from on_chunk is returned as it is.
[[nodiscard]] Result<SnapshotInfo> read_snapshot(
    const std::string& path, const std::function<Status(std::string_view chunk)>& on_chunk);

// Verification alone, for `cardnode fsck`.
[[nodiscard]] Result<SnapshotInfo> check_snapshot(const std::string& path);

// Removes every snapshot with covers_seq < keep_from_seq, and stale .tmp files, then
// fsyncs the directory. Returns how many snapshots went.
[[nodiscard]] Result<uint32_t> remove_snapshots_before(Fs& fs, const std::string& dir,
                                                       uint64_t keep_from_seq);

}  // namespace cardnode::storage
