// The cluster model and its state machine: nodes, jobs, tasks, the queue.
// Pure: no I/O, no clock (time comes in as now_ms), no randomness, standard library only.
// The server calls these methods both live and when replaying the WAL, so the same
// sequence of calls always yields the same state (docs/ARCHITECTURE.md, "Replay").
//
// Placement is two steps, as in Nomad: plan() reads the state and returns decisions
// without changing anything; the server logs each decision and applies it with start().
// plan() is const in that sense: it brings derived indexes (free room per node, the run
// queue's fair-share order) up to date and uses scratch buffers, both `mutable`, which no
// caller can observe except through speed. The policy (docs/ARCHITECTURE.md, "Placement"):
// priority first; equal priorities share fairly (the job with the fewest running tasks
// goes next); each task bin-packs (the fitting board with the least free room) unless its
// job asks to spread; a job whose queue has waited longer than Limits::starve_after_ms
// reserves the board where it will fit soonest, and others backfill around it.
//
// Every mutator either fails without changing anything or succeeds, so the server can
// apply a record first and log it only if it applied (the WAL then never holds a record
// that replay would reject). Before a mutator changes a job it tells the JobObserver which
// tasks may change, so a snapshot in progress can write their old image first
// (runtime/coordinator/snapshot_codec.h), and the state can count what moved.
//
// Threading: none inside; the server uses it from its loop thread only. plan() and the
// why_*() queries update the mutable indexes too: no concurrent calls, const ones included.
// Bounds: Limits below; a bound that is hit is an error value, not a crash.
#pragma once

#include <array>
#include <cstdint>
#include <expected>
#include <map>
#include <set>
#include <string>
#include <tuple>
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
// Not durable, like NodeState.
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
  uint32_t nodes_max = 16'384;  // live (not removed) nodes
  // A task lost more often than this ends as lost; at most kLostRequeuesMaxLimit. Lost
  // attempts that were requeue-free (Outcome::requeue_free) do not count.
  uint32_t lost_requeues_max = 5;
  // A runnable job that started nothing for this long (Job::waiting_since_ms) reserves the
  // board where its next task fits soonest: nothing of lower rank starts there meanwhile.
  uint64_t starve_after_ms = 60'000;
  uint32_t reservations_max = 16;  // boards reserved in one plan(), for the first starved jobs
  // Constraint sets with their own free-room index (built when a job first needs one,
  // least recently used dropped); a job whose set finds no room is placed by a scan.
  uint32_t constraint_classes_max = 64;
  // Standby placements (see Cluster::set_standby_node): only for a job whose latest
  // attempt that ended by itself ran shorter than this (spawn to reap as its runner
  // measured it, else start to end as logged); 0: none.
  uint64_t standby_below_ms = 100;
};
inline constexpr uint32_t kLostRequeuesMaxLimit = 14;  // Task::lost is 4 bits

struct JobSpec {
  std::string name;
  uint32_t count = 1;
  Resources per_task;
  uint32_t retries = 0;    // extra attempts after failed / timed_out / oom_killed
  uint32_t priority = 50;  // 0..100, higher runs first; ties: lower job id first
  // Node labels to match; submit() and restore_job() sort them and drop duplicates.
  std::vector<std::pair<std::string, std::string>> constraints;
  JobId after = 0;  // runs once that job succeeded; cancelled if it did not
  // Placement of its tasks: false packs them (the fitting board with the least free room,
  // so idle boards stay idle); true spreads them (the fitting board running the fewest of
  // this job's tasks, then the most free CPU).
  bool spread = false;
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
  uint16_t attempt = 0;  // 1 for the first attempt (Task::attempts saturates at 255)
  // Placed in standby (Cluster::set_standby_node): the task is started (its attempt
  // counts) but takes the node's room only once finish() promotes it.
  bool standby = false;
};
static_assert(sizeof(Placement) == 24);  // plans are vectors of these

