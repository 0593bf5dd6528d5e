// Damage on disk, crafted byte by byte: what open() and check_wal() must call a torn tail
// (rules (a)-(d) of wal_format.h) and what corruption, and what salvage_wal() keeps.
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "storage/wal.h"
#include "storage/wal_test_util.h"

namespace cardnode::storage {
namespace {

using waltest::batch;
using waltest::batches_of;
using waltest::file_size;
using waltest::payload_for;
using waltest::pwrite_file;
using waltest::read_file;
using waltest::segment_files;
using waltest::seq_range;

std::string base_name(const std::string& path) {
  return path.substr(path.rfind('/') + 1);
}

std::string flip_bit(std::string bytes, uint64_t at) {
  bytes[at] = static_cast<char>(bytes[at] ^ (1 << (at % 8)));
  return bytes;
}

class WalDamageTest : public waltest::WalFixture {
 protected:
  // A fresh WAL directory under tmp/<name> with `rounds` rounds of 4 acknowledged, sealed
  // records; small segments when `segments` is set, one segment otherwise.
  std::vector<std::string> fresh(const std::string& name, uint32_t rounds, bool segments) {
    options.dir = tmp.path() + "/" + name + "/wal";
    options.segment_bytes = segments ? 2048 : kSegmentBytesDefault;
    options.prealloc_bytes = segments ? 512 : 64 << 10;
    return build_acked(rounds, 4);
  }

  // open() and check_wal() agree on corruption naming `file` at an offset; returns it.
  std::string expect_corruption(const std::string& file, uint64_t after_seq = 0) {
    auto wal = open(after_seq);
    EXPECT_FALSE(wal) << "opened with " << replayed.size() << " records";
    if (wal) return {};
    EXPECT_EQ(wal.error().code, Errc::kCorruption) << wal.error().describe();
    EXPECT_NE(wal.error().message.find(file + " at offset "), std::string::npos)
        << wal.error().message;
    auto checked = check_wal(options.dir, after_seq);
    EXPECT_FALSE(checked);
    if (!checked) {
      EXPECT_EQ(checked.error().message, wal.error().message);
    }
    return wal.error().message;
  }

