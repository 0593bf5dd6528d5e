// Tests for standby placements (cluster.h, set_standby_node): when a full board takes one,
// how an end there promotes it, what never gets one, and the accounting under random
// events, replayed.
#include <gtest/gtest.h>

#include <cstdio>
#include <random>
#include <set>
#include <variant>

#include "scheduler/cluster.h"

namespace cardnode::sched {
namespace {

constexpr uint64_t kGiB = uint64_t{1} << 30;

NodeSpec board(std::string name, uint32_t cpu_millis, uint64_t mem_bytes = 4 * kGiB) {
  return {std::move(name), {cpu_millis, mem_bytes}, {}};
}

JobSpec tasks(uint32_t count, uint32_t cpu_millis = 1000, uint32_t priority = 50) {
  return JobSpec{.name = std::string("j"),
                 .count = count,
                 .per_task = {cpu_millis, 64 << 20},
                 .priority = priority};
}

Outcome ended(TaskState s = TaskState::kSucceeded) {
  return {.state = s};
}

std::vector<Placement> place(Cluster& c, uint64_t now_ms) {
  auto plan = c.plan(1000, now_ms);
  for (const Placement& p : plan) EXPECT_TRUE(c.start(p, now_ms).has_value());
  return plan;
}

size_t standbys(const std::vector<Placement>& ps) {
  return static_cast<size_t>(
      std::count_if(ps.begin(), ps.end(), [](auto& p) { return p.standby; }));
}

// A board's room as the scheduler counts it: tasks taking room and their CPU, standbys
// and theirs.
void expect_board(const Node& n, uint32_t running, uint32_t used_cpu, size_t standbys,
                  uint32_t standby_cpu) {
  EXPECT_EQ(n.running, running);
  EXPECT_EQ(n.used.cpu_millis, used_cpu);
  EXPECT_EQ(n.standby.size(), standbys);
  EXPECT_EQ(n.standby_used.cpu_millis, standby_cpu);
}

// A 2-core board that takes standbys, running the first two tasks of a 10-task job of
// 1-core tasks; the first of them ended after 5 ms, so the job is short.
class StandbyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pi_ = c_.add_node(board("pi", 2000)).value();
    ASSERT_TRUE(c_.set_standby_node(pi_, true));
    ASSERT_TRUE(c_.submit(1, tasks(10), 0));
    auto first = place(c_, 10);
    ASSERT_EQ(first.size(), 2u);
    EXPECT_EQ(standbys(first), 0u) << "nothing is known of its tasks' length yet";
    ASSERT_TRUE(c_.finish({1, 0}, ended(), 15));
  }
  Cluster c_;
  NodeId pi_ = 0;
};

TEST_F(StandbyTest, AFullBoardTakesOneStandbyPerTaskItRunsOfAShortJob) {
  auto plan = place(c_, 20);
  // One plain start in the room task 0 left, then the board is full: two standbys.
  ASSERT_EQ(plan.size(), 3u);
  EXPECT_FALSE(plan[0].standby);
  EXPECT_EQ(plan[0].task, (TaskRef{1, 2}));
  EXPECT_TRUE(plan[1].standby);
  EXPECT_EQ(plan[1].task, (TaskRef{1, 3}));
  EXPECT_TRUE(plan[2].standby);
  EXPECT_EQ(plan[2].task, (TaskRef{1, 4}));
  expect_board(*c_.node(pi_), 2, 2000, 2, 2000);
  EXPECT_TRUE(c_.is_standby({1, 3}));
  EXPECT_FALSE(c_.is_standby({1, 2}));
  // Standbys are running tasks: their attempt counts, and nothing more is placed.
  EXPECT_EQ(c_.job(1)->tasks[3].state, TaskState::kRunning);
  EXPECT_EQ(c_.job(1)->tasks[3].attempts, 1u);
  EXPECT_FALSE(c_.job(1)->started_ms.contains(3)) << "it has not started yet";
  EXPECT_TRUE(c_.plan(1000, 21).empty());
  EXPECT_EQ(c_.running_on(pi_).size(), 4u);
}

