// Test helpers shared by the runtime tests: WAL record builders and a random history
// generator that proposes records the way the server makes them (submits, placements
// from plan(), task ends, cancels, node joins and renames, prunes) plus, now and then, a
// record that must be refused. Every randomized test prints its seed.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "cardnode.pb.h"
#include "runtime/coordinator/state.h"

namespace cardnode::runtime::testing {

inline pb::WalRecord submitted(uint64_t id, uint32_t count, uint64_t after = 0,
                               uint32_t retries = 0, uint32_t cpu_millis = 1000) {
  pb::WalRecord r;
  auto* s = r.mutable_job_submitted();
  s->set_job_id(id);
  auto* spec = s->mutable_spec();
  spec->add_command("true");
  spec->set_name("job-" + std::to_string(id));
  spec->set_count(count);
  spec->set_cpu_millis(cpu_millis);
  spec->set_mem_bytes(64 << 20);
  spec->set_priority(50);
  spec->set_after(after);
  spec->set_retries(retries);
  s->set_submitted_ms(1000 + id);
  return r;
}

inline pb::WalRecord started(uint64_t job, uint32_t index, uint32_t attempt = 1,
                             uint32_t node = 0) {
  pb::WalRecord r;
  auto* s = r.mutable_task_started();
  s->set_job_id(job);
  s->set_index(index);
  s->set_node_id(node);
  s->set_attempt(attempt);
  return r;
}

inline pb::WalRecord finished(uint64_t job, uint32_t index, pb::TaskState st, int code = 0,
                              uint64_t at_ms = 0) {
  pb::WalRecord r;
  auto* f = r.mutable_task_finished();
  f->set_job_id(job);
  f->set_index(index);
  f->set_state(st);
  f->set_exit_code(code);
  f->set_finished_ms(at_ms);
  return r;
}

inline pb::WalRecord cancelled(uint64_t job) {
  pb::WalRecord r;
  r.mutable_job_cancelled()->set_job_id(job);
  return r;
}

inline pb::WalRecord node_updated(uint32_t id, const std::string& name, const std::string& identity,
                                  uint32_t cpu_millis = 4000) {
  pb::WalRecord r;
  auto* n = r.mutable_node_updated();
  n->set_node_id(id);
  n->set_name(name);
  n->set_identity(identity);
  n->set_cpu_millis(cpu_millis);
  n->set_mem_bytes(8ull << 30);
  (*n->mutable_labels())["arch"] = "aarch64";
  return r;
}

inline pb::WalRecord node_removed(uint32_t id) {
  pb::WalRecord r;
  r.mutable_node_removed()->set_node_id(id);
  return r;
}

inline pb::WalRecord pruned(const std::vector<uint64_t>& ids) {
  pb::WalRecord r;
  for (uint64_t id : ids) r.mutable_jobs_pruned()->add_job_ids(id);
  return r;
}

// Applies records with consecutive sequence numbers, as the coordinator does: a refused
// record is never logged, so it takes no number.
struct Applier {
  State& state;
  uint64_t seq = 0;
  Result<Applied> operator()(const pb::WalRecord& r) {
    auto a = state.apply(r, seq + 1);
    if (a) ++seq;
    return a;
  }
};

// Proposes the next record of a random history on `state` (not applied here).
class HistoryGen {
 public:
  explicit HistoryGen(uint64_t seed) : rng_(seed) {}

  pb::WalRecord next(const State& state, uint64_t now_ms) {
    const sched::Cluster& c = state.cluster();
    switch (pick(0, 99)) {
      case 0 ... 4: return join_or_rename(c);
      case 5 ... 29: return submit(c, now_ms);
      case 30 ... 59: {
        auto plan = c.plan(1, now_ms);
        if (!plan.empty()) {
          auto r = started(plan[0].task.job, plan[0].task.index, plan[0].attempt, plan[0].node);
          r.mutable_task_started()->set_started_ms(now_ms);
          // Some in standby, as the server's own board takes them: replay applies a
          // standby anywhere, and a later end on its node promotes it.
          r.mutable_task_started()->set_standby(pick(0, 3) == 0);
          return r;
        }
        return submit(c, now_ms);
      }
      case 60 ... 84: return finish(c, now_ms);
      case 85 ... 90: return cancel(c, now_ms);
      case 91 ... 95: return prune(c);
      case 96: return node_removed(static_cast<uint32_t>(pick(0, int(c.nodes().size()))));
      default: return bogus(c);
    }
  }

