#include "storage/io_engine.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <random>
#include <string>
#include <vector>

#include "storage/test_util.h"

namespace cardnode::storage {
namespace {

using testing::run_until;
using testing::TempDir;

// How many fdatasync latencies the histogram holds (each in exactly one bucket).
uint64_t fsync_samples(const IoStats& s) {
  uint64_t n = 0;
  for (uint64_t b : s.fsync_buckets) n += b;
  return n;
}

class IoEngineTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    CARDNODE_SETUP_ENGINE(8);
    ASSERT_FALSE(dir.path().empty());
    file = dir.path() + "/data";
    fd = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    ASSERT_GE(fd, 0);
  }
  void TearDown() override {
    if (fd >= 0) ::close(fd);
  }

  // Submits and waits for one op; returns its result.
  Result<uint32_t> wait_for(const std::function<Status(IoCallback)>& submit) {
    std::optional<Result<uint32_t>> got;
    auto st = submit([&](Result<uint32_t> r) { got = std::move(r); });
    if (!st) return std::unexpected(st.error());
    EXPECT_FALSE(got.has_value()) << "callback ran inside the submit call";
    EXPECT_TRUE(run_until(*engine, [&] { return got.has_value(); }));
    if (!got) return fail(Errc::kInternal, "never completed");
    return *got;
  }
  Result<uint32_t> write_at(const std::string& data, uint64_t offset) {
    return wait_for([&](IoCallback cb) {
      return engine->write(fd, data.data(), static_cast<uint32_t>(data.size()), offset, cb);
    });
  }
  Result<std::string> read_at(uint32_t len, uint64_t offset) {
    std::string buf(len, '\0');
    auto r = wait_for([&](IoCallback cb) { return engine->read(fd, buf.data(), len, offset, cb); });
    if (!r) return std::unexpected(r.error());
    buf.resize(*r);
    return buf;
  }

  TempDir dir;
  std::unique_ptr<IoEngine> engine;
  std::string file;
  int fd = -1;
};

TEST_P(IoEngineTest, WriteSyncReadRoundTripAtOffsets) {
  ASSERT_EQ(write_at("hello", 0).value_or(0), 5u);
  ASSERT_EQ(write_at("world!", 8192).value_or(0), 6u);
  auto synced = wait_for([&](IoCallback cb) { return engine->fdatasync(fd, cb); });
  ASSERT_TRUE(synced) << synced.error().describe();

  EXPECT_EQ(read_at(5, 0).value_or("?"), "hello");
  EXPECT_EQ(read_at(6, 8192).value_or("?"), "world!");
  EXPECT_EQ(read_at(3, 4).value_or("?"), std::string("o\0\0", 3));  // the hole reads as zeros

  const IoStats& s = engine->stats();
  EXPECT_EQ(s.writes, 2u);
  EXPECT_EQ(s.bytes_written, 11u);
  EXPECT_EQ(s.fsyncs, 1u);
  EXPECT_EQ(s.reads, 3u);
  EXPECT_EQ(s.bytes_read, 14u);
  EXPECT_EQ(s.errors, 0u);
  EXPECT_EQ(engine->in_flight(), 0u);
  // The one fdatasync is in exactly one latency bucket, and its time in the sum.
  EXPECT_EQ(fsync_samples(s), 1u);
  EXPECT_GT(s.fsync_ns_sum, 0u);
}

// write_durably: one operation and one completion that counts as a write and an
// fdatasync (io_uring: RWF_DSYNC; the fallback: pwrite, then fdatasync).
TEST_P(IoEngineTest, ADurableWriteIsOneOperationCountedAsAWriteAndAnFdatasync) {
  const std::string batch = "batch-of-records";
  uint32_t completions = 0;
  std::optional<Result<uint32_t>> got;
  ASSERT_TRUE(engine->write_durably(fd, batch.data(), static_cast<uint32_t>(batch.size()), 4096,
                                    [&](Result<uint32_t> r) {
                                      ++completions;
                                      got = std::move(r);
                                    }));
  EXPECT_EQ(engine->in_flight(), 1u);
  ASSERT_TRUE(run_until(*engine, [&] { return got.has_value(); }));
  ASSERT_TRUE(*got) << got->error().describe();
  EXPECT_EQ(**got, batch.size());
  EXPECT_EQ(completions, 1u);
  EXPECT_EQ(engine->in_flight(), 0u);
  EXPECT_EQ(read_at(static_cast<uint32_t>(batch.size()), 4096).value_or("?"), batch);
  const IoStats& s = engine->stats();
  EXPECT_EQ(s.writes, 1u);
  EXPECT_EQ(s.bytes_written, batch.size());
  EXPECT_EQ(s.fsyncs, 1u);
  EXPECT_EQ(fsync_samples(s), 1u);
  EXPECT_GT(s.fsync_ns_sum, 0u);
}