TEST_F(StandbyTest, AnEndPromotesTheFirstStandbyWhichStartsThen) {
  ASSERT_EQ(place(c_, 20).size(), 3u);  // 1.1 and 1.2 run, 1.3 and 1.4 stand by
  std::vector<TaskRef> promoted;
  ASSERT_TRUE(c_.finish({1, 1}, ended(), 30, &promoted));
  ASSERT_EQ(promoted, (std::vector<TaskRef>{{1, 3}}));
  const Node& n = *c_.node(pi_);
  expect_board(n, 2, 2000, 1, 1000);
  EXPECT_FALSE(c_.is_standby({1, 3}));
  EXPECT_EQ(c_.job(1)->started_ms.at(3), 30u) << "its start is its promotion";
  // The freed standby slot is taken again: one new standby behind the running pair.
  auto plan = place(c_, 31);
  ASSERT_EQ(plan.size(), 1u);
  EXPECT_TRUE(plan[0].standby);
  EXPECT_EQ(plan[0].task, (TaskRef{1, 5}));
  // A standby's own end (cancelled, lost) frees no room and promotes nothing.
  promoted.clear();
  ASSERT_TRUE(c_.finish({1, 4}, ended(TaskState::kLost), 32, &promoted));
  EXPECT_TRUE(promoted.empty());
  EXPECT_EQ(n.used.cpu_millis, 2000u);
  EXPECT_EQ(n.standby_used.cpu_millis, 1000u);
  EXPECT_EQ(c_.job(1)->tasks[4].state, TaskState::kQueued) << "lost: requeued";
}

TEST_F(StandbyTest, CancelEndsStandbysAsRunningTasksAndTheBoardCannotGoMeanwhile) {
  ASSERT_EQ(place(c_, 20).size(), 3u);
  EXPECT_FALSE(c_.remove_node(pi_).has_value());
  auto running = c_.cancel(1, 25);
  ASSERT_TRUE(running);
  EXPECT_EQ(running->size(), 4u) << "two running, two standing by";
  for (const TaskRef& t : *running) ASSERT_TRUE(c_.finish(t, ended(TaskState::kCancelled), 26));
  const Node& n = *c_.node(pi_);
  expect_board(n, 0, 0, 0, 0);
  EXPECT_EQ(c_.job(1)->state, JobState::kCancelled);
  EXPECT_TRUE(c_.remove_node(pi_).has_value());
}

TEST_F(StandbyTest, NoneForASlowJobNorBesideASecondWaitingJob) {
  // A second job waits (lower priority, and too large to run here): plain placements only.
  ASSERT_TRUE(c_.submit(2, tasks(3, 4000, /*priority=*/10), 16));
  auto plan = place(c_, 20);
  ASSERT_EQ(plan.size(), 1u);
  EXPECT_FALSE(plan[0].standby);
  EXPECT_EQ(plan[0].task, (TaskRef{1, 2}));
  ASSERT_TRUE(c_.cancel(2, 21));
  EXPECT_EQ(standbys(place(c_, 22)), 2u) << "alone again: standbys";
  // Its latest end took 100 ms: not short any more, and no new standby.
  ASSERT_TRUE(c_.finish({1, 1}, ended(), 10 + 100));
  for (const Placement& p : place(c_, 111)) EXPECT_FALSE(p.standby);
  ASSERT_TRUE(c_.finish({1, 2}, ended(), 120));
  for (const Placement& p : place(c_, 121)) EXPECT_FALSE(p.standby);
}

TEST_F(StandbyTest, NoneOnABoardThatTakesNoneOrNoNewWork) {
  Cluster plain;  // no standby board at all
  const NodeId a = plain.add_node(board("a", 1000)).value();
  ASSERT_TRUE(plain.submit(1, tasks(5), 0));
  ASSERT_EQ(place(plain, 1).size(), 1u);
  ASSERT_TRUE(plain.finish({1, 0}, ended(), 2));
  ASSERT_EQ(standbys(place(plain, 3)), 0u);
  EXPECT_TRUE(plain.node(a)->standby.empty());

  ASSERT_TRUE(c_.set_draining(pi_, true, 0));
  EXPECT_TRUE(c_.plan(1000, 20).empty());
  ASSERT_TRUE(c_.set_draining(pi_, false, 0));
  ASSERT_TRUE(c_.set_standby_node(pi_, false));
  auto plan = place(c_, 21);
  ASSERT_EQ(plan.size(), 1u);
  EXPECT_FALSE(plan[0].standby);
}

