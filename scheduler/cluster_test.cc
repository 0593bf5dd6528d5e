// Tests for the cluster state machine: one test per rule, then a randomized property
// test (invariants after every event) and a replay-determinism test.
#include "scheduler/cluster.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sstream>
#include <variant>

namespace cardnode::sched {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;
// plan's clock in the rule tests: long before any job could starve (Limits::starve_after_ms).
constexpr uint64_t kNow = 0;

NodeSpec node_spec(std::string name, uint32_t cpu_millis, uint64_t mem_bytes,
                   std::map<std::string, std::string> labels = {}) {
  return {std::move(name), {cpu_millis, mem_bytes}, std::move(labels)};
}

JobSpec job_spec(uint32_t count, uint32_t cpu_millis = 1000, uint64_t mem_bytes = 100 * kMiB,
                 uint32_t priority = 50) {
  // Designated initializers rather than `s.name = "j"`: g++ 12 -O3 warns falsely
  // (-Wrestrict) on assigning a literal to a std::string member.
  return JobSpec{.name = std::string("j"),
                 .count = count,
                 .per_task = {cpu_millis, mem_bytes},
                 .priority = priority};
}

Outcome outcome(TaskState s, int32_t exit_code = 0) {
  return {s, exit_code, 0};
}

// Applies everything plan() proposes; returns the placements.
std::vector<Placement> place(Cluster& c, uint32_t max = 1000, uint64_t now_ms = 1) {
  auto plan = c.plan(max, kNow);
  for (const Placement& p : plan) EXPECT_TRUE(c.start(p, now_ms).has_value());
  return plan;
}

uint32_t count_of(const Job& j, TaskState s) {
  return j.state_counts[static_cast<size_t>(s)];
}

class ClusterTest : public ::testing::Test {
 protected:
  NodeId add(std::string name, uint32_t cpu, uint64_t mem = 8 * kGiB,
             std::map<std::string, std::string> labels = {}) {
    auto id = c.add_node(node_spec(std::move(name), cpu, mem, std::move(labels)));
    EXPECT_TRUE(id.has_value());
    return id.value_or(0);
  }
  void submit(JobId id, JobSpec spec) { ASSERT_TRUE(c.submit(id, std::move(spec), 10)); }

