#include "storage/snapshot.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "storage/crash_plan.h"
#include "storage/faulty_engine.h"
#include "storage/faulty_fs.h"
#include "storage/test_util.h"

namespace cardnode::storage {
namespace {

using testing::run_until;
using testing::TempDir;

constexpr uint32_t kRetriesMax = 1u << 20;

uint32_t test_seed() {
  const char* env = std::getenv("CARDNODE_TEST_SEED");
  uint32_t seed = env != nullptr && *env != '\0'
                      ? static_cast<uint32_t>(std::strtoul(env, nullptr, 10))
                      : std::random_device{}();
  std::printf("seed %u (CARDNODE_TEST_SEED=%u repeats this run)\n", seed, seed);
  return seed;
}

std::string snap_name(uint64_t seq) {
  char name[32];
  (void)std::snprintf(name, sizeof name, "%020llu.snap", static_cast<unsigned long long>(seq));
  return name;
}

bool exists(const std::string& path) {
  return ::access(path.c_str(), F_OK) == 0;
}

void write_file(const std::string& path, const std::string& bytes) {
  FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr) << path;
  ASSERT_EQ(std::fwrite(bytes.data(), 1, bytes.size(), f), bytes.size());
  ASSERT_EQ(std::fclose(f), 0);
}

uint64_t file_bytes(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

// Names in dir ending in ".tmp".
std::vector<std::string> tmp_files(const std::string& dir) {
  std::vector<std::string> out;
  auto names = list_dir(dir, 1000);
  if (!names) return out;
  for (const auto& n : *names) {
    if (n.ends_with(".tmp")) out.push_back(n);
  }
  return out;
}

// Distinct, position-dependent bytes: a chunk delivered out of place or shifted shows.
std::string chunk_for(uint64_t id, size_t size) {
  std::string out(size, '\0');
  uint64_t x = id * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < size; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    out[i] = static_cast<char>(x);
  }
  return out;
}

// --- an encoder written from snapshot.h alone, independent of snapshot.cc -----------

void le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>(v >> (8 * i)));
}

uint32_t crc(std::string_view s) {
  return static_cast<uint32_t>(
      crc32(0L, reinterpret_cast<const Bytef*>(s.data()), static_cast<uInt>(s.size())));
}

std::string encode_by_hand(uint64_t covers_seq, const std::vector<std::string>& chunks) {
  std::string out = "CNSNAP01";
  le(out, covers_seq, 8);
  le(out, crc(out), 4);
  le(out, 0, 4);
  uint64_t payload = 0;
  for (const auto& c : chunks) {
    std::string len;
    le(len, c.size(), 4);
    out += len;
    le(out, crc(len + c), 4);
    out += c;
    payload += c.size();
  }
  le(out, 0, 4);
  le(out, chunks.size(), 8);
  le(out, payload, 8);
  std::string covered;
  le(covered, covers_seq, 8);
  le(covered, chunks.size(), 8);
  le(covered, payload, 8);
  le(out, crc(covered), 4);
  return out;
}

// --- driving a writer --------------------------------------------------------------

// add() with back-pressure, as a producer on the loop would: while the writer is busy,
// let the engine finish something. A refusal while busy() is back-pressure; any other
// error is final (a failed writer's ENOSPC is kResourceExhausted too, but not busy()).
Status add_when_ready(SnapshotWriter& w, IoEngine& engine, std::string_view chunk,
                      uint64_t* busy_waits = nullptr) {
  for (uint32_t i = 0; i < kRetriesMax; ++i) {
    if (w.busy() && engine.in_flight() > 0) {
      if (busy_waits != nullptr) ++*busy_waits;
      engine.wait();
      continue;
    }
    auto st = w.add(chunk);
    if (st || !w.busy()) return st;
    EXPECT_EQ(st.error().code, Errc::kResourceExhausted);
  }
  return fail(Errc::kInternal, "writer never had room");
}

struct Outcome {
  Status begin;                // begin() failed: nothing else ran
  std::optional<Status> add;   // first failed add(), if any
  std::optional<Status> done;  // what finish() reported
  uint32_t done_calls = 0;
  uint64_t bytes_written = 0;
};

