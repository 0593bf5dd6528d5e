// Coordinator: the one path for every change of the durable state —
//
//   event -> record -> State::apply -> store.append ... durable -> side effects
//
// A record is applied the moment it is appended, so records are applied live in their
// WAL order and replay is the same computation. A record that would not apply, or that
// the store refuses (queue full, disk full), is refused before anything changes: the
// client gets the error, the server stays up. What a client or a process can observe waits
// for durability: replies, spawns and kills run from the record's durable callback, and
// answers to reads wait (when_durable) until every record already applied is durable, so
// nothing is ever reported that a crash could take back.
//
// The coordinator holds no socket, process or loop. Time comes from hooks.now_ms, "run a
// turn soon" goes to hooks.request_turn, tasks go to TaskRunners, and requests answer
// through the callbacks they pass in; the client API (runtime/api.h) turns those into
// replies. It never calls into the API or the server.
//
// Threading: loop thread only. `store` must outlive the coordinator, and be drained
// (DurableStore::drain) before the coordinator goes: its pending callbacks point here.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "cardnode.pb.h"
#include "proto/error.h"
#include "runtime/coordinator/snapshot_codec.h"
#include "runtime/coordinator/state.h"
#include "runtime/exec/task_runner.h"
#include "scheduler/heat.h"
#include "storage/durable_store.h"

namespace cardnode::runtime {

struct CoordinatorOptions {
  sched::Limits limits;
  uint32_t placements_per_turn = 64;  // then yield to the loop
  uint32_t keep_finished = 10'000;    // --keep-finished: newest finished jobs kept
  uint64_t keep_finished_for_ms = 7ull * 24 * 3600 * 1000;  // --keep-finished-for
  // A snapshot starts once the records since the last one pass max(this, its size):
  // replay stays short and a snapshot costs at most about as much as the WAL it replaces.
  uint64_t snapshot_wal_bytes_min = 8ull << 20;
  uint64_t snapshot_tasks_per_turn = 65'536;  // encoding budget per loop turn
  uint32_t waiters_max = 4096;                // clients blocked in WaitJob
  uint32_t barriers_max = 65'536;             // reads waiting for durability
  sched::HeatBounds heat;                     // --hot-celsius, --cool-margin
};

struct CoordinatorHooks {
  std::function<uint64_t()> now_ms;    // wall clock, ms since the epoch (records carry it)
  std::function<void()> request_turn;  // call turn() soon, from the loop
  // Durable: these jobs are gone (their task logs can go too).
  std::function<void(const std::vector<sched::JobId>&)> jobs_pruned;
  // The store failed for good (EIO on fdatasync): stop. Called once.
  std::function<void(const Error&)> fatal;
  std::function<void(const std::string&)> log_info;  // optional
  std::function<void(const std::string&)> log_warn;  // optional
};

struct CoordinatorStats {
  uint64_t records = 0;       // appended
  uint64_t refused_busy = 0;  // the store's queue was full
  uint64_t refused_no_space = 0;
  uint64_t outcomes_deferred = 0;   // task ends waiting for the store to take them
  uint64_t stale_reports = 0;       // ends of attempts the state no longer runs
  uint64_t standby_placements = 0;  // TaskStarted records in standby
  uint64_t standby_promotions = 0;  // standbys given room by an end
  uint64_t snapshots_started = 0;
  uint64_t snapshots_written = 0;
  uint64_t snapshot_failures = 0;
  uint64_t snapshot_slices_copied_early = 0;                   // copy-before-write
  std::array<uint64_t, sched::kTaskStateCount> tasks_ended{};  // logged ends, by state
  // What the logged ends used (runtime/exec: the cgroup, else rusage).
  uint64_t task_cpu_user_ms = 0;
  uint64_t task_cpu_system_ms = 0;
  // Peak memory per attempt: counts by upper bound kTaskMemoryBucketsBytes (the last: +Inf).
  std::array<uint64_t, 9> task_mem_peak_buckets{};
  uint64_t task_mem_peak_sum_bytes = 0;
  // Wall time per attempt that reported one: counts by upper bound kTaskDurationBucketsMs.
  std::array<uint64_t, 9> task_duration_buckets{};
  uint64_t task_duration_sum_ms = 0;
};

class Coordinator {
 public:
  Coordinator(storage::DurableStore& store, CoordinatorOptions options, CoordinatorHooks hooks);
  ~Coordinator();
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  // Start-up, once: the newest snapshot and the records after it. A record that does not
  // apply is a bug or damage the checksums missed: kCorruption naming its sequence number.
  [[nodiscard]] Result<storage::RecoveryReport> recover();

