// The agent's journal on a real LocalStore in a temp dir, for both I/O backends: what it
// says after a reopen, that compaction keeps it small, and what happens when the disk is
// full or fails (through a FaultyEngine, and through RLIMIT_FSIZE standing in for a full SD
// card at a segment roll).
#include "runtime/agent/agent_journal.h"

#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "storage/faulty_engine.h"
#include "storage/local_store.h"
#include "storage/test_util.h"

namespace cardnode::runtime {
namespace {

using storage::Backend;
using storage::testing::TempDir;

pb::TaskAttempt attempt(uint64_t job, uint32_t index, uint32_t n) {
  pb::TaskAttempt a;
  a.set_job_id(job);
  a.set_index(index);
  a.set_attempt(n);
  return a;
}

pb::TaskOutcome outcome(const pb::TaskAttempt& a, pb::TaskState state, int32_t exit_code = 0,
                        int32_t signal = 0, bool requeue_free = false) {
  pb::TaskOutcome o;
  *o.mutable_task() = a;
  o.set_state(state);
  o.set_exit_code(exit_code);
  o.set_signal(signal);
  o.set_requeue_free(requeue_free);
  return o;
}

std::vector<std::string> bytes_of(const std::vector<pb::TaskAttempt>& v) {
  std::vector<std::string> out;
  for (const auto& m : v) out.push_back(m.SerializeAsString());
  return out;
}
std::vector<std::string> bytes_of(const std::vector<pb::TaskOutcome>& v) {
  std::vector<std::string> out;
  for (const auto& m : v) out.push_back(m.SerializeAsString());
  return out;
}

size_t files_in(const std::string& dir) {
  size_t n = 0;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return 0;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  ::closedir(d);
  return n;
}

class AgentJournalTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    ASSERT_FALSE(tmp_.path().empty());
    dir_ = tmp_.path() + "/journal";
    std::string skip;
    engine_ = storage::testing::make_engine(GetParam(), 64, &skip);
    if (!engine_) GTEST_SKIP() << skip;
  }

