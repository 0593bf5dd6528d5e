#include "storage/wal.h"

#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "storage/fault.h"
#include "storage/faulty_engine.h"
#include "storage/test_util.h"

namespace cardnode::storage {
namespace {

using testing::run_until;
using testing::TempDir;

std::vector<std::string> segment_files(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return out;
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name.ends_with(".wal")) out.push_back(dir + "/" + name);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

// The record framing from wal_format.h, written independently of wal.cc.
std::string frame(std::string_view payload) {
  std::string out(8, '\0');
  auto len = static_cast<uint32_t>(payload.size());
  for (int i = 0; i < 4; ++i) out[i] = static_cast<char>(len >> (8 * i));
  uLong crc = crc32(0L, reinterpret_cast<const Bytef*>(out.data()), 4);
  crc = crc32(crc, reinterpret_cast<const Bytef*>(payload.data()), len);
  for (int i = 0; i < 4; ++i) out[4 + i] = static_cast<char>(crc >> (8 * i));
  out += payload;
  return out;
}

// Offset just past the last record of a segment, found by walking the framing.
uint64_t records_end(const std::string& path) {
  std::string data = testing::read_file(path);
  uint64_t pos = 0;
  while (pos + 8 <= data.size()) {
    uint32_t len = 0;
    for (int i = 0; i < 4; ++i)
      len |= static_cast<uint32_t>(static_cast<uint8_t>(data[pos + i])) << (8 * i);
    if (len == 0) break;
    pos += 8 + len;
  }
  return pos;
}

void pwrite_file(const std::string& path, const std::string& bytes, uint64_t offset) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(offset)),
            static_cast<ssize_t>(bytes.size()));
  ::close(fd);
}

std::string payload_for(uint64_t i, size_t size) {
  std::string p = "rec-" + std::to_string(i) + "-";
  while (p.size() < size) p += static_cast<char>('a' + (p.size() + i) % 26);
  p.resize(std::max<size_t>(size, 1));
  return p;
}

class WalTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    CARDNODE_SETUP_ENGINE(64);
    ASSERT_FALSE(tmp.path().empty());
    options.dir = tmp.path() + "/wal";
  }
  void TearDown() override {
#ifdef CARDNODE_FAULT_POINTS
    fault::disarm_all();
#endif
  }

  Result<std::unique_ptr<Wal>> open(IoEngine& e, std::vector<std::string>* replayed,
                                    ReplayStats* stats = nullptr) {
    replayed->clear();
    return Wal::open(
        e, options,
        [replayed](std::string_view p) -> Status {
          replayed->emplace_back(p);
          return {};
        },
        stats);
  }

  // Appends and waits until every record is durable; returns the payloads.
  std::vector<std::string> append_durably(Wal& wal, uint64_t count, size_t size,
                                          uint64_t first_id = 0) {
    std::vector<std::string> payloads;
    uint64_t acked = 0;
    for (uint64_t i = 0; i < count; ++i) {
      payloads.push_back(payload_for(first_id + i, size));
      auto st = wal.append(payloads.back(), [&acked](Status s) {
        EXPECT_TRUE(s);
        ++acked;
      });
      EXPECT_TRUE(st) << st.error().describe();
    }
    wal.drain();
    EXPECT_EQ(acked, count);
    return payloads;
  }

  TempDir tmp;
  std::unique_ptr<IoEngine> engine;
  WalOptions options;
};