  // ---- nodes --------------------------------------------------------------------------
  // A board by its own identity: logs a NodeUpdated when it is new or its name, capacity
  // or labels changed (a rename keeps the node and its history). Refused like a request.
  [[nodiscard]] Result<sched::NodeId> register_node(const std::string& identity,
                                                    const sched::NodeSpec& spec);
  // The node runs tasks through `runner` from now on: it is ready. The runner is told again
  // what it must stop (it may have missed it): tasks of cancelled jobs once what is applied
  // is durable, tasks past their drain's deadline at the next turn.
  void attach_runner(sched::NodeId id, TaskRunner* runner);
  // The node's runner is gone: the node is down and no task goes there.
  void detach_runner(sched::NodeId id);
  // Every task the state says runs on the node ends lost (requeued by the scheduler's
  // rules): its processes are gone (a restarted server, a dead board). requeue_free: they
  // were stopped cleanly, and the requeue does not use their lost budget.
  void end_running_tasks(sched::NodeId id, bool requeue_free = false);

  // ---- attempts reported from elsewhere (runtime/agent_hub.h) --------------------------
  // The end of an attempt that node `node` ran, as its agent reports it. A report of an
  // attempt that already ended, or that the state does not run there, is stale and
  // changes nothing (a report may come twice; it is applied once).
  enum class EndReport : uint8_t {
    kLogged,    // logged now: durable once when_durable() says so
    kStale,     // nothing to log
    kDeferred,  // the store refused for now: it waits here; do not acknowledge it yet
  };
  EndReport report_end(sched::TaskRef t, uint32_t attempt, sched::NodeId node, TaskExit exit);
  // True when the state runs this attempt on that node (an agent that came back lists it).
  bool runs(sched::TaskRef t, uint32_t attempt, sched::NodeId node) const;
  // The attempts the state runs on a node.
  std::vector<std::pair<sched::TaskRef, uint32_t>> attempts_on(sched::NodeId id) const;

  // ---- heat and power (scheduler/heat.h) ----------------------------------------------
  // A board's latest heat, as its facts arrive (an agent's hello and heartbeats, the
  // server's own board on the same period): held with hysteresis (no new tasks; what runs
  // goes on) or released. Not logged — a hold is not durable, like ready/down: after a
  // restart the next facts decide again. Returns the node's hold now.
  sched::NodeHold report_heat(sched::NodeId id, std::optional<int32_t> millicelsius, bool throttled,
                              bool under_voltage);
  const sched::HeatBounds& heat_bounds() const { return options_.heat; }
  // The wall clock the records carry (hooks.now_ms): listings say when they were made.
  uint64_t now_ms() const { return hooks_.now_ms(); }

  // `cardnode drain NODE [--deadline DUR]` / `--undrain`. done once durable (or refused).
  void drain(const std::string& node_name, bool undrain, uint64_t deadline_ms,
             const std::function<void(Status)>& done);

  // ---- requests: done runs once — at once with a refusal, else once durable. If the
  // store fails for good first, it never runs: the server is stopping and its client
  // connections close. -----------------------------------------------------------------
  using SubmitDone = std::function<void(Result<sched::JobId>)>;
  // then_wait: the client will ask wait_job for this job next (after following an array's
  // progress, perhaps); retention keeps the job until it does, or until kThenWaitHoldMs
  // after retention first finds it due (a client that never asks), so a job that ends and
  // would be pruned before that request arrives is not.
  void submit(pb::JobSpec spec, const SubmitDone& done, bool then_wait = false);
  static constexpr uint64_t kThenWaitHoldMs = 30'000;
  using CancelDone = std::function<void(Result<uint32_t>)>;  // tasks cancelled
  void cancel(sched::JobId id, const CancelDone& done);
  // Once the job is final and that is durable; an unknown or pruned job fails at once.
  void wait_job(sched::JobId id, std::function<void(Status)> done);
  // Runs f once every record applied so far is durable; false (f not kept) when too many
  // reads are waiting already.
  [[nodiscard]] bool when_durable(std::function<void()> f);
  // Why an id has no job: kNotFound, saying whether it was pruned.
  Error missing_job(sched::JobId id) const;
  // Why the job's queued tasks wait, one line for `ps JOB` (sched::describe of
  // Cluster::why_waiting now); empty when none is queued. O(boards) plus a bounded
  // simulated plan: for one job on request, never for a listing.
  std::string wait_reason(sched::JobId id) const;

