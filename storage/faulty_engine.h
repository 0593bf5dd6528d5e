// FaultyEngine: test double that wraps a real IoEngine (LevelDB fault_injection_test
// style). It can fail the Nth write or fdatasync with a chosen errno, and simulate a
// power loss: every byte written since its file's last successful fdatasync reverts to
// what was there before, sector by sector, as the test decides.
//
// Injected failures still go through the inner engine (as a zero-length write or a
// real fdatasync whose result is replaced), so callbacks keep the inner ordering.
// Undo tracking assumes the WAL's pattern: a write completes before the fdatasync that
// covers it is submitted. Bytes written past the old end of a file revert to zeros.
//
// Threading: loop thread only. `inner` must outlive the FaultyEngine.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "storage/crash_plan.h"
#include "storage/io_engine.h"

namespace cardnode::storage {

class FaultyEngine final : public IoEngine {
 public:
  static constexpr uint32_t kSectorBytes = 512;

  explicit FaultyEngine(IoEngine& inner) : inner_(inner) {}

  // Joins a CrashPlan: every write and fdatasync submitted is one of its points, and the
  // plan's crash reverts unsynced sectors as keep_sector() decides (always true: a kill -9,
  // the page cache survives; always false: power loss with nothing of it on the media).
  void set_crash_plan(CrashPlan* plan, std::function<bool()> keep_sector) {
    plan_ = plan;
    plan_->on_crash([this, keep = std::move(keep_sector)] { crash(keep); });
  }

  // The nth write/fdatasync submitted from now on (1 = the next) fails with `err`.
  void fail_write(uint32_t nth, int err) {
    write_fail_at_ = writes_seen_ + nth;
    write_errno_ = err;
  }
  void fail_fsync(uint32_t nth, int err) {
    fsync_fail_at_ = fsyncs_seen_ + nth;
    fsync_errno_ = err;
  }

  // Power loss: lets the ops in flight finish (their callbacks later see EIO), reverts
  // every unsynced sector for which keep_sector() returns false, and fails every later
  // submit. keep_sector() is asked once per unsynced sector.
  void crash(const std::function<bool()>& keep_sector) {
    crashed_ = true;
    for (uint32_t i = 0; i < 10000 && inner_.in_flight() > 0; ++i) inner_.wait();
    for (auto& [fd, undos] : undo_) {
      for (auto it = undos.rbegin(); it != undos.rend(); ++it) revert(fd, *it, keep_sector);
    }
    undo_.clear();
  }
  bool crashed() const { return crashed_; }

  Backend backend() const override { return inner_.backend(); }

  Status write(int fd, const void* data, uint32_t len, uint64_t offset, IoCallback cb) override {
    if (crashed_) return fail(Errc::kIo, "write after simulated crash", EIO);
    if (plan_ != nullptr && plan_->reach("write fd " + std::to_string(fd))) {
      return fail(Errc::kIo, "crashed at a write", EIO);
    }
    bool inject = ++writes_seen_ == write_fail_at_;
    if (!inject) save_undo(fd, len, offset);
    IoCallback wrapped = [this, inject, err = write_errno_,
                          cb = std::move(cb)](Result<uint32_t> r) {
      if (inject) r = fail_errno(err, "write (injected)");
      deliver(cb, std::move(r));
    };
    return inner_.write(fd, data, inject ? 0 : len, offset, std::move(wrapped));
  }

  Status read(int fd, void* buf, uint32_t len, uint64_t offset, IoCallback cb) override {
    if (crashed_) return fail(Errc::kIo, "read after simulated crash", EIO);
    return inner_.read(fd, buf, len, offset, [this, cb = std::move(cb)](Result<uint32_t> r) {
      deliver(cb, std::move(r));
    });
  }