  // A torn tail at `at` of `file` is dropped: open replays exactly `acked`, then new
  // records land where it was and nothing stale comes back.
  void expect_torn_tail(const std::vector<std::string>& acked, const std::string& file,
                        uint64_t at) {
    auto checked = check_wal(options.dir);
    ASSERT_TRUE(checked) << checked.error().describe();
    EXPECT_GT(checked->torn_tail_bytes, 0u);
    EXPECT_EQ(checked->torn_tail_at, file + " at offset " + std::to_string(at));
    ReplayStats stats;
    auto wal = open(0, &stats);
    ASSERT_TRUE(wal) << wal.error().describe();
    EXPECT_EQ(replayed, acked);
    EXPECT_EQ(stats.torn_tail_bytes, checked->torn_tail_bytes);
    EXPECT_EQ(stats.torn_tail_at, checked->torn_tail_at);
    EXPECT_EQ(waltest::seal_of(options.dir), acked.size());
    auto more = append_durably(**wal, 2, 10, 9000);
    wal->reset();
    wal = open(0, &stats);
    ASSERT_TRUE(wal) << wal.error().describe();
    auto expected = acked;
    expected.insert(expected.end(), more.begin(), more.end());
    EXPECT_EQ(replayed, expected);
    EXPECT_EQ(stats.torn_tail_bytes, 0u);
  }
};

// The words: bit flips and zeroed ranges at every record boundary of the newest
// segment must either recover to a prefix ending at the torn write or refuse to start —
// never drop an acknowledged record while starting. Every record here is acknowledged
// and sealed, so the only right answer is to refuse.
TEST_P(WalDamageTest, DamageSweepOfTheNewestSegmentNeverDropsAnAckedRecord) {
  auto all = fresh("build", 9, true);
  std::string pristine = tmp.path() + "/pristine";
  waltest::copy_dir(options.dir, pristine);
  auto files = segment_files(options.dir);
  ASSERT_GE(files.size(), 2u);
  const std::string newest = files.back();
  const std::string original = read_file(newest);
  auto batches = batches_of(newest);
  ASSERT_GE(batches.size(), 3u);
  uint64_t end = batches.back().end();

  std::vector<uint64_t> positions = {0, 12, 31};  // the segment header
  for (const auto& b : batches) {
    for (uint64_t d : {0, 4, 8, 16, 20, 23}) positions.push_back(b.offset + d);
    for (size_t i = 0; i < b.record_offsets.size(); ++i) {
      uint64_t r = b.record_offsets[i];
      uint32_t len = b.record_lengths[i];
      for (uint64_t d : {0u, 4u, 8u, 8 + len / 2, 7 + len}) positions.push_back(r + d);
    }
  }
  using Damage = std::function<std::string(std::string, uint64_t)>;
  auto zero = [](uint64_t n) {
    return [n](std::string s, uint64_t at) {
      std::fill_n(s.begin() + static_cast<long>(at), std::min<uint64_t>(n, s.size() - at), '\0');
      return s;
    };
  };
  std::vector<std::pair<std::string, Damage>> damages = {{"flip a bit", flip_bit},
                                                         {"zero 1 byte", zero(1)},
                                                         {"zero 7 bytes", zero(7)},
                                                         {"zero 64 bytes", zero(64)},
                                                         {"zero to the end", zero(UINT64_MAX)}};

  uint32_t cases = 0;
  for (uint64_t at : positions) {
    ASSERT_LT(at, end);
    for (const auto& [what, damage] : damages) {
      std::string damaged = damage(original, at);
      if (damaged == original) continue;  // zeros over zeros: nothing to detect
      SCOPED_TRACE(what + " at offset " + std::to_string(at));
      waltest::copy_dir(pristine, options.dir);
      pwrite_file(newest, damaged, 0);
      expect_corruption(newest);
      ++cases;
    }
  }
  std::printf("%u damaged copies of the newest segment, every one refused\n", cases);
}

TEST_P(WalDamageTest, UnsealedTornTailIsDroppedInEveryShape) {
  const std::string payload(700, 'u');
  struct Shape {
    const char* name;
    std::function<void(const std::string& file, uint64_t at, const std::string& b)> write;
  };
  std::vector<Shape> shapes = {
      {"cut short", [](auto& f, uint64_t at, auto& b) { pwrite_file(f, b.substr(0, 1000), at); }},
      {"cut inside its header",
       [](auto& f, uint64_t at, auto& b) { pwrite_file(f, b.substr(0, 10), at); }},
      {"header only", [](auto& f, uint64_t at, auto& b) { pwrite_file(f, b.substr(0, 24), at); }},
      {"a lost middle sector",
       [](auto& f, uint64_t at, auto& b) {
         pwrite_file(f, b, at);
         pwrite_file(f, std::string(512, '\0'), at + 600);
       }},
      {"a lost first sector",
       [](auto& f, uint64_t at, auto& b) { pwrite_file(f, b.substr(512), at + 512); }},
      {"a garbage header",
       [](auto& f, uint64_t at, auto& b) {
         std::string g = b;
         for (int i = 0; i < 24; ++i) g[i] = static_cast<char>(0x5a + 7 * i);
         pwrite_file(f, g, at);
       }},
      {"a bad last record",
       [](auto& f, uint64_t at, auto& b) { pwrite_file(f, flip_bit(b, b.size() - 3), at); }}};
  int n = 0;
  for (const Shape& shape : shapes) {
    SCOPED_TRACE(shape.name);
    auto acked = fresh("shape" + std::to_string(n++), 3, false);
    std::string file = segment_files(options.dir).back();
    uint64_t at = waltest::log_end(file);
    uint64_t s = acked.size();
    shape.write(file, at, batch(s + 1, {payload, payload, payload}));
    expect_torn_tail(acked, file, at);
  }
}

// Rule (c): an intact batch after the damage proves the damaged one was fdatasynced.
TEST_P(WalDamageTest, DamageBeforeAnIntactLaterBatchIsCorruption) {
  for (bool header_intact : {true, false}) {
    SCOPED_TRACE(header_intact ? "damaged record" : "damaged header");
    auto acked = fresh(header_intact ? "record" : "header", 2, false);
    std::string file = segment_files(options.dir).back();
    uint64_t at = waltest::log_end(file);
    uint64_t s = acked.size();
    std::string b1 = batch(s + 1, {payload_for(1, 300), payload_for(2, 300), payload_for(3, 300)});
    b1 = flip_bit(b1, header_intact ? 24 + 308 + 100 : 9);
    std::string b2 = batch(s + 4, {payload_for(4, 50), payload_for(5, 50)});
    pwrite_file(file, b1 + b2, at);
    std::string message = expect_corruption(file);
    EXPECT_NE(message.find("intact later batch begins at offset " + std::to_string(at + b1.size())),
              std::string::npos)
        << message;
  }
}

// A client's payload may look like a batch (header and record with valid crcs). Inside the
// extent of a batch whose header is intact it is payload, not evidence for rule (c).
TEST_P(WalDamageTest, APayloadThatLooksLikeABatchIsNotALaterBatch) {
  for (bool in_damaged_record : {false, true}) {
    SCOPED_TRACE(in_damaged_record ? "in the damaged record" : "in an intact record");
    auto acked = fresh(in_damaged_record ? "damaged" : "intact", 2, false);
    std::string file = segment_files(options.dir).back();
    uint64_t at = waltest::log_end(file);
    uint64_t s = acked.size();
    std::string fake = batch(s + 50, {"a record that checks out"});
    std::string b1 = in_damaged_record ? batch(s + 1, {"first", "z" + fake})
                                       : batch(s + 1, {"x" + fake + "y", "second"});
    // Damage the second record's first payload byte.
    uint64_t second = 24 + 8 + (in_damaged_record ? 5 : fake.size() + 2);
    pwrite_file(file, flip_bit(b1, second + 8), at);
    expect_torn_tail(acked, file, at);
  }
}

// Rule (d): the torn write is one batch; a nonzero byte past where it could end is not.
TEST_P(WalDamageTest, NonzeroBytesPastTheTornBatchAreCorruption) {
  const std::string payload(700, 'd');
  struct Case {
    bool header_intact;
    int64_t from_end;  // where the stray byte goes, relative to E
    bool torn;
  };
  int n = 0;
  for (Case c : {Case{true, 100, false}, Case{true, -1, true}, Case{false, 10, false},
                 Case{false, -1, true}}) {
    SCOPED_TRACE("header intact " + std::to_string(c.header_intact) + ", byte at E" +
                 std::to_string(c.from_end));
    auto acked = fresh("d" + std::to_string(n++), 2, false);
    std::string file = segment_files(options.dir).back();
    uint64_t at = waltest::log_end(file);
    std::string b = batch(acked.size() + 1, {payload, payload, payload});
    if (!c.header_intact) b = flip_bit(b, 5);
    pwrite_file(file, b.substr(0, 1000), at);
    uint64_t e = at + 24 + (c.header_intact ? b.size() - 24 : kBatchBytesMax);
    pwrite_file(file, "\x01", static_cast<uint64_t>(static_cast<int64_t>(e) + c.from_end));
    if (c.torn) {
      expect_torn_tail(acked, file, at);
    } else {
      std::string message = expect_corruption(file);
      EXPECT_NE(message.find("past where that batch could end"), std::string::npos) << message;
    }
  }
}

TEST_P(WalDamageTest, ABatchOutOfSequenceIsCorruption) {
  for (int64_t shift : {1, -1}) {  // a gap, an overlap
    auto acked = fresh("shift" + std::to_string(shift + 1), 2, false);
    std::string file = segment_files(options.dir).back();
    uint64_t at = waltest::log_end(file);
    uint64_t first = acked.size() + 1 + static_cast<uint64_t>(shift);
    pwrite_file(file, batch(first, {"a", "b"}), at);
    std::string message = expect_corruption(file);
    EXPECT_NE(
        message.find(file + " at offset " + std::to_string(at) + ": batch starts at sequence " +
                     std::to_string(first) + ", expected " + std::to_string(acked.size() + 1)),
        std::string::npos)
        << message;
  }
}

TEST_P(WalDamageTest, DamageInAnOlderSegmentIsCorruption) {
  for (bool seal_older : {false, true}) {
    SCOPED_TRACE(seal_older ? "seal older than the damage" : "sealed");
    fresh(seal_older ? "unsealed" : "sealed", 9, true);
    auto files = segment_files(options.dir);
    ASSERT_GE(files.size(), 2u);
    // In the last batch of the oldest segment, which is not the last segment.
    auto b = batches_of(files[0]).back();
    uint64_t at = b.record_offsets.back() + 10;
    pwrite_file(files[0], flip_bit(read_file(files[0]), at).substr(at, 1), at);
    // With a seal that does not cover it, only rule (a) is left to tell it from a torn tail.
    if (seal_older) pwrite_file(options.dir + "/seal", waltest::seal_bytes(b.first_seq - 1), 0);
    std::string message = expect_corruption(files[0]);
    EXPECT_NE(message.find(seal_older ? "after it holds records" : "(sealed through"),
              std::string::npos)
        << message;
  }
}

TEST_P(WalDamageTest, AMissingMiddleSegmentIsCorruption) {
  fresh("missing", 9, true);
  auto files = segment_files(options.dir);
  ASSERT_GE(files.size(), 3u);
  ASSERT_EQ(::unlink(files[1].c_str()), 0);
  std::string message = expect_corruption(files[2]);
  EXPECT_NE(message.find("starts at sequence"), std::string::npos) << message;
}

// The seal names the last acknowledged record: a log that ends before it lost records.
TEST_P(WalDamageTest, ALogThatEndsBeforeTheSealIsCorruption) {
  fresh("deleted", 9, true);
  auto files = segment_files(options.dir);
  ASSERT_GE(files.size(), 2u);
  ASSERT_EQ(::unlink(files.back().c_str()), 0);
  std::string message = expect_corruption(files[files.size() - 2]);
  EXPECT_NE(message.find("but the seal names"), std::string::npos) << message;

  fresh("truncated", 9, true);
  files = segment_files(options.dir);
  ASSERT_EQ(::truncate(files.back().c_str(), 32), 0);
  expect_corruption(files.back());
}

TEST_P(WalDamageTest, ADamagedOrMissingSealIsCorruption) {
  fresh("seal", 2, false);
  std::string seal = options.dir + "/seal";
  std::string good = read_file(seal);
  pwrite_file(seal, flip_bit(good, 9), 0);
  expect_corruption(seal);
  ASSERT_EQ(::truncate(seal.c_str(), 10), 0);
  expect_corruption(seal);
  ASSERT_EQ(::unlink(seal.c_str()), 0);
  expect_corruption(seal);
}

// A crash during a roll leaves a segment with a torn header (or a whole one) and zeros
// after the end of the log: dropped at open, reported by check_wal.
TEST_P(WalDamageTest, RollLeftoversAreDroppedAtOpen) {
  auto acked = fresh("leftover", 2, false);
  uint64_t s = acked.size();
  std::string torn = options.dir + "/" + waltest::segment_name(s + 1);
  std::string whole = options.dir + "/" + waltest::segment_name(s + 3);
  pwrite_file(torn, waltest::segment_header(s + 1).substr(0, 13), 0);
  ASSERT_EQ(::truncate(torn.c_str(), 4096), 0);
  pwrite_file(whole, waltest::segment_header(s + 3), 0);
  auto checked = check_wal(options.dir);
  ASSERT_TRUE(checked) << checked.error().describe();
  EXPECT_EQ(checked->segments_dropped, 2u);
  EXPECT_EQ(checked->records, s);
  ReplayStats stats;
  auto wal = open(0, &stats);
  ASSERT_TRUE(wal) << wal.error().describe();
  EXPECT_EQ(stats.segments_dropped, 2u);
  EXPECT_EQ(replayed, acked);
  EXPECT_EQ(segment_files(options.dir).size(), 1u);
  auto more = append_durably(**wal, 2, 10);
  wal->reset();
  wal = open();
  ASSERT_TRUE(wal);
  acked.insert(acked.end(), more.begin(), more.end());
  EXPECT_EQ(replayed, acked);

  // A segment with a whole header at the next sequence number is simply the next segment.
  wal->reset();
  std::string next = options.dir + "/" + waltest::segment_name(acked.size() + 1);
  pwrite_file(next, waltest::segment_header(acked.size() + 1), 0);
  wal = open(0, &stats);
  ASSERT_TRUE(wal);
  EXPECT_EQ(stats.segments_dropped, 0u);
  append_durably(**wal, 1, 10);
  EXPECT_EQ(batches_of(next).size(), 1u);
}

TEST_P(WalDamageTest, ALeftoverBeforeRecordsIsCorruption) {
  auto acked = fresh("leftover", 2, false);
  uint64_t s = acked.size();
  std::string torn = options.dir + "/" + waltest::segment_name(s + 1);
  std::string later = options.dir + "/" + waltest::segment_name(s + 5);
  pwrite_file(torn, waltest::segment_header(s + 1).substr(0, 13), 0);
  pwrite_file(later, waltest::segment_header(s + 5) + batch(s + 5, {"x"}), 0);
  std::string message = expect_corruption(torn);
  EXPECT_NE(message.find("after it holds records"), std::string::npos) << message;
}

// --- salvage -------------------------------------------------------------------------------

class WalSalvageTest : public WalDamageTest {
 protected:
  std::string aside() const { return tmp.path() + "/aside"; }