  int pick(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }

 private:
  pb::WalRecord join_or_rename(const sched::Cluster& c) {
    auto n = static_cast<uint32_t>(c.nodes().size());
    if (n == 0 || (n < 4 && pick(0, 1) == 0)) {
      return node_updated(n, "pi-" + std::to_string(n), "id-" + std::to_string(n),
                          uint32_t(pick(1, 4)) * 1000);
    }
    auto id = static_cast<uint32_t>(pick(0, int(n) - 1));
    return node_updated(id, "pi-" + std::to_string(id) + "-" + std::to_string(pick(0, 3)),
                        "id-" + std::to_string(id), uint32_t(pick(1, 4)) * 1000);
  }

  pb::WalRecord submit(const sched::Cluster& c, uint64_t now_ms) {
    uint64_t id = c.last_job_id() + 1;
    uint64_t after = id > 1 && pick(0, 4) == 0 ? uint64_t(pick(1, int(id) - 1)) : 0;
    auto r = submitted(id, uint32_t(pick(1, 6)), after, uint32_t(pick(0, 2)),
                       uint32_t(pick(1, 4)) * 500);
    r.mutable_job_submitted()->set_submitted_ms(now_ms);
    return r;
  }

  pb::WalRecord finish(const sched::Cluster& c, uint64_t now_ms) {
    std::vector<sched::TaskRef> running;
    for (const auto& [id, job] : c.jobs()) {
      for (uint32_t i = 0; i < job.tasks.size(); ++i) {
        if (job.tasks[i].state == sched::TaskState::kRunning) running.push_back({id, i});
      }
    }
    if (running.empty()) return submit(c, now_ms);
    auto t = running[size_t(pick(0, int(running.size()) - 1))];
    static constexpr pb::TaskState kEnds[] = {
        pb::TASK_SUCCEEDED,  pb::TASK_SUCCEEDED, pb::TASK_FAILED, pb::TASK_TIMED_OUT,
        pb::TASK_OOM_KILLED, pb::TASK_CANCELLED, pb::TASK_LOST,   pb::TASK_LOST};
    const int end = pick(0, 7);
    auto r = finished(t.job, t.index, kEnds[end], pick(0, 3), now_ms);
    r.mutable_task_finished()->set_requeue_free(end == 7);  // lost to a clean stop
    // Usage as runners report it: none (an attempt without a process), without a wall
    // time (an older agent or record), or in full.
    if (const int usage = pick(0, 2); usage > 0) {
      pb::TaskUsage* u = r.mutable_task_finished()->mutable_usage();
      u->set_cpu_user_ms(uint32_t(pick(0, 5000)));
      u->set_mem_peak_kib(uint32_t(pick(1, 1 << 20)));
      if (usage == 2) u->set_wall_ms(uint32_t(pick(1, 100'000)));
    }
    return r;
  }

  pb::WalRecord cancel(const sched::Cluster& c, uint64_t now_ms) {
    if (c.last_job_id() == 0) return submit(c, now_ms);
    auto r = cancelled(uint64_t(pick(1, int(c.last_job_id()))));
    r.mutable_job_cancelled()->set_cancelled_ms(now_ms);
    return r;
  }

  pb::WalRecord prune(const sched::Cluster& c) {
    std::vector<uint64_t> ids;
    for (const auto& [id, job] : c.jobs()) {
      if (sched::is_final(job.state) && pick(0, 2) == 0) ids.push_back(id);
    }
    if (ids.empty() && c.last_job_id() > 0) ids.push_back(uint64_t(pick(1, int(c.last_job_id()))));
    if (ids.empty()) ids.push_back(1);
    return pruned(ids);
  }

  // Records the server would never log: refused, and nothing may change.
  pb::WalRecord bogus(const sched::Cluster& c) {
    switch (pick(0, 4)) {
      case 0: return started(c.last_job_id() + 5, 0);
      case 1: return finished(1, 99, pb::TASK_SUCCEEDED);
      case 2: return submitted(c.last_job_id(), 1);  // an id already used
      case 3:                                        // an id that is neither known nor the next one
        return node_updated(static_cast<uint32_t>(c.nodes().size()) + 3, "imposter", "x");
      default: return pb::WalRecord{};
    }
  }

  std::mt19937_64 rng_;
};

}  // namespace cardnode::runtime::testing
