// The WAL's behaviour: group commit, the seal, rolls, reserve and its refusals (pending
// bound, ENOSPC, a roll that fails), failures that are final, snapshots (after_seq and
// remove_segments_through), and an idle WAL writing nothing. Damage: wal_damage_test.cc;
// crashes: wal_crash_test.cc.
#include "storage/wal.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/mount.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "storage/crash_plan.h"
#include "storage/fault.h"
#include "storage/faulty_engine.h"
#include "storage/faulty_fs.h"
#include "storage/wal_test_util.h"

namespace cardnode::storage {
namespace {

using waltest::payload_for;
using waltest::seq_range;
using waltest::TempDir;
using waltest::TestFs;

class WalTest : public waltest::WalFixture {};

std::string unhex(std::string_view hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out += static_cast<char>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16));
  }
  return out;
}

// The bytes on disk, against values computed outside this code base (Python's zlib.crc32
// and struct.pack from wal_format.h), so the writer and the tests' own encoder cannot share
// a mistake.
TEST_P(WalTest, WritesTheFormatOfWalFormatH) {
  const std::string segment =
      unhex("434e4f444557414c0200000000000000010000000000000000000000aacc10c9");
  const std::string batch_of_x =
      unhex("434e574201000000010000000000000009000000b4cd4ef801000000a3279ca578");
  const std::string seal = unhex("434e575345414c310100000000000000596563f400000000");
  EXPECT_EQ(waltest::segment_header(1), segment);
  EXPECT_EQ(waltest::batch(1, {"x"}), batch_of_x);
  EXPECT_EQ(waltest::seal_bytes(1), seal);

  auto wal = open();
  ASSERT_TRUE(wal);
  bool acked = false;
  ASSERT_TRUE((*wal)->append("x", [&](Status s) { acked = s.has_value(); }));
  (*wal)->drain();
  EXPECT_TRUE(acked);
  wal->reset();
  std::string file = waltest::read_file(options.dir + "/00000000000000000001.wal");
  ASSERT_GE(file.size(), segment.size() + batch_of_x.size());
  EXPECT_EQ(file.substr(0, 32), segment);
  EXPECT_EQ(file.substr(32, batch_of_x.size()), batch_of_x);
  EXPECT_EQ(waltest::read_file(options.dir + "/seal"), seal);
}

TEST_P(WalTest, AppendsAckInOrderAndReplayExactly) {
  ReplayStats stats;
  auto wal = open(0, &stats);
  ASSERT_TRUE(wal) << wal.error().describe();
  EXPECT_EQ(stats.records, 0u);
  EXPECT_EQ((*wal)->next_sequence(), 1u);
  EXPECT_EQ((*wal)->durable_sequence(), 0u);

  std::vector<std::string> payloads;
  std::vector<uint64_t> acked;
  for (uint64_t i = 0; i < 100; ++i) {
    payloads.push_back(payload_for(i, 1 + (i * 37) % 700));
    ASSERT_TRUE((*wal)->append(payloads.back(), [&, i](Status s) {
      ASSERT_TRUE(s) << s.error().describe();
      // The callback of record i + 1 runs once it is durable and sealed, not before.
      EXPECT_GE((*wal)->durable_sequence(), i + 1);
      acked.push_back(i);
    }));
    if (i % 7 == 0) engine->reap();  // interleave completions with appends
  }
  (*wal)->drain();
  ASSERT_EQ(acked.size(), 100u);
  for (uint64_t i = 0; i < 100; ++i) EXPECT_EQ(acked[i], i);
  EXPECT_EQ((*wal)->pending_records(), 0u);
  EXPECT_EQ((*wal)->next_sequence(), 101u);
  EXPECT_EQ((*wal)->durable_sequence(), 100u);
  EXPECT_EQ((*wal)->stats().records_appended, 100u);
  wal->reset();
  EXPECT_EQ(waltest::seal_of(options.dir), 100u) << "drain makes the seal name the last record";

  wal = open(0, &stats);
  ASSERT_TRUE(wal) << wal.error().describe();
  EXPECT_EQ(replayed, payloads);
  EXPECT_EQ(replayed_seqs, seq_range(1, 100));
  EXPECT_EQ(stats.records, 100u);
  EXPECT_EQ(stats.skipped, 0u);
  EXPECT_EQ(stats.segments, 1u);
  EXPECT_EQ(stats.last_seq, 100u);
  EXPECT_EQ(stats.sealed_seq, 100u);
  EXPECT_EQ(stats.torn_tail_bytes, 0u);
  EXPECT_EQ((*wal)->next_sequence(), 101u);
  EXPECT_EQ((*wal)->durable_sequence(), 100u);
}

