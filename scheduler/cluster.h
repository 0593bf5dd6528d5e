// The cluster model and its state machine: nodes, jobs, tasks, the queue.
// Pure: no I/O, no clock (time comes in as now_ms), no randomness, standard library only.
// The server calls these methods both live and when replaying the WAL, so the same
// sequence of calls always yields the same state (docs/ARCHITECTURE.md, "Replay").
//
// Placement is two steps, as in Nomad: plan() reads the state and returns decisions
// without changing anything; the server logs each decision and applies it with start().
//
// Every mutator either fails without changing anything or succeeds, so the server can
// apply a record first and log it only if it applied (the WAL then never holds a record
// that replay would reject). Before a mutator changes a job it tells the JobObserver which
// tasks may change, so a snapshot in progress can write their old image first
// (runtime/coordinator/snapshot_codec.h), and the state can count what moved.
//
// Threading: none inside; the server uses it from its loop thread only.
// Bounds: Limits below; a bound that is hit is an error value, not a crash.
#pragma once

#include <array>
#include <cstdint>
#include <expected>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace cardnode::sched {

using JobId = uint64_t;
using NodeId = uint32_t;  // index in Cluster::nodes(), in add_node() order; never reused

// Values match pb::TaskState / pb::JobState.
enum class TaskState : uint8_t {
  kQueued = 0,
  kRunning = 1,
  kSucceeded = 2,
  kFailed = 3,
  kCancelled = 4,
  kTimedOut = 5,
  kOomKilled = 6,
  kLost = 7,
};
inline constexpr size_t kTaskStateCount = 8;
enum class JobState : uint8_t {
  kQueued = 0,
  kRunning = 1,
  kSucceeded = 2,
  kFailed = 3,
  kCancelled = 4
};
enum class NodeState : uint8_t { kReady = 0, kDraining = 1, kDown = 2 };
// Why a ready board takes no new tasks for now (its heat and power, scheduler/heat.h).
enum class NodeHold : uint8_t { kNone = 0, kHot = 1, kThrottled = 2, kUnderVoltage = 3 };

const char* task_state_name(TaskState s);  // "queued", "timed_out", ...
const char* job_state_name(JobState s);
const char* node_state_name(NodeState s);
const char* node_hold_name(NodeHold h);  // "none", "hot", "throttled", "under-voltage"
bool is_final(TaskState s);
bool is_final(JobState s);  // succeeded, failed or cancelled

enum class SchedError : uint8_t {
  kInvalidSpec,   // count 0 or above max, zero resources, priority > 100
  kTooManyJobs,   // Limits::jobs_max live (unfinished) jobs
  kTooManyTasks,  // Limits::queued_tasks_max tasks queued in all
  kTooManyNodes,
  kDuplicateId,  // job id not above every earlier one; node name taken
  kUnknownJob,
  kUnknownNode,
  kBadTransition,  // e.g. finish() on a task that is not running
  kBadImage,       // restore_*(): an image that is not a state we could have made
};
const char* sched_error_name(SchedError e);

struct Resources {
  uint32_t cpu_millis = 0;  // 1000 = one core
  uint64_t mem_bytes = 0;
};

struct Limits {
  uint32_t jobs_max = 100'000;  // unfinished jobs
  uint32_t tasks_per_job_max = 1'000'000;
  uint64_t queued_tasks_max = 10'000'000;
  uint32_t nodes_max = 1024;  // live (not removed) nodes
  // A task lost more often than this ends as lost; at most kLostRequeuesMaxLimit. Lost
  // attempts that were requeue-free (Outcome::requeue_free) do not count.
  uint32_t lost_requeues_max = 5;
};
inline constexpr uint32_t kLostRequeuesMaxLimit = 14;  // Task::lost is 4 bits

struct JobSpec {
  std::string name;
  uint32_t count = 1;
  Resources per_task;
  uint32_t retries = 0;    // extra attempts after failed / timed_out / oom_killed
  uint32_t priority = 50;  // 0..100, higher runs first; ties: lower job id first
  std::vector<std::pair<std::string, std::string>> constraints;  // node labels to match
  JobId after = 0;  // runs once that job succeeded; cancelled if it did not
};

struct NodeSpec {
  std::string name;
  Resources capacity;
  std::map<std::string, std::string> labels;
  uint32_t tasks_max = 0;  // tasks its executor runs at once; 0: no limit of its own
};

struct TaskRef {
  JobId job = 0;
  uint32_t index = 0;
  auto operator<=>(const TaskRef&) const = default;
};

struct Placement {
  TaskRef task;
  NodeId node = 0;
  uint32_t attempt = 0;  // 1 for the first attempt
};