  // After salvage: open replays exactly `kept` and appends continue after it.
  void expect_open_keeps(const std::vector<std::string>& kept) {
    auto wal = open();
    ASSERT_TRUE(wal) << wal.error().describe();
    EXPECT_EQ(replayed, kept);
    EXPECT_EQ((*wal)->next_sequence(), kept.size() + 1);
    auto more = append_durably(**wal, 2, 20, 7000);
    wal->reset();
    wal = open();
    ASSERT_TRUE(wal) << wal.error().describe();
    auto expected = kept;
    expected.insert(expected.end(), more.begin(), more.end());
    EXPECT_EQ(replayed, expected);
    EXPECT_EQ(replayed_seqs, seq_range(1, expected.size()));
  }

  // A batch of `file` with at least 3 records, not the last one; damages its 2nd record.
  waltest::BatchInfo damage_second_record(const std::string& file) {
    auto batches = batches_of(file);
    for (size_t i = 0; i + 1 < batches.size(); ++i) {
      if (batches[i].count < 3) continue;
      uint64_t at = batches[i].record_offsets[1] + 8 + 3;
      pwrite_file(file, flip_bit(read_file(file), at).substr(at, 1), at);
      return batches[i];
    }
    ADD_FAILURE() << "no batch of 3 records with one after it in " << file;
    return {};
  }

