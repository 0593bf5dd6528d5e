#include "runtime/coordinator/snapshot_codec.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>

#include "runtime/coordinator/test_records.h"

namespace cardnode::runtime {
namespace {

using namespace testing;  // NOLINT: record builders

uint64_t seed_base() {
  const char* s = std::getenv("CARDNODE_TEST_SEED");  // NOLINT(concurrency-mt-unsafe)
  uint64_t seed = s != nullptr ? std::strtoull(s, nullptr, 10) : std::random_device{}();
  std::printf("seed %llu (CARDNODE_TEST_SEED to repeat)\n", static_cast<unsigned long long>(seed));
  return seed;
}

Status load(State& into, const std::vector<std::string>& chunks) {
  SnapshotLoader loader(into);
  for (const auto& c : chunks) {
    if (auto st = loader.feed(c); !st) return st;
  }
  return loader.finish();
}

void grow(State& s, Applier& apply, HistoryGen& gen, int steps, uint64_t* now_ms) {
  for (int i = 0; i < steps; ++i) (void)apply(gen.next(s, ++*now_ms));
}

// A restored state is the same state: same bytes, and the same future — every record
// that follows applies (or is refused) the same way on both, derived indexes included.
TEST(SnapshotCodec, RoundTripGivesTheSameStateAndTheSameFuture) {
  const uint64_t base = seed_base();
  size_t standbys_at_cut = 0;
  for (uint64_t seed = base; seed < base + 30; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    State live;
    Applier apply{live};
    HistoryGen gen(seed);
    uint64_t now = 1000;
    grow(live, apply, gen, 300, &now);
    for (const auto& [id, job] : live.cluster().jobs()) standbys_at_cut += job.standby.size();
    std::vector<std::string> chunks = encode_snapshot(live);
    State restored;
    ASSERT_TRUE(load(restored, chunks)) << "seed " << seed;
    ASSERT_EQ(encode_snapshot(restored), chunks);
    EXPECT_EQ(restored.task_totals(), live.task_totals());
    EXPECT_EQ(restored.applied_seq(), live.applied_seq());
    Applier apply_restored{restored, apply.seq};
    for (int i = 0; i < 300; ++i) {
      pb::WalRecord r = gen.next(live, ++now);
      auto a = apply(r);
      auto b = apply_restored(r);
      ASSERT_EQ(a.has_value(), b.has_value()) << i << ": " << r.ShortDebugString();
      if (a) {
        EXPECT_EQ(a->finished_jobs, b->finished_jobs);
        EXPECT_EQ(a->to_kill, b->to_kill);
        EXPECT_EQ(a->promoted, b->promoted);
      }
    }
    ASSERT_EQ(encode_snapshot(restored), encode_snapshot(live));
  }
  std::printf("standbys at the cut: %zu\n", standbys_at_cut);
  EXPECT_GT(standbys_at_cut, 0u) << "no history made a standby: the images' standbys go untested";
}

// The incremental builder, stepped a few tasks at a time while records keep changing the
// state, writes exactly the state of its cut.
TEST(SnapshotCodec, IncrementalBuilderWritesTheStateOfItsCut) {
  const uint64_t base = seed_base();
  for (uint64_t seed = base; seed < base + 30; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    State live;
    Applier apply{live};
    HistoryGen gen(seed);
    uint64_t now = 1000;
    grow(live, apply, gen, 300, &now);
    const std::vector<std::string> at_cut = encode_snapshot(live);
    std::vector<std::string> chunks;
    {
      SnapshotBuilder b(live, /*tasks_per_slice=*/2);
      while (!b.encoded_all()) {
        b.step(uint64_t(gen.pick(1, 5)));
        grow(live, apply, gen, gen.pick(0, 4), &now);  // copy-before-write happens here
      }
      while (b.has_chunk()) chunks.push_back(b.take_chunk());
    }
    State restored;
    ASSERT_TRUE(load(restored, chunks));
    ASSERT_EQ(encode_snapshot(restored), at_cut);
  }
}

TEST(SnapshotCodec, StepsStayWithinTheirBudget) {
  State s;
  Applier apply{s};
  ASSERT_TRUE(apply(node_updated(0, "n", "id")));
  ASSERT_TRUE(apply(submitted(1, 100'000)));
  ASSERT_TRUE(apply(submitted(2, 50'000)));
  SnapshotBuilder b(s, /*tasks_per_slice=*/256);
  while (b.has_chunk()) (void)b.take_chunk();  // meta and nodes
  uint32_t steps = 0;
  while (!b.encoded_all()) {
    ASSERT_LT(++steps, 1000u);
    b.step(1000);
    uint64_t tasks = 0;
    while (b.has_chunk()) {
      pb::SnapshotChunk c;
      ASSERT_TRUE(c.ParseFromString(b.take_chunk()));
      if (c.has_tasks()) tasks += c.tasks().tasks().size() / kTaskImageBytes;
    }
    EXPECT_LT(tasks, 1000u + 256u);  // the last slice may go past the budget
  }
  EXPECT_GE(steps, 120u);
}

// A snapshot that passed its checksums but is not a state we could have made is refused
// with kCorruption, never a crash.
TEST(SnapshotCodec, LoaderRefusesImpossibleImages) {
  State s;
  Applier apply{s};
  ASSERT_TRUE(apply(node_updated(0, "n", "id")));
  ASSERT_TRUE(apply(submitted(1, 3)));
  ASSERT_TRUE(apply(started(1, 1)));
  const std::vector<std::string> good = encode_snapshot(s);
  ASSERT_EQ(good.size(), 4u);  // meta, node, job image, one slice
  auto expect_refused = [](const std::vector<std::string>& chunks, const char* why) {
    State fresh;
    auto st = load(fresh, chunks);
    ASSERT_FALSE(st.has_value()) << why;
    EXPECT_EQ(st.error().code, Errc::kCorruption) << why;
  };
  expect_refused({}, "nothing");
  expect_refused({good[1]}, "no meta first");
  expect_refused({good[0], good[1], good[2]}, "a job without its tasks");
  expect_refused({good[0], good[1], good[3]}, "tasks before their image");
  expect_refused({good[0], good[2], good[3]}, "a node missing");
  expect_refused({good[0], good[1], good[2], good[3], good[2], good[3]}, "a job twice");
  expect_refused({good[0], good[1], good[2], good[3], "\xff\xff"}, "garbage");

  pb::SnapshotChunk c;
  ASSERT_TRUE(c.ParseFromString(good[3]));
  std::string tasks = c.tasks().tasks();
  tasks[12] = static_cast<char>(sched::TaskState::kQueued);  // the running task, now queued
  c.mutable_tasks()->set_tasks(tasks);
  expect_refused({good[0], good[1], good[2], c.SerializeAsString()}, "counts do not add up");
  tasks = c.tasks().tasks();
  tasks[0] = 42;  // no such task state
  c.mutable_tasks()->set_tasks(tasks);
  expect_refused({good[0], good[1], good[2], c.SerializeAsString()}, "bad task state");
  ASSERT_TRUE(c.ParseFromString(good[0]));
  c.mutable_meta()->set_format(99);
  expect_refused({c.SerializeAsString(), good[1], good[2], good[3]}, "unknown format");
  State fresh;
  ASSERT_TRUE(load(fresh, good));
}

// A task's two lost counts share its image's lost byte: requeue-free losses (a clean stop)
// in the high half. Images written before there were any read the same as then.
TEST(SnapshotCodec, BothLostCountsSurviveASnapshot) {
  State s;
  Applier apply{s};
  ASSERT_TRUE(apply(node_updated(0, "n", "id")));
  ASSERT_TRUE(apply(submitted(1, 2)));
  for (uint32_t attempt = 1; attempt <= 3; ++attempt) {
    ASSERT_TRUE(apply(started(1, 0, attempt)));
    pb::WalRecord end = finished(1, 0, pb::TASK_LOST);
    end.mutable_task_finished()->set_requeue_free(attempt != 2);
    ASSERT_TRUE(apply(end));
  }
  const std::vector<std::string> chunks = encode_snapshot(s);
  State restored;
  ASSERT_TRUE(load(restored, chunks));
  const sched::Task& t = restored.cluster().job(1)->tasks[0];
  EXPECT_EQ(t.attempts, 3u);
  EXPECT_EQ(t.lost, 1u);
  EXPECT_EQ(t.lost_free, 2u);

  pb::SnapshotChunk c;
  ASSERT_TRUE(c.ParseFromString(chunks[3]));
  std::string tasks = c.tasks().tasks();
  EXPECT_EQ(tasks[2], '\x21');
  tasks[2] = 3;  // as written before requeue-free losses: three that counted
  c.mutable_tasks()->set_tasks(tasks);
  State old;
  ASSERT_TRUE(load(old, {chunks[0], chunks[1], chunks[2], c.SerializeAsString()}));
  EXPECT_EQ(old.cluster().job(1)->tasks[0].lost, 3u);
  EXPECT_EQ(old.cluster().job(1)->tasks[0].lost_free, 0u);
}

// Wall times of finished attempts and start times of running ones are in the snapshot;
// a snapshot written before they were (no TaskSlice.wall, no TaskSlice.started) still
// loads, with both unknown.
TEST(SnapshotCodec, WallAndStartTimesSurviveASnapshotAndOlderOnesLoadWithout) {
  State s;
  Applier apply{s};
  ASSERT_TRUE(apply(node_updated(0, "n", "id")));
  ASSERT_TRUE(apply(submitted(1, 2)));
  pb::WalRecord start = started(1, 0);
  start.mutable_task_started()->set_started_ms(5000);
  ASSERT_TRUE(apply(start));
  start = started(1, 1);
  start.mutable_task_started()->set_started_ms(6000);
  ASSERT_TRUE(apply(start));
  pb::WalRecord end = finished(1, 0, pb::TASK_SUCCEEDED, 0, 7000);
  end.mutable_task_finished()->mutable_usage()->set_cpu_user_ms(40);
  end.mutable_task_finished()->mutable_usage()->set_wall_ms(1234);
  ASSERT_TRUE(apply(end));
  const std::vector<std::string> chunks = encode_snapshot(s);
  ASSERT_EQ(chunks.size(), 4u);  // meta, node, job image, one slice

  State restored;
  ASSERT_TRUE(load(restored, chunks));
  const sched::Job& job = *restored.cluster().job(1);
  ASSERT_EQ(job.usage.size(), 2u);
  EXPECT_EQ(job.usage[0].wall_ms, 1234u);
  EXPECT_EQ(job.usage[0].cpu_user_ms, 40u);
  EXPECT_EQ(job.started_ms, (std::map<uint32_t, uint64_t>{{1, 6000}}));

  pb::SnapshotChunk c;
  ASSERT_TRUE(c.ParseFromString(chunks[3]));
  EXPECT_EQ(c.tasks().wall().size(), 2 * 4u);
  EXPECT_EQ(c.tasks().started().size(), 12u);
  c.mutable_tasks()->clear_wall();  // as written before wall times and start times
  c.mutable_tasks()->clear_started();
  State old;
  ASSERT_TRUE(load(old, {chunks[0], chunks[1], chunks[2], c.SerializeAsString()}));
  EXPECT_EQ(old.cluster().job(1)->usage[0].wall_ms, 0u);
  EXPECT_EQ(old.cluster().job(1)->usage[0].cpu_user_ms, 40u);
  EXPECT_TRUE(old.cluster().job(1)->started_ms.empty());

  auto refused = [&](const pb::SnapshotChunk& slice) {
    State fresh;
    auto st = load(fresh, {chunks[0], chunks[1], chunks[2], slice.SerializeAsString()});
    return !st.has_value() && st.error().code == Errc::kCorruption;
  };
  ASSERT_TRUE(c.ParseFromString(chunks[3]));
  c.mutable_tasks()->mutable_wall()->push_back('\0');
  EXPECT_TRUE(refused(c)) << "wall times of the wrong size";
  ASSERT_TRUE(c.ParseFromString(chunks[3]));
  c.mutable_tasks()->mutable_started()->at(0) = 7;  // task 7: not in the slice
  EXPECT_TRUE(refused(c)) << "a start time outside the slice";
  ASSERT_TRUE(c.ParseFromString(chunks[3]));
  c.mutable_tasks()->mutable_started()->at(0) = 0;  // task 0 has ended
  EXPECT_TRUE(refused(c)) << "a start time of a task that is not running";
}

// Byte mutations of a valid snapshot's chunks (which pass the file's checksums in real
// life only through a bug or a bad disk): loading either refuses with kCorruption or
// yields a state that keeps working — never a crash, now or at the next records.
TEST(SnapshotCodec, MutatedImagesAreRefusedOrHarmless) {
  const uint64_t seed = seed_base();
  std::mt19937_64 rng(seed);
  State live;
  Applier apply{live};
  HistoryGen gen(seed);
  uint64_t now = 1000;
  grow(live, apply, gen, 300, &now);
  const std::vector<std::string> good = encode_snapshot(live);
  uint32_t loaded = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::vector<std::string> chunks = good;
    std::string& c = chunks[rng() % chunks.size()];
    if (c.empty()) continue;
    for (int flips = 1 + int(rng() % 3); flips > 0; --flips) {
      c[rng() % c.size()] = static_cast<char>(rng());
    }
    if (rng() % 8 == 0) c.resize(rng() % c.size());
    State s;
    auto st = load(s, chunks);
    if (!st) {
      EXPECT_EQ(st.error().code, Errc::kCorruption) << st.error().describe();
      continue;
    }
    ++loaded;
    Applier more{s, s.applied_seq()};
    HistoryGen next(seed + uint64_t(trial));
    for (int i = 0; i < 50; ++i) (void)more(next.next(s, ++now));
    (void)s.cluster().plan(100, now);
  }
  std::printf("%u of 3000 mutated images loaded (and kept working)\n", loaded);
}

}  // namespace
}  // namespace cardnode::runtime