// Writes a whole snapshot (stopping the adds at the first error, then finishing anyway)
// and waits for done.
Outcome write_snapshot(IoEngine& engine, Fs& fs, const std::string& dir, uint64_t seq,
                       const std::vector<std::string>& chunks, uint64_t buffer_bytes_max) {
  Outcome out;
  auto w = SnapshotWriter::begin(engine, fs, dir, seq, buffer_bytes_max);
  if (!w) {
    out.begin = std::unexpected(w.error());
    return out;
  }
  for (const auto& c : chunks) {
    auto st = add_when_ready(**w, engine, c);
    if (!st) {
      out.add = st;
      break;
    }
  }
  (*w)->finish([&out](Status st) {
    out.done = st;
    ++out.done_calls;
  });
  EXPECT_TRUE(run_until(engine, [&] { return out.done.has_value(); }));
  out.bytes_written = (*w)->bytes_written();
  return out;
}

Result<std::vector<std::string>> read_chunks(const std::string& path,
                                             SnapshotInfo* info = nullptr) {
  std::vector<std::string> got;
  auto r = read_snapshot(path, [&](std::string_view c) -> Status {
    got.emplace_back(c);
    return {};
  });
  if (!r) return std::unexpected(r.error());
  if (info != nullptr) *info = *r;
  return got;
}

std::vector<std::string> small_chunks(uint64_t first_id, uint32_t count, size_t size) {
  std::vector<std::string> out;
  for (uint32_t i = 0; i < count; ++i) out.push_back(chunk_for(first_id + i, size + i));
  return out;
}

class SnapshotTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    CARDNODE_SETUP_ENGINE(64);
    ASSERT_FALSE(tmp.path().empty());
    dir = tmp.path() + "/snapshots";
    ASSERT_TRUE(make_dirs(dir));
  }

  // A finished snapshot through the real Fs; fails the test if anything went wrong.
  void write_ok(uint64_t seq, const std::vector<std::string>& chunks,
                uint64_t buffer_bytes_max = 4ull << 20) {
    Outcome o = write_snapshot(*engine, Fs::real(), dir, seq, chunks, buffer_bytes_max);
    ASSERT_TRUE(o.begin) << o.begin.error().describe();
    ASSERT_FALSE(o.add.has_value()) << o.add->error().describe();
    ASSERT_TRUE(o.done.has_value());
    ASSERT_TRUE(*o.done) << o.done->error().describe();
  }

  std::string path_of(uint64_t seq) const { return dir + "/" + snap_name(seq); }

  TempDir tmp;
  std::string dir;
  std::unique_ptr<IoEngine> engine;
};

TEST_P(SnapshotTest, RoundTripsManyChunksUnderBackPressure) {
  std::mt19937 rng(test_seed());
  // Thousands of small chunks, a hundred up to 64 KiB, one of each extreme size, in a
  // random order: about 7 MB.
  std::vector<size_t> sizes = {1, kSnapshotChunkBytesMax};
  for (int i = 0; i < 3000; ++i) sizes.push_back(1 + rng() % 256);
  for (int i = 0; i < 100; ++i) sizes.push_back(1 + rng() % (64u << 10));
  std::shuffle(sizes.begin(), sizes.end(), rng);
  std::vector<std::string> chunks;
  uint64_t total = 0;
  for (size_t size : sizes) {
    chunks.push_back(chunk_for(chunks.size(), size));
    total += size;
  }

  const uint64_t seq = 12345;
  IoStats before = engine->stats();
  auto w = SnapshotWriter::begin(*engine, Fs::real(), dir, seq, 512u << 10);
  ASSERT_TRUE(w) << w.error().describe();
  EXPECT_EQ((*w)->covers_seq(), seq);
  EXPECT_TRUE(exists(path_of(seq) + ".tmp"));
  uint64_t busy_waits = 0;
  bool refused_while_busy = false;
  for (const auto& c : chunks) {
    if ((*w)->busy() && !refused_while_busy) {
      auto st = (*w)->add(c);  // the contract: no room while busy
      ASSERT_FALSE(st);
      EXPECT_EQ(st.error().code, Errc::kResourceExhausted);
      refused_while_busy = true;
    }
    ASSERT_TRUE(add_when_ready(**w, *engine, c, &busy_waits));
  }
  EXPECT_TRUE(refused_while_busy);
  EXPECT_GT(busy_waits, 0u);
  std::optional<Status> done;
  (*w)->finish([&](Status st) { done = st; });
  EXPECT_FALSE(done.has_value()) << "done ran inside finish()";
  ASSERT_TRUE(run_until(*engine, [&] { return done.has_value(); }));
  ASSERT_TRUE(*done) << done->error().describe();
  EXPECT_EQ((*w)->bytes_written(), file_bytes(path_of(seq)));
  EXPECT_EQ(engine->stats().fsyncs - before.fsyncs, 1u);
  EXPECT_GT(engine->stats().writes - before.writes, 5u);
  w->reset();

  EXPECT_FALSE(exists(path_of(seq) + ".tmp"));
  auto listed = list_snapshots(dir);
  ASSERT_TRUE(listed) << listed.error().describe();
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].covers_seq, seq);
  EXPECT_EQ((*listed)[0].path, dir + "/00000000000000012345.snap");

  SnapshotInfo info;
  auto got = read_chunks(path_of(seq), &info);
  ASSERT_TRUE(got) << got.error().describe();
  EXPECT_TRUE(*got == chunks) << "chunks differ";
  EXPECT_EQ(info.covers_seq, seq);
  EXPECT_EQ(info.chunks, chunks.size());
  EXPECT_EQ(info.file_bytes, file_bytes(path_of(seq)));
  auto checked = check_snapshot(path_of(seq));
  ASSERT_TRUE(checked);
  EXPECT_EQ(checked->chunks, chunks.size());
  std::printf("%zu chunks, %llu payload bytes, %llu waits while busy\n", chunks.size(),
              static_cast<unsigned long long>(total), static_cast<unsigned long long>(busy_waits));
}

