// WAL on-disk format. DATA_DIR/wal/ holds segments named by their first sequence
// number, 20 decimal digits: 00000000000000000001.wal. A segment is a run of records:
//
//   record := length (4 bytes, LE) | crc32 (4 bytes, LE) | payload (length bytes)
//   crc32  := zlib crc32 over the 4 length bytes followed by the payload
//
// payload is one serialized pb::WalRecord (storage does not look inside). Segments are
// preallocated with fallocate, so the bytes after the last record are zeros: a length
// of 0 ends the segment, and every byte after it must be zero too. A record whose length exceeds
// kRecordBytesMax, runs past the end of the file, or fails its crc ends replay: in the newest
// segment that is a torn tail (truncated and overwritten), anywhere else it is corruption (the
// server refuses to start and `cardnode fsck` reports it).
#pragma once

#include <cstdint>

namespace cardnode::storage {

inline constexpr uint32_t kWalHeaderBytes = 8;
inline constexpr uint32_t kRecordBytesMax = 1u << 20;          // 1 MiB
inline constexpr uint64_t kSegmentBytesDefault = 64ull << 20;  // roll after 64 MiB
inline constexpr uint64_t kPreallocBytesDefault = 4ull << 20;  // fallocate step

}  // namespace cardnode::storage
