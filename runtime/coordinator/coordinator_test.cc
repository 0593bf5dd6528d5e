// The coordinator through its narrow interfaces (a Nomad-style harness): a real
// LocalStore (WAL + snapshots on a temp dir, io_uring or the fallback, optionally under
// the fault doubles), fake task runners the test finishes by hand, a fake clock, and turns
// taken when the coordinator asks for them.
//
// The property tests generate the interleavings the server really produces — submits,
// placements, cancels, task ends and node changes, with storage completions arriving in
// between — then restart (cleanly, after a kill -9, after a power loss) and compare the
// recovered state with the records the WAL took, replayed into a fresh State: byte for
// byte, and never missing an acknowledged record.
#include "runtime/coordinator/coordinator.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>

#include "runtime/coordinator/snapshot_codec.h"
#include "runtime/coordinator/test_harness.h"
#include "runtime/coordinator/test_records.h"
#include "storage/crash_plan.h"
#include "storage/faulty_engine.h"
#include "storage/faulty_fs.h"
#include "storage/local_store.h"
#include "storage/test_util.h"

namespace cardnode::runtime {
namespace {

using storage::Backend;
using storage::testing::TempDir;
using testing::FakeRunner;

uint64_t seed_base() {
  const char* s = std::getenv("CARDNODE_TEST_SEED");  // NOLINT(concurrency-mt-unsafe)
  uint64_t seed = s != nullptr ? std::strtoull(s, nullptr, 10) : std::random_device{}();
  std::printf("seed %llu (CARDNODE_TEST_SEED to repeat)\n", static_cast<unsigned long long>(seed));
  return seed;
}

// A DurableStore that passes everything through and keeps a copy of every record appended,
// by sequence number: the log the WAL took, for replaying into a fresh State.
class RecordingStore final : public storage::DurableStore {
 public:
  RecordingStore(storage::DurableStore& inner, std::map<uint64_t, std::string>* log)
      : inner_(inner), log_(log) {}
  Result<storage::RecoveryReport> recover(const storage::ChunkFn& c,
                                          const storage::ReplayFn& r) override {
    return inner_.recover(c, r);
  }
  Status reserve(size_t n) override { return inner_.reserve(n); }
  Status append(std::string_view p, storage::DurableCallback cb) override {
    uint64_t seq = inner_.next_sequence();
    auto st = inner_.append(p, std::move(cb));
    if (st) (*log_)[seq] = std::string(p);
    return st;
  }
  uint64_t next_sequence() const override { return inner_.next_sequence(); }
  uint64_t durable_sequence() const override { return inner_.durable_sequence(); }
  uint64_t pending_records() const override { return inner_.pending_records(); }
  bool failed() const override { return inner_.failed(); }
  uint64_t bytes_since_snapshot() const override { return inner_.bytes_since_snapshot(); }
  uint64_t snapshot_bytes() const override { return inner_.snapshot_bytes(); }
  Result<std::unique_ptr<storage::SnapshotSink>> begin_snapshot(uint64_t s) override {
    return inner_.begin_snapshot(s);
  }
  void drain() override { inner_.drain(); }

 private:
  storage::DurableStore& inner_;
  std::map<uint64_t, std::string>* log_;
};

// One "server process": engine (maybe faulty), store, coordinator, runners. Rebuilt on
// every restart over the same directory.
struct Faults {
  storage::CrashPlan* plan = nullptr;
  bool power_loss = false;
  std::function<bool()> keep_sector;
  bool faulty_fs = false;  // a FaultyFs even without a crash plan (injected errors)
  uint64_t segment_bytes = 16 << 10;
  uint64_t pending_bytes_max = 0;  // the WAL's bound on records not yet durable; 0: its default
};

class Harness {
 public:
  Harness(Backend backend, std::string dir, CoordinatorOptions options,
          std::map<uint64_t, std::string>* log, uint64_t* now_ms, Faults faults = {})
      : dir_(std::move(dir)), log_(log), now_ms_(now_ms) {
    std::string skip;
    engine_ = storage::testing::make_engine(backend, 64, &skip);
    if (!engine_) return;
    storage::IoEngine* engine = engine_.get();
    if (faults.plan != nullptr) {
      faulty_engine_ = std::make_unique<storage::FaultyEngine>(*engine_);
      faulty_engine_->set_crash_plan(faults.plan, faults.keep_sector);
      engine = faulty_engine_.get();
    }
    if (faults.plan != nullptr || faults.faulty_fs) {
      (void)::mkdir((dir_ + "/../trash").c_str(), 0755);
      faulty_fs_ = std::make_unique<storage::FaultyFs>(storage::Fs::real(), faults.plan,
                                                       faults.power_loss, dir_ + "/../trash");
    }
    storage::LocalStoreOptions so;
    so.dir = dir_;
    so.wal.segment_bytes = faults.segment_bytes;  // small: rolls and deletions get exercised
    so.wal.prealloc_bytes = 4 << 10;
    if (faults.pending_bytes_max != 0) so.wal.pending_bytes_max = faults.pending_bytes_max;
    so.fs = faulty_fs_.get();
    local_ = std::make_unique<storage::LocalStore>(*engine, so);
    store_ = std::make_unique<RecordingStore>(*local_, log_);
    CoordinatorHooks h;
    h.now_ms = [this] { return *now_ms_; };
    h.request_turn = [this] { turn_requested_ = true; };
    h.fatal = [this](const Error& e) { fatal_.push_back(e); };
    h.jobs_pruned = [this](const std::vector<sched::JobId>& ids) {
      pruned_.insert(ids.begin(), ids.end());
    };
    c_ = std::make_unique<Coordinator>(*store_, options, h);
    engine_used_ = engine;
  }

  // As the server: what the store still owes runs while the coordinator is alive.
  ~Harness() {
    if (c_) {
      c_->stop();
      store_->drain();
    }
    c_.reset();
    store_.reset();
    local_.reset();
  }

  bool ok() const { return engine_ != nullptr; }
  Coordinator& c() { return *c_; }
  storage::IoEngine& engine() { return *engine_used_; }
  FakeRunner& runner(sched::NodeId id) { return runners_[id]; }
  const std::vector<Error>& fatal() const { return fatal_; }
  bool crashed() const { return !fatal_.empty(); }
  const State& state() { return c_->state(); }
  storage::FaultyFs* fs() { return faulty_fs_.get(); }

  // Joins node `i` ("pi-i", identity "board-i") and attaches its runner.
  void join(uint32_t i, std::string name = "") { ASSERT_TRUE(try_join(i, std::move(name))); }
  bool try_join(uint32_t i, std::string name = "") {
    sched::NodeSpec spec;
    spec.name = name.empty() ? "pi-" + std::to_string(i) : name;
    spec.capacity = {2000, 4ull << 30};
    auto id = c_->register_node("board-" + std::to_string(i), spec);
    if (!id) return false;
    c_->attach_runner(*id, &runners_[*id]);
    return true;
  }