TEST_P(WalTest, AppendsAckInOrderAndReplayExactly) {
  std::vector<std::string> replayed;
  ReplayStats stats;
  auto wal = open(*engine, &replayed, &stats);
  ASSERT_TRUE(wal) << wal.error().describe();
  EXPECT_EQ(stats.records, 0u);
  EXPECT_EQ((*wal)->next_sequence(), 1u);

  std::vector<std::string> payloads;
  std::vector<uint64_t> acked;
  for (uint64_t i = 0; i < 100; ++i) {
    payloads.push_back(payload_for(i, 1 + (i * 37) % 700));
    ASSERT_TRUE((*wal)->append(payloads.back(), [&acked, i](Status s) {
      ASSERT_TRUE(s) << s.error().describe();
      acked.push_back(i);
    }));
    if (i % 7 == 0) engine->reap();  // interleave completions with appends
  }
  (*wal)->drain();
  ASSERT_EQ(acked.size(), 100u);
  for (uint64_t i = 0; i < 100; ++i) EXPECT_EQ(acked[i], i);
  EXPECT_EQ((*wal)->pending_records(), 0u);
  EXPECT_EQ((*wal)->next_sequence(), 101u);
  wal->reset();

  wal = open(*engine, &replayed, &stats);
  ASSERT_TRUE(wal) << wal.error().describe();
  EXPECT_EQ(replayed, payloads);
  EXPECT_EQ(stats.records, 100u);
  EXPECT_EQ(stats.segments, 1u);
  EXPECT_EQ(stats.torn_tail_bytes, 0u);
  EXPECT_EQ((*wal)->next_sequence(), 101u);
}

TEST_P(WalTest, GroupCommitCoversManyRecordsPerFsync) {
  std::vector<std::string> replayed;
  auto wal = open(*engine, &replayed);
  ASSERT_TRUE(wal);
  uint64_t fsyncs_before = engine->stats().fsyncs;
  append_durably(**wal, 200, 64);
  uint64_t fsyncs = engine->stats().fsyncs - fsyncs_before;
  EXPECT_GE(fsyncs, 1u);
  EXPECT_LT(fsyncs, 200u);
  std::printf("200 records, %llu fdatasyncs\n", static_cast<unsigned long long>(fsyncs));
}

TEST_P(WalTest, SegmentsRollAndReplayInOrder) {
  options.segment_bytes = 4096;
  options.prealloc_bytes = 1024;
  std::vector<std::string> replayed;
  auto wal = open(*engine, &replayed);
  ASSERT_TRUE(wal);
  std::vector<std::string> all;
  for (int round = 0; round < 10; ++round) {
    auto batch = append_durably(**wal, 30, 100, all.size());
    all.insert(all.end(), batch.begin(), batch.end());
  }
  wal->reset();

  auto files = segment_files(options.dir);
  ASSERT_GT(files.size(), 3u);
  for (const auto& f : files) {
    EXPECT_LE(records_end(f), options.segment_bytes) << f;
  }
  // First segment starts at sequence 1, named with 20 digits.
  EXPECT_EQ(files.front(), options.dir + "/00000000000000000001.wal");

  ReplayStats stats;
  wal = open(*engine, &replayed, &stats);
  ASSERT_TRUE(wal) << wal.error().describe();
  EXPECT_EQ(replayed, all);
  EXPECT_EQ(stats.segments, files.size());
  EXPECT_EQ((*wal)->next_sequence(), all.size() + 1);

  auto checked = check_wal(options.dir);
  ASSERT_TRUE(checked) << checked.error().describe();
  EXPECT_EQ(checked->records, all.size());
  EXPECT_EQ(checked->segments, files.size());
}

TEST_P(WalTest, TornTailIsDroppedAndOverwritten) {
  std::vector<std::string> replayed;
  auto wal = open(*engine, &replayed);
  ASSERT_TRUE(wal);
  auto first = append_durably(**wal, 10, 50);
  wal->reset();

  auto files = segment_files(options.dir);
  ASSERT_EQ(files.size(), 1u);
  uint64_t end = records_end(files[0]);
  // A record cut short: header promises 50 bytes, only 20 made it, crc is wrong.
  std::string torn = frame(std::string(50, 'g')).substr(0, 28);
  pwrite_file(files[0], torn, end);

  auto checked = check_wal(options.dir);
  ASSERT_TRUE(checked);
  EXPECT_EQ(checked->torn_tail_bytes, 28u);

  ReplayStats stats;
  wal = open(*engine, &replayed, &stats);
  ASSERT_TRUE(wal) << wal.error().describe();
  EXPECT_EQ(replayed, first);
  EXPECT_EQ(stats.torn_tail_bytes, 28u);
  auto more = append_durably(**wal, 3, 5, 100);
  wal->reset();

  wal = open(*engine, &replayed, &stats);
  ASSERT_TRUE(wal);
  auto expected = first;
  expected.insert(expected.end(), more.begin(), more.end());
  EXPECT_EQ(replayed, expected);
  EXPECT_EQ(stats.torn_tail_bytes, 0u);
}

