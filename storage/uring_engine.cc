// io_uring backend. Each operation is a heap Op owned by the ring from submission
// until its CQE is reaped; user_data points at it. Completions wake the event loop
// through an eventfd registered with the ring.
#include <liburing.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <memory>
#include <string>

#include "storage/engines.h"

namespace cardnode::storage {
namespace {

// Above this the ring itself would need more memory than a small board should spend.
constexpr uint32_t kQueueDepthMax = 4096;
// wait() retries an interrupted io_uring_enter at most this often before giving up.
constexpr uint32_t kWaitAttemptsMax = 1000;

// kWriteDsync: a write with RWF_DSYNC (IoEngine::write_durably).
enum class OpKind : uint8_t { kWrite, kRead, kFsync, kWriteDsync };

bool is_write(OpKind k) {
  return k == OpKind::kWrite || k == OpKind::kWriteDsync;
}
bool is_sync(OpKind k) {
  return k == OpKind::kFsync || k == OpKind::kWriteDsync;
}

struct Op {
  OpKind kind = OpKind::kWrite;
  int fd = -1;
  uint8_t* buf = nullptr;  // for writes: the caller's const data, never written through
  uint32_t len = 0;
  uint64_t offset = 0;
  uint32_t done_bytes = 0;  // a short write resubmits the rest
  uint64_t submitted_ns = 0;
  IoCallback cb;
};

const char* op_name(OpKind kind) {
  switch (kind) {
    case OpKind::kWrite: return "write";
    case OpKind::kRead: return "read";
    case OpKind::kFsync: return "fdatasync";
    case OpKind::kWriteDsync: return "write+dsync";
  }
  return "op";
}

class UringEngine final : public IoEngine {
 public:
  UringEngine(uint32_t queue_depth, int event_fd)
      : queue_depth_(queue_depth), event_fd_(event_fd) {}
  ~UringEngine() override;

  Status init();

  Backend backend() const override { return Backend::kIoUring; }
  Status write(int fd, const void* data, uint32_t len, uint64_t offset, IoCallback cb) override {
    // The kernel only reads from a write buffer; the cast lets one Op type serve both.
    return submit(OpKind::kWrite, fd, const_cast<void*>(data), len, offset, std::move(cb));
  }
  Status read(int fd, void* buf, uint32_t len, uint64_t offset, IoCallback cb) override {
    return submit(OpKind::kRead, fd, buf, len, offset, std::move(cb));
  }
  Status fdatasync(int fd, IoCallback cb) override {
    return submit(OpKind::kFsync, fd, nullptr, 0, 0, std::move(cb));
  }
  Status write_durably(int fd, const void* data, uint32_t len, uint64_t offset,
                       IoCallback cb) override {
    return submit(OpKind::kWriteDsync, fd, const_cast<void*>(data), len, offset, std::move(cb));
  }
  int completion_fd() const override { return event_fd_; }
  uint32_t reap() override;
  uint32_t wait() override;
  uint32_t in_flight() const override { return in_flight_; }

 private:
  Status submit(OpKind kind, int fd, void* buf, uint32_t len, uint64_t offset, IoCallback cb);
  bool prep(Op* op);
  void flush_submissions();
  // Returns true when the op finished (callback ran), false when it was resubmitted.
  bool finish(Op* op, int res);
  void count(const Op& op, int res);
  void drain_eventfd();

