#include "storage/fs.h"

#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

namespace cardnode::storage {
namespace {

class RealFs final : public Fs {
 public:
  Result<UniqueFd> open(const std::string& path, int flags, uint32_t mode) override {
    return open_fd(path, flags, mode);
  }

  Status allocate(int fd, uint64_t offset, uint64_t len, const std::string& path) override {
    int rc = retry_eintr(
        [&] { return ::fallocate(fd, 0, static_cast<off_t>(offset), static_cast<off_t>(len)); });
    if (rc != 0) return fail_errno(errno, "fallocate " + path);
    return {};
  }

  Status write_at(int fd, std::string_view data, uint64_t offset,
                  const std::string& path) override {
    return pwrite_all(fd, data.data(), data.size(), offset, path);
  }

  Status truncate(int fd, uint64_t len, const std::string& path) override {
    if (retry_eintr([&] { return ::ftruncate(fd, static_cast<off_t>(len)); }) != 0) {
      return fail_errno(errno, "truncate " + path);
    }
    return {};
  }

  // Not retried on EINTR either: fdatasync does not return EINTR on Linux, and a retry
  // after any failure could report success for pages the kernel already dropped.
  Status sync(int fd, const std::string& path) override {
    if (::fdatasync(fd) != 0) return fail_errno(errno, "fdatasync " + path);
    return {};
  }

  Status sync_dir(const std::string& dir) override {
    auto fd = open_fd(dir, O_RDONLY | O_DIRECTORY);
    if (!fd) return std::unexpected(fd.error());
    if (::fsync(fd->get()) != 0) return fail_errno(errno, "fsync " + dir);
    return {};
  }

  Status rename(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0) {
      return fail_errno(errno, "rename " + from + " to " + to);
    }
    return {};
  }

  Status remove(const std::string& path) override {
    if (::unlink(path.c_str()) != 0) return fail_errno(errno, "remove " + path);
    return {};
  }
};

}  // namespace

Fs& Fs::real() {
  static RealFs fs;
  return fs;
}

}  // namespace cardnode::storage