TEST(IoStatsTest, FsyncLatencyLandsInTheFirstBucketThatHoldsIt) {
  IoStats s;
  s.note_fsync_latency(1'000'000);      // 1 ms: the first bound, inclusive
  s.note_fsync_latency(30'000'000);     // 30 ms: (25 ms, 50 ms]
  s.note_fsync_latency(5'000'000'000);  // 5 s: +Inf
  EXPECT_EQ(s.fsync_buckets[0], 1u);
  EXPECT_EQ(s.fsync_buckets[5], 1u);
  EXPECT_EQ(s.fsync_buckets.back(), 1u);
  EXPECT_EQ(s.fsync_ns_sum, 5'031'000'000u);
}

TEST_P(IoEngineTest, ReadAtEndOfFileIsShort) {
  ASSERT_TRUE(write_at("0123456789", 0));
  EXPECT_EQ(read_at(100, 4).value_or("?"), "456789");
  EXPECT_EQ(read_at(100, 1000).value_or("?"), "");
}

TEST_P(IoEngineTest, LargeWriteRoundTrips) {
  std::mt19937 rng(42);
  std::string data(3u << 20, '\0');
  for (char& c : data) c = static_cast<char>(rng());
  ASSERT_EQ(write_at(data, 4096).value_or(0), data.size());
  EXPECT_EQ(read_at(static_cast<uint32_t>(data.size()), 4096).value_or("?"), data);
  EXPECT_EQ(engine->stats().bytes_written, data.size());
}

TEST_P(IoEngineTest, QueueDepthBoundsOpsInFlight) {
  uint32_t completed = 0;
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(engine->fdatasync(fd, [&](Result<uint32_t> r) {
      EXPECT_TRUE(r);
      ++completed;
    }));
  }
  EXPECT_EQ(engine->in_flight(), 8u);
  bool called = false;
  auto refused = engine->write(fd, "x", 1, 0, [&](Result<uint32_t>) { called = true; });
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, Errc::kResourceExhausted);

  ASSERT_TRUE(run_until(*engine, [&] { return completed == 8; }));
  EXPECT_FALSE(called);
  EXPECT_EQ(engine->in_flight(), 0u);
  // Room again once reaped.
  EXPECT_TRUE(write_at("y", 0));
}

TEST_P(IoEngineTest, CompletionFdBecomesReadable) {
  int efd = engine->completion_fd();
  pollfd p{efd, POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 0), 0) << "readable before anything was submitted";

  bool done = false;
  ASSERT_TRUE(engine->write(fd, "abc", 3, 0, [&](Result<uint32_t> r) {
    EXPECT_EQ(r.value_or(0), 3u);
    done = true;
  }));
  // Bounded: the write completes in far less; the bound only stops a hang.
  ASSERT_EQ(::poll(&p, 1, 10000), 1);
  EXPECT_TRUE(p.revents & POLLIN);
  EXPECT_FALSE(done) << "callbacks run only from reap()";
  uint32_t ran = 0;
  for (int i = 0; i < 1000 && !done; ++i) ran += engine->reap();
  EXPECT_TRUE(done);
  EXPECT_EQ(ran, 1u);
  p.revents = 0;
  EXPECT_EQ(::poll(&p, 1, 0), 0) << "still readable after reaping everything";
}

