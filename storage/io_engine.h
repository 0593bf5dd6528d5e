// IoEngine: the one seam between cardnode and the disk. io_uring when the kernel
// allows it, else a fallback with the same interface (pwrite/pread/fdatasync done
// inline, completions delivered on the next reap) — chosen once at create() and logged
// by the caller. Tests can also swap in a fault-injecting engine (storage/fault.h).
//
// Threading: not thread-safe. One engine per process, used from the thread that runs
// the event loop. storage/ has no libuv: the loop watches completion_fd() (an
// eventfd, readable when completions are ready) and calls reap().
//
// Ownership: buffers passed to write()/read() must stay valid until their callback
// runs. Callbacks run only from inside reap() or wait(), never from a submit call.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>

#include "proto/error.h"

namespace cardnode::storage {

enum class Backend : uint8_t { kIoUring, kFallback };
const char* backend_name(Backend b);  // "io_uring" / "fallback"

// Upper bounds of the fdatasync latency buckets, in seconds (an SD card's flush takes
// 2-50 ms when healthy; a worn or overloaded one, 100 ms and more). One more bucket, +Inf.
inline constexpr std::array<double, 9> kFsyncBucketsSeconds = {0.001, 0.0025, 0.005, 0.01, 0.025,
                                                               0.05,  0.1,    0.25,  1.0};

// Every byte written is metered here (guarantee 5: an idle cluster writes nothing).
struct IoStats {
  uint64_t writes = 0;
  uint64_t bytes_written = 0;
  uint64_t reads = 0;
  uint64_t bytes_read = 0;
  uint64_t fsyncs = 0;
  uint64_t errors = 0;
  // io_uring cancelled an op without running it; it was done inline instead (uring only).
  uint64_t cancelled_inline = 0;
  // fdatasyncs by latency (submission to completion), per bucket of kFsyncBucketsSeconds
  // (not cumulative; the last is +Inf), and their summed latency.
  std::array<uint64_t, kFsyncBucketsSeconds.size() + 1> fsync_buckets{};
  uint64_t fsync_ns_sum = 0;

  void note_fsync_latency(uint64_t ns);
};

// CLOCK_MONOTONIC in nanoseconds: what note_fsync_latency() is measured with.
uint64_t monotonic_ns();

struct IoOptions {
  uint32_t queue_depth = 64;    // in-flight operations at most; a full queue is an error
  bool force_fallback = false;  // also set by CARDNODE_IO_BACKEND=fallback
};

// Result carries the bytes transferred (0 for fdatasync).
using IoCallback = std::function<void(Result<uint32_t>)>;

class IoEngine {
 public:
  virtual ~IoEngine() = default;

  // io_uring unless it cannot be set up (ENOSYS under qemu-user, EPERM under
  // seccomp) or options/env force the fallback. `why_fallback`, when not null,
  // receives the reason the fallback was chosen.
  [[nodiscard]] static Result<std::unique_ptr<IoEngine>> create(const IoOptions& options,
                                                                std::string* why_fallback);

  virtual Backend backend() const = 0;

  // Submit calls fail with kResourceExhausted when queue_depth operations are in
  // flight; the callback is then never called.
  [[nodiscard]] virtual Status write(int fd, const void* data, uint32_t len, uint64_t offset,
                                     IoCallback cb) = 0;
  [[nodiscard]] virtual Status read(int fd, void* buf, uint32_t len, uint64_t offset,
                                    IoCallback cb) = 0;
  [[nodiscard]] virtual Status fdatasync(int fd, IoCallback cb) = 0;
  // A write that completes only once it is as durable as write() then fdatasync(fd) would
  // have made it: one operation and one completion instead of two in sequence (io_uring:
  // a write with RWF_DSYNC; the fallback: pwrite, then fdatasync). The WAL's batches use
  // it. Counted as a write and an fdatasync; its whole latency is the fdatasync's. A
  // failure may come from either half: the bytes may be in the page cache, not on disk.
  [[nodiscard]] virtual Status write_durably(int fd, const void* data, uint32_t len,
                                             uint64_t offset, IoCallback cb) = 0;

  // Eventfd readable when reap() has work. Owned by the engine.
  virtual int completion_fd() const = 0;
  // Runs the callbacks of every finished operation; returns how many ran.
  virtual uint32_t reap() = 0;
  // Blocks until at least one operation finished, then reaps. For tests, startup
  // replay and shutdown; never called from a loop callback.
  virtual uint32_t wait() = 0;
  virtual uint32_t in_flight() const = 0;

  const IoStats& stats() const { return stats_; }

 protected:
  IoStats stats_;
};

}  // namespace cardnode::storage