// What an attempt used (the executor reads its cgroup, else wait4's rusage), for `ps JOB`.
// 12 bytes; saturates at ~49 days of CPU and 4 TiB.
struct TaskUsage {
  uint32_t cpu_user_ms = 0;
  uint32_t cpu_system_ms = 0;
  uint32_t mem_peak_kib = 0;
  bool operator==(const TaskUsage&) const = default;
};

struct Outcome {
  TaskState state = TaskState::kSucceeded;  // a final state or kLost
  int32_t exit_code = 0;
  int32_t signal = 0;
  // kLost only: lost to a clean stop (of the server or the board), not to the task or a
  // failure. Requeued without using the lost budget (nor --retries, as every lost attempt).
  bool requeue_free = false;
  TaskUsage usage;
};

// 12 bytes per task, queued or not.
struct Task {
  TaskState state = TaskState::kQueued;
  uint8_t attempts = 0;  // saturates at 255: a task starts at most 255 times in all
  // Lost attempts, which do not count against --retries: those that count against
  // Limits::lost_requeues_max, and the requeue-free ones. Both saturate at 15; past that,
  // further requeue-free losses of the same task count against --retries (never against
  // the lost budget). lost + lost_free <= attempts.
  uint8_t lost : 4 = 0;
  uint8_t lost_free : 4 = 0;
  int8_t signal = 0;
  int32_t exit_code = 0;
  NodeId node = 0;  // valid once attempts > 0
};
static_assert(sizeof(Task) == 12);

// An attempt that ended without ending its task (lost, or failed and retried), for
// `ps JOB`: each task's attempts and the node of each. A task's last attempt is the Task
// itself. Bounded: the latest kEarlierPerTaskMax of a task, for at most
// kEarlierTasksPerJobMax tasks of a job (later ones keep only their last attempt).
struct EarlierAttempt {
  uint8_t attempt = 0;  // 1 for the first
  TaskState state = TaskState::kLost;
  int8_t signal = 0;
  int32_t exit_code = 0;
  NodeId node = 0;
};
inline constexpr uint32_t kEarlierPerTaskMax = 16;
inline constexpr uint32_t kEarlierTasksPerJobMax = 65'536;

struct Job {
  JobId id = 0;
  JobSpec spec;
  JobState state = JobState::kQueued;
  uint64_t submitted_ms = 0;
  uint64_t finished_ms = 0;
  std::vector<Task> tasks;
  std::array<uint32_t, kTaskStateCount> state_counts{};  // tasks per TaskState
  uint32_t next_fresh = 0;                               // tasks [next_fresh, count) never started
  std::vector<uint32_t> requeued;  // indexes waiting for another attempt, FIFO
  size_t requeued_head = 0;
  // By task index, oldest first: only tasks that needed more than one attempt have one.
  std::map<uint32_t, std::vector<EarlierAttempt>> earlier;
  // By task index, what its latest finished attempt used. Empty until an attempt reports
  // any usage, so a queued array costs nothing here; then one TaskUsage per task.
  std::vector<TaskUsage> usage;
};

struct Node {
  NodeId id = 0;
  NodeSpec spec;
  NodeState state = NodeState::kReady;  // reachable or not: not durable
  bool removed = false;                 // its id stays taken; it gets no tasks and is not listed
  bool draining = false;                // durable: no new placements
  uint64_t drain_deadline_ms = 0;       // then running tasks are stopped and requeued; 0: none
  NodeHold hold = NodeHold::kNone;      // not durable: no new placements while not kNone
  Resources used;
  uint32_t running = 0;
};

// Told before a mutator changes a job, with the job as it still is. Tasks first..last may
// change (first > last: none); the job's own fields (state, queue) may change in any case.
class JobObserver {
 public:
  virtual ~JobObserver() = default;
  virtual void before_change(const Job& job, uint32_t first_task, uint32_t last_task) = 0;
};

class Cluster {
 public:
  explicit Cluster(Limits limits = {});

  // A new node gets the next id (nodes().size()).
  std::expected<NodeId, SchedError> add_node(NodeSpec spec);
  // New name, capacity or labels for a node (a rename keeps its id and history). A smaller
  // capacity may leave it over-committed until tasks finish; plan() never adds to that.
  std::expected<void, SchedError> update_node(NodeId id, NodeSpec spec);
  // Only a node with no running task can go; its id is never given out again.
  std::expected<void, SchedError> remove_node(NodeId id);
  // ready / down: not durable (heartbeats decide it), so no observer call.
  std::expected<void, SchedError> set_node_state(NodeId id, NodeState state);
  // `cardnode drain`: a draining node gets no new placements (durable, a record).
  std::expected<void, SchedError> set_draining(NodeId id, bool draining, uint64_t deadline_ms);
  // Heat and power (scheduler/heat.h): a held node gets no new placements; its running
  // tasks go on. Not durable (the next facts decide it again), so no observer call.
  std::expected<void, SchedError> set_node_hold(NodeId id, NodeHold hold);

