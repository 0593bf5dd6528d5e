// The cluster state machine (see cluster.h). Every mutation funnels task state changes
// through set_task_state() and job state changes through settle(), so the counters
// (state_counts, queued_tasks_, live_jobs_, runnable_) have one place each to go wrong.
//
// Queue representation: a job's queued tasks are the fresh ones (attempts == 0, all at
// indexes >= next_fresh) plus the requeued ones (listed in requeued[requeued_head..], FIFO).
// A replayed start() may take any queued index, so next_fresh can have holes behind it
// (tasks already started); they are skipped lazily, which costs O(1) amortized per task.
#include "scheduler/cluster.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <limits>

// Crash on a broken invariant. Not proto/error.h's CARDNODE_CHECK: the scheduler links
// nothing but the standard library.
#define SCHED_CHECK(cond)                                                                  \
  do {                                                                                     \
    if (!(cond)) [[unlikely]] {                                                            \
      (void)std::fputs("scheduler invariant failed: " #cond " at " __FILE__ "\n", stderr); \
      std::abort();                                                                        \
    }                                                                                      \
  } while (0)

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

std::pair<uint32_t, JobId> runnable_key(const Job& job) {
  return {kPriorityMax - job.spec.priority, job.id};
}

uint32_t free_cpu(const Node& n, const Resources& used) {
  return used.cpu_millis >= n.spec.capacity.cpu_millis
             ? 0
             : n.spec.capacity.cpu_millis - used.cpu_millis;
}

uint64_t free_mem(const Node& n, const Resources& used) {
  return used.mem_bytes >= n.spec.capacity.mem_bytes ? 0
                                                     : n.spec.capacity.mem_bytes - used.mem_bytes;
}

// Takes new tasks at all (capacity and the executor's own task limit are checked against
// a plan's running view in PlanView).
bool placeable(const Node& n) {
  return n.state == NodeState::kReady && !n.removed && !n.draining && n.hold == NodeHold::kNone;
}

bool labels_match(const Node& n, const JobSpec& spec) {
  for (const auto& [key, value] : spec.constraints) {
    auto it = n.spec.labels.find(key);
    if (it == n.spec.labels.end() || it->second != value) return false;
  }
  return true;
}

// Walks one job's queued tasks in placement order (requeued FIFO, then fresh) without
// changing the job, so plan() stays const.
class QueueCursor {
 public:
  explicit QueueCursor(const Job& job)
      : job_(job), requeued_(job.requeued_head), fresh_(job.next_fresh) {}

  bool next(uint32_t* index) {
    while (requeued_ < job_.requeued.size()) {
      uint32_t i = job_.requeued[requeued_++];
      if (job_.tasks[i].state == TaskState::kQueued) return *index = i, true;
    }
    while (fresh_ < job_.tasks.size()) {
      uint32_t i = fresh_++;
      if (is_fresh(job_.tasks[i])) return *index = i, true;
    }
    return false;
  }

 private:
  const Job& job_;
  size_t requeued_;
  size_t fresh_;
};

// plan()'s scratch view of the nodes: their use including this plan's placements.
class PlanView {
 public:
  explicit PlanView(const std::vector<Node>& nodes) : nodes_(nodes) {
    used_.reserve(nodes.size());
    running_.reserve(nodes.size());
    for (const Node& n : nodes) {
      used_.push_back(n.used);
      running_.push_back(n.running);
    }
    refresh_max_free();
  }

  // Cheap pre-check before looking at a job's constraints node by node.
  bool may_fit(const Resources& need) const {
    return need.cpu_millis <= max_free_cpu_ && need.mem_bytes <= max_free_mem_;
  }
  bool full() const { return max_free_cpu_ == 0 || max_free_mem_ == 0; }

  void select_candidates(const JobSpec& spec, std::vector<NodeId>* out) const {
    out->clear();
    for (const Node& n : nodes_) {
      if (placeable(n) && labels_match(n, spec)) out->push_back(n.id);
    }
  }

  // Most free CPU, then most free memory, then the lowest id.
  bool best_node(const std::vector<NodeId>& candidates, const Resources& need, NodeId* best) const {
    bool found = false;
    uint32_t best_cpu = 0;
    uint64_t best_mem = 0;
    for (NodeId id : candidates) {
      if (at_task_limit(id)) continue;  // the node said it runs no more at once
      uint32_t cpu = free_cpu(nodes_[id], used_[id]);
      uint64_t mem = free_mem(nodes_[id], used_[id]);
      if (cpu < need.cpu_millis || mem < need.mem_bytes) continue;
      if (!found || cpu > best_cpu || (cpu == best_cpu && mem > best_mem)) {
        found = true, *best = id, best_cpu = cpu, best_mem = mem;
      }
    }
    return found;
  }

  void take(NodeId id, const Resources& need) {
    used_[id].cpu_millis += need.cpu_millis;
    used_[id].mem_bytes += need.mem_bytes;
    ++running_[id];
    refresh_max_free();
  }

 private:
  bool at_task_limit(NodeId id) const {
    uint32_t max = nodes_[id].spec.tasks_max;
    return max != 0 && running_[id] >= max;
  }

  void refresh_max_free() {
    max_free_cpu_ = 0;
    max_free_mem_ = 0;
    for (const Node& n : nodes_) {
      if (!placeable(n) || at_task_limit(n.id)) continue;
      max_free_cpu_ = std::max(max_free_cpu_, free_cpu(n, used_[n.id]));
      max_free_mem_ = std::max(max_free_mem_, free_mem(n, used_[n.id]));
    }
  }

  const std::vector<Node>& nodes_;
  std::vector<Resources> used_;
  std::vector<uint32_t> running_;
  uint32_t max_free_cpu_ = 0;
  uint64_t max_free_mem_ = 0;
};

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

const char* node_state_name(NodeState s) {
  switch (s) {
    case NodeState::kReady: return "ready";
    case NodeState::kDraining: return "draining";
    case NodeState::kDown: return "down";
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
  nodes_.push_back(std::move(n));
  ++live_nodes_;
  return nodes_.back().id;
}

std::expected<void, SchedError> Cluster::update_node(NodeId id, NodeSpec spec) {
  if (id >= nodes_.size() || nodes_[id].removed) return std::unexpected(SchedError::kUnknownNode);
  if (!valid_node_spec(spec)) return std::unexpected(SchedError::kInvalidSpec);
  const Node* same_name = node_by_name(spec.name);
  if (same_name != nullptr && same_name->id != id) {
    return std::unexpected(SchedError::kDuplicateId);
  }
  nodes_[id].spec = std::move(spec);
  return {};
}

std::expected<void, SchedError> Cluster::remove_node(NodeId id) {
  if (id >= nodes_.size() || nodes_[id].removed) return std::unexpected(SchedError::kUnknownNode);
  if (nodes_[id].running > 0) return std::unexpected(SchedError::kBadTransition);
  nodes_[id].removed = true;
  nodes_[id].state = NodeState::kDown;
  SCHED_CHECK(live_nodes_ > 0);
  --live_nodes_;
  return {};
}

std::expected<void, SchedError> Cluster::set_draining(NodeId id, bool draining,
                                                      uint64_t deadline_ms) {
  if (id >= nodes_.size() || nodes_[id].removed) return std::unexpected(SchedError::kUnknownNode);
  nodes_[id].draining = draining;
  nodes_[id].drain_deadline_ms = draining ? deadline_ms : 0;
  return {};
}

std::expected<void, SchedError> Cluster::set_node_hold(NodeId id, NodeHold hold) {
  if (id >= nodes_.size() || nodes_[id].removed) return std::unexpected(SchedError::kUnknownNode);
  nodes_[id].hold = hold;
  return {};
}

std::expected<void, SchedError> Cluster::set_node_state(NodeId id, NodeState state) {
  if (id >= nodes_.size() || nodes_[id].removed) return std::unexpected(SchedError::kUnknownNode);
  nodes_[id].state = state;
  return {};
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
  job.submitted_ms = now_ms;
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

// ------------------------------------------------------------------------- plan

std::vector<Placement> Cluster::plan(uint32_t max) const {
  std::vector<Placement> out;
  if (max == 0 || nodes_.empty() || runnable_.empty()) return out;
  PlanView view(nodes_);
  std::vector<NodeId> candidates;
  candidates.reserve(nodes_.size());
  // No reservation: a job whose next task fits nowhere is passed over, so a stream of
  // small jobs can starve a large one. Reserving nodes for the head job is future work.
  // Cost: O(placements * nodes) plus one step per runnable job passed over.
  for (const auto& [rank, id] : runnable_) {
    if (out.size() >= max || view.full()) break;
    const Job& job = jobs_.at(id);
    const Resources& need = job.spec.per_task;
    if (!view.may_fit(need)) continue;
    view.select_candidates(job.spec, &candidates);
    QueueCursor cursor(job);
    uint32_t index = 0;
    NodeId node = 0;
    // All tasks of a job need the same, so the first that fits nowhere ends the job.
    while (out.size() < max && cursor.next(&index) && view.best_node(candidates, need, &node)) {
      view.take(node, need);
      out.push_back({{id, index}, node, uint32_t{job.tasks[index].attempts} + 1});
    }
  }
  return out;
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
  node.used.cpu_millis += job->spec.per_task.cpu_millis;
  node.used.mem_bytes += job->spec.per_task.mem_bytes;
  ++node.running;

  bool ended = settle(*job, now_ms);
  SCHED_CHECK(!ended);  // it has a running task now
  sync_runnable(*job);
  return {};
}

std::expected<TaskState, SchedError> Cluster::finish(TaskRef t, Outcome o, uint64_t now_ms) {
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
  SCHED_CHECK(node.running > 0 && node.used.cpu_millis >= need.cpu_millis &&
              node.used.mem_bytes >= need.mem_bytes);
  node.used.cpu_millis -= need.cpu_millis;
  node.used.mem_bytes -= need.mem_bytes;
  --node.running;

  task.exit_code = o.exit_code;
  task.signal = static_cast<int8_t>(std::clamp<int32_t>(o.signal, INT8_MIN, INT8_MAX));
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
  set_task_state(*job, t.index, to);
  if (to == TaskState::kQueued) job->requeued.push_back(t.index);
  if (settle(*job, now_ms)) release_dependents(job->id, now_ms);
  sync_runnable(*job);
  return to;
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
  // A final job is in no index: settle() took it out of runnable_ and cancelling_, and
  // release_dependents() out of dependents_.
  jobs_.erase(it);
  return {};
}

std::vector<TaskRef> Cluster::running_on(NodeId id) const {
  std::vector<TaskRef> out;
  if (id >= nodes_.size() || nodes_[id].running == 0) return out;
  // A scan rather than a per-node index: boards vanish rarely, and an index would cost
  // every start() and finish().
  for (const auto& [job_id, job] : jobs_) {
    uint32_t running = job.state_counts[static_cast<size_t>(TaskState::kRunning)];
    for (uint32_t i = 0; i < job.tasks.size() && running > 0; ++i) {
      if (job.tasks[i].state != TaskState::kRunning) continue;
      --running;
      if (job.tasks[i].node == id) out.push_back({job_id, i});
    }
    if (out.size() == nodes_[id].running) break;
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
  for (const Node& n : nodes_) {
    if (!n.removed && n.spec.name == name) return &n;
  }
  return nullptr;
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

void Cluster::sync_runnable(const Job& job) {
  bool runnable = !job_final(job.state) &&
                  job.state_counts[static_cast<size_t>(TaskState::kQueued)] > 0 && !waiting(job);
  if (runnable) {
    runnable_.insert(runnable_key(job));
  } else {
    runnable_.erase(runnable_key(job));
  }
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
  runnable_.erase(runnable_key(job));
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
  nodes_.push_back(std::move(n));
  if (!removed) ++live_nodes_;
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
  dependents_.clear();
  for (Node& n : nodes_) n.used = {}, n.running = 0;
  for (auto& [id, job] : jobs_) {
    queued_tasks_ += job.state_counts[static_cast<size_t>(TaskState::kQueued)];
    uint32_t running = job.state_counts[static_cast<size_t>(TaskState::kRunning)];
    for (uint32_t i = 0; i < job.tasks.size() && running > 0; ++i) {
      const Task& t = job.tasks[i];
      if (t.state != TaskState::kRunning) continue;
      --running;
      Node& n = nodes_[t.node];
      n.used.cpu_millis += job.spec.per_task.cpu_millis;
      n.used.mem_bytes += job.spec.per_task.mem_bytes;
      ++n.running;
    }
    if (job_final(job.state)) continue;
    ++live_jobs_;
    if (waiting(job)) dependents_.emplace(job.spec.after, id);
    sync_runnable(job);
  }
  return {};
}

}  // namespace cardnode::sched