// The writer's bytes are exactly snapshot.h's format, and a file built from the format
// alone reads back: the header is the contract, not snapshot.cc.
TEST_P(SnapshotTest, BytesMatchTheDocumentedFormat) {
  std::vector<std::string> chunks = {"a", "hello snapshot", std::string(1000, 'z')};
  write_ok(77, chunks);
  EXPECT_EQ(testing::read_file(path_of(77)), encode_by_hand(77, chunks));

  write_file(path_of(78), encode_by_hand(78, {"x", "yz"}));
  auto got = read_chunks(path_of(78));
  ASSERT_TRUE(got) << got.error().describe();
  EXPECT_EQ(*got, (std::vector<std::string>{"x", "yz"}));

  write_ok(79, {});  // no chunks at all is a valid (empty) state
  got = read_chunks(path_of(79));
  ASSERT_TRUE(got);
  EXPECT_TRUE(got->empty());
  EXPECT_EQ(testing::read_file(path_of(79)), encode_by_hand(79, {}));
}

TEST_P(SnapshotTest, ListsNewestFirstByName) {
  for (uint64_t seq : {3u, 100u, 20u}) write_ok(seq, {chunk_for(seq, 10)});
  write_file(dir + "/" + snap_name(500) + ".tmp", "half a snapshot");
  auto listed = list_snapshots(dir);
  ASSERT_TRUE(listed) << listed.error().describe();
  ASSERT_EQ(listed->size(), 3u);
  EXPECT_EQ((*listed)[0].covers_seq, 100u);
  EXPECT_EQ((*listed)[1].covers_seq, 20u);
  EXPECT_EQ((*listed)[2].covers_seq, 3u);
  EXPECT_EQ((*listed)[2].path, path_of(3));

  auto missing = list_snapshots(tmp.path() + "/nope");
  ASSERT_TRUE(missing) << missing.error().describe();
  EXPECT_TRUE(missing->empty());

  for (const char* bad : {"12.snap", "0000000000000000000x.snap", "notes.txt",
                          "000000000000000000001.snap", "99999999999999999999.snap"}) {
    TempDir other;
    write_file(other.path() + "/" + bad, "");
    auto r = list_snapshots(other.path());
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.error().code, Errc::kCorruption) << bad;
  }
}