  // Takes the turns the coordinator asked for and delivers storage completions, until
  // both are quiet (bounded).
  void settle() {
    for (int i = 0; i < 10'000; ++i) {
      bool busy = false;
      if (turn_requested_) {
        turn_requested_ = false;
        c_->turn();
        busy = true;
      }
      if (engine_used_->in_flight() > 0) {
        engine_used_->wait();
        // As the server: storage completions are followed by a turn (a snapshot goes on).
        turn_requested_ = turn_requested_ || c_->snapshot_in_progress();
        busy = true;
      }
      if (!busy) return;
    }
    ADD_FAILURE() << "never settled";
  }
  // Storage completions only: durable callbacks run, no turn is taken.
  void complete() {
    for (int i = 0; i < 10'000 && engine_used_->in_flight() > 0; ++i) engine_used_->wait();
  }
  bool turn_requested() const { return turn_requested_; }
  // A turn now (what the server's idle handle does for a requested one).
  void turn() {
    turn_requested_ = false;
    c_->turn();
  }
  // One step of the loop: maybe a turn, maybe some completions.
  void poke(std::mt19937_64& rng) {
    if (turn_requested_ && rng() % 2 == 0) {
      turn_requested_ = false;
      c_->turn();
    }
    if (engine_used_->in_flight() > 0 && rng() % 2 == 0) {
      engine_used_->reap();
      turn_requested_ = turn_requested_ || c_->snapshot_in_progress();
    }
  }

 private:
  std::string dir_;
  std::map<uint64_t, std::string>* log_;
  uint64_t* now_ms_;
  std::unique_ptr<storage::IoEngine> engine_;
  std::unique_ptr<storage::FaultyEngine> faulty_engine_;
  std::unique_ptr<storage::FaultyFs> faulty_fs_;
  storage::IoEngine* engine_used_ = nullptr;
  std::unique_ptr<storage::LocalStore> local_;
  std::unique_ptr<RecordingStore> store_;
  std::unique_ptr<Coordinator> c_;
  std::map<sched::NodeId, FakeRunner> runners_;
  std::vector<Error> fatal_;
  std::set<sched::JobId> pruned_;
  bool turn_requested_ = false;
};

// The state the first `n` logged records make, applied to a fresh State.
std::vector<std::string> replayed_state(const std::map<uint64_t, std::string>& log, uint64_t n) {
  State s;
  for (uint64_t seq = 1; seq <= n; ++seq) {
    auto it = log.find(seq);
    EXPECT_NE(it, log.end()) << "record " << seq << " missing from the test's log";
    if (it == log.end()) return {};
    pb::WalRecord r;
    EXPECT_TRUE(r.ParseFromString(it->second));
    auto a = s.apply(r, seq);
    EXPECT_TRUE(a.has_value()) << "record " << seq << ": " << a.error().describe();
  }
  return encode_snapshot(s);
}

pb::JobSpec spec_of(uint32_t count, uint32_t cpu_millis = 1000) {
  pb::JobSpec s;
  s.add_command("true");
  s.set_count(count);
  s.set_cpu_millis(cpu_millis);
  return s;
}

class CoordinatorTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    ASSERT_FALSE(tmp_.path().empty());
    dir_ = tmp_.path() + "/data";
    ASSERT_EQ(::mkdir(dir_.c_str(), 0700), 0);
  }
  std::unique_ptr<Harness> open(Faults faults = {}) {
    auto h = std::make_unique<Harness>(GetParam(), dir_, options_, &log_, &now_ms_, faults);
    if (!h->ok()) return nullptr;
    auto r = h->c().recover();
    EXPECT_TRUE(r) << r.error().describe();
    return h;
  }

  TempDir tmp_;
  std::string dir_;
  CoordinatorOptions options_;
  std::map<uint64_t, std::string> log_;
  uint64_t now_ms_ = 1'700'000'000'000;
};

#define OPEN_OR_SKIP(h)                                               \
  auto h = open();                                                    \
  if (h == nullptr) GTEST_SKIP() << "io_uring is not available here"; \
  (void)0

TEST_P(CoordinatorTest, SubmitIsAcknowledgedOnlyOnceDurable) {
  OPEN_OR_SKIP(h);
  std::optional<Result<sched::JobId>> answer;
  h->c().submit(spec_of(1), [&](Result<sched::JobId> id) { answer = id; });
  EXPECT_FALSE(answer.has_value()) << "answered before the WAL made it durable";
  EXPECT_EQ(h->c().state().cluster().last_job_id(), 1u);  // applied at once, in WAL order
  h->settle();
  ASSERT_TRUE(answer.has_value());
  ASSERT_TRUE(*answer);
  EXPECT_EQ(**answer, 1u);
}

TEST_P(CoordinatorTest, ATaskStartsOnlyOnceItsPlacementIsDurable) {
  OPEN_OR_SKIP(h);
  h->join(0);
  h->c().submit(spec_of(2), [](Result<sched::JobId>) {});
  h->complete();
  h->c().turn();  // placements are applied and logged now ...
  EXPECT_EQ(h->c().state().cluster().node(0)->running, 2u);
  EXPECT_EQ(h->runner(0).starts, 0u);  // ... but no process starts before they are durable
  h->complete();
  EXPECT_EQ(h->runner(0).starts, 2u);
}

// A submitted job is placed in the same loop turn, before its record is durable: its first
// TaskStarted records are appended right behind JobSubmitted (in the server, whose WAL
// holds appends until the turn ends, they share one batch and one fdatasync: see
// WalTest.HeldAppendsWaitForFlushAndShareABatch). The reply and the spawns wait for the
// records to be durable, and come together.
TEST_P(CoordinatorTest, ASubmitIsPlacedInTheSameTurnAndStartsWithItsReply) {
  OPEN_OR_SKIP(h);
  h->join(0);
  h->settle();
  std::optional<Result<sched::JobId>> reply;
  h->c().submit(spec_of(2), [&](Result<sched::JobId> r) { reply = r; });
  ASSERT_TRUE(h->turn_requested()) << "no turn asked for before the submit is durable";
  h->turn();
  EXPECT_EQ(h->c().state().cluster().node(0)->running, 2u);
  EXPECT_FALSE(reply.has_value());
  EXPECT_EQ(h->runner(0).starts, 0u);
  h->complete();
  ASSERT_TRUE(reply.has_value());
  EXPECT_TRUE(*reply);
  EXPECT_EQ(h->runner(0).starts, 2u);
}

TEST_P(CoordinatorTest, FinalAnswersWaitForTheRecordThatDecidedThem) {
  OPEN_OR_SKIP(h);
  h->join(0);
  h->c().submit(spec_of(1), [](Result<sched::JobId>) {});
  h->settle();
  std::optional<Status> waited;
  h->c().wait_job(1, [&](Status st) { waited = st; });
  h->settle();
  ASSERT_EQ(h->runner(0).running.size(), 1u);
  ASSERT_TRUE(h->runner(0).end({1, 0}, TaskExit{pb::TASK_SUCCEEDED, 0, 0}));
  EXPECT_EQ(h->c().state().cluster().job(1)->state, sched::JobState::kSucceeded);
  EXPECT_FALSE(waited.has_value()) << "a final state was reported before it was durable";
  bool read = false;
  ASSERT_TRUE(h->c().when_durable([&] { read = true; }));
  EXPECT_FALSE(read);
  h->settle();
  ASSERT_TRUE(waited.has_value());
  EXPECT_TRUE(*waited);
  EXPECT_TRUE(read);
}

// Back-pressure from the WAL refuses the request with a clear error and changes nothing;
// the server stays up and the next request is served.
TEST_P(CoordinatorTest, AFullWalQueueRefusesWithoutChangingAnything) {
  // A queue that holds about one small record: submits in the same turn are refused.
  std::string skip;
  auto engine = storage::testing::make_engine(GetParam(), 64, &skip);
  if (!engine) GTEST_SKIP() << skip;
  storage::LocalStoreOptions so;
  so.dir = dir_;
  so.wal.pending_bytes_max = 120;
  storage::LocalStore store(*engine, so);
  CoordinatorHooks hooks;
  hooks.now_ms = [] { return uint64_t{1}; };
  hooks.request_turn = [] {};
  hooks.fatal = [](const Error& e) { ADD_FAILURE() << "fatal: " << e.describe(); };
  Coordinator c(store, options_, hooks);
  ASSERT_TRUE(c.recover());
  std::vector<Result<sched::JobId>> answers;
  for (int i = 0; i < 4; ++i) {
    c.submit(spec_of(1), [&](Result<sched::JobId> id) { answers.push_back(id); });
  }
  ASSERT_FALSE(answers.empty());
  const Result<sched::JobId>& refused = answers.front();
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, Errc::kBusy);
  EXPECT_NE(refused.error().message.find("busy"), std::string::npos);
  const uint64_t applied = c.state().cluster().last_job_id();
  EXPECT_GE(applied, 1u);
  EXPECT_LT(applied, 4u);
  EXPECT_EQ(c.stats().refused_busy, 4u - applied);
  store.drain();
  EXPECT_EQ(answers.size(), 4u);
  c.submit(spec_of(1), [&](Result<sched::JobId> id) { answers.push_back(id); });
  store.drain();
  ASSERT_EQ(answers.size(), 5u);
  ASSERT_TRUE(answers.back());
  EXPECT_EQ(*answers.back(), applied + 1);  // refused ids were never used
}

