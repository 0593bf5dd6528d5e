#include "runtime/coordinator/coordinator.h"

#include <algorithm>
#include <cerrno>
#include <utility>

#include "proto/text.h"

namespace cardnode::runtime {
namespace {

bool same_node(const sched::NodeSpec& a, const sched::NodeSpec& b) {
  return a.name == b.name && a.capacity.cpu_millis == b.capacity.cpu_millis &&
         a.capacity.mem_bytes == b.capacity.mem_bytes && a.labels == b.labels &&
         a.tasks_max == b.tasks_max;
}

std::string duration_text(uint64_t ms) {
  if (ms % (uint64_t{24} * 3600 * 1000) == 0) {
    return std::to_string(ms / (uint64_t{24} * 3600 * 1000)) + "d";
  }
  if (ms % (uint64_t{3600} * 1000) == 0) return std::to_string(ms / (uint64_t{3600} * 1000)) + "h";
  if (ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

}  // namespace

Coordinator::Coordinator(storage::DurableStore& store, CoordinatorOptions options,
                         CoordinatorHooks hooks)
    : store_(store), options_(options), hooks_(std::move(hooks)), state_(options.limits) {}

// A snapshot in progress is abandoned (its writer waits for its writes, then removes the
// temporary file); its builder goes first, so nothing observes the state any more.
Coordinator::~Coordinator() {
  builder_.reset();
  sink_.reset();
  retired_sink_.reset();
}

void Coordinator::info(const std::string& m) const {
  if (hooks_.log_info) hooks_.log_info(m);
}

void Coordinator::warn(const std::string& m) const {
  if (hooks_.log_warn) hooks_.log_warn(m);
}

// ------------------------------------------------------------------------- start-up

Result<storage::RecoveryReport> Coordinator::recover() {
  SnapshotLoader loader(state_);
  bool snapshot_open = false;
  Status loaded;
  auto finish_snapshot_load = [&]() -> Status {
    if (!snapshot_open) return {};
    snapshot_open = false;
    return loader.finish();
  };
  auto report = store_.recover(
      [&](std::string_view chunk) -> Status {
        snapshot_open = true;
        return loader.feed(chunk);
      },
      [&](uint64_t seq, std::string_view payload) -> Status {
        if (auto st = finish_snapshot_load(); !st) return st;
        pb::WalRecord rec;
        if (!rec.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) {
          return fail(Errc::kCorruption, "WAL record " + std::to_string(seq) + " does not parse");
        }
        // Live, this record applied before it was logged: a failure here is a bug or damage
        // the checksums missed, never a record to skip (guarantee 6).
        if (auto a = state_.apply(rec, seq); !a) {
          return fail(Errc::kCorruption, "WAL record " + std::to_string(seq) +
                                             " does not apply: " + a.error().message);
        }
        return {};
      });
  if (!report) return report;
  if (auto st = finish_snapshot_load(); !st) return std::unexpected(st.error());
  durable_seq_ = store_.next_sequence() - 1;
  // No node has a runner yet: none may get a task until one attaches.
  for (const sched::Node& n : state_.cluster().nodes()) {
    if (!n.removed) (void)state_.cluster().set_node_state(n.id, sched::NodeState::kDown);
  }
  last_prune_check_ms_ = hooks_.now_ms();
  return report;
}

// ------------------------------------------------------------ the path of a change

Error Coordinator::refusal(const Error& e) {
  if (e.sys_errno == ENOSPC) {
    ++stats_.refused_no_space;
    return Error{Errc::kResourceExhausted,
                 "no space left on the device that holds the server's log; nothing was "
                 "accepted",
                 ENOSPC};
  }
  if (e.code == Errc::kResourceExhausted) {
    ++stats_.refused_busy;
    return Error{Errc::kBusy,
                 "server busy: " + std::to_string(store_.pending_records()) +
                     " records are waiting for the disk; try again",
                 0};
  }
  return e;
}

Result<uint64_t> Coordinator::commit(const pb::WalRecord& record, DurableFn fn) {
  if (failed_) return fail(Errc::kUnavailable, "the server's storage failed; it is stopping");
  std::string bytes = record.SerializeAsString();
  if (auto st = store_.reserve(bytes.size()); !st) return std::unexpected(refusal(st.error()));
  const uint64_t seq = store_.next_sequence();
  auto applied = state_.apply(record, seq);
  if (!applied) return std::unexpected(applied.error());
  // A promoted standby whose start is durable runs at the next turn (not from inside the
  // runner's exit callback that may have led here); one not yet durable, from dispatch().
  stats_.standby_promotions += applied->promoted.size();
  for (const sched::TaskRef& t : applied->promoted) {
    const uint32_t attempt = state_.cluster().job(t.job)->tasks[t.index].attempts;
    if (durable_standbys_.erase({t, attempt}) > 0) promoted_.emplace_back(t, attempt);
  }
  if (!promoted_.empty()) hooks_.request_turn();
  auto st = store_.append(bytes, [this, seq, a = std::move(*applied),
                                  fn = std::move(fn)](Status s) { on_durable(seq, s, a, fn); });
  CARDNODE_CHECK(st.has_value());  // reserve() made room for exactly this
  ++stats_.records;
  return seq;
}

void Coordinator::on_durable(uint64_t seq, Status st, const Applied& applied, const DurableFn& fn) {
  if (!st) {
    if (!failed_ && hooks_.fatal) hooks_.fatal(st.error());
    failed_ = true;
    stop_held(nullptr);  // their records will never be durable: nothing of theirs may run
    return;
  }
  durable_seq_ = seq;
  if (fn) fn(applied);
  notify_finished(applied.finished_jobs);
  if (!applied.pruned_jobs.empty() && hooks_.jobs_pruned) hooks_.jobs_pruned(applied.pruned_jobs);
  while (!barriers_.empty() && barriers_.front().seq <= seq) {
    auto f = std::move(barriers_.front().fn);
    barriers_.pop_front();
    f();
  }
  if (!deferred_.empty()) hooks_.request_turn();  // the store has room again
}

bool Coordinator::when_durable(std::function<void()> f) {
  const uint64_t target = store_.next_sequence() - 1;
  if (durable_seq_ >= target) {
    f();
    return true;
  }
  if (barriers_.size() >= options_.barriers_max) return false;
  barriers_.push_back({target, std::move(f)});
  return true;
}

void Coordinator::notify_finished(const std::vector<sched::JobId>& jobs) {
  for (sched::JobId id : jobs) {
    auto it = waiters_.find(id);
    if (it == waiters_.end()) continue;
    std::vector<std::function<void(Status)>> done = std::move(it->second);
    waiters_.erase(it);
    waiter_count_ -= static_cast<uint32_t>(done.size());
    for (auto& d : done) d({});
  }
}

// ------------------------------------------------------------------------- nodes

Result<sched::NodeId> Coordinator::register_node(const std::string& identity,
                                                 const sched::NodeSpec& spec) {
  auto known = state_.node_by_identity(identity);
  if (known && same_node(state_.cluster().node(*known)->spec, spec)) return *known;
  // The name belongs to another board that is not here (a board whose identity file was
  // lost, or a replaced one): that node is retired, its running tasks ended lost first.
  const sched::Node* holder = state_.cluster().node_by_name(spec.name);
  if (holder != nullptr && (!known || holder->id != *known)) {
    if (runners_.contains(holder->id)) {
      return fail(Errc::kInvalidArgument,
                  "node name " + spec.name + " is taken by a board in the pool");
    }
    const sched::NodeId old = holder->id;
    end_running_tasks(old);
    if (!state_.cluster().running_on(old).empty()) {
      return fail(Errc::kBusy, "node name " + spec.name + " is still taken; try again");
    }
    pb::WalRecord removal;
    removal.mutable_node_removed()->set_node_id(old);
    removal.mutable_node_removed()->set_removed_ms(hooks_.now_ms());
    if (auto seq = commit(removal, nullptr); !seq) return std::unexpected(seq.error());
    info("node " + std::to_string(old) + " (" + shown(spec.name) +
         ") retired: another board took its name");
  }
  const auto id = known ? *known : static_cast<sched::NodeId>(state_.cluster().nodes().size());
  pb::WalRecord rec;
  pb::NodeUpdated* n = rec.mutable_node_updated();
  n->set_node_id(id);
  n->set_name(spec.name);
  n->set_identity(identity);
  n->set_cpu_millis(spec.capacity.cpu_millis);
  n->set_mem_bytes(spec.capacity.mem_bytes);
  n->set_tasks_max(spec.tasks_max);
  for (const auto& [k, v] : spec.labels) (*n->mutable_labels())[k] = v;
  n->set_updated_ms(hooks_.now_ms());
  auto seq = commit(rec, nullptr);
  if (!seq) return std::unexpected(seq.error());
  if (!known) {
    (void)state_.cluster().set_node_state(id, sched::NodeState::kDown);
    info("node " + shown(spec.name) + " joined as node " + std::to_string(id));
  } else {
    info("node " + std::to_string(id) + " updated (now " + shown(spec.name) + ")");
  }
  return id;
}

void Coordinator::attach_runner(sched::NodeId id, TaskRunner* runner) {
  if (auto it = runners_.find(id); it != runners_.end() && it->second != runner) {
    stop_held(it->second);  // replaced: what it holds is stopped while it is still alive
  }
  runners_[id] = runner;
  (void)state_.cluster().set_node_state(id, sched::NodeState::kReady);
  (void)state_.cluster().set_standby_node(id, runner->takes_standbys());
  // A runner that (re)attaches may have missed stops — decided while the node had no runner,
  // or sent on a connection that broke — and is told again: past a drain's deadline at the
  // next turn, a cancel's once everything applied is durable (a kill is a side effect).
  for (const auto& [t, attempt] : attempts_on(id)) drain_stopped_.erase({t, attempt});
  (void)when_durable([this, id, runner] {
    auto it = runners_.find(id);
    if (it == runners_.end() || it->second != runner) return;  // replaced: the new one is told
    for (const auto& [t, attempt] : attempts_on(id)) {
      if (state_.cluster().cancelling(t.job))
        stop_attempt(t, attempt, runner, KillReason::kCancelled);
    }
  });
  hooks_.request_turn();
}

void Coordinator::detach_runner(sched::NodeId id) {
  if (auto it = runners_.find(id); it != runners_.end()) stop_held(it->second);
  runners_.erase(id);
  (void)state_.cluster().set_node_state(id, sched::NodeState::kDown);
  (void)state_.cluster().set_standby_node(id, false);
}

sched::NodeHold Coordinator::report_heat(sched::NodeId id, std::optional<int32_t> millicelsius,
                                         bool throttled, bool under_voltage) {
  const sched::Node* node = state_.cluster().node(id);
  if (node == nullptr || node->removed) {
    heat_.erase(id);
    return sched::NodeHold::kNone;
  }
  sched::HeatGate& gate = heat_.try_emplace(id, options_.heat).first->second;
  const sched::NodeHold before = node->hold;
  const sched::NodeHold now = gate.update(millicelsius, throttled, under_voltage);
  if (now == before) return now;
  (void)state_.cluster().set_node_hold(id, now);  // the node exists: checked above
  if (now == sched::NodeHold::kNone) {
    info("node " + shown(node->spec.name) + " takes new tasks again" +
         (millicelsius ? " (" + sched::celsius_text(*millicelsius) + ")" : ""));
    hooks_.request_turn();  // queued tasks may go there now
  } else {
    info("node " + shown(node->spec.name) +
         " gets no new tasks: " + sched::describe_hold(now, millicelsius, options_.heat));
  }
  return now;
}

void Coordinator::end_running_tasks(sched::NodeId id, bool requeue_free) {
  for (const sched::TaskRef& t : state_.cluster().running_on(id)) {
    const sched::Task& task = state_.cluster().job(t.job)->tasks[t.index];
    task_ended(t, task.attempts, id, TaskExit{pb::TASK_LOST, 0, 0, requeue_free});
  }
}

// ---------------------------------------------------------------------- requests

void Coordinator::submit(pb::JobSpec spec, const SubmitDone& done, bool then_wait) {
  if (stopping_) return done(fail(Errc::kUnavailable, "server is stopping"));
  if (auto st = state_.normalize(&spec); !st) return done(std::unexpected(st.error()));
  const sched::JobId id = state_.cluster().last_job_id() + 1;
  pb::WalRecord rec;
  pb::JobSubmitted* s = rec.mutable_job_submitted();
  s->set_job_id(id);
  *s->mutable_spec() = std::move(spec);
  s->set_submitted_ms(hooks_.now_ms());
  auto seq = commit(rec, [this, id, done](const Applied&) {
    done(id);
    hooks_.request_turn();  // again: the turn below may have found the WAL queue full
  });
  if (!seq) return done(std::unexpected(seq.error()));
  if (then_wait && awaited_.size() < options_.waiters_max) awaited_[id] = 0;
  // The job is applied already: a turn in this loop iteration places its first tasks, and
  // their TaskStarted records join the same fdatasync as JobSubmitted (the flush runs once
  // per loop turn). The reply and the spawns then wait for one sync, not two; WAL order
  // keeps a placement from ever being durable without its job.
  hooks_.request_turn();
}

void Coordinator::cancel(sched::JobId id, const CancelDone& done) {
  if (stopping_) return done(fail(Errc::kUnavailable, "server is stopping"));
  const sched::Job* job = state_.cluster().job(id);
  if (job == nullptr) return done(std::unexpected(missing_job(id)));
  if (sched::is_final(job->state)) {  // nothing to change, so nothing to write
    if (!when_durable([done] { done(0u); })) done(fail(Errc::kBusy, "server busy"));
    return;
  }
  pb::WalRecord rec;
  rec.mutable_job_cancelled()->set_job_id(id);
  rec.mutable_job_cancelled()->set_cancelled_ms(hooks_.now_ms());
  auto seq = commit(rec, [this, done](const Applied& a) {
    for (const sched::TaskRef& t : a.to_kill) {
      const sched::Job* j = state_.cluster().job(t.job);
      if (j == nullptr || j->tasks[t.index].state != sched::TaskState::kRunning) continue;
      auto it = runners_.find(j->tasks[t.index].node);
      if (it != runners_.end()) {
        stop_attempt(t, j->tasks[t.index].attempts, it->second, KillReason::kCancelled);
      }
    }
    done(static_cast<uint32_t>(a.to_kill.size()));
  });
  if (!seq) done(std::unexpected(seq.error()));
}

void Coordinator::wait_job(sched::JobId id, std::function<void(Status)> done) {
  awaited_.erase(id);  // asked: from here on a waiter (or an answer due) keeps it
  const sched::Job* job = state_.cluster().job(id);
  if (job == nullptr) return done(std::unexpected(missing_job(id)));
  if (sched::is_final(job->state)) {
    // Kept from pruning until answered (the answer reads the job).
    ++answering_[id];
    auto answered = [this, id, done] {
      if (--answering_[id] == 0) answering_.erase(id);
      done({});
    };
    if (!when_durable(answered)) {
      if (--answering_[id] == 0) answering_.erase(id);
      done(fail(Errc::kBusy, "server busy"));
    }
    return;
  }
  if (stopping_) return done(fail(Errc::kUnavailable, "server is stopping"));
  if (waiter_count_ >= options_.waiters_max) {
    return done(fail(Errc::kResourceExhausted, "too many clients waiting"));
  }
  waiters_[id].push_back(std::move(done));
  ++waiter_count_;
}

std::string Coordinator::wait_reason(sched::JobId id) const {
  const sched::Job* job = state_.cluster().job(id);
  if (job == nullptr || sched::is_final(job->state) ||
      job->state_counts[static_cast<size_t>(sched::TaskState::kQueued)] == 0) {
    return {};
  }
  sched::WaitReason r = state_.cluster().why_waiting(id, hooks_.now_ms());
  return r.cause == sched::WaitCause::kNone ? std::string() : sched::describe(r);
}

Error Coordinator::missing_job(sched::JobId id) const {
  if (state_.pruned(id)) {
    return Error{Errc::kNotFound,
                 "job " + std::to_string(id) + " was pruned (finished jobs are kept: the newest " +
                     std::to_string(options_.keep_finished) + ", for " +
                     duration_text(options_.keep_finished_for_ms) + ")",
                 0};
  }
  return Error{Errc::kNotFound, "no job " + std::to_string(id), 0};
}

void Coordinator::stop() {
  if (stopping_) return;
  stopping_ = true;
  auto waiting = std::move(waiters_);
  waiters_.clear();
  waiter_count_ = 0;
  awaited_.clear();
  for (auto& [id, done] : waiting) {
    for (auto& d : done) d(fail(Errc::kUnavailable, "server is stopping"));
  }
  // Standbys and promoted attempts not started yet have no process for a runner's
  // kill_all() to report: they end here, lost to a clean stop (requeue-free).
  std::vector<std::pair<sched::TaskRef, uint32_t>> unstarted = std::move(promoted_);
  promoted_.clear();
  for (const sched::Node& n : state_.cluster().nodes()) {
    for (const sched::TaskRef& t : n.standby) {
      unstarted.emplace_back(t, state_.cluster().job(t.job)->tasks[t.index].attempts);
    }
  }
  for (const auto& [t, attempt] : unstarted) {
    const sched::NodeId node = state_.cluster().job(t.job)->tasks[t.index].node;
    task_ended(t, attempt, node, TaskExit{pb::TASK_LOST, 0, 0, true});
  }
}

// -------------------------------------------------------------------------- tasks

void Coordinator::schedule() {
  if (stopping_ || failed_) return;
  auto plan = state_.cluster().plan(options_.placements_per_turn, hooks_.now_ms());
  for (const sched::Placement& p : plan) {
    pb::WalRecord rec;
    pb::TaskStarted* s = rec.mutable_task_started();
    s->set_job_id(p.task.job);
    s->set_index(p.task.index);
    s->set_node_id(p.node);
    s->set_attempt(p.attempt);
    s->set_started_ms(hooks_.now_ms());
    s->set_standby(p.standby);
    auto seq = commit(
        rec, [this, t = p.task, attempt = p.attempt](const Applied&) { dispatch(t, attempt); });
    if (!seq) return;  // the store is full: placements wait for the next turn
    if (p.standby) {
      ++stats_.standby_placements;
    } else {
      hold(p.task, p.attempt, p.node);
    }
  }
  if (plan.size() == options_.placements_per_turn) hooks_.request_turn();
}

TaskLaunch Coordinator::make_launch(sched::TaskRef t, uint32_t attempt, sched::NodeId node) const {
  const pb::JobSpec& spec = *state_.spec(t.job);
  TaskLaunch l;
  l.job_id = t.job;
  l.index = t.index;
  l.count = spec.count();
  l.attempt = attempt;
  l.argv.assign(spec.command().begin(), spec.command().end());
  for (const auto& [k, v] : spec.env()) l.env.emplace_back(k, v);
  std::sort(l.env.begin(), l.env.end());  // protobuf map order is unspecified
  l.cwd = spec.cwd();
  l.user = spec.user();
  l.limits.cpu_millis = spec.cpu_millis();
  l.limits.mem_bytes = spec.mem_bytes();
  l.timeout_ms = spec.timeout_ms();
  l.node_name = state_.cluster().node(node)->spec.name;
  return l;
}

// The placement is applied and its TaskStarted on the way to disk: a runner that can hold a
// start makes the process now, held before its command (runtime/exec/task_runner.h), so
// the spawn's work overlaps the fdatasync; dispatch() releases it once the record is
// durable. A runner that cannot is started by dispatch(), as before.
void Coordinator::hold(sched::TaskRef t, uint32_t attempt, sched::NodeId node) {
  auto it = runners_.find(node);
  if (it == runners_.end() || stopping_ || state_.cluster().cancelling(t.job)) return;
  TaskRunner* runner = it->second;
  if (!runner->can_hold_now()) return;
  Status st =
      runner->start_held(make_launch(t, attempt, node),
                         [this, t, attempt, node](TaskExit e) { task_ended(t, attempt, node, e); });
  if (st) held_.emplace(std::make_pair(t, attempt), runner);
}

// Held attempts of `runner` (nullptr: of every runner) are stopped where they are held and
// never released, nor started again by dispatch(); their ends (lost, requeue-free) come
// back through that runner. Called while the runner is alive: when it is detached or
// replaced, or when the store fails.
void Coordinator::stop_held(TaskRunner* runner) {
  std::vector<std::pair<sched::TaskRef, TaskRunner*>> stopping;
  for (auto& [key, r] : held_) {
    if (r == nullptr || (runner != nullptr && r != runner)) continue;
    stopping.emplace_back(key.first, r);
    r = nullptr;  // stopped: dispatch() must neither release it nor start it elsewhere
  }
  for (const auto& [t, r] : stopping) r->kill(t.job, t.index, KillReason::kShutdown);
}

// Promoted standbys whose start is durable (commit()) start now, each through dispatch(),
// which checks again that the attempt still runs, its job is not cancelled and the server
// is not stopping.
void Coordinator::start_promoted() {
  auto ready = std::move(promoted_);
  promoted_.clear();
  for (const auto& [t, attempt] : ready) {
    // Promoted on a board that stopped taking work since (heat holds are not durable,
    // so the scheduler promotes regardless): it ends as a stranded standby would.
    const sched::Job* job = state_.cluster().job(t.job);
    const sched::Node* n =
        job == nullptr ? nullptr : state_.cluster().node(job->tasks[t.index].node);
    if (n != nullptr &&
        (n->hold != sched::NodeHold::kNone || n->state != sched::NodeState::kReady) &&
        job->tasks[t.index].state == sched::TaskState::kRunning &&
        job->tasks[t.index].attempts == attempt && !end_waits(t, attempt)) {
      task_ended(t, attempt, n->id, TaskExit{pb::TASK_LOST, 0, 0, true});
      continue;
    }
    dispatch(t, attempt);
  }
}

// Standbys that their board can no longer promote (it takes no new work: draining, held,
// down, not taking standbys; or nothing runs there whose end would free room) end where
// they stand, lost to no fault of theirs (requeue-free), so they run elsewhere or later.
void Coordinator::end_stranded_standbys() {
  const sched::Cluster& c = state_.cluster();
  std::vector<std::pair<sched::TaskRef, uint32_t>> stranded;
  for (sched::NodeId id : c.standby_holders()) {
    const sched::Node& n = *c.node(id);
    const bool promotable = n.standby_ok && n.running > 0 && n.state == sched::NodeState::kReady &&
                            !n.draining && n.hold == sched::NodeHold::kNone;
    if (promotable) continue;
    for (const sched::TaskRef& t : n.standby) {
      stranded.emplace_back(t, c.job(t.job)->tasks[t.index].attempts);
    }
  }
  for (const auto& [t, attempt] : stranded) {
    if (end_waits(t, attempt)) continue;  // ended already, its record waiting for room
    task_ended(t, attempt, state_.cluster().job(t.job)->tasks[t.index].node,
               TaskExit{pb::TASK_LOST, 0, 0, true});
  }
}

// Stops an attempt wherever it is. A standby not promoted has no process anywhere: it
// ends here, as its runner would report it (cancelled, or lost requeue-free).
void Coordinator::stop_attempt(sched::TaskRef t, uint32_t attempt, TaskRunner* runner,
                               KillReason reason) {
  if (!state_.cluster().is_standby(t)) return runner->kill(t.job, t.index, reason);
  const sched::NodeId node = state_.cluster().job(t.job)->tasks[t.index].node;
  task_ended(t, attempt, node,
             reason == KillReason::kCancelled ? TaskExit{pb::TASK_CANCELLED, 0, 0}
                                              : TaskExit{pb::TASK_LOST, 0, 0, true});
}

// TaskStarted is durable: the command may run now (never before, so a crash can never
// leave a command running that the log does not know about).
void Coordinator::dispatch(sched::TaskRef t, uint32_t attempt) {
  // Held: its runner has the process and reports its end through hold()'s callback, so
  // every way out below ends it through that runner, never with a second report. (A
  // runner detached or replaced meanwhile had its held attempts stopped then: stop_held.)
  TaskRunner* held = nullptr;
  if (auto h = held_.find({t, attempt}); h != held_.end()) {
    held = h->second;
    held_.erase(h);
    if (held == nullptr) return;  // stopped where it was held: its end comes from there
  }
  const sched::Job* job = state_.cluster().job(t.job);
  if (job == nullptr) return;
  const sched::Task& task = job->tasks[t.index];
  if (task.state != sched::TaskState::kRunning || task.attempts != attempt) return;  // ended since
  const sched::NodeId node = task.node;
  auto it = runners_.find(node);
  // Cancelled while its placement was on the way to the disk: it ends without running.
  if (state_.cluster().cancelling(t.job)) {
    if (held != nullptr) return held->kill(t.job, t.index, KillReason::kCancelled);
    task_ended(t, attempt, node, TaskExit{pb::TASK_CANCELLED, 0, 0});
    return;
  }
  if (it == runners_.end() || stopping_) {
    // Placed just before a clean stop: never started, and no fault of the task's.
    if (held != nullptr) return held->kill(t.job, t.index, KillReason::kShutdown);
    task_ended(t, attempt, node, TaskExit{pb::TASK_LOST, 0, 0, stopping_});
    return;
  }
  // Its end is decided already (a standby ended where it stood, its record queued behind
  // a full store), or a drain's deadline stopped it before it had a process: it must not
  // run now, or a requeued copy could run beside it.
  if (end_waits(t, attempt)) {
    if (held != nullptr) held->kill(t.job, t.index, KillReason::kShutdown);
    return;
  }
  if (drain_stopped_.contains({t, attempt})) {
    if (held != nullptr) return held->kill(t.job, t.index, KillReason::kShutdown);
    task_ended(t, attempt, node, TaskExit{pb::TASK_LOST, 0, 0, true});
    return;
  }
  // A standby waits for its promotion, which starts it (commit(), start_promoted()).
  if (state_.cluster().is_standby(t)) {
    durable_standbys_.emplace(t, attempt);
    return;
  }
  if (held != nullptr) return held->release(t.job, t.index);
  auto st = it->second->start(make_launch(t, attempt, node), [this, t, attempt, node](TaskExit e) {
    task_ended(t, attempt, node, e);
  });
  if (!st) {
    // Not the command's failure (that is 127 from the exec): the board could not start a
    // process at all. The runner wrote why into the task's stderr log.
    warn("cannot start task " + std::to_string(t.job) + "." + std::to_string(t.index) + ": " +
         st.error().describe());
    task_ended(t, attempt, node, TaskExit{pb::TASK_FAILED, 127, 0});
  }
}

bool Coordinator::runs(sched::TaskRef t, uint32_t attempt, sched::NodeId node) const {
  const sched::Job* job = state_.cluster().job(t.job);
  if (job == nullptr || t.index >= job->tasks.size()) return false;
  const sched::Task& task = job->tasks[t.index];
  return task.state == sched::TaskState::kRunning && task.attempts == attempt && task.node == node;
}

std::vector<std::pair<sched::TaskRef, uint32_t>> Coordinator::attempts_on(sched::NodeId id) const {
  std::vector<std::pair<sched::TaskRef, uint32_t>> out;
  for (const sched::TaskRef& t : state_.cluster().running_on(id)) {
    out.emplace_back(t, state_.cluster().job(t.job)->tasks[t.index].attempts);
  }
  return out;
}

Coordinator::EndReport Coordinator::report_end(sched::TaskRef t, uint32_t attempt,
                                               sched::NodeId node, TaskExit exit) {
  if (!runs(t, attempt, node)) {
    ++stats_.stale_reports;
    return EndReport::kStale;
  }
  task_ended(t, attempt, node, exit);
  return end_waits(t, attempt) ? EndReport::kDeferred : EndReport::kLogged;
}

void Coordinator::drain(const std::string& node_name, bool undrain, uint64_t deadline_ms,
                        const std::function<void(Status)>& done) {
  if (stopping_) return done(fail(Errc::kUnavailable, "server is stopping"));
  const sched::Node* node = state_.cluster().node_by_name(node_name);
  if (node == nullptr) return done(fail(Errc::kNotFound, "no node " + node_name));
  pb::WalRecord rec;
  pb::NodeDrain* d = rec.mutable_node_drain();
  d->set_node_id(node->id);
  d->set_draining(!undrain);
  d->set_deadline_ms(undrain || deadline_ms == 0 ? 0 : hooks_.now_ms() + deadline_ms);
  d->set_at_ms(hooks_.now_ms());
  auto seq = commit(rec, [this, done](const Applied&) {
    done({});
    hooks_.request_turn();
  });
  if (!seq) done(std::unexpected(seq.error()));
}

// Past a drain's deadline, what still runs there is stopped and requeued (it ends lost).
void Coordinator::stop_drained_tasks() {
  const uint64_t now = hooks_.now_ms();
  for (const sched::Node& n : state_.cluster().nodes()) {
    if (!n.draining || n.drain_deadline_ms == 0 || now < n.drain_deadline_ms || n.running == 0) {
      continue;
    }
    auto runner = runners_.find(n.id);
    if (runner == runners_.end()) continue;
    for (const auto& [t, attempt] : attempts_on(n.id)) {
      if (!drain_stopped_.insert({t, attempt}).second) continue;
      stop_attempt(t, attempt, runner->second, KillReason::kShutdown);
    }
  }
  // Forget attempts that ended (bounded by what runs).
  std::erase_if(drain_stopped_, [this](const auto& e) {
    const sched::Job* job = state_.cluster().job(e.first.job);
    return job == nullptr || job->tasks[e.first.index].state != sched::TaskState::kRunning ||
           job->tasks[e.first.index].attempts != e.second;
  });
}

void Coordinator::task_ended(sched::TaskRef t, uint32_t attempt, sched::NodeId node,
                             TaskExit exit) {
  Outcome o{t, attempt, exit};
  (void)node;
  // Ends are logged in the order they happened; once one waits, the rest queue behind it.
  if (deferred_.empty() && record_outcome(o)) return;
  // That attempt's end waits already (its agent sent it again, or it was lost meanwhile):
  // the first one stands, and the queue stays bounded by the running attempts.
  if (end_waits(t, attempt)) return;
  deferred_.push_back(o);
  ++stats_.outcomes_deferred;
}

// False: the store refused for now (the outcome must wait); true: logged, or stale, or the
// store has failed for good (the server is stopping; the next start ends the task lost).
bool Coordinator::record_outcome(const Outcome& o) {
  const sched::Job* job = state_.cluster().job(o.task.job);
  if (job == nullptr || o.task.index >= job->tasks.size() ||
      job->tasks[o.task.index].state != sched::TaskState::kRunning ||
      job->tasks[o.task.index].attempts != o.attempt) {
    ++stats_.stale_reports;  // that attempt already ended (e.g. its node was declared lost)
    return true;
  }
  pb::WalRecord rec;
  pb::TaskFinished* f = rec.mutable_task_finished();
  f->set_job_id(o.task.job);
  f->set_index(o.task.index);
  f->set_state(o.exit.state);
  f->set_exit_code(o.exit.exit_code);
  f->set_signal(o.exit.signal);
  f->set_finished_ms(hooks_.now_ms());
  f->set_requeue_free(o.exit.requeue_free && o.exit.state == pb::TASK_LOST);
  if (pb::TaskUsage u = usage_to_pb(o.exit.usage); u.ByteSizeLong() > 0) *f->mutable_usage() = u;
  // A runner's bug, not the task's; or a state this server does not know (a newer agent),
  // which the record would not apply with: it would wait forever, and every end behind it.
  if (!pb::TaskState_IsValid(o.exit.state) || !sched::is_final(from_pb(o.exit.state))) {
    warn("task " + std::to_string(o.task.job) + "." + std::to_string(o.task.index) +
         " ended in a state that is not an end; taken as lost");
    Outcome lost = o;
    lost.exit = TaskExit{pb::TASK_LOST, 0, 0};
    return record_outcome(lost);
  }
  // The task runs in this attempt (checked above), so the record applies: a failure here is
  // the store refusing for now (queue full, disk full, a file error at a roll), and the end
  // waits and is tried again; it is never dropped while the store works.
  auto seq = commit(rec, nullptr);
  if (!seq) return failed_;
  durable_standbys_.erase({o.task, o.attempt});
  ++stats_.tasks_ended[static_cast<size_t>(o.exit.state)];
  stats_.task_cpu_user_ms += o.exit.usage.cpu_user_us / 1000;
  stats_.task_cpu_system_ms += o.exit.usage.cpu_system_us / 1000;
  if (o.exit.usage.mem_peak_bytes > 0) {
    size_t b = 0;
    while (b < kTaskMemoryBucketsBytes.size() &&
           o.exit.usage.mem_peak_bytes > kTaskMemoryBucketsBytes[b])
      ++b;
    ++stats_.task_mem_peak_buckets[b];
    stats_.task_mem_peak_sum_bytes += o.exit.usage.mem_peak_bytes;
  }
  if (const uint64_t wall_ms = o.exit.usage.wall_us / 1000; wall_ms > 0) {
    const auto b = static_cast<size_t>(std::ranges::lower_bound(kTaskDurationBucketsMs, wall_ms) -
                                       kTaskDurationBucketsMs.begin());
    ++stats_.task_duration_buckets[b];
    stats_.task_duration_sum_ms += wall_ms;
  }
  hooks_.request_turn();  // its capacity is free
  return true;
}

bool Coordinator::end_waits(sched::TaskRef t, uint32_t attempt) const {
  return std::ranges::any_of(deferred_,
                             [&](const Outcome& o) { return o.task == t && o.attempt == attempt; });
}

void Coordinator::retry_outcomes() {
  while (!deferred_.empty()) {  // each pass logs one, drops one, or stops
    if (!record_outcome(deferred_.front())) return;
    deferred_.pop_front();
  }
}

// ---------------------------------------------------------------------- retention

// Over the count: at once. By age: checked at most every keep_for/10 (1 s .. 60 s), so an
// aging history costs at most one small record per interval, and none once it is pruned.
void Coordinator::prune_if_due() {
  const uint64_t now = hooks_.now_ms();
  const bool over_count = state_.finished_jobs() > options_.keep_finished;
  const uint64_t interval = std::clamp<uint64_t>(options_.keep_finished_for_ms / 10, 1'000, 60'000);
  if (now < last_prune_check_ms_) last_prune_check_ms_ = now;  // the clock went back
  const bool age_due = now - last_prune_check_ms_ >= interval;
  if (!over_count && !age_due) return;
  if (age_due) last_prune_check_ms_ = now;
  auto ids = state_.prune_candidates(options_.keep_finished, options_.keep_finished_for_ms, now,
                                     kPrunedPerRecordMax);
  // A job a client still waits for stays until it has its answer (the next turn prunes it),
  // and so does one a client said it will wait for, until it asks or its hold ends.
  std::erase_if(ids, [this, now](sched::JobId id) {
    if (waiters_.contains(id) || answering_.contains(id)) return true;
    auto it = awaited_.find(id);
    if (it == awaited_.end()) return false;
    if (it->second == 0) it->second = now + kThenWaitHoldMs;  // the hold runs from its end
    if (now < it->second) return true;
    awaited_.erase(it);  // the client never asked
    return false;
  });
  if (ids.empty()) return;
  pb::WalRecord rec;
  pb::JobsPruned* p = rec.mutable_jobs_pruned();
  for (sched::JobId id : ids) p->add_job_ids(id);
  p->set_pruned_ms(now);
  if (auto seq = commit(rec, nullptr); !seq) return;  // refused: the next turn tries again
  if (ids.size() == kPrunedPerRecordMax) hooks_.request_turn();
}

// ---------------------------------------------------------------------- snapshots

void Coordinator::start_snapshot() {
  const uint64_t since = store_.bytes_since_snapshot();
  const uint64_t threshold = std::max(options_.snapshot_wal_bytes_min, store_.snapshot_bytes());
  if (since < threshold || since < snapshot_retry_bytes_ || failed_) return;
  const uint64_t covers = state_.applied_seq();
  if (covers == 0) return;
  auto sink = store_.begin_snapshot(covers);
  if (!sink) {
    ++stats_.snapshot_failures;
    snapshot_retry_bytes_ = since + threshold;
    warn("cannot start a snapshot: " + sink.error().describe());
    return;
  }
  builder_ = std::make_unique<SnapshotBuilder>(state_);  // the cut: same seq as `covers`
  sink_ = std::move(*sink);
  ++stats_.snapshots_started;
  hooks_.request_turn();
}

// One bounded step: hand encoded chunks to the sink while it has room, else encode more.
// A busy sink waits for its writes; the host calls turn() after storage completions.
void Coordinator::snapshot_step() {
  if (sink_ == nullptr) return start_snapshot();
  if (snapshot_finishing_) return;
  while (builder_->has_chunk() && !sink_->busy()) {
    if (auto st = sink_->add(builder_->take_chunk()); !st) {
      ++stats_.snapshot_failures;
      warn("snapshot abandoned: " + st.error().describe());
      snapshot_retry_bytes_ = store_.bytes_since_snapshot() + options_.snapshot_wal_bytes_min;
      builder_.reset();
      retired_sink_ = std::move(sink_);
      return;
    }
  }
  if (sink_->busy()) return;
  if (!builder_->encoded_all()) {
    builder_->step(options_.snapshot_tasks_per_turn);
    hooks_.request_turn();
    return;
  }
  if (builder_->has_chunk()) return hooks_.request_turn();
  finish_snapshot();
}

// Every chunk is with the sink. The snapshot may replace the WAL only up to what is
// durable, so it is finished once its cut is.
void Coordinator::finish_snapshot() {
  const uint64_t covers = builder_->covers_seq();
  stats_.snapshot_slices_copied_early += builder_->slices_copied_early();
  builder_.reset();
  snapshot_finishing_ = true;
  bool queued = when_durable([this, covers] {
    sink_->finish([this, covers](Status st) {
      if (st) {
        ++stats_.snapshots_written;
        info("snapshot through record " + std::to_string(covers) + " written");
      } else {
        ++stats_.snapshot_failures;
        snapshot_retry_bytes_ = store_.bytes_since_snapshot() + options_.snapshot_wal_bytes_min;
        warn("snapshot failed: " + st.error().describe());
      }
      retired_sink_ = std::move(sink_);  // freed on the next turn, not inside its own callback
      snapshot_finishing_ = false;
      hooks_.request_turn();
    });
  });
  if (!queued) {  // too many reads waiting: the snapshot is abandoned and retried later
    retired_sink_ = std::move(sink_);
    snapshot_finishing_ = false;
  }
}

// -------------------------------------------------------------------------- turn

void Coordinator::turn() {
  if (!snapshot_finishing_) retired_sink_.reset();
  retry_outcomes();
  start_promoted();
  end_stranded_standbys();
  if (!stopping_) {
    schedule();
    prune_if_due();
    stop_drained_tasks();
  }
  snapshot_step();
}

}  // namespace cardnode::runtime