  Cluster c;
};

// ------------------------------------------------------------------------- names

TEST(Names, StatesMatchTheCommandLineSurface) {
  const char* tasks[] = {"queued",    "running",   "succeeded",  "failed",
                         "cancelled", "timed_out", "oom_killed", "lost"};
  for (size_t i = 0; i < kTaskStateCount; ++i) {
    EXPECT_STREQ(task_state_name(static_cast<TaskState>(i)), tasks[i]);
    EXPECT_EQ(is_final(static_cast<TaskState>(i)), i >= 2);
  }
  const char* jobs[] = {"queued", "running", "succeeded", "failed", "cancelled"};
  for (size_t i = 0; i < 5; ++i) EXPECT_STREQ(job_state_name(static_cast<JobState>(i)), jobs[i]);
  EXPECT_STREQ(node_state_name(NodeState::kReady), "ready");
  EXPECT_STREQ(node_state_name(NodeState::kDraining), "draining");
  EXPECT_STREQ(node_state_name(NodeState::kDown), "down");
  EXPECT_STREQ(sched_error_name(SchedError::kBadTransition), "bad_transition");
}

// ------------------------------------------------------------------------- nodes

TEST_F(ClusterTest, AddNodeRejectsDuplicatesZeroCapacityAndTooMany) {
  Cluster small(Limits{.nodes_max = 2});
  EXPECT_EQ(small.add_node(node_spec("a", 1000, kGiB)).value(), 0u);
  EXPECT_EQ(small.add_node(node_spec("a", 1000, kGiB)).error(), SchedError::kDuplicateId);
  EXPECT_EQ(small.add_node(node_spec("b", 0, kGiB)).error(), SchedError::kInvalidSpec);
  EXPECT_EQ(small.add_node(node_spec("b", 1000, 0)).error(), SchedError::kInvalidSpec);
  EXPECT_EQ(small.add_node(node_spec("b", 1000, kGiB)).value(), 1u);
  EXPECT_EQ(small.add_node(node_spec("c", 1000, kGiB)).error(), SchedError::kTooManyNodes);
  EXPECT_EQ(small.node_by_name("b")->id, 1u);
  EXPECT_EQ(small.node_by_name("c"), nullptr);
  EXPECT_EQ(small.set_node_state(2, NodeState::kDown).error(), SchedError::kUnknownNode);
}

// ----------------------------------------------------------------- submit bounds

TEST_F(ClusterTest, ValidateRejectsBadSpecs) {
  EXPECT_TRUE(c.validate(job_spec(1)));
  EXPECT_EQ(c.validate(job_spec(0)).error(), SchedError::kInvalidSpec);
  EXPECT_EQ(c.validate(job_spec(1'000'001)).error(), SchedError::kInvalidSpec);
  EXPECT_EQ(c.validate(job_spec(1, 0)).error(), SchedError::kInvalidSpec);
  EXPECT_EQ(c.validate(job_spec(1, 1000, 0)).error(), SchedError::kInvalidSpec);
  EXPECT_EQ(c.validate(job_spec(1, 1000, kMiB, 101)).error(), SchedError::kInvalidSpec);
  EXPECT_TRUE(c.validate(job_spec(1, 1000, kMiB, 100)));
  EXPECT_EQ(c.submit(1, job_spec(0), 0).error(), SchedError::kInvalidSpec);
  EXPECT_TRUE(c.jobs().empty());
}

TEST_F(ClusterTest, SubmitRejectsIdsNotAboveTheLast) {
  EXPECT_EQ(c.submit(0, job_spec(1), 0).error(), SchedError::kDuplicateId);
  submit(5, job_spec(1));
  EXPECT_EQ(c.submit(5, job_spec(1), 0).error(), SchedError::kDuplicateId);
  EXPECT_EQ(c.submit(4, job_spec(1), 0).error(), SchedError::kDuplicateId);
  submit(6, job_spec(1));
  EXPECT_EQ(c.last_job_id(), 6u);
}

TEST_F(ClusterTest, SubmitBoundsLiveJobsAndQueuedTasks) {
  Cluster small(Limits{.jobs_max = 2, .tasks_per_job_max = 10, .queued_tasks_max = 12});
  ASSERT_TRUE(small.add_node(node_spec("a", 1000, kGiB)));
  EXPECT_EQ(small.submit(1, job_spec(11), 0).error(), SchedError::kInvalidSpec);
  ASSERT_TRUE(small.submit(1, job_spec(10), 0));
  EXPECT_EQ(small.submit(2, job_spec(3), 0).error(), SchedError::kTooManyTasks);
  ASSERT_TRUE(small.submit(2, job_spec(2), 0));
  EXPECT_EQ(small.submit(3, job_spec(1), 0).error(), SchedError::kTooManyJobs);
  EXPECT_EQ(small.queued_tasks(), 12u);
  // Ending a job frees its slot; starting a task frees queue room.
  ASSERT_TRUE(small.cancel(2, 0));
  auto plan = place(small, 1);
  ASSERT_EQ(plan.size(), 1u);
  EXPECT_EQ(small.queued_tasks(), 9u);
  ASSERT_TRUE(small.submit(3, job_spec(3), 0));
  EXPECT_EQ(small.submit(4, job_spec(1), 0).error(), SchedError::kTooManyJobs);
}

TEST_F(ClusterTest, SubmitAfterUnknownJobFails) {
  JobSpec s = job_spec(1);
  s.after = 7;
  EXPECT_EQ(c.submit(8, s, 0).error(), SchedError::kUnknownJob);
  s.after = 8;  // itself
  EXPECT_EQ(c.submit(8, s, 0).error(), SchedError::kUnknownJob);
}

// ---------------------------------------------------------------------- placement

// Equal priorities share: jobs 2 and 3 alternate (fewest running tasks first, then the
// lower id), where FIFO used to place all of job 2 first.
TEST_F(ClusterTest, PlanOrdersByPriorityThenFairShareThenJobId) {
  add("a", 16000);
  submit(1, job_spec(2, 1000, kMiB, 10));
  submit(2, job_spec(2, 1000, kMiB, 90));
  submit(3, job_spec(1, 1000, kMiB, 90));
  submit(4, job_spec(1, 1000, kMiB, 50));
  auto plan = c.plan(100, kNow);
  std::vector<TaskRef> order;
  for (const auto& p : plan) order.push_back(p.task);
  std::vector<TaskRef> want = {{2, 0}, {3, 0}, {2, 1}, {4, 0}, {1, 0}, {1, 1}};
  EXPECT_EQ(order, want);
  for (const auto& p : plan) EXPECT_EQ(p.attempt, 1u);
  EXPECT_EQ(c.plan(3, kNow).size(), 3u);
  EXPECT_TRUE(c.plan(0, kNow).empty());
}

TEST_F(ClusterTest, PlanIsPureAndRepeatable) {
  add("a", 4000);
  submit(1, job_spec(10));
  auto first = c.plan(100, kNow);
  auto second = c.plan(100, kNow);
  ASSERT_EQ(first.size(), 4u);
  ASSERT_EQ(second.size(), first.size());
  for (size_t i = 0; i < first.size(); ++i) {
    EXPECT_EQ(first[i].task, second[i].task);
    EXPECT_EQ(first[i].node, second[i].node);
  }
  EXPECT_EQ(c.job(1)->state, JobState::kQueued);
  EXPECT_EQ(c.node(0)->used.cpu_millis, 0u);
}

// Packing (the default): the fitting board with the least free CPU, then memory, then
// the lowest id, so a half-used board fills before an idle one gets work.
TEST_F(ClusterTest, PlanPacksOntoTheBoardWithTheLeastRoom) {
  NodeId small = add("small", 2000, 8 * kGiB);
  NodeId big_lowmem = add("big-lowmem", 4000, 2 * kGiB);
  NodeId big_highmem = add("big-highmem", 4000, 4 * kGiB);
  NodeId twin = add("twin", 4000, 4 * kGiB);
  submit(1, job_spec(1, 1000, kGiB));
  auto plan = c.plan(1, kNow);
  ASSERT_EQ(plan.size(), 1u);
  EXPECT_EQ(plan[0].node, small);
  // A task too big for the small board goes to the big one with less memory.
  submit(2, job_spec(2, 3000, kGiB));
  plan = place(c, 100);
  ASSERT_EQ(plan.size(), 3u);
  EXPECT_EQ(plan[0].node, small);
  EXPECT_EQ(plan[1].node, big_lowmem);   // 4000 / 2 GiB beats 4000 / 4 GiB
  EXPECT_EQ(plan[2].node, big_highmem);  // ties with twin: lower id
  // 1000 millicores are left on the first three: 1000-millicore tasks fill them, least
  // memory first (1, 3, 7 GiB free), before the idle twin gets any.
  submit(3, job_spec(4, 1000, 512 * kMiB));
  plan = place(c, 100);
  ASSERT_EQ(plan.size(), 4u);
  EXPECT_EQ(plan[0].node, big_lowmem);
  EXPECT_EQ(plan[1].node, big_highmem);
  EXPECT_EQ(plan[2].node, small);
  EXPECT_EQ(plan[3].node, twin);
  EXPECT_EQ(c.node(twin)->running, 1u);
}

// --spread: one task per board first (the fewest of this job's tasks), then the most free
// CPU, then memory, then the lowest id.
TEST_F(ClusterTest, SpreadPutsOneTaskPerBoardFirst) {
  NodeId small = add("small", 2000, 8 * kGiB);
  NodeId big_lowmem = add("big-lowmem", 4000, 2 * kGiB);
  NodeId big_highmem = add("big-highmem", 4000, 4 * kGiB);
  NodeId twin = add("twin", 4000, 4 * kGiB);
  JobSpec s = job_spec(6, 1000, 512 * kMiB);
  s.spread = true;
  submit(1, s);
  auto plan = place(c, 100);
  ASSERT_EQ(plan.size(), 6u);
  EXPECT_EQ(plan[0].node, big_highmem);  // most CPU, most memory, lower id than twin
  EXPECT_EQ(plan[1].node, twin);
  EXPECT_EQ(plan[2].node, big_lowmem);
  EXPECT_EQ(plan[3].node, small);        // every board has one now
  EXPECT_EQ(plan[4].node, big_highmem);  // 3000 free; 3.5 GiB beats 1.5 GiB and twin's id
  EXPECT_EQ(plan[5].node, twin);
  // Another spread job counts only its own tasks.
  submit(2, s);
  plan = c.plan(1, kNow);
  ASSERT_EQ(plan.size(), 1u);
  EXPECT_EQ(plan[0].node, big_lowmem);  // 3000 free, the most now
  // A spread job's tasks that ended leave their boards free for it again.
  ASSERT_TRUE(c.finish({1, 3}, outcome(TaskState::kSucceeded), 2));
  EXPECT_EQ(c.plan(1, kNow)[0].node, big_lowmem);  // still the most room; counts are per job
}

TEST_F(ClusterTest, CapacityIsRespectedAndTasksWait) {
  add("a", 2000, 8 * kGiB);
  add("b", 2000, 8 * kGiB);
  submit(1, job_spec(10, 1000));
  auto plan = place(c);
  ASSERT_EQ(plan.size(), 4u);
  EXPECT_EQ(c.queued_tasks(), 6u);
  for (const Node& n : c.nodes()) {
    EXPECT_EQ(n.used.cpu_millis, 2000u);
    EXPECT_EQ(n.running, 2u);
  }
  EXPECT_TRUE(c.plan(10, kNow).empty());
  ASSERT_TRUE(c.finish(plan[0].task, outcome(TaskState::kSucceeded), 2));
  auto next = c.plan(10, kNow);
  ASSERT_EQ(next.size(), 1u);
  EXPECT_EQ(next[0].node, plan[0].node);
  EXPECT_EQ(next[0].task, (TaskRef{1, 4}));
}

TEST_F(ClusterTest, MemoryIsACapacityToo) {
  add("a", 16000, kGiB);
  submit(1, job_spec(4, 100, 400 * kMiB));
  EXPECT_EQ(place(c).size(), 2u);
  EXPECT_EQ(c.node(0)->used.mem_bytes, 800 * kMiB);
}

TEST_F(ClusterTest, ConstraintsMustAllMatchNodeLabels) {
  NodeId plain = add("plain", 8000);
  NodeId arm32 = add("arm32", 2000, 8 * kGiB, {{"arch", "armhf"}});
  NodeId both = add("both", 1000, 8 * kGiB, {{"arch", "armhf"}, {"camera", "yes"}});
  JobSpec s = job_spec(4);
  s.constraints = {{"arch", "armhf"}};
  submit(1, s);
  auto plan = place(c);
  ASSERT_EQ(plan.size(), 3u);
  for (const auto& p : plan) EXPECT_NE(p.node, plain);
  EXPECT_EQ(c.node(arm32)->running, 2u);
  EXPECT_EQ(c.node(both)->running, 1u);

  s.constraints = {{"arch", "armhf"}, {"camera", "no"}};
  submit(2, s);
  EXPECT_TRUE(c.plan(10, kNow).empty());
}

TEST_F(ClusterTest, DrainingAndDownNodesGetNoPlacements) {
  NodeId a = add("a", 4000);
  NodeId b = add("b", 1000);
  submit(1, job_spec(4));
  ASSERT_TRUE(c.set_node_state(a, NodeState::kDraining));
  auto plan = place(c);
  ASSERT_EQ(plan.size(), 1u);
  EXPECT_EQ(plan[0].node, b);
  ASSERT_TRUE(c.set_node_state(b, NodeState::kDown));
  EXPECT_TRUE(c.plan(10, kNow).empty());
  ASSERT_TRUE(c.set_node_state(a, NodeState::kReady));
  EXPECT_EQ(c.plan(10, kNow).size(), 3u);
}

TEST_F(ClusterTest, BlockedLargeJobDoesNotBlockSmallerOnes) {
  add("a", 2000);
  submit(1, job_spec(1, 1000));
  place(c);
  submit(2, job_spec(1, 2000, kMiB, 100));  // needs the whole node
  submit(3, job_spec(2, 500, kMiB, 0));
  auto plan = c.plan(10, kNow);
  ASSERT_EQ(plan.size(), 2u);
  EXPECT_EQ(plan[0].task.job, 3u);
  EXPECT_EQ(plan[1].task.job, 3u);
}

TEST_F(ClusterTest, NoNodesMeansNoPlacements) {
  submit(1, job_spec(1));
  EXPECT_TRUE(c.plan(10, kNow).empty());
}

// ------------------------------------------------------------------- job states

TEST_F(ClusterTest, JobStateFollowsItsTasks) {
  add("a", 1000);
  submit(1, job_spec(2));
  EXPECT_EQ(c.job(1)->state, JobState::kQueued);
  auto p = place(c);
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(c.job(1)->state, JobState::kRunning);
  EXPECT_EQ(c.node(0)->spec.name, "a");
  EXPECT_EQ(c.job(1)->tasks[0].node, 0u);
  ASSERT_EQ(c.finish(p[0].task, outcome(TaskState::kSucceeded), 20).value(), TaskState::kSucceeded);
  // One done, one still queued: running.
  EXPECT_EQ(c.job(1)->state, JobState::kRunning);
  EXPECT_EQ(c.job(1)->finished_ms, 0u);
  p = place(c);
  ASSERT_EQ(p.size(), 1u);
  ASSERT_TRUE(c.finish(p[0].task, outcome(TaskState::kSucceeded), 30));
  const Job& j = *c.job(1);
  EXPECT_EQ(j.state, JobState::kSucceeded);
  EXPECT_EQ(j.finished_ms, 30u);
  EXPECT_EQ(j.submitted_ms, 10u);
  EXPECT_EQ(count_of(j, TaskState::kSucceeded), 2u);
  EXPECT_EQ(c.node(0)->used.cpu_millis, 0u);
  EXPECT_EQ(c.node(0)->running, 0u);
}

TEST_F(ClusterTest, AnyFailureFailsTheJob) {
  add("a", 4000);
  submit(1, job_spec(2));
  auto p = place(c);
  ASSERT_TRUE(c.finish(p[0].task, outcome(TaskState::kSucceeded), 20));
  ASSERT_EQ(c.finish(p[1].task, outcome(TaskState::kFailed, 3), 20).value(), TaskState::kFailed);
  EXPECT_EQ(c.job(1)->state, JobState::kFailed);
  EXPECT_EQ(c.job(1)->tasks[1].exit_code, 3);
}

TEST_F(ClusterTest, StartAndFinishRejectBadTransitions) {
  add("a", 4000);
  submit(1, job_spec(2));
  EXPECT_EQ(c.start({{9, 0}, 0, 1}, 1).error(), SchedError::kUnknownJob);
  EXPECT_EQ(c.start({{1, 2}, 0, 1}, 1).error(), SchedError::kUnknownJob);
  EXPECT_EQ(c.start({{1, 0}, 5, 1}, 1).error(), SchedError::kUnknownNode);
  EXPECT_EQ(c.finish({1, 0}, outcome(TaskState::kSucceeded), 1).error(),
            SchedError::kBadTransition);
  ASSERT_TRUE(c.start({{1, 0}, 0, 1}, 1));
  EXPECT_EQ(c.start({{1, 0}, 0, 1}, 1).error(), SchedError::kBadTransition);
  EXPECT_EQ(c.finish({1, 0}, outcome(TaskState::kQueued), 1).error(), SchedError::kBadTransition);
  EXPECT_EQ(c.finish({1, 0}, outcome(TaskState::kRunning), 1).error(), SchedError::kBadTransition);
  EXPECT_EQ(c.finish({2, 0}, outcome(TaskState::kSucceeded), 1).error(), SchedError::kUnknownJob);
  ASSERT_TRUE(c.finish({1, 0}, outcome(TaskState::kSucceeded), 1));
  EXPECT_EQ(c.finish({1, 0}, outcome(TaskState::kSucceeded), 1).error(),
            SchedError::kBadTransition);
  EXPECT_EQ(c.start({{1, 0}, 0, 1}, 1).error(), SchedError::kBadTransition);
}

TEST_F(ClusterTest, RunningTasksKeepTheirStartTimeAndFinishedOnesHaveNone) {
  NodeId a = add("a", 4000);
  submit(1, job_spec(3));
  ASSERT_TRUE(c.start({{1, 0}, a, 1}, 100));
  ASSERT_TRUE(c.start({{1, 1}, a, 1}, 250));
  EXPECT_EQ(c.job(1)->started_ms, (std::map<uint32_t, uint64_t>{{0, 100}, {1, 250}}));
  Outcome done = outcome(TaskState::kSucceeded);
  done.usage = {.cpu_user_ms = 1, .wall_ms = 900};
  ASSERT_TRUE(c.finish({1, 0}, done, 1000));
  EXPECT_EQ(c.job(1)->started_ms, (std::map<uint32_t, uint64_t>{{1, 250}}));
  EXPECT_EQ(c.job(1)->usage[0].wall_ms, 900u);

  // An image keeps them, for running tasks only.
  Job image = *c.job(1);
  Cluster fresh;
  ASSERT_TRUE(fresh.restore_node(c.node(a)->spec, false));
  Job bad = image;
  bad.started_ms[0] = 100;  // task 0 has ended
  EXPECT_EQ(fresh.restore_job(bad, false).error(), SchedError::kBadImage);
  ASSERT_TRUE(fresh.restore_job(image, false));
  EXPECT_EQ(fresh.job(1)->started_ms, (std::map<uint32_t, uint64_t>{{1, 250}}));
}

// --------------------------------------------------------------------- retries

TEST_F(ClusterTest, FailuresRequeueUntilRetriesAreUsedUp) {
  add("a", 1000);
  JobSpec s = job_spec(1);
  s.retries = 2;
  submit(1, s);
  const TaskState outcomes[] = {TaskState::kFailed, TaskState::kTimedOut, TaskState::kOomKilled};
  for (uint32_t attempt = 1; attempt <= 3; ++attempt) {
    auto p = place(c);
    ASSERT_EQ(p.size(), 1u);
    EXPECT_EQ(p[0].attempt, attempt);
    auto after = c.finish(p[0].task, outcome(outcomes[attempt - 1], int32_t(attempt)), 5);
    ASSERT_TRUE(after);
    EXPECT_EQ(*after, attempt < 3 ? TaskState::kQueued : TaskState::kOomKilled);
    EXPECT_EQ(c.job(1)->tasks[0].exit_code, int32_t(attempt));
  }
  const Job& j = *c.job(1);
  EXPECT_EQ(j.state, JobState::kFailed);
  EXPECT_EQ(j.tasks[0].attempts, 3u);
  EXPECT_EQ(c.queued_tasks(), 0u);
  EXPECT_TRUE(c.plan(10, kNow).empty());
}

TEST_F(ClusterTest, RequeuedTasksGoFirstInFifoOrder) {
  add("a", 3000);
  JobSpec s = job_spec(6);
  s.retries = 1;
  submit(1, s);
  auto p = place(c);
  ASSERT_EQ(p.size(), 3u);
  ASSERT_TRUE(c.finish({1, 2}, outcome(TaskState::kFailed), 5));
  ASSERT_TRUE(c.finish({1, 0}, outcome(TaskState::kFailed), 5));
  auto next = c.plan(10, kNow);
  ASSERT_EQ(next.size(), 2u);
  EXPECT_EQ(next[0].task, (TaskRef{1, 2}));
  EXPECT_EQ(next[0].attempt, 2u);
  EXPECT_EQ(next[1].task, (TaskRef{1, 0}));
}

TEST_F(ClusterTest, HugeRetriesStillEndAfterBoundedAttempts) {
  add("a", 1000);
  JobSpec s = job_spec(1);
  s.retries = 1'000'000;
  submit(1, s);
  uint32_t starts = 0;
  for (; starts < 1000; ++starts) {
    auto p = place(c);
    if (p.empty()) break;
    ASSERT_TRUE(c.finish(p[0].task, outcome(TaskState::kFailed), 5));
  }
  EXPECT_EQ(starts, 255u);
  EXPECT_EQ(c.job(1)->state, JobState::kFailed);
}

TEST_F(ClusterTest, LostTasksRequeueUpToTheBoundWithoutUsingRetries) {
  Cluster lc(Limits{.lost_requeues_max = 2});
  ASSERT_TRUE(lc.add_node(node_spec("a", 1000, kGiB)));
  JobSpec s = job_spec(1);
  s.retries = 1;
  ASSERT_TRUE(lc.submit(1, s, 0));
  auto run_and_end = [&](TaskState st) {
    auto p = place(lc);
    EXPECT_EQ(p.size(), 1u);
    return p.empty() ? TaskState::kQueued : lc.finish(p[0].task, outcome(st), 5).value();
  };
  EXPECT_EQ(run_and_end(TaskState::kLost), TaskState::kQueued);
  EXPECT_EQ(run_and_end(TaskState::kLost), TaskState::kQueued);
  // The retry is still there after two losses.
  EXPECT_EQ(run_and_end(TaskState::kFailed), TaskState::kQueued);
  EXPECT_EQ(run_and_end(TaskState::kLost), TaskState::kLost);  // third loss: final
  const Job& j = *lc.job(1);
  EXPECT_EQ(j.tasks[0].attempts, 4u);
  EXPECT_EQ(j.tasks[0].lost, 3u);
  EXPECT_EQ(j.state, JobState::kFailed);
}

// A clean stop is nobody's fault: its losses requeue the task without using the lost
// budget or --retries, however many there are; other losses still count.
TEST_F(ClusterTest, RequeueFreeLossesUseNeitherTheLostBudgetNorRetries) {
  Cluster lc(Limits{.lost_requeues_max = 2});
  ASSERT_TRUE(lc.add_node(node_spec("a", 1000, kGiB)));
  JobSpec s = job_spec(1);
  s.retries = 1;
  ASSERT_TRUE(lc.submit(1, s, 0));
  auto run_and_end = [&](Outcome o) {
    auto p = place(lc);
    EXPECT_EQ(p.size(), 1u);
    return p.empty() ? TaskState::kQueued : lc.finish(p[0].task, o, 5).value();
  };
  const Outcome clean_stop{.state = TaskState::kLost, .requeue_free = true};
  for (int i = 0; i < 7; ++i) EXPECT_EQ(run_and_end(clean_stop), TaskState::kQueued) << i;
  EXPECT_EQ(lc.job(1)->tasks[0].lost, 0u);
  EXPECT_EQ(lc.job(1)->tasks[0].lost_free, 7u);
  EXPECT_EQ(lc.job(1)->state, JobState::kQueued);
  // The retry is still there, and so is the whole lost budget.
  EXPECT_EQ(run_and_end(outcome(TaskState::kFailed)), TaskState::kQueued);
  EXPECT_EQ(run_and_end(outcome(TaskState::kLost)), TaskState::kQueued);
  EXPECT_EQ(run_and_end(clean_stop), TaskState::kQueued);
  EXPECT_EQ(run_and_end(outcome(TaskState::kLost)), TaskState::kQueued);
  EXPECT_EQ(run_and_end(outcome(TaskState::kLost)), TaskState::kLost);  // third counted loss
  const Task& t = lc.job(1)->tasks[0];
  EXPECT_EQ(t.attempts, 12u);
  EXPECT_EQ(t.lost, 3u);
  EXPECT_EQ(t.lost_free, 8u);
  EXPECT_EQ(lc.job(1)->state, JobState::kFailed);

  // The flag means nothing on an end that is not a loss.
  ASSERT_TRUE(lc.submit(2, job_spec(1), 0));
  EXPECT_EQ(run_and_end({.state = TaskState::kFailed, .exit_code = 1, .requeue_free = true}),
            TaskState::kFailed);
  EXPECT_EQ(lc.job(2)->tasks[0].lost_free, 0u);
}

TEST_F(ClusterTest, EarlierAttemptsKeepTheirNodeAndOutcomeBounded) {
  Cluster lc(Limits{.lost_requeues_max = kLostRequeuesMaxLimit});
  ASSERT_TRUE(lc.add_node(node_spec("a", 1000, kGiB)));
  ASSERT_TRUE(lc.add_node(node_spec("b", 1000, kGiB)));
  JobSpec s = job_spec(2);
  s.retries = 3;
  ASSERT_TRUE(lc.submit(1, s, 0));
  auto p = place(lc);
  ASSERT_EQ(p.size(), 2u);
  const TaskRef t0 = p[0].task;
  const NodeId first_node = p[0].node;
  ASSERT_TRUE(lc.finish(t0, {.state = TaskState::kFailed, .exit_code = 3}, 1));
  ASSERT_TRUE(lc.finish(p[1].task, outcome(TaskState::kSucceeded), 1));
  // Only the retried task has earlier attempts; its last one is the task itself.
  ASSERT_EQ(lc.job(1)->earlier.size(), 1u);
  const auto& list = lc.job(1)->earlier.at(t0.index);
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].attempt, 1u);
  EXPECT_EQ(list[0].state, TaskState::kFailed);
  EXPECT_EQ(list[0].exit_code, 3);
  EXPECT_EQ(list[0].node, first_node);
  auto again = place(lc);
  ASSERT_EQ(again.size(), 1u);
  ASSERT_TRUE(lc.finish(again[0].task, outcome(TaskState::kSucceeded), 2));
  EXPECT_EQ(lc.job(1)->earlier.at(t0.index).size(), 1u);  // a final end is not "earlier"

  // Past kEarlierPerTaskMax, the latest are kept.
  ASSERT_TRUE(lc.submit(2, job_spec(1), 0));
  for (uint32_t i = 0; i < kEarlierPerTaskMax + 4; ++i) {
    auto q = place(lc);
    ASSERT_EQ(q.size(), 1u);
    ASSERT_TRUE(lc.finish(q[0].task, {.state = TaskState::kLost, .requeue_free = true}, 3));
  }
  const auto& many = lc.job(2)->earlier.at(0);
  ASSERT_EQ(many.size(), kEarlierPerTaskMax);
  EXPECT_EQ(many.front().attempt, 5u);
  EXPECT_EQ(many.back().attempt, kEarlierPerTaskMax + 4);
}

