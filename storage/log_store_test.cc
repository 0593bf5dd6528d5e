#include "storage/log_store.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <optional>
#include <string>

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

TEST_P(LogStoreTest, PendingBoundDropsAndCounts) {
  options.pending_bytes_max = 1000;
  LogStore store(*engine, options);
  LogKey key{8, 0, Stream::kStderr};
  ASSERT_TRUE(store.open(key));
  store.append(key, std::string(800, 'x'));
  store.append(key, std::string(800, 'y'));  // only 200 fit before anything is reaped
  ASSERT_TRUE(close_and_wait(store, key));
  EXPECT_EQ(testing::read_file(store.path(key)), std::string(800, 'x') + std::string(200, 'y'));
  EXPECT_EQ(store.stats().bytes_dropped, 600u);
  EXPECT_EQ(store.stats().bytes_appended, 1000u);
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