// Every single-byte change and every truncation of a small snapshot is found before a
// chunk is delivered, by read_snapshot and check_snapshot alike.
TEST_P(SnapshotTest, AnyFlippedByteOrTruncationIsDamage) {
  const std::vector<std::string> chunks = {"1", "two-two", chunk_for(3, 40)};
  write_ok(42, chunks);
  const std::string path = path_of(42);
  const std::string good = testing::read_file(path);
  ASSERT_EQ(good.size(), 24u + (8 + 1) + (8 + 7) + (8 + 40) + 24u);

  auto expect_damage = [&](const std::string& bytes, const std::string& what) {
    write_file(path, bytes);
    uint32_t delivered = 0;
    auto r = read_snapshot(path, [&](std::string_view) -> Status {
      ++delivered;
      return {};
    });
    ASSERT_FALSE(r) << what;
    EXPECT_EQ(r.error().code, Errc::kCorruption) << what;
    EXPECT_NE(r.error().message.find(path + " at offset "), std::string::npos) << r.error().message;
    EXPECT_EQ(delivered, 0u) << what;
    auto c = check_snapshot(path);
    ASSERT_FALSE(c) << what;
    EXPECT_EQ(c.error().code, Errc::kCorruption) << what;
  };
  for (size_t at = 0; at < good.size(); ++at) {
    for (uint8_t mask : {0x01, 0x80, 0xff}) {
      std::string bad = good;
      bad[at] = static_cast<char>(bad[at] ^ mask);
      expect_damage(bad, "flip at " + std::to_string(at) + " mask " + std::to_string(mask));
    }
  }
  for (size_t len = 0; len < good.size(); ++len) {
    expect_damage(good.substr(0, len), "truncated to " + std::to_string(len));
  }
  expect_damage(good + '\0', "one trailing zero byte");
  expect_damage(good + good, "appended copy");

  write_file(path, good);
  ASSERT_TRUE(read_chunks(path));
  // The same bytes under another sequence number's name.
  write_file(path_of(43), good);
  auto renamed = check_snapshot(path_of(43));
  ASSERT_FALSE(renamed);
  EXPECT_EQ(renamed.error().code, Errc::kCorruption);
  // Not a snapshot name at all: a wrong argument, not a damaged snapshot.
  write_file(dir + "/copy.snap", good);
  auto misnamed = check_snapshot(dir + "/copy.snap");
  ASSERT_FALSE(misnamed);
  EXPECT_EQ(misnamed.error().code, Errc::kInvalidArgument);
  auto missing = check_snapshot(path_of(44));
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, Errc::kNotFound);
}

TEST_P(SnapshotTest, ChunkCallbackErrorIsReturnedAsIs) {
  write_ok(5, small_chunks(0, 5, 10));
  uint32_t seen = 0;
  auto r = read_snapshot(path_of(5), [&](std::string_view) -> Status {
    if (++seen == 2) return fail(Errc::kInvalidArgument, "bad state chunk");
    return {};
  });
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kInvalidArgument);
  EXPECT_EQ(r.error().message, "bad state chunk");
  EXPECT_EQ(seen, 2u);
}

TEST_P(SnapshotTest, LeftoverTmpIsIgnoredThenReplacedOrRemoved) {
  write_ok(4, {"old"});
  const std::string stale = path_of(7) + ".tmp";
  write_file(stale, std::string(5000, 'g'));
  auto listed = list_snapshots(dir);
  ASSERT_TRUE(listed);
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].covers_seq, 4u);

  {
    auto w = SnapshotWriter::begin(*engine, Fs::real(), dir, 7);
    ASSERT_TRUE(w) << w.error().describe();
    std::string fresh = testing::read_file(stale);
    EXPECT_EQ(fresh.size(), 24u) << "stale bytes survived begin()";
    EXPECT_EQ(fresh.substr(0, 8), "CNSNAP01");
  }  // abandoned: its .tmp goes too
  EXPECT_FALSE(exists(stale));

  write_file(stale, "crash leftover");
  write_ok(7, {"new"});
  EXPECT_TRUE(tmp_files(dir).empty());
  auto got = read_chunks(path_of(7));
  ASSERT_TRUE(got);
  EXPECT_EQ(*got, std::vector<std::string>{"new"});

  write_file(path_of(9) + ".tmp", "another leftover");
  auto removed = remove_snapshots_before(Fs::real(), dir, 0);
  ASSERT_TRUE(removed) << removed.error().describe();
  EXPECT_EQ(*removed, 0u);
  EXPECT_TRUE(tmp_files(dir).empty());
  EXPECT_TRUE(exists(path_of(4)));
  EXPECT_TRUE(exists(path_of(7)));
}

TEST_P(SnapshotTest, RemoveBeforeKeepsNewerOnes) {
  for (uint64_t seq : {5u, 10u, 15u, 20u}) write_ok(seq, {chunk_for(seq, 3)});
  write_file(path_of(25) + ".tmp", "x");
  auto removed = remove_snapshots_before(Fs::real(), dir, 15);
  ASSERT_TRUE(removed) << removed.error().describe();
  EXPECT_EQ(*removed, 2u);
  auto listed = list_snapshots(dir);
  ASSERT_TRUE(listed);
  ASSERT_EQ(listed->size(), 2u);
  EXPECT_EQ((*listed)[0].covers_seq, 20u);
  EXPECT_EQ((*listed)[1].covers_seq, 15u);
  EXPECT_TRUE(tmp_files(dir).empty());
  for (uint64_t seq : {15u, 20u}) EXPECT_TRUE(check_snapshot(path_of(seq)));

  auto again = remove_snapshots_before(Fs::real(), dir, 15);
  ASSERT_TRUE(again);
  EXPECT_EQ(*again, 0u);
  auto missing = remove_snapshots_before(Fs::real(), tmp.path() + "/nope", 100);
  ASSERT_TRUE(missing);
  EXPECT_EQ(*missing, 0u);
}