// Cancelled while its placement was still on the way to the disk: no process ever starts.
TEST_P(CoordinatorTest, ATaskCancelledBeforeItsStartIsDurableNeverRuns) {
  OPEN_OR_SKIP(h);
  h->join(0);
  h->c().submit(spec_of(1), [](Result<sched::JobId>) {});
  h->complete();
  h->c().turn();  // the placement is applied and on its way
  std::optional<Result<uint32_t>> cancelled;
  h->c().cancel(1, [&](Result<uint32_t> n) { cancelled = n; });
  h->settle();
  EXPECT_EQ(h->runner(0).starts, 0u);
  ASSERT_TRUE(cancelled && *cancelled);
  EXPECT_EQ(h->c().state().cluster().job(1)->state, sched::JobState::kCancelled);
  EXPECT_EQ(h->c().state().cluster().node(0)->running, 0u);
}

// Node 0 with a runner that can hold; a job of `count` tasks submitted, durable, and
// placed: its starts are held, their TaskStarted records on their way to disk.
void place_held(Harness& h, uint32_t count) {
  h.join(0);
  h.runner(0).can_hold = true;
  h.c().submit(spec_of(count), [](Result<sched::JobId>) {});
  h.complete();
  h.c().turn();
}

// A runner that can hold a start (the server's own executor) gets the process made at
// placement, while TaskStarted goes to disk, and the word to run the command only once the
// record is durable: the spawn's work overlaps the fdatasync, the guarantee stays.
TEST_P(CoordinatorTest, AHoldingRunnerStartsAtPlacementAndRunsOnlyOnceDurable) {
  OPEN_OR_SKIP(h);
  place_held(*h, 2);
  EXPECT_EQ(h->runner(0).held_starts, 2u);
  EXPECT_EQ(h->runner(0).held.size(), 2u);
  EXPECT_EQ(h->runner(0).released, 0u) << "released before the placement was durable";
  h->complete();
  EXPECT_EQ(h->runner(0).released, 2u);
  EXPECT_EQ(h->runner(0).starts, 0u);  // not started a second time
  ASSERT_TRUE(h->runner(0).end({1, 0}, TaskExit{pb::TASK_SUCCEEDED, 0, 0}));
  ASSERT_TRUE(h->runner(0).end({1, 1}, TaskExit{pb::TASK_SUCCEEDED, 0, 0}));
  h->settle();
  EXPECT_EQ(h->c().state().cluster().job(1)->state, sched::JobState::kSucceeded);
}

// The server's own board (a runner that takes standbys) running a 2-core board full of
// a short array's 1-core tasks: after the first end, 1.2 runs and 1.3, 1.4 stand by.
void fill_with_standbys(Harness& h, uint64_t* now_ms) {
  // A store with a tight queue (Faults::pending_bytes_max) takes placements a turn at a
  // time, and the harness takes a turn only when asked: turns until `done`, bounded.
  auto turns_until = [&h](const std::function<bool()>& done) {
    h.settle();
    for (int i = 0; i < 8 && !done(); ++i) {
      h.turn();
      h.settle();
    }
  };
  h.runner(0).standbys = true;
  h.join(0);
  h.settle();
  h.c().submit(spec_of(8), [](Result<sched::JobId>) {});
  turns_until([&h] { return h.runner(0).starts >= 2; });
  ASSERT_EQ(h.runner(0).starts, 2u);
  *now_ms += 5;
  ASSERT_TRUE(h.runner(0).end({1, 0}, TaskExit{pb::TASK_SUCCEEDED, 0, 0}));
  turns_until([&h] { return h.c().stats().standby_placements >= 2 && h.runner(0).starts >= 3; });
  ASSERT_EQ(h.c().stats().standby_placements, 2u);
  EXPECT_EQ(h.runner(0).starts, 3u) << "standbys are not started when placed";
  EXPECT_TRUE(h.c().state().cluster().is_standby({1, 3}));
  EXPECT_TRUE(h.c().state().cluster().is_standby({1, 4}));
}

// A standby runs only once its TaskStarted is durable and an end on its board gave it room,
// whichever comes last, and exactly once.
TEST_P(CoordinatorTest, AStandbyStartsOnceDurableAndPromotedWhicheverIsLast) {
  OPEN_OR_SKIP(h);
  ASSERT_NO_FATAL_FAILURE(fill_with_standbys(*h, &now_ms_));
  // Durable first: the end promotes 1.3, which starts at the next turn, not inside the
  // runner's exit callback. That turn places 1.5 in the freed standby place; its record
  // stays on its way (no storage completion is delivered until complete()).
  ASSERT_TRUE(h->runner(0).end({1, 1}, TaskExit{pb::TASK_SUCCEEDED, 0, 0}));
  EXPECT_FALSE(h->runner(0).running.contains({1, 3}));
  ASSERT_TRUE(h->turn_requested());
  h->turn();
  EXPECT_TRUE(h->runner(0).running.contains({1, 3}));
  EXPECT_EQ(h->runner(0).starts, 4u);
  ASSERT_TRUE(h->c().state().cluster().is_standby({1, 5}));
  ASSERT_TRUE(h->runner(0).end({1, 2}, TaskExit{pb::TASK_SUCCEEDED, 0, 0}));
  h->turn();
  EXPECT_TRUE(h->runner(0).running.contains({1, 4}));
  // Promoted first: 1.3's end gives 1.5 the room, but its record is not durable yet.
  ASSERT_TRUE(h->runner(0).end({1, 3}, TaskExit{pb::TASK_SUCCEEDED, 0, 0}));
  h->turn();
  EXPECT_FALSE(h->c().state().cluster().is_standby({1, 5}));
  EXPECT_FALSE(h->runner(0).running.contains({1, 5})) << "started before its record is durable";
  h->complete();
  EXPECT_TRUE(h->runner(0).running.contains({1, 5}));
  // The rest runs to the end, each task once (FakeRunner fails a second start).
  for (int round = 0; round < 50 && !h->runner(0).running.empty(); ++round) {
    ASSERT_TRUE(
        h->runner(0).end(h->runner(0).running.begin()->first, TaskExit{pb::TASK_SUCCEEDED, 0, 0}));
    h->settle();
  }
  EXPECT_EQ(h->c().state().cluster().job(1)->state, sched::JobState::kSucceeded);
  EXPECT_EQ(h->runner(0).starts, 8u);
  EXPECT_EQ(encode_snapshot(h->state()), replayed_state(log_, log_.rbegin()->first));
}