// Standbys go only behind the job's own tasks, so each of its ends promotes one: a board
// that also runs another job's task (which may run for hours) gets none.
TEST(Standby, NoneOnABoardThatAlsoRunsAnotherJob) {
  Cluster c;
  const NodeId pi = c.add_node(board("pi", 2000)).value();
  ASSERT_TRUE(c.set_standby_node(pi, true));
  ASSERT_TRUE(c.submit(1, tasks(1), 0));
  ASSERT_EQ(place(c, 1).size(), 1u);  // a long task of job 1
  ASSERT_TRUE(c.submit(2, tasks(10), 2));
  ASSERT_EQ(place(c, 3).size(), 1u);  // job 2 takes the other core
  ASSERT_TRUE(c.finish({2, 0}, ended(), 5));
  auto plan = place(c, 6);
  ASSERT_EQ(plan.size(), 1u);
  EXPECT_FALSE(plan[0].standby);
  EXPECT_TRUE(c.plan(1000, 7).empty()) << "job 2 is alone and short, but 1.0 runs there";
  ASSERT_TRUE(c.finish({1, 0}, ended(), 8));  // the board now runs only job 2
  ASSERT_TRUE(c.finish({2, 1}, ended(), 9));
  plan = place(c, 10);
  EXPECT_EQ(standbys(plan), 2u);
}

// A draining board promotes nothing: the server ends its standbys so they run elsewhere.
TEST_F(StandbyTest, ADrainingBoardPromotesNone) {
  ASSERT_EQ(place(c_, 20).size(), 3u);
  ASSERT_TRUE(c_.set_draining(pi_, true, 0));
  std::vector<TaskRef> promoted;
  ASSERT_TRUE(c_.finish({1, 1}, ended(), 30, &promoted));
  EXPECT_TRUE(promoted.empty());
  EXPECT_EQ(c_.node(pi_)->standby.size(), 2u);
  EXPECT_EQ(c_.standby_holders(), (std::set<NodeId>{pi_}));
  ASSERT_TRUE(c_.finish({1, 3}, ended(TaskState::kLost), 31));
  ASSERT_TRUE(c_.finish({1, 4}, ended(TaskState::kLost), 31));
  EXPECT_TRUE(c_.standby_holders().empty());
}

TEST(Standby, NoneForASpreadJobOrWithTheThresholdAtZero) {
  for (int variant = 0; variant < 2; ++variant) {
    SCOPED_TRACE(variant == 0 ? "spread" : "standby_below_ms 0");
    Cluster c(Limits{.standby_below_ms = variant == 0 ? 100u : 0u});
    const NodeId pi = c.add_node(board("pi", 1000)).value();
    ASSERT_TRUE(c.set_standby_node(pi, true));
    JobSpec s = tasks(5);
    s.spread = variant == 0;
    ASSERT_TRUE(c.submit(1, s, 0));
    ASSERT_EQ(place(c, 1).size(), 1u);
    ASSERT_TRUE(c.finish({1, 0}, ended(), 2));
    auto plan = place(c, 3);
    ASSERT_EQ(plan.size(), 1u);
    EXPECT_FALSE(plan[0].standby);
  }
}