TEST_P(SnapshotTest, EmptyAndOversizeChunksAreRefused) {
  auto w = SnapshotWriter::begin(*engine, Fs::real(), dir, 8);
  ASSERT_TRUE(w);
  auto empty = (*w)->add("");
  ASSERT_FALSE(empty);
  EXPECT_EQ(empty.error().code, Errc::kInvalidArgument);
  auto big = (*w)->add(std::string(kSnapshotChunkBytesMax + 1, 'b'));
  ASSERT_FALSE(big);
  EXPECT_EQ(big.error().code, Errc::kInvalidArgument);
  // Refusals leave the writer usable.
  std::string max = chunk_for(1, kSnapshotChunkBytesMax);
  ASSERT_TRUE(add_when_ready(**w, *engine, max));
  std::optional<Status> done;
  (*w)->finish([&](Status st) { done = st; });
  ASSERT_TRUE(run_until(*engine, [&] { return done.has_value(); }));
  ASSERT_TRUE(*done) << done->error().describe();
  auto got = read_chunks(path_of(8));
  ASSERT_TRUE(got);
  ASSERT_EQ(got->size(), 1u);
  EXPECT_TRUE((*got)[0] == max);

  auto zero = SnapshotWriter::begin(*engine, Fs::real(), dir, 9, 0);
  ASSERT_FALSE(zero);
  EXPECT_EQ(zero.error().code, Errc::kInvalidArgument);
  auto nodir = SnapshotWriter::begin(*engine, Fs::real(), tmp.path() + "/nope", 9);
  ASSERT_FALSE(nodir);
  EXPECT_EQ(nodir.error().code, Errc::kNotFound);
}

// Checks that a failed snapshot left nothing: no .tmp, no new file, the old one as it was.
void expect_only_old(const std::string& dir, const std::string& old_path,
                     const std::string& old_bytes, const std::string& new_path) {
  EXPECT_TRUE(tmp_files(dir).empty());
  EXPECT_FALSE(exists(new_path));
  EXPECT_EQ(testing::read_file(old_path), old_bytes);
}

TEST_P(SnapshotTest, EngineWriteOrSyncErrorFailsTheSnapshot) {
  write_ok(5, small_chunks(100, 3, 50));
  const std::string old_bytes = testing::read_file(path_of(5));
  const auto chunks = small_chunks(0, 12, 1000);
  const uint64_t small_buffer = 4096;  // several engine writes

  uint64_t writes = 0;
  {
    TempDir count_dir;
    IoStats before = engine->stats();
    Outcome o = write_snapshot(*engine, Fs::real(), count_dir.path(), 9, chunks, small_buffer);
    ASSERT_TRUE(o.done && *o.done);
    writes = engine->stats().writes - before.writes;
  }
  ASSERT_GE(writes, 4u);
  for (uint32_t nth = 1; nth <= writes; ++nth) {
    SCOPED_TRACE("failing write " + std::to_string(nth) + " of " + std::to_string(writes));
    FaultyEngine faulty(*engine);
    faulty.fail_write(nth, ENOSPC);
    Outcome o = write_snapshot(faulty, Fs::real(), dir, 9, chunks, small_buffer);
    ASSERT_TRUE(o.begin);
    EXPECT_EQ(o.done_calls, 1u);
    ASSERT_TRUE(o.done.has_value());
    ASSERT_FALSE(*o.done);
    EXPECT_EQ(o.done->error().sys_errno, ENOSPC);
    EXPECT_EQ(o.done->error().code, Errc::kResourceExhausted);
    if (o.add) {
      EXPECT_EQ(o.add->error().sys_errno, ENOSPC) << o.add->error().describe();
    }
    expect_only_old(dir, path_of(5), old_bytes, path_of(9));
  }

  FaultyEngine faulty(*engine);
  faulty.fail_fsync(1, EIO);
  Outcome o = write_snapshot(faulty, Fs::real(), dir, 9, chunks, small_buffer);
  ASSERT_TRUE(o.done.has_value());
  ASSERT_FALSE(*o.done);
  EXPECT_EQ(o.done->error().sys_errno, EIO);
  expect_only_old(dir, path_of(5), old_bytes, path_of(9));
  auto listed = list_snapshots(dir);
  ASSERT_TRUE(listed);
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].covers_seq, 5u);
}

