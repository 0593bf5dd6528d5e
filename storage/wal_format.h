// WAL on-disk format, version 2. DATA_DIR/wal/ holds segments named by the sequence
// number of their first record, 20 decimal digits (00000000000000000001.wal), and one
// small file, `seal`, naming the last record ever acknowledged. Any other *.wal name is
// corruption; names not ending in .wal are not the log's and are left alone. Integers are
// little-endian; crc32 is zlib's.
//
//   segment := segment_header | batch* | zeros          (preallocated: the rest reads as 0)
//   segment_header (32) := "CNODEWAL" | version u32 = 2 | 0 u32 | first_seq u64 | 0 u32
//                          | crc32 of the 28 bytes before it
//   batch := batch_header | record{count}              (one group-commit write)
//   batch_header (24) := "CNWB" | count u32 >= 1 | first_seq u64 | body_bytes u32
//                        | crc32 of the 20 bytes before it
//   record := length u32 (1..kRecordBytesMax) | crc32 of (length bytes | payload) | payload
//   seal (24) := "CNWSEAL1" | sealed_seq u64 | crc32 of the 16 bytes before it | 0 u32
//
// Records are numbered consecutively from 1; a batch holds first_seq .. first_seq+count-1,
// and body_bytes is the sum of its framed records. payload is one serialized pb::WalRecord
// (storage does not look inside).
//
// How the WAL writes (storage/wal.h), and so what a crash can leave behind:
//   - One batch in flight at a time, written with RWF_DSYNC (the write and the fdatasync
//     of its bytes as one operation; IoEngine::write_durably); batch k+1 is written only
//     after batch k's write completed, so after it was durable. A batch is at most
//     kBatchBytesMax bytes of records. ("fdatasynced" below means this.)
//   - After batch k is durable, `seal` is overwritten with k's last sequence number, and
//     only then are k's records acknowledged. The seal is fdatasynced only by drain() and
//     when a segment is finished (before its fd closes), not per batch: after a power loss
//     it may be older than the last acknowledgement, never newer than what is durable.
//   - `seal` is created, written and fsynced with its directory before the first segment;
//     an empty one (a first open that died there) counts as absent, a missing one while
//     segments exist is corruption. open() leaves it naming the last record replayed.
//   - A segment is created, its header written and fdatasynced and the directory fsynced,
//     before any batch goes into it. Its blocks are preallocated, so unwritten bytes are 0.
//
// So a torn write can only be the newest batch, never acknowledged, and lies within
// kBatchHeaderBytes + kBatchBytesMax bytes from where that batch starts. Reading a
// segment, let D be the first offset that is neither the start of an intact batch with
// the expected first_seq nor the start of all-zero bytes to the end of the file. The
// bytes from D on are a TORN TAIL, dropped (zeroed) at the next open, when all hold:
//   (a) D is in the last segment holding any batch (later segments, if any, hold only a
//       header, or a torn header and zeros, from a roll that never got a batch; open()
//       removes them);
//   (b) the first record lost at D comes after the seal: expected_seq > sealed_seq;
//   (c) no batch header with a first_seq above expected_seq, and whose first record checks
//       out, begins anywhere after D in the segment (a later batch is proof that the one at
//       D was fdatasynced) — searched from E when the header at D is intact, since the
//       bytes before E are that batch's payload, which a client may fill with look-alikes;
//   (d) every byte from E on is 0, where E = D + kBatchHeaderBytes + body_bytes when the
//       batch header at D is intact, else D + kBatchHeaderBytes + kBatchBytesMax.
// Anything else is CORRUPTION: damage in an older segment, in an acknowledged (sealed)
// batch, before intact later batches, a first_seq that breaks the sequence (a gap or an
// overlap: an intact batch header at D that is out of sequence or out of range is never
// torn, whatever (a)-(d) say, since a crash cannot write a whole header wrong), a missing
// segment, a damaged or missing seal, or a log that ends before the seal (the newest
// segment lost or truncated). Corruption stops the server with one line naming the file and
// offset; `cardnode fsck` reports it and exits 1; `cardnode fsck --salvage` keeps every
// record before it and moves the rest aside.
#pragma once

#include <cstdint>

namespace cardnode::storage {

inline constexpr char kSegmentMagic[8] = {'C', 'N', 'O', 'D', 'E', 'W', 'A', 'L'};
inline constexpr uint32_t kWalFormatVersion = 2;
inline constexpr uint32_t kSegmentHeaderBytes = 32;
inline constexpr char kBatchMagic[4] = {'C', 'N', 'W', 'B'};
inline constexpr uint32_t kBatchHeaderBytes = 24;
inline constexpr uint32_t kRecordHeaderBytes = 8;
inline constexpr char kSealMagic[8] = {'C', 'N', 'W', 'S', 'E', 'A', 'L', '1'};
inline constexpr uint32_t kSealBytes = 24;
inline constexpr const char* kSealFileName = "seal";

inline constexpr uint32_t kRecordBytesMax = 1u << 20;          // payload, 1 MiB
inline constexpr uint32_t kBatchBytesMax = 8u << 20;           // records in one batch
inline constexpr uint64_t kSegmentBytesDefault = 64ull << 20;  // roll after 64 MiB
inline constexpr uint64_t kPreallocBytesDefault = 4ull << 20;  // fallocate step

static_assert(kRecordHeaderBytes + kRecordBytesMax <= kBatchBytesMax,
              "a batch must hold at least one maximal record");

}  // namespace cardnode::storage
