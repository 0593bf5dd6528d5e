#include "runtime/coordinator/state.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <random>
#include <vector>

#include "runtime/coordinator/snapshot_codec.h"
#include "runtime/coordinator/test_records.h"

namespace cardnode::runtime {
namespace {

using sched::TaskState;
using namespace testing;  // NOLINT: record builders

uint64_t total(const State& s, TaskState st) {
  return s.task_totals()[static_cast<size_t>(st)];
}

// A State with node 0 ("n1", 4 cores) already joined, and the applier that made it.
struct Fixture {
  State s;
  Applier apply{s};
  Fixture() { EXPECT_TRUE(apply(node_updated(0, "n1", "board-1")).has_value()); }
};

TEST(State, NormalizeFillsDefaultsAndRejectsBadSpecs) {
  Fixture f;
  pb::JobSpec spec;
  spec.add_command("echo");
  ASSERT_TRUE(f.s.normalize(&spec).has_value());
  EXPECT_EQ(spec.count(), 1u);
  EXPECT_EQ(spec.cpu_millis(), kDefaultCpuMillis);
  EXPECT_EQ(spec.mem_bytes(), kDefaultMemBytes);
  EXPECT_EQ(spec.priority(), kDefaultPriority);
  EXPECT_EQ(spec.name(), "echo");

  pb::JobSpec empty;
  EXPECT_EQ(f.s.normalize(&empty).error().code, Errc::kInvalidArgument);
  pb::JobSpec prio = spec;
  prio.set_priority(101);
  EXPECT_FALSE(f.s.normalize(&prio).has_value());
  pb::JobSpec after = spec;
  after.set_after(42);
  EXPECT_EQ(f.s.normalize(&after).error().code, Errc::kNotFound);
  pb::JobSpec huge = spec;
  huge.set_count(2'000'000);
  EXPECT_FALSE(f.s.normalize(&huge).has_value());
  pb::JobSpec tiny = spec;  // --mem 1K: no exec fits, nor the pipe write saying so
  tiny.set_mem_bytes(1024);
  auto refused = f.s.normalize(&tiny);
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().code, Errc::kInvalidArgument);
  EXPECT_EQ(refused.error().message,
            "memory per task (--mem, memBytes) must be at least 1M (1024 bytes given)");
  pb::JobSpec least = spec;
  least.set_mem_bytes(kMemBytesMin);
  EXPECT_TRUE(f.s.normalize(&least).has_value());
}

// A record applied at replay is never refused by a newer floor (guarantee 6): a job that
// asked for less than kMemBytesMin before it existed still replays.
TEST(State, ReplayTakesAJobBelowTheMemoryFloor) {
  Fixture f;
  pb::WalRecord r = submitted(1, 1);
  r.mutable_job_submitted()->mutable_spec()->set_mem_bytes(1);
  EXPECT_TRUE(f.apply(r).has_value());
  ASSERT_NE(f.s.spec(1), nullptr);
  EXPECT_EQ(f.s.spec(1)->mem_bytes(), 1u);
}

// Linux argv, env values and paths are bytes: a Latin-1 name must survive the wire (a
// protobuf `string` would refuse to parse it), normalize and the WAL record as it is.
TEST(State, NonUtf8CommandEnvAndCwdRoundTrip) {
  Fixture f;
  const std::string latin1 = "caf\xe9";
  const std::string stray = "\x80\xff\xc3(";
  pb::JobSpec spec;
  spec.add_command("printf");
  spec.add_command(latin1);
  spec.add_command(stray);
  (*spec.mutable_env())["NAME"] = latin1;
  spec.set_cwd("/tmp/" + latin1);

  pb::Request req;
  *req.mutable_submit()->mutable_spec() = spec;
  std::string wire;
  ASSERT_TRUE(req.SerializeToString(&wire));
  pb::Request parsed;
  ASSERT_TRUE(parsed.ParseFromString(wire));
  pb::JobSpec got = parsed.submit().spec();
  ASSERT_TRUE(f.s.normalize(&got).has_value());
  EXPECT_EQ(got.command(1), latin1);
  EXPECT_EQ(got.command(2), stray);
  EXPECT_EQ(got.env().at("NAME"), latin1);
  EXPECT_EQ(got.cwd(), "/tmp/" + latin1);

  // Into the WAL and the state, and read back from the record's bytes.
  pb::WalRecord rec;
  rec.mutable_job_submitted()->set_job_id(1);
  *rec.mutable_job_submitted()->mutable_spec() = got;
  std::string bytes;
  ASSERT_TRUE(rec.SerializeToString(&bytes));
  pb::WalRecord replayed;
  ASSERT_TRUE(replayed.ParseFromString(bytes));
  ASSERT_TRUE(f.apply(replayed).has_value());
  ASSERT_NE(f.s.spec(1), nullptr);
  EXPECT_EQ(f.s.spec(1)->command(1), latin1);
  EXPECT_EQ(f.s.spec(1)->env().at("NAME"), latin1);
  EXPECT_EQ(f.s.spec(1)->cwd(), "/tmp/" + latin1);
  EXPECT_EQ(f.s.spec(1)->name(), "printf");
}

// What a task could not be given as it is is refused with a message, the spec unchanged
// in the state (normalize only reads it).
TEST(State, NormalizeRefusesBadEnvNamesAndNulBytes) {
  Fixture f;
  pb::JobSpec base;
  base.add_command("true");
  auto refused = [&](pb::JobSpec spec, const std::string& words) {
    auto st = f.s.normalize(&spec);
    ASSERT_FALSE(st.has_value()) << words;
    EXPECT_EQ(st.error().code, Errc::kInvalidArgument);
    EXPECT_NE(st.error().message.find(words), std::string::npos) << st.error().message;
  };
  pb::JobSpec eq = base;
  (*eq.mutable_env())["A=B"] = "v";
  refused(eq, "holds '='");
  pb::JobSpec empty = base;
  (*empty.mutable_env())[""] = "v";
  refused(empty, "name is empty");
  pb::JobSpec latin1_name = base;  // only a client that skips the wire gets here
  (*latin1_name.mutable_env())["caf\xe9"] = "v";
  refused(latin1_name, "'caf\\xe9' is not UTF-8");
  pb::JobSpec nul_arg = base;
  nul_arg.add_command(std::string("a\0b", 3));
  refused(nul_arg, "command argument 1 holds a NUL byte");
  pb::JobSpec nul_value = base;
  (*nul_value.mutable_env())["K"] = std::string("a\0b", 3);
  refused(nul_value, "environment variable K holds a NUL byte");
  pb::JobSpec nul_cwd = base;
  nul_cwd.set_cwd(std::string("/tmp\0/x", 7));
  refused(nul_cwd, "cwd holds a NUL byte");
  pb::JobSpec constraint = base;
  (*constraint.mutable_constraints())["arch"] = "\xff";
  refused(constraint, "not UTF-8");
  EXPECT_EQ(f.s.jobs_submitted(), 0u);
  EXPECT_EQ(f.s.cluster().jobs().size(), 0u);
}

TEST(State, TotalsFollowEveryRecord) {
  Fixture f;
  ASSERT_TRUE(f.apply(submitted(1, 3)).has_value());
  EXPECT_EQ(total(f.s, TaskState::kQueued), 3u);
  ASSERT_TRUE(f.apply(started(1, 0)).has_value());
  EXPECT_EQ(total(f.s, TaskState::kQueued), 2u);
  EXPECT_EQ(total(f.s, TaskState::kRunning), 1u);
  auto a = f.apply(finished(1, 0, pb::TASK_SUCCEEDED));
  ASSERT_TRUE(a.has_value());
  EXPECT_TRUE(a->finished_jobs.empty());
  EXPECT_EQ(total(f.s, TaskState::kSucceeded), 1u);
  EXPECT_EQ(f.s.jobs_submitted(), 1u);
  EXPECT_EQ(f.s.applied_seq(), f.apply.seq);
}

TEST(State, LastTaskReportsTheJobFinished) {
  Fixture f;
  ASSERT_TRUE(f.apply(submitted(1, 1)).has_value());
  ASSERT_TRUE(f.apply(started(1, 0)).has_value());
  auto a = f.apply(finished(1, 0, pb::TASK_FAILED, 3));
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->finished_jobs, std::vector<sched::JobId>{1});
  EXPECT_EQ(f.s.cluster().job(1)->tasks[0].exit_code, 3);
}

