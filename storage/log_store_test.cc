#include "storage/log_store.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "storage/faulty_engine.h"
#include "storage/test_util.h"

namespace cardnode::storage {
namespace {

using testing::run_until;
using testing::TempDir;

class LogStoreTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    CARDNODE_SETUP_ENGINE(64);
    ASSERT_FALSE(tmp.path().empty());
    options.dir = tmp.path() + "/logs";
  }

  Status close_and_wait(LogStore& store, const LogKey& key) {
    std::optional<Status> got;
    store.close(key, [&](Status s) { got = std::move(s); });
    EXPECT_TRUE(run_until(*engine, [&] { return got.has_value(); }));
    if (!got) return fail(Errc::kInternal, "close never finished");
    return *got;
  }

  Result<std::string> read_and_wait(LogStore& store, const LogKey& key, uint64_t offset,
                                    uint32_t max_bytes) {
    std::optional<Result<std::string>> got;
    store.read(key, offset, max_bytes, [&](Result<std::string> r) { got = std::move(r); });
    EXPECT_TRUE(run_until(*engine, [&] { return got.has_value(); }));
    if (!got) return fail(Errc::kInternal, "read never finished");
    return *got;
  }

  TempDir tmp;
  std::unique_ptr<IoEngine> engine;
  LogStoreOptions options;
};

TEST_P(LogStoreTest, AppendCloseReadBack) {
  LogStore store(*engine, options);
  LogKey out{42, 3, Stream::kStdout};
  LogKey err{42, 3, Stream::kStderr};
  EXPECT_EQ(store.path(out), options.dir + "/42/3.out");
  EXPECT_EQ(store.path(err), options.dir + "/42/3.err");
  ::umask(022);
  ASSERT_TRUE(store.open(out));
  ASSERT_TRUE(store.open(err));
  store.append(out, "hello ");
  store.append(err, "oops\n");
  store.append(out, "world\n");
  store.append(out, "bye\n");
  ASSERT_TRUE(close_and_wait(store, out));
  ASSERT_TRUE(close_and_wait(store, err));

  EXPECT_EQ(read_and_wait(store, out, 0, 1 << 20).value_or("?"), "hello world\nbye\n");
  EXPECT_EQ(read_and_wait(store, out, 6, 6).value_or("?"), "world\n");
  EXPECT_EQ(read_and_wait(store, out, 16, 100).value_or("?"), "");
  EXPECT_EQ(read_and_wait(store, out, 1000, 100).value_or("?"), "");
  EXPECT_EQ(read_and_wait(store, err, 0, 100).value_or("?"), "oops\n");
  EXPECT_EQ(testing::read_file(store.path(out)), "hello world\nbye\n");
  struct stat st {};
  ASSERT_EQ(::stat(store.path(out).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);
  EXPECT_EQ(store.stats().bytes_appended, 21u);
  EXPECT_EQ(store.stats().bytes_dropped, 0u);
}

TEST_P(LogStoreTest, ReadTailGivesTheLastBytesTheFileHoldsNow) {
  LogStore store(*engine, options);
  LogKey key{5, 0, Stream::kStdout};
  ASSERT_TRUE(store.open(key));
  store.append(key, "first\nsecond\nthird\n");
  ASSERT_TRUE(close_and_wait(store, key));
  auto tail = [&](uint32_t max_bytes) {
    std::optional<Result<std::string>> got;
    store.read_tail(key, max_bytes, [&](Result<std::string> r) { got = std::move(r); });
    EXPECT_TRUE(run_until(*engine, [&] { return got.has_value(); }));
    return got && *got ? **got : std::string("?");
  };
  EXPECT_EQ(tail(6), "third\n");
  EXPECT_EQ(tail(13), "second\nthird\n");
  EXPECT_EQ(tail(1000), "first\nsecond\nthird\n");  // all of a shorter file
  std::optional<Result<std::string>> missing;
  store.read_tail({5, 1, Stream::kStdout}, 10,
                  [&](Result<std::string> r) { missing = std::move(r); });
  ASSERT_TRUE(run_until(*engine, [&] { return missing.has_value(); }));
  ASSERT_FALSE(*missing);
  EXPECT_EQ(missing->error().code, Errc::kNotFound);
}

TEST_P(LogStoreTest, ReadWhileOpenSeesWrittenBytes) {
  LogStore store(*engine, options);
  LogKey key{1, 0, Stream::kStdout};
  ASSERT_TRUE(store.open(key));
  store.append(key, "partial");
  ASSERT_TRUE(run_until(*engine, [&] { return engine->in_flight() == 0; }));
  EXPECT_EQ(read_and_wait(store, key, 0, 100).value_or("?"), "partial");
  ASSERT_TRUE(close_and_wait(store, key));
}

TEST_P(LogStoreTest, TruncatesAtLogBytesMaxWithOneMarker) {
  options.log_bytes_max = 200;
  LogStore store(*engine, options);
  LogKey key{7, 0, Stream::kStdout};
  ASSERT_TRUE(store.open(key));
  std::string a(150, 'a');
  std::string b(100, 'b');
  store.append(key, a);
  store.append(key, b);
  store.append(key, "more that is dropped too");
  ASSERT_TRUE(close_and_wait(store, key));

  std::string content = testing::read_file(store.path(key));
  // 64 bytes stay reserved for the marker, so the data stops at 136.
  std::string expected = (a + b).substr(0, 136) + "\n[cardnode: log truncated at 136 bytes]\n";
  EXPECT_EQ(content, expected);
  EXPECT_LE(content.size(), 200u);
  EXPECT_EQ(store.stats().bytes_appended, 136u);
  EXPECT_EQ(store.stats().bytes_dropped, 250u + 24u - 136u);
}

TEST_P(LogStoreTest, ReadOfMissingLogIsNotFound) {
  LogStore store(*engine, options);
  auto r = read_and_wait(store, LogKey{99, 1, Stream::kStderr}, 0, 100);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kNotFound);
}

