// Crashes: kill -9 and power loss at every I/O point of a scripted workload (one CrashPlan
// shared by FaultyEngine and FaultyFs), and power loss at random moments. After each, a
// plain open() must succeed — a crash never produces corruption — and replay every
// acknowledged record exactly once, in order, followed by at most a prefix of the
// unacknowledged ones.
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <string>
#include <vector>

#include "storage/crash_plan.h"
#include "storage/faulty_engine.h"
#include "storage/faulty_fs.h"
#include "storage/wal.h"
#include "storage/wal_test_util.h"

namespace cardnode::storage {
namespace {

using waltest::payload_for;
using waltest::TempDir;

// What a run appended and what it was told is durable.
struct History {
  std::map<uint64_t, std::string> appended;  // seq -> payload, every accepted record
  std::vector<uint64_t> acked;               // in callback order
  uint64_t snapshot_seq = 0;                 // what remove_segments_through was given
};

class WalCrashTest : public waltest::WalFixture {
 protected:
  // After a crash: open with the real engine and Fs must succeed and replay exactly the
  // records the history allows; then the log takes appends again.
  void expect_recovers(const History& h, const std::string& dir, const std::string& context) {
    SCOPED_TRACE(context);
    options.dir = dir;
    options.fs = nullptr;
    ReplayStats stats;
    auto wal = open(h.snapshot_seq, &stats);
    ASSERT_TRUE(wal) << wal.error().describe();
    uint64_t last = h.snapshot_seq + replayed_seqs.size();
    for (size_t i = 0; i < replayed_seqs.size(); ++i) {
      uint64_t seq = replayed_seqs[i];
      ASSERT_EQ(seq, h.snapshot_seq + 1 + i) << "replayed out of order or twice";
      auto it = h.appended.find(seq);
      ASSERT_NE(it, h.appended.end()) << "seq " << seq << " was never appended";
      ASSERT_EQ(replayed[i], it->second) << "seq " << seq;
    }
    for (uint64_t seq : h.acked) ASSERT_LE(seq, last) << "acknowledged record lost";
    for (size_t i = 1; i < h.acked.size(); ++i) ASSERT_LT(h.acked[i - 1], h.acked[i]);
    EXPECT_EQ((*wal)->next_sequence(), last + 1);
    auto more = append_durably(**wal, 1, 30, 424242);
    wal->reset();
    wal = open(h.snapshot_seq);
    ASSERT_TRUE(wal) << wal.error().describe();
    ASSERT_EQ(replayed_seqs.size(), last - h.snapshot_seq + 1);
    EXPECT_EQ(replayed.back(), more.back());
  }
};

// --- every I/O point -----------------------------------------------------------------------

class WalCrashPlanTest : public WalCrashTest {
 protected:
  void SetUp() override {
    WalCrashTest::SetUp();
    if (IsSkipped()) return;
    options.segment_bytes = 1024;
    options.prealloc_bytes = 256;
    prepare();
  }

  // The starting point of every run: acknowledged records in two segments, then an
  // unsealed torn batch and a roll leftover, so that open() under the plan repairs both.
  void prepare() {
    options.dir = tmp.path() + "/prepared";
    auto acked = build_acked(2, 4);
    for (size_t i = 0; i < acked.size(); ++i) {
      start.appended[i + 1] = acked[i];
      start.acked.push_back(i + 1);
    }
    auto files = waltest::segment_files(options.dir);
    ASSERT_GE(files.size(), 2u);
    uint64_t s = acked.size();
    waltest::pwrite_file(files.back(), waltest::batch(s + 1, {"torn", "unsealed"}).substr(0, 33),
                         waltest::log_end(files.back()));
    waltest::pwrite_file(options.dir + "/" + waltest::segment_name(s + 2),
                         waltest::segment_header(s + 2).substr(0, 20), 0);
  }

  // The scripted workload: appends in rounds, some drained, some left in flight, rolls,
  // and a snapshot's remove_segments_through; it stops at the first refusal or failure,
  // which after the crash point is every call.
  History run(CrashPlan& plan, bool power_loss, const std::string& dir) {
    History h = start;
    TempDir trash;
    FaultyEngine faulty(*engine);
    faulty.set_crash_plan(&plan, [power_loss] { return !power_loss; });
    FaultyFs fs(Fs::real(), &plan, power_loss, trash.path());
    WalOptions o = options;
    o.dir = dir;
    o.fs = &fs;
    auto wal = Wal::open(faulty, o, 0, {}, nullptr);
    if (!wal) return h;
    for (int round = 0; round < 8 && !(*wal)->failed(); ++round) {
      if (!append_round(**wal, round, h)) break;
      if (round % 3 == 2) {
        (*wal)->drain();
      } else if (faulty.in_flight() > 0) {
        faulty.wait();
      }
      if (round == 4) {
        h.snapshot_seq = (*wal)->durable_sequence();
        [[maybe_unused]] auto removed = (*wal)->remove_segments_through(h.snapshot_seq);
      }
    }
    wal->reset();  // drains: after a crash, everything still owed fails
    return h;
  }