TEST_F(ClusterTest, NodeLostEndsItsRunningTasksAsLost) {
  NodeId a = add("a", 2000);
  NodeId b = add("b", 1000);
  submit(1, job_spec(3));
  place(c);
  ASSERT_EQ(c.node(a)->running, 2u);
  auto lost = c.running_on(a);
  std::vector<TaskRef> want = {{1, 1}, {1, 2}};
  EXPECT_EQ(lost, want);  // task 0 went to b: the least room
  for (const auto& t : lost) ASSERT_TRUE(c.finish(t, outcome(TaskState::kLost), 7));
  EXPECT_EQ(c.node(a)->running, 0u);
  EXPECT_EQ(c.node(a)->used.cpu_millis, 0u);
  EXPECT_EQ(c.node(b)->running, 1u);
  EXPECT_EQ(c.queued_tasks(), 2u);
  for (const auto& t : lost) EXPECT_EQ(c.job(1)->tasks[t.index].lost, 1u);
  ASSERT_TRUE(c.set_node_state(a, NodeState::kDown));
  EXPECT_TRUE(c.plan(10, kNow).empty());
  EXPECT_TRUE(c.running_on(99).empty());
}

// ---------------------------------------------------------------------- cancel

TEST_F(ClusterTest, CancelQueuedJobEndsAtOnce) {
  submit(1, job_spec(5));
  auto running = c.cancel(1, 9);
  ASSERT_TRUE(running);
  EXPECT_TRUE(running->empty());
  const Job& j = *c.job(1);
  EXPECT_EQ(j.state, JobState::kCancelled);
  EXPECT_EQ(j.finished_ms, 9u);
  EXPECT_EQ(count_of(j, TaskState::kCancelled), 5u);
  EXPECT_EQ(c.queued_tasks(), 0u);
  add("a", 4000);
  EXPECT_TRUE(c.plan(10, kNow).empty());
  EXPECT_TRUE(c.cancel(1, 10)->empty());  // already final: nothing to do
  EXPECT_EQ(c.job(1)->finished_ms, 9u);
  EXPECT_EQ(c.cancel(2, 10).error(), SchedError::kUnknownJob);
}

