// The cluster state machine (see cluster.h). Every mutation funnels task state changes
// through set_task_state() and job state changes through settle(), so the counters
// (state_counts, queued_tasks_, live_jobs_, and the mark that moves the job in runnable_)
// have one place each to go wrong.
//
// Queue representation: a job's queued tasks are the fresh ones (attempts == 0, all at
// indexes >= next_fresh) plus the requeued ones (listed in requeued[requeued_head..], FIFO).
// A replayed start() may take any queued index, so next_fresh can have holes behind it
// (tasks already started); they are skipped lazily, which costs O(1) amortized per task.
//
// Placement and its indexes are in placement.cc, the explanations in explain.cc. Each
// mutator here marks the nodes and jobs whose room or queue position it changed
// (mark_node, mark_job), and plan() re-indexes them.
#include "scheduler/cluster.h"

#include <algorithm>
#include <limits>

#include "scheduler/check.h"

namespace cardnode::sched {
namespace {

constexpr uint8_t kAttemptsMax = std::numeric_limits<uint8_t>::max();
constexpr uint32_t kPriorityMax = 100;

bool job_final(JobState s) {
  return s >= JobState::kSucceeded;
}

bool is_fresh(const Task& t) {
  return t.state == TaskState::kQueued && t.attempts == 0;
}

uint8_t saturating_inc(uint8_t v) {
  return v == kAttemptsMax ? v : static_cast<uint8_t>(v + 1);
}

constexpr uint8_t kLostCountMax = 15;  // Task::lost and Task::lost_free are 4 bits

uint8_t saturating_inc4(uint8_t v) {
  return v == kLostCountMax ? v : static_cast<uint8_t>(v + 1);
}

}  // namespace

const char* task_state_name(TaskState s) {
  switch (s) {
    case TaskState::kQueued: return "queued";
    case TaskState::kRunning: return "running";
    case TaskState::kSucceeded: return "succeeded";
    case TaskState::kFailed: return "failed";
    case TaskState::kCancelled: return "cancelled";
    case TaskState::kTimedOut: return "timed_out";
    case TaskState::kOomKilled: return "oom_killed";
    case TaskState::kLost: return "lost";
  }
  return "unknown";
}

const char* job_state_name(JobState s) {
  switch (s) {
    case JobState::kQueued: return "queued";
    case JobState::kRunning: return "running";
    case JobState::kSucceeded: return "succeeded";
    case JobState::kFailed: return "failed";
    case JobState::kCancelled: return "cancelled";
  }
  return "unknown";
}

const char* node_hold_name(NodeHold h) {
  switch (h) {
    case NodeHold::kNone: return "none";
    case NodeHold::kHot: return "hot";
    case NodeHold::kThrottled: return "throttled";
    case NodeHold::kUnderVoltage: return "under-voltage";
  }
  return "unknown";
}

const char* node_state_name(NodeState s) {
  switch (s) {
    case NodeState::kReady: return "ready";
    case NodeState::kDraining: return "draining";
    case NodeState::kDown: return "down";
  }
  return "unknown";
}

bool is_final(TaskState s) {
  return s != TaskState::kQueued && s != TaskState::kRunning;
}

bool is_final(JobState s) {
  return s != JobState::kQueued && s != JobState::kRunning;
}

const char* sched_error_name(SchedError e) {
  switch (e) {
    case SchedError::kInvalidSpec: return "invalid_spec";
    case SchedError::kTooManyJobs: return "too_many_jobs";
    case SchedError::kTooManyTasks: return "too_many_tasks";
    case SchedError::kTooManyNodes: return "too_many_nodes";
    case SchedError::kDuplicateId: return "duplicate_id";
    case SchedError::kUnknownJob: return "unknown_job";
    case SchedError::kUnknownNode: return "unknown_node";
    case SchedError::kBadTransition: return "bad_transition";
    case SchedError::kBadImage: return "bad_image";
  }
  return "unknown";
}

Cluster::Cluster(Limits limits) : limits_(limits) {
  // lost must be able to pass the bound for a lost task ever to end.
  SCHED_CHECK(limits_.lost_requeues_max <= kLostRequeuesMaxLimit);
  static_assert(kLostRequeuesMaxLimit < kLostCountMax);
  SCHED_CHECK(limits_.constraint_classes_max < std::numeric_limits<uint16_t>::max());
  // Reserved whole, so a class made inside plan() never moves the others.
  classes_.reserve(size_t{limits_.constraint_classes_max} + 1);
  classes_.emplace_back().live = true;  // class 0: every node
}

// ------------------------------------------------------------------------- nodes

static bool valid_node_spec(const NodeSpec& spec) {
  return !spec.name.empty() && spec.capacity.cpu_millis > 0 && spec.capacity.mem_bytes > 0;
}

std::expected<NodeId, SchedError> Cluster::add_node(NodeSpec spec) {
  if (!valid_node_spec(spec)) return std::unexpected(SchedError::kInvalidSpec);
  if (node_by_name(spec.name) != nullptr) return std::unexpected(SchedError::kDuplicateId);
  if (live_nodes_ >= limits_.nodes_max) return std::unexpected(SchedError::kTooManyNodes);
  Node n;
  n.id = static_cast<NodeId>(nodes_.size());
  n.spec = std::move(spec);
  by_name_.emplace(n.spec.name, n.id);
  nodes_.push_back(std::move(n));
  ++live_nodes_;
  add_slot();
  return nodes_.back().id;
}

// A new node enters class 0 taking nothing; its first refresh() gives it room and classes.
void Cluster::add_slot() {
  const auto id = static_cast<NodeId>(slots_.size());
  slots_.push_back(NodeSlot{.key = {0, 0, id}});
  classes_[0].room.insert(slots_.back().key);
  mark_node(id, /*labels_changed=*/true);
}

std::expected<void, SchedError> Cluster::update_node(NodeId id, NodeSpec spec) {
  if (id >= nodes_.size() || nodes_[id].removed) return std::unexpected(SchedError::kUnknownNode);
  if (!valid_node_spec(spec)) return std::unexpected(SchedError::kInvalidSpec);
  const Node* same_name = node_by_name(spec.name);
  if (same_name != nullptr && same_name->id != id) {
    return std::unexpected(SchedError::kDuplicateId);
  }
  by_name_.erase(nodes_[id].spec.name);
  by_name_.emplace(spec.name, id);
  nodes_[id].spec = std::move(spec);
  mark_node(id, /*labels_changed=*/true);
  return {};
}

std::expected<void, SchedError> Cluster::remove_node(NodeId id) {
  if (id >= nodes_.size() || nodes_[id].removed) return std::unexpected(SchedError::kUnknownNode);
  if (nodes_[id].running > 0 || !nodes_[id].standby.empty()) {
    return std::unexpected(SchedError::kBadTransition);
  }
  nodes_[id].removed = true;
  nodes_[id].standby_ok = false;
  std::erase(standby_nodes_, id);
  nodes_[id].state = NodeState::kDown;
  by_name_.erase(nodes_[id].spec.name);
  // As restore_node() rebuilds a removed node: no drain, no hold.
  nodes_[id].draining = false;
  nodes_[id].drain_deadline_ms = 0;
  nodes_[id].hold = NodeHold::kNone;
  SCHED_CHECK(live_nodes_ > 0);
  --live_nodes_;
  mark_node(id, /*labels_changed=*/true);  // leaves every class but 0
  return {};
}

std::expected<void, SchedError> Cluster::set_draining(NodeId id, bool draining,
                                                      uint64_t deadline_ms) {
  if (id >= nodes_.size() || nodes_[id].removed) return std::unexpected(SchedError::kUnknownNode);
  nodes_[id].draining = draining;
  nodes_[id].drain_deadline_ms = draining ? deadline_ms : 0;
  mark_node(id);
  return {};
}

std::expected<void, SchedError> Cluster::set_node_state(NodeId id, NodeState state) {
  if (id >= nodes_.size() || nodes_[id].removed) return std::unexpected(SchedError::kUnknownNode);
  nodes_[id].state = state;
  mark_node(id);
  return {};
}

std::expected<void, SchedError> Cluster::set_node_hold(NodeId id, NodeHold hold) {
  if (id >= nodes_.size() || nodes_[id].removed) return std::unexpected(SchedError::kUnknownNode);
  if (static_cast<uint8_t>(hold) > static_cast<uint8_t>(NodeHold::kUnderVoltage)) {
    return std::unexpected(SchedError::kInvalidSpec);
  }
  nodes_[id].hold = hold;
  mark_node(id);
  return {};
}

std::expected<void, SchedError> Cluster::set_standby_node(NodeId id, bool ok) {
  if (id >= nodes_.size() || nodes_[id].removed) return std::unexpected(SchedError::kUnknownNode);
  Node& node = nodes_[id];
  if (node.standby_ok == ok) return {};
  node.standby_ok = ok;
  std::erase(standby_nodes_, id);
  if (ok) standby_nodes_.insert(std::ranges::upper_bound(standby_nodes_, id), id);
  recount_running_jobs(node);
  return {};
}

void Cluster::count_running_job(Node& node, JobId job, int delta) {
  if (!node.standby_ok) return;
  uint32_t& n = node.running_jobs[job];
  SCHED_CHECK(delta > 0 || n > 0);
  n = delta > 0 ? n + 1 : n - 1;
  if (n == 0) node.running_jobs.erase(job);
}

// A scan of every running task, as running_on(): when a board starts or stops taking
// standbys (a runner attaches or goes), and after a restore.
void Cluster::recount_running_jobs(Node& node) {
  node.running_jobs.clear();
  if (!node.standby_ok) return;
  for (const TaskRef& t : running_on(node.id)) {
    if (!is_standby(t)) ++node.running_jobs[t.job];
  }
}

// -------------------------------------------------------------------------- jobs

std::expected<void, SchedError> Cluster::validate(const JobSpec& spec) const {
  if (spec.count == 0 || spec.count > limits_.tasks_per_job_max) {
    return std::unexpected(SchedError::kInvalidSpec);
  }
  if (spec.per_task.cpu_millis == 0 || spec.per_task.mem_bytes == 0) {
    return std::unexpected(SchedError::kInvalidSpec);
  }
  if (spec.priority > kPriorityMax) return std::unexpected(SchedError::kInvalidSpec);
  return {};
}

std::expected<void, SchedError> Cluster::submit(JobId id, JobSpec spec, uint64_t now_ms) {
  if (auto ok = validate(spec); !ok) return ok;
  if (id <= last_job_id_) return std::unexpected(SchedError::kDuplicateId);
  const Job* dep = spec.after == 0 ? nullptr : job(spec.after);
  if (spec.after != 0 && dep == nullptr) return std::unexpected(SchedError::kUnknownJob);
  if (live_jobs_ >= limits_.jobs_max) return std::unexpected(SchedError::kTooManyJobs);
  if (queued_tasks_ + spec.count > limits_.queued_tasks_max) {
    return std::unexpected(SchedError::kTooManyTasks);
  }

  Job& job = jobs_[id];
  job.id = id;
  job.spec = std::move(spec);
  normalize_constraints(job.spec);
  job.submitted_ms = now_ms;
  job.waiting_since_ms = now_ms;
  job.tasks.resize(job.spec.count);
  job.state_counts[static_cast<size_t>(TaskState::kQueued)] = job.spec.count;
  queued_tasks_ += job.spec.count;
  ++live_jobs_;
  last_job_id_ = id;

  if (dep != nullptr && !job_final(dep->state)) {
    dependents_.emplace(dep->id, id);
  } else if (dep != nullptr && dep->state != JobState::kSucceeded) {
    cancel_queued(job);
    if (settle(job, now_ms)) release_dependents(id, now_ms);
  }
  sync_runnable(job);
  return {};
}

// ------------------------------------------------------------- task transitions

std::expected<void, SchedError> Cluster::start(const Placement& p, uint64_t now_ms) {
  Job* job = find_job(p.task.job);
  if (job == nullptr || p.task.index >= job->tasks.size()) {
    return std::unexpected(SchedError::kUnknownJob);
  }
  if (p.node >= nodes_.size() || nodes_[p.node].removed) {
    return std::unexpected(SchedError::kUnknownNode);
  }
  Task& task = job->tasks[p.task.index];
  if (task.state != TaskState::kQueued || waiting(*job)) {
    return std::unexpected(SchedError::kBadTransition);
  }
  touch(*job, p.task.index, p.task.index);
  bool was_fresh = task.attempts == 0;
  set_task_state(*job, p.task.index, TaskState::kRunning);
  task.attempts = saturating_inc(task.attempts);
  task.node = p.node;
  take_from_queue(*job, p.task.index, was_fresh);

  Node& node = nodes_[p.node];
  if (p.standby) {
    // Its start time is its promotion's; its room is taken then too.
    job->standby.insert(p.task.index);
    node.standby.insert(p.task);
    standby_holders_.insert(p.node);
    node.standby_used.cpu_millis += job->spec.per_task.cpu_millis;
    node.standby_used.mem_bytes += job->spec.per_task.mem_bytes;
  } else {
    job->started_ms[p.task.index] = now_ms;
    node.used.cpu_millis += job->spec.per_task.cpu_millis;
    node.used.mem_bytes += job->spec.per_task.mem_bytes;
    ++node.running;
    count_running_job(node, job->id, +1);
    mark_node(p.node);
    if (job->spec.spread) count_spread(*job, p.node, +1);
  }
  job->waiting_since_ms = now_ms;  // the head moved on: the next one waits from here

  bool ended = settle(*job, now_ms);
  SCHED_CHECK(!ended);  // it has a running task now
  sync_runnable(*job);
  return {};
}

std::expected<TaskState, SchedError> Cluster::finish(TaskRef t, Outcome o, uint64_t now_ms,
                                                     std::vector<TaskRef>* promoted) {
  Job* job = find_job(t.job);
  if (job == nullptr || t.index >= job->tasks.size()) {
    return std::unexpected(SchedError::kUnknownJob);
  }
  Task& task = job->tasks[t.index];
  if (task.state != TaskState::kRunning || !is_final(o.state)) {
    return std::unexpected(SchedError::kBadTransition);
  }
  touch(*job, t.index, t.index);
  Node& node = nodes_[task.node];
  const Resources& need = job->spec.per_task;
  const bool was_standby = job->standby.erase(t.index) > 0;
  if (was_standby) {
    SCHED_CHECK(node.standby.erase(t) == 1 && node.standby_used.cpu_millis >= need.cpu_millis &&
                node.standby_used.mem_bytes >= need.mem_bytes);
    node.standby_used.cpu_millis -= need.cpu_millis;
    node.standby_used.mem_bytes -= need.mem_bytes;
    if (node.standby.empty()) standby_holders_.erase(task.node);
  } else {
    SCHED_CHECK(node.running > 0 && node.used.cpu_millis >= need.cpu_millis &&
                node.used.mem_bytes >= need.mem_bytes);
    node.used.cpu_millis -= need.cpu_millis;
    node.used.mem_bytes -= need.mem_bytes;
    --node.running;
    count_running_job(node, job->id, -1);
    mark_node(task.node);
    if (job->spec.spread) count_spread(*job, task.node, -1);
  }

  task.exit_code = o.exit_code;
  task.signal = static_cast<int8_t>(std::clamp<int32_t>(o.signal, INT8_MIN, INT8_MAX));
  if (auto st = job->started_ms.find(t.index); st != job->started_ms.end()) {
    // An attempt that ended by itself tells whether the job's tasks are short: its own
    // spawn-to-reap time when the runner measured one, else start to end as logged (which
    // holds a WAL write or two, the wait standbys exist to hide).
    if (o.state != TaskState::kLost && o.state != TaskState::kCancelled) {
      const uint64_t took = o.usage.wall_ms > 0    ? o.usage.wall_ms
                            : now_ms >= st->second ? now_ms - st->second
                                                   : 0;
      job->quick = took < limits_.standby_below_ms;
    }
    job->started_ms.erase(st);
  }
  if (o.usage != TaskUsage{} || !job->usage.empty()) {
    if (job->usage.empty()) job->usage.resize(job->tasks.size());
    job->usage[t.index] = o.usage;
  }
  if (o.state == TaskState::kLost && o.requeue_free) {
    task.lost_free = saturating_inc4(task.lost_free);
  } else if (o.state == TaskState::kLost) {
    task.lost = saturating_inc4(task.lost);
  }

  TaskState to = should_requeue(*job, task, o.state) ? TaskState::kQueued : o.state;
  if (to == TaskState::kQueued) remember_attempt(*job, t.index, task, o.state);
  if (to == TaskState::kQueued && job->state_counts[static_cast<size_t>(TaskState::kQueued)] == 0) {
    job->waiting_since_ms = now_ms;  // its queue was empty: this task heads it from now
  }
  set_task_state(*job, t.index, to);
  if (to == TaskState::kQueued) job->requeued.push_back(t.index);
  const NodeId freed = task.node;
  if (settle(*job, now_ms)) release_dependents(job->id, now_ms);
  sync_runnable(*job);
  if (!was_standby) promote_standbys(freed, now_ms, promoted);
  return to;
}

// Standbys of the node that fit its room now take it, in TaskRef order; the first that
// does not fit stops the rest (a smaller one behind it would otherwise overtake it
// forever). A draining node promotes none (drains are durable, so replay agrees; holds and
// NodeState are not, and do not count here): the server ends them there instead.
void Cluster::promote_standbys(NodeId id, uint64_t now_ms, std::vector<TaskRef>* promoted) {
  Node& node = nodes_[id];
  if (node.standby.empty()) return;
  while (!node.standby.empty() && !node.draining) {
    const TaskRef t = *node.standby.begin();
    Job& job = jobs_.find(t.job)->second;
    const Resources& need = job.spec.per_task;
    const bool fits = node.used.cpu_millis + need.cpu_millis <= node.spec.capacity.cpu_millis &&
                      node.used.mem_bytes + need.mem_bytes <= node.spec.capacity.mem_bytes &&
                      (node.spec.tasks_max == 0 || node.running < node.spec.tasks_max);
    if (!fits) break;
    touch(job, t.index, t.index);
    node.standby.erase(node.standby.begin());
    job.standby.erase(t.index);
    node.standby_used.cpu_millis -= need.cpu_millis;
    node.standby_used.mem_bytes -= need.mem_bytes;
    node.used.cpu_millis += need.cpu_millis;
    node.used.mem_bytes += need.mem_bytes;
    ++node.running;
    count_running_job(node, job.id, +1);
    job.started_ms[t.index] = now_ms;
    if (job.spec.spread) count_spread(job, id, +1);
    if (promoted != nullptr) promoted->push_back(t);
  }
  if (node.standby.empty()) standby_holders_.erase(id);
  mark_node(id);
}

bool Cluster::is_standby(TaskRef t) const {
  const Job* j = job(t.job);
  return j != nullptr && j->standby.contains(t.index);
}

void Cluster::remember_attempt(Job& job, uint32_t index, const Task& task, TaskState ended) {
  auto it = job.earlier.find(index);
  if (it == job.earlier.end()) {
    if (job.earlier.size() >= kEarlierTasksPerJobMax) return;
    it = job.earlier.emplace(index, std::vector<EarlierAttempt>{}).first;
  }
  std::vector<EarlierAttempt>& list = it->second;
  if (list.size() >= kEarlierPerTaskMax) list.erase(list.begin());
  list.push_back({task.attempts, ended, task.signal, task.exit_code, task.node});
}

std::expected<std::vector<TaskRef>, SchedError> Cluster::cancel(JobId id, uint64_t now_ms) {
  Job* job = find_job(id);
  if (job == nullptr) return std::unexpected(SchedError::kUnknownJob);
  std::vector<TaskRef> running;
  if (job_final(job->state)) return running;

  touch_all(*job);
  cancel_queued(*job);
  uint32_t running_count = job->state_counts[static_cast<size_t>(TaskState::kRunning)];
  running.reserve(running_count);
  for (uint32_t i = 0; i < job->tasks.size() && running.size() < running_count; ++i) {
    if (job->tasks[i].state == TaskState::kRunning) running.push_back({id, i});
  }
  if (running_count > 0) cancelling_.insert(id);
  if (settle(*job, now_ms)) release_dependents(id, now_ms);
  sync_runnable(*job);
  return running;
}

std::expected<void, SchedError> Cluster::prune(JobId id) {
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return std::unexpected(SchedError::kUnknownJob);
  if (!job_final(it->second.state)) return std::unexpected(SchedError::kBadTransition);
  touch_all(it->second);
  // A final job is in no index: settle() took it out of cancelling_, release_dependents()
  // out of dependents_, and refresh() out of runnable_ unless none ran since it ended.
  if (it->second.queued_in_run) {
    runnable_.erase({kPriorityMax - it->second.spec.priority, it->second.run_key_running, id});
  }
  jobs_.erase(it);
  return {};
}

std::vector<TaskRef> Cluster::running_on(NodeId id) const {
  std::vector<TaskRef> out;
  if (id >= nodes_.size()) return out;
  const size_t here = nodes_[id].running + nodes_[id].standby.size();
  if (here == 0) return out;
  // A scan rather than a per-node index: boards vanish rarely, and an index would cost
  // every start() and finish().
  for (const auto& [job_id, job] : jobs_) {
    uint32_t running = job.state_counts[static_cast<size_t>(TaskState::kRunning)];
    for (uint32_t i = 0; i < job.tasks.size() && running > 0; ++i) {
      if (job.tasks[i].state != TaskState::kRunning) continue;
      --running;
      if (job.tasks[i].node == id) out.push_back({job_id, i});
    }
    if (out.size() == here) break;
  }
  return out;
}

// ---------------------------------------------------------------------- queries

const Job* Cluster::job(JobId id) const {
  auto it = jobs_.find(id);
  return it == jobs_.end() ? nullptr : &it->second;
}

const Node* Cluster::node(NodeId id) const {
  return id < nodes_.size() ? &nodes_[id] : nullptr;
}

const Node* Cluster::node_by_name(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &nodes_[it->second];
}

// ---------------------------------------------------------------------- helpers

Job* Cluster::find_job(JobId id) {
  auto it = jobs_.find(id);
  return it == jobs_.end() ? nullptr : &it->second;
}

// A dependency that is gone was pruned, so it had ended and released its dependents.
bool Cluster::waiting(const Job& job) const {
  if (job.spec.after == 0) return false;
  auto it = jobs_.find(job.spec.after);
  return it != jobs_.end() && !job_final(it->second.state);
}

void Cluster::set_task_state(Job& job, uint32_t index, TaskState to) {
  Task& task = job.tasks[index];
  auto& from_count = job.state_counts[static_cast<size_t>(task.state)];
  SCHED_CHECK(from_count > 0);
  --from_count;
  ++job.state_counts[static_cast<size_t>(to)];
  if (task.state == TaskState::kQueued) --queued_tasks_;
  if (to == TaskState::kQueued) ++queued_tasks_;
  task.state = to;
}

// Called once the task left the queued state.
void Cluster::take_from_queue(Job& job, uint32_t index, bool was_fresh) {
  if (was_fresh) {
    SCHED_CHECK(index >= job.next_fresh);
    while (job.next_fresh < job.tasks.size() && !is_fresh(job.tasks[job.next_fresh])) {
      ++job.next_fresh;
    }
    return;
  }
  auto& q = job.requeued;
  if (job.requeued_head < q.size() && q[job.requeued_head] == index) {
    ++job.requeued_head;
  } else {
    // Only a replay that deviates from plan() order gets here.
    auto it = std::find(q.begin() + static_cast<std::ptrdiff_t>(job.requeued_head), q.end(), index);
    SCHED_CHECK(it != q.end());
    q.erase(it);
  }
  // Drop the consumed prefix once it is at least half the vector: amortized O(1).
  if (job.requeued_head * 2 >= q.size()) {
    q.erase(q.begin(), q.begin() + static_cast<std::ptrdiff_t>(job.requeued_head));
    job.requeued_head = 0;
  }
}

// attempts saturates at 255, so a task is started at most 255 times whatever retries
// and lost_requeues_max say. Lost attempts do not count against retries, and requeue-free
// ones not against lost_requeues_max either.
bool Cluster::should_requeue(const Job& job, const Task& task, TaskState outcome) const {
  if (cancelling_.contains(job.id) || task.attempts >= kAttemptsMax) return false;
  switch (outcome) {
    case TaskState::kFailed:
    case TaskState::kTimedOut:
    case TaskState::kOomKilled:
      return uint32_t{task.attempts} - task.lost - task.lost_free <= job.spec.retries;
    case TaskState::kLost: return task.lost <= limits_.lost_requeues_max;
    default: return false;
  }
}

// Queued tasks are exactly the fresh ones at or after next_fresh and the listed requeued
// ones, so this costs O(queued), not O(count).
void Cluster::cancel_queued(Job& job) {
  for (size_t i = job.requeued_head; i < job.requeued.size(); ++i) {
    set_task_state(job, job.requeued[i], TaskState::kCancelled);
  }
  for (uint32_t i = job.next_fresh; i < job.tasks.size(); ++i) {
    if (is_fresh(job.tasks[i])) set_task_state(job, i, TaskState::kCancelled);
  }
  std::vector<uint32_t>().swap(job.requeued);
  job.requeued_head = 0;
  job.next_fresh = static_cast<uint32_t>(job.tasks.size());
  SCHED_CHECK(job.state_counts[static_cast<size_t>(TaskState::kQueued)] == 0);
}

// Whether it is runnable (and under which fair-share key) is refresh()'s to work out.
void Cluster::sync_runnable(const Job& job) {
  mark_job(job);
}

void Cluster::count_spread(const Job& job, NodeId node, int delta) {
  SpreadRunning& sr = spread_running_[job.id];
  uint32_t& count = sr.per_node[node];
  SCHED_CHECK(delta > 0 || count > 0);
  auto level = [&sr](uint32_t n, int by) {
    if (n == 0) return;
    uint32_t& nodes = sr.levels[n];
    nodes = by > 0 ? nodes + 1 : nodes - 1;
    if (nodes == 0) sr.levels.erase(n);
  };
  level(count, -1);
  count = delta > 0 ? count + 1 : count - 1;
  level(count, +1);
  if (count == 0) sr.per_node.erase(node);
  if (sr.per_node.empty()) spread_running_.erase(job.id);
}

// Sorted, duplicates dropped: the key of the job's node class (placement.cc).
void Cluster::normalize_constraints(JobSpec& spec) {
  auto& c = spec.constraints;
  if (c.size() < 2) return;
  std::sort(c.begin(), c.end());
  c.erase(std::unique(c.begin(), c.end()), c.end());
}

// Recomputes a live job's state from its task counts; returns true when it just ended.
bool Cluster::settle(Job& job, uint64_t now_ms) {
  SCHED_CHECK(!job_final(job.state));
  const auto& c = job.state_counts;
  uint32_t queued = c[static_cast<size_t>(TaskState::kQueued)];
  uint32_t running = c[static_cast<size_t>(TaskState::kRunning)];
  if (queued + running > 0) {
    job.state = queued == job.spec.count ? JobState::kQueued : JobState::kRunning;
    return false;
  }
  if (c[static_cast<size_t>(TaskState::kSucceeded)] == job.spec.count) {
    job.state = JobState::kSucceeded;
  } else if (cancelling_.contains(job.id) || c[static_cast<size_t>(TaskState::kCancelled)] > 0) {
    job.state = JobState::kCancelled;
  } else {
    job.state = JobState::kFailed;
  }
  job.finished_ms = now_ms;
  SCHED_CHECK(live_jobs_ > 0);
  --live_jobs_;
  cancelling_.erase(job.id);
  mark_job(job);
  return true;
}

// A worklist, not recursion: a chain of `after` jobs can be as long as jobs_max.
void Cluster::release_dependents(JobId ended, uint64_t now_ms) {
  std::vector<JobId> work{ended};
  while (!work.empty()) {
    JobId id = work.back();
    work.pop_back();
    bool succeeded = jobs_.at(id).state == JobState::kSucceeded;
    auto [first, last] = dependents_.equal_range(id);
    for (auto it = first; it != last; ++it) {
      auto dep_it = jobs_.find(it->second);
      // Ended while it waited (cancelled), and maybe pruned since.
      if (dep_it == jobs_.end() || job_final(dep_it->second.state)) continue;
      Job& dependent = dep_it->second;
      touch_all(dependent);
      if (!succeeded) {
        cancel_queued(dependent);
        if (settle(dependent, now_ms)) work.push_back(dependent.id);
      } else {
        dependent.waiting_since_ms = now_ms;  // runnable from now
      }
      sync_runnable(dependent);
    }
    dependents_.erase(first, last);
  }
}

}  // namespace cardnode::sched