// One fdatasync covers a batch; a record costs its 8-byte frame plus its share of the
// 24-byte batch header.
TEST_P(WalTest, GroupCommitCoversManyRecordsPerFsync) {
  auto wal = open();
  ASSERT_TRUE(wal);
  uint64_t fsyncs_before = engine->stats().fsyncs;
  append_durably(**wal, 200, 64);
  uint64_t fsyncs = engine->stats().fsyncs - fsyncs_before;
  const WalStats& ws = (*wal)->stats();
  EXPECT_GE(fsyncs, 1u);
  EXPECT_LT(fsyncs, 20u);
  EXPECT_EQ(ws.records_appended, 200u);
  EXPECT_EQ(ws.bytes_appended, 200u * (8 + 64) + 24 * ws.batches);
  EXPECT_LE(ws.batches, fsyncs);
  std::printf(
      "200 records: %llu batches, %llu engine fdatasyncs (batches + the seal at drain), "
      "%.1f bytes of overhead per record\n",
      static_cast<unsigned long long>(ws.batches), static_cast<unsigned long long>(fsyncs),
      static_cast<double>(ws.bytes_appended - 200 * 64) / 200);
}

// hold_appends: nothing goes to the engine until flush(); then what was appended meanwhile
// goes out as one batch with one fdatasync.
TEST_P(WalTest, HeldAppendsWaitForFlushAndShareABatch) {
  options.hold_appends = true;
  auto wal = open();
  ASSERT_TRUE(wal) << wal.error().describe();
  IoStats before = engine->stats();
  int acked = 0;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE((*wal)->append("held", [&](Status s) { acked += s.has_value() ? 1 : 0; }));
  }
  EXPECT_EQ(engine->stats().writes, before.writes);  // held: nothing submitted
  EXPECT_EQ(engine->in_flight(), 0u);
  (*wal)->flush();
  while (acked < 3) engine->wait();
  EXPECT_EQ((*wal)->stats().batches, 1u);
  EXPECT_EQ(engine->stats().fsyncs - before.fsyncs, 1u);
  (*wal)->drain();
}

TEST_P(WalTest, SegmentsRollAndReplayInOrder) {
  options.segment_bytes = 4096;
  options.prealloc_bytes = 1024;
  auto wal = open();
  ASSERT_TRUE(wal);
  std::vector<std::string> all;
  for (int round = 0; round < 10; ++round) {
    auto more = append_durably(**wal, 30, 100, all.size());
    all.insert(all.end(), more.begin(), more.end());
  }
  uint64_t created = (*wal)->stats().segments_created;
  wal->reset();

  auto files = waltest::segment_files(options.dir);
  ASSERT_GT(files.size(), 3u);
  EXPECT_EQ(created, files.size()) << "open creates the first segment, rolls the others";
  EXPECT_EQ(files.front(), options.dir + "/00000000000000000001.wal");
  uint64_t next = 1;
  for (const auto& f : files) {
    EXPECT_EQ(f, options.dir + "/" + waltest::segment_name(next));
    EXPECT_LE(waltest::log_end(f), options.segment_bytes) << f;
    for (const auto& b : waltest::batches_of(f)) next = b.first_seq + b.count;
  }

  ReplayStats stats;
  wal = open(0, &stats);
  ASSERT_TRUE(wal) << wal.error().describe();
  EXPECT_EQ(replayed, all);
  EXPECT_EQ(stats.segments, files.size());
  EXPECT_EQ((*wal)->next_sequence(), all.size() + 1);

  auto checked = check_wal(options.dir);
  ASSERT_TRUE(checked) << checked.error().describe();
  EXPECT_EQ(checked->records, all.size());
  EXPECT_EQ(checked->segments, files.size());
}

// Segment fds close once their last batch is durable: rolls do not leak them.
TEST_P(WalTest, FinishedSegmentsAreClosed) {
  options.segment_bytes = 1024;
  options.prealloc_bytes = 256;
  auto count_fds = [] {
    return std::distance(std::filesystem::directory_iterator("/proc/self/fd"),
                         std::filesystem::directory_iterator{});
  };
  auto wal = open();
  ASSERT_TRUE(wal);
  append_durably(**wal, 2, 100);
  auto fds = count_fds();
  for (int round = 0; round < 5; ++round) append_durably(**wal, 20, 100, round * 20);
  EXPECT_GE((*wal)->stats().segments_created, 5u);
  EXPECT_EQ(count_fds(), fds);
}

TEST_P(WalTest, ReserveMakesTheNextAppendUnrefusable) {
  options.prealloc_bytes = 64;  // every record needs an allocate of its own
  TestFs fs;
  options.fs = &fs;
  auto wal = open();
  ASSERT_TRUE(wal);
  ASSERT_TRUE((*wal)->reserve(200));
  fs.full = true;
  bool acked = false;
  auto st = (*wal)->append(std::string(150, 'r'), [&](Status s) { acked = s.has_value(); });
  ASSERT_TRUE(st) << st.error().describe();
  // The reservation is used up: the next record needs room the full disk does not have.
  auto refused = (*wal)->append(std::string(150, 's'), [](Status) { ADD_FAILURE(); });
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().sys_errno, ENOSPC);
  (*wal)->drain();
  EXPECT_TRUE(acked);
  // A reservation covers one append of at most its size.
  fs.full = false;
  ASSERT_TRUE((*wal)->reserve(10));
  fs.full = true;
  EXPECT_FALSE((*wal)->append(std::string(500, 'b'), [](Status) { ADD_FAILURE(); }));
  EXPECT_FALSE((*wal)->failed());
}

