#include "runtime/state.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

namespace cardnode::runtime {
namespace {

using sched::TaskState;

pb::WalRecord submitted(uint64_t id, uint32_t count, uint64_t after = 0, uint32_t retries = 0) {
  pb::WalRecord r;
  auto* s = r.mutable_job_submitted();
  s->set_job_id(id);
  auto* spec = s->mutable_spec();
  spec->add_command("true");
  spec->set_count(count);
  spec->set_cpu_millis(1000);
  spec->set_mem_bytes(64 << 20);
  spec->set_priority(50);
  spec->set_after(after);
  spec->set_retries(retries);
  return r;
}

pb::WalRecord started(uint64_t job, uint32_t index, uint32_t attempt = 1) {
  pb::WalRecord r;
  auto* s = r.mutable_task_started();
  s->set_job_id(job);
  s->set_index(index);
  s->set_node("n1");
  s->set_attempt(attempt);
  return r;
}

pb::WalRecord finished(uint64_t job, uint32_t index, pb::TaskState st, int code = 0) {
  pb::WalRecord r;
  auto* f = r.mutable_task_finished();
  f->set_job_id(job);
  f->set_index(index);
  f->set_state(st);
  f->set_exit_code(code);
  return r;
}

pb::WalRecord cancelled(uint64_t job) {
  pb::WalRecord r;
  r.mutable_job_cancelled()->set_job_id(job);
  return r;
}

State with_node(uint32_t cpu_millis = 4000) {
  State s;
  sched::NodeSpec n;
  n.name = "n1";
  n.capacity = {cpu_millis, 8ull << 30};
  EXPECT_TRUE(s.cluster().add_node(n).has_value());
  return s;
}

uint64_t total(const State& s, TaskState st) {
  return s.task_totals()[static_cast<size_t>(st)];
}

TEST(State, NormalizeFillsDefaultsAndRejectsBadSpecs) {
  State s = with_node();
  pb::JobSpec spec;
  spec.add_command("echo");
  ASSERT_TRUE(s.normalize(&spec).has_value());
  EXPECT_EQ(spec.count(), 1u);
  EXPECT_EQ(spec.cpu_millis(), kDefaultCpuMillis);
  EXPECT_EQ(spec.mem_bytes(), kDefaultMemBytes);
  EXPECT_EQ(spec.priority(), kDefaultPriority);
  EXPECT_EQ(spec.name(), "echo");

  pb::JobSpec empty;
  EXPECT_EQ(s.normalize(&empty).error().code, Errc::kInvalidArgument);
  pb::JobSpec prio = spec;
  prio.set_priority(101);
  EXPECT_FALSE(s.normalize(&prio).has_value());
  pb::JobSpec after = spec;
  after.set_after(42);
  EXPECT_EQ(s.normalize(&after).error().code, Errc::kNotFound);
  pb::JobSpec huge = spec;
  huge.set_count(2'000'000);
  EXPECT_FALSE(s.normalize(&huge).has_value());
}

TEST(State, TotalsFollowEveryRecord) {
  State s = with_node();
  ASSERT_TRUE(s.apply(submitted(1, 3)).has_value());
  EXPECT_EQ(total(s, TaskState::kQueued), 3u);
  ASSERT_TRUE(s.apply(started(1, 0)).has_value());
  EXPECT_EQ(total(s, TaskState::kQueued), 2u);
  EXPECT_EQ(total(s, TaskState::kRunning), 1u);
  auto a = s.apply(finished(1, 0, pb::TASK_SUCCEEDED));
  ASSERT_TRUE(a.has_value());
  EXPECT_TRUE(a->finished_jobs.empty());
  EXPECT_EQ(total(s, TaskState::kSucceeded), 1u);
  EXPECT_EQ(s.jobs_submitted(), 1u);
}

TEST(State, LastTaskReportsTheJobFinished) {
  State s = with_node();
  ASSERT_TRUE(s.apply(submitted(1, 1)).has_value());
  ASSERT_TRUE(s.apply(started(1, 0)).has_value());
  auto a = s.apply(finished(1, 0, pb::TASK_FAILED, 3));
  ASSERT_TRUE(a.has_value());
  ASSERT_EQ(a->finished_jobs.size(), 1u);
  EXPECT_EQ(a->finished_jobs[0], 1u);
  EXPECT_EQ(s.cluster().job(1)->tasks[0].exit_code, 3);
}

TEST(State, CancelReturnsRunningTasksToKill) {
  State s = with_node();
  ASSERT_TRUE(s.apply(submitted(1, 3)).has_value());
  ASSERT_TRUE(s.apply(started(1, 1)).has_value());
  auto a = s.apply(cancelled(1));
  ASSERT_TRUE(a.has_value());
  ASSERT_EQ(a->to_kill.size(), 1u);
  EXPECT_EQ(a->to_kill[0].index, 1u);
  EXPECT_TRUE(a->finished_jobs.empty());  // one task still running
  EXPECT_EQ(total(s, TaskState::kCancelled), 2u);
  auto b = s.apply(finished(1, 1, pb::TASK_CANCELLED));
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->finished_jobs, std::vector<sched::JobId>{1});
  EXPECT_EQ(total(s, TaskState::kCancelled), 3u);
  EXPECT_EQ(total(s, TaskState::kRunning), 0u);
}

TEST(State, DependentsEndWithTheirDependencyAndAreCounted) {
  State s = with_node();
  ASSERT_TRUE(s.apply(submitted(1, 1)).has_value());
  ASSERT_TRUE(s.apply(submitted(2, 4, /*after=*/1)).has_value());
  EXPECT_EQ(total(s, TaskState::kQueued), 5u);
  ASSERT_TRUE(s.apply(started(1, 0)).has_value());
  auto a = s.apply(finished(1, 0, pb::TASK_FAILED, 1));
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->finished_jobs.size(), 2u);  // job 1 failed, job 2 cancelled with it
  EXPECT_EQ(total(s, TaskState::kCancelled), 4u);
  EXPECT_EQ(total(s, TaskState::kQueued), 0u);
}