// Random events on two boards, one taking standbys: after each, every resource is counted
// once, in `used` (running, promoted) or `standby_used`, neither over the board; replaying
// the same starts and ends on a fresh cluster reaches the same state.
TEST(Standby, AccountingHoldsUnderRandomEventsAndReplays) {
  const char* env = std::getenv("CARDNODE_TEST_SEED");  // NOLINT(concurrency-mt-unsafe)
  const uint64_t seed = env != nullptr ? std::strtoull(env, nullptr, 10) : std::random_device{}();
  std::printf("seed %llu (CARDNODE_TEST_SEED to repeat)\n", static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };

  struct Submit {
    JobId id;
    JobSpec spec;
  };
  struct Finish {
    TaskRef t;
    TaskState s;
  };
  struct Cancel {
    JobId id;
  };
  using Event = std::variant<Submit, Placement, Finish, Cancel>;
  std::vector<std::pair<Event, uint64_t>> log;
  const Limits limits{.standby_below_ms = 1000};  // the clock below moves 0-30 ms a step
  Cluster c(limits);
  const NodeId pi = c.add_node(board("pi", 4000)).value();
  (void)c.add_node(board("other", 2000)).value();
  ASSERT_TRUE(c.set_standby_node(pi, true));
  uint64_t now = 1;
  JobId next_job = 1;
  size_t standby_placements = 0;
  size_t promotions = 0;
  for (int step = 0; step < 3000; ++step) {
    now += static_cast<uint64_t>(pick(0, 30));
    // New jobs mostly once the queue ran dry, so one job often waits alone.
    const int what = pick(0, 9);
    if (c.queued_tasks() == 0 ? what < 3 : pick(0, 199) == 0) {
      Submit s{next_job++, tasks(uint32_t(pick(1, 30)), uint32_t(pick(1, 4)) * 500)};
      ASSERT_TRUE(c.submit(s.id, s.spec, now));
      log.emplace_back(s, now);
    } else if (what == 9 && next_job > 1 && pick(0, 3) == 0) {
      const JobId id = JobId(pick(1, int(next_job) - 1));
      ASSERT_TRUE(c.cancel(id, now));  // its running tasks, standbys too, end below
      log.emplace_back(Cancel{id}, now);
    } else if (what <= 5) {
      for (const Placement& p : c.plan(uint32_t(pick(1, 8)), now)) {
        ASSERT_TRUE(c.start(p, now));
        standby_placements += p.standby;
        log.emplace_back(p, now);
      }
    } else {
      std::vector<TaskRef> running;
      for (const auto& [id, j] : c.jobs()) {
        for (uint32_t i = 0; i < j.tasks.size(); ++i) {
          if (j.tasks[i].state == TaskState::kRunning) running.push_back({id, i});
        }
      }
      if (running.empty()) continue;
      static constexpr TaskState kEnds[] = {TaskState::kSucceeded, TaskState::kSucceeded,
                                            TaskState::kFailed, TaskState::kLost,
                                            TaskState::kCancelled};
      Finish f{running[size_t(pick(0, int(running.size()) - 1))], kEnds[pick(0, 4)]};
      std::vector<TaskRef> promoted;
      ASSERT_TRUE(c.finish(f.t, ended(f.s), now, &promoted));
      promotions += promoted.size();
      for (const TaskRef& t : promoted) ASSERT_FALSE(c.is_standby(t));
      log.emplace_back(f, now);
    }
    // Every running task counted once, where it belongs.
    for (const Node& n : c.nodes()) {
      Resources used, standby;
      uint32_t run = 0;
      for (const auto& [id, j] : c.jobs()) {
        for (uint32_t i = 0; i < j.tasks.size(); ++i) {
          if (j.tasks[i].state != TaskState::kRunning || j.tasks[i].node != n.id) continue;
          Resources& into = j.standby.contains(i) ? standby : used;
          into.cpu_millis += j.spec.per_task.cpu_millis;
          into.mem_bytes += j.spec.per_task.mem_bytes;
          run += j.standby.contains(i) ? 0 : 1;
          ASSERT_EQ(n.standby.contains({id, i}), j.standby.contains(i));
          ASSERT_EQ(j.started_ms.contains(i), !j.standby.contains(i));
        }
      }
      ASSERT_EQ(n.used.cpu_millis, used.cpu_millis) << "step " << step;
      ASSERT_EQ(n.used.mem_bytes, used.mem_bytes);
      ASSERT_EQ(n.running, run);
      ASSERT_EQ(n.standby_used.cpu_millis, standby.cpu_millis);
      ASSERT_EQ(n.standby_used.mem_bytes, standby.mem_bytes);
      ASSERT_LE(n.used.cpu_millis, n.spec.capacity.cpu_millis);
      ASSERT_LE(n.standby_used.cpu_millis, n.spec.capacity.cpu_millis);
      if (n.id != pi) {
        ASSERT_TRUE(n.standby.empty());
      }
    }
  }
  EXPECT_GT(standby_placements, 0u);
  EXPECT_GT(promotions, 0u);

  // Replay: the same events in order, no plan(), no standby board.
  Cluster r(limits);
  (void)r.add_node(board("pi", 4000)).value();
  (void)r.add_node(board("other", 2000)).value();
  for (const auto& [e, at] : log) {
    bool ok = false;
    if (const auto* s = std::get_if<Submit>(&e)) ok = r.submit(s->id, s->spec, at).has_value();
    if (const auto* p = std::get_if<Placement>(&e)) ok = r.start(*p, at).has_value();
    if (const auto* f = std::get_if<Finish>(&e)) ok = r.finish(f->t, ended(f->s), at).has_value();
    if (const auto* k = std::get_if<Cancel>(&e)) ok = r.cancel(k->id, at).has_value();
    ASSERT_TRUE(ok);
  }
  for (NodeId id = 0; id < 2; ++id) {
    EXPECT_EQ(r.node(id)->used.cpu_millis, c.node(id)->used.cpu_millis);
    EXPECT_EQ(r.node(id)->running, c.node(id)->running);
    EXPECT_EQ(r.node(id)->standby, c.node(id)->standby);
    EXPECT_EQ(r.node(id)->standby_used.cpu_millis, c.node(id)->standby_used.cpu_millis);
  }
  for (const auto& [id, j] : c.jobs()) {
    EXPECT_EQ(r.job(id)->standby, j.standby) << "job " << id;
    EXPECT_EQ(r.job(id)->started_ms, j.started_ms) << "job " << id;
    EXPECT_EQ(r.job(id)->state_counts, j.state_counts) << "job " << id;
  }
}

}  // namespace
}  // namespace cardnode::sched