TEST_P(LogStoreTest, CloseOfUnknownKeyIsNotFound) {
  LogStore store(*engine, options);
  std::optional<Status> got;
  store.close(LogKey{5, 5, Stream::kStdout}, [&](Status s) { got = s; });
  ASSERT_TRUE(got.has_value());
  ASSERT_FALSE(*got);
  EXPECT_EQ(got->error().code, Errc::kNotFound);
}

TEST_P(LogStoreTest, NewAttemptStartsAfresh) {
  LogStore store(*engine, options);
  LogKey key{3, 2, Stream::kStdout};
  ASSERT_TRUE(store.open(key));
  store.append(key, "first attempt output\n");
  ASSERT_TRUE(close_and_wait(store, key));
  ASSERT_TRUE(store.open(key));
  store.append(key, "2\n");
  ASSERT_TRUE(close_and_wait(store, key));
  EXPECT_EQ(read_and_wait(store, key, 0, 100).value_or("?"), "2\n");
}

// A task that prints nothing costs no file (no inode, no SD-card write); a silent retry
// of a task that printed removes the old attempt's output at once.
TEST_P(LogStoreTest, ASilentAttemptLeavesNoFile) {
  LogStore store(*engine, options);
  LogKey key{3, 4, Stream::kStdout};
  ASSERT_TRUE(store.open(key));
  ASSERT_TRUE(close_and_wait(store, key));
  EXPECT_FALSE(std::filesystem::exists(store.path(key)));
  EXPECT_FALSE(std::filesystem::exists(options.dir + "/3"));  // nor the job's directory
  EXPECT_FALSE(read_and_wait(store, key, 0, 100));  // kNotFound: the API shows it as empty
  ASSERT_TRUE(store.open(key));
  store.append(key, "printed\n");
  ASSERT_TRUE(close_and_wait(store, key));
  EXPECT_TRUE(std::filesystem::exists(store.path(key)));
  ASSERT_TRUE(store.open(key));
  EXPECT_FALSE(std::filesystem::exists(store.path(key)));
  ASSERT_TRUE(close_and_wait(store, key));
  EXPECT_FALSE(std::filesystem::exists(store.path(key)));
}