TEST_F(ClusterTest, CancelRunningJobReturnsRunningTasksWhichDoNotRequeue) {
  add("a", 2000);
  JobSpec s = job_spec(4);
  s.retries = 3;
  submit(1, s);
  place(c);
  auto running = c.cancel(1, 9);
  ASSERT_TRUE(running);
  std::vector<TaskRef> want = {{1, 0}, {1, 1}};
  EXPECT_EQ(*running, want);
  EXPECT_EQ(c.job(1)->state, JobState::kRunning);
  EXPECT_EQ(c.queued_tasks(), 0u);
  EXPECT_TRUE(c.plan(10, kNow).empty());
  // A kill may surface as a failure or a loss; neither is retried now.
  EXPECT_EQ(c.finish({1, 0}, outcome(TaskState::kFailed), 10).value(), TaskState::kFailed);
  EXPECT_EQ(c.finish({1, 1}, outcome(TaskState::kLost), 11).value(), TaskState::kLost);
  EXPECT_EQ(c.job(1)->state, JobState::kCancelled);
  EXPECT_EQ(c.job(1)->finished_ms, 11u);
  EXPECT_EQ(c.node(0)->used.cpu_millis, 0u);
}

// ----------------------------------------------------------------------- after

TEST_F(ClusterTest, AfterWaitsForSuccessThenRuns) {
  add("a", 4000);
  submit(1, job_spec(1));
  JobSpec s = job_spec(2);
  s.after = 1;
  submit(2, s);
  auto p = c.plan(10, kNow);
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].task.job, 1u);
  EXPECT_EQ(c.start({{2, 0}, 0, 1}, 1).error(), SchedError::kBadTransition);  // still waiting
  ASSERT_TRUE(c.start(p[0], 1));
  EXPECT_EQ(c.job(2)->state, JobState::kQueued);
  ASSERT_TRUE(c.finish(p[0].task, outcome(TaskState::kSucceeded), 2));
  p = c.plan(10, kNow);
  ASSERT_EQ(p.size(), 2u);
  EXPECT_EQ(p[0].task.job, 2u);
}

TEST_F(ClusterTest, AfterCancelsWhenTheDependencyFailsAndCascades) {
  add("a", 4000);
  submit(1, job_spec(1));
  JobSpec s = job_spec(2);
  s.after = 1;
  submit(2, s);
  s.after = 2;
  submit(3, s);
  auto p = place(c);
  ASSERT_EQ(p.size(), 1u);
  ASSERT_TRUE(c.finish(p[0].task, outcome(TaskState::kFailed, 1), 3));
  EXPECT_EQ(c.job(1)->state, JobState::kFailed);
  EXPECT_EQ(c.job(2)->state, JobState::kCancelled);
  EXPECT_EQ(c.job(3)->state, JobState::kCancelled);
  EXPECT_EQ(count_of(*c.job(3), TaskState::kCancelled), 2u);
  EXPECT_EQ(c.queued_tasks(), 0u);
  EXPECT_TRUE(c.plan(10, kNow).empty());
}

TEST_F(ClusterTest, AfterAnEndedJobDecidesAtSubmit) {
  add("a", 4000);
  submit(1, job_spec(1));
  place(c);
  ASSERT_TRUE(c.finish({1, 0}, outcome(TaskState::kSucceeded), 2));
  submit(2, job_spec(1));
  ASSERT_TRUE(c.cancel(2, 3));
  JobSpec s = job_spec(1);
  s.after = 1;  // succeeded: runnable now
  submit(3, s);
  s.after = 2;  // cancelled: this one is cancelled at once
  submit(4, s);
  EXPECT_EQ(c.job(4)->state, JobState::kCancelled);
  EXPECT_EQ(c.job(4)->finished_ms, 10u);
  auto p = c.plan(10, kNow);
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].task.job, 3u);
}

TEST_F(ClusterTest, CancellingADependencyCancelsWaitingJobs) {
  submit(1, job_spec(1));
  JobSpec s = job_spec(1);
  s.after = 1;
  submit(2, s);
  submit(3, s);
  ASSERT_TRUE(c.cancel(2, 4));  // a waiting job can be cancelled on its own
  ASSERT_TRUE(c.cancel(1, 5));
  EXPECT_EQ(c.job(3)->state, JobState::kCancelled);
  EXPECT_EQ(c.job(3)->finished_ms, 5u);
  EXPECT_EQ(c.job(2)->finished_ms, 4u);
}