TEST(State, RecordsThatDoNotFitAreErrorsNotCrashes) {
  State s = with_node();
  EXPECT_FALSE(s.apply(started(9, 0)).has_value());
  EXPECT_FALSE(s.apply(finished(9, 0, pb::TASK_SUCCEEDED)).has_value());
  EXPECT_FALSE(s.apply(pb::WalRecord{}).has_value());
  ASSERT_TRUE(s.apply(submitted(1, 1)).has_value());
  EXPECT_FALSE(s.apply(submitted(1, 1)).has_value());  // duplicate id
  pb::WalRecord elsewhere = started(1, 0);
  elsewhere.mutable_task_started()->set_node("no-such-node");
  EXPECT_FALSE(s.apply(elsewhere).has_value());
}

// Replay: the records of a random live history, applied to a fresh State, give the same
// state — every task, every total.
TEST(StateReplay, RandomHistoriesReplayExactly) {
  for (uint64_t seed = 1; seed <= 30; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    State live = with_node(3000);
    std::vector<pb::WalRecord> log;
    auto apply = [&](const pb::WalRecord& r) {
      if (live.apply(r)) log.push_back(r);
    };
    uint64_t next_id = 1;
    for (int step = 0; step < 300; ++step) {
      switch (rng() % 4) {
        case 0:
          apply(submitted(next_id, 1 + rng() % 5, next_id > 1 && rng() % 4 == 0 ? next_id - 1 : 0,
                          rng() % 2));
          ++next_id;
          break;
        case 1:
          for (const auto& p : live.cluster().plan(2))
            apply(started(p.task.job, p.task.index, p.attempt));
          break;
        case 2: {
          std::vector<sched::TaskRef> running;
          for (const auto& [id, job] : live.cluster().jobs())
            for (uint32_t i = 0; i < job.tasks.size(); ++i)
              if (job.tasks[i].state == TaskState::kRunning) running.push_back({id, i});
          if (running.empty()) break;
          auto t = running[rng() % running.size()];
          static const pb::TaskState kEnds[] = {pb::TASK_SUCCEEDED, pb::TASK_FAILED,
                                                pb::TASK_TIMED_OUT, pb::TASK_LOST};
          apply(finished(t.job, t.index, kEnds[rng() % 4], 1));
          break;
        }
        case 3:
          if (next_id > 1 && rng() % 5 == 0) apply(cancelled(1 + rng() % (next_id - 1)));
          break;
      }
    }
    State replayed = with_node(3000);
    for (const auto& r : log) ASSERT_TRUE(replayed.apply(r).has_value());
    EXPECT_EQ(replayed.task_totals(), live.task_totals());
    ASSERT_EQ(replayed.cluster().jobs().size(), live.cluster().jobs().size());
    for (const auto& [id, job] : live.cluster().jobs()) {
      const sched::Job* other = replayed.cluster().job(id);
      ASSERT_NE(other, nullptr);
      EXPECT_EQ(other->state, job.state);
      for (uint32_t i = 0; i < job.tasks.size(); ++i) {
        EXPECT_EQ(other->tasks[i].state, job.tasks[i].state);
        EXPECT_EQ(other->tasks[i].attempts, job.tasks[i].attempts);
        EXPECT_EQ(other->tasks[i].exit_code, job.tasks[i].exit_code);
      }
    }
    EXPECT_EQ(replayed.cluster().nodes()[0].used.cpu_millis,
              live.cluster().nodes()[0].used.cpu_millis);
  }
}

}  // namespace
}  // namespace cardnode::runtime