// What an attempt used (the executor reads its cgroup, else wait4's rusage) and how long it
// ran (spawn to reap; 0: unknown), for `ps JOB`. 16 bytes; saturates at ~49 days of CPU or
// wall time and 4 TiB.
struct TaskUsage {
  uint32_t cpu_user_ms = 0;
  uint32_t cpu_system_ms = 0;
  uint32_t mem_peak_kib = 0;
  uint32_t wall_ms = 0;
  bool operator==(const TaskUsage&) const = default;
};
static_assert(sizeof(TaskUsage) == 16);

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
  // Since when the head of its queue waits: the latest of submit, release by its `after`
  // job, its last start(), and a requeue into an empty queue. Set by mutators from their
  // now_ms, so replay reproduces it; restore_job() keeps the image's value, at least
  // submitted_ms (snapshots do not carry it: a restored job may starve sooner, not later).
  uint64_t waiting_since_ms = 0;
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
  // By task index, when its running attempt started (start()'s now_ms, or its promotion's
  // for a standby): running tasks only, so its size is bounded by the boards' capacity,
  // not by the job's count. A task restored running from an older snapshot may have none
  // (its start time is unknown), and so has a standby.
  std::map<uint32_t, uint64_t> started_ms;
  // Running tasks placed in standby and not yet promoted (bounded like started_ms).
  std::set<uint32_t> standby;

  // A hint for plan() only, not part of an image: whether its latest attempt that ended by
  // itself ran shorter than Limits::standby_below_ms.
  bool quick = false;

  // The run queue's bookkeeping (derived, not part of an image: restore_job() resets it).
  // Mutators only mark the job; plan() (const) moves it in the queue, hence `mutable`.
  mutable bool queue_dirty = false;      // listed in Cluster::dirty_jobs_
  mutable bool queued_in_run = false;    // in Cluster::runnable_, under ...
  mutable uint32_t run_key_running = 0;  // ... this running count (the fair-share key)
};

struct Node {
  NodeId id = 0;
  NodeSpec spec;
  NodeState state = NodeState::kReady;  // reachable or not: not durable
  bool removed = false;                 // its id stays taken; it gets no tasks and is not listed
  bool draining = false;                // durable: no new placements
  uint64_t drain_deadline_ms = 0;       // then running tasks are stopped and requeued; 0: none
  NodeHold hold = NodeHold::kNone;      // not durable: no new placements while not kNone
  bool standby_ok = false;              // not durable: set_standby_node()
  Resources used;
  uint32_t running = 0;  // tasks that take its room (standbys not counted)
  // Tasks placed here in standby, promoted in this order as room frees (finish()); their
  // resources, not counted in `used`. At most as many as `running`, each fitting the node.
  std::set<TaskRef> standby;
  Resources standby_used;
  // standby_ok only (derived): running tasks (standbys not counted) per job, so plan()
  // knows whether the board runs only the job it would place standbys for.
  std::map<JobId, uint32_t> running_jobs;
};

// Why a board takes no new task now (`cardnode nodes`). why_skipped() checks removed,
// draining (a drained board that is also down says draining), down, hold, task limit, full.
enum class NodeSkip : uint8_t {
  kNone = 0,  // takes work
  kRemoved,
  kDown,      // NodeState other than ready
  kDraining,  // `cardnode drain`
  kHot,       // NodeHold
  kThrottled,
  kUnderVoltage,
  kTaskLimit,  // runs NodeSpec::tasks_max tasks
  kFull,       // no CPU or no memory free
};
inline constexpr size_t kNodeSkipCount = 9;
const char* node_skip_name(NodeSkip s);  // "", "removed", "down", "draining", "hot", ...

// Why a job's next queued task is not running (`ps JOB`), most basic cause first.
enum class WaitCause : uint8_t {
  kNone = 0,           // nothing queued (running or ended)
  kUnknownJob,         //
  kAfterJob,           // other_job (its --after) has not succeeded yet
  kNoReadyNodes,       // no board is ready at all
  kConstraint,         // `constraint` (with those before it) matches no board
  kTooLarge,           // no matching board has `need` (or a task slot) in capacity
  kBoardsUnavailable,  // boards big enough exist, none takes work: see `skipped`
  kNoRoom,             // boards big enough take work, none has `need` free: see `skipped`
  kReserving,          // it waited past Limits::starve_after_ms: `node` is reserved for it
  kReservedForOther,   // the boards with room are reserved for other_job, which waited longer
  kPriority,           // other_job, of higher priority, takes the room first
  kFairShare,          // other_job, same priority and fewer running tasks, goes first
  kStartsNext,         // a board has room: it is among the next placements (`ahead` before it)
};
const char* wait_cause_name(WaitCause c);  // "none", "after_job", "no_ready_nodes", ...