// A board that stops taking work (here: throttled) cannot promote its standbys: they end
// there, requeue-free. One whose end waits behind a full store is never started, even when
// an end logged before it promotes it (else a requeued copy could run beside it).
TEST_P(CoordinatorTest, AStrandedStandbyEndsAndNeverStartsWhileItsEndWaits) {
  Faults faults;
  // Records of 17-45 bytes with their headers: a job's (45) or a small one (17) waiting for
  // the disk and then no end with usage (38); one such end, and then no other end (23).
  faults.pending_bytes_max = 50;
  auto h = std::make_unique<Harness>(GetParam(), dir_, options_, &log_, &now_ms_, faults);
  if (!h->ok()) GTEST_SKIP() << "io_uring is not available here";
  ASSERT_TRUE(h->c().recover());
  ASSERT_NO_FATAL_FAILURE(fill_with_standbys(*h, &now_ms_));
  // A record on its way to the disk (an undrain, which changes nothing) fills the queue ...
  const uint64_t refused = h->c().stats().refused_busy;
  h->c().drain("pi-0", /*undrain=*/true, 0, [](Status) {});
  ASSERT_EQ(h->c().stats().refused_busy, refused);
  // ... so 1.1's end waits, and so do the standbys' once the board is throttled.
  const TaskUsage used{120'000, 30'000, 5 << 20, 250'000};
  ASSERT_TRUE(h->runner(0).end({1, 1}, TaskExit{pb::TASK_SUCCEEDED, 0, 0, false, used}));
  EXPECT_EQ(h->c().report_heat(0, std::nullopt, /*throttled=*/true, false),
            sched::NodeHold::kThrottled);
  h->turn();
  EXPECT_EQ(h->c().stats().outcomes_deferred, 3u);
  // The disk catches up: 1.1's end is logged and promotes 1.3 (the hold is not durable:
  // replay could not see it), whose own end is refused for now.
  h->complete();
  h->turn();
  EXPECT_GE(h->c().stats().standby_promotions, 1u);
  EXPECT_FALSE(h->runner(0).running.contains({1, 3})) << "a standby ended already was started";
  EXPECT_EQ(h->runner(0).starts, 3u);
  for (int i = 0; i < 10; ++i) {
    h->complete();
    h->turn();
  }
  const sched::Job* job = h->c().state().cluster().job(1);
  for (uint32_t i : {3u, 4u}) {
    EXPECT_EQ(job->tasks[i].state, sched::TaskState::kQueued) << i;
    EXPECT_EQ(job->tasks[i].lost_free, 1u) << i;
  }
  EXPECT_TRUE(h->c().state().cluster().node(0)->standby.empty());
  EXPECT_EQ(h->runner(0).starts, 3u) << "nothing new starts on a throttled board";
}

// Heat holds are not durable, so the scheduler promotes on a held board as anywhere: the
// promoted standby then ends instead of starting there, and the rest end where they stand.
TEST_P(CoordinatorTest, AStandbyPromotedOnAHeldBoardEndsInsteadOfStarting) {
  OPEN_OR_SKIP(h);
  ASSERT_NO_FATAL_FAILURE(fill_with_standbys(*h, &now_ms_));
  EXPECT_EQ(h->c().report_heat(0, std::nullopt, /*throttled=*/true, false),
            sched::NodeHold::kThrottled);
  ASSERT_TRUE(h->runner(0).end({1, 1}, TaskExit{pb::TASK_SUCCEEDED, 0, 0}));
  EXPECT_EQ(h->c().stats().standby_promotions, 1u);
  h->settle();
  EXPECT_FALSE(h->runner(0).running.contains({1, 3})) << "started on a throttled board";
  EXPECT_EQ(h->runner(0).starts, 3u);
  const sched::Job* job = h->c().state().cluster().job(1);
  for (uint32_t i : {3u, 4u}) {
    EXPECT_EQ(job->tasks[i].state, sched::TaskState::kQueued) << i;
    EXPECT_EQ(job->tasks[i].lost_free, 1u) << i;
  }
}

// A drain's deadline that passes while a placement is on its way to the disk stops it
// there: once durable it ends requeue-free instead of starting past the deadline.
TEST_P(CoordinatorTest, APlacementStoppedByADrainDeadlineBeforeItIsDurableNeverStarts) {
  OPEN_OR_SKIP(h);
  h->join(0);
  h->settle();
  h->c().submit(spec_of(2), [](Result<sched::JobId>) {});
  h->complete();
  h->turn();  // both placed and logged, not durable yet
  ASSERT_EQ(h->c().state().cluster().node(0)->running, 2u);
  h->c().drain("pi-0", false, /*deadline_ms=*/1, [](Status) {});
  now_ms_ += 5;
  h->turn();  // past the deadline: both stopped where they are (no process yet)
  EXPECT_EQ(h->runner(0).starts, 0u);
  h->complete();
  h->settle();
  EXPECT_EQ(h->runner(0).starts, 0u) << "started after its drain's deadline";
  const sched::Job* job = h->c().state().cluster().job(1);
  for (uint32_t i : {0u, 1u}) {
    EXPECT_EQ(job->tasks[i].state, sched::TaskState::kQueued) << i;
    EXPECT_EQ(job->tasks[i].lost_free, 1u) << i;
  }
}

// A draining board promotes no standby; they end requeue-free, never started.
TEST_P(CoordinatorTest, ADrainEndsStandbysWithoutStartingThem) {
  OPEN_OR_SKIP(h);
  ASSERT_NO_FATAL_FAILURE(fill_with_standbys(*h, &now_ms_));
  std::optional<Status> drained;
  h->c().drain("pi-0", false, 0, [&](Status st) { drained = st; });
  h->settle();
  ASSERT_TRUE(drained && *drained);
  ASSERT_TRUE(h->runner(0).end({1, 1}, TaskExit{pb::TASK_SUCCEEDED, 0, 0}));
  h->settle();
  EXPECT_EQ(h->runner(0).starts, 3u);
  const sched::Job* job = h->c().state().cluster().job(1);
  for (uint32_t i : {3u, 4u}) {
    EXPECT_EQ(job->tasks[i].state, sched::TaskState::kQueued) << i;
    EXPECT_EQ(job->tasks[i].lost_free, 1u) << i;
  }
  EXPECT_TRUE(h->c().state().cluster().node(0)->standby.empty());
}

// A cancel ends standbys where they are: no start, no kill sent for them; the running
// tasks are killed as always.
TEST_P(CoordinatorTest, ACancelledStandbyEndsWithoutEverStarting) {
  OPEN_OR_SKIP(h);
  ASSERT_NO_FATAL_FAILURE(fill_with_standbys(*h, &now_ms_));
  std::optional<Result<uint32_t>> cancelled;
  h->c().cancel(1, [&](Result<uint32_t> n) { cancelled = n; });
  h->settle();
  ASSERT_TRUE(cancelled && *cancelled);
  EXPECT_EQ(**cancelled, 4u);
  EXPECT_EQ(h->runner(0).kills, (std::set<std::pair<uint64_t, uint32_t>>{{1, 1}, {1, 2}}));
  const sched::Job* job = h->c().state().cluster().job(1);
  EXPECT_EQ(job->tasks[3].state, sched::TaskState::kCancelled);
  EXPECT_EQ(job->tasks[4].state, sched::TaskState::kCancelled);
  ASSERT_TRUE(h->runner(0).end({1, 1}, TaskExit{pb::TASK_CANCELLED, 0, 0}));
  ASSERT_TRUE(h->runner(0).end({1, 2}, TaskExit{pb::TASK_CANCELLED, 0, 0}));
  h->settle();
  EXPECT_EQ(h->runner(0).starts, 3u);
  EXPECT_EQ(h->c().state().cluster().job(1)->state, sched::JobState::kCancelled);
  EXPECT_EQ(h->c().state().cluster().node(0)->running, 0u);
  EXPECT_TRUE(h->c().state().cluster().node(0)->standby.empty());
}

// A clean stop ends standbys as it ends running tasks: lost, requeue-free, so a restart
// runs them with their lost budget untouched.
TEST_P(CoordinatorTest, ACleanStopEndsStandbysRequeueFree) {
  {
    OPEN_OR_SKIP(h);
    ASSERT_NO_FATAL_FAILURE(fill_with_standbys(*h, &now_ms_));
    h->c().stop();
    h->settle();
    EXPECT_TRUE(h->c().state().cluster().node(0)->standby.empty());
  }
  OPEN_OR_SKIP(h);
  const sched::Job* job = h->c().state().cluster().job(1);
  for (uint32_t i : {3u, 4u}) {
    EXPECT_EQ(job->tasks[i].state, sched::TaskState::kQueued) << i;
    EXPECT_EQ(job->tasks[i].lost_free, 1u) << i;
    EXPECT_EQ(job->tasks[i].lost, 0u) << i;
  }
}

// Cancelled while held: the runner is told to kill it (never to release it), and its end
// comes back through the runner as any end does.
TEST_P(CoordinatorTest, AHeldTaskCancelledBeforeItsStartIsDurableIsKilledNotReleased) {
  OPEN_OR_SKIP(h);
  place_held(*h, 1);
  ASSERT_EQ(h->runner(0).held.size(), 1u);
  std::optional<Result<uint32_t>> cancelled;
  h->c().cancel(1, [&](Result<uint32_t> n) { cancelled = n; });
  h->settle();
  EXPECT_EQ(h->runner(0).released, 0u);
  EXPECT_TRUE(h->runner(0).kills.contains({1, 0}));
  ASSERT_TRUE(h->runner(0).end({1, 0}, TaskExit{pb::TASK_CANCELLED, 0, 0}));
  h->settle();
  ASSERT_TRUE(cancelled && *cancelled);
  EXPECT_EQ(h->c().state().cluster().job(1)->state, sched::JobState::kCancelled);
  EXPECT_EQ(h->c().state().cluster().node(0)->running, 0u);
}

// The node's runner was replaced while a task was held by the old one (a second board
// with the same identity): the held process is stopped where it is, never released, and
// not started again on the new runner by the same dispatch.
TEST_P(CoordinatorTest, AHeldTaskWhoseRunnerWasReplacedIsStoppedWhereItIsHeld) {
  OPEN_OR_SKIP(h);
  place_held(*h, 1);
  ASSERT_EQ(h->runner(0).held.size(), 1u);
  FakeRunner other;
  h->c().attach_runner(0, &other);
  h->complete();
  EXPECT_EQ(h->runner(0).released, 0u);
  EXPECT_TRUE(h->runner(0).kills.contains({1, 0}));
  EXPECT_EQ(other.starts, 0u);
  ASSERT_TRUE(h->runner(0).end({1, 0}, TaskExit{pb::TASK_LOST, 0, 0, true}));
  h->settle();
  EXPECT_EQ(other.starts, 1u);  // requeued, and run by the node's runner now
  h->c().detach_runner(0);
}

// Detached while it holds a task (its board went away): the held process is stopped
// then, while the runner is alive, and is never released.
TEST_P(CoordinatorTest, ADetachedRunnersHeldTaskIsStoppedThere) {
  OPEN_OR_SKIP(h);
  place_held(*h, 1);
  ASSERT_EQ(h->runner(0).held.size(), 1u);
  h->c().detach_runner(0);
  EXPECT_TRUE(h->runner(0).kills.contains({1, 0}));
  h->complete();
  EXPECT_EQ(h->runner(0).released, 0u);
}

// A task's end that the store refuses for a while (any error: here the disk quota at every
// segment roll) waits, holds its capacity, and is logged once the store takes it.
TEST_P(CoordinatorTest, ATaskEndTheStoreRefusesWaitsAndIsLoggedLater) {
  Faults faults;
  faults.faulty_fs = true;
  faults.segment_bytes = 160;  // about one record per segment: every append rolls
  auto h = std::make_unique<Harness>(GetParam(), dir_, options_, &log_, &now_ms_, faults);
  if (!h->ok()) GTEST_SKIP() << "io_uring is not available here";
  ASSERT_TRUE(h->c().recover());
  h->join(0);
  h->c().submit(spec_of(1), [](Result<sched::JobId>) {});
  h->settle();
  ASSERT_EQ(h->runner(0).running.size(), 1u);
  h->fs()->fail_always("open", EDQUOT);
  ASSERT_TRUE(h->runner(0).end({1, 0}, TaskExit{pb::TASK_SUCCEEDED, 0, 0}));
  h->settle();
  EXPECT_EQ(h->c().state().cluster().job(1)->tasks[0].state, sched::TaskState::kRunning);
  EXPECT_GE(h->c().stats().outcomes_deferred, 1u);
  h->fs()->stop_failing("open");
  h->c().turn();
  h->settle();
  EXPECT_EQ(h->c().state().cluster().job(1)->state, sched::JobState::kSucceeded);
  EXPECT_EQ(h->c().state().cluster().node(0)->running, 0u);
}

// A clean stop ends its tasks lost and requeue-free: the flag is in the record, so a
// restart replays exactly that and the task's lost budget is untouched; an end the state
// learns at a start (after a crash) counts.
TEST_P(CoordinatorTest, ACleanStopsEndsAreRequeueFreeInTheLogToo) {
  {
    OPEN_OR_SKIP(h);
    h->join(0);
    h->c().submit(spec_of(2), [](Result<sched::JobId>) {});
    h->settle();
    ASSERT_EQ(h->runner(0).running.size(), 2u);
    h->c().stop();
    ASSERT_TRUE(h->runner(0).end({1, 0}, TaskExit{pb::TASK_LOST, 0, 0, /*requeue_free=*/true}));
    h->c().end_running_tasks(0, /*requeue_free=*/true);  // the grace ran out for task 1
    h->settle();
    for (uint32_t i = 0; i < 2; ++i) {
      const sched::Task& t = h->state().cluster().job(1)->tasks[i];
      EXPECT_EQ(t.state, sched::TaskState::kQueued);
      EXPECT_EQ(t.lost, 0u);
      EXPECT_EQ(t.lost_free, 1u);
    }
  }
  pb::WalRecord last;
  ASSERT_TRUE(last.ParseFromString(log_.rbegin()->second));
  EXPECT_TRUE(last.task_finished().requeue_free());
  auto h = open();
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(encode_snapshot(h->state()), replayed_state(log_, log_.rbegin()->first));
  EXPECT_EQ(h->state().cluster().job(1)->tasks[1].lost_free, 1u);
  h->join(0);
  h->settle();
  ASSERT_EQ(h->runner(0).running.size(), 2u);
  h->runner(0).running.clear();  // as a start after a crash: the processes are gone ...
  h->c().end_running_tasks(0);   // ... and this loss counts
  const sched::Task& t = h->state().cluster().job(1)->tasks[0];
  EXPECT_EQ(t.state, sched::TaskState::kQueued);
  EXPECT_EQ(t.attempts, 2u);
  EXPECT_EQ(t.lost, 1u);
  EXPECT_EQ(t.lost_free, 1u);
  h->settle();
}

// A running attempt's start time is kept; its wall time, as its runner reports it, is logged
// with its end, counted for /metrics, and replayed after a restart.
TEST_P(CoordinatorTest, AnAttemptsStartAndWallTimeAreKeptLoggedAndReplayed) {
  {
    OPEN_OR_SKIP(h);
    h->join(0);
    h->c().submit(spec_of(1), [](Result<sched::JobId>) {});
    h->settle();
    ASSERT_EQ(h->runner(0).running.size(), 1u);
    EXPECT_EQ(h->state().cluster().job(1)->started_ms,
              (std::map<uint32_t, uint64_t>{{0, now_ms_}}));
    TaskExit e{pb::TASK_SUCCEEDED, 0, 0};
    e.usage.wall_us = 1'500'000;
    ASSERT_TRUE(h->runner(0).end({1, 0}, e));
    h->settle();
    EXPECT_TRUE(h->state().cluster().job(1)->started_ms.empty());
    EXPECT_EQ(h->state().cluster().job(1)->usage[0].wall_ms, 1'500u);
    const CoordinatorStats& stats = h->c().stats();
    EXPECT_EQ(stats.task_duration_buckets[1], 1u);  // (1 s, 10 s]
    EXPECT_EQ(stats.task_duration_sum_ms, 1'500u);
  }
  pb::WalRecord last;
  ASSERT_TRUE(last.ParseFromString(log_.rbegin()->second));
  EXPECT_EQ(last.task_finished().usage().wall_ms(), 1'500u);
  auto h = open();
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(h->state().cluster().job(1)->usage[0].wall_ms, 1'500u);
}

// A board that lost its identity file (or a new board under an old name) retires the old
// node instead of failing to start; the old node's history stays with its id.
TEST_P(CoordinatorTest, ANewBoardUnderAnOldNameRetiresTheOldNode) {
  {
    OPEN_OR_SKIP(h);
    h->join(0, "pi");
    h->c().submit(spec_of(2, 500), [](Result<sched::JobId>) {});
    h->settle();
    ASSERT_TRUE(h->runner(0).end({1, 0}, TaskExit{pb::TASK_SUCCEEDED, 0, 0}));
    h->settle();
  }
  OPEN_OR_SKIP(h);
  h->join(7, "pi");  // identity board-7, same name
  h->settle();
  const sched::Cluster& c = h->c().state().cluster();
  EXPECT_TRUE(c.node(0)->removed);
  EXPECT_EQ(c.node_by_name("pi")->id, 1u);
  EXPECT_EQ(c.job(1)->tasks[0].node, 0u);  // history keeps the old node
  EXPECT_EQ(c.job(1)->tasks[0].state, sched::TaskState::kSucceeded);
  // The task that was running there ended lost and runs again on the new node.
  EXPECT_EQ(c.job(1)->tasks[1].attempts, 2u);
  EXPECT_EQ(h->runner(1).starts, 1u);
}

// Renaming the board between two runs keeps every finished task finished (the node is
// its identity), and nothing runs twice.
TEST_P(CoordinatorTest, ARenamedBoardKeepsItsHistory) {
  {
    OPEN_OR_SKIP(h);
    h->join(0, "raspberrypi");
    h->c().submit(spec_of(3, 500), [](Result<sched::JobId>) {});
    h->settle();
    for (int i = 0; i < 3; ++i) {
      ASSERT_TRUE(h->runner(0).end({1, uint32_t(i)}, TaskExit{pb::TASK_SUCCEEDED, 0, 0}));
    }
    h->settle();
    ASSERT_EQ(h->c().state().cluster().job(1)->state, sched::JobState::kSucceeded);
  }
  OPEN_OR_SKIP(h);
  h->join(0, "pi-kitchen");
  h->c().end_running_tasks(0);
  h->settle();
  const sched::Job* job = h->c().state().cluster().job(1);
  EXPECT_EQ(job->state, sched::JobState::kSucceeded);
  for (const auto& t : job->tasks) EXPECT_EQ(t.attempts, 1u);
  EXPECT_EQ(h->runner(0).starts, 0u);
  EXPECT_EQ(h->c().state().cluster().node(0)->spec.name, "pi-kitchen");
  EXPECT_EQ(h->c().state().cluster().nodes().size(), 1u);
}

TEST_P(CoordinatorTest, RetentionPrunesOldestFinishedAndSaysSo) {
  options_.keep_finished = 2;
  OPEN_OR_SKIP(h);
  h->join(0);
  for (int i = 0; i < 5; ++i) {
    h->c().submit(spec_of(1), [](Result<sched::JobId>) {});
    h->settle();
    ASSERT_TRUE(h->runner(0).end({uint64_t(i + 1), 0}, TaskExit{pb::TASK_SUCCEEDED, 0, 0}));
    h->settle();
    ++now_ms_;
  }
  h->c().turn();
  h->settle();
  EXPECT_EQ(h->c().state().cluster().jobs().size(), 2u);
  EXPECT_NE(h->c().state().cluster().job(5), nullptr);
  EXPECT_NE(h->c().state().cluster().job(4), nullptr);
  Error e = h->c().missing_job(1);
  EXPECT_EQ(e.code, Errc::kNotFound);
  EXPECT_NE(e.message.find("pruned"), std::string::npos) << e.message;
  EXPECT_EQ(h->c().missing_job(9).message, "no job 9");
  std::optional<Result<sched::JobId>> next;
  h->c().submit(spec_of(1), [&](Result<sched::JobId> id) { next = id; });
  h->settle();
  EXPECT_EQ(**next, 6u);  // ids are never reused
  // By age: keep 100, but only for 10 s.
  h.reset();
  options_.keep_finished = 100;
  options_.keep_finished_for_ms = 10'000;
  auto h2 = open();
  EXPECT_EQ(h2->c().state().cluster().last_job_id(), 6u);
  now_ms_ += 60'000;
  h2->c().turn();
  h2->settle();
  EXPECT_EQ(h2->c().state().cluster().job(5), nullptr);
  EXPECT_NE(h2->c().state().cluster().job(6), nullptr);  // never finished
}

// `run --wait` submits, then asks WaitJob: with --keep-finished 0 a job that ends in
// between must still be there for it (seen: "job 8 was pruned" for a 1 ms task).
TEST_P(CoordinatorTest, AJobItsClientWillWaitForIsKeptUntilItAsks) {
  options_.keep_finished = 0;
  OPEN_OR_SKIP(h);
  h->join(0);
  h->c().submit(
      spec_of(1), [](Result<sched::JobId>) {}, /*then_wait=*/true);  // job 1
  h->c().submit(
      spec_of(1), [](Result<sched::JobId>) {}, /*then_wait=*/false);  // job 2
  h->settle();
  ASSERT_TRUE(h->runner(0).end({1, 0}, TaskExit{pb::TASK_SUCCEEDED, 0, 0}));
  ASSERT_TRUE(h->runner(0).end({2, 0}, TaskExit{pb::TASK_SUCCEEDED, 0, 0}));
  h->settle();
  h->c().turn();
  h->settle();
  EXPECT_NE(h->c().state().cluster().job(1), nullptr);  // its client has not asked yet
  EXPECT_EQ(h->c().state().cluster().job(2), nullptr);  // no one said they would wait
  std::optional<Status> answer;
  h->c().wait_job(1, [&](Status st) { answer = st; });
  h->settle();
  ASSERT_TRUE(answer.has_value());
  EXPECT_TRUE(answer->has_value());
  h->c().turn();  // answered: the next turn prunes it
  h->settle();
  EXPECT_EQ(h->c().state().cluster().job(1), nullptr);

  // A client that said it would wait and never asks holds its job only so long.
  h->c().submit(
      spec_of(1), [](Result<sched::JobId>) {}, /*then_wait=*/true);  // job 3
  h->settle();
  ASSERT_TRUE(h->runner(0).end({3, 0}, TaskExit{pb::TASK_SUCCEEDED, 0, 0}));
  h->settle();
  h->c().turn();
  h->settle();
  EXPECT_NE(h->c().state().cluster().job(3), nullptr);
  now_ms_ += Coordinator::kThenWaitHoldMs;
  h->c().turn();
  h->settle();
  EXPECT_EQ(h->c().state().cluster().job(3), nullptr);
}

// The heart of guarantee 6: live apply order is WAL order. Random interleavings of
// everything the server does, with clean restarts in between; after each restart the
// state is exactly what the logged records make, and nothing acknowledged is missing.
TEST_P(CoordinatorTest, InterleavingsReplayToExactlyTheLiveState) {
  options_.snapshot_wal_bytes_min = 2048;  // snapshots and compaction all along
  options_.keep_finished = 20;
  const uint64_t base = seed_base();
  uint64_t standbys = 0;
  for (uint64_t seed = base; seed < base + 6; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    log_.clear();
    std::filesystem::remove_all(dir_);
    ASSERT_EQ(::mkdir(dir_.c_str(), 0700), 0);
    std::mt19937_64 rng(seed);
    std::set<sched::JobId> acked;
    uint64_t snapshots = 0;
    for (int run = 0; run < 4; ++run) {
      OPEN_OR_SKIP(h);
      // The state recovered is the state the logged records make.
      ASSERT_EQ(encode_snapshot(h->c().state()),
                replayed_state(log_, h->c().state().applied_seq()));
      for (sched::JobId id : acked) {
        EXPECT_TRUE(h->c().state().cluster().job(id) != nullptr || h->c().state().pruned(id))
            << "acknowledged job " << id << " lost";
      }
      h->runner(0).standbys = true;  // as the server's own board: standbys there
      for (uint32_t n = 0; n < 3; ++n)
        h->join(n, "pi-" + std::to_string(n) + "-" + std::to_string(run));
      for (const auto& node : h->c().state().cluster().nodes()) h->c().end_running_tasks(node.id);
      for (int step = 0; step < 300; ++step) {
        ++now_ms_;
        switch (rng() % 6) {
          case 0:
          case 1:
            // Odd seeds: one array at a time, as standbys need (a job waiting alone).
            if (seed % 2 == 1 && h->c().state().cluster().queued_tasks() > 0) break;
            h->c().submit(spec_of((seed % 2 == 1 ? 6 : 1) + uint32_t(rng() % 4),
                                  500 * (1 + uint32_t(rng() % 3))),
                          [&acked](Result<sched::JobId> id) {
                            if (id) acked.insert(*id);
                          });
            break;
          case 2: {
            sched::JobId last = h->c().state().cluster().last_job_id();
            if (last > 0) h->c().cancel(1 + rng() % last, [](Result<uint32_t>) {});
            break;
          }
          case 3:
          case 4: {
            FakeRunner& r = h->runner(sched::NodeId(rng() % 3));
            if (r.running.empty()) break;
            auto it = std::next(r.running.begin(), long(rng() % r.running.size()));
            static constexpr pb::TaskState kEnds[] = {pb::TASK_SUCCEEDED, pb::TASK_FAILED,
                                                      pb::TASK_CANCELLED, pb::TASK_LOST};
            r.end(it->first, TaskExit{kEnds[rng() % 4], int32_t(rng() % 3), 0});
            break;
          }
          default: h->c().turn(); break;
        }
        h->poke(rng);
      }
      h->settle();
      snapshots += h->c().stats().snapshots_written;
      standbys += h->c().stats().standby_promotions;
      ASSERT_TRUE(h->fatal().empty());
      // Everything applied is durable now: a replay must give exactly this state.
      ASSERT_EQ(encode_snapshot(h->c().state()),
                replayed_state(log_, h->c().state().applied_seq()));
    }
    EXPECT_GT(snapshots, 0u) << "the test meant to cross snapshots";
  }
  std::printf("standbys promoted: %llu\n", static_cast<unsigned long long>(standbys));
  // The fallback completes every write at once, so its runs place many tasks; io_uring's
  // completions come when the kernel is done, and its runs may place too few to fill a board.
  if (GetParam() == storage::Backend::kFallback) {
    EXPECT_GT(standbys, 0u) << "the test meant to promote standbys";
  }
}

// The same, with a kill -9 or a power loss at a random moment instead of a clean stop:
// the recovered state is what a prefix of the logged records makes, and that prefix holds
// every acknowledged record.
TEST_P(CoordinatorTest, CrashesRecoverAPrefixHoldingEveryAcknowledgedRecord) {
  options_.snapshot_wal_bytes_min = 2048;
  const uint64_t base = seed_base();
  for (uint64_t seed = base; seed < base + 12; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    log_.clear();
    std::filesystem::remove_all(dir_);
    std::filesystem::remove_all(tmp_.path() + "/trash");
    ASSERT_EQ(::mkdir(dir_.c_str(), 0700), 0);
    std::mt19937_64 rng(seed);
    uint64_t acked_seq = 0;  // the highest record acknowledged to anyone
    std::set<sched::JobId> acked;
    const bool power_loss = seed % 2 == 0;
    {
      storage::CrashPlan plan(10 + rng() % 90);  // dies at some I/O point
      Faults faults{&plan, power_loss, [&] { return !power_loss || rng() % 2 == 0; }};
      auto h = std::make_unique<Harness>(GetParam(), dir_, options_, &log_, &now_ms_, faults);
      if (!h->ok()) GTEST_SKIP() << "io_uring is not available here";
      ASSERT_TRUE(h->c().recover());
      h->runner(0).standbys = true;
      for (uint32_t n = 0; n < 2; ++n) (void)h->try_join(n);  // the crash may come this early
      for (int step = 0; step < 4000 && !plan.crashed(); ++step) {
        ++now_ms_;
        if (rng() % 3 == 0) {
          h->c().submit(spec_of(1 + uint32_t(rng() % 3)), [&](Result<sched::JobId> id) {
            if (!id) return;
            acked.insert(*id);
            acked_seq = std::max(acked_seq, h->c().durable_seq());
          });
        } else if (rng() % 2 == 0) {
          FakeRunner& r = h->runner(sched::NodeId(rng() % 2));
          if (!r.running.empty())
            r.end(r.running.begin()->first, TaskExit{pb::TASK_SUCCEEDED, 0, 0});
        }
        h->poke(rng);
        if (rng() % 4 == 0) h->complete();  // batch boundaries whatever the disk's speed
      }
      ASSERT_TRUE(plan.crashed()) << "the crash point was never reached (" << plan.points()
                                  << " points)";
    }
    Faults none;
    auto h = std::make_unique<Harness>(GetParam(), dir_, options_, &log_, &now_ms_, none);
    auto r = h->c().recover();
    ASSERT_TRUE(r) << "a crash must never look like corruption: " << r.error().describe();
    const uint64_t n = h->c().state().applied_seq();
    EXPECT_GE(n, acked_seq) << "an acknowledged record was lost";
    ASSERT_EQ(encode_snapshot(h->c().state()), replayed_state(log_, n));
    for (sched::JobId id : acked) EXPECT_NE(h->c().state().cluster().job(id), nullptr) << id;
  }
}

// The crash-point test, at the coordinator: a scripted workload that crosses
// snapshot writes, renames and segment and snapshot removals, crashed at every one of its
// I/O points in turn (as kill -9, and as a power loss that drops every unsynced byte and
// name). Each time: the start works, the state is what a prefix of the logged records
// makes, and the prefix holds every acknowledged record. The fallback engine makes the
// sequence of points the same in every run.
class CoordinatorCrashPoints : public ::testing::Test {
 protected:
  struct Run {
    uint64_t acked_seq = 0;
    std::set<sched::JobId> acked;
  };

  void SetUp() override {
    // tmpfs when there is one: the simulated crash does not need a real disk's fsync.
    base_ =
        ::access("/dev/shm", W_OK) == 0 ? "/dev/shm" : (tmp_.path().empty() ? "/tmp" : tmp_.path());
    char tmpl[256];
    std::snprintf(tmpl, sizeof tmpl, "%s/cardnode-crashpoints-XXXXXX", base_.c_str());
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    options_.snapshot_wal_bytes_min = 600;
  }
  void TearDown() override { std::filesystem::remove_all(root_); }

  // The workload; stops early once the plan has crashed.
  void workload(Harness& h, storage::CrashPlan& plan, Run* run) {
    if (!h.try_join(0)) return;
    for (uint32_t i = 0; i < 14 && !plan.crashed(); ++i) {
      now_ms_ += 1000;
      h.c().submit(spec_of(2, 500), [&](Result<sched::JobId> id) {
        if (!id) return;
        run->acked.insert(*id);
        run->acked_seq = std::max(run->acked_seq, h.c().durable_seq());
      });
      h.settle();
      for (uint32_t t = 0; t < 2 && !plan.crashed(); ++t) {
        (void)h.runner(0).end({i + 1, t}, TaskExit{pb::TASK_SUCCEEDED, 0, 0});
        h.settle();
      }
    }
  }

  std::unique_ptr<Harness> harness(storage::CrashPlan* plan, bool power_loss) {
    Faults f;
    f.plan = plan;
    f.power_loss = power_loss;
    f.keep_sector = [power_loss] { return !power_loss; };
    f.segment_bytes = 1024;
    return std::make_unique<Harness>(Backend::kFallback, root_ + "/data", options_, &log_, &now_ms_,
                                     f);
  }

  void reset() {
    std::filesystem::remove_all(root_ + "/data");
    std::filesystem::remove_all(root_ + "/trash");
    ASSERT_EQ(::mkdir((root_ + "/data").c_str(), 0700), 0);
    log_.clear();
  }

  TempDir tmp_;
  std::string base_;
  std::string root_;
  CoordinatorOptions options_;
  std::map<uint64_t, std::string> log_;
  uint64_t now_ms_ = 1'700'000'000'000;
};

TEST_F(CoordinatorCrashPoints, EveryPointOfAWorkloadAcrossSnapshotsRecovers) {
  reset();
  uint64_t points = 0;
  {
    storage::CrashPlan counting;
    counting.record_points();
    auto h = harness(&counting, false);
    ASSERT_TRUE(h->c().recover());
    Run run;
    workload(*h, counting, &run);
    EXPECT_GE(h->c().stats().snapshots_written, 3u);
    points = counting.points();
    auto has = [&](const std::string& op, const std::string& what) {
      return std::any_of(counting.seen().begin(), counting.seen().end(), [&](const std::string& s) {
        return s.starts_with(op) && s.find(what) != std::string::npos;
      });
    };
    EXPECT_TRUE(has("rename", ".snap")) << "the workload must rename a snapshot into place";
    EXPECT_TRUE(has("remove", ".wal")) << "the workload must remove covered segments";
    EXPECT_TRUE(has("remove", ".snap")) << "the workload must remove an old snapshot";
    EXPECT_TRUE(has("sync_dir", "snapshots"));
  }
  std::printf("%llu I/O points, each crashed as kill -9 and as power loss\n",
              static_cast<unsigned long long>(points));
  for (bool power_loss : {false, true}) {
    for (uint64_t k = 1; k <= points; ++k) {
      SCOPED_TRACE((power_loss ? "power loss at point " : "kill -9 at point ") + std::to_string(k));
      reset();
      Run run;
      std::string at;
      {
        storage::CrashPlan plan(k);
        auto h = harness(&plan, power_loss);
        if (h->c().recover()) workload(*h, plan, &run);  // the crash may come in the start
        ASSERT_TRUE(plan.crashed());
        at = plan.crash_point();
      }
      Harness after(Backend::kFallback, root_ + "/data", options_, &log_, &now_ms_);
      auto r = after.c().recover();
      ASSERT_TRUE(r) << "crashed at " << at << ": " << r.error().describe();
      const uint64_t n = after.c().state().applied_seq();
      ASSERT_GE(n, run.acked_seq) << "crashed at " << at << ": an acknowledged record was lost";
      ASSERT_EQ(encode_snapshot(after.c().state()), replayed_state(log_, n)) << "crashed at " << at;
      for (sched::JobId id : run.acked)
        ASSERT_NE(after.c().state().cluster().job(id), nullptr) << at;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, CoordinatorTest,
                         ::testing::Values(Backend::kIoUring, Backend::kFallback),
                         storage::testing::param_name);

}  // namespace
}  // namespace cardnode::runtime