  // Accepts a job under the id the server chose (ids increase). Validates the spec.
  std::expected<void, SchedError> submit(JobId id, JobSpec spec, uint64_t now_ms);
  // Checks a spec without changing state (the server validates before logging).
  std::expected<void, SchedError> validate(const JobSpec& spec) const;

  // Up to `max` placements: highest priority first, then lowest job id, each task on
  // the ready node with the most free CPU that fits it and matches its constraints.
  // A job whose next task fits nowhere does not block lower-priority jobs.
  std::vector<Placement> plan(uint32_t max) const;
  // Applies one placement (live, or replayed from the WAL). Replay may over-commit a
  // node whose capacity changed; plan() never does.
  std::expected<void, SchedError> start(const Placement& p, uint64_t now_ms);
  // Applies the end of a running attempt. A failed/timed_out/oom_killed task with
  // attempts left, or a lost one under lost_requeues_max (a requeue-free loss always, while
  // attempts last), goes back to the queue.
  // Returns the task's state afterwards (kQueued when requeued).
  std::expected<TaskState, SchedError> finish(TaskRef t, Outcome o, uint64_t now_ms);
  // Queued tasks become cancelled at once; returns the running ones, which the caller
  // kills and then reports with finish(kCancelled).
  std::expected<std::vector<TaskRef>, SchedError> cancel(JobId id, uint64_t now_ms);
  // Drops a final job (retention). Its id stays used: last_job_id() does not move back.
  std::expected<void, SchedError> prune(JobId id);

  // The running tasks on a node, in job and index order (the server ends each as lost
  // with a logged finish() when the node is gone).
  std::vector<TaskRef> running_on(NodeId id) const;

  // ---- snapshots: rebuild from images, then recompute every derived index --------------
  // Nodes in id order (removed ones included); jobs in any order, each whole: tasks sized
  // spec.count, state_counts and the queue fields are recomputed here.
  std::expected<void, SchedError> restore_node(NodeSpec spec, bool removed, bool draining = false,
                                               uint64_t drain_deadline_ms = 0);
  std::expected<void, SchedError> restore_job(Job job, bool cancelling);
  // Checks the images against each other (nodes of started tasks, dependencies) and
  // rebuilds node usage, the run queue, the live and queued counts.
  std::expected<void, SchedError> finish_restore(JobId last_job_id);
  bool cancelling(JobId id) const { return cancelling_.contains(id); }

  void set_observer(JobObserver* observer) { observer_ = observer; }

  const Job* job(JobId id) const;
  const Node* node(NodeId id) const;
  const Node* node_by_name(const std::string& name) const;
  const std::map<JobId, Job>& jobs() const { return jobs_; }
  const std::vector<Node>& nodes() const { return nodes_; }
  uint64_t queued_tasks() const { return queued_tasks_; }
  const Limits& limits() const { return limits_; }
  JobId last_job_id() const { return last_job_id_; }

 private:
  Job* find_job(JobId id);
  void touch(const Job& job, uint32_t first_task, uint32_t last_task) {
    if (observer_ != nullptr) observer_->before_change(job, first_task, last_task);
  }
  void touch_all(const Job& job) { touch(job, 0, static_cast<uint32_t>(job.tasks.size()) - 1); }
  bool waiting(const Job& job) const;
  void set_task_state(Job& job, uint32_t index, TaskState to);
  void take_from_queue(Job& job, uint32_t index, bool was_fresh);
  bool should_requeue(const Job& job, const Task& task, TaskState outcome) const;
  // Keeps the attempt `task` just ended (and that is being requeued) in job.earlier.
  static void remember_attempt(Job& job, uint32_t index, const Task& task, TaskState ended);
  void cancel_queued(Job& job);
  void sync_runnable(const Job& job);
  bool settle(Job& job, uint64_t now_ms);
  void release_dependents(JobId ended, uint64_t now_ms);

  Limits limits_;
  std::vector<Node> nodes_;
  std::map<JobId, Job> jobs_;
  // Jobs with queued tasks, in placement order: (100 - priority, id).
  std::set<std::pair<uint32_t, JobId>> runnable_;
  uint64_t queued_tasks_ = 0;
  uint32_t live_jobs_ = 0;
  JobId last_job_id_ = 0;
  // Jobs waiting for another one to end, keyed by the job they wait for.
  std::multimap<JobId, JobId> dependents_;
  // Live jobs cancel() was called on: their running tasks end without a requeue.
  std::set<JobId> cancelling_;
  uint32_t live_nodes_ = 0;
  JobObserver* observer_ = nullptr;
};

}  // namespace cardnode::sched
