#include "runtime/coordinator/metrics.h"

#include <string>
#include <string_view>

namespace cardnode::runtime {
namespace {

prom::Counter* counter(prom::Registry& r, const std::string& name, const std::string& help,
                       const prom::Labels& labels = {}) {
  return &r.counter(name, help).Add(labels);
}

void add_delta(prom::Counter* c, uint64_t now, uint64_t before) {
  if (now > before) c->Increment(static_cast<double>(now - before));
}

}  // namespace

Result<std::unique_ptr<Metrics>> Metrics::start(uv_loop_t* loop, const std::string& listen) {
  auto board = BoardMetrics::start(loop, listen);
  if (!board) return std::unexpected(board.error());
  std::unique_ptr<Metrics> m(new Metrics());
  m->board_ = std::move(*board);
  auto& r = m->board_->registry();
  auto& tasks = r.gauge("cardnode_tasks", "Tasks known to this server, by state");
  auto& ended = r.counter("cardnode_tasks_finished_total",
                          "Task attempts that ended, by the state they ended in");
  for (size_t s = 0; s < sched::kTaskStateCount; ++s) {
    const auto st = static_cast<sched::TaskState>(s);
    const char* name = sched::task_state_name(st);
    m->tasks_[s] = &tasks.Add({{"state", name}});
    // Only the end of an attempt counts; queued/running stay null.
    if (sched::is_final(st)) m->tasks_ended_[s] = &ended.Add({{"state", name}});
  }
#define CARDNODE_COUNTER_REGISTER(field, name, label, value, help)       \
  m->field##_ = std::string_view(label).empty() ? counter(r, name, help) \
                                                : counter(r, name, help, {{label, value}});
  CARDNODE_COUNTERS(CARDNODE_COUNTER_REGISTER)
#undef CARDNODE_COUNTER_REGISTER
  auto& cpu = r.counter("cardnode_task_cpu_seconds_total",
                        "CPU time used by finished task attempts, by mode");
  m->task_cpu_user_ = &cpu.Add({{"mode", "user"}});
  m->task_cpu_system_ = &cpu.Add({{"mode", "system"}});
  prom::Histogram::BucketBoundaries bounds;
  for (uint64_t b : kTaskMemoryBucketsBytes) bounds.push_back(static_cast<double>(b));
  m->task_mem_peak_ =
      &r.histogram("cardnode_task_memory_peak_bytes", "Peak memory of each finished task attempt")
           .Add({}, bounds);
  prom::Histogram::BucketBoundaries duration_bounds;
  for (uint64_t b : kTaskDurationBucketsMs) duration_bounds.push_back(static_cast<double>(b) / 1e3);
  m->task_duration_ = &r.histogram("cardnode_task_duration_seconds",
                                   "Wall time of each finished task attempt, spawn to reap")
                           .Add({}, duration_bounds);
  return m;
}

void Metrics::set_tasks(const std::array<uint64_t, sched::kTaskStateCount>& totals) {
  for (size_t s = 0; s < totals.size(); ++s) tasks_[s]->Set(static_cast<double>(totals[s]));
}

void Metrics::refresh(const MetricSources& now) {
  board_->refresh(now.board);
#define CARDNODE_COUNTER_REFRESH(field, name, label, value, help) \
  add_delta(field##_, now.field, last_.field);
  CARDNODE_COUNTERS(CARDNODE_COUNTER_REFRESH)
#undef CARDNODE_COUNTER_REFRESH
  for (size_t s = 0; s < sched::kTaskStateCount; ++s) {
    if (tasks_ended_[s] != nullptr)
      add_delta(tasks_ended_[s], now.tasks_ended[s], last_.tasks_ended[s]);
  }
  auto add_ms = [](prom::Counter* c, uint64_t now_ms, uint64_t before_ms) {
    if (now_ms > before_ms) c->Increment(static_cast<double>(now_ms - before_ms) / 1e3);
  };
  add_ms(task_cpu_user_, now.task_cpu_user_ms, last_.task_cpu_user_ms);
  add_ms(task_cpu_system_, now.task_cpu_system_ms, last_.task_cpu_system_ms);
  observe_growth(task_mem_peak_, now.task_mem_peak_buckets, last_.task_mem_peak_buckets,
                 static_cast<double>(now.task_mem_peak_sum_bytes - last_.task_mem_peak_sum_bytes));
  observe_growth(task_duration_, now.task_duration_buckets, last_.task_duration_buckets,
                 static_cast<double>(now.task_duration_sum_ms - last_.task_duration_sum_ms) / 1e3);
  last_ = now;
}

}  // namespace cardnode::runtime