  static uint64_t records_after(const std::vector<waltest::BatchInfo>& batches, uint64_t offset) {
    uint64_t n = 0;
    for (const auto& b : batches) n += b.offset > offset ? b.count : 0;
    return n;
  }
};

TEST_P(WalSalvageTest, TrimsTheDamagedBatchOfTheNewestSegment) {
  auto all = fresh("wal", 9, true);
  auto files = segment_files(options.dir);
  std::string newest = files.back();
  std::string before = read_file(newest);
  auto batches = batches_of(newest);
  auto b = damage_second_record(newest);
  std::string damaged = read_file(newest);
  uint64_t dirty_end = waltest::log_end(newest);

  auto report = salvage_wal(options.dir, aside());
  ASSERT_TRUE(report) << report.error().describe();
  EXPECT_TRUE(report->damaged);
  EXPECT_NE(report->damage.find(newest + " at offset "), std::string::npos) << report->damage;
  EXPECT_EQ(report->records_kept, b.first_seq);  // through the damaged batch's first record
  EXPECT_EQ(report->records_set_aside, records_after(batches, b.offset));
  std::string tail = aside() + "/" + base_name(newest) + ".tail";
  EXPECT_EQ(read_file(tail), damaged.substr(b.offset, dirty_end - b.offset))
      << "the tail is the original bytes from the damaged batch on";
  EXPECT_EQ(report->bytes_set_aside, file_size(tail));
  EXPECT_EQ(file_size(newest), before.size()) << "the segment keeps its size";
  std::vector<std::string> kept(all.begin(), all.begin() + static_cast<long>(b.first_seq));
  expect_open_keeps(kept);
}

TEST_P(WalSalvageTest, SetsAsideEveryLaterSegment) {
  auto all = fresh("wal", 9, true);
  auto files = segment_files(options.dir);
  ASSERT_GE(files.size(), 3u);
  std::vector<uint64_t> sizes;
  uint64_t later_records = 0;
  for (size_t i = 1; i < files.size(); ++i) {
    sizes.push_back(file_size(files[i]));
    for (const auto& b : batches_of(files[i])) later_records += b.count;
  }
  auto batches = batches_of(files[0]);
  auto b = damage_second_record(files[0]);
  uint64_t dirty_end = waltest::log_end(files[0]);

  auto report = salvage_wal(options.dir, aside());
  ASSERT_TRUE(report) << report.error().describe();
  EXPECT_TRUE(report->damaged);
  EXPECT_EQ(report->records_kept, b.first_seq);
  EXPECT_EQ(report->records_set_aside, records_after(batches, b.offset) + later_records);
  uint64_t bytes = dirty_end - b.offset;
  for (size_t i = 1; i < files.size(); ++i) {
    EXPECT_EQ(file_size(aside() + "/" + base_name(files[i])), sizes[i - 1]) << files[i];
    bytes += sizes[i - 1];
  }
  EXPECT_EQ(report->bytes_set_aside, bytes);
  EXPECT_EQ(segment_files(options.dir), std::vector<std::string>{files[0]});
  std::vector<std::string> kept(all.begin(), all.begin() + static_cast<long>(b.first_seq));
  expect_open_keeps(kept);
}

TEST_P(WalSalvageTest, LeavesAHealthyWalAlone) {
  auto all = fresh("wal", 4, true);
  // A torn tail is not corruption either.
  std::string file = segment_files(options.dir).back();
  pwrite_file(file, batch(all.size() + 1, {"torn"}).substr(0, 30), waltest::log_end(file));
  auto before = waltest::dir_bytes(options.dir);
  auto report = salvage_wal(options.dir, aside());
  ASSERT_TRUE(report) << report.error().describe();
  EXPECT_FALSE(report->damaged);
  EXPECT_EQ(report->records_set_aside, 0u);
  EXPECT_EQ(waltest::dir_bytes(options.dir), before);
  EXPECT_FALSE(std::filesystem::exists(aside()));
}

TEST_P(WalSalvageTest, LowersTheSealWhenTheNewestSegmentIsLost) {
  auto all = fresh("wal", 9, true);
  auto files = segment_files(options.dir);
  ASSERT_EQ(::unlink(files.back().c_str()), 0);
  uint64_t first_lost = batches_of(files[files.size() - 2]).back().first_seq +
                        batches_of(files[files.size() - 2]).back().count;
  auto report = salvage_wal(options.dir, aside());
  ASSERT_TRUE(report) << report.error().describe();
  EXPECT_TRUE(report->damaged);
  EXPECT_EQ(report->records_kept, first_lost - 1);
  EXPECT_EQ(report->bytes_set_aside, 0u);
  std::vector<std::string> kept(all.begin(), all.begin() + static_cast<long>(first_lost - 1));
  expect_open_keeps(kept);
}

TEST_P(WalSalvageTest, MovesADamagedSealAndForeignNamesAside) {
  auto all = fresh("wal", 2, false);
  std::string seal = options.dir + "/seal";
  std::string bad = flip_bit(read_file(seal), 3);
  pwrite_file(seal, bad, 0);
  pwrite_file(options.dir + "/7.wal", "stray", 0);
  auto report = salvage_wal(options.dir, aside());
  ASSERT_TRUE(report) << report.error().describe();
  EXPECT_TRUE(report->damaged);
  EXPECT_EQ(report->records_kept, all.size());
  EXPECT_EQ(read_file(aside() + "/seal"), bad);
  EXPECT_EQ(read_file(aside() + "/7.wal"), "stray");
  EXPECT_EQ(report->bytes_set_aside, 24u + 5);
  expect_open_keeps(all);
}

INSTANTIATE_TEST_SUITE_P(Backends, WalDamageTest,
                         ::testing::Values(Backend::kIoUring, Backend::kFallback),
                         testing::param_name);
INSTANTIATE_TEST_SUITE_P(Backends, WalSalvageTest,
                         ::testing::Values(Backend::kIoUring, Backend::kFallback),
                         testing::param_name);

}  // namespace
}  // namespace cardnode::storage