TEST_P(SnapshotTest, FsErrorsFailTheSnapshot) {
  write_ok(5, small_chunks(100, 3, 50));
  const std::string old_bytes = testing::read_file(path_of(5));
  const auto chunks = small_chunks(0, 6, 700);
  for (const char* op : {"open", "write_at", "rename", "sync_dir"}) {
    SCOPED_TRACE(op);
    FaultyFs fs(Fs::real(), nullptr, false, "");
    fs.fail_nth(op, 1, ENOSPC);
    Outcome o = write_snapshot(*engine, fs, dir, 9, chunks, 4096);
    Status reported = o.begin ? *o.done : o.begin;
    ASSERT_FALSE(reported);
    EXPECT_EQ(reported.error().sys_errno, ENOSPC);
    EXPECT_EQ(o.done_calls, o.begin ? 1u : 0u);
    bool in_begin = std::string(op) == "open" || std::string(op) == "write_at";
    EXPECT_EQ(!o.begin, in_begin);
    EXPECT_TRUE(tmp_files(dir).empty());
    EXPECT_EQ(testing::read_file(path_of(5)), old_bytes);
    if (std::string(op) == "sync_dir") {
      // Renamed but not known durable: the file is whole either way.
      auto got = read_chunks(path_of(9));
      ASSERT_TRUE(got) << got.error().describe();
      EXPECT_EQ(*got, chunks);
      ASSERT_EQ(::unlink(path_of(9).c_str()), 0);
    } else {
      EXPECT_FALSE(exists(path_of(9)));
    }
  }
}