  std::unique_ptr<AgentJournal> open(storage::IoEngine* engine = nullptr) {
    auto j = AgentJournal::open(engine != nullptr ? *engine : *engine_, dir_);
    EXPECT_TRUE(j) << j.error().describe();
    if (!j) return nullptr;
    (*j)->on_failure([this](const Error& e) { failures_.push_back(e); });
    return std::move(*j);
  }
  void complete() {
    for (int i = 0; i < 100'000 && engine_->in_flight() > 0; ++i) engine_->wait();
  }
  // Compaction as the agent drives it: a turn once a second, storage completions between.
  void compact(AgentJournal& j) {
    complete();
    j.turn();
    complete();
    j.turn();  // frees the finished snapshot's sink
  }

  TempDir tmp_;
  std::string dir_;
  std::unique_ptr<storage::IoEngine> engine_;
  std::vector<Error> failures_;
};

TEST_P(AgentJournalTest, StartedEndedAndForgottenSurviveAReopen) {
  auto j = open();
  ASSERT_NE(j, nullptr);
  const auto a1 = attempt(1, 0, 1), a2 = attempt(1, 1, 1), a3 = attempt(2, 0, 3),
             a4 = attempt(2, 1, 1);
  int durable = 0;
  for (const auto& a : {a1, a2, a3, a4}) ASSERT_TRUE(j->started(a, [&] { ++durable; }));
  ASSERT_TRUE(j->ended(outcome(a2, pb::TASK_SUCCEEDED), [&] { ++durable; }));
  ASSERT_TRUE(j->ended(outcome(a3, pb::TASK_FAILED, 3), [&] { ++durable; }));
  EXPECT_EQ(durable, 0) << "said durable before the disk had it";
  EXPECT_TRUE(j->knows(a1));
  complete();
  EXPECT_EQ(durable, 6);
  ASSERT_TRUE(j->forget(a3));  // acknowledged by the server
  ASSERT_TRUE(j->forget(a4));  // stopped as not ours: its end is never reported
  complete();
  const uint64_t writes = engine_->stats().writes;
  ASSERT_TRUE(j->forget(attempt(9, 9, 9)));  // unknown: nothing to write
  complete();
  EXPECT_EQ(engine_->stats().writes, writes) << "forgetting the unknown wrote something";
  j.reset();

  j = open();
  ASSERT_NE(j, nullptr);
  EXPECT_EQ(bytes_of(j->running()), bytes_of(std::vector{a1}));
  EXPECT_EQ(bytes_of(j->ended()), bytes_of(std::vector{outcome(a2, pb::TASK_SUCCEEDED)}));
  EXPECT_FALSE(j->knows(a3));
  EXPECT_FALSE(j->knows(a4));
  EXPECT_EQ(j->size(), 2u);
  EXPECT_TRUE(failures_.empty());
}

// An agent that died with tasks running finds them as running (it then kills what is left
// and reports them lost); once it journaled their end, they come back as ended.
TEST_P(AgentJournalTest, RunningEntriesComeBackAsRunning) {
  auto j = open();
  ASSERT_NE(j, nullptr);
  const auto a1 = attempt(7, 0, 1), a2 = attempt(7, 1, 2);
  ASSERT_TRUE(j->started(a1, nullptr));
  ASSERT_TRUE(j->started(a2, nullptr));
  complete();
  j.reset();

  j = open();
  ASSERT_NE(j, nullptr);
  EXPECT_EQ(bytes_of(j->running()), bytes_of(std::vector{a1, a2}));
  EXPECT_TRUE(j->ended().empty());
  // As Agent::recover_journal does: each is killed and ends lost.
  for (const auto& a : j->running()) ASSERT_TRUE(j->ended(outcome(a, pb::TASK_LOST), nullptr));
  complete();
  j.reset();

  j = open();
  ASSERT_NE(j, nullptr);
  EXPECT_TRUE(j->running().empty());
  EXPECT_EQ(bytes_of(j->ended()),
            bytes_of(std::vector{outcome(a1, pb::TASK_LOST), outcome(a2, pb::TASK_LOST)}));
}

// Every field of an end comes back as it went in, from the WAL and from a snapshot.
TEST_P(AgentJournalTest, EndsRoundTripExactly) {
  auto j = open();
  ASSERT_NE(j, nullptr);
  std::vector<pb::TaskOutcome> ends;
  const uint64_t big_job = std::numeric_limits<uint64_t>::max() - 1;
  const uint32_t big = std::numeric_limits<uint32_t>::max();
  ends.push_back(outcome(attempt(big_job, big, 255), pb::TASK_SUCCEEDED));
  ends.push_back(outcome(attempt(1, 2, 3), pb::TASK_FAILED, -2'000'000'000));
  ends.push_back(outcome(attempt(1, 3, 1), pb::TASK_CANCELLED, 0, 15));
  ends.push_back(outcome(attempt(1, 4, 1), pb::TASK_TIMED_OUT, 137, 9));
  ends.push_back(outcome(attempt(1, 5, 1), pb::TASK_OOM_KILLED, 0, 9));
  ends.push_back(outcome(attempt(1, 6, 1), pb::TASK_LOST, 0, 0, /*requeue_free=*/true));
  ends.push_back(outcome(attempt(1, 7, 1), pb::TASK_LOST));
  for (const auto& o : ends) {
    ASSERT_TRUE(j->started(o.task(), nullptr));
    ASSERT_TRUE(j->ended(o, nullptr));
  }
  complete();
  std::sort(ends.begin(), ends.end(),
            [](const auto& a, const auto& b) { return key_of(a.task()) < key_of(b.task()); });
  j.reset();
  j = open();
  ASSERT_NE(j, nullptr);
  EXPECT_EQ(bytes_of(j->ended()), bytes_of(ends)) << "from the WAL";

  // Enough churn for a snapshot, then a reopen reads them from it.
  const auto busy = attempt(3, 0, 1);
  ASSERT_TRUE(j->started(busy, nullptr));
  for (int i = 0; i < 5000; ++i) ASSERT_TRUE(j->ended(outcome(busy, pb::TASK_FAILED, i), nullptr));
  ASSERT_TRUE(j->forget(busy));
  compact(*j);
  ASSERT_GE(files_in(dir_ + "/snapshots"), 1u) << "no snapshot was made";
  j.reset();
  j = open();
  ASSERT_NE(j, nullptr);
  EXPECT_EQ(bytes_of(j->ended()), bytes_of(ends)) << "from the snapshot";
  EXPECT_TRUE(j->running().empty());
}

// An agent that runs for months: the journal holds what is live, not its history.
TEST_P(AgentJournalTest, CompactionKeepsItBounded) {
  auto j = open();
  ASSERT_NE(j, nullptr);
  std::vector<pb::TaskAttempt> live;
  for (uint32_t i = 0; i < 5; ++i) {
    live.push_back(attempt(1, i, 1));
    ASSERT_TRUE(j->started(live.back(), nullptr));
  }
  constexpr uint32_t kCycles = 20'000;  // start, end, forget: ~60 bytes of WAL each
  for (uint32_t i = 0; i < kCycles; ++i) {
    const auto a = attempt(2 + i / 1000, i % 1000, 1);
    ASSERT_TRUE(j->started(a, nullptr));
    ASSERT_TRUE(j->ended(outcome(a, pb::TASK_SUCCEEDED), nullptr));
    ASSERT_TRUE(j->forget(a));
    if (i % 100 == 99) compact(*j);
  }
  compact(*j);
  EXPECT_EQ(j->size(), live.size());
  j.reset();

  // What a start reads back: the newest snapshot and the records after it. Without
  // compaction that would be all 60,005 records.
  uint64_t records = 0, chunks = 0;
  {
    storage::LocalStore store(*engine_, storage::LocalStoreOptions{.dir = dir_});
    auto report = store.recover(
        [&](std::string_view) -> Status {
          ++chunks;
          return {};
        },
        [&](uint64_t, std::string_view) -> Status {
          ++records;
          return {};
        });
    ASSERT_TRUE(report) << report.error().describe();
  }
  EXPECT_EQ(chunks, 1u);
  EXPECT_LT(records, 8'000u) << "the WAL kept its history";
  EXPECT_LE(files_in(dir_ + "/snapshots"), 2u);
  EXPECT_LE(files_in(dir_ + "/wal"), 4u);

  j = open();
  ASSERT_NE(j, nullptr);
  EXPECT_EQ(bytes_of(j->running()), bytes_of(live));
  EXPECT_TRUE(j->ended().empty());
}

// The agent stops (or crashes) while a compaction's snapshot is still being written.
TEST_P(AgentJournalTest, ClosingInTheMiddleOfACompactionLosesNothing) {
  auto j = open();
  ASSERT_NE(j, nullptr);
  const auto keep = attempt(5, 5, 5);
  ASSERT_TRUE(j->started(keep, nullptr));
  const auto busy = attempt(3, 0, 1);
  for (int i = 0; i < 5000; ++i) ASSERT_TRUE(j->ended(outcome(busy, pb::TASK_FAILED, i), nullptr));
  complete();
  j->turn();  // the snapshot's writes are in flight now
  j.reset();
  complete();
  j = open();
  ASSERT_NE(j, nullptr);
  EXPECT_EQ(bytes_of(j->running()), bytes_of(std::vector{keep}));
  EXPECT_EQ(bytes_of(j->ended()), bytes_of(std::vector{outcome(busy, pb::TASK_FAILED, 4999)}));
}

// The disk fills up (RLIMIT_FSIZE stands in for a full SD card: the next segment's
// preallocation fails with EFBIG): the journal refuses, and nothing it says changes.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    old_handler_ = ::signal(SIGXFSZ, SIG_IGN);
    ::getrlimit(RLIMIT_FSIZE, &old_);
    rlimit lim = old_;
    lim.rlim_cur = bytes;
    ok_ = ::setrlimit(RLIMIT_FSIZE, &lim) == 0;
  }
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &old_);
    ::signal(SIGXFSZ, old_handler_);
  }
  bool ok() const { return ok_; }

