// Scheduler microbenchmarks: placement throughput (boards with room for everything, and
// boards that fill up, packed and spread), memory per queued task of a job array, and the
// finish -> requeue -> place cycle of a failing task. The whole run stays under 60 s with
// default flags.
#include <benchmark/benchmark.h>

#include <memory>
#include <string>
#include <vector>

#include "scheduler/cluster.h"

namespace cardnode::sched {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;

JobSpec array_spec(uint32_t count, uint32_t cpu_millis, uint32_t retries = 0, bool spread = false) {
  return JobSpec{.name = std::string("bench"),
                 .count = count,
                 .per_task = {cpu_millis, 16 * kMiB},
                 .retries = retries,
                 .spread = spread};
}

// `nodes` boards with room for every task at once, so each plan() places its full batch.
std::unique_ptr<Cluster> make_cluster(int64_t nodes, uint32_t tasks, uint32_t retries = 0) {
  auto c = std::make_unique<Cluster>();
  for (int64_t i = 0; i < nodes; ++i) {
    NodeSpec spec{.name = "pi-" + std::to_string(i),
                  .capacity = {4'000'000'000u, uint64_t{1} << 50}};
    if (!c->add_node(std::move(spec))) std::abort();
  }
  if (!c->submit(1, array_spec(tasks, 10, retries), 0)) std::abort();
  return c;
}

// `nodes` Pi 4s (4 cores, 4 GiB) and an array of one-core tasks: a board is full after four
// placements, so plan() keeps moving to the next board (packed) or walks the boards
// (spread), and the index does real work.
std::unique_ptr<Cluster> make_busy_cluster(int64_t nodes, bool spread) {
  auto c = std::make_unique<Cluster>();
  for (int64_t i = 0; i < nodes; ++i) {
    NodeSpec spec{.name = "pi-" + std::to_string(i), .capacity = {4000, 4 * 1024 * kMiB}};
    if (!c->add_node(std::move(spec))) std::abort();
  }
  if (!c->submit(1, array_spec(1'000'000, 1000, 0, spread), 0)) std::abort();
  return c;
}

// plan(64) and start() of each placement on a 100k-task array; items = placements.
void BM_PlanAndStart(benchmark::State& state) {
  constexpr uint32_t kTasks = 100'000;
  auto c = make_cluster(state.range(0), kTasks);
  int64_t placed = 0;
  uint64_t now_ms = 0;
  for (auto _ : state) {
    if (c->queued_tasks() == 0) {
      state.PauseTiming();
      c = make_cluster(state.range(0), kTasks);
      state.ResumeTiming();
    }
    auto plan = c->plan(64, now_ms);
    for (const Placement& p : plan) {
      if (!c->start(p, ++now_ms)) std::abort();
    }
    placed += static_cast<int64_t>(plan.size());
  }
  state.SetItemsProcessed(placed);
  state.counters["nodes"] = static_cast<double>(state.range(0));
}
BENCHMARK(BM_PlanAndStart)->Arg(4)->Arg(20)->Arg(100)->Arg(1000)->Arg(10000);

// As above on boards that fill up (make_busy_cluster); once every board is full the pool
// is built again, untimed. Arg 1: 0 packed, 1 spread.
void BM_PlanAndStartBusy(benchmark::State& state) {
  const bool spread = state.range(1) != 0;
  auto c = make_busy_cluster(state.range(0), spread);
  int64_t placed = 0;
  uint64_t now_ms = 0;
  std::vector<Placement> plan;
  for (auto _ : state) {
    c->plan(64, now_ms, &plan);
    if (plan.empty()) {
      state.PauseTiming();
      c = make_busy_cluster(state.range(0), spread);
      state.ResumeTiming();
      continue;
    }
    for (const Placement& p : plan) {
      if (!c->start(p, ++now_ms)) std::abort();
    }
    placed += static_cast<int64_t>(plan.size());
  }
  state.SetItemsProcessed(placed);
  state.counters["nodes"] = static_cast<double>(state.range(0));
}
BENCHMARK(BM_PlanAndStartBusy)->ArgsProduct({{100, 1000, 10000}, {0, 1}});

// submit() of one array; bytes_per_task = the job's task storage over its task count.
void BM_SubmitArray(benchmark::State& state) {
  const auto count = static_cast<uint32_t>(state.range(0));
  double bytes_per_task = 0;
  for (auto _ : state) {
    state.PauseTiming();
    auto c = std::make_unique<Cluster>();
    state.ResumeTiming();
    if (!c->submit(1, array_spec(count, 1000), 0)) std::abort();
    state.PauseTiming();
    const Job& job = *c->job(1);
    size_t bytes = sizeof(Job) + job.tasks.capacity() * sizeof(Task) +
                   job.requeued.capacity() * sizeof(uint32_t);
    bytes_per_task = static_cast<double>(bytes) / count;
    c.reset();
    state.ResumeTiming();
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * count);
  state.counters["bytes_per_task"] = bytes_per_task;
}
BENCHMARK(BM_SubmitArray)->Arg(1000)->Arg(32000)->Arg(1000000)->Unit(benchmark::kMicrosecond);

// A running task fails, is requeued, and is placed and started again: the server's path
// for a retry. 20 nodes, 10k running tasks; items = retry cycles.
void BM_FinishRequeue(benchmark::State& state) {
  constexpr uint32_t kTasks = 10'000;
  constexpr uint32_t kRetries = 250;
  auto setup = [&] {
    auto c = make_cluster(20, kTasks, kRetries);
    for (auto plan = c->plan(1024, 0); !plan.empty(); plan = c->plan(1024, 0)) {
      for (const Placement& p : plan) {
        if (!c->start(p, 0)) std::abort();
      }
    }
    return c;
  };
  auto c = setup();
  uint32_t index = 0;
  uint64_t now_ms = 0;
  for (auto _ : state) {
    auto after = c->finish({1, index}, {.state = TaskState::kFailed, .exit_code = 1}, ++now_ms);
    if (!after) std::abort();
    if (*after != TaskState::kQueued) {  // retries used up: start over
      state.PauseTiming();
      c = setup();
      index = 0;
      state.ResumeTiming();
      continue;
    }
    auto plan = c->plan(1, now_ms);
    if (plan.size() != 1 || !c->start(plan[0], now_ms)) std::abort();
    index = (index + 1) % kTasks;
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(BM_FinishRequeue);

}  // namespace
}  // namespace cardnode::sched

BENCHMARK_MAIN();
