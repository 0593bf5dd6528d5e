// Test doubles shared by the coordinator's unit tests (coordinator_test, agent_hub_test), in
// the spirit of Nomad's scheduler Harness: the real coordinator and a real store, with
// everything around them — runners, the clock, the loop — played by the test.
//
//   FakeRunner      runs tasks in name only: the test ends them when it likes.
//   CoordinatorRig  one "server process": an engine, a LocalStore in a directory (optionally
//                   behind a FaultyFs), a Coordinator on a fake wall clock, and turns taken
//                   when the coordinator asks for them. restart() stops it cleanly and
//                   recovers a new one from the same directory.
//
// Threading: the test's thread only (it is the loop).
#pragma once

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "runtime/coordinator/coordinator.h"
#include "runtime/exec/task_runner.h"
#include "storage/faulty_fs.h"
#include "storage/io_engine.h"
#include "storage/local_store.h"

namespace cardnode::runtime::testing {

class FakeRunner final : public TaskRunner {
 public:
  Status start(const TaskLaunch& l, ExitCallback on_exit) override {
    if (refuse_starts) return fail(Errc::kResourceExhausted, "refused by the test");
    EXPECT_FALSE(running.contains({l.job_id, l.index})) << "started twice";
    running[{l.job_id, l.index}] = std::move(on_exit);
    ++starts;
    return {};
  }
  void kill(uint64_t job, uint32_t index, KillReason) override { kills.insert({job, index}); }
  // With `can_hold`, as the local executor: held starts count in `running` and `held`
  // until released (`released` counts them).
  bool can_hold_now() const override { return can_hold; }
  bool takes_standbys() const override { return standbys; }
  Status start_held(const TaskLaunch& l, ExitCallback on_exit) override {
    if (!can_hold) return TaskRunner::start_held(l, std::move(on_exit));
    if (Status st = start(l, std::move(on_exit)); !st) return st;
    --starts;
    ++held_starts;
    held.insert({l.job_id, l.index});
    return {};
  }
  void release(uint64_t job, uint32_t index) override {
    if (held.erase({job, index}) > 0) ++released;
  }

  // Ends one running task (the one the test picks) with `exit`.
  bool end(std::pair<uint64_t, uint32_t> key, TaskExit exit) {
    auto it = running.find(key);
    if (it == running.end()) return false;
    auto cb = std::move(it->second);
    running.erase(it);
    cb(exit);
    return true;
  }

  std::map<std::pair<uint64_t, uint32_t>, ExitCallback> running;
  std::set<std::pair<uint64_t, uint32_t>> kills;
  uint64_t starts = 0;
  bool refuse_starts = false;
  bool can_hold = false;
  bool standbys = false;
  std::set<std::pair<uint64_t, uint32_t>> held;
  uint64_t held_starts = 0;
  uint64_t released = 0;
};

class CoordinatorRig {
 public:
  // `dir` must exist; `wall_ms` is the coordinator's clock and outlives the rig.
  CoordinatorRig(std::string dir, CoordinatorOptions options, uint64_t* wall_ms,
                 bool faulty_fs = false)
      : dir_(std::move(dir)), options_(options), wall_ms_(wall_ms), use_faulty_fs_(faulty_fs) {}
  ~CoordinatorRig() { close(); }
  CoordinatorRig(const CoordinatorRig&) = delete;
  CoordinatorRig& operator=(const CoordinatorRig&) = delete;

  // Engine (io_uring where it works, else the fallback), store and coordinator, recovered.
  [[nodiscard]] bool open() {
    std::string why;
    auto engine = storage::IoEngine::create(storage::IoOptions{}, &why);
    if (!engine) {
      ADD_FAILURE() << "IoEngine::create: " << engine.error().describe();
      return false;
    }
    engine_ = std::move(*engine);
    if (use_faulty_fs_) {
      (void)::mkdir((dir_ + "/../trash").c_str(), 0755);
      fs_ = std::make_unique<storage::FaultyFs>(storage::Fs::real(), nullptr, false,
                                                dir_ + "/../trash");
    }
    storage::LocalStoreOptions so;
    so.dir = dir_;
    so.wal.segment_bytes = segment_bytes;
    so.wal.prealloc_bytes = 4 << 10;
    so.fs = fs_.get();
    store_ = std::make_unique<storage::LocalStore>(*engine_, so);
    CoordinatorHooks h;
    h.now_ms = [this] { return *wall_ms_; };
    h.request_turn = [this] { turn_requested_ = true; };
    h.fatal = [](const Error& e) { ADD_FAILURE() << "the store failed: " << e.describe(); };
    c_ = std::make_unique<Coordinator>(*store_, options_, h);
    auto r = c_->recover();
    EXPECT_TRUE(r) << r.error().describe();
    return r.has_value();
  }

  // As the server stops: the coordinator refuses new work, the store drains while the
  // coordinator its callbacks reach is alive, then both go. `before_destroy` runs between
  // (e.g. to drop a hub that points at the coordinator).
  void close(const std::function<void()>& before_destroy = {}) {
    if (c_) {
      c_->stop();
      store_->drain();
    }
    if (before_destroy) before_destroy();
    c_.reset();
    store_.reset();
    fs_.reset();
    engine_.reset();
    turn_requested_ = false;
  }
  [[nodiscard]] bool restart(const std::function<void()>& before_destroy = {}) {
    close(before_destroy);
    return open();
  }

  Coordinator& c() { return *c_; }
  storage::LocalStore& store() { return *store_; }
  storage::IoEngine& engine() { return *engine_; }
  storage::FaultyFs* fs() { return fs_.get(); }
  bool turn_requested() const { return turn_requested_; }

  // Takes the turns the coordinator asked for and delivers storage completions, until both
  // are quiet (bounded).
  void settle() {
    for (int i = 0; i < 10'000; ++i) {
      bool busy = false;
      if (turn_requested_) {
        turn_requested_ = false;
        c_->turn();
        busy = true;
      }
      if (engine_->in_flight() > 0) {
        engine_->wait();
        // As the server: storage completions are followed by a turn.
        turn_requested_ = turn_requested_ || c_->snapshot_in_progress();
        busy = true;
      }
      if (!busy) return;
    }
    ADD_FAILURE() << "never settled";
  }
  // Storage completions only: durable callbacks run, no turn is taken.
  void complete() {
    for (int i = 0; i < 10'000 && engine_->in_flight() > 0; ++i) engine_->wait();
  }
  // A turn now, asked for or not (as the server's once-a-second tick does).
  void turn() {
    turn_requested_ = false;
    c_->turn();
  }

  uint64_t segment_bytes = 1 << 20;  // before open()

 private:
  std::string dir_;
  CoordinatorOptions options_;
  uint64_t* wall_ms_;
  bool use_faulty_fs_;
  std::unique_ptr<storage::IoEngine> engine_;
  std::unique_ptr<storage::FaultyFs> fs_;
  std::unique_ptr<storage::LocalStore> store_;
  std::unique_ptr<Coordinator> c_;
  bool turn_requested_ = false;
};

}  // namespace cardnode::runtime::testing