 private:
  rlimit old_{};
  sighandler_t old_handler_;
  bool ok_ = false;
};

TEST_P(AgentJournalTest, AFullDiskRefusesAndChangesNothing) {
  {
    // The test needs a file system that preallocates (else a full disk shows up as a failed
    // write, which the next test covers).
    const std::string probe = tmp_.path() + "/probe";
    int fd = ::open(probe.c_str(), O_CREAT | O_WRONLY, 0600);
    ASSERT_GE(fd, 0);
    const int rc = ::fallocate(fd, 0, 0, 4096);
    ::close(fd);
    if (rc != 0 && errno == EOPNOTSUPP) GTEST_SKIP() << "no fallocate on this file system";
  }
  auto j = open();
  ASSERT_NE(j, nullptr);
  const auto running = attempt(1, 0, 1);
  ASSERT_TRUE(j->started(running, nullptr));
  const auto busy = attempt(3, 0, 1);
  for (int i = 0; i < 5000; ++i) ASSERT_TRUE(j->ended(outcome(busy, pb::TASK_FAILED, i), nullptr));
  compact(*j);  // the next record starts a new segment, which must be allocated
  ASSERT_GE(files_in(dir_ + "/snapshots"), 1u);

  const auto refused = attempt(1, 1, 1);
  bool durable = false;
  {
    FileSizeLimit full(1 << 20);
    ASSERT_TRUE(full.ok());
    auto st = j->started(refused, [&] { durable = true; });
    ASSERT_FALSE(st) << "the journal took a record the disk has no room for";
    EXPECT_FALSE(j->ended(outcome(running, pb::TASK_SUCCEEDED), nullptr));
    complete();
  }
  EXPECT_FALSE(durable);
  EXPECT_FALSE(j->knows(refused));
  EXPECT_EQ(bytes_of(j->running()), bytes_of(std::vector{running})) << "a refusal changed it";
  EXPECT_TRUE(failures_.empty()) << "a refusal is not a failure: " << failures_[0].describe();

  // Room again: it goes on, and a reopen sees exactly what was taken.
  ASSERT_TRUE(j->started(refused, [&] { durable = true; }));
  complete();
  EXPECT_TRUE(durable);
  j.reset();
  j = open();
  ASSERT_NE(j, nullptr);
  EXPECT_EQ(bytes_of(j->running()), bytes_of(std::vector{running, refused}));
}