  io_uring ring_{};
  bool ring_ready_ = false;
  uint32_t queue_depth_;
  int event_fd_;
  uint32_t in_flight_ = 0;
};

UringEngine::~UringEngine() {
  // Ops still in flight reference caller buffers: wait for them, but run no callbacks —
  // their owners are being torn down too.
  for (uint32_t i = 0; ring_ready_ && in_flight_ > 0 && i < kWaitAttemptsMax; ++i) {
    io_uring_cqe* cqe = nullptr;
    if (io_uring_wait_cqe(&ring_, &cqe) != 0 || cqe == nullptr) continue;
    delete static_cast<Op*>(io_uring_cqe_get_data(cqe));
    io_uring_cqe_seen(&ring_, cqe);
    --in_flight_;
  }
  if (ring_ready_) io_uring_queue_exit(&ring_);
  ::close(event_fd_);
}

Status UringEngine::init() {
  if (queue_depth_ > kQueueDepthMax) {
    return fail(Errc::kInvalidArgument, "io queue_depth above " + std::to_string(kQueueDepthMax));
  }
  int rc = io_uring_queue_init(queue_depth_, &ring_, 0);
  if (rc < 0) return fail_errno(-rc, "io_uring_queue_init");
  ring_ready_ = true;
  rc = io_uring_register_eventfd(&ring_, event_fd_);
  if (rc < 0) return fail_errno(-rc, "io_uring_register_eventfd");
  return {};
}

Status UringEngine::submit(OpKind kind, int fd, void* buf, uint32_t len, uint64_t offset,
                           IoCallback cb) {
  if (in_flight_ >= queue_depth_) {
    return fail(Errc::kResourceExhausted, "io queue full (" + std::to_string(queue_depth_) + ")");
  }
  auto op = std::make_unique<Op>();
  op->kind = kind;
  op->fd = fd;
  op->buf = static_cast<uint8_t*>(buf);
  op->len = len;
  op->offset = offset;
  op->submitted_ns = is_sync(kind) ? monotonic_ns() : 0;
  op->cb = std::move(cb);
  if (!prep(op.get())) return fail(Errc::kResourceExhausted, "io_uring submission queue full");
  (void)op.release();  // owned by the ring (prep() put it in the SQE) until its CQE is reaped
  ++in_flight_;
  flush_submissions();
  return {};
}

bool UringEngine::prep(Op* op) {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (sqe == nullptr) {
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  if (sqe == nullptr) return false;
  switch (op->kind) {
    case OpKind::kWrite:
    case OpKind::kWriteDsync:
      io_uring_prep_write(sqe, op->fd, op->buf + op->done_bytes, op->len - op->done_bytes,
                          op->offset + op->done_bytes);
      // Each part of a short write is synced with it: the whole is durable at the end.
      if (op->kind == OpKind::kWriteDsync) sqe->rw_flags = RWF_DSYNC;
      break;
    case OpKind::kRead: io_uring_prep_read(sqe, op->fd, op->buf, op->len, op->offset); break;
    case OpKind::kFsync: io_uring_prep_fsync(sqe, op->fd, IORING_FSYNC_DATASYNC); break;
  }
  io_uring_sqe_set_data(sqe, op);
  return true;
}

void UringEngine::flush_submissions() {
  // A failed io_uring_enter leaves the SQEs queued; reap() and wait() try again, so an
  // accepted op is never lost.
  if (io_uring_sq_ready(&ring_) > 0) io_uring_submit(&ring_);
}

void UringEngine::count(const Op& op, int res) {
  if (res < 0) {
    ++stats_.errors;
    return;
  }
  auto bytes = static_cast<uint64_t>(res);
  switch (op.kind) {
    case OpKind::kWrite:
    case OpKind::kWriteDsync: stats_.bytes_written += bytes; break;
    case OpKind::kRead: stats_.bytes_read += bytes; break;
    case OpKind::kFsync: break;
  }
}

// An op io_uring cancelled without running it, done here instead, synchronously: the
// bytes or 0, or -errno. Seen on Linux 6.1 (arm64, the VM of make vm-test): a log write
// punted to io-wq came back -ECANCELED in a process whose second thread had just made
// its first child; nothing here asks for cancellation, so ECANCELED means io-wq could not
// run the op (e.g. it could not start a worker for it), never that it ran in part.
int run_inline(const Op& op) {
  for (int attempt = 0; attempt < 1000; ++attempt) {  // bounded: EINTR only
    ssize_t n = 0;
    switch (op.kind) {
      case OpKind::kWrite:
        n = ::pwrite(op.fd, op.buf + op.done_bytes, op.len - op.done_bytes,
                     static_cast<off_t>(op.offset + op.done_bytes));
        break;
      case OpKind::kRead: n = ::pread(op.fd, op.buf, op.len, static_cast<off_t>(op.offset)); break;
      case OpKind::kFsync: n = ::fdatasync(op.fd); break;
      case OpKind::kWriteDsync: {
        iovec iov{op.buf + op.done_bytes, op.len - op.done_bytes};
        n = ::pwritev2(op.fd, &iov, 1, static_cast<off_t>(op.offset + op.done_bytes), RWF_DSYNC);
        break;
      }
    }
    if (n >= 0) return static_cast<int>(n);
    if (errno != EINTR) return -errno;
  }
  return -EINTR;
}

bool UringEngine::finish(Op* op, int res) {
  if (res == -ECANCELED) {
    ++stats_.cancelled_inline;
    res = run_inline(*op);
  }
  count(*op, res);
  if (is_write(op->kind) && res > 0) {
    op->done_bytes += static_cast<uint32_t>(res);
    if (op->done_bytes < op->len && prep(op)) {
      flush_submissions();
      return false;
    }
  }
  std::unique_ptr<Op> owned(op);
  --in_flight_;
  switch (op->kind) {
    case OpKind::kWrite: ++stats_.writes; break;
    case OpKind::kRead: ++stats_.reads; break;
    case OpKind::kFsync:
      ++stats_.fsyncs;
      stats_.note_fsync_latency(monotonic_ns() - op->submitted_ns);
      break;
    case OpKind::kWriteDsync:
      ++stats_.writes;
      ++stats_.fsyncs;
      stats_.note_fsync_latency(monotonic_ns() - op->submitted_ns);
      break;
  }
  std::string what = std::string(op_name(op->kind)) + " fd " + std::to_string(op->fd);
  if (res < 0) {
    owned->cb(fail_errno(-res, what));
  } else if (is_write(op->kind) && op->done_bytes < op->len) {
    ++stats_.errors;
    owned->cb(fail(Errc::kIo, what + ": short write, " + std::to_string(op->done_bytes) + " of " +
                                  std::to_string(op->len) + " bytes"));
  } else if (is_write(op->kind)) {
    owned->cb(op->done_bytes);
  } else {
    owned->cb(static_cast<uint32_t>(res));
  }
  return true;
}

void UringEngine::drain_eventfd() {
  uint64_t value = 0;
  // Nonblocking: EAGAIN just means nothing was signalled since the last drain.
  [[maybe_unused]] ssize_t n = ::read(event_fd_, &value, sizeof value);
}

uint32_t UringEngine::reap() {
  drain_eventfd();
  flush_submissions();
  // Only what is ready now: CQEs posted by ops that callbacks submit signal the
  // eventfd again, so the loop comes back for them instead of spinning here.
  uint32_t ready = io_uring_cq_ready(&ring_);
  uint32_t ran = 0;
  for (uint32_t i = 0; i < ready; ++i) {
    io_uring_cqe* cqe = nullptr;
    if (io_uring_peek_cqe(&ring_, &cqe) != 0 || cqe == nullptr) break;
    auto* op = static_cast<Op*>(io_uring_cqe_get_data(cqe));
    int res = cqe->res;
    io_uring_cqe_seen(&ring_, cqe);
    if (finish(op, res)) ++ran;
  }
  return ran;
}

uint32_t UringEngine::wait() {
  for (uint32_t attempt = 0; attempt < kWaitAttemptsMax && in_flight_ > 0; ++attempt) {
    if (io_uring_cq_ready(&ring_) == 0) {
      int rc = io_uring_submit_and_wait(&ring_, 1);
      if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) return 0;
    }
    uint32_t ran = reap();
    if (ran > 0) return ran;  // else only resubmitted short writes: keep waiting
  }
  return 0;
}

}  // namespace

Result<std::unique_ptr<IoEngine>> make_uring_engine(const IoOptions& options) {
  int event_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (event_fd < 0) return fail_errno(errno, "eventfd");
  auto engine = std::make_unique<UringEngine>(options.queue_depth, event_fd);
  if (auto st = engine->init(); !st) return std::unexpected(st.error());
  return engine;
}

}  // namespace cardnode::storage
