// Placement (cluster.h, plan()): the free-room indexes, the run queue's fair-share order,
// and plan() itself.
//
// Free room. Every node has one RoomKey (free CPU, free memory, id), or (0, 0, id) while it
// takes nothing (down, draining, held, at its task limit, or out of CPU or memory), and
// that key sits in the index of every class the node belongs to: class 0 holds every node,
// each other class the nodes whose labels match one constraint set. Packing a task that
// needs (c, m) is then a lower_bound to (c, m) and a walk up: an entry short of memory
// sends the walk to (its CPU, m), so the cost is one O(log n) step per free-CPU level that
// has no board with the memory, and boards at (0, 0) are never met. Keeping every node in
// its indexes, with a zero key when it takes nothing, means a warm index never allocates:
// a change of room is extract + insert of the same node handle.
//
// Laziness. Mutators mark a node or a job dirty (O(1)); refresh() re-keys what was marked
// before plan() or a query reads the indexes. Within a plan, placements count in each
// node's scratch (NodeSlot::plan_used), its key is re-keyed when the plan moves on from
// it, and end_plan() puts every touched node back at its committed key.
#include <algorithm>
#include <limits>

#include "scheduler/check.h"
#include "scheduler/cluster.h"

namespace cardnode::sched {
namespace {

constexpr uint32_t kPriorityMax = 100;
constexpr size_t kRunningIndex = static_cast<size_t>(TaskState::kRunning);

bool job_final(JobState s) {
  return s >= JobState::kSucceeded;
}

bool is_fresh(const Task& t) {
  return t.state == TaskState::kQueued && t.attempts == 0;
}

uint32_t rank_of(const Job& job) {
  return kPriorityMax - job.spec.priority;
}

template <typename T>
T short_of(T need, T free) {
  return need > free ? need - free : 0;
}

}  // namespace

// ----------------------------------------------------------------- marking (mutators)

void Cluster::mark_node(NodeId id, bool labels_changed) {
  NodeSlot& s = slots_[id];
  s.classes_stale |= labels_changed;
  if (!s.dirty) {
    s.dirty = true;
    dirty_nodes_.push_back(id);
  }
}

void Cluster::mark_job(const Job& job) {
  if (job.queue_dirty) return;
  job.queue_dirty = true;
  dirty_jobs_.push_back(job.id);
  // Live jobs are listed once each, but a job pruned before the next refresh() leaves its
  // id behind: a replay of many submits and prunes with no plan() between would pile them
  // up. Dropping them when they could outnumber the jobs keeps the list O(jobs), amortized.
  if (dirty_jobs_.size() > 2 * jobs_.size() + 64) {
    std::erase_if(dirty_jobs_, [this](JobId id) { return !jobs_.contains(id); });
  }
}

// ----------------------------------------------------------------------- refresh

bool Cluster::takes_work(const Node& n) const {
  return n.state == NodeState::kReady && !n.removed && !n.draining && n.hold == NodeHold::kNone;
}

Cluster::RoomKey Cluster::room_key(NodeId id) const {
  const Node& n = nodes_[id];
  const NodeSlot& s = slots_[id];
  if (!takes_work(n)) return {0, 0, id};
  if (n.spec.tasks_max != 0 && n.running + s.plan_running >= n.spec.tasks_max) return {0, 0, id};
  // 64-bit sums: a replayed start may have over-committed a node whose capacity shrank.
  const uint64_t cpu_used = uint64_t{n.used.cpu_millis} + s.plan_used.cpu_millis;
  const uint64_t mem_used = n.used.mem_bytes + s.plan_used.mem_bytes;
  const uint64_t cpu_cap = n.spec.capacity.cpu_millis;
  const uint64_t mem_cap = n.spec.capacity.mem_bytes;
  if (cpu_used >= cpu_cap || mem_used >= mem_cap) return {0, 0, id};
  return {static_cast<uint32_t>(cpu_cap - cpu_used), mem_cap - mem_used, id};
}

void Cluster::rekey(NodeId id, RoomKey key) const {
  NodeSlot& s = slots_[id];
  if (s.key == key || s.gone) return;
  auto move = [&](RoomIndex& index) {
    auto handle = index.extract(s.key);
    SCHED_CHECK(!handle.empty());
    handle.value() = key;
    auto inserted = index.insert(std::move(handle));
    SCHED_CHECK(inserted.inserted);
  };
  move(classes_[0].room);
  for (uint16_t c : s.classes) move(classes_[c].room);
  s.key = key;
}

void Cluster::reindex(NodeId id) const {
  NodeSlot& s = slots_[id];
  if (s.classes_stale) {
    for (uint16_t c : s.classes) classes_[c].room.erase(s.key);
    s.classes.clear();
    const Node& n = nodes_[id];
    for (uint16_t c = 1; c < class_slots(); ++c) {
      if (!n.removed && classes_[c].live && matches(n, classes_[c].constraints)) {
        s.classes.push_back(c);
        classes_[c].room.insert(s.key);
      }
    }
    s.classes_stale = false;
  }
  if (nodes_[id].removed && !s.gone) {  // for good: ids are never reused
    classes_[0].room.erase(s.key);
    s.gone = true;
  }
  rekey(id, room_key(id));
}

void Cluster::refresh() const {
  for (NodeId id : dirty_nodes_) {
    slots_[id].dirty = false;
    reindex(id);
  }
  dirty_nodes_.clear();
  for (JobId id : dirty_jobs_) {
    auto it = jobs_.find(id);
    if (it == jobs_.end()) continue;  // pruned: prune() took it out of the queue
    const Job& job = it->second;
    job.queue_dirty = false;
    const uint32_t running = job.state_counts[static_cast<size_t>(TaskState::kRunning)];
    const bool runnable = !job_final(job.state) &&
                          job.state_counts[static_cast<size_t>(TaskState::kQueued)] > 0 &&
                          !waiting(job);
    const RunKey old{rank_of(job), job.run_key_running, job.id};
    if (job.queued_in_run && runnable) {
      if (job.run_key_running == running) continue;
      auto handle = runnable_.extract(old);
      SCHED_CHECK(!handle.empty());
      handle.value().running = running;
      runnable_.insert(std::move(handle));
    } else if (job.queued_in_run) {
      runnable_.erase(old);
    } else if (runnable) {
      runnable_.insert({rank_of(job), running, job.id});
    }
    job.queued_in_run = runnable;
    job.run_key_running = running;
  }
  dirty_jobs_.clear();
}

// ----------------------------------------------------------------------- classes

bool Cluster::matches(const Node& n, const Constraints& constraints) {
  for (const auto& [key, value] : constraints) {
    auto it = n.spec.labels.find(key);
    if (it == n.spec.labels.end() || it->second != value) return false;
  }
  return true;
}

// The class of a (normalized) constraint set, made when `create` and there is room;
// -1: none (the caller checks labels node by node, with the same result, only slower).
int32_t Cluster::class_for(const Constraints& constraints, bool create) const {
  if (constraints.empty()) return 0;
  auto it = class_of_.find(constraints);
  if (it != class_of_.end()) {
    classes_[it->second].last_plan = plan_serial_;
    return it->second;
  }
  return create ? add_class(constraints) : -1;
}

int32_t Cluster::add_class(const Constraints& constraints) const {
  uint16_t slot = 0;
  if (class_of_.size() < limits_.constraint_classes_max) {
    for (uint16_t c = 1; c < class_slots() && slot == 0; ++c) {
      if (!classes_[c].live) slot = c;
    }
    if (slot == 0) {
      SCHED_CHECK(classes_.size() < classes_.capacity());  // references into it stay valid
      slot = static_cast<uint16_t>(classes_.size());
      classes_.emplace_back();
    }
  } else {
    // The least recently used class, if this plan has not used it (its index may be in use).
    for (uint16_t c = 1; c < class_slots(); ++c) {
      if (classes_[c].last_plan < plan_serial_ &&
          (slot == 0 || classes_[c].last_plan < classes_[slot].last_plan)) {
        slot = c;
      }
    }
    if (slot == 0) return -1;
    drop_class(slot);
  }
  NodeClass& cls = classes_[slot];
  cls.constraints = constraints;
  cls.live = true;
  cls.last_plan = plan_serial_;
  for (const Node& n : nodes_) {
    NodeSlot& s = slots_[n.id];
    // A node whose labels changed joins at its next reindex(), which looks at every class.
    if (s.gone || s.classes_stale || !matches(n, constraints)) continue;
    s.classes.push_back(slot);
    cls.room.insert(s.key);
  }
  class_of_.emplace(constraints, slot);
  return slot;
}

void Cluster::drop_class(uint16_t slot) const {
  NodeClass& cls = classes_[slot];
  for (const RoomKey& k : cls.room) {
    auto& list = slots_[k.id].classes;
    list.erase(std::remove(list.begin(), list.end(), slot), list.end());
  }
  class_of_.erase(cls.constraints);
  cls = NodeClass{};
}

// -------------------------------------------------------------------------- plan

std::vector<Placement> Cluster::plan(uint32_t max, uint64_t now_ms) const {
  std::vector<Placement> out;
  plan(max, now_ms, &out);
  return out;
}

void Cluster::plan(uint32_t max, uint64_t now_ms, std::vector<Placement>* out) const {
  plan_into({max, now_ms}, out, nullptr);
}

namespace {

// Fair share within a priority: fewer running tasks first, then the lower id.
bool goes_before(uint32_t running_a, JobId a, uint32_t running_b, JobId b) {
  return running_a != running_b ? running_a < running_b : a < b;
}

}  // namespace

// Jobs are met rank by rank (priority). Within a rank, a heap holds the jobs in contention,
// fed lazily from runnable_ (already in (running, id) order), so a plan touches only the
// jobs that place or block, never the whole rank. The job on top places until another one
// would go before it, then goes back on the heap; a job that blocks leaves it (and may
// reserve a board).
void Cluster::plan_into(PlanLimit limit, std::vector<Placement>* out, Trace* trace) const {
  out->clear();
  refresh();
  reserved_.clear();
  if (limit.max == 0 || runnable_.empty()) return;
  ++plan_serial_;
  auto heap_less = [](const Contender& a, const Contender& b) {
    return goes_before(b.running, b.job->id, a.running, a.job->id);  // a min-heap
  };
  auto any_room = [this] {
    flush_pending();
    return most_free_cpu() != 0;
  };
  // A traced plan (why_waiting) goes on when no board has room: reservations still count.
  const bool exhaustive = trace != nullptr;
  auto next = runnable_.begin();
  bool done = false;
  while (!done && next != runnable_.end() && out->size() < limit.max &&
         (exhaustive || any_room())) {
    const uint32_t rank = next->rank;
    heap_.clear();
    while (!done && out->size() < limit.max) {
      while (next != runnable_.end() && next->rank == rank &&
             (heap_.empty() ||
              goes_before(next->running, next->id, heap_.front().running, heap_.front().job->id))) {
        const Job& job = jobs_.find(next->id)->second;
        heap_.push_back({&job, next->running, job.requeued_head, job.next_fresh,
                         class_for(job.spec.constraints, true)});
        std::push_heap(heap_.begin(), heap_.end(), heap_less);
        ++next;
      }
      if (heap_.empty()) break;
      std::pop_heap(heap_.begin(), heap_.end(), heap_less);
      Contender& c = heap_.back();
      const bool traced = trace != nullptr && trace->job == c.job->id;
      bool stays = true;
      for (;;) {
        const size_t before = out->size();
        const Step step = place_one(c, out);
        if (step == Step::kNoTask) {
          stays = false;
          break;
        }
        if (step == Step::kNoRoom) {
          // Starved: it waited past the bound and places nothing in this plan either.
          const uint64_t since = c.job->waiting_since_ms;
          const bool starved = limit.now_ms >= since &&
                               limit.now_ms - since >= limits_.starve_after_ms &&
                               c.running == c.job->state_counts[kRunningIndex];
          const bool reserved = starved && reserve(c);
          if (traced) {
            *trace = {c.job->id, true, false, 0, reserved, reserved ? reserved_.back().node : 0};
          }
          stays = false;
          break;
        }
        if (traced) {
          *trace = {c.job->id, true, true, static_cast<uint32_t>(before), false, 0};
          break;
        }
        if (out->size() >= limit.max) break;
        // Yield once another contender, or the next job of the rank, goes first.
        if (heap_.size() > 1 &&
            !goes_before(c.running, c.job->id, heap_.front().running, heap_.front().job->id)) {
          break;
        }
        if (next != runnable_.end() && next->rank == rank &&
            !goes_before(c.running, c.job->id, next->running, next->id)) {
          break;
        }
      }
      done = traced;
      if (stays) {
        std::push_heap(heap_.begin(), heap_.end(), heap_less);
      } else {
        heap_.pop_back();
        if (!exhaustive && !any_room()) done = true;
      }
    }
  }
  if (trace == nullptr) plan_standbys(limit.max, out);
  end_plan();
}

// See set_standby_node(). The job's standbys follow its placements of this plan in its
// queue order; a board gets them while it is full for the job and runs nothing else (so
// each of its ends promotes one), up to one per task of it there (this plan's counted: with
// one job waiting, all of them are its) and as many as fit its capacity beside those it has.
void Cluster::plan_standbys(uint32_t max, std::vector<Placement>* out) const {
  if (standby_nodes_.empty() || runnable_.size() != 1 || out->size() >= max) return;
  const Job& job = jobs_.find(runnable_.begin()->id)->second;
  if (!job.quick || job.spec.spread || cancelling_.contains(job.id)) return;
  Contender c{&job, 0, job.requeued_head, job.next_fresh, -1};
  uint32_t index = 0;
  for (const Placement& p : *out) {  // this plan's placements took the head of its queue
    if (p.task.job == job.id && !next_task(c, true, &index)) return;
  }
  const Resources& need = job.spec.per_task;
  for (NodeId id : standby_nodes_) {
    const Node& n = nodes_[id];
    if (!takes_work(n) || !matches(n, job.spec.constraints) || reserved_by_any(id) ||
        fits_now(id, job)) {
      continue;  // room left there is for plain placements
    }
    const uint32_t running = n.running + slots_[id].plan_running;
    auto it = n.running_jobs.find(job.id);
    const uint32_t mine = (it == n.running_jobs.end() ? 0 : it->second) + slots_[id].plan_running;
    if (mine == 0 || mine != running ||
        (!n.standby.empty() &&
         (n.standby.begin()->job != job.id || n.standby.rbegin()->job != job.id))) {
      continue;  // another job's tasks run or wait there
    }
    Resources layer = n.standby_used;
    size_t count = n.standby.size();
    while (count < running && out->size() < max &&
           uint64_t{layer.cpu_millis} + need.cpu_millis <= n.spec.capacity.cpu_millis &&
           layer.mem_bytes + need.mem_bytes <= n.spec.capacity.mem_bytes &&
           next_task(c, true, &index)) {
      out->push_back(
          {{job.id, index}, id, static_cast<uint16_t>(job.tasks[index].attempts + 1), true});
      layer.cpu_millis += need.cpu_millis;
      layer.mem_bytes += need.mem_bytes;
      ++count;
    }
  }
}

// Places the contender's next queued task, if it has one and it fits somewhere.
Cluster::Step Cluster::place_one(Contender& c, std::vector<Placement>* out) const {
  const Job& job = *c.job;
  while (c.requeued < job.requeued.size() &&
         job.tasks[job.requeued[c.requeued]].state != TaskState::kQueued) {
    ++c.requeued;
  }
  const bool again = c.requeued < job.requeued.size();
  if (!again) {
    while (c.fresh < job.tasks.size() && !is_fresh(job.tasks[c.fresh])) ++c.fresh;
    if (c.fresh >= job.tasks.size()) return Step::kNoTask;
  }
  auto [found, node] = find_node(c);
  if (!found) return Step::kNoRoom;
  const uint32_t index = again ? job.requeued[c.requeued++] : c.fresh++;
  take(node, job);
  out->push_back({{job.id, index}, node, static_cast<uint16_t>(job.tasks[index].attempts + 1)});
  ++c.running;
  return Step::kPlaced;
}

bool Cluster::next_task(Contender& c, bool take, uint32_t* index) const {
  const Job& job = *c.job;
  while (c.requeued < job.requeued.size() &&
         job.tasks[job.requeued[c.requeued]].state != TaskState::kQueued) {
    ++c.requeued;
  }
  if (c.requeued < job.requeued.size()) {
    *index = job.requeued[c.requeued];
    c.requeued += take ? 1 : 0;
    return true;
  }
  while (c.fresh < job.tasks.size() && !is_fresh(job.tasks[c.fresh])) ++c.fresh;
  if (c.fresh >= job.tasks.size()) return false;
  *index = c.fresh;
  c.fresh += take ? 1 : 0;
  return true;
}

std::tuple<bool, NodeId> Cluster::find_node(const Contender& c) const {
  const Resources& need = c.job->spec.per_task;
  if (!pending_ || pending_job_ != c.job->id || c.job->spec.spread) {
    flush_pending();
    // The most room any board has, CPU-wise: a quick no for a task larger than all.
    if (most_free_cpu() < need.cpu_millis) return {false, 0};
  }
  return c.job->spec.spread ? find_spread(c) : find_packed(c);
}

// The board of this job's previous placement stays the best while the task still fits
// there: its room shrank, and every board with less room did not fit before.
std::tuple<bool, NodeId> Cluster::find_packed(const Contender& c) const {
  const Job& job = *c.job;
  const Resources& need = job.spec.per_task;
  if (pending_ && pending_job_ == job.id) {
    if (fits_now(pending_node_, job) && !reserved_for_other(pending_node_, job.id)) {
      return {true, pending_node_};
    }
    flush_pending();
  }
  const RoomIndex& index = classes_[c.cls < 0 ? 0 : c.cls].room;
  auto it = index.lower_bound({need.cpu_millis, need.mem_bytes, 0});
  while (it != index.end()) {
    if (it->mem < need.mem_bytes) {  // nothing more at this CPU level: jump to its memory
      it = index.lower_bound({it->cpu, need.mem_bytes, 0});
      continue;
    }
    if ((c.cls < 0 && !matches(nodes_[it->id], job.spec.constraints)) ||
        reserved_for_other(it->id, job.id)) {
      ++it;
      continue;
    }
    return {true, it->id};
  }
  return {false, 0};
}

// The fewest of this job's tasks, then the most free CPU, then memory, then the lowest id.
// The walk goes down the index one (cpu, mem) group at a time, each group's ids upwards:
// that is the tie-break order, so the first board met with the fewest tasks wins. It stops
// at a board with `floor` tasks, the fewest any board can have: 0 while some board of the
// class runs none of them, else the fewest on any board.
std::tuple<bool, NodeId> Cluster::find_spread(const Contender& c) const {
  const Job& job = *c.job;
  const Resources& need = job.spec.per_task;
  const RoomIndex& index = classes_[c.cls < 0 ? 0 : c.cls].room;
  uint32_t floor = 0;
  if (auto it = spread_running_.find(job.id);
      it != spread_running_.end() && c.cls >= 0 && it->second.per_node.size() >= index.size()) {
    floor = it->second.levels.begin()->first;
  }
  bool found = false;
  NodeId best = 0;
  uint32_t best_count = 0;
  auto end = index.end();
  while (end != index.begin()) {
    auto last = std::prev(end);
    if (last->cpu < need.cpu_millis) break;
    if (last->mem < need.mem_bytes) {  // the most memory left at this CPU level: next level
      end = index.lower_bound({last->cpu, 0, 0});
      continue;
    }
    auto first = index.lower_bound({last->cpu, last->mem, 0});
    for (auto it = first; it != end; ++it) {
      if ((c.cls < 0 && !matches(nodes_[it->id], job.spec.constraints)) ||
          reserved_for_other(it->id, job.id)) {
        continue;
      }
      const uint32_t count = spread_count(job.id, it->id);
      if (found && count >= best_count) continue;
      found = true, best = it->id, best_count = count;
      if (count <= floor) return {true, best};
    }
    end = first;
  }
  return {found, best};
}

// Task slots, CPU and memory free for one more task of `job` (this plan's placements
// counted), on a board that takes work. Constraints are the caller's to check.
bool Cluster::fits_now(NodeId id, const Job& job) const {
  const RoomKey room = room_key(id);
  return room.cpu >= job.spec.per_task.cpu_millis && room.mem >= job.spec.per_task.mem_bytes;
}

bool Cluster::reserved_for_other(NodeId id, JobId job) const {
  for (const Reservation& r : reserved_) {
    if (r.node == id && r.job != job) return true;
  }
  return false;
}

// Fits in 16 bits: the constructor bounds constraint_classes_max below 65,535.
uint16_t Cluster::class_slots() const {
  return static_cast<uint16_t>(classes_.size());
}

bool Cluster::reserved_by_any(NodeId id) const {
  return std::any_of(reserved_.begin(), reserved_.end(),
                     [id](const Reservation& r) { return r.node == id; });
}

uint32_t Cluster::most_free_cpu() const {
  const RoomIndex& all = classes_[0].room;
  return all.empty() ? 0 : all.rbegin()->cpu;
}

uint32_t Cluster::spread_count(JobId job, NodeId node) const {
  uint32_t count = 0;
  if (auto it = spread_running_.find(job); it != spread_running_.end()) {
    if (auto n = it->second.per_node.find(node); n != it->second.per_node.end()) count = n->second;
  }
  for (const auto& [j, id] : planned_spread_) count += j == job && id == node;
  return count;
}

// The board where the contender's next task fits soonest, among those it could ever fit
// (capacity, constraints, takes work, not reserved yet): the least CPU missing, then
// memory, then task slots, then the lowest id. Without task durations "soonest" is a
// guess; what matters is that its shortfall only shrinks while it is reserved.
bool Cluster::reserve(const Contender& c) const {
  if (reserved_.size() >= limits_.reservations_max) return false;
  flush_pending();
  const Job& job = *c.job;
  const Resources& need = job.spec.per_task;
  bool found = false;
  NodeId best = 0;
  std::tuple<uint32_t, uint64_t, uint32_t> best_short{};
  for (const RoomKey& k : classes_[c.cls < 0 ? 0 : c.cls].room) {
    const Node& n = nodes_[k.id];
    if (!takes_work(n) || n.spec.capacity.cpu_millis < need.cpu_millis ||
        n.spec.capacity.mem_bytes < need.mem_bytes) {
      continue;
    }
    if ((c.cls < 0 && !matches(n, job.spec.constraints)) || reserved_by_any(n.id)) continue;
    const NodeSlot& s = slots_[n.id];
    const uint64_t cpu_used = uint64_t{n.used.cpu_millis} + s.plan_used.cpu_millis;
    const uint64_t mem_used = n.used.mem_bytes + s.plan_used.mem_bytes;
    const uint64_t cpu_free = short_of<uint64_t>(n.spec.capacity.cpu_millis, cpu_used);
    const uint64_t mem_free = short_of<uint64_t>(n.spec.capacity.mem_bytes, mem_used);
    const uint32_t running = n.running + s.plan_running;
    const uint32_t slots_short =
        n.spec.tasks_max == 0 ? 0 : short_of<uint32_t>(running + 1, n.spec.tasks_max);
    std::tuple<uint32_t, uint64_t, uint32_t> shortfall{
        static_cast<uint32_t>(short_of<uint64_t>(need.cpu_millis, cpu_free)),
        short_of<uint64_t>(need.mem_bytes, mem_free), slots_short};
    // The index is in room order, not id order: ties go to the lower id explicitly.
    if (!found || shortfall < best_short || (shortfall == best_short && n.id < best)) {
      found = true, best = n.id, best_short = shortfall;
    }
  }
  if (found) reserved_.push_back({best, job.id});
  return found;
}

void Cluster::take(NodeId id, const Job& job) const {
  NodeSlot& s = slots_[id];
  if (!s.plan_touched) {
    s.plan_touched = true;
    touched_.push_back(id);
  }
  s.plan_used.cpu_millis += job.spec.per_task.cpu_millis;
  s.plan_used.mem_bytes += job.spec.per_task.mem_bytes;
  ++s.plan_running;
  if (pending_ && pending_node_ != id) flush_pending();
  pending_ = true, pending_node_ = id, pending_job_ = job.id;
  if (job.spec.spread) planned_spread_.emplace_back(job.id, id);
}

void Cluster::flush_pending() const {
  if (!pending_) return;
  pending_ = false;
  rekey(pending_node_, room_key(pending_node_));
}

void Cluster::end_plan() const {
  pending_ = false;
  for (NodeId id : touched_) {
    NodeSlot& s = slots_[id];
    s.plan_used = {};
    s.plan_running = 0;
    s.plan_touched = false;
    rekey(id, room_key(id));
  }
  touched_.clear();
  planned_spread_.clear();
}

}  // namespace cardnode::sched