// A crash at every I/O point of writing a snapshot, as kill -9 (the page cache
// survives), as power loss (nothing unsynced survives) and as power loss that tears
// sectors at random. Afterwards the newest snapshot a reader accepts is the old one or
// the whole new one, and nothing damaged is ever accepted.
TEST_P(SnapshotTest, CrashAtAnyPointLeavesOldOrWholeNew) {
  const uint32_t seed = test_seed();
  std::mt19937 rng(seed);
  const uint64_t old_seq = 10;
  const uint64_t new_seq = 20;
  const auto old_chunks = small_chunks(1000, 4, 300);
  std::vector<std::string> new_chunks;
  for (uint32_t i = 0; i < 8; ++i) new_chunks.push_back(chunk_for(i, 1 + rng() % 1500));
  const uint64_t buffer = 2048;  // flushes of 1 KiB: several writes

  enum class Mode { kKill9, kPowerLoss, kTornPowerLoss };
  uint64_t new_survived = 0;
  uint64_t old_survived = 0;
  auto run = [&](uint64_t crash_at, Mode mode, std::string* crash_point) -> uint64_t {
    TempDir trial;
    std::string snap_dir = trial.path() + "/snapshots";
    std::string trash = trial.path() + "/trash";
    EXPECT_TRUE(make_dirs(snap_dir));
    EXPECT_TRUE(make_dirs(trash));
    Outcome old = write_snapshot(*engine, Fs::real(), snap_dir, old_seq, old_chunks, buffer);
    EXPECT_TRUE(old.done && *old.done);
    uint64_t points = 0;
    {
      CrashPlan plan(crash_at);
      FaultyEngine faulty(*engine);
      faulty.set_crash_plan(&plan, [&] {
        if (mode == Mode::kKill9) return true;
        return mode == Mode::kTornPowerLoss && rng() % 2 == 0;
      });
      FaultyFs fs(Fs::real(), &plan, mode != Mode::kKill9, trash);
      Outcome o = write_snapshot(faulty, fs, snap_dir, new_seq, new_chunks, buffer);
      EXPECT_EQ(o.done_calls, o.begin ? 1u : 0u);
      if (crash_at == 0) {
        EXPECT_TRUE(o.done && *o.done);
      } else {
        EXPECT_TRUE(plan.crashed());
      }
      if (plan.crashed() && (o.begin && *o.done)) {
        ADD_FAILURE() << "done(ok) although the crash came first";
      }
      points = plan.points();
      *crash_point = plan.crash_point();
    }
    // Restart, with the real file system.
    auto listed = list_snapshots(snap_dir);
    EXPECT_TRUE(listed) << listed.error().describe();
    if (!listed) return points;
    std::optional<uint64_t> newest_ok;
    for (const auto& s : *listed) {
      auto got = read_chunks(s.path);
      if (!got) {
        EXPECT_EQ(got.error().code, Errc::kCorruption) << got.error().describe();
        continue;
      }
      if (!newest_ok) newest_ok = s.covers_seq;
      EXPECT_TRUE(s.covers_seq == old_seq || s.covers_seq == new_seq) << s.path;
      EXPECT_TRUE(*got == (s.covers_seq == old_seq ? old_chunks : new_chunks))
          << s.path << " accepted with other chunks than were written";
    }
    EXPECT_TRUE(newest_ok.has_value());
    if (newest_ok && *newest_ok == new_seq) ++new_survived;
    if (newest_ok && *newest_ok == old_seq) ++old_survived;
    // Only a rename that happened and was not undone publishes the new snapshot: after
    // it, the one point left is the directory fsync, and power loss undoes the rename.
    if (crash_at > 0) {
      bool renamed = mode == Mode::kKill9 && crash_point->starts_with("sync_dir");
      EXPECT_EQ(newest_ok, renamed ? new_seq : old_seq) << *crash_point;
    }
    EXPECT_TRUE(check_snapshot(snap_dir + "/" + snap_name(old_seq))) << "old snapshot damaged";
    // Recovery: the same snapshot again replaces any leftover, then the old one can go.
    Outcome again = write_snapshot(*engine, Fs::real(), snap_dir, new_seq, new_chunks, buffer);
    EXPECT_TRUE(again.done && *again.done);
    auto removed = remove_snapshots_before(Fs::real(), snap_dir, new_seq);
    EXPECT_TRUE(removed && *removed == 1u);
    EXPECT_TRUE(tmp_files(snap_dir).empty());
    auto final_chunks = read_chunks(snap_dir + "/" + snap_name(new_seq));
    EXPECT_TRUE(final_chunks && *final_chunks == new_chunks);
    return points;
  };

  std::string point;
  const uint64_t points = run(0, Mode::kKill9, &point);
  new_survived = old_survived = 0;
  ASSERT_GE(points, 6u);
  std::printf("%llu crash points, 3 modes\n", static_cast<unsigned long long>(points));
  for (uint64_t at = 1; at <= points; ++at) {
    for (Mode mode : {Mode::kKill9, Mode::kPowerLoss, Mode::kTornPowerLoss}) {
      run(at, mode, &point);
      if (HasFailure()) {
        FAIL() << "seed " << seed << ", crash at point " << at << " (" << point << "), mode "
               << static_cast<int>(mode);
      }
    }
  }
  EXPECT_GT(old_survived, 0u);
  EXPECT_GT(new_survived, 0u) << "kill -9 after the rename keeps the new snapshot";
}