TEST_F(ClusterTest, LongAfterChainCancelsWithoutRecursion) {
  Cluster big;
  ASSERT_TRUE(big.submit(1, job_spec(1), 0));
  for (JobId id = 2; id <= 20'000; ++id) {
    JobSpec s = job_spec(1);
    s.after = id - 1;
    ASSERT_TRUE(big.submit(id, s, 0));
  }
  ASSERT_TRUE(big.cancel(1, 1));
  EXPECT_EQ(big.job(20'000)->state, JobState::kCancelled);
  EXPECT_EQ(big.queued_tasks(), 0u);
}

// -------------------------------------------------------------- replayed starts

TEST_F(ClusterTest, StartAcceptsAnyQueuedIndexAsReplayMayOrderThem) {
  add("a", 100'000);
  JobSpec s = job_spec(8);
  s.retries = 5;
  submit(1, s);
  ASSERT_TRUE(c.start({{1, 5}, 0, 1}, 1));
  ASSERT_TRUE(c.start({{1, 0}, 0, 1}, 1));
  auto p = c.plan(100, kNow);
  std::vector<uint32_t> idx;
  for (const auto& x : p) idx.push_back(x.task.index);
  EXPECT_EQ(idx, (std::vector<uint32_t>{1, 2, 3, 4, 6, 7}));

  // Requeue 5, 0 (in that order), then start the second requeued one first.
  ASSERT_TRUE(c.finish({1, 5}, outcome(TaskState::kFailed), 2));
  ASSERT_TRUE(c.finish({1, 0}, outcome(TaskState::kFailed), 2));
  ASSERT_TRUE(c.start({{1, 0}, 0, 2}, 3));
  p = c.plan(100, kNow);
  idx.clear();
  for (const auto& x : p) idx.push_back(x.task.index);
  EXPECT_EQ(idx, (std::vector<uint32_t>{5, 1, 2, 3, 4, 6, 7}));
  // Start everything, fail 0 again: it is queued exactly once.
  for (const auto& x : p) ASSERT_TRUE(c.start(x, 4));
  ASSERT_TRUE(c.finish({1, 0}, outcome(TaskState::kFailed), 5));
  p = c.plan(100, kNow);
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].task, (TaskRef{1, 0}));
  EXPECT_EQ(p[0].attempt, 3u);
  EXPECT_EQ(c.queued_tasks(), 1u);
}

// ------------------------------------------------------- randomized: the harness

struct OpAddNode {
  NodeSpec spec;
};
struct OpSetNode {
  NodeId id;
  NodeState state;
};
struct OpSubmit {
  JobId id;
  JobSpec spec;
};
struct OpStart {
  Placement p;
};
struct OpFinish {
  TaskRef t;
  Outcome o;
};
struct OpCancel {
  JobId id;
};
struct OpNodeLost {
  NodeId id;
};
struct OpUpdateNode {
  NodeId id;
  NodeSpec spec;
};
struct OpRemoveNode {
  NodeId id;
};
struct OpPrune {
  JobId id;
};
struct OpSetHold {
  NodeId id;
  NodeHold hold;
};
struct OpSetDraining {
  NodeId id;
  bool draining;
};
using Op = std::variant<OpAddNode, OpSetNode, OpSubmit, OpStart, OpFinish, OpCancel, OpNodeLost,
                        OpUpdateNode, OpRemoveNode, OpPrune, OpSetHold, OpSetDraining>;

template <typename T>
std::string result_text(const std::expected<T, SchedError>& r) {
  if (!r) return std::string("error ") + sched_error_name(r.error());
  if constexpr (std::is_same_v<T, TaskState>) return task_state_name(*r);
  if constexpr (std::is_same_v<T, NodeId>) return "node " + std::to_string(*r);
  if constexpr (std::is_same_v<T, std::vector<TaskRef>>) return std::to_string(r->size());
  return "ok";
}

// Applies one op; the text of its result lets a replay compare outcome by outcome.
std::string apply(Cluster& c, const Op& op, uint64_t now_ms) {
  struct Visitor {
    Cluster& c;
    uint64_t now_ms;
    std::string operator()(const OpAddNode& o) { return result_text(c.add_node(o.spec)); }
    std::string operator()(const OpSetNode& o) {
      return result_text(c.set_node_state(o.id, o.state));
    }
    std::string operator()(const OpSubmit& o) {
      return result_text(c.submit(o.id, o.spec, now_ms));
    }
    std::string operator()(const OpStart& o) { return result_text(c.start(o.p, now_ms)); }
    std::string operator()(const OpFinish& o) { return result_text(c.finish(o.t, o.o, now_ms)); }
    std::string operator()(const OpCancel& o) { return result_text(c.cancel(o.id, now_ms)); }
    // As the server does when a board is gone: each running task ends lost.
    std::string operator()(const OpNodeLost& o) {
      auto lost = c.running_on(o.id);
      for (const TaskRef& t : lost) {
        if (!c.finish(t, {.state = TaskState::kLost}, now_ms)) return "error finishing lost task";
      }
      return std::to_string(lost.size());
    }
    std::string operator()(const OpUpdateNode& o) {
      return result_text(c.update_node(o.id, o.spec));
    }
    std::string operator()(const OpRemoveNode& o) { return result_text(c.remove_node(o.id)); }
    std::string operator()(const OpPrune& o) { return result_text(c.prune(o.id)); }
    std::string operator()(const OpSetHold& o) {
      return result_text(c.set_node_hold(o.id, o.hold));
    }
    std::string operator()(const OpSetDraining& o) {
      return result_text(c.set_draining(o.id, o.draining, 0));
    }
  };
  return std::visit(Visitor{c, now_ms}, op);
}

std::string job_image(const Job& j) {
  std::ostringstream out;
  out << int(j.state) << " " << j.finished_ms << " q";
  for (size_t i = j.requeued_head; i < j.requeued.size(); ++i) out << " " << j.requeued[i];
  for (const Task& t : j.tasks) {
    out << " " << int(t.state) << "/" << int(t.attempts) << "/" << int(t.lost) << "+"
        << int(t.lost_free) << "/" << t.exit_code << "/" << int(t.signal) << "/" << t.node;
  }
  return out.str();
}

std::map<JobId, std::string> job_images(const Cluster& c) {
  std::map<JobId, std::string> out;
  for (const auto& [id, j] : c.jobs()) out.emplace(id, job_image(j));
  return out;
}

// Every field of the state, for comparing two clusters, and the plan it makes at now_ms.
std::string dump(const Cluster& c, uint64_t now_ms) {
  std::ostringstream out;
  out << "queued " << c.queued_tasks() << " last " << c.last_job_id() << "\n";
  for (const Node& n : c.nodes()) {
    out << "node " << n.id << " " << n.spec.name << " " << int(n.state) << " " << n.removed << " "
        << n.draining << " " << int(n.hold) << " " << n.spec.capacity.cpu_millis << "/"
        << n.spec.capacity.mem_bytes << "/" << n.spec.tasks_max << " " << n.used.cpu_millis << " "
        << n.used.mem_bytes << " " << n.running;
    for (const auto& [k, v] : n.spec.labels) out << " " << k << "=" << v;
    out << "\n";
  }
  for (const auto& [id, j] : c.jobs()) {
    out << "job " << id << " " << int(j.state) << " " << j.submitted_ms << " " << j.finished_ms
        << " waiting " << j.waiting_since_ms << " spec " << j.spec.priority << "/"
        << j.spec.per_task.cpu_millis << "/" << j.spec.per_task.mem_bytes << "/" << j.spec.spread
        << "/" << j.spec.after;
    for (const auto& [k, v] : j.spec.constraints) out << " " << k << "=" << v;
    out << " fresh " << j.next_fresh << " requeued";
    for (size_t i = j.requeued_head; i < j.requeued.size(); ++i) out << " " << j.requeued[i];
    out << "\n";
    for (const Task& t : j.tasks) {
      out << " " << int(t.state) << "/" << int(t.attempts) << "/" << int(t.lost) << "+"
          << int(t.lost_free) << "/" << t.exit_code << "/" << int(t.signal) << "/" << t.node;
    }
    for (size_t i = 0; i < j.usage.size(); ++i) {
      const TaskUsage& u = j.usage[i];
      out << " usage " << i << ":" << u.cpu_user_ms << "/" << u.cpu_system_ms << "/"
          << u.mem_peak_kib << "/" << u.wall_ms;
    }
    for (const auto& [index, ms] : j.started_ms) out << " started " << index << ":" << ms;
    for (const auto& [index, list] : j.earlier) {
      out << " earlier " << index << ":";
      for (const EarlierAttempt& a : list) {
        out << " " << int(a.attempt) << "/" << int(a.state) << "/" << a.exit_code << "/"
            << int(a.signal) << "@" << a.node;
      }
    }
    out << "\n";
  }
  for (const Placement& p : c.plan(1'000'000, now_ms)) {
    out << "plan " << p.task.job << "." << p.task.index << "@" << p.node << "#" << p.attempt;
  }
  return out.str();
}

bool job_final(JobState s) {
  return s >= JobState::kSucceeded;
}

// A dependency that was pruned had ended; had it failed, the job would have ended too.
bool runnable(const Cluster& c, const Job& j) {
  if (job_final(j.state) || count_of(j, TaskState::kQueued) == 0) return false;
  const Job* dep = j.spec.after == 0 ? nullptr : c.job(j.spec.after);
  return dep == nullptr || dep->state == JobState::kSucceeded;
}

bool takes_work(const Node& n) {
  return n.state == NodeState::kReady && !n.removed && !n.draining && n.hold == NodeHold::kNone;
}

bool labels_ok(const Node& n, const JobSpec& s) {
  for (const auto& [k, v] : s.constraints) {
    auto it = n.spec.labels.find(k);
    if (it == n.spec.labels.end() || it->second != v) return false;
  }
  return true;
}

// Room for one more task of `s` on `n`, with `used` and `running` as a plan sees them.
bool fits(const Node& n, const Resources& used, uint32_t running, const JobSpec& s) {
  if (!takes_work(n) || !labels_ok(n, s)) return false;
  if (n.spec.tasks_max != 0 && running >= n.spec.tasks_max) return false;
  return uint64_t{used.cpu_millis} + s.per_task.cpu_millis <= n.spec.capacity.cpu_millis &&
         used.mem_bytes + s.per_task.mem_bytes <= n.spec.capacity.mem_bytes;
}

// Jobs checked in a final state, with what they looked like then: a final job must never
// change, and comparing beats rescanning its tasks after every event.
using FinalJobs = std::map<JobId, std::pair<JobState, std::array<uint32_t, kTaskStateCount>>>;

// Checks every invariant the state must hold; all starts in the harness go to nodes
// with room, so only a node whose capacity shrank (`shrunk`) may be over capacity.
void check_invariants(const Cluster& c, FinalJobs* final_jobs,
                      const std::set<NodeId>& shrunk = {}) {
  const auto& nodes = c.nodes();
  std::vector<Resources> used(nodes.size());
  std::vector<uint32_t> running(nodes.size());
  uint64_t queued_total = 0;
  for (const auto& [id, j] : c.jobs()) {
    if (auto it = final_jobs->find(id); it != final_jobs->end()) {
      ASSERT_EQ(j.state, it->second.first) << "final job " << id << " changed";
      ASSERT_EQ(j.state_counts, it->second.second) << "final job " << id << " changed";
      continue;
    }
    ASSERT_EQ(j.id, id);
    ASSERT_EQ(j.tasks.size(), j.spec.count);
    std::array<uint32_t, kTaskStateCount> counts{};
    uint32_t requeued_expected = 0;
    for (uint32_t i = 0; i < j.tasks.size(); ++i) {
      const Task& t = j.tasks[i];
      ++counts[static_cast<size_t>(t.state)];
      if (t.state == TaskState::kRunning) {
        ASSERT_LT(t.node, nodes.size()) << id << "." << i;
        ASSERT_GE(t.attempts, 1u);
        used[t.node].cpu_millis += j.spec.per_task.cpu_millis;
        used[t.node].mem_bytes += j.spec.per_task.mem_bytes;
        ++running[t.node];
      }
      if (t.state == TaskState::kQueued) {
        ++queued_total;
        if (t.attempts == 0) {
          ASSERT_GE(i, j.next_fresh) << id << "." << i;
        }
        if (t.attempts > 0) ++requeued_expected;
      }
    }
    ASSERT_EQ(counts, j.state_counts) << "job " << id;
    // The requeued list holds each requeued task exactly once.
    std::vector<uint32_t> listed(j.requeued.begin() + std::ptrdiff_t(j.requeued_head),
                                 j.requeued.end());
    ASSERT_EQ(listed.size(), requeued_expected) << "job " << id;
    std::sort(listed.begin(), listed.end());
    ASSERT_TRUE(std::adjacent_find(listed.begin(), listed.end()) == listed.end());
    for (uint32_t i : listed) ASSERT_EQ(j.tasks[i].state, TaskState::kQueued);

    uint32_t live = counts[0] + counts[1];
    if (job_final(j.state)) {
      ASSERT_EQ(live, 0u) << "final job " << id << " has live tasks";
      ASSERT_EQ(j.state == JobState::kSucceeded, counts[2] == j.spec.count);
      ASSERT_TRUE(j.requeued.empty());
      (*final_jobs)[id] = {j.state, counts};
    } else {
      ASSERT_GT(live, 0u) << "live job " << id << " has only final tasks";
      ASSERT_EQ(j.state == JobState::kQueued, counts[0] == j.spec.count);
    }
    if (j.spec.after != 0 && c.job(j.spec.after) != nullptr) {  // else pruned: it had ended
      const Job* dep = c.job(j.spec.after);
      ASSERT_LT(dep->id, id);
      if (!job_final(dep->state)) {
        for (const Task& t : j.tasks) ASSERT_EQ(t.attempts, 0u) << id << " started while waiting";
      }
      if (job_final(dep->state) && dep->state != JobState::kSucceeded) {
        ASSERT_TRUE(job_final(j.state)) << id << " outlived its failed dependency";
      }
    }
  }
  ASSERT_EQ(queued_total, c.queued_tasks());
  for (const Node& n : nodes) {
    if (n.removed) {
      ASSERT_EQ(running[n.id], 0u) << "task running on removed node " << n.id;
    }
    ASSERT_EQ(n.used.cpu_millis, used[n.id].cpu_millis) << n.spec.name;
    ASSERT_EQ(n.used.mem_bytes, used[n.id].mem_bytes) << n.spec.name;
    ASSERT_EQ(n.running, running[n.id]) << n.spec.name;
    // Over capacity only after a shrink (update_node); check_plan() holds plan() to room.
    if (!shrunk.contains(n.id)) {
      ASSERT_LE(n.used.cpu_millis, n.spec.capacity.cpu_millis) << n.spec.name;
      ASSERT_LE(n.used.mem_bytes, n.spec.capacity.mem_bytes) << n.spec.name;
    }
  }
}

// The placement policy written out the slow, obvious way (O(nodes) per placement), to hold
// plan() to: cluster.h's plan() comment, rule by rule.
struct RefPlan {
  std::vector<Placement> placements;
  std::vector<std::pair<NodeId, JobId>> reserved;  // in the order made
  std::vector<size_t> reserved_before;             // per placement: reservations made before it
};

class ReferencePlanner {
 public:
  ReferencePlanner(const Cluster& c, uint64_t now_ms) : c_(c), now_ms_(now_ms) {
    for (const Node& n : c.nodes()) used_.push_back(n.used), running_.push_back(n.running);
  }

  RefPlan plan(uint32_t max) {
    std::map<uint32_t, std::vector<const Job*>> by_rank;
    for (const auto& [id, j] : c_.jobs()) {
      if (runnable(c_, j)) by_rank[100 - j.spec.priority].push_back(&j);
    }
    for (auto& [rank, jobs] : by_rank) {
      std::vector<const Job*> active = jobs;
      while (out_.placements.size() < max && !active.empty()) {
        auto it = std::min_element(active.begin(), active.end(), [&](const Job* a, const Job* b) {
          return std::pair{share(*a), a->id} < std::pair{share(*b), b->id};
        });
        const Job& j = **it;
        uint32_t index = 0;
        NodeId node = 0;
        if (!next_task(j, &index)) {
          active.erase(it);
        } else if (!best_node(j, &node)) {
          maybe_reserve(j);
          active.erase(it);
        } else {
          out_.reserved_before.push_back(out_.reserved.size());
          out_.placements.push_back(
              {{j.id, index}, node, static_cast<uint16_t>(j.tasks[index].attempts + 1)});
          used_[node].cpu_millis += j.spec.per_task.cpu_millis;
          used_[node].mem_bytes += j.spec.per_task.mem_bytes;
          ++running_[node];
          ++planned_[j.id];
          ++spread_planned_[{j.id, node}];
        }
      }
    }
    return out_;
  }

 private:
  uint32_t share(const Job& j) { return count_of(j, TaskState::kRunning) + planned_[j.id]; }

  // Queued tasks in the order a job places them: requeued FIFO, then never started.
  bool next_task(const Job& j, uint32_t* index) {
    std::vector<uint32_t> order;
    for (size_t i = j.requeued_head; i < j.requeued.size(); ++i) {
      if (j.tasks[j.requeued[i]].state == TaskState::kQueued) order.push_back(j.requeued[i]);
    }
    for (uint32_t i = j.next_fresh; i < j.tasks.size(); ++i) {
      if (j.tasks[i].state == TaskState::kQueued && j.tasks[i].attempts == 0) order.push_back(i);
    }
    if (planned_[j.id] >= order.size()) return false;
    *index = order[planned_[j.id]];
    return true;
  }

  bool reserved_for_other(NodeId n, JobId j) const {
    for (auto [rn, rj] : out_.reserved) {
      if (rn == n && rj != j) return true;
    }
    return false;
  }

  uint32_t spread_count(const Job& j, NodeId n) {
    uint32_t count = spread_planned_[{j.id, n}];
    for (const Task& t : j.tasks) count += t.state == TaskState::kRunning && t.node == n;
    return count;
  }

  bool best_node(const Job& j, NodeId* best) {
    bool found = false;
    std::tuple<uint64_t, uint64_t, uint64_t> best_key{};
    for (const Node& n : c_.nodes()) {
      if (!fits(n, used_[n.id], running_[n.id], j.spec) || reserved_for_other(n.id, j.id)) continue;
      const uint64_t cpu = n.spec.capacity.cpu_millis - used_[n.id].cpu_millis;
      const uint64_t mem = n.spec.capacity.mem_bytes - used_[n.id].mem_bytes;
      // Packed: least room first. Spread: fewest of its tasks, then most room.
      std::tuple<uint64_t, uint64_t, uint64_t> key =
          j.spec.spread
              ? std::tuple<uint64_t, uint64_t, uint64_t>{spread_count(j, n.id), ~cpu, ~mem}
              : std::tuple<uint64_t, uint64_t, uint64_t>{cpu, mem, 0};
      if (!found || key < best_key) found = true, *best = n.id, best_key = key;
    }
    return found;
  }

  void maybe_reserve(const Job& j) {
    const Limits& lim = c_.limits();
    if (now_ms_ < j.waiting_since_ms || now_ms_ - j.waiting_since_ms < lim.starve_after_ms) return;
    if (planned_[j.id] > 0 || out_.reserved.size() >= lim.reservations_max) return;
    bool found = false;
    NodeId best = 0;
    std::tuple<uint64_t, uint64_t, uint64_t> best_short{};
    for (const Node& n : c_.nodes()) {
      const Resources& need = j.spec.per_task;
      if (!takes_work(n) || !labels_ok(n, j.spec) || n.spec.capacity.cpu_millis < need.cpu_millis ||
          n.spec.capacity.mem_bytes < need.mem_bytes) {
        continue;
      }
      bool taken = false;
      for (auto [rn, rj] : out_.reserved) taken |= rn == n.id;
      if (taken) continue;
      auto short_of = [](uint64_t want, uint64_t have) { return want > have ? want - have : 0; };
      const uint64_t free_cpu = short_of(n.spec.capacity.cpu_millis, used_[n.id].cpu_millis);
      const uint64_t free_mem = short_of(n.spec.capacity.mem_bytes, used_[n.id].mem_bytes);
      std::tuple<uint64_t, uint64_t, uint64_t> key{
          short_of(need.cpu_millis, free_cpu), short_of(need.mem_bytes, free_mem),
          n.spec.tasks_max == 0 ? 0 : short_of(running_[n.id] + 1ull, n.spec.tasks_max)};
      if (!found || key < best_short) found = true, best = n.id, best_short = key;
    }
    if (found) out_.reserved.emplace_back(best, j.id);
  }

  const Cluster& c_;
  uint64_t now_ms_;
  std::vector<Resources> used_;
  std::vector<uint32_t> running_;
  std::map<JobId, uint32_t> planned_;
  std::map<std::pair<JobId, NodeId>, uint32_t> spread_planned_;
  RefPlan out_;
};

// Holds a plan to the reference, placement by placement, and checks the rules it must
// keep on their own: no board over-committed, no placement while a job of higher priority
// (or of equal priority and a smaller fair share) has a queued task that fits a board not
// reserved for another job, nothing left out that would fit.
void check_plan(const Cluster& c, const std::vector<Placement>& plan, uint32_t max,
                uint64_t now_ms) {
  ASSERT_LE(plan.size(), max);
  RefPlan ref = ReferencePlanner(c, now_ms).plan(max);
  auto text = [](const std::vector<Placement>& ps) {
    std::string out;
    for (const Placement& p : ps) {
      out += " " + std::to_string(p.task.job) + "." + std::to_string(p.task.index) + "@" +
             std::to_string(p.node);
    }
    return out;
  };
  ASSERT_EQ(plan.size(), ref.placements.size())
      << "plan:" << text(plan) << "\nreference:" << text(ref.placements) << "\n"
      << dump(c, now_ms);
  for (size_t i = 0; i < plan.size(); ++i) {
    ASSERT_EQ(plan[i].task, ref.placements[i].task) << "placement " << i;
    ASSERT_EQ(plan[i].node, ref.placements[i].node) << "placement " << i;
    ASSERT_EQ(plan[i].attempt, ref.placements[i].attempt) << "placement " << i;
  }
  std::vector<Resources> used;
  std::vector<uint32_t> running;
  for (const Node& n : c.nodes()) used.push_back(n.used), running.push_back(n.running);
  std::map<JobId, uint32_t> placed;
  std::set<TaskRef> seen;
  // Does job `j` still have a queued task that fits somewhere, reservations as of now?
  auto could_place = [&](const Job& j, size_t reservations) {
    if (placed[j.id] >= count_of(j, TaskState::kQueued)) return false;
    for (const Node& n : c.nodes()) {
      bool reserved = false;
      for (size_t r = 0; r < reservations; ++r) {
        reserved |= ref.reserved[r].first == n.id && ref.reserved[r].second != j.id;
      }
      if (!reserved && fits(n, used[n.id], running[n.id], j.spec)) return true;
    }
    return false;
  };
  for (size_t i = 0; i < plan.size(); ++i) {
    const Placement& p = plan[i];
    const Job* j = c.job(p.task.job);
    ASSERT_NE(j, nullptr);
    ASSERT_TRUE(runnable(c, *j));
    ASSERT_EQ(j->tasks[p.task.index].state, TaskState::kQueued);
    ASSERT_TRUE(seen.insert(p.task).second) << "task placed twice";
    ASSERT_LT(p.node, c.nodes().size());
    ASSERT_TRUE(fits(c.nodes()[p.node], used[p.node], running[p.node], j->spec))
        << "over-commits node " << p.node;
    const std::pair<uint32_t, JobId> share{count_of(*j, TaskState::kRunning) + placed[j->id],
                                           j->id};
    for (const auto& [id, other] : c.jobs()) {
      if (id == j->id || !runnable(c, other)) continue;
      const bool higher = other.spec.priority > j->spec.priority;
      const bool fairer = other.spec.priority == j->spec.priority &&
                          std::pair{count_of(other, TaskState::kRunning) + placed[id], id} < share;
      if (higher || fairer) {
        ASSERT_FALSE(could_place(other, ref.reserved_before[i]))
            << "job " << j->id << " placed while job " << id
            << (higher ? " (priority)" : " (share)") << " fits";
      }
    }
    used[p.node].cpu_millis += j->spec.per_task.cpu_millis;
    used[p.node].mem_bytes += j->spec.per_task.mem_bytes;
    ++running[p.node];
    ++placed[j->id];
  }
  if (plan.size() == max) return;
  // Completeness: what is left fits nowhere, or only on boards reserved for others.
  for (const auto& [id, j] : c.jobs()) {
    if (runnable(c, j)) {
      ASSERT_FALSE(could_place(j, ref.reserved.size())) << "job " << id << " left out";
    }
  }
}

// The pools the randomized tests run on.
struct DriverConfig {
  Limits limits;
  uint32_t nodes_at_start = 0;  // plus a job that fills them, placed before the first step
  uint32_t plan_max = 8;        // plan(1..plan_max) per step
};

// A few boards that come and go, small jobs: every rule meets every other often.
DriverConfig small_pool() {
  return {.limits = {.jobs_max = 12,
                     .tasks_per_job_max = 12,
                     .queued_tasks_max = 80,
                     .nodes_max = 5,
                     .lost_requeues_max = 2,
                     .starve_after_ms = 20,
                     .reservations_max = 2,
                     .constraint_classes_max = 2}};
}

// 10,000 boards, nearly full from the start, so every plan() works the indexes at scale.
DriverConfig large_pool() {
  return {.limits = {.jobs_max = 12,
                     .tasks_per_job_max = 40'000,
                     .queued_tasks_max = 80'000,
                     .nodes_max = 10'010,
                     .lost_requeues_max = 2,
                     .starve_after_ms = 20,
                     .reservations_max = 4,
                     .constraint_classes_max = 2},
          .nodes_at_start = 10'000};
}

// Drives a Cluster with random events, checking invariants after each, and records the
// ops so a second Cluster can replay them.
class RandomDriver {
 public:
  // The mutator-contract checks in record() copy the whole state per op: on for a few seeds.
  explicit RandomDriver(uint64_t seed, bool check_contract = true,
                        DriverConfig config = small_pool())
      : check_contract_(check_contract), config_(config), rng_(seed), c_(config.limits) {
    if (config_.nodes_at_start > 0) fill_pool();
  }

  void step() {
    ++now_ms_;
    switch (pick(0, 109)) {
      case 0 ... 4: add_node(); break;
      case 5 ... 9: record(OpSetNode{pick_node(), static_cast<NodeState>(pick(0, 2))}); break;
      case 10 ... 29: submit(); break;
      case 30 ... 54: plan_and_start(); break;
      case 55 ... 59: start_out_of_order(); break;
      case 60 ... 89: finish_one(); break;
      case 90 ... 93: cancel(); break;
      case 94 ... 95: prune(); break;
      case 96: update_node(); break;
      case 97: record(OpRemoveNode{pick_node()}); break;
      case 98 ... 103:
        record(OpSetHold{pick_node(), static_cast<NodeHold>(pick(0, 3) * pick(0, 1))});
        break;
      case 104 ... 106: record(OpSetDraining{pick_node(), pick(0, 2) == 0}); break;
      default: record(OpNodeLost{pick_node()}); break;
    }
  }

  const Cluster& cluster() const { return c_; }
  const std::set<JobId>& cancelled() const { return cancelled_; }
  const std::vector<std::pair<Op, std::string>>& log() const { return log_; }
  uint64_t now_ms() const { return now_ms_; }
  const std::set<NodeId>& shrunk() const { return shrunk_; }

 private:
  int pick(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }

  // Boards of 1 to 4 cores, a third labelled, and one array that nearly fills them.
  void fill_pool() {
    for (uint32_t i = 0; i < config_.nodes_at_start; ++i) {
      std::map<std::string, std::string> labels;
      if (pick(0, 2) == 0) labels["zone"] = pick(0, 1) ? "a" : "b";
      record(OpAddNode{node_spec("p" + std::to_string(i), uint32_t(pick(1, 4)) * 1000,
                                 uint64_t(pick(1, 4)) * kGiB, labels)});
    }
    JobSpec fill = job_spec(config_.nodes_at_start * 2, 1000, 512 * kMiB, 50);
    record(OpSubmit{c_.last_job_id() + 1, fill});
    for (auto plan = c_.plan(100'000, now_ms_); !plan.empty(); plan = c_.plan(100'000, now_ms_)) {
      for (const Placement& p : plan) record(OpStart{p});
    }
  }
  NodeId pick_node() { return NodeId(pick(0, int(c_.nodes().size()))); }  // may not exist

  // The running tasks, from the per-job counts (cheap at 10,000 boards' worth of tasks).
  std::vector<TaskRef> running_tasks() const {
    std::vector<TaskRef> out;
    for (const auto& [id, j] : c_.jobs()) {
      uint32_t left = count_of(j, TaskState::kRunning);
      for (uint32_t i = 0; i < j.tasks.size() && left > 0; ++i) {
        if (j.tasks[i].state == TaskState::kRunning) out.push_back({id, i}), --left;
      }
    }
    return out;
  }

  // Applies an op and checks the mutator contract: a refused op changes nothing, and
  // every job an op changes or drops was shown to the observer first, as it was.
  void record(Op op) {
    if (!check_contract_) {
      std::string result = apply(c_, op, now_ms_);
      log_.emplace_back(std::move(op), std::move(result));
      return;
    }
    std::map<JobId, std::string> before = job_images(c_);
    std::string all_before = dump(c_, now_ms_);
    observer_.seen.clear();
    observer_.ranges.clear();
    std::map<JobId, std::vector<Task>> tasks_before;
    for (const auto& [id, j] : c_.jobs()) tasks_before[id] = j.tasks;
    c_.set_observer(&observer_);
    std::string result = apply(c_, op, now_ms_);
    c_.set_observer(nullptr);
    if (result.starts_with("error")) {
      EXPECT_EQ(dump(c_, now_ms_), all_before) << "refused op changed the state: " << result;
    }
    std::map<JobId, std::string> after = job_images(c_);
    for (const auto& [id, image] : before) {
      auto it = after.find(id);
      if (it != after.end() && it->second == image) continue;
      auto seen = observer_.seen.find(id);
      ASSERT_NE(seen, observer_.seen.end()) << "job " << id << " changed unseen";
      EXPECT_EQ(seen->second, image) << "job " << id << " shown after it changed";
      if (it == after.end()) continue;  // dropped: announced whole
      // Every task that changed was inside a range announced before the change.
      const auto& now = c_.job(id)->tasks;
      const auto& was = tasks_before[id];
      for (uint32_t i = 0; i < now.size(); ++i) {
        if (std::memcmp(&now[i], &was[i], sizeof(Task)) == 0) continue;
        bool announced = false;
        for (auto [first, last] : observer_.ranges[id]) announced |= first <= i && i <= last;
        ASSERT_TRUE(announced) << "task " << id << "." << i
                               << " changed outside the announced range";
      }
    }
    log_.emplace_back(std::move(op), std::move(result));
  }

  void prune() {
    std::vector<JobId> ids;
    for (const auto& [id, j] : c_.jobs()) ids.push_back(id);
    JobId id = ids.empty() || pick(0, 9) == 0 ? JobId(pick(0, 30))
                                              : ids[size_t(pick(0, int(ids.size()) - 1))];
    record(OpPrune{id});
  }

  // Renames, relabels, grows or shrinks a node (a shrink may leave it over-committed;
  // plan() must then add nothing there) or gives it a task limit.
  void update_node() {
    NodeId id = pick_node();
    const Node* n = c_.node(id);
    NodeSpec spec = n != nullptr ? n->spec : node_spec("n9", 1000, kGiB);
    if (pick(0, 1)) spec.name = "n" + std::to_string(pick(0, 6));
    if (pick(0, 1)) spec.capacity.cpu_millis += uint32_t(pick(0, 2)) * 500;
    if (pick(0, 3) == 0 && spec.capacity.cpu_millis > 500) spec.capacity.cpu_millis -= 500;
    if (pick(0, 3) == 0) spec.tasks_max = uint32_t(pick(0, 3));
    if (pick(0, 1)) spec.labels["zone"] = pick(0, 1) ? "a" : "b";
    record(OpUpdateNode{id, spec});
    if (n != nullptr && log_.back().second == "ok") shrunk_.insert(id);
  }

  void add_node() {
    std::map<std::string, std::string> labels;
    if (pick(0, 1)) labels["zone"] = pick(0, 1) ? "a" : "b";
    record(OpAddNode{node_spec("n" + std::to_string(pick(0, 6)), uint32_t(pick(0, 8)) * 500,
                               uint64_t(pick(1, 4)) * kGiB, labels)});
  }

  void submit() {
    JobSpec s = job_spec(uint32_t(pick(0, 13)), uint32_t(pick(1, 8)) * 250,
                         uint64_t(pick(1, 16)) * 128 * kMiB, uint32_t(pick(0, 101)));
    s.retries = uint32_t(pick(0, 3));
    if (pick(0, 3) == 0) s.constraints = {{"zone", pick(0, 1) ? "a" : "b"}};
    if (pick(0, 9) == 0) s.constraints.emplace_back("rack", pick(0, 1) ? "1" : "2");
    if (pick(0, 3) == 0) s.after = JobId(pick(0, int(c_.last_job_id()) + 1));
    s.spread = pick(0, 2) == 0;
    JobId id = c_.last_job_id() + (pick(0, 19) == 0 ? 0 : 1);
    record(OpSubmit{id, std::move(s)});
  }

  void cancel() {
    JobId id = JobId(pick(0, int(c_.last_job_id()) + 1));
    const Job* j = c_.job(id);
    if (j != nullptr && !job_final(j->state)) cancelled_.insert(id);
    record(OpCancel{id});
  }

  void plan_and_start() {
    uint32_t max = uint32_t(pick(1, int(config_.plan_max)));
    auto plan = c_.plan(max, now_ms_);
    check_plan(c_, plan, max, now_ms_);
    for (const Placement& p : plan) record(OpStart{p});
  }

  // As a replay may: any queued task of a runnable job, on any node with room.
  void start_out_of_order() {
    std::vector<TaskRef> queued;
    for (const auto& [id, j] : c_.jobs()) {
      if (!runnable(c_, j)) continue;
      for (uint32_t i = 0; i < j.tasks.size(); ++i) {
        if (j.tasks[i].state == TaskState::kQueued) queued.push_back({id, i});
      }
    }
    if (queued.empty()) return;
    TaskRef t = queued[size_t(pick(0, int(queued.size()) - 1))];
    const Job& j = *c_.job(t.job);
    for (const Node& n : c_.nodes()) {
      if (fits(n, n.used, n.running, j.spec)) {
        record(OpStart{{t, n.id, static_cast<uint16_t>(j.tasks[t.index].attempts + 1)}});
        return;
      }
    }
  }

  void finish_one() {
    std::vector<TaskRef> running = running_tasks();
    // Now and then a bogus finish, which must be refused without harm.
    if (running.empty() || pick(0, 19) == 0) {
      record(OpFinish{{JobId(pick(0, 3)), uint32_t(pick(0, 3))}, outcome(TaskState::kFailed)});
      return;
    }
    TaskRef t = running[size_t(pick(0, int(running.size()) - 1))];
    static constexpr TaskState kOutcomes[] = {
        TaskState::kSucceeded, TaskState::kSucceeded, TaskState::kFailed, TaskState::kTimedOut,
        TaskState::kOomKilled, TaskState::kCancelled, TaskState::kLost,   TaskState::kQueued};
    TaskState st = kOutcomes[pick(0, 7)];
    record(OpFinish{t, {st, pick(0, 2), pick(0, 1) ? 9 : 0, pick(0, 1) == 0}});
  }

  struct RecordingObserver : JobObserver {
    void before_change(const Job& job, uint32_t first, uint32_t last) override {
      seen.emplace(job.id, job_image(job));
      ranges[job.id].emplace_back(first, last);
    }
    std::map<JobId, std::vector<std::pair<uint32_t, uint32_t>>> ranges;
    std::map<JobId, std::string> seen;  // first image shown per job
  };

  bool check_contract_;
  DriverConfig config_;
  std::mt19937_64 rng_;
  RecordingObserver observer_;
  Cluster c_;
  uint64_t now_ms_ = 0;
  std::vector<std::pair<Op, std::string>> log_;
  std::set<JobId> cancelled_;  // cancel() was called while the job was live
  std::set<NodeId> shrunk_;    // update_node() took capacity away at some point
};

// A cancelled job never queues a task again and ends cancelled unless every task had
// already been running and then succeeded.
void check_cancelled(const Cluster& c, const std::set<JobId>& cancelled) {
  for (JobId id : cancelled) {
    if (c.job(id) == nullptr) continue;  // pruned
    const Job& j = *c.job(id);
    ASSERT_EQ(count_of(j, TaskState::kQueued), 0u) << "cancelled job " << id << " requeued";
    if (job_final(j.state)) {
      ASSERT_TRUE(j.state == JobState::kCancelled || j.state == JobState::kSucceeded) << id;
    }
  }
}

// Runs `steps` random events on `config`, checking every invariant and every plan after
// each; then replays the recorded calls into a fresh Cluster, which must end in the same
// state and make the same plan. Returns false on the first failure (the caller's trace
// names the seed).
void run_random(uint64_t seed, DriverConfig config, int steps, bool check_contract) {
  RandomDriver d(seed, check_contract, config);
  std::vector<uint64_t> times(d.log().size(), 0);
  FinalJobs final_jobs;
  for (int step = 0; step < steps; ++step) {
    d.step();
    times.resize(d.log().size(), d.now_ms());
    ASSERT_NO_FATAL_FAILURE(check_invariants(d.cluster(), &final_jobs, d.shrunk()))
        << "after step " << step;
    ASSERT_NO_FATAL_FAILURE(
        check_plan(d.cluster(), d.cluster().plan(1000, d.now_ms()), 1000, d.now_ms()))
        << "after step " << step;
    ASSERT_NO_FATAL_FAILURE(check_cancelled(d.cluster(), d.cancelled()));
  }
  Cluster replayed(config.limits);
  for (size_t i = 0; i < d.log().size(); ++i) {
    ASSERT_EQ(apply(replayed, d.log()[i].first, times[i]), d.log()[i].second) << "op " << i;
  }
  ASSERT_EQ(dump(replayed, d.now_ms()), dump(d.cluster(), d.now_ms()));
}

TEST(ClusterProperty, InvariantsHoldUnderRandomEvents) {
  // 100 x 500 keeps the sanitizer build near 10 s; CARDNODE_SCHED_SEEDS=N soaks longer.
  const char* env = std::getenv("CARDNODE_SCHED_SEEDS");  // NOLINT(concurrency-mt-unsafe)
  const uint64_t kSeeds = env != nullptr ? std::strtoull(env, nullptr, 10) : 100;
  constexpr int kSteps = 500;
  for (uint64_t seed = 1; seed <= kSeeds; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    ASSERT_NO_FATAL_FAILURE(run_random(seed, small_pool(), kSteps, /*check_contract=*/seed <= 15));
  }
  std::printf("property test: seeds 1..%llu, %d events each\n",
              static_cast<unsigned long long>(kSeeds), kSteps);
}

// The same at 10,000 boards, nearly full: the free-room indexes under every kind of
// mutation, against the reference planner. Few steps, as each check walks every board.
TEST(ClusterProperty, InvariantsHoldUnderRandomEventsAtTenThousandNodes) {
  for (uint64_t seed = 1; seed <= 2; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    ASSERT_NO_FATAL_FAILURE(run_random(seed, large_pool(), 60, /*check_contract=*/false));
  }
}

TEST(ClusterProperty, ReplayReproducesStateExactly) {
  for (uint64_t seed = 1000; seed < 1030; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    RandomDriver d(seed, /*check_contract=*/false);
    std::vector<uint64_t> times;
    for (int step = 0; step < 500; ++step) {
      size_t before = d.log().size();
      d.step();
      for (size_t i = before; i < d.log().size(); ++i) times.push_back(d.now_ms());
    }
    Cluster replayed(small_pool().limits);
    for (size_t i = 0; i < d.log().size(); ++i) {
      ASSERT_EQ(apply(replayed, d.log()[i].first, times[i]), d.log()[i].second) << "op " << i;
    }
    ASSERT_EQ(dump(replayed, d.now_ms()), dump(d.cluster(), d.now_ms()));
  }
}

// What a snapshot keeps (nodes, jobs, tasks, queues) rebuilds the same cluster, derived
// indexes and next placements included. Node state and holds are not durable: the server
// learns them again from heartbeats, as here.
Cluster restored_copy(const Cluster& c, Limits limits) {
  Cluster out(limits);
  for (const Node& n : c.nodes()) {
    EXPECT_TRUE(out.restore_node(n.spec, n.removed, n.draining, n.drain_deadline_ms));
  }
  for (const auto& [id, j] : c.jobs()) {
    Job image;
    image.id = id;
    image.spec = j.spec;
    image.state = j.state;
    image.submitted_ms = j.submitted_ms;
    image.finished_ms = j.finished_ms;
    image.waiting_since_ms = j.waiting_since_ms;
    image.tasks = j.tasks;
    image.earlier = j.earlier;
    image.usage = j.usage;
    image.started_ms = j.started_ms;
    image.requeued.assign(j.requeued.begin() + std::ptrdiff_t(j.requeued_head), j.requeued.end());
    auto ok = out.restore_job(std::move(image), c.cancelling(id));
    EXPECT_TRUE(ok) << "job " << id << ": " << sched_error_name(ok.error());
  }
  EXPECT_TRUE(out.finish_restore(c.last_job_id()));
  for (const Node& n : c.nodes()) {
    if (!n.removed) {
      EXPECT_TRUE(out.set_node_state(n.id, n.state));
      EXPECT_TRUE(out.set_node_hold(n.id, n.hold));
    }
  }
  return out;
}

TEST(ClusterProperty, RestoreFromImagesReproducesStateExactly) {
  const Limits limits = small_pool().limits;
  for (uint64_t seed = 2000; seed < 2030; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    RandomDriver d(seed, /*check_contract=*/false);
    for (int step = 0; step < 500; ++step) {
      d.step();
      if (step % 50 != 49) continue;
      Cluster copy = restored_copy(d.cluster(), limits);
      ASSERT_EQ(dump(copy, d.now_ms()), dump(d.cluster(), d.now_ms())) << "after step " << step;
      FinalJobs none;
      ASSERT_NO_FATAL_FAILURE(check_invariants(copy, &none, d.shrunk()));
    }
  }
}

TEST_F(ClusterTest, RestoreRejectsImagesWeCouldNotHaveMade) {
  NodeId a = add("a", 2000, 4 * kGiB);
  submit(1, job_spec(2));
  place(c);
  Job image = *c.job(1);
  Cluster fresh;
  ASSERT_TRUE(fresh.restore_node(c.node(a)->spec, false));
  Job bad = image;
  bad.tasks.pop_back();  // fewer tasks than the spec's count
  EXPECT_EQ(fresh.restore_job(bad, false).error(), SchedError::kBadImage);
  bad = image;
  bad.tasks[0].node = 7;  // a started task on a node that does not exist
  EXPECT_EQ(fresh.restore_job(bad, false).error(), SchedError::kBadImage);
  bad = image;
  bad.state = JobState::kSucceeded;  // succeeded with tasks still running
  EXPECT_EQ(fresh.restore_job(bad, false).error(), SchedError::kBadImage);
  bad = image;
  bad.requeued = {0};  // a running task listed as queued for a retry
  EXPECT_EQ(fresh.restore_job(bad, false).error(), SchedError::kBadImage);
  bad = image;
  bad.tasks[0].lost = 1;  // more lost attempts than the one attempt
  bad.tasks[0].lost_free = 1;
  EXPECT_EQ(fresh.restore_job(bad, false).error(), SchedError::kBadImage);
  bad = image;
  bad.earlier[0] = {{.attempt = 1, .state = TaskState::kLost}};  // not before the last attempt
  EXPECT_EQ(fresh.restore_job(bad, false).error(), SchedError::kBadImage);
  bad = image;
  bad.earlier[5] = {{.attempt = 1, .state = TaskState::kLost}};  // no task 5
  EXPECT_EQ(fresh.restore_job(bad, false).error(), SchedError::kBadImage);
  bad = image;
  bad.tasks[0].attempts = 3;
  bad.earlier[0] = {{.attempt = 2, .state = TaskState::kLost},
                    {.attempt = 1, .state = TaskState::kLost}};
  EXPECT_EQ(fresh.restore_job(bad, false).error(), SchedError::kBadImage);  // out of order
  bad.earlier[0] = {{.attempt = 1, .state = TaskState::kSucceeded}};        // a success ends a task
  EXPECT_EQ(fresh.restore_job(bad, false).error(), SchedError::kBadImage);
  bad.earlier[0] = {{.attempt = 1, .state = TaskState::kLost, .node = 9}};  // no node 9
  EXPECT_EQ(fresh.restore_job(bad, false).error(), SchedError::kBadImage);
  bad = image;
  bad.started_ms[5] = 1;  // no task 5
  EXPECT_EQ(fresh.restore_job(bad, false).error(), SchedError::kBadImage);
  image.requeued.clear();
  ASSERT_TRUE(fresh.restore_job(image, false));
  EXPECT_EQ(fresh.restore_job(image, false).error(), SchedError::kBadImage);  // twice
  EXPECT_EQ(fresh.finish_restore(0).error(), SchedError::kBadImage);          // ids go back
  ASSERT_TRUE(fresh.finish_restore(1));
  EXPECT_EQ(fresh.node(a)->running, 2u);
  EXPECT_EQ(fresh.node(a)->used.cpu_millis, 2000u);
}

TEST_F(ClusterTest, NodesKeepTheirIdThroughRenameAndRemoval) {
  NodeId a = add("a", 2000, 4 * kGiB);
  NodeId b = add("b", 1000, 4 * kGiB);
  submit(1, job_spec(1, 2000));  // fits a only
  auto p = place(c);
  ASSERT_EQ(p.size(), 1u);
  ASSERT_EQ(p[0].node, a);
  EXPECT_EQ(c.update_node(a, node_spec("b", 2000, 4 * kGiB)).error(), SchedError::kDuplicateId);
  ASSERT_TRUE(c.update_node(a, node_spec("renamed", 2000, 4 * kGiB)));
  EXPECT_EQ(c.node_by_name("a"), nullptr);
  EXPECT_EQ(c.node_by_name("renamed")->id, a);
  EXPECT_EQ(c.job(1)->tasks[0].node, a);  // the task's history follows the node
  EXPECT_EQ(c.remove_node(a).error(), SchedError::kBadTransition);  // a task runs there
  ASSERT_TRUE(c.finish({1, 0}, outcome(TaskState::kSucceeded), 2));
  ASSERT_TRUE(c.remove_node(a));
  EXPECT_EQ(c.remove_node(a).error(), SchedError::kUnknownNode);
  EXPECT_EQ(c.node_by_name("renamed"), nullptr);
  NodeId d = add("renamed", 1000, kGiB);  // the name is free again, the id is not
  EXPECT_EQ(d, 2u);
  submit(2, job_spec(2));
  for (const auto& x : place(c)) EXPECT_NE(x.node, a);
  EXPECT_EQ(c.start({{2, 1}, a, 1}, 3).error(), SchedError::kUnknownNode);
  (void)b;
}

TEST_F(ClusterTest, ShrunkNodeIsOverCommittedUntilTasksFinish) {
  NodeId a = add("a", 2000, 4 * kGiB);
  submit(1, job_spec(2));
  ASSERT_EQ(place(c).size(), 2u);
  ASSERT_TRUE(c.update_node(a, node_spec("a", 1000, 4 * kGiB)));
  EXPECT_EQ(c.node(a)->used.cpu_millis, 2000u);
  submit(2, job_spec(1));
  EXPECT_TRUE(c.plan(10, kNow).empty());
  ASSERT_TRUE(c.finish({1, 0}, outcome(TaskState::kSucceeded), 2));
  EXPECT_TRUE(c.plan(10, kNow).empty());  // 1000 used of 1000
  ASSERT_TRUE(c.finish({1, 1}, outcome(TaskState::kSucceeded), 2));
  EXPECT_EQ(c.plan(10, kNow).size(), 1u);
}

TEST_F(ClusterTest, PruneDropsOnlyFinalJobsAndKeepsIdsUsed) {
  add("a", 4000, 4 * kGiB);
  submit(1, job_spec(1));
  submit(2, job_spec(1));
  EXPECT_EQ(c.prune(1).error(), SchedError::kBadTransition);  // queued
  place(c);
  ASSERT_TRUE(c.finish({1, 0}, outcome(TaskState::kSucceeded), 2));
  JobSpec dependent = job_spec(1);
  dependent.after = 1;
  submit(3, dependent);
  ASSERT_TRUE(c.prune(1));
  EXPECT_EQ(c.job(1), nullptr);
  EXPECT_EQ(c.prune(1).error(), SchedError::kUnknownJob);
  EXPECT_EQ(c.last_job_id(), 3u);
  EXPECT_EQ(c.submit(3, job_spec(1), 3).error(), SchedError::kDuplicateId);
  // The dependent of a pruned (succeeded) job is not waiting.
  auto p = place(c);
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].task.job, 3u);
}

}  // namespace
}  // namespace cardnode::sched
