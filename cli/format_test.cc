#include "cli/format.h"

#include <gtest/gtest.h>

#include <vector>

namespace cardnode::cli {
namespace {

TEST(HumanDuration, ShortToLong) {
  EXPECT_EQ(human_duration(0), "0.0s");
  EXPECT_EQ(human_duration(420), "0.4s");
  EXPECT_EQ(human_duration(9'500), "9.5s");
  EXPECT_EQ(human_duration(42'000), "42s");
  EXPECT_EQ(human_duration(83'000), "1m23s");
  EXPECT_EQ(human_duration(60'000), "1m00s");
  EXPECT_EQ(human_duration(9'000'000), "2.5h");
  EXPECT_EQ(human_duration(3ull * 24 * 3600 * 1000), "3.0d");
  EXPECT_FALSE(human_duration(UINT64_MAX).empty());
}

TEST(HumanBytes, PowersOf1024WithOneDecimalBelowTen) {
  EXPECT_EQ(human_bytes(0), "0B");
  EXPECT_EQ(human_bytes(512), "512B");
  EXPECT_EQ(human_bytes(1024), "1K");
  EXPECT_EQ(human_bytes(3ull << 19), "1.5M");
  EXPECT_EQ(human_bytes(512ull << 20), "512M");
  EXPECT_EQ(human_bytes(3ull << 29), "1.5G");
  EXPECT_EQ(human_bytes(2ull << 30), "2G");
  EXPECT_EQ(human_bytes(7'900'000'000ull), "7.4G");
  EXPECT_EQ(human_bytes(1ull << 40), "1T");
  EXPECT_FALSE(human_bytes(UINT64_MAX).empty());
}

pb::JobSummary job(uint32_t count, std::initializer_list<std::pair<const char*, uint32_t>> states) {
  pb::JobSummary j;
  j.set_id(7);
  j.set_count(count);
  j.set_state(pb::JOB_RUNNING);
  for (const auto& [k, v] : states) (*j.mutable_states())[k] = v;
  return j;
}

TEST(Progress, CountsRateElapsedAndEta) {
  const pb::JobSummary j =
      job(500, {{"queued", 372}, {"running", 8}, {"succeeded", 118}, {"failed", 2}});
  EXPECT_EQ(tasks_done(j), 120u);
  // 120 done in 30 s: 4 a second, 380 left: 95 s.
  EXPECT_EQ(progress_line(j, 30'000),
            "job 7: 120/500 done, 4.0 tasks/s, elapsed 30s, ETA 1m35s "
            "(queued:372 running:8 succeeded:118 failed:2)");
}

TEST(Progress, NoEtaBeforeATaskEndedAndZeroAtTheEnd) {
  EXPECT_EQ(progress_line(job(20, {{"queued", 20}}), 0),
            "job 7: 0/20 done, 0.0 tasks/s, elapsed 0.0s, ETA ? (queued:20)");
  EXPECT_EQ(progress_line(job(20, {{"succeeded", 19}, {"timed_out", 1}}), 2'000),
            "job 7: 20/20 done, 10.0 tasks/s, elapsed 2.0s, ETA 0.0s (succeeded:19 timed_out:1)");
}

// The array's end is seen within a few ms: the poll shortens to the ETA near the end,
// and backs off again while nothing new is done.
TEST(Progress, ThePollShortensToTheEtaNearTheEndAndBacksOffWhileNothingEnds) {
  constexpr uint64_t kPoll = kProgressPollMs;
  EXPECT_EQ(next_poll_ms(job(2000, {{"queued", 2000}}), 500, kPoll, false), kPoll);  // no rate
  // 1,000 done in 1 s: 1 s left, poll as usual.
  EXPECT_EQ(next_poll_ms(job(2000, {{"succeeded", 1000}, {"queued", 1000}}), 1000, kPoll, true),
            kPoll);
  // 1,980 done in 1.98 s: 20 ms left.
  EXPECT_EQ(next_poll_ms(job(2000, {{"succeeded", 1980}, {"running", 20}}), 1980, kPoll, true),
            20u);
  // All done, the job's end not recorded yet: soon.
  EXPECT_EQ(next_poll_ms(job(2000, {{"succeeded", 2000}}), 2000, 20, true), kProgressPollMinMs);
  // One slow last task of 100,000: 5 ms after progress, then 10, 20, ... up to 250 while
  // it runs on: a handful of quick looks, then four a second.
  const pb::JobSummary tail = job(100'000, {{"succeeded", 99'999}, {"running", 1}});
  uint64_t wait = next_poll_ms(tail, 100'000, kPoll, true);
  EXPECT_EQ(wait, kProgressPollMinMs);
  std::vector<uint64_t> waits;
  for (int i = 0; i < 8; ++i) waits.push_back(wait = next_poll_ms(tail, 100'000, wait, false));
  EXPECT_EQ(waits, (std::vector<uint64_t>{10, 20, 40, 80, 160, 250, 250, 250}));
}

TEST(JobElapsed, ToTheEndOnceFinalElseToTheServersNow) {
  pb::JobSummary j;
  EXPECT_EQ(job_elapsed_ms(j, 5000), std::nullopt);  // an older server: no submitted_ms
  j.set_submitted_ms(1'000'000);
  EXPECT_EQ(job_elapsed_ms(j, 0), std::nullopt);
  EXPECT_EQ(job_elapsed_ms(j, 1'083'000), 83'000u);
  EXPECT_EQ(job_elapsed_ms(j, 999'000), 0u);  // never negative
  j.set_finished_ms(1'002'000);
  EXPECT_EQ(job_elapsed_ms(j, 9'999'999), 2'000u);
}

TEST(TaskDuration, RunningSoFarElseTheLastAttemptsWallTimeElseUnknown) {
  pb::TaskInfo t;
  t.set_state(pb::TASK_QUEUED);
  EXPECT_EQ(task_duration_ms(t, 5000), std::nullopt);  // never started
  t.set_state(pb::TASK_SUCCEEDED);
  t.mutable_usage()->set_cpu_user_ms(10);
  EXPECT_EQ(task_duration_ms(t, 5000), std::nullopt);  // an older agent: no wall time
  t.mutable_usage()->set_wall_ms(1'234);
  EXPECT_EQ(task_duration_ms(t, 5000), 1'234u);
  EXPECT_EQ(task_duration_ms(t, 0), 1'234u);  // a finished attempt needs no clock

  // Running again (a retry): its attempt so far, not the last one's wall time.
  t.set_state(pb::TASK_RUNNING);
  EXPECT_EQ(task_duration_ms(t, 5000), std::nullopt);  // start unknown
  t.set_started_ms(2'000);
  EXPECT_EQ(task_duration_ms(t, 0), std::nullopt);  // an older server: no now_ms
  EXPECT_EQ(task_duration_ms(t, 85'000), 83'000u);
  EXPECT_EQ(task_duration_ms(t, 1'000), 0u);  // never negative
  EXPECT_EQ(human_duration(*task_duration_ms(t, 85'000)), "1m23s");
}

TEST(Pacer, AtMostOneLineAnIntervalWithAnInjectedClock) {
  Pacer p(/*start_ms=*/1000, kProgressLineMs);
  EXPECT_FALSE(p.due(1000));
  EXPECT_FALSE(p.due(5999));
  EXPECT_TRUE(p.due(6000));
  EXPECT_FALSE(p.due(6000));
  EXPECT_FALSE(p.due(10'999));
  EXPECT_TRUE(p.due(12'500));  // late polls: the next is an interval after this one
  EXPECT_FALSE(p.due(17'000));
  EXPECT_TRUE(p.due(17'500));
  // Polled every kProgressPollMs for a minute: at most one line every interval.
  Pacer q(0, kProgressLineMs);
  int lines = 0;
  for (uint64_t t = 0; t <= 60'000; t += kProgressPollMs) lines += q.due(t) ? 1 : 0;
  EXPECT_EQ(lines, 12);
  Pacer tty(0, kProgressRedrawMs);
  lines = 0;
  for (uint64_t t = 0; t < 1000; t += 50) lines += tty.due(t) ? 1 : 0;
  EXPECT_LE(lines, 4);
}

}  // namespace
}  // namespace cardnode::cli