TEST(State, CancelReturnsRunningTasksToKill) {
  Fixture f;
  ASSERT_TRUE(f.apply(submitted(1, 3)).has_value());
  ASSERT_TRUE(f.apply(started(1, 1)).has_value());
  auto a = f.apply(cancelled(1));
  ASSERT_TRUE(a.has_value());
  ASSERT_EQ(a->to_kill.size(), 1u);
  EXPECT_EQ(a->to_kill[0].index, 1u);
  EXPECT_TRUE(a->finished_jobs.empty());  // one task still running
  EXPECT_EQ(total(f.s, TaskState::kCancelled), 2u);
  auto b = f.apply(finished(1, 1, pb::TASK_CANCELLED));
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->finished_jobs, std::vector<sched::JobId>{1});
  EXPECT_EQ(total(f.s, TaskState::kCancelled), 3u);
  EXPECT_EQ(total(f.s, TaskState::kRunning), 0u);
}

TEST(State, DependentsEndWithTheirDependencyAndAreCounted) {
  Fixture f;
  ASSERT_TRUE(f.apply(submitted(1, 1)).has_value());
  ASSERT_TRUE(f.apply(submitted(2, 4, /*after=*/1)).has_value());
  EXPECT_EQ(total(f.s, TaskState::kQueued), 5u);
  ASSERT_TRUE(f.apply(started(1, 0)).has_value());
  auto a = f.apply(finished(1, 0, pb::TASK_FAILED, 1));
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->finished_jobs.size(), 2u);  // job 1 failed, job 2 cancelled with it
  EXPECT_EQ(total(f.s, TaskState::kCancelled), 4u);
  EXPECT_EQ(total(f.s, TaskState::kQueued), 0u);
}