TEST_P(IoEngineTest, BadFdIsAnErrorValue) {
  ::close(fd);
  int closed = fd;
  fd = -1;
  auto w = wait_for([&](IoCallback cb) { return engine->write(closed, "x", 1, 0, cb); });
  ASSERT_FALSE(w);
  EXPECT_EQ(w.error().sys_errno, EBADF);
  EXPECT_EQ(w.error().code, Errc::kIo);
  auto s = wait_for([&](IoCallback cb) { return engine->fdatasync(-1, cb); });
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().sys_errno, EBADF);
  EXPECT_EQ(engine->stats().errors, 2u);
  EXPECT_EQ(engine->stats().bytes_written, 0u);
}

// A plain write and a durable one alike: an error value, counted.
TEST_P(IoEngineTest, WriteToReadOnlyFdFails) {
  int ro = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(ro, 0);
  auto w = wait_for([&](IoCallback cb) { return engine->write(ro, "x", 1, 0, cb); });
  auto d = wait_for([&](IoCallback cb) { return engine->write_durably(ro, "x", 1, 0, cb); });
  ::close(ro);
  ASSERT_FALSE(w);
  EXPECT_EQ(w.error().sys_errno, EBADF);
  ASSERT_FALSE(d);
  EXPECT_EQ(d.error().sys_errno, EBADF);
  EXPECT_EQ(engine->stats().errors, 2u);
}

TEST_P(IoEngineTest, CallbacksMaySubmitMore) {
  std::vector<int> order;
  ASSERT_TRUE(engine->write(fd, "a", 1, 0, [&](Result<uint32_t> r) {
    ASSERT_TRUE(r);
    order.push_back(1);
    ASSERT_TRUE(engine->fdatasync(fd, [&](Result<uint32_t> r2) {
      ASSERT_TRUE(r2);
      order.push_back(2);
    }));
  }));
  ASSERT_TRUE(run_until(*engine, [&] { return order.size() == 2; }));
  EXPECT_EQ(order, (std::vector<int>{1, 2}));
}

INSTANTIATE_TEST_SUITE_P(Backends, IoEngineTest,
                         ::testing::Values(Backend::kIoUring, Backend::kFallback),
                         testing::param_name);

TEST(IoEngineCreate, EnvForcesFallback) {
  const char* previous = std::getenv("CARDNODE_IO_BACKEND");
  std::string saved = previous != nullptr ? previous : "";
  ASSERT_EQ(::setenv("CARDNODE_IO_BACKEND", "fallback", 1), 0);
  std::string why;
  auto engine = IoEngine::create(IoOptions{}, &why);
  if (previous != nullptr) {
    ::setenv("CARDNODE_IO_BACKEND", saved.c_str(), 1);
  } else {
    ::unsetenv("CARDNODE_IO_BACKEND");
  }
  ASSERT_TRUE(engine);
  EXPECT_EQ((*engine)->backend(), Backend::kFallback);
  EXPECT_EQ(why, "forced by CARDNODE_IO_BACKEND");
}

TEST(IoEngineCreate, OptionForcesFallback) {
  std::string why;
  IoOptions options;
  options.force_fallback = true;
  auto engine = IoEngine::create(options, &why);
  ASSERT_TRUE(engine);
  EXPECT_EQ((*engine)->backend(), Backend::kFallback);
  EXPECT_FALSE(why.empty());
  EXPECT_STREQ(backend_name((*engine)->backend()), "fallback");
}

TEST(IoEngineCreate, ZeroQueueDepthIsInvalid) {
  IoOptions options;
  options.queue_depth = 0;
  auto engine = IoEngine::create(options, nullptr);
  ASSERT_FALSE(engine);
  EXPECT_EQ(engine.error().code, Errc::kInvalidArgument);
}

TEST(IoEngineCreate, ReportsWhichBackend) {
  std::string why;
  auto engine = IoEngine::create(IoOptions{}, &why);
  ASSERT_TRUE(engine);
  // Which one depends on the kernel; a fallback must say why.
  if ((*engine)->backend() == Backend::kFallback) {
    EXPECT_FALSE(why.empty());
  }
  std::printf("backend: %s %s\n", backend_name((*engine)->backend()), why.c_str());
}

}  // namespace
}  // namespace cardnode::storage