  Status fdatasync(int fd, IoCallback cb) override {
    if (crashed_) return fail(Errc::kIo, "fdatasync after simulated crash", EIO);
    if (plan_ != nullptr && plan_->reach("fdatasync fd " + std::to_string(fd))) {
      return fail(Errc::kIo, "crashed at an fdatasync", EIO);
    }
    bool inject = ++fsyncs_seen_ == fsync_fail_at_;
    size_t covered = undo_[fd].size();
    IoCallback wrapped = [this, fd, inject, covered, err = fsync_errno_,
                          cb = std::move(cb)](Result<uint32_t> r) {
      if (inject) r = fail_errno(err, "fdatasync (injected)");
      // A failed fdatasync covers nothing (fsyncgate): the bytes stay revertible.
      if (r && !crashed_) {
        auto& undos = undo_[fd];
        undos.erase(undos.begin(), undos.begin() + static_cast<std::ptrdiff_t>(covered));
      }
      deliver(cb, std::move(r));
    };
    return inner_.fdatasync(fd, std::move(wrapped));
  }

  // As a disk does it: the write, then the fdatasync that covers it, each a point of the
  // crash plan and each open to an injected failure (the inner engine runs them as two
  // operations, so a crash can fall between them, leaving the bytes revertible).
  Status write_durably(int fd, const void* data, uint32_t len, uint64_t offset,
                       IoCallback cb) override {
    return write(fd, data, len, offset, [this, fd, cb = std::move(cb)](Result<uint32_t> r) {
      if (!r) return cb(std::move(r));
      Status st = fdatasync(fd, [n = *r, cb](Result<uint32_t> synced) {
        cb(synced ? Result<uint32_t>(n) : std::unexpected(synced.error()));
      });
      if (!st) cb(std::unexpected(st.error()));
    });
  }

  int completion_fd() const override { return inner_.completion_fd(); }
  uint32_t reap() override { return finish(inner_.reap()); }
  uint32_t wait() override {
    if (!orphaned_.empty()) return reap();
    return finish(inner_.wait());
  }
  uint32_t in_flight() const override {
    return inner_.in_flight() + static_cast<uint32_t>(orphaned_.size());
  }

 private:
  struct Undo {
    uint64_t offset = 0;
    uint32_t len = 0;
    std::string old_bytes;  // shorter than len when the write extended the file
  };
  struct Orphan {
    IoCallback cb;
  };

  void save_undo(int fd, uint32_t len, uint64_t offset) {
    Undo undo{offset, len, std::string(len, '\0')};
    ssize_t n = ::pread(fd, undo.old_bytes.data(), len, static_cast<off_t>(offset));
    undo.old_bytes.resize(n > 0 ? static_cast<size_t>(n) : 0);
    undo_[fd].push_back(std::move(undo));
  }

  void revert(int fd, const Undo& undo, const std::function<bool()>& keep_sector) {
    for (uint32_t at = 0; at < undo.len; at += kSectorBytes) {
      uint32_t n = std::min(kSectorBytes, undo.len - at);
      if (keep_sector()) continue;
      std::string old(n, '\0');
      if (at < undo.old_bytes.size()) {
        size_t have = std::min<size_t>(n, undo.old_bytes.size() - at);
        old.replace(0, have, undo.old_bytes, at, have);
      }
      [[maybe_unused]] ssize_t w =
          ::pwrite(fd, old.data(), n, static_cast<off_t>(undo.offset + at));
    }
  }

  // After a crash the process would be gone; callbacks still owed get EIO on the next
  // reap so the owner can shut down.
  void deliver(const IoCallback& cb, Result<uint32_t> r) {
    if (crashed_) {
      orphaned_.push_back(Orphan{cb});
      return;
    }
    cb(std::move(r));
  }

  uint32_t finish(uint32_t ran) {
    std::deque<Orphan> orphans;
    orphans.swap(orphaned_);
    for (Orphan& o : orphans) o.cb(fail(Errc::kIo, "simulated crash", EIO));
    stats_ = inner_.stats();
    return ran + static_cast<uint32_t>(orphans.size());
  }

  IoEngine& inner_;
  CrashPlan* plan_ = nullptr;
  bool crashed_ = false;
  uint64_t writes_seen_ = 0;
  uint64_t write_fail_at_ = 0;
  int write_errno_ = EIO;
  uint64_t fsyncs_seen_ = 0;
  uint64_t fsync_fail_at_ = 0;
  int fsync_errno_ = EIO;
  std::map<int, std::vector<Undo>> undo_;  // per fd, oldest first
  std::deque<Orphan> orphaned_;
};

}  // namespace cardnode::storage