// ----------------------------------------------------------------------- restore

namespace cardnode::sched {

std::expected<void, SchedError> Cluster::restore_node(NodeSpec spec, bool removed, bool draining,
                                                      uint64_t drain_deadline_ms) {
  if (!valid_node_spec(spec)) return std::unexpected(SchedError::kBadImage);
  if (!removed && node_by_name(spec.name) != nullptr) return std::unexpected(SchedError::kBadImage);
  Node n;
  n.id = static_cast<NodeId>(nodes_.size());
  n.spec = std::move(spec);
  n.removed = removed;
  n.draining = draining && !removed;
  n.drain_deadline_ms = n.draining ? drain_deadline_ms : 0;
  if (removed) n.state = NodeState::kDown;
  if (!removed) by_name_.emplace(n.spec.name, n.id);
  nodes_.push_back(std::move(n));
  if (!removed) ++live_nodes_;
  add_slot();
  return {};
}

std::expected<void, SchedError> Cluster::restore_job(Job job, bool cancelling) {
  if (job.id == 0 || jobs_.contains(job.id)) return std::unexpected(SchedError::kBadImage);
  if (!validate(job.spec) || job.tasks.size() != job.spec.count) {
    return std::unexpected(SchedError::kBadImage);
  }
  if (!job.usage.empty() && job.usage.size() != job.tasks.size()) {
    return std::unexpected(SchedError::kBadImage);
  }
  job.state_counts = {};
  job.next_fresh = static_cast<uint32_t>(job.tasks.size());
  for (uint32_t i = 0; i < job.tasks.size(); ++i) {
    const Task& t = job.tasks[i];
    if (static_cast<size_t>(t.state) >= kTaskStateCount) {
      return std::unexpected(SchedError::kBadImage);
    }
    // Only a queued task, or one cancelled while queued, has never started; every other
    // state names the node of an attempt.
    bool never_started_ok = t.state == TaskState::kQueued || t.state == TaskState::kCancelled;
    if (t.attempts == 0 && (!never_started_ok || t.lost + t.lost_free > 0)) {
      return std::unexpected(SchedError::kBadImage);
    }
    if (t.lost + t.lost_free > t.attempts) return std::unexpected(SchedError::kBadImage);
    if (t.attempts > 0 && t.node >= nodes_.size()) return std::unexpected(SchedError::kBadImage);
    if (t.state == TaskState::kRunning && nodes_[t.node].removed) {
      return std::unexpected(SchedError::kBadImage);
    }
    ++job.state_counts[static_cast<size_t>(t.state)];
    if (is_fresh(t) && job.next_fresh == job.tasks.size()) job.next_fresh = i;
  }
  for (const auto& [index, ms] : job.started_ms) {
    if (index >= job.tasks.size() || job.tasks[index].state != TaskState::kRunning) {
      return std::unexpected(SchedError::kBadImage);
    }
  }
  for (uint32_t index : job.standby) {
    if (index >= job.tasks.size() || job.tasks[index].state != TaskState::kRunning ||
        job.started_ms.contains(index)) {
      return std::unexpected(SchedError::kBadImage);
    }
  }
  job.quick = false;
  if (job.earlier.size() > kEarlierTasksPerJobMax) return std::unexpected(SchedError::kBadImage);
  for (const auto& [index, list] : job.earlier) {
    if (index >= job.tasks.size() || list.empty() || list.size() > kEarlierPerTaskMax) {
      return std::unexpected(SchedError::kBadImage);
    }
    // A task queued again has its last attempt among the earlier ones, and so may one
    // cancelled (it may have been cancelled while queued again); any other, not.
    const Task& t = job.tasks[index];
    const bool may_hold_last = t.state == TaskState::kQueued || t.state == TaskState::kCancelled;
    const int last = may_hold_last ? int{t.attempts} : int{t.attempts} - 1;
    uint8_t previous = 0;
    for (const EarlierAttempt& a : list) {
      // Attempts in order, each ended, on a known node.
      if (a.attempt <= previous || int{a.attempt} > last || !is_final(a.state) ||
          a.state == TaskState::kSucceeded || a.state == TaskState::kCancelled ||
          a.node >= nodes_.size()) {
        return std::unexpected(SchedError::kBadImage);
      }
      previous = a.attempt;
    }
  }
  job.requeued_head = 0;
  uint32_t queued_again = 0;
  std::vector<bool> listed(job.tasks.size());
  for (uint32_t i : job.requeued) {
    if (i >= job.tasks.size() || job.tasks[i].state != TaskState::kQueued ||
        job.tasks[i].attempts == 0 || listed[i]) {
      return std::unexpected(SchedError::kBadImage);
    }
    listed[i] = true;
    ++queued_again;
  }
  if (static_cast<uint8_t>(job.state) > static_cast<uint8_t>(JobState::kCancelled)) {
    return std::unexpected(SchedError::kBadImage);
  }
  uint32_t queued = job.state_counts[static_cast<size_t>(TaskState::kQueued)];
  bool all_succeeded =
      job.state_counts[static_cast<size_t>(TaskState::kSucceeded)] == job.spec.count;
  if ((job.state == JobState::kSucceeded) != all_succeeded) {
    return std::unexpected(SchedError::kBadImage);
  }
  if (!is_final(job.state) && (job.state == JobState::kQueued) != (queued == job.spec.count)) {
    return std::unexpected(SchedError::kBadImage);
  }
  uint32_t fresh = 0;
  for (uint32_t i = job.next_fresh; i < job.tasks.size(); ++i) fresh += is_fresh(job.tasks[i]);
  if (queued != fresh + queued_again) return std::unexpected(SchedError::kBadImage);
  bool ended = is_final(job.state);
  uint32_t open = queued + job.state_counts[static_cast<size_t>(TaskState::kRunning)];
  if (ended != (open == 0)) return std::unexpected(SchedError::kBadImage);
  if (cancelling && ended) return std::unexpected(SchedError::kBadImage);
  if (cancelling) cancelling_.insert(job.id);
  normalize_constraints(job.spec);
  job.waiting_since_ms = std::max(job.waiting_since_ms, job.submitted_ms);
  job.queue_dirty = false;
  job.queued_in_run = false;
  job.run_key_running = 0;
  JobId id = job.id;
  jobs_.emplace(id, std::move(job));
  return {};
}

std::expected<void, SchedError> Cluster::finish_restore(JobId last_job_id) {
  if (!jobs_.empty() && jobs_.rbegin()->first > last_job_id) {
    return std::unexpected(SchedError::kBadImage);
  }
  last_job_id_ = last_job_id;
  queued_tasks_ = 0;
  live_jobs_ = 0;
  runnable_.clear();
  dirty_jobs_.clear();
  dependents_.clear();
  spread_running_.clear();
  standby_holders_.clear();
  for (Node& n : nodes_) {
    n.used = {}, n.running = 0;
    n.standby.clear(), n.standby_used = {};
    mark_node(n.id);
  }
  for (auto& [id, job] : jobs_) {
    queued_tasks_ += job.state_counts[static_cast<size_t>(TaskState::kQueued)];
    uint32_t running = job.state_counts[static_cast<size_t>(TaskState::kRunning)];
    for (uint32_t i = 0; i < job.tasks.size() && running > 0; ++i) {
      const Task& t = job.tasks[i];
      if (t.state != TaskState::kRunning) continue;
      --running;
      Node& n = nodes_[t.node];
      if (job.standby.contains(i)) {
        n.standby.insert({id, i});
        standby_holders_.insert(t.node);
        n.standby_used.cpu_millis += job.spec.per_task.cpu_millis;
        n.standby_used.mem_bytes += job.spec.per_task.mem_bytes;
        continue;
      }
      n.used.cpu_millis += job.spec.per_task.cpu_millis;
      n.used.mem_bytes += job.spec.per_task.mem_bytes;
      ++n.running;
      if (job.spec.spread) count_spread(job, t.node, +1);
    }
    job.queue_dirty = false;
    job.queued_in_run = false;
    if (job_final(job.state)) continue;
    ++live_jobs_;
    if (waiting(job)) dependents_.emplace(job.spec.after, id);
    sync_runnable(job);
  }
  for (Node& n : nodes_) recount_running_jobs(n);
  return {};
}

}  // namespace cardnode::sched
