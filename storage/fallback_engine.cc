// Fallback backend for kernels without io_uring (qemu-user, seccomp'd containers):
// each operation runs synchronously inside the submit call, and its result waits in
// a bounded queue until reap(), so callers see the same ordering rules as io_uring.
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <deque>
#include <limits>
#include <memory>
#include <string>

#include "storage/engines.h"

namespace cardnode::storage {
namespace {

// A signal storm could otherwise keep a syscall retrying forever.
constexpr uint32_t kEintrRetriesMax = 100;

struct Completion {
  IoCallback cb;
  Result<uint32_t> result;
};

std::string describe_op(const char* name, int fd) {
  return std::string(name) + " fd " + std::to_string(fd);
}

Status check_offset(uint64_t offset, uint32_t len) {
  if (offset > static_cast<uint64_t>(std::numeric_limits<off_t>::max()) - len) {
    return fail(Errc::kInvalidArgument, "io offset out of range: " + std::to_string(offset));
  }
  return {};
}

class FallbackEngine final : public IoEngine {
 public:
  FallbackEngine(uint32_t queue_depth, int event_fd)
      : queue_depth_(queue_depth), event_fd_(event_fd) {}
  ~FallbackEngine() override { ::close(event_fd_); }

  Backend backend() const override { return Backend::kFallback; }
  Status write(int fd, const void* data, uint32_t len, uint64_t offset, IoCallback cb) override;
  Status read(int fd, void* buf, uint32_t len, uint64_t offset, IoCallback cb) override;
  Status fdatasync(int fd, IoCallback cb) override;
  Status write_durably(int fd, const void* data, uint32_t len, uint64_t offset,
                       IoCallback cb) override;
  int completion_fd() const override { return event_fd_; }
  uint32_t reap() override;
  uint32_t wait() override { return reap(); }
  uint32_t in_flight() const override { return static_cast<uint32_t>(done_.size()); }

 private:
  Status check_room() const;
  void complete(IoCallback cb, Result<uint32_t> result);
  Result<uint32_t> pwrite_all(int fd, const uint8_t* data, uint32_t len, uint64_t offset);
  Result<uint32_t> pread_all(int fd, uint8_t* buf, uint32_t len, uint64_t offset);

  uint32_t queue_depth_;
  int event_fd_;
  std::deque<Completion> done_;  // at most queue_depth_
};

Status FallbackEngine::check_room() const {
  if (done_.size() >= queue_depth_) {
    return fail(Errc::kResourceExhausted, "io queue full (" + std::to_string(queue_depth_) + ")");
  }
  return {};
}

void FallbackEngine::complete(IoCallback cb, Result<uint32_t> result) {
  if (!result) ++stats_.errors;
  done_.push_back(Completion{std::move(cb), std::move(result)});
  uint64_t one = 1;
  // Can only fail if the counter would overflow, which reap() prevents by draining it.
  [[maybe_unused]] ssize_t n = ::write(event_fd_, &one, sizeof one);
}

Result<uint32_t> FallbackEngine::pwrite_all(int fd, const uint8_t* data, uint32_t len,
                                            uint64_t offset) {
  if (auto st = check_offset(offset, len); !st) return std::unexpected(st.error());
  uint32_t done = 0;
  uint32_t eintr = 0;
  while (done < len) {  // every pass writes something or returns
    ssize_t n = ::pwrite(fd, data + done, len - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR && ++eintr < kEintrRetriesMax) continue;
    if (n < 0) return fail_errno(errno, describe_op("write", fd));
    if (n == 0) return fail(Errc::kIo, describe_op("write", fd) + ": no progress");
    done += static_cast<uint32_t>(n);
    stats_.bytes_written += static_cast<uint64_t>(n);
  }
  return done;
}

Result<uint32_t> FallbackEngine::pread_all(int fd, uint8_t* buf, uint32_t len, uint64_t offset) {
  if (auto st = check_offset(offset, len); !st) return std::unexpected(st.error());
  uint32_t done = 0;
  uint32_t eintr = 0;
  while (done < len) {  // every pass reads something, hits end of file, or returns
    ssize_t n = ::pread(fd, buf + done, len - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR && ++eintr < kEintrRetriesMax) continue;
    if (n < 0) return fail_errno(errno, describe_op("read", fd));
    if (n == 0) break;
    done += static_cast<uint32_t>(n);
  }
  stats_.bytes_read += done;
  return done;
}

Status FallbackEngine::write(int fd, const void* data, uint32_t len, uint64_t offset,
                             IoCallback cb) {
  if (auto st = check_room(); !st) return st;
  ++stats_.writes;
  complete(std::move(cb), pwrite_all(fd, static_cast<const uint8_t*>(data), len, offset));
  return {};
}

Status FallbackEngine::read(int fd, void* buf, uint32_t len, uint64_t offset, IoCallback cb) {
  if (auto st = check_room(); !st) return st;
  ++stats_.reads;
  complete(std::move(cb), pread_all(fd, static_cast<uint8_t*>(buf), len, offset));
  return {};
}

Status FallbackEngine::fdatasync(int fd, IoCallback cb) {
  if (auto st = check_room(); !st) return st;
  ++stats_.fsyncs;
  Result<uint32_t> result = 0u;
  const uint64_t start_ns = monotonic_ns();
  if (::fdatasync(fd) != 0) result = fail_errno(errno, describe_op("fdatasync", fd));
  stats_.note_fsync_latency(monotonic_ns() - start_ns);
  complete(std::move(cb), std::move(result));
  return {};
}

Status FallbackEngine::write_durably(int fd, const void* data, uint32_t len, uint64_t offset,
                                     IoCallback cb) {
  if (auto st = check_room(); !st) return st;
  ++stats_.writes;
  ++stats_.fsyncs;  // as io_uring counts a write with RWF_DSYNC, whichever half failed
  const uint64_t start_ns = monotonic_ns();
  Result<uint32_t> result = pwrite_all(fd, static_cast<const uint8_t*>(data), len, offset);
  if (result && ::fdatasync(fd) != 0) result = fail_errno(errno, describe_op("fdatasync", fd));
  stats_.note_fsync_latency(monotonic_ns() - start_ns);
  complete(std::move(cb), std::move(result));
  return {};
}

uint32_t FallbackEngine::reap() {
  uint64_t value = 0;
  [[maybe_unused]] ssize_t n = ::read(event_fd_, &value, sizeof value);  // nonblocking
  // Only what finished before this call: ops that callbacks submit signal the eventfd
  // again and run on the next reap.
  std::deque<Completion> ready;
  ready.swap(done_);
  for (Completion& c : ready) c.cb(std::move(c.result));
  return static_cast<uint32_t>(ready.size());
}

}  // namespace

Result<std::unique_ptr<IoEngine>> make_fallback_engine(const IoOptions& options) {
  int event_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (event_fd < 0) return fail_errno(errno, "eventfd");
  return std::make_unique<FallbackEngine>(options.queue_depth, event_fd);
}

}  // namespace cardnode::storage