TEST_P(WalTest, RejectsEmptyAndOversizePayloads) {
  auto wal = open();
  ASSERT_TRUE(wal);
  bool called = false;
  auto on = [&](Status) { called = true; };
  EXPECT_EQ((*wal)->reserve(0).error().code, Errc::kInvalidArgument);
  EXPECT_EQ((*wal)->reserve(kRecordBytesMax + 1).error().code, Errc::kInvalidArgument);
  auto empty = (*wal)->append("", on);
  ASSERT_FALSE(empty);
  EXPECT_EQ(empty.error().code, Errc::kInvalidArgument);
  ASSERT_TRUE((*wal)->reserve(10));
  EXPECT_FALSE((*wal)->append("", on)) << "a reservation does not make an empty record valid";
  auto big = (*wal)->append(std::string(kRecordBytesMax + 1, 'b'), on);
  ASSERT_FALSE(big);
  EXPECT_EQ(big.error().code, Errc::kInvalidArgument);
  EXPECT_FALSE(called);
  EXPECT_FALSE((*wal)->failed());
  EXPECT_EQ((*wal)->next_sequence(), 1u);

  std::string max(kRecordBytesMax, 'm');
  bool ok = false;
  ASSERT_TRUE((*wal)->append(max, [&](Status s) { ok = s.has_value(); }));
  (*wal)->drain();
  EXPECT_TRUE(ok);
  wal->reset();
  wal = open();
  ASSERT_TRUE(wal);
  ASSERT_EQ(replayed.size(), 1u);
  EXPECT_EQ(replayed[0], max);
}

TEST_P(WalTest, PendingBoundRefusesAppends) {
  options.pending_bytes_max = 1000;
  auto wal = open();
  ASSERT_TRUE(wal);
  uint64_t accepted = 0;
  uint64_t acked = 0;
  bool refused = false;
  for (int i = 0; i < 100 && !refused; ++i) {
    auto st = (*wal)->append(std::string(100, 'p'), [&](Status s) { acked += s ? 1 : 0; });
    if (st) {
      ++accepted;
    } else {
      EXPECT_EQ(st.error().code, Errc::kResourceExhausted);
      EXPECT_EQ(st.error().sys_errno, 0);
      refused = true;
    }
  }
  EXPECT_TRUE(refused);
  EXPECT_EQ((*wal)->pending_records(), accepted);
  EXPECT_EQ((*wal)->next_sequence(), accepted + 1);
  (*wal)->drain();
  EXPECT_EQ(acked, accepted);
  EXPECT_FALSE((*wal)->failed());
  // Room again after the queue drained.
  EXPECT_TRUE((*wal)->append("again", [](Status) {}));
}

TEST_P(WalTest, FailedFsyncFailsTheWalForGood) {
  FaultyEngine faulty(*engine);
  auto wal = open(faulty);
  ASSERT_TRUE(wal);
  append_durably(**wal, 3, 20);

  faulty.fail_fsync(1, EIO);
  std::vector<Status> results;
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE((*wal)->append("doomed", [&](Status s) { results.push_back(s); }));
  }
  (*wal)->drain();
  ASSERT_EQ(results.size(), 5u);
  for (const Status& s : results) {
    ASSERT_FALSE(s);
    EXPECT_EQ(s.error().sys_errno, EIO);
  }
  EXPECT_TRUE((*wal)->failed());
  EXPECT_EQ((*wal)->durable_sequence(), 3u);
  uint64_t fsyncs = faulty.stats().fsyncs;
  auto later =
      (*wal)->append("later", [](Status) { ADD_FAILURE() << "callback of a refused append"; });
  ASSERT_FALSE(later);
  EXPECT_EQ(later.error().sys_errno, EIO);
  EXPECT_FALSE((*wal)->reserve(5));
  (*wal)->drain();
  EXPECT_EQ(faulty.stats().fsyncs, fsyncs) << "fdatasync retried after a failure";
}

TEST_P(WalTest, FailedWriteFailsPendingAppends) {
  FaultyEngine faulty(*engine);
  auto wal = open(faulty);
  ASSERT_TRUE(wal);
  faulty.fail_write(1, ENOSPC);
  std::vector<Status> results;
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE((*wal)->append("x", [&](Status s) { results.push_back(s); }));
  }
  (*wal)->drain();
  ASSERT_EQ(results.size(), 4u);
  for (const Status& s : results) {
    ASSERT_FALSE(s);
    EXPECT_EQ(s.error().sys_errno, ENOSPC);
  }
  EXPECT_TRUE((*wal)->failed());
}

