// FaultyFs: test double over a real Fs. Counts every call as an I/O point of a CrashPlan
// and fails from the crash point on, as a dead process would. In power-loss mode the
// crash also undoes what no sync covered yet, newest first:
//   - write_at() bytes not covered by a later sync() of their file revert;
//   - a file created, renamed or removed since the last sync_dir() of its directory is
//     un-created, renamed back or restored (removed files are kept as hard links in
//     `trash_dir` until their directory is synced).
// Without power loss (kill -9) everything done before the crash point stays.
//
// Threading: loop thread only. `inner`, `plan` and `trash_dir` (on the same file system
// as the files under test, for link(2)) must outlive the FaultyFs.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "storage/crash_plan.h"
#include "storage/fs.h"

namespace cardnode::storage {

class FaultyFs final : public Fs {
 public:
  FaultyFs(Fs& inner, CrashPlan* plan, bool power_loss, std::string trash_dir)
      : inner_(inner), plan_(plan), power_loss_(power_loss), trash_dir_(std::move(trash_dir)) {
    if (plan_ != nullptr) plan_->on_crash([this] { on_crash(); });
  }

  // The nth call of `op` ("open", "allocate", "write_at", "truncate", "sync", "sync_dir",
  // "rename", "remove") from now fails with `err`, without a crash (ENOSPC, EIO...).
  void fail_nth(const std::string& op, uint32_t nth, int err) { fails_[op] = {nth, err}; }
  // Every call of `op` fails with `err` until stop_failing(op) (a disk that stays full).
  void fail_always(const std::string& op, int err) { always_[op] = err; }
  void stop_failing(const std::string& op) { always_.erase(op); }

  Result<UniqueFd> open(const std::string& path, int flags, uint32_t mode) override {
    if (auto st = gate("open " + path, "open"); !st) return std::unexpected(st.error());
    bool existed = ::access(path.c_str(), F_OK) == 0;
    auto fd = inner_.open(path, flags, mode);
    if (fd && (flags & O_CREAT) && !existed) {
      log_.push_back({Change::kCreated, path, {}, {}});
    }
    return fd;
  }

  Status allocate(int fd, uint64_t offset, uint64_t len, const std::string& path) override {
    if (auto st = gate("allocate " + path, "allocate"); !st) return st;
    return inner_.allocate(fd, offset, len, path);
  }

  Status write_at(int fd, std::string_view data, uint64_t offset,
                  const std::string& path) override {
    if (auto st = gate("write_at " + path, "write_at"); !st) return st;
    std::string old(data.size(), '\0');
    ssize_t n = ::pread(fd, old.data(), old.size(), static_cast<off_t>(offset));
    old.resize(n > 0 ? static_cast<size_t>(n) : 0);
    undo_writes_[fd].push_back({offset, static_cast<uint32_t>(data.size()), std::move(old)});
    return inner_.write_at(fd, data, offset, path);
  }

  Status truncate(int fd, uint64_t len, const std::string& path) override {
    if (auto st = gate("truncate " + path, "truncate"); !st) return st;
    return inner_.truncate(fd, len, path);
  }

  Status sync(int fd, const std::string& path) override {
    if (auto st = gate("sync " + path, "sync"); !st) return st;
    auto st = inner_.sync(fd, path);
    if (st) undo_writes_.erase(fd);
    return st;
  }

  Status sync_dir(const std::string& dir) override {
    if (auto st = gate("sync_dir " + dir, "sync_dir"); !st) return st;
    auto st = inner_.sync_dir(dir);
    if (st) {
      std::erase_if(log_,
                    [&](const Change& c) { return in_dir(c.path, dir) || in_dir(c.to, dir); });
    }
    return st;
  }

  Status rename(const std::string& from, const std::string& to) override {
    if (auto st = gate("rename " + from + " " + to, "rename"); !st) return st;
    std::string kept = keep_copy(to);
    auto st = inner_.rename(from, to);
    if (st) log_.push_back({Change::kRenamed, from, to, kept});
    return st;
  }

  Status remove(const std::string& path) override {
    if (auto st = gate("remove " + path, "remove"); !st) return st;
    std::string kept = keep_copy(path);
    auto st = inner_.remove(path);
    if (st) log_.push_back({Change::kRemoved, path, {}, kept});
    return st;
  }

 private:
  struct Change {
    enum Kind { kCreated, kRenamed, kRemoved } kind;
    std::string path;  // created / removed path, or rename source
    std::string to;    // rename target
    std::string kept;  // hard link of the file a rename replaced or a removal deleted
  };
  struct Undo {
    uint64_t offset;
    uint32_t len;
    std::string old_bytes;  // shorter than len when the write extended the file
  };
  struct Fail {
    uint32_t nth = 0;
    int err = 0;
  };

  static bool in_dir(const std::string& path, const std::string& dir) {
    return !path.empty() && std::filesystem::path(path).parent_path() ==
                                std::filesystem::path(dir).lexically_normal();
  }

  Status gate(const std::string& what, const std::string& op) {
    if (plan_ != nullptr && plan_->reach(what)) return fail(Errc::kIo, "crashed at " + what, EIO);
    if (auto it = always_.find(op); it != always_.end())
      return fail_errno(it->second, what + " (injected)");
    if (auto it = fails_.find(op); it != fails_.end() && --it->second.nth == 0) {
      int err = it->second.err;
      fails_.erase(it);
      return fail_errno(err, what + " (injected)");
    }
    return {};
  }

  std::string keep_copy(const std::string& path) {
    if (!power_loss_ || ::access(path.c_str(), F_OK) != 0) return {};
    std::string kept = trash_dir_ + "/kept-" + std::to_string(++kept_seq_);
    return ::link(path.c_str(), kept.c_str()) == 0 ? kept : std::string();
  }

  void on_crash() {
    if (!power_loss_) return;
    for (auto& [fd, undos] : undo_writes_) {
      for (auto it = undos.rbegin(); it != undos.rend(); ++it) {
        std::string bytes = it->old_bytes;
        bytes.resize(it->len, '\0');
        [[maybe_unused]] ssize_t n =
            ::pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(it->offset));
      }
    }
    undo_writes_.clear();
    for (auto it = log_.rbegin(); it != log_.rend(); ++it) {
      switch (it->kind) {
        case Change::kCreated: ::unlink(it->path.c_str()); break;
        case Change::kRenamed:
          ::rename(it->to.c_str(), it->path.c_str());
          if (!it->kept.empty()) ::link(it->kept.c_str(), it->to.c_str());
          break;
        case Change::kRemoved:
          if (!it->kept.empty()) ::link(it->kept.c_str(), it->path.c_str());
          break;
      }
    }
    log_.clear();
  }

  Fs& inner_;
  CrashPlan* plan_;
  bool power_loss_;
  std::string trash_dir_;
  uint64_t kept_seq_ = 0;
  std::vector<Change> log_;
  std::map<int, std::vector<Undo>> undo_writes_;
  std::map<std::string, Fail> fails_;
  std::map<std::string, int> always_;
};

}  // namespace cardnode::storage