struct WaitReason {
  WaitCause cause = WaitCause::kNone;
  Resources need;  // per task
  JobId other_job = 0;
  NodeId node = 0;  // kReserving
  std::string node_name;
  uint32_t ahead = 0;  // kStartsNext: placements of other jobs before it
  std::pair<std::string, std::string> constraint;  // kConstraint
  // Live boards that match the job and are big enough, by why each takes nothing now.
  std::array<uint32_t, kNodeSkipCount> skipped{};
};
// One line for `ps JOB`, e.g. "no board has 2 cores and 1 GiB free (3 full, 1 hot)".
std::string describe(const WaitReason& r);

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
  // Standby placements (not durable: the server says which board can take them, its own).
  // On such a board, while exactly one job waits to run, its tasks are short (Job::quick),
  // it does not spread, and the board is full of its tasks and runs nothing else, plan() may
  // place up to one more of its tasks per task of it running there, in standby: together
  // they fit the board, and standbys take no room until a finish() on the board frees
  // enough, which promotes them in TaskRef order. The
  // server logs a standby like any start, so a task can start the moment its predecessor
  // ends, without waiting for the disk. Standbys are running tasks in every other respect
  // (cancel(), running_on(), fair shares); `false` leaves those placed before as they are.
  std::expected<void, SchedError> set_standby_node(NodeId id, bool ok);

  // Accepts a job under the id the server chose (ids increase). Validates the spec.
  std::expected<void, SchedError> submit(JobId id, JobSpec spec, uint64_t now_ms);
  // Checks a spec without changing state (the server validates before logging).
  std::expected<void, SchedError> validate(const JobSpec& spec) const;

  // Up to `max` placements, each on a ready, undrained, unheld board that matches the
  // job's constraints and has room (capacity, and NodeSpec::tasks_max), never over-committing:
  //  - higher priority first; among equal priorities the job with the fewest running tasks
  //    (this plan's placements counted), then the lower id: max-min fair shares of slots;
  //  - packed on the fitting board with the least free CPU, then memory, then lowest id;
  //    JobSpec::spread: the board with the fewest of the job's tasks, then the most free
  //    CPU, then memory, then lowest id;
  //  - a job whose next task fits nowhere does not block others, unless it has waited
  //    past Limits::starve_after_ms at now_ms: then the board where it fits soonest (the
  //    least missing CPU, then memory, then task slots, then lowest id) is reserved for it,
  //    and jobs after it in this order start nothing there (backfill elsewhere).
  // Cost: one O(log nodes) index step per board left and per free-CPU level skipped, plus
  // O(log jobs) per job met and one re-key per node or job changed since the last plan; a
  // spread job walks boards from the most free down past those already running its tasks;
  // a reservation scans the job's constraint class once.
  // No allocation once warm except `out` (the overload reuses the caller's vector).
  std::vector<Placement> plan(uint32_t max, uint64_t now_ms) const;
  void plan(uint32_t max, uint64_t now_ms, std::vector<Placement>* out) const;
  // Applies one placement (live, or replayed from the WAL). Replay may over-commit a
  // node whose capacity changed; plan() never does.
  std::expected<void, SchedError> start(const Placement& p, uint64_t now_ms);
  // Applies the end of a running attempt. A failed/timed_out/oom_killed task with
  // attempts left, or a lost one under lost_requeues_max (a requeue-free loss always, while
  // attempts last), goes back to the queue. The room it frees promotes standbys of its
  // node that fit, appended to `promoted` (optional) in that order.
  // Returns the task's state afterwards (kQueued when requeued).
  std::expected<TaskState, SchedError> finish(TaskRef t, Outcome o, uint64_t now_ms,
                                              std::vector<TaskRef>* promoted = nullptr);
  // Whether a running task is a standby not yet promoted.
  bool is_standby(TaskRef t) const;
  // Nodes holding standbys (the server ends those that can no longer be promoted there:
  // the board takes no new work, or runs nothing that could end and free room).
  const std::set<NodeId>& standby_holders() const { return standby_holders_; }
  // Queued tasks become cancelled at once; returns the running ones, which the caller
  // kills and then reports with finish(kCancelled).
  std::expected<std::vector<TaskRef>, SchedError> cancel(JobId id, uint64_t now_ms);
  // Drops a final job (retention). Its id stays used: last_job_id() does not move back.
  std::expected<void, SchedError> prune(JobId id);

  // The running tasks on a node, in job and index order (the server ends each as lost
  // with a logged finish() when the node is gone).
  std::vector<TaskRef> running_on(NodeId id) const;

  // Why a job's next task waits, as plan(., now_ms) would see it now (`ps JOB`). A query:
  // O(nodes), plus simulating at most the placements ahead of it (bounded).
  WaitReason why_waiting(JobId id, uint64_t now_ms) const;
  // Why a board takes no new task now (kNone: it does); kRemoved for an unknown id.
  NodeSkip why_skipped(NodeId id) const;

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
  void count_spread(const Job& job, NodeId node, int delta);
  void promote_standbys(NodeId id, uint64_t now_ms, std::vector<TaskRef>* promoted);
  // Node::running_jobs of a standby_ok node, as start/finish/promotion change `running`.
  void count_running_job(Node& node, JobId job, int delta);
  void recount_running_jobs(Node& node);
  static void normalize_constraints(JobSpec& spec);
  void add_slot();

  // ---- placement indexes (placement.cc) ---------------------------------------------------
  // Mutators only mark what they changed (mark_node / mark_job, O(1)); plan() and the
  // queries bring the indexes up to date first (refresh), so a burst of starts, or a replay
  // of a million records, costs one re-index per node and job touched.
  using Constraints = std::vector<std::pair<std::string, std::string>>;  // sorted, unique
  // A board's free room as the indexes hold it; (0, 0, id) when it takes nothing.
  struct RoomKey {
    uint32_t cpu = 0;
    uint64_t mem = 0;
    NodeId id = 0;
    auto operator<=>(const RoomKey&) const = default;
  };
  using RoomIndex = std::set<RoomKey>;  // every node of a class, least room first
  struct NodeClass {
    Constraints constraints;
    RoomIndex room;
    uint64_t last_plan = 0;  // plan_serial_ of its last use, for least-recently-used
    bool live = false;
  };
  // Per node, parallel to nodes_.
  struct NodeSlot {
    RoomKey key;  // its entry in every class it is in
    bool dirty = false;
    bool gone = false;              // removed, and out of every index
    bool classes_stale = true;      // labels changed: recompute `classes`
    std::vector<uint16_t> classes;  // classes_ (beyond 0) its labels match
    Resources plan_used;            // this plan's placements on it (scratch)
    uint32_t plan_running = 0;
    bool plan_touched = false;
  };
  // The run queue's order: priority, then fewest running tasks, then lowest id.
  struct RunKey {
    uint32_t rank = 0;  // 100 - priority
    uint32_t running = 0;
    JobId id = 0;
    auto operator<=>(const RunKey&) const = default;
  };
  // A job in the running for the next placement within one priority (plan scratch).
  struct Contender {
    const Job* job = nullptr;
    uint32_t running = 0;  // committed + placed in this plan
    size_t requeued = 0;   // queue cursor: next position in job->requeued
    uint32_t fresh = 0;    // and among the never-started tasks
    int32_t cls = -1;      // classes_ slot; -1: none (labels checked node by node)
  };
  struct Reservation {
    NodeId node = 0;
    JobId job = 0;
  };
  // What why_waiting() asks a simulated plan.
  struct Trace {
    JobId job = 0;
    bool decided = false;
    bool placed = false;
    uint32_t ahead = 0;
    bool reserved = false;
    NodeId node = 0;
  };
  struct PlanLimit {
    uint32_t max;
    uint64_t now_ms;
  };

  void mark_node(NodeId id, bool labels_changed = false);
  void mark_job(const Job& job);
  void refresh() const;
  void reindex(NodeId id) const;
  RoomKey room_key(NodeId id) const;
  bool takes_work(const Node& n) const;
  void rekey(NodeId id, RoomKey key) const;
  int32_t class_for(const Constraints& constraints, bool create) const;
  int32_t add_class(const Constraints& constraints) const;
  void drop_class(uint16_t slot) const;
  static bool matches(const Node& n, const Constraints& constraints);
  enum class Step : uint8_t { kPlaced, kNoTask, kNoRoom };
  void plan_into(PlanLimit limit, std::vector<Placement>* out, Trace* trace) const;
  Step place_one(Contender& c, std::vector<Placement>* out) const;
  // The contender's next queued task (requeued ones first), taken off its cursor, as
  // place_one() takes it (plan_standbys).
  bool next_task(Contender& c, bool take, uint32_t* index) const;
  void plan_standbys(uint32_t max, std::vector<Placement>* out) const;
  std::tuple<bool, NodeId> find_node(const Contender& c) const;
  std::tuple<bool, NodeId> find_packed(const Contender& c) const;
  std::tuple<bool, NodeId> find_spread(const Contender& c) const;
  bool reserve(const Contender& c) const;
  bool fits_now(NodeId id, const Job& job) const;
  bool reserved_for_other(NodeId id, JobId job) const;
  bool reserved_by_any(NodeId id) const;
  uint32_t most_free_cpu() const;
  uint16_t class_slots() const;
  uint32_t spread_count(JobId job, NodeId node) const;
  void take(NodeId id, const Job& job) const;
  void flush_pending() const;
  void end_plan() const;

  Limits limits_;
  std::vector<Node> nodes_;
  std::map<JobId, Job> jobs_;
  uint64_t queued_tasks_ = 0;
  uint32_t live_jobs_ = 0;
  JobId last_job_id_ = 0;
  // Jobs waiting for another one to end, keyed by the job they wait for.
  std::multimap<JobId, JobId> dependents_;
  // Live jobs cancel() was called on: their running tasks end without a requeue.
  std::set<JobId> cancelling_;
  uint32_t live_nodes_ = 0;
  std::map<std::string, NodeId, std::less<>> by_name_;  // live nodes
  std::vector<NodeId> standby_nodes_;                   // Node::standby_ok, in id order
  std::set<NodeId> standby_holders_;                    // nodes with standbys (derived)
  JobObserver* observer_ = nullptr;
  // A spread job's running tasks per node, and how many nodes run how many of them
  // (derived; finish_restore() rebuilds it).
  struct SpreadRunning {
    std::map<NodeId, uint32_t> per_node;
    std::map<uint32_t, uint32_t> levels;  // tasks on a node -> nodes with that many
  };
  std::map<JobId, SpreadRunning> spread_running_;

  // Derived indexes, brought up to date by refresh(); `mutable` for plan() (see top).
  // Runnable jobs (queued tasks, not waiting for --after), in placement order.
  mutable std::set<RunKey> runnable_;
  mutable std::vector<JobId> dirty_jobs_;
  mutable std::vector<NodeSlot> slots_;
  mutable std::vector<NodeId> dirty_nodes_;
  // Slot 0: every node (no constraints). Others: one constraint set each, at most
  // Limits::constraint_classes_max, found through class_of_.
  mutable std::vector<NodeClass> classes_;
  mutable std::map<Constraints, uint16_t> class_of_;
  // plan() scratch, reused so a warm plan allocates nothing.
  mutable std::vector<Contender> heap_;
  mutable std::vector<Reservation> reserved_;
  mutable std::vector<NodeId> touched_;
  mutable std::vector<std::pair<JobId, NodeId>> planned_spread_;
  // The node of the latest placement, whose index entry is not yet updated: the next
  // placement of the same packed job goes there again while it fits (it stays the best).
  mutable bool pending_ = false;
  mutable NodeId pending_node_ = 0;
  mutable JobId pending_job_ = 0;
  mutable uint64_t plan_serial_ = 0;
};

}  // namespace cardnode::sched