// A full engine queue holds bytes back, never fails the snapshot, while any of the
// writer's own ops is there to bring it back.
TEST_P(SnapshotTest, WaitsForRoomInAFullEngineQueue) {
  std::string skip;
  auto tiny = testing::make_engine(GetParam(), 1, &skip);
  if (!skip.empty()) GTEST_SKIP() << skip;
  ASSERT_NE(tiny, nullptr);
  std::string other = tmp.path() + "/other";
  UniqueFd fd(::open(other.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  ASSERT_TRUE(fd.valid());
  bool other_done = false;
  ASSERT_TRUE(tiny->fdatasync(fd.get(), [&](Result<uint32_t>) { other_done = true; }));

  const auto chunks = small_chunks(0, 40, 500);
  Outcome o = write_snapshot(*tiny, Fs::real(), dir, 3, chunks, 2048);
  EXPECT_TRUE(other_done);
  ASSERT_TRUE(o.done.has_value());
  ASSERT_TRUE(*o.done) << o.done->error().describe();
  auto got = read_chunks(path_of(3));
  ASSERT_TRUE(got) << got.error().describe();
  EXPECT_EQ(*got, chunks);
}

// With the queue full of others' ops and none of its own in flight, a finishing writer
// would never be called back: it fails with a retryable error instead of hanging.
TEST_P(SnapshotTest, FinishWithAQueueFullOfOthersFailsRetryably) {
  std::string skip;
  auto tiny = testing::make_engine(GetParam(), 1, &skip);
  if (!skip.empty()) GTEST_SKIP() << skip;
  ASSERT_NE(tiny, nullptr);
  auto w = SnapshotWriter::begin(*tiny, Fs::real(), dir, 3);
  ASSERT_TRUE(w);
  ASSERT_TRUE((*w)->add("stays buffered"));
  std::string other = tmp.path() + "/other";
  UniqueFd fd(::open(other.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  ASSERT_TRUE(tiny->fdatasync(fd.get(), [](Result<uint32_t>) {}));
  std::optional<Status> done;
  (*w)->finish([&](Status st) { done = st; });
  ASSERT_TRUE(run_until(*tiny, [&] { return done.has_value(); }));
  ASSERT_FALSE(*done);
  EXPECT_EQ(done->error().code, Errc::kResourceExhausted);
  EXPECT_TRUE(tmp_files(dir).empty());
  EXPECT_FALSE(exists(path_of(3)));
}

TEST_P(SnapshotTest, DestroyingAbandonsAnUnfinishedSnapshot) {
  write_ok(1, {"keep me"});
  const auto chunks = small_chunks(0, 20, 900);
  {
    auto w = SnapshotWriter::begin(*engine, Fs::real(), dir, 2, 4096);
    ASSERT_TRUE(w);
    for (const auto& c : chunks) ASSERT_TRUE(add_when_ready(**w, *engine, c));
    EXPECT_GT(engine->in_flight(), 0u);
  }
  EXPECT_EQ(engine->in_flight(), 0u);
  EXPECT_TRUE(tmp_files(dir).empty());
  EXPECT_FALSE(exists(path_of(2)));
  {
    auto w = SnapshotWriter::begin(*engine, Fs::real(), dir, 2, 4096);
    ASSERT_TRUE(w);
    for (const auto& c : chunks) ASSERT_TRUE(add_when_ready(**w, *engine, c));
    (*w)->finish([](Status) { ADD_FAILURE() << "done of an abandoned snapshot ran"; });
  }
  EXPECT_EQ(engine->in_flight(), 0u);
  EXPECT_TRUE(tmp_files(dir).empty());
  EXPECT_FALSE(exists(path_of(2)));
  auto listed = list_snapshots(dir);
  ASSERT_TRUE(listed);
  ASSERT_EQ(listed->size(), 1u);

  // done is the writer's last act: destroying it from there is fine.
  auto w = SnapshotWriter::begin(*engine, Fs::real(), dir, 2, 4096);
  ASSERT_TRUE(w);
  std::unique_ptr<SnapshotWriter> writer = std::move(*w);
  for (const auto& c : chunks) ASSERT_TRUE(add_when_ready(*writer, *engine, c));
  bool ok = false;
  writer->finish([&](Status st) {
    ok = st.has_value();
    writer.reset();
  });
  ASSERT_TRUE(run_until(*engine, [&] { return writer == nullptr; }));
  EXPECT_TRUE(ok);
  EXPECT_TRUE(check_snapshot(path_of(2)));
}

// After a write error every add() fails the same way, and finish() still reports it
// from a reap, not from inside the call.
TEST_P(SnapshotTest, FailedWriterRefusesAddsAndReportsFromAReap) {
  FaultyEngine faulty(*engine);
  faulty.fail_write(1, EIO);
  auto w = SnapshotWriter::begin(faulty, Fs::real(), dir, 6, 2048);
  ASSERT_TRUE(w);
  Status first;
  for (uint32_t i = 0; i < 100 && first; ++i) {
    first = add_when_ready(**w, faulty, chunk_for(i, 700));
    faulty.reap();
  }
  ASSERT_FALSE(first);
  EXPECT_EQ(first.error().sys_errno, EIO);
  auto later = (*w)->add("more");
  ASSERT_FALSE(later);
  EXPECT_EQ(later.error().sys_errno, EIO);
  EXPECT_TRUE(tmp_files(dir).empty());
  std::optional<Status> done;
  (*w)->finish([&](Status st) { done = st; });
  EXPECT_FALSE(done.has_value()) << "done ran inside finish()";
  ASSERT_TRUE(run_until(faulty, [&] { return done.has_value(); }));
  ASSERT_FALSE(*done);
  EXPECT_EQ(done->error().sys_errno, EIO);
}

INSTANTIATE_TEST_SUITE_P(Backends, SnapshotTest,
                         ::testing::Values(Backend::kIoUring, Backend::kFallback),
                         testing::param_name);

}  // namespace
}  // namespace cardnode::storage