TEST_P(LogStoreTest, TheFirstOutputMakesTheDirectoriesEvenWhenTheLogsDirIsGone) {
  LogStore store(*engine, options);
  LogKey key{8, 0, Stream::kStderr};
  ASSERT_TRUE(store.open(key));
  std::filesystem::remove_all(options.dir);  // e.g. an operator cleaning up by hand
  store.append(key, "still kept\n");
  ASSERT_TRUE(close_and_wait(store, key));
  EXPECT_EQ(read_and_wait(store, key, 0, 100).value_or("?"), "still kept\n");
  EXPECT_EQ(store.stats().bytes_dropped, 0u);
  struct stat st {};
  ASSERT_EQ(::stat(options.dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);  // as the data dir makes it: tasks cannot look in
}

TEST_P(LogStoreTest, ADirectoryThatCannotBeMadeLosesTheOutputCounted) {
  options.dir = tmp.path() + "/file/logs";  // below a regular file: mkdir fails ENOTDIR
  std::FILE* f = std::fopen((tmp.path() + "/file").c_str(), "w");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(std::fclose(f), 0);
  LogStore store(*engine, options);
  LogKey key{9, 0, Stream::kStdout};
  ASSERT_TRUE(store.open(key));
  store.append(key, "lost");
  Status closed = close_and_wait(store, key);
  ASSERT_FALSE(closed);
  EXPECT_NE(closed.error().message.find("mkdir " + tmp.path() + "/file/logs"), std::string::npos)
      << closed.error().describe();
  EXPECT_EQ(store.stats().bytes_dropped, 4u);
}

// The previous attempt's write still in flight must not land in the new file.
TEST_P(LogStoreTest, ReopenWithWriteInFlight) {
  LogStore store(*engine, options);
  LogKey key{3, 2, Stream::kStdout};
  ASSERT_TRUE(store.open(key));
  store.append(key, std::string(5000, 'o'));
  store.append(key, "queued behind the write");
  ASSERT_TRUE(store.open(key));
  store.append(key, "new\n");
  ASSERT_TRUE(close_and_wait(store, key));
  ASSERT_TRUE(run_until(*engine, [&] { return engine->in_flight() == 0; }));
  EXPECT_EQ(testing::read_file(store.path(key)), "new\n");
}

TEST_P(LogStoreTest, ManyLogsCoalesceWrites) {
  LogStore store(*engine, options);
  constexpr uint32_t kKeys = 40;
  constexpr int kLines = 50;
  for (uint32_t k = 0; k < kKeys; ++k) ASSERT_TRUE(store.open(LogKey{10, k, Stream::kStdout}));
  for (int line = 0; line < kLines; ++line) {
    for (uint32_t k = 0; k < kKeys; ++k) {
      store.append(LogKey{10, k, Stream::kStdout},
                   "task " + std::to_string(k) + " line " + std::to_string(line) + "\n");
    }
    if (line % 10 == 0) engine->reap();
  }
  uint32_t closed = 0;
  for (uint32_t k = 0; k < kKeys; ++k) {
    store.close(LogKey{10, k, Stream::kStdout}, [&](Status s) {
      EXPECT_TRUE(s);
      ++closed;
    });
  }
  ASSERT_TRUE(run_until(*engine, [&] { return closed == kKeys; }));
  for (uint32_t k = 0; k < kKeys; ++k) {
    std::string expected;
    for (int line = 0; line < kLines; ++line) {
      expected += "task " + std::to_string(k) + " line " + std::to_string(line) + "\n";
    }
    EXPECT_EQ(testing::read_file(store.path(LogKey{10, k, Stream::kStdout})), expected) << k;
  }
  EXPECT_LT(engine->stats().writes, uint64_t{kKeys} * kLines);
  EXPECT_EQ(store.stats().bytes_dropped, 0u);
}

// Past the bound an append still takes one read buffer (its producer saw room last
// time); the rest is dropped, counted and marked once, at close here.
TEST_P(LogStoreTest, PendingBoundTakesOneReadBufferThenDropsAndMarks) {
  options.pending_bytes_max = 1000;
  LogStore store(*engine, options);
  LogKey key{8, 0, Stream::kStderr};
  ASSERT_TRUE(store.open(key));
  EXPECT_TRUE(store.has_room());
  store.append(key, std::string(800, 'x'));
  EXPECT_TRUE(store.has_room());
  store.append(key, std::string(100000, 'y'));  // 200 under the bound, 64 KiB beyond
  EXPECT_FALSE(store.has_room());
  store.append(key, std::string(10, 'z'));  // the grant is used up: all dropped
  uint64_t kept_y = 200 + LogStore::kAppendGrantBytes;
  uint64_t dropped = 100000 - kept_y + 10;
  EXPECT_EQ(store.stats().bytes_dropped, dropped);
  ASSERT_TRUE(close_and_wait(store, key));
  EXPECT_EQ(testing::read_file(store.path(key)),
            std::string(800, 'x') + std::string(kept_y, 'y') + "\n[cardnode: " +
                std::to_string(dropped) + " bytes of output dropped: log write queue full]\n");
  EXPECT_EQ(store.stats().bytes_dropped, dropped);
  EXPECT_EQ(store.stats().bytes_appended, 800 + kept_y);
  EXPECT_EQ(store.stats().drop_marks, 1u);
}

TEST_P(LogStoreTest, HasRoomGoesFalseAndWhenRoomFiresOnceWritesComplete) {
  options.pending_bytes_max = 64 << 10;
  LogStore store(*engine, options);
  LogKey key{11, 0, Stream::kStdout};
  ASSERT_TRUE(store.open(key));
  ASSERT_TRUE(store.has_room());
  store.append(key, std::string(40 << 10, 'a'));
  EXPECT_TRUE(store.has_room());
  store.append(key, std::string(40 << 10, 'b'));
  EXPECT_FALSE(store.has_room());

  int fired = 0;
  bool room_when_fired = false;
  uint64_t written_when_fired = 0;
  ASSERT_TRUE(store.when_room(key, [&] {
    ++fired;
    room_when_fired = store.has_room();
    written_when_fired = engine->stats().bytes_written;
  }));
  EXPECT_EQ(fired, 0);  // no room now: it waits for a write completion
  ASSERT_TRUE(run_until(*engine, [&] { return fired > 0; }));
  EXPECT_TRUE(room_when_fired);
  // Drained to half the bound at least: 80 KiB queued, at most 32 KiB of it left.
  EXPECT_GE(written_when_fired, uint64_t{48} << 10);
  ASSERT_TRUE(run_until(*engine, [&] { return engine->in_flight() == 0; }));
  EXPECT_EQ(fired, 1);

  // With room it runs at once, before when_room() returns.
  bool now = false;
  ASSERT_TRUE(store.when_room(key, [&] { now = true; }));
  EXPECT_TRUE(now);
  ASSERT_TRUE(close_and_wait(store, key));
  EXPECT_EQ(testing::read_file(store.path(key)),
            std::string(40 << 10, 'a') + std::string(40 << 10, 'b'));
  EXPECT_EQ(store.stats().bytes_dropped, 0u);
}

TEST_P(LogStoreTest, WhenRoomRefusalsAndWaitersDroppedWithTheirLog) {
  options.pending_bytes_max = 1000;
  LogKey a{12, 0, Stream::kStdout};
  LogKey b{12, 1, Stream::kStdout};
  int a_runs = 0, a_again_runs = 0, b_runs = 0, gone_runs = 0;
  {
    LogStore store(*engine, options);
    auto unknown = store.when_room(LogKey{99, 0, Stream::kStdout}, [] {});
    ASSERT_FALSE(unknown);
    EXPECT_EQ(unknown.error().code, Errc::kNotFound);
    ASSERT_TRUE(store.open(a));
    ASSERT_TRUE(store.open(b));
    store.append(a, std::string(5000, 'a'));
    ASSERT_FALSE(store.has_room());

    ASSERT_TRUE(store.when_room(a, [&] { ++a_runs; }));
    auto again = store.when_room(a, [&] { ++a_again_runs; });  // refused, not replacing
    ASSERT_FALSE(again);
    EXPECT_EQ(again.error().code, Errc::kInvalidArgument);
    ASSERT_TRUE(store.when_room(b, [&] { ++b_runs; }));
    // b closes before the queue drains: its waiter goes unrun.
    std::optional<Status> b_closed;
    store.close(b, [&](Status s) { b_closed = s; });
    ASSERT_TRUE(b_closed.has_value());
    auto closing = store.when_room(b, [] {});
    ASSERT_FALSE(closing);  // closed already: not open
    ASSERT_TRUE(run_until(*engine, [&] { return engine->in_flight() == 0; }));
    EXPECT_EQ(a_runs, 1);
    EXPECT_EQ(a_again_runs, 0);
    EXPECT_EQ(b_runs, 0);

    // A waiter left at destruction is dropped, not run.
    store.append(a, std::string(5000, 'c'));
    ASSERT_FALSE(store.has_room());
    ASSERT_TRUE(store.when_room(a, [&] { ++gone_runs; }));
  }
  EXPECT_EQ(gone_runs, 0);
}

// A producer that ignores has_room(): one marker for the run, with its count, at the
// place of the loss, written with the next bytes kept.
TEST_P(LogStoreTest, QueueFullDropIsMarkedOnceWithItsCount) {
  options.pending_bytes_max = 4096;
  LogStore store(*engine, options);
  LogKey key{13, 0, Stream::kStdout};
  ASSERT_TRUE(store.open(key));
  std::string a(4096, 'a');
  std::string b(LogStore::kAppendGrantBytes, 'b');
  store.append(key, a);
  EXPECT_FALSE(store.has_room());
  store.append(key, b + std::string(1000, 'B'));  // the grant takes b, drops the rest
  store.append(key, std::string(500, 'C'));
  store.append(key, std::string(0, 'D'));  // nothing kept: the run goes on
  EXPECT_EQ(store.stats().bytes_dropped, 1500u);
  EXPECT_EQ(store.stats().drop_marks, 0u);
  ASSERT_TRUE(run_until(*engine, [&] { return engine->in_flight() == 0; }));
  EXPECT_TRUE(store.has_room());
  store.append(key, "after\n");
  store.append(key, "more\n");
  ASSERT_TRUE(close_and_wait(store, key));
  std::string marker = "\n[cardnode: 1500 bytes of output dropped: log write queue full]\n";
  std::string content = testing::read_file(store.path(key));
  EXPECT_EQ(content, a + b + marker + "after\nmore\n");
  size_t first = content.find("[cardnode:");
  EXPECT_EQ(content.find("[cardnode:", first + 1), std::string::npos);
  EXPECT_EQ(store.stats().bytes_dropped, 1500u);
  EXPECT_EQ(store.stats().drop_marks, 1u);
}

// An append over both bounds: the queue-full run is marked, then the truncation, and
// the log keeps nothing after its truncation marker even once the queue has room.
TEST_P(LogStoreTest, QueueDropRunningIntoTheLogCapMarksBothAndEndsTheLog) {
  options.log_bytes_max = 200000;
  options.pending_bytes_max = 1000;
  LogStore store(*engine, options);
  LogKey key{17, 0, Stream::kStdout};
  ASSERT_TRUE(store.open(key));
  std::string a(1000, 'a');
  std::string b(LogStore::kAppendGrantBytes, 'b');
  store.append(key, a);
  store.append(key, b);  // the grant
  store.append(key, std::string(200000, 'c'));
  ASSERT_TRUE(run_until(*engine, [&] { return engine->in_flight() == 0; }));
  ASSERT_TRUE(store.has_room());
  store.append(key, "late\n");
  ASSERT_TRUE(close_and_wait(store, key));
  uint64_t data_max = 200000 - 64;
  uint64_t queue_dropped = data_max - a.size() - b.size();
  std::string drop_line = "\n[cardnode: " + std::to_string(queue_dropped) +
                          " bytes of output dropped: log write queue full]\n";
  std::string content = testing::read_file(store.path(key));
  EXPECT_EQ(content, a + b + drop_line + "\n[cardnode: log truncated at " +
                         std::to_string(a.size() + b.size() + drop_line.size()) + " bytes]\n");
  EXPECT_LE(content.size(), 200000u);
  EXPECT_EQ(store.stats().bytes_dropped, 200000u + 5u);
  EXPECT_EQ(store.stats().drop_marks, 1u);
}

TEST_P(LogStoreTest, WriteFailureIsMarkedWhereTheBytesWere) {
  FaultyEngine faulty(*engine);
  LogStore store(faulty, options);
  LogKey key{14, 0, Stream::kStdout};
  ASSERT_TRUE(store.open(key));
  store.append(key, "kept\n");
  ASSERT_TRUE(run_until(faulty, [&] { return faulty.in_flight() == 0; }));
  faulty.fail_write(1, ENOSPC);
  store.append(key, "lost");
  ASSERT_TRUE(run_until(faulty, [&] { return faulty.in_flight() == 0; }));
  EXPECT_EQ(store.stats().bytes_dropped, 4u);
  store.append(key, "after\n");  // the disk has room again
  std::optional<Status> got;
  store.close(key, [&](Status s) { got = s; });
  ASSERT_TRUE(run_until(faulty, [&] { return got.has_value(); }));
  ASSERT_FALSE(*got);  // the loss is reported, though marked
  EXPECT_EQ(got->error().sys_errno, ENOSPC);
  EXPECT_EQ(testing::read_file(store.path(key)),
            "kept\n\n[cardnode: 4 bytes of output dropped: log write failed: " +
                std::string(std::strerror(ENOSPC)) + "]\nafter\n");
  EXPECT_EQ(store.stats().drop_marks, 1u);
}

// The executor's pattern: append one read, stop reading while there is no room, resume
// from when_room(). 20 MiB through a 1 MiB queue arrive whole.
TEST_P(LogStoreTest, ProducerRespectingHasRoomLosesNothing) {
  options.pending_bytes_max = 1 << 20;
  LogStore store(*engine, options);
  LogKey key{15, 0, Stream::kStdout};
  ASSERT_TRUE(store.open(key));
  std::string data(20 << 20, '\0');
  uint32_t x = 12345;
  for (char& c : data) {
    x = x * 1103515245u + 12345u;
    c = static_cast<char>(x >> 24);
  }
  size_t off = 0;
  uint32_t pauses = 0;
  while (off < data.size()) {
    // Reads of varying size, none larger than one read buffer.
    x = x * 1103515245u + 12345u;
    size_t n = std::min<size_t>(data.size() - off, 1 + (x >> 8) % LogStore::kAppendGrantBytes);
    store.append(key, std::string_view(data).substr(off, n));
    off += n;
    if (store.has_room()) continue;
    ++pauses;
    bool resumed = false;
    ASSERT_TRUE(store.when_room(key, [&] { resumed = true; }));
    ASSERT_TRUE(run_until(*engine, [&] { return resumed; }));
  }
  ASSERT_TRUE(close_and_wait(store, key));
  EXPECT_GT(pauses, 0u);
  EXPECT_EQ(store.stats().bytes_dropped, 0u);
  EXPECT_EQ(store.stats().drop_marks, 0u);
  std::string content = testing::read_file(store.path(key));
  EXPECT_EQ(content.size(), data.size());
  EXPECT_TRUE(content == data);  // not EXPECT_EQ: 20 MiB in a failure message
}

// Many producers, each checking after its append: whoever appends after the queue
// filled still has its read buffer taken. Nothing is lost.
TEST_P(LogStoreTest, ManyProducersRespectingHasRoomLoseNothing) {
  options.pending_bytes_max = 256 << 10;
  LogStore store(*engine, options);
  constexpr uint32_t kLogs = 8;
  constexpr size_t kBytesPerLog = size_t{2} << 20;
  struct Producer {
    LogKey key;
    std::string data;
    size_t off = 0;
    bool paused = false;
  };
  std::vector<Producer> producers(kLogs);
  for (uint32_t i = 0; i < kLogs; ++i) {
    Producer& p = producers[i];
    p.key = LogKey{16, i, Stream::kStdout};
    ASSERT_TRUE(store.open(p.key));
    p.data.resize(kBytesPerLog);
    for (size_t j = 0; j < kBytesPerLog; ++j) p.data[j] = static_cast<char>('a' + (i + j / 7) % 26);
  }
  uint32_t pauses = 0;
  for (uint32_t turn = 0; turn < 100000; ++turn) {
    bool all_done = true, any_ran = false;
    for (Producer& p : producers) {
      if (p.off == p.data.size()) continue;
      all_done = false;
      if (p.paused) continue;
      any_ran = true;
      size_t n = std::min<size_t>(p.data.size() - p.off, LogStore::kAppendGrantBytes);
      store.append(p.key, std::string_view(p.data).substr(p.off, n));
      p.off += n;
      if (store.has_room()) continue;
      p.paused = true;
      ++pauses;
      ASSERT_TRUE(store.when_room(p.key, [&p] { p.paused = false; }));
    }
    if (all_done) break;
    if (!any_ran) {
      ASSERT_GT(engine->in_flight(), 0u) << "every producer waits and nothing is in flight";
      engine->wait();
    }
  }
  uint32_t closed = 0;
  for (Producer& p : producers) {
    ASSERT_EQ(p.off, p.data.size());
    store.close(p.key, [&](Status s) {
      EXPECT_TRUE(s);
      ++closed;
    });
  }
  ASSERT_TRUE(run_until(*engine, [&] { return closed == kLogs; }));
  EXPECT_GT(pauses, kLogs);
  EXPECT_EQ(store.stats().bytes_dropped, 0u);
  for (Producer& p : producers) {
    EXPECT_TRUE(testing::read_file(store.path(p.key)) == p.data) << p.key.index;
  }
}

// An engine that refuses every write at submission: the queue is lost (counted), so
// producers waiting for room are not stalled, and close still finishes.
TEST_P(LogStoreTest, EngineRefusingWritesFreesTheQueueAndCloseFinishes) {
  options.pending_bytes_max = 1000;
  FaultyEngine faulty(*engine);
  LogStore store(faulty, options);
  LogKey key{18, 0, Stream::kStdout};
  ASSERT_TRUE(store.open(key));
  faulty.crash([] { return true; });
  store.append(key, std::string(5000, 'x'));
  EXPECT_TRUE(store.has_room());
  EXPECT_EQ(store.stats().bytes_dropped, 5000u);
  std::optional<Status> got;
  store.close(key, [&](Status s) { got = s; });
  ASSERT_TRUE(got.has_value());
  ASSERT_FALSE(*got);
  EXPECT_EQ(testing::read_file(store.path(key)), "");
  EXPECT_EQ(store.stats().drop_marks, 0u);
}

TEST_P(LogStoreTest, WriteErrorReachesClose) {
  FaultyEngine faulty(*engine);
  LogStore store(faulty, options);
  LogKey key{4, 0, Stream::kStdout};
  ASSERT_TRUE(store.open(key));
  faulty.fail_write(1, ENOSPC);
  store.append(key, "lost");
  std::optional<Status> got;
  store.close(key, [&](Status s) { got = s; });
  ASSERT_TRUE(run_until(faulty, [&] { return got.has_value(); }));
  ASSERT_FALSE(*got);
  EXPECT_EQ(got->error().sys_errno, ENOSPC);
  EXPECT_EQ(store.stats().bytes_dropped, 4u);
  // Close writes the marker of the loss as its last act.
  EXPECT_EQ(testing::read_file(store.path(key)),
            "\n[cardnode: 4 bytes of output dropped: log write failed: " +
                std::string(std::strerror(ENOSPC)) + "]\n");
  EXPECT_EQ(store.stats().drop_marks, 1u);
}

TEST_P(LogStoreTest, AppendToUnopenedKeyIsDropped) {
  LogStore store(*engine, options);
  store.append(LogKey{1, 1, Stream::kStdout}, "nowhere");
  EXPECT_EQ(store.stats().bytes_dropped, 7u);
  EXPECT_EQ(engine->stats().writes, 0u);
}

INSTANTIATE_TEST_SUITE_P(Backends, LogStoreTest,
                         ::testing::Values(Backend::kIoUring, Backend::kFallback),
                         testing::param_name);

}  // namespace
}  // namespace cardnode::storage