// The rule the coordinator relies on to log only what applied: a refused record leaves
// every byte of the state as it was.
TEST(State, RefusedRecordsChangeNothing) {
  Fixture f;
  ASSERT_TRUE(f.apply(submitted(1, 2)).has_value());
  ASSERT_TRUE(f.apply(started(1, 0)).has_value());
  const std::vector<std::string> before = encode_snapshot(f.s);
  const uint64_t seq = f.s.applied_seq();
  std::vector<pb::WalRecord> refused = {
      started(9, 0),                          // no such job
      started(1, 0),                          // already running
      started(1, 1, 1, /*node=*/7),           // no such node
      finished(1, 1, pb::TASK_SUCCEEDED),     // not running
      finished(1, 0, pb::TASK_QUEUED),        // not an end
      submitted(1, 1),                        // id used
      cancelled(9),                           // no such job
      node_updated(0, "n1", "someone-else"),  // node 0 is another board
      node_updated(5, "n5", "board-5"),       // ids are handed out in order
      node_updated(1, "n1", "board-2"),       // the name is taken
      node_removed(0),                        // a task runs there
      pruned({1}),                            // job 1 is not finished
      pruned({}),                             // prunes nothing
      pb::WalRecord{},                        // no event
  };
  for (const auto& r : refused) {
    auto a = f.apply(r);
    EXPECT_FALSE(a.has_value()) << r.ShortDebugString();
    EXPECT_EQ(encode_snapshot(f.s), before) << r.ShortDebugString();
    EXPECT_EQ(f.s.applied_seq(), seq);
  }
}

TEST(State, SequenceNumbersOnlyGrow) {
  Fixture f;
  ASSERT_TRUE(f.s.apply(submitted(1, 1), 10).has_value());
  EXPECT_EQ(f.s.apply(submitted(2, 1), 10).error().code, Errc::kInternal);
  EXPECT_EQ(f.s.apply(submitted(2, 1), 9).error().code, Errc::kInternal);
  EXPECT_TRUE(f.s.apply(submitted(2, 1), 11).has_value());
}

// A node is its identity: a rename is an update of the same id, and the tasks it ran stay
// its own. This is what makes a restart under another --name replay cleanly.
TEST(State, NodesAreIdentitiesNotNames) {
  Fixture f;
  ASSERT_TRUE(f.apply(submitted(1, 2)).has_value());
  ASSERT_TRUE(f.apply(started(1, 0)).has_value());
  ASSERT_TRUE(f.apply(finished(1, 0, pb::TASK_SUCCEEDED)).has_value());
  ASSERT_TRUE(f.apply(started(1, 1)).has_value());
  ASSERT_TRUE(f.apply(node_updated(0, "renamed-pi", "board-1")).has_value());
  EXPECT_EQ(f.s.cluster().node(0)->spec.name, "renamed-pi");
  EXPECT_EQ(*f.s.node_by_identity("board-1"), 0u);
  ASSERT_TRUE(f.apply(finished(1, 1, pb::TASK_SUCCEEDED)).has_value());
  EXPECT_EQ(f.s.cluster().job(1)->state, sched::JobState::kSucceeded);
  // A second board may take the old name; removal frees the identity for a new id.
  ASSERT_TRUE(f.apply(node_updated(1, "n1", "board-2")).has_value());
  ASSERT_TRUE(f.apply(node_removed(1)).has_value());
  EXPECT_FALSE(f.s.node_by_identity("board-2").has_value());
  ASSERT_TRUE(f.apply(node_updated(2, "n1", "board-2")).has_value());
  EXPECT_EQ(*f.s.node_by_identity("board-2"), 2u);
}