// The seal write is part of the acknowledgement: when it fails, nothing is acknowledged,
// even though the batch itself is durable (and so is replayed: an unacknowledged prefix).
TEST_P(WalTest, FailedSealWriteFailsTheWal) {
  FaultyEngine faulty(*engine);
  auto wal = open(faulty);
  ASSERT_TRUE(wal);
  auto acked = append_durably(**wal, 2, 10);
  faulty.fail_write(2, EIO);  // 1: the batch, 2: its seal
  std::vector<Status> results;
  ASSERT_TRUE((*wal)->append("unsealed", [&](Status s) { results.push_back(s); }));
  (*wal)->drain();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_FALSE(results[0]);
  EXPECT_TRUE((*wal)->failed());
  EXPECT_EQ((*wal)->durable_sequence(), 2u);
  wal->reset();
  ReplayStats stats;
  wal = open(0, &stats);
  ASSERT_TRUE(wal) << wal.error().describe();
  EXPECT_EQ(stats.sealed_seq, 2u);
  acked.push_back("unsealed");
  EXPECT_EQ(replayed, acked);
  // Replayed is as good as acknowledged: open seals it, so later damage to it is corruption.
  EXPECT_EQ(waltest::seal_of(options.dir), 3u);
}

#ifdef CARDNODE_FAULT_POINTS
// A failure once a batch is durable but before it is sealed and acknowledged (the write
// and its fdatasync are one operation; FaultyEngine's crash plans cover the bytes between
// them): its appends fail, the WAL stops, and what was acknowledged before survives.
TEST_P(WalTest, FaultPointBetweenTheDurableWriteAndTheSeal) {
  auto wal = open();
  ASSERT_TRUE(wal);
  auto durable = append_durably(**wal, 2, 10);
  fault::arm("wal.after_sync_before_seal");
  std::vector<Status> results;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE((*wal)->append("unsealed", [&](Status s) { results.push_back(s); }));
  }
  (*wal)->drain();
  ASSERT_EQ(results.size(), 3u);
  for (const Status& s : results) EXPECT_FALSE(s);
  EXPECT_TRUE((*wal)->failed());
  wal->reset();
  // The durable but unacknowledged batch may be replayed; what was acked must be.
  wal = open();
  ASSERT_TRUE(wal) << wal.error().describe();
  // The first append went out alone and was durable before the failure: replayed, and
  // sealed by this open. The other two waited for the next batch and were never written.
  ASSERT_EQ(replayed.size(), durable.size() + 1);
  EXPECT_TRUE(std::equal(durable.begin(), durable.end(), replayed.begin()));
  EXPECT_EQ(replayed.back(), "unsealed");
}
#endif

// A batch the previous process wrote but never synced (killed between the write and the
// sync) reads back intact from the page cache, and open() is about to seal it; a later
// batch's RWF_DSYNC covers only its own bytes. So open() syncs the segment of the newest
// batch before the seal names it: the append segment, or the one before when a roll left
// the append segment without a batch.
TEST_P(WalTest, OpenSyncsTheNewestBatchBeforeTheSealNamesIt) {
  auto opens_syncing = [&](const std::string& segment) {
    CrashPlan seen;  // never crashes; records every Fs call
    seen.record_points();
    TempDir trash;
    FaultyFs fs(Fs::real(), &seen, false, trash.path());
    options.fs = &fs;
    auto wal = open();
    options.fs = nullptr;
    EXPECT_TRUE(wal) << wal.error().describe();
    const auto& points = seen.seen();
    auto synced = std::find(points.begin(), points.end(), "sync " + segment);
    auto sealed = std::find_if(points.begin(), points.end(), [&](const std::string& p) {
      return p.starts_with("write_at " + options.dir + "/seal");
    });
    EXPECT_NE(synced, points.end()) << "no sync of " << segment;
    EXPECT_LT(synced - points.begin(), sealed - points.begin()) << "synced after the seal";
    return wal;
  };
  {
    auto wal = open();
    ASSERT_TRUE(wal);
  }
  const std::string first = options.dir + "/" + waltest::segment_name(1);
  // Two batches, the seal naming only the first: the second as if its sync never ran.
  waltest::pwrite_file(first, waltest::batch(1, {"acked"}) + waltest::batch(2, {"unsynced"}),
                       kSegmentHeaderBytes);
  waltest::pwrite_file(options.dir + "/seal", waltest::seal_bytes(1), 0);
  {
    auto wal = opens_syncing(first);
    ASSERT_TRUE(wal);
    EXPECT_EQ(replayed, (std::vector<std::string>{"acked", "unsynced"}));
  }
  // A roll after it: the next segment holds only its header.
  const std::string second = options.dir + "/" + waltest::segment_name(3);
  waltest::pwrite_file(second, waltest::segment_header(3), 0);
  waltest::pwrite_file(options.dir + "/seal", waltest::seal_bytes(1), 0);
  auto wal = opens_syncing(first);
  ASSERT_TRUE(wal);
  EXPECT_EQ(replayed.size(), 2u);
}