  // ---- the loop ---------------------------------------------------------------------
  // Bounded work: placements, deferred task ends, retention, one snapshot step.
  void turn();
  // Refuses new requests and placements from now on; task ends are still recorded.
  void stop();
  bool stopping() const { return stopping_; }

  const State& state() const { return state_; }
  const CoordinatorStats& stats() const { return stats_; }
  bool snapshot_in_progress() const { return sink_ != nullptr; }
  uint64_t durable_seq() const { return durable_seq_; }
  // Every record applied so far is durable.
  bool all_durable() const { return durable_seq_ + 1 >= store_.next_sequence(); }

 private:
  struct Barrier {
    uint64_t seq;
    std::function<void()> fn;
  };
  struct Outcome {
    sched::TaskRef task;
    uint32_t attempt;
    TaskExit exit;
  };
  using DurableFn = std::function<void(const Applied&)>;

  // reserve -> apply -> append; a refusal changes nothing and is returned.
  Result<uint64_t> commit(const pb::WalRecord& record, DurableFn on_durable);
  void on_durable(uint64_t seq, Status st, const Applied& applied, const DurableFn& fn);
  Error refusal(const Error& e);
  void notify_finished(const std::vector<sched::JobId>& jobs);

  void schedule();
  void hold(sched::TaskRef t, uint32_t attempt, sched::NodeId node);
  void stop_held(TaskRunner* runner);
  void dispatch(sched::TaskRef t, uint32_t attempt);
  void start_promoted();
  void end_stranded_standbys();
  void stop_attempt(sched::TaskRef t, uint32_t attempt, TaskRunner* runner, KillReason reason);
  TaskLaunch make_launch(sched::TaskRef t, uint32_t attempt, sched::NodeId node) const;
  void task_ended(sched::TaskRef t, uint32_t attempt, sched::NodeId node, TaskExit exit);
  bool record_outcome(const Outcome& o);
  bool end_waits(sched::TaskRef t, uint32_t attempt) const;  // in deferred_
  void retry_outcomes();
  void stop_drained_tasks();

  void prune_if_due();
  void snapshot_step();
  void start_snapshot();
  void finish_snapshot();

  void info(const std::string& m) const;
  void warn(const std::string& m) const;

  storage::DurableStore& store_;
  CoordinatorOptions options_;
  CoordinatorHooks hooks_;
  State state_;
  CoordinatorStats stats_;
  bool stopping_ = false;
  bool failed_ = false;
  uint64_t durable_seq_ = 0;

  std::map<sched::NodeId, TaskRunner*> runners_;
  std::deque<Barrier> barriers_;
  std::unordered_map<sched::JobId, std::vector<std::function<void(Status)>>> waiters_;
  uint32_t waiter_count_ = 0;
  std::unordered_map<sched::JobId, uint32_t> answering_;  // final jobs with a wait answer due
  // Jobs a client said it will wait for (submit's then_wait): 0 until retention first
  // finds one due, then until when it is kept (ms). At most waiters_max, as the waiters.
  std::unordered_map<sched::JobId, uint64_t> awaited_;
  std::deque<Outcome> deferred_;  // task ends the store refused, oldest first

  uint64_t last_prune_check_ms_ = 0;
  // One per node that reported heat (bounded by the nodes ever added; a removed node's goes
  // at its next report).
  std::unordered_map<sched::NodeId, sched::HeatGate> heat_;
  // Attempts stopped at a drain deadline: told once (bounded by the running tasks).
  std::set<std::pair<sched::TaskRef, uint32_t>> drain_stopped_;
  // Attempts started held (hold()) whose TaskStarted is not durable yet, and the runner
  // that holds each; nullptr once stopped there (stop_held). Bounded by the running tasks.
  std::map<std::pair<sched::TaskRef, uint32_t>, TaskRunner*> held_;
  // Standbys (sched::Cluster::set_standby_node) whose TaskStarted is durable, waiting for
  // a promotion; and those promoted since, started at the next turn. Bounded by the
  // running tasks; an attempt leaves both when its end is logged.
  std::set<std::pair<sched::TaskRef, uint32_t>> durable_standbys_;
  std::vector<std::pair<sched::TaskRef, uint32_t>> promoted_;

  std::unique_ptr<SnapshotBuilder> builder_;
  std::unique_ptr<storage::SnapshotSink> sink_;
  std::unique_ptr<storage::SnapshotSink> retired_sink_;  // finished; freed on the next turn
  bool snapshot_finishing_ = false;
  uint64_t snapshot_retry_bytes_ = 0;  // after a failure: wait for this much more WAL
};

}  // namespace cardnode::runtime