// A write or fdatasync error is not retried (the WAL's rule): the journal reports it through
// on_failure, says nothing was durable, and refuses from then on.
TEST_P(AgentJournalTest, AStorageFailureReachesOnFailure) {
  for (bool fsync : {false, true}) {
    SCOPED_TRACE(fsync ? "fdatasync fails" : "write fails");
    TempDir tmp;
    dir_ = tmp.path() + "/journal";
    failures_.clear();
    storage::FaultyEngine faulty(*engine_);
    auto j = open(&faulty);
    ASSERT_NE(j, nullptr);
    if (fsync) {
      faulty.fail_fsync(1, EIO);
    } else {
      faulty.fail_write(1, EIO);
    }
    bool durable = false;
    ASSERT_TRUE(j->started(attempt(1, 0, 1), [&] { durable = true; }));
    complete();
    EXPECT_FALSE(durable);
    ASSERT_FALSE(failures_.empty()) << "the failure went unreported";
    EXPECT_EQ(failures_[0].sys_errno, EIO) << failures_[0].describe();
    EXPECT_FALSE(j->started(attempt(1, 1, 1), nullptr)) << "took a record after a failure";
    j.reset();
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, AgentJournalTest,
                         ::testing::Values(Backend::kIoUring, Backend::kFallback),
                         storage::testing::param_name);

}  // namespace
}  // namespace cardnode::runtime