  bool append_round(Wal& wal, int round, History& h) {
    for (int i = 0; i < 3; ++i) {
      uint64_t seq = wal.next_sequence();
      std::string payload = payload_for(seq, 80 + static_cast<size_t>((round * 3 + i) * 37 % 200));
      auto st = wal.append(payload, [&h, seq](Status s) {
        if (s) h.acked.push_back(seq);
      });
      if (!st) return false;
      h.appended[seq] = payload;
    }
    return true;
  }

  History start;
};

TEST_P(WalCrashPlanTest, EveryCrashPointRecovers) {
  std::string prepared = options.dir;
  CrashPlan counting;
  std::string counted_dir = tmp.path() + "/counted";
  waltest::copy_dir(prepared, counted_dir);
  History full = run(counting, false, counted_dir);
  ASSERT_FALSE(counting.crashed());
  ASSERT_EQ(full.acked.size(), full.appended.size()) << "the workload did not finish";
  expect_recovers(full, counted_dir, "no crash");
  uint64_t points = counting.points();
  ASSERT_GT(points, 20u);

  for (bool power_loss : {false, true}) {
    for (uint64_t k = 1; k <= points; ++k) {
      std::string dir = tmp.path() + "/run";
      waltest::copy_dir(prepared, dir);
      CrashPlan plan(k);
      History h = run(plan, power_loss, dir);
      ASSERT_TRUE(plan.crashed()) << k;
      expect_recovers(h, dir,
                      std::string(power_loss ? "power loss" : "kill -9") + " at point " +
                          std::to_string(k) + ": " + plan.crash_point());
      if (HasFatalFailure()) return;
    }
  }
  std::printf("%llu crash points, each as kill -9 and as power loss\n",
              static_cast<unsigned long long>(points));
}

// --- random moments --------------------------------------------------------------------

// Power loss at a random moment: unsynced sectors are all lost, or each kept by a coin flip.
TEST_P(WalCrashTest, RandomPowerLossKeepsExactlyTheAcknowledgedRecords) {
  options.segment_bytes = 8192;
  options.prealloc_bytes = 4096;
  uint32_t seed = waltest::test_seed();
  std::mt19937 rng(seed);
  for (int trial = 0; trial < 12; ++trial) {
    SCOPED_TRACE("seed " + std::to_string(seed) + " trial " + std::to_string(trial));
    TempDir trial_dir;
    options.dir = trial_dir.path() + "/wal";
    bool drop_all = trial % 2 == 0;
    History h;
    {
      FaultyEngine faulty(*engine);
      auto wal = open(faulty);
      ASSERT_TRUE(wal) << wal.error().describe();
      int rounds = 1 + static_cast<int>(rng() % 25);
      for (int r = 0; r < rounds; ++r) {
        int n = 1 + static_cast<int>(rng() % 12);
        for (int i = 0; i < n; ++i) {
          uint64_t seq = (*wal)->next_sequence();
          h.appended[seq] = payload_for(seq, 1 + rng() % 900);
          ASSERT_TRUE((*wal)->append(h.appended[seq], [&h, seq](Status s) {
            if (s) h.acked.push_back(seq);
          }));
        }
        if (rng() % 2 == 0) {
          faulty.wait();
        } else {
          faulty.reap();
        }
      }
      faulty.crash([&] { return !drop_all && rng() % 2 == 0; });
      wal->reset();  // drains: everything still owed fails
    }
    expect_recovers(h, options.dir, drop_all ? "all unsynced lost" : "coin flips");
    if (HasFatalFailure()) return;
    ASSERT_TRUE(check_wal(options.dir));
  }
}

// The seal is fdatasynced when a segment is finished (and by drain), not per batch: after
// a power loss it names at least the last record of the segment before the newest.
TEST_P(WalCrashTest, SealIsSyncedWhenASegmentIsFinished) {
  options.segment_bytes = 1024;
  options.prealloc_bytes = 256;
  FaultyEngine faulty(*engine);
  auto wal = open(faulty);
  ASSERT_TRUE(wal);
  uint64_t acked = 0;
  for (uint64_t i = 0; i < 20; ++i) {
    ASSERT_TRUE((*wal)->append(payload_for(i, 100), [&](Status s) { acked += s ? 1 : 0; }));
    ASSERT_TRUE(testing::run_until(faulty, [&] { return acked == i + 1; }));
  }
  auto files = waltest::segment_files(options.dir);
  ASSERT_GE(files.size(), 3u);
  uint64_t newest_first = waltest::batches_of(files.back()).front().first_seq;
  faulty.crash([] { return false; });
  wal->reset();
  EXPECT_GE(waltest::seal_of(options.dir), newest_first - 1);
  EXPECT_LT(waltest::seal_of(options.dir), 20u) << "the seal was synced per batch";
}

INSTANTIATE_TEST_SUITE_P(Backends, WalCrashTest,
                         ::testing::Values(Backend::kIoUring, Backend::kFallback),
                         testing::param_name);
INSTANTIATE_TEST_SUITE_P(Backends, WalCrashPlanTest,
                         ::testing::Values(Backend::kIoUring, Backend::kFallback),
                         testing::param_name);

}  // namespace
}  // namespace cardnode::storage