// Guarantee 5: after drain() the WAL does no I/O at all, through the engine or the Fs.
TEST_P(WalTest, IdleWalWritesNothing) {
  CrashPlan counting;  // never crashes; counts every engine and Fs call
  TempDir trash;
  FaultyEngine faulty(*engine);
  faulty.set_crash_plan(&counting, [] { return true; });
  FaultyFs fs(Fs::real(), &counting, false, trash.path());
  options.fs = &fs;
  options.segment_bytes = 2048;  // a roll too, so a retiring segment is in the picture
  auto wal = open(faulty);
  ASSERT_TRUE(wal);
  append_durably(**wal, 30, 100);
  EXPECT_GE((*wal)->stats().segments_created, 1u);
  IoStats before = engine->stats();
  WalStats wal_before = (*wal)->stats();
  uint64_t points = counting.points();
  for (int i = 0; i < 10; ++i) faulty.reap();
  (*wal)->drain();
  pollfd p{engine->completion_fd(), POLLIN, 0};
  EXPECT_EQ(::poll(&p, 1, 0), 0);
  EXPECT_EQ(engine->stats().bytes_written, before.bytes_written);
  EXPECT_EQ(engine->stats().writes, before.writes);
  EXPECT_EQ(engine->stats().fsyncs, before.fsyncs);
  EXPECT_EQ((*wal)->stats().batches, wal_before.batches);
  EXPECT_EQ((*wal)->stats().fdatasyncs, wal_before.fdatasyncs);
  EXPECT_EQ(counting.points(), points) << "an engine or Fs call after drain()";
  EXPECT_EQ(engine->in_flight(), 0u);
  wal->reset();
  EXPECT_EQ(counting.points(), points) << "closing an idle WAL did I/O";
}

TEST_P(WalTest, AppendFromDurableCallbackGoesOut) {
  auto wal = open();
  ASSERT_TRUE(wal);
  Wal& w = **wal;
  std::vector<int> order;
  ASSERT_TRUE(w.append("one", [&](Status s) {
    ASSERT_TRUE(s);
    order.push_back(1);
    ASSERT_TRUE(w.append("three", [&](Status s3) {
      ASSERT_TRUE(s3);
      order.push_back(3);
    }));
  }));
  ASSERT_TRUE(w.append("two", [&](Status s) {
    ASSERT_TRUE(s);
    order.push_back(2);
  }));
  w.drain();
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3}));
  wal->reset();
  wal = open();
  ASSERT_TRUE(wal);
  EXPECT_EQ(replayed, (std::vector<std::string>{"one", "two", "three"}));
}

