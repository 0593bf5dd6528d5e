// CrashPlan: one numbered sequence of I/O points shared by the test doubles
// (FaultyEngine's writes and fdatasyncs, FaultyFs's calls), so a test can run a scripted
// workload once to count its points and then once per point, dying exactly there.
//
// At the crash point the op fails, every later op of either double fails with EIO, and
// each double runs its crash action (FaultyEngine: revert unsynced sectors as the test
// asked; FaultyFs in power-loss mode: undo unsynced renames, creates and removals).
//
// Threading: loop thread only. Test-only (not compiled into the server).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace cardnode::storage {

class CrashPlan {
 public:
  // crash_at: 1-based index of the point to die at; 0 never crashes (counting run).
  explicit CrashPlan(uint64_t crash_at = 0) : crash_at_(crash_at) {}

  // Called by a double before each op. True when this op is the crash point: the
  // crash actions have run and the caller fails the op.
  bool reach(std::string_view what) {
    if (crashed_) return true;
    ++points_;
    if (record_) seen_.emplace_back(what);
    if (points_ != crash_at_) return false;
    crashed_ = true;
    crash_point_ = std::string(what);
    for (auto& action : actions_) action();
    return true;
  }

  bool crashed() const { return crashed_; }
  uint64_t points() const { return points_; }
  const std::string& crash_point() const { return crash_point_; }

  // A counting run can keep every point's description (to check a workload's coverage).
  void record_points() { record_ = true; }
  const std::vector<std::string>& seen() const { return seen_; }

  // Doubles register what a crash does to them.
  void on_crash(std::function<void()> action) { actions_.push_back(std::move(action)); }

 private:
  uint64_t crash_at_;
  uint64_t points_ = 0;
  bool crashed_ = false;
  std::string crash_point_;
  bool record_ = false;
  std::vector<std::string> seen_;
  std::vector<std::function<void()>> actions_;
};

}  // namespace cardnode::storage
