// Fs: the file-system calls of storage/ that change what survives a crash but are not
// the data path — creating and preallocating files, synchronous header writes, fsyncs,
// renames and removals. The data path (WAL batches, snapshot bytes) goes through the
// IoEngine; these go through Fs, so that a test can swap in a FaultyFs
// (storage/faulty_fs.h) that counts every call and stops at any one of them, as a crash
// would (LevelDB's Env, cut down to what we use). Reads are not crash points and use
// storage/posix.h directly.
//
// Every call is synchronous and blocking. Callers use it for rare operations (a segment
// roll, a snapshot rename), never per record.
//
// Threading: Fs::real() is stateless and safe anywhere; a FaultyFs is loop-thread only.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "proto/error.h"
#include "storage/posix.h"

namespace cardnode::storage {

class Fs {
 public:
  virtual ~Fs() = default;

  // The real file system. Lives for the whole process.
  static Fs& real();

  // open(2) with O_CLOEXEC added. With O_CREAT, the new name is not durable until
  // sync_dir() of its directory.
  [[nodiscard]] virtual Result<UniqueFd> open(const std::string& path, int flags,
                                              uint32_t mode = 0644) = 0;
  // fallocate(fd, 0, offset, len): reserves blocks, so a later write there cannot hit
  // ENOSPC. A file system without it fails with sys_errno EOPNOTSUPP.
  [[nodiscard]] virtual Status allocate(int fd, uint64_t offset, uint64_t len,
                                        const std::string& path) = 0;
  // A whole positional write, done before it returns (page cache; not durable until sync).
  [[nodiscard]] virtual Status write_at(int fd, std::string_view data, uint64_t offset,
                                        const std::string& path) = 0;
  [[nodiscard]] virtual Status truncate(int fd, uint64_t len, const std::string& path) = 0;
  // fdatasync(2). A failure is final for this file (never retried: see storage/wal.h).
  [[nodiscard]] virtual Status sync(int fd, const std::string& path) = 0;
  // fsync(2) of a directory: makes creates, renames and removals in it durable.
  [[nodiscard]] virtual Status sync_dir(const std::string& dir) = 0;
  // rename(2): atomic; durable after sync_dir() of the directories involved.
  [[nodiscard]] virtual Status rename(const std::string& from, const std::string& to) = 0;
  // unlink(2); durable after sync_dir().
  [[nodiscard]] virtual Status remove(const std::string& path) = 0;
};

}  // namespace cardnode::storage