// A full engine queue holds the batch back instead of failing the WAL.
TEST_P(WalTest, WaitsForRoomInAFullEngineQueue) {
  std::string skip;
  auto tiny = testing::make_engine(GetParam(), 1, &skip);
  if (!skip.empty()) GTEST_SKIP() << skip;
  ASSERT_NE(tiny, nullptr);
  auto wal = open(*tiny);
  ASSERT_TRUE(wal);
  TempDir other;
  std::string other_path = other.path() + "/other";
  int fd = ::open(other_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  bool other_done = false;
  ASSERT_TRUE(tiny->fdatasync(fd, [&](Result<uint32_t>) { other_done = true; }));

  bool acked = false;
  ASSERT_TRUE((*wal)->append("held back", [&](Status s) { acked = s.has_value(); }));
  EXPECT_EQ(tiny->stats().writes, 0u) << "the queue was full: nothing should be submitted";
  (*wal)->drain();
  EXPECT_TRUE(other_done);
  EXPECT_TRUE(acked);
  EXPECT_FALSE((*wal)->failed());
  ::close(fd);
  wal->reset();
  wal = open(*tiny);
  ASSERT_TRUE(wal);
  EXPECT_EQ(replayed, std::vector<std::string>{"held back"});
}

TEST_P(WalTest, ReplayErrorAbortsOpen) {
  auto wal = open();
  ASSERT_TRUE(wal);
  append_durably(**wal, 5, 10);
  wal->reset();
  int seen = 0;
  auto failed = Wal::open(
      *engine, options, 0,
      [&](uint64_t, std::string_view) -> Status {
        if (++seen == 3) return fail(Errc::kInvalidArgument, "bad record");
        return {};
      },
      nullptr);
  ASSERT_FALSE(failed);
  EXPECT_EQ(failed.error().message, "bad record");
  EXPECT_EQ(seen, 3);
}

// --- snapshots: after_seq and remove_segments_through -----------------------------------

class WalSnapshotTest : public waltest::WalFixture {
 protected:
  // Several segments of acknowledged records; returns the payloads.
  std::vector<std::string> build_segments() {
    options.segment_bytes = 2048;
    options.prealloc_bytes = 512;
    return build_acked(8, 6);
  }
};

TEST_P(WalSnapshotTest, RemoveSegmentsThroughKeepsTheAppendSegment) {
  auto all = build_segments();
  auto files = waltest::segment_files(options.dir);
  ASSERT_GE(files.size(), 3u);
  auto wal = open();
  ASSERT_TRUE(wal);
  uint64_t durable = (*wal)->durable_sequence();
  ASSERT_EQ(durable, all.size());
  auto too_far = (*wal)->remove_segments_through(durable + 1);
  ASSERT_FALSE(too_far);
  EXPECT_EQ(too_far.error().code, Errc::kInvalidArgument);

  // Through a record in the middle of the second segment: only the first goes.
  uint64_t second_first = waltest::batches_of(files[1]).front().first_seq;
  auto removed = (*wal)->remove_segments_through(second_first + 1);
  ASSERT_TRUE(removed) << removed.error().describe();
  EXPECT_EQ(*removed, 1u);
  EXPECT_EQ(waltest::segment_files(options.dir).size(), files.size() - 1);

  // Through everything: all but the segment appends go to.
  removed = (*wal)->remove_segments_through(durable);
  ASSERT_TRUE(removed);
  EXPECT_EQ(*removed, files.size() - 2);
  EXPECT_EQ((*wal)->stats().segments_removed, files.size() - 1);
  EXPECT_EQ(waltest::segment_files(options.dir), std::vector<std::string>{files.back()});
  auto more = append_durably(**wal, 3, 50, 1000);
  wal->reset();

  ReplayStats stats;
  wal = open(durable, &stats);
  ASSERT_TRUE(wal) << wal.error().describe();
  EXPECT_EQ(replayed, more);
  EXPECT_EQ(replayed_seqs, seq_range(durable + 1, durable + 3));
  EXPECT_EQ(stats.skipped + stats.records,
            durable + 3 - (waltest::batches_of(files.back()).front().first_seq - 1));
  EXPECT_EQ((*wal)->next_sequence(), durable + 4);
  // Without the snapshot the log starts too late.
  wal->reset();
  auto no_snapshot = open(0);
  ASSERT_FALSE(no_snapshot);
  EXPECT_EQ(no_snapshot.error().code, Errc::kCorruption);
  EXPECT_NE(no_snapshot.error().message.find(files.back() + " at offset 0"), std::string::npos)
      << no_snapshot.error().message;
}

// Segments wholly covered by the snapshot are not even read: damage there does not matter.
TEST_P(WalSnapshotTest, WhollyCoveredSegmentsAreNotRead) {
  auto all = build_segments();
  auto files = waltest::segment_files(options.dir);
  ASSERT_GE(files.size(), 4u);
  waltest::pwrite_file(files[0], "garbage", 40);
  waltest::pwrite_file(files[1], "garbage", 40);
  uint64_t third_first = waltest::batches_of(files[2]).front().first_seq;
  uint64_t after = third_first + 1;  // in the third segment: the first two are covered

  ReplayStats stats;
  auto wal = open(after, &stats);
  ASSERT_TRUE(wal) << wal.error().describe();
  EXPECT_EQ(replayed_seqs, seq_range(after + 1, all.size()));
  EXPECT_EQ(replayed, std::vector<std::string>(all.begin() + static_cast<long>(after), all.end()));
  EXPECT_EQ(stats.skipped, after - third_first + 1);
  EXPECT_EQ(stats.segments, files.size() - 2);
  auto checked = check_wal(options.dir, after);
  ASSERT_TRUE(checked) << checked.error().describe();
  EXPECT_EQ(checked->records, stats.records);
  EXPECT_EQ(checked->skipped, stats.skipped);
  wal->reset();

  // Covering one segment less, the damage is read.
  auto failed = open(third_first - 2);
  ASSERT_FALSE(failed);
  EXPECT_EQ(failed.error().code, Errc::kCorruption);
  EXPECT_NE(failed.error().message.find(files[1] + " at offset"), std::string::npos)
      << failed.error().message;
}

TEST_P(WalSnapshotTest, FirstNeededSegmentAfterTheSnapshotIsCorruption) {
  auto all = build_segments();
  auto files = waltest::segment_files(options.dir);
  ASSERT_GE(files.size(), 3u);
  ASSERT_EQ(::unlink(files[0].c_str()), 0);
  uint64_t second_first = waltest::batches_of(files[1]).front().first_seq;
  auto wal = open(second_first - 3);  // the records just before the second segment are gone
  ASSERT_FALSE(wal);
  EXPECT_EQ(wal.error().code, Errc::kCorruption);
  EXPECT_NE(wal.error().message.find(files[1] + " at offset 0"), std::string::npos)
      << wal.error().message;
  auto checked = check_wal(options.dir, second_first - 3);
  ASSERT_FALSE(checked);
  EXPECT_EQ(checked.error().message, wal.error().message);
  // Exactly at the boundary it is fine.
  wal = open(second_first - 1);
  ASSERT_TRUE(wal) << wal.error().describe();
  EXPECT_EQ(replayed.size(), all.size() - (second_first - 1));
}

TEST_P(WalSnapshotTest, EmptyDirStartsAfterTheSnapshot) {
  ReplayStats stats;
  auto wal = open(41, &stats);
  ASSERT_TRUE(wal) << wal.error().describe();
  EXPECT_EQ(stats.records, 0u);
  EXPECT_EQ((*wal)->next_sequence(), 42u);
  EXPECT_EQ((*wal)->durable_sequence(), 41u);
  auto more = append_durably(**wal, 2, 30);
  wal->reset();
  EXPECT_EQ(waltest::segment_files(options.dir),
            std::vector<std::string>{options.dir + "/" + waltest::segment_name(42)});
  wal = open(41);
  ASSERT_TRUE(wal) << wal.error().describe();
  EXPECT_EQ(replayed, more);
  EXPECT_EQ(replayed_seqs, seq_range(42, 43));
  wal->reset();
  EXPECT_FALSE(open(0)) << "a log starting at 42 needs a snapshot through 41";
  EXPECT_FALSE(open(45)) << "the snapshot covers records the log never had";
}

TEST_P(WalSnapshotTest, LogShorterThanTheSnapshotIsCorruption) {
  build_acked(1, 10);
  auto wal = open(20);
  ASSERT_FALSE(wal);
  EXPECT_EQ(wal.error().code, Errc::kCorruption);
  EXPECT_NE(wal.error().message.find("before the snapshot"), std::string::npos)
      << wal.error().message;
}

// --- no room on the disk -------------------------------------------------------------------

class WalSpaceTest : public waltest::WalFixture {};

TEST_P(WalSpaceTest, EnospcAtReserveIsARefusal) {
  options.prealloc_bytes = 256;
  TestFs fs;
  options.fs = &fs;
  auto wal = open();
  ASSERT_TRUE(wal);
  auto acked = append_durably(**wal, 3, 100);
  fs.full = true;
  auto st = (*wal)->reserve(1000);
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code, Errc::kResourceExhausted);
  EXPECT_EQ(st.error().sys_errno, ENOSPC);
  auto refused = (*wal)->append(std::string(1000, 'n'), [](Status) { ADD_FAILURE(); });
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().sys_errno, ENOSPC);
  EXPECT_FALSE((*wal)->failed());
  EXPECT_EQ((*wal)->pending_records(), 0u);
  EXPECT_EQ((*wal)->next_sequence(), 4u) << "a refused record takes no sequence number";

  fs.full = false;  // space freed
  ASSERT_TRUE((*wal)->reserve(1000));
  auto more = append_durably(**wal, 2, 1000, 100);
  acked.insert(acked.end(), more.begin(), more.end());
  wal->reset();
  wal = open();
  ASSERT_TRUE(wal) << wal.error().describe();
  EXPECT_EQ(replayed, acked);
}