// A lost sector in the middle of a batch: zeros, then an intact record that was never
// acknowledged. New records written over the zeros must not let it come back.
TEST_P(WalTest, StaleRecordsAfterTornTailNeverResurface) {
  std::vector<std::string> replayed;
  auto wal = open(*engine, &replayed);
  ASSERT_TRUE(wal);
  auto first = append_durably(**wal, 4, 30);
  wal->reset();

  auto files = segment_files(options.dir);
  ASSERT_EQ(files.size(), 1u);
  uint64_t end = records_end(files[0]);
  std::string stale = frame("stale record, never acknowledged");
  pwrite_file(files[0], stale, end + 9);  // 9 zero bytes before it: one 1-byte record's room

  ReplayStats stats;
  wal = open(*engine, &replayed, &stats);
  ASSERT_TRUE(wal);
  EXPECT_EQ(replayed, first);
  EXPECT_EQ(stats.torn_tail_bytes, 9 + stale.size());
  bool acked = false;
  ASSERT_TRUE((*wal)->append("x", [&](Status s) { acked = s.has_value(); }));
  (*wal)->drain();
  ASSERT_TRUE(acked);
  wal->reset();

  wal = open(*engine, &replayed, &stats);
  ASSERT_TRUE(wal);
  auto expected = first;
  expected.push_back("x");
  EXPECT_EQ(replayed, expected);
}

TEST_P(WalTest, CorruptionInOlderSegmentFailsOpen) {
  options.segment_bytes = 2048;
  std::vector<std::string> replayed;
  auto wal = open(*engine, &replayed);
  ASSERT_TRUE(wal);
  for (int i = 0; i < 5; ++i) append_durably(**wal, 10, 100, i * 10);
  wal->reset();
  auto files = segment_files(options.dir);
  ASSERT_GE(files.size(), 2u);
  pwrite_file(files[0], "X", 300);  // inside a payload of the oldest segment

  wal = open(*engine, &replayed);
  ASSERT_FALSE(wal);
  EXPECT_EQ(wal.error().code, Errc::kCorruption);
  EXPECT_NE(wal.error().message.find(files[0]), std::string::npos) << wal.error().message;
  EXPECT_NE(wal.error().message.find("offset"), std::string::npos) << wal.error().message;

  auto checked = check_wal(options.dir);
  ASSERT_FALSE(checked);
  EXPECT_EQ(checked.error().code, Errc::kCorruption);
}

TEST_P(WalTest, MissingSegmentIsCorruption) {
  options.segment_bytes = 2048;
  std::vector<std::string> replayed;
  auto wal = open(*engine, &replayed);
  ASSERT_TRUE(wal);
  for (int i = 0; i < 5; ++i) append_durably(**wal, 10, 100, i * 10);
  wal->reset();
  auto files = segment_files(options.dir);
  ASSERT_GE(files.size(), 3u);
  ASSERT_EQ(::unlink(files[1].c_str()), 0);
  wal = open(*engine, &replayed);
  ASSERT_FALSE(wal);
  EXPECT_EQ(wal.error().code, Errc::kCorruption);
}

TEST_P(WalTest, ReplayErrorAbortsOpen) {
  std::vector<std::string> replayed;
  auto wal = open(*engine, &replayed);
  ASSERT_TRUE(wal);
  append_durably(**wal, 5, 10);
  wal->reset();
  int seen = 0;
  auto failed = Wal::open(
      *engine, options,
      [&](std::string_view) -> Status {
        if (++seen == 3) return fail(Errc::kInvalidArgument, "bad record");
        return {};
      },
      nullptr);
  ASSERT_FALSE(failed);
  EXPECT_EQ(failed.error().message, "bad record");
  EXPECT_EQ(seen, 3);
}