TEST(State, PruneDropsFinishedJobsKeepsTheirIdsAndTotals) {
  Fixture f;
  for (uint64_t id = 1; id <= 4; ++id) {
    ASSERT_TRUE(f.apply(submitted(id, 1)).has_value());
    ASSERT_TRUE(f.apply(started(id, 0)).has_value());
    ASSERT_TRUE(f.apply(finished(id, 0, pb::TASK_SUCCEEDED, 0, /*at_ms=*/100 * id)).has_value());
  }
  ASSERT_TRUE(f.apply(submitted(5, 1)).has_value());  // still queued
  EXPECT_EQ(f.s.finished_jobs(), 4u);
  // The newest 2 by count; by age everything finished more than 150 ms before 400.
  EXPECT_EQ(f.s.prune_candidates(2, 1'000'000, 400, 100), (std::vector<sched::JobId>{1, 2}));
  EXPECT_EQ(f.s.prune_candidates(10, 150, 400, 100), (std::vector<sched::JobId>{1, 2}));
  EXPECT_EQ(f.s.prune_candidates(10, 150, 400, 1), (std::vector<sched::JobId>{1}));
  EXPECT_TRUE(f.s.prune_candidates(10, 1'000'000, 400, 100).empty());
  auto a = f.apply(pruned({1, 2}));
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->pruned_jobs, (std::vector<sched::JobId>{1, 2}));
  EXPECT_TRUE(f.s.pruned(1));
  EXPECT_FALSE(f.s.pruned(3));
  EXPECT_FALSE(f.s.pruned(6));  // never handed out
  EXPECT_EQ(f.s.spec(1), nullptr);
  EXPECT_EQ(total(f.s, TaskState::kSucceeded), 2u);
  EXPECT_EQ(f.s.jobs_pruned(), 2u);
  EXPECT_EQ(f.s.cluster().last_job_id(), 5u);
  pb::JobSpec dependent;
  dependent.add_command("true");
  dependent.set_after(1);
  auto st = f.s.normalize(&dependent);
  ASSERT_FALSE(st.has_value());
  EXPECT_NE(st.error().message.find("pruned"), std::string::npos) << st.error().message;
  EXPECT_FALSE(f.apply(pruned({3, 3})).has_value());  // twice in one record
  EXPECT_FALSE(f.apply(pruned({3, 5})).has_value());  // 5 is live: nothing goes
  EXPECT_FALSE(f.s.pruned(3));
}

uint64_t seed_base() {
  const char* s = std::getenv("CARDNODE_TEST_SEED");  // NOLINT(concurrency-mt-unsafe)
  return s != nullptr ? std::strtoull(s, nullptr, 10) : std::random_device{}();
}

// Replay: the records a random live history logged, applied to a fresh State in the same
// order, give the same state byte for byte (the snapshot encoding is the full state).
TEST(StateReplay, RandomHistoriesReplayExactly) {
  const uint64_t base = seed_base();
  std::printf("seed %llu (CARDNODE_TEST_SEED to repeat)\n", static_cast<unsigned long long>(base));
  for (uint64_t seed = base; seed < base + 40; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    State live;
    Applier apply_live{live};
    HistoryGen gen(seed);
    std::vector<pb::WalRecord> log;
    for (int step = 0; step < 400; ++step) {
      pb::WalRecord r = gen.next(live, 1000 + step);
      if (apply_live(r)) log.push_back(r);
    }
    State replayed;
    Applier apply_replay{replayed};
    for (const auto& r : log) ASSERT_TRUE(apply_replay(r).has_value()) << r.ShortDebugString();
    ASSERT_EQ(encode_snapshot(replayed), encode_snapshot(live));
    EXPECT_EQ(replayed.task_totals(), live.task_totals());
  }
}

}  // namespace
}  // namespace cardnode::runtime