// A failed prealloc step retries with just what the record needs.
TEST_P(WalSpaceTest, PreallocStepFallsBackToWhatTheRecordNeeds) {
  TempDir trash;
  FaultyFs fs(Fs::real(), nullptr, false, trash.path());
  options.fs = &fs;
  options.prealloc_bytes = 1 << 20;
  auto wal = open();
  ASSERT_TRUE(wal);
  fs.fail_nth("allocate", 1, ENOSPC);
  ASSERT_TRUE((*wal)->reserve(100)) << "the exact allocation should still fit";
  auto files = waltest::segment_files(options.dir);
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(waltest::file_size(files[0]), 32u + 24 + 8 + 100);
  bool acked = false;
  ASSERT_TRUE((*wal)->append(std::string(100, 'e'), [&](Status s) { acked = s.has_value(); }));
  (*wal)->drain();
  EXPECT_TRUE(acked);
}

TEST_P(WalSpaceTest, NoPreallocationSupportMeansWritesExtendTheFile) {
  TestFs fs;
  fs.allocate_errno = EOPNOTSUPP;
  options.fs = &fs;
  options.prealloc_bytes = 64;
  auto wal = open();
  ASSERT_TRUE(wal);
  auto acked = append_durably(**wal, 10, 100);
  EXPECT_EQ(fs.calls["allocate"], 1u) << "EOPNOTSUPP is remembered";
  wal->reset();
  EXPECT_EQ(waltest::file_size(waltest::segment_files(options.dir)[0]),
            waltest::log_end(waltest::segment_files(options.dir)[0]));
  wal = open();
  ASSERT_TRUE(wal);
  EXPECT_EQ(replayed, acked);
}