TEST_P(WalTest, RejectsEmptyAndOversizePayloads) {
  std::vector<std::string> replayed;
  auto wal = open(*engine, &replayed);
  ASSERT_TRUE(wal);
  bool called = false;
  auto on = [&](Status) { called = true; };
  auto empty = (*wal)->append("", on);
  ASSERT_FALSE(empty);
  EXPECT_EQ(empty.error().code, Errc::kInvalidArgument);
  auto big = (*wal)->append(std::string(kRecordBytesMax + 1, 'b'), on);
  ASSERT_FALSE(big);
  EXPECT_EQ(big.error().code, Errc::kInvalidArgument);
  EXPECT_FALSE(called);
  EXPECT_FALSE((*wal)->failed());

  std::string max(kRecordBytesMax, 'm');
  bool ok = false;
  ASSERT_TRUE((*wal)->append(max, [&](Status s) { ok = s.has_value(); }));
  (*wal)->drain();
  EXPECT_TRUE(ok);
  wal->reset();
  wal = open(*engine, &replayed);
  ASSERT_TRUE(wal);
  ASSERT_EQ(replayed.size(), 1u);
  EXPECT_EQ(replayed[0], max);
}

TEST_P(WalTest, PendingBoundRefusesAppends) {
  options.pending_bytes_max = 1000;
  std::vector<std::string> replayed;
  auto wal = open(*engine, &replayed);
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
      refused = true;
    }
  }
  EXPECT_TRUE(refused);
  (*wal)->drain();
  EXPECT_EQ(acked, accepted);
  EXPECT_FALSE((*wal)->failed());
  // Room again after the queue drained.
  EXPECT_TRUE((*wal)->append("again", [](Status) {}));
}

TEST_P(WalTest, FailedFsyncFailsTheWalForGood) {
  FaultyEngine faulty(*engine);
  std::vector<std::string> replayed;
  auto wal = open(faulty, &replayed);
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
  uint64_t fsyncs = faulty.stats().fsyncs;
  auto later =
      (*wal)->append("later", [](Status) { ADD_FAILURE() << "callback of a refused append"; });
  ASSERT_FALSE(later);
  EXPECT_EQ(later.error().sys_errno, EIO);
  (*wal)->drain();
  EXPECT_EQ(faulty.stats().fsyncs, fsyncs) << "fdatasync retried after a failure";
}

TEST_P(WalTest, FailedWriteFailsPendingAppends) {
  FaultyEngine faulty(*engine);
  std::vector<std::string> replayed;
  auto wal = open(faulty, &replayed);
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

#ifdef CARDNODE_FAULT_POINTS
TEST_P(WalTest, FaultPointBetweenWriteAndFsync) {
  std::vector<std::string> replayed;
  auto wal = open(*engine, &replayed);
  ASSERT_TRUE(wal);
  auto durable = append_durably(**wal, 2, 10);
  fault::arm("wal.after_write_before_fsync");
  std::vector<Status> results;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE((*wal)->append("unsynced", [&](Status s) { results.push_back(s); }));
  }
  (*wal)->drain();
  ASSERT_EQ(results.size(), 3u);
  for (const Status& s : results) EXPECT_FALSE(s);
  EXPECT_TRUE((*wal)->failed());
  wal->reset();
  // The written-but-unsynced batch may or may not survive; what was acked must.
  wal = open(*engine, &replayed);
  ASSERT_TRUE(wal);
  ASSERT_GE(replayed.size(), durable.size());
  EXPECT_TRUE(std::equal(durable.begin(), durable.end(), replayed.begin()));
}
#endif

