// POSIX helpers, each syscall quirk handled once (as libuv's uv__close / uv__nonblock):
// an owning fd, EINTR retries with a bound, full reads and writes, bounded whole-file
// reads and directory listings. Plain blocking calls: for start-up, fsck, tests and the
// rare metadata operation, never for the data path (that is storage/io_engine.h).
//
// Threading: none; each call stands alone.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "proto/error.h"

namespace cardnode::storage {

// A signal storm could otherwise keep a syscall retrying forever.
inline constexpr uint32_t kEintrRetriesMax = 100;

// Calls f() again while it fails with EINTR, at most kEintrRetriesMax times.
template <class F>
auto retry_eintr(F f) -> decltype(f()) {
  decltype(f()) rc = f();
  for (uint32_t i = 0; i < kEintrRetriesMax && rc == -1 && errno == EINTR; ++i) rc = f();
  return rc;
}

// Owns one file descriptor; closes it once.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { reset(); }
  UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) reset(std::exchange(o.fd_, -1));
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() { return std::exchange(fd_, -1); }
  // close() is not retried on EINTR: on Linux the fd is gone either way.
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

// open(2) with O_CLOEXEC added; `what` names the file in the error.
[[nodiscard]] Result<UniqueFd> open_fd(const std::string& path, int flags, uint32_t mode = 0644);

// Whole-buffer positional I/O; `what` names the file in the error. A read that hits the
// end of the file early is an error (kIo, "file shrank").
[[nodiscard]] Status pwrite_all(int fd, const void* data, size_t len, uint64_t offset,
                                const std::string& what);
[[nodiscard]] Status pread_all(int fd, void* buf, size_t len, uint64_t offset,
                               const std::string& what);

// The whole file; a file larger than max_bytes is kCorruption (not one of ours).
[[nodiscard]] Result<std::string> read_file_bounded(const std::string& path, uint64_t max_bytes);

// Names in `dir` (no "." or ".."), unsorted; more than entries_max is kCorruption.
[[nodiscard]] Result<std::vector<std::string>> list_dir(const std::string& dir,
                                                        uint32_t entries_max);

// mkdir -p; directories it creates get `mode`, existing ones keep theirs.
[[nodiscard]] Status make_dirs(const std::string& path, uint32_t mode = 0755);

// Bytes free for an unprivileged writer on the file system holding `path`.
[[nodiscard]] Result<uint64_t> free_bytes(const std::string& path);

}  // namespace cardnode::storage