// A roll that fails at any of its steps refuses the record, leaves no segment that breaks
// the next open, and a later roll succeeds.
TEST_P(WalSpaceTest, FailedRollsAreRefusals) {
  options.segment_bytes = 1024;  // a record of 1000 bytes needs a segment of its own
  options.prealloc_bytes = 256;
  TempDir trash;
  FaultyFs faulty_fs(Fs::real(), nullptr, false, trash.path());
  TestFs fs(faulty_fs);
  options.fs = &fs;
  auto wal = open();
  ASSERT_TRUE(wal);
  std::vector<std::string> acked;
  auto append = [&](size_t size) {
    auto more = append_durably(**wal, 1, size, acked.size());
    acked.insert(acked.end(), more.begin(), more.end());
  };
  for (const char* op : {"open", "write_at", "sync", "sync_dir", "allocate"}) {
    SCOPED_TRACE(op);
    append(100);  // the current segment has records: the next big one rolls
    size_t files = waltest::segment_files(options.dir).size();
    uint64_t next = (*wal)->next_sequence();
    if (std::string(op) == "allocate") {
      fs.allocate_errno = ENOSPC;  // the prealloc step and the exact retry
    } else {
      faulty_fs.fail_nth(op, 1, ENOSPC);
    }
    auto st = (*wal)->append(std::string(1000, 'x'), [](Status) { ADD_FAILURE(); });
    fs.allocate_errno = 0;
    ASSERT_FALSE(st);
    EXPECT_EQ(st.error().code, Errc::kResourceExhausted) << st.error().describe();
    EXPECT_EQ(st.error().sys_errno, ENOSPC);
    EXPECT_FALSE((*wal)->failed());
    EXPECT_EQ((*wal)->next_sequence(), next);
    EXPECT_EQ(waltest::segment_files(options.dir).size(), files) << "half-made segment left";
    append(1000);  // rolls now
    EXPECT_EQ(waltest::segment_files(options.dir).size(), files + 1);
  }
  wal->reset();
  wal = open();
  ASSERT_TRUE(wal) << wal.error().describe();
  EXPECT_EQ(replayed, acked);
}

// A real file system that fills up: tmpfs of 1 MiB (needs root and mount(2); skipped
// otherwise).
TEST_P(WalSpaceTest, RealSmallFilesystemRefusesAndRecovers) {
  std::string mnt = tmp.path() + "/mnt";
  ASSERT_EQ(::mkdir(mnt.c_str(), 0755), 0);
  if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=1m") != 0) {
    GTEST_SKIP() << "cannot mount a tmpfs here: " << std::strerror(errno);
  }
  struct Unmount {
    std::string path;
    ~Unmount() { ::umount2(path.c_str(), MNT_DETACH); }
  } unmount{mnt};
  options.dir = mnt + "/wal";
  auto wal = open();
  ASSERT_TRUE(wal) << wal.error().describe();
  auto acked = append_durably(**wal, 10, 1000);
  std::string filler = mnt + "/filler";
  int fd = ::open(filler.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  std::string block(64 << 10, 'f');
  for (int i = 0; i < 64 && ::write(fd, block.data(), block.size()) > 0; ++i) {
  }
  ::close(fd);

  auto st = (*wal)->append(std::string(200 << 10, 'b'), [](Status) { ADD_FAILURE(); });
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().sys_errno, ENOSPC) << st.error().describe();
  EXPECT_FALSE((*wal)->failed());

  ASSERT_EQ(::unlink(filler.c_str()), 0);
  auto more = append_durably(**wal, 1, 200 << 10, 50);
  acked.insert(acked.end(), more.begin(), more.end());
  wal->reset();
  wal = open();
  ASSERT_TRUE(wal) << wal.error().describe();
  EXPECT_EQ(replayed, acked);
}

INSTANTIATE_TEST_SUITE_P(Backends, WalTest,
                         ::testing::Values(Backend::kIoUring, Backend::kFallback),
                         testing::param_name);
INSTANTIATE_TEST_SUITE_P(Backends, WalSnapshotTest,
                         ::testing::Values(Backend::kIoUring, Backend::kFallback),
                         testing::param_name);
INSTANTIATE_TEST_SUITE_P(Backends, WalSpaceTest,
                         ::testing::Values(Backend::kIoUring, Backend::kFallback),
                         testing::param_name);

TEST(CheckWal, MissingDirIsNotFound) {
  auto checked = check_wal("/nonexistent/cardnode/wal");
  ASSERT_FALSE(checked);
  EXPECT_EQ(checked.error().code, Errc::kNotFound);
}

TEST(CheckWal, ForeignSegmentNameIsCorruption) {
  TempDir tmp;
  waltest::pwrite_file(tmp.path() + "/12.wal", "", 0);
  waltest::pwrite_file(tmp.path() + "/notes.txt", "not ours, left alone", 0);
  auto checked = check_wal(tmp.path());
  ASSERT_FALSE(checked);
  EXPECT_EQ(checked.error().code, Errc::kCorruption);
  EXPECT_NE(checked.error().message.find(tmp.path() + "/12.wal at offset 0"), std::string::npos)
      << checked.error().message;
}

TEST(CheckWal, EmptyDirIsAnEmptyLog) {
  TempDir tmp;
  auto checked = check_wal(tmp.path());
  ASSERT_TRUE(checked) << checked.error().describe();
  EXPECT_EQ(checked->records, 0u);
}

}  // namespace
}  // namespace cardnode::storage