// Power loss at a random moment: every acknowledged record survives, in order, and
// whatever else survives is a prefix of the unacknowledged appends.
TEST_P(WalTest, CrashKeepsExactlyTheAcknowledgedRecords) {
  options.segment_bytes = 8192;
  options.prealloc_bytes = 4096;
  uint32_t seed = std::random_device{}();
  std::printf("seed %u\n", seed);
  std::mt19937 rng(seed);
  for (int trial = 0; trial < 12; ++trial) {
    SCOPED_TRACE("seed " + std::to_string(seed) + " trial " + std::to_string(trial));
    TempDir trial_dir;
    options.dir = trial_dir.path() + "/wal";
    bool drop_all = trial % 2 == 0;  // else each unsynced sector survives by coin flip

    std::vector<std::string> appended;
    std::vector<std::string> acked;
    {
      FaultyEngine faulty(*engine);
      std::vector<std::string> replayed;
      auto wal = open(faulty, &replayed);
      ASSERT_TRUE(wal) << wal.error().describe();
      int rounds = 1 + static_cast<int>(rng() % 25);
      for (int r = 0; r < rounds; ++r) {
        int n = 1 + static_cast<int>(rng() % 12);
        for (int i = 0; i < n; ++i) {
          appended.push_back(payload_for(appended.size(), 1 + rng() % 900));
          std::string copy = appended.back();
          ASSERT_TRUE((*wal)->append(copy, [&acked, copy](Status s) {
            if (s) acked.push_back(copy);
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

    std::vector<std::string> replayed;
    auto wal = open(*engine, &replayed);
    ASSERT_TRUE(wal) << wal.error().describe();
    ASSERT_GE(replayed.size(), acked.size());
    EXPECT_TRUE(std::equal(acked.begin(), acked.end(), replayed.begin()));
    ASSERT_LE(replayed.size(), appended.size());
    EXPECT_TRUE(std::equal(replayed.begin(), replayed.end(), appended.begin()));
    if (drop_all) {
      EXPECT_EQ(replayed.size(), acked.size());
    }

    // The log keeps working after the crash, and a second replay agrees.
    auto more = append_durably(**wal, 5, 40, 1000000);
    wal->reset();
    auto before = replayed;
    wal = open(*engine, &replayed);
    ASSERT_TRUE(wal) << wal.error().describe();
    before.insert(before.end(), more.begin(), more.end());
    EXPECT_EQ(replayed, before);
    ASSERT_TRUE(check_wal(options.dir));
  }
}

TEST_P(WalTest, IdleWalWritesNothing) {
  std::vector<std::string> replayed;
  auto wal = open(*engine, &replayed);
  ASSERT_TRUE(wal);
  append_durably(**wal, 10, 30);
  IoStats before = engine->stats();
  for (int i = 0; i < 10; ++i) engine->reap();
  (*wal)->drain();
  pollfd p{engine->completion_fd(), POLLIN, 0};
  EXPECT_EQ(::poll(&p, 1, 0), 0);
  EXPECT_EQ(engine->stats().bytes_written, before.bytes_written);
  EXPECT_EQ(engine->stats().writes, before.writes);
  EXPECT_EQ(engine->stats().fsyncs, before.fsyncs);
  EXPECT_EQ(engine->in_flight(), 0u);
}

TEST_P(WalTest, AppendFromDurableCallbackGoesOut) {
  std::vector<std::string> replayed;
  auto wal = open(*engine, &replayed);
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
  wal = open(*engine, &replayed);
  ASSERT_TRUE(wal);
  EXPECT_EQ(replayed, (std::vector<std::string>{"one", "two", "three"}));
}

// A full engine queue holds the batch back instead of failing the WAL.
TEST_P(WalTest, WaitsForRoomInAFullEngineQueue) {
  std::string skip;
  auto tiny = testing::make_engine(GetParam(), 1, &skip);
  if (!skip.empty()) GTEST_SKIP() << skip;
  ASSERT_NE(tiny, nullptr);
  std::vector<std::string> replayed;
  auto wal = open(*tiny, &replayed);
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
  wal = open(*tiny, &replayed);
  ASSERT_TRUE(wal);
  EXPECT_EQ(replayed, std::vector<std::string>{"held back"});
}

INSTANTIATE_TEST_SUITE_P(Backends, WalTest,
                         ::testing::Values(Backend::kIoUring, Backend::kFallback),
                         testing::param_name);

TEST(CheckWal, MissingDirIsNotFound) {
  auto checked = check_wal("/nonexistent/cardnode/wal");
  ASSERT_FALSE(checked);
  EXPECT_EQ(checked.error().code, Errc::kNotFound);
}

TEST(CheckWal, ForeignFileNameIsCorruption) {
  TempDir tmp;
  std::string path = tmp.path() + "/12.wal";
  FILE* f = std::fopen(path.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fclose(f);
  auto checked = check_wal(tmp.path());
  ASSERT_FALSE(checked);
  EXPECT_EQ(checked.error().code, Errc::kCorruption);
}

}  // namespace
}  // namespace cardnode::storage
