#include "runtime/coordinator/agent_hub.h"

#include <sys/random.h>

#include <algorithm>
#include <optional>
#include <set>

#include "runtime/coordinator/api.h"

namespace cardnode::runtime {
namespace {

sched::TaskRef ref_of(const pb::TaskAttempt& a) {
  return {a.job_id(), a.index()};
}

pb::TaskAttempt attempt_of(sched::TaskRef t, uint32_t attempt) {
  pb::TaskAttempt a;
  a.set_job_id(t.job);
  a.set_index(t.index);
  a.set_attempt(attempt);
  return a;
}

TaskExit exit_of(const pb::TaskOutcome& o) {
  return TaskExit{o.state(), o.exit_code(), o.signal(), o.requeue_free(), usage_from_pb(o.usage())};
}

uint64_t random_session_id() {
  uint64_t id = 0;
  while (id == 0) {
    if (::getrandom(&id, sizeof id, 0) != static_cast<ssize_t>(sizeof id)) id = 0;
  }
  return id;
}

constexpr uint64_t kFieldOverheadBytes = 6;  // a repeated field's tag and length, at most

pb::Response stale_session() {
  return error_response({Errc::kUnavailable, "stale agent session; say hello again", 0});
}

// How an attempt stopped before its start went out ends: as the agent would report the kill.
TaskExit killed_exit(KillReason r) {
  switch (r) {
    case KillReason::kCancelled: return TaskExit{pb::TASK_CANCELLED, 0, 0};
    case KillReason::kTimedOut: return TaskExit{pb::TASK_TIMED_OUT, 0, 0};
    case KillReason::kShutdown: return TaskExit{pb::TASK_LOST, 0, 0, true};
  }
  return TaskExit{pb::TASK_CANCELLED, 0, 0};
}

// The board's heat, as its facts say (hello and every heartbeat): held or released.
void report_heat(Coordinator& c, sched::NodeId node, const pb::NodeFacts& f) {
  std::optional<int32_t> milli;
  if (f.has_temperature_millicelsius()) milli = f.temperature_millicelsius();
  (void)c.report_heat(node, milli, f.throttled(), f.under_voltage());
}

pb::StopReason stop_reason(KillReason r) {
  switch (r) {
    case KillReason::kCancelled: return pb::STOP_CANCELLED;
    case KillReason::kTimedOut: return pb::STOP_TIMED_OUT;
    case KillReason::kShutdown: return pb::STOP_SHUTDOWN;
  }
  return pb::STOP_CANCELLED;
}

}  // namespace

// The coordinator's TaskRunner for one remote node: work is queued on the session and
// goes out with the agent's next AgentPoll answer. Ends come back as AgentReports through
// Coordinator::report_end (the TaskRunner contract's path for another board), not on_exit.
class AgentHub::RemoteRunner final : public TaskRunner {
 public:
  RemoteRunner(AgentHub& hub, Session& session) : hub_(hub), session_(session) {}
  Status start(const TaskLaunch& l, ExitCallback /*on_exit: see above*/) override;
  void kill(uint64_t job_id, uint32_t index, KillReason reason) override;

 private:
  AgentHub& hub_;
  Session& session_;
};

struct AgentHub::Session {
  uint64_t id = 0;
  sched::NodeId node = 0;
  std::string identity;
  pb::NodeFacts facts;
  uint64_t last_seen_ms = 0;
  bool alive = true;         // false once declared down (a new hello makes a new session)
  uint64_t incarnation = 0;  // the agent process's (AgentHello.incarnation)
  std::optional<net::Responder> poll;
  pb::AgentWork work;  // queued for the next poll answer
  uint64_t work_bytes = 0;
  // Starts of the last answer, until the next poll shows the agent got it (it polls again
  // only after handling an answer). An answer on a connection that broke is lost with it;
  // a new session sends these again rather than end them lost.
  std::vector<pb::TaskStart> unconfirmed;
  std::unique_ptr<RemoteRunner> runner;
};

Status AgentHub::RemoteRunner::start(const TaskLaunch& l, ExitCallback) {
  if (!session_.alive) return fail(Errc::kUnavailable, "node is down");
  pb::TaskStart* s = session_.work.add_start();
  *s->mutable_task() = attempt_of({l.job_id, l.index}, l.attempt);
  s->set_count(l.count);
  for (const auto& a : l.argv) s->add_command(a);
  for (const auto& [k, v] : l.env) (*s->mutable_env())[k] = v;
  s->set_cwd(l.cwd);
  s->set_cpu_millis(l.limits.cpu_millis);
  s->set_mem_bytes(l.limits.mem_bytes);
  s->set_timeout_ms(l.timeout_ms);
  s->set_node_name(l.node_name);
  s->set_user(l.user);
  session_.work_bytes += s->ByteSizeLong();
  hub_.flush(session_);
  return {};
}

void AgentHub::RemoteRunner::kill(uint64_t job_id, uint32_t index, KillReason reason) {
  if (!session_.alive) return;
  const sched::TaskRef t{job_id, index};
  // The attempt the state runs there: the agent stops exactly that one.
  for (const auto& [task, attempt] : hub_.c_.attempts_on(session_.node)) {
    if (task != t) continue;
    // Its start has not gone out yet: it never will, and the attempt ends here. (A stop
    // would go out ahead of it — stops lead every answer — and find nothing to stop.)
    auto* starts = session_.work.mutable_start();
    for (int i = 0; i < starts->size(); ++i) {
      const pb::TaskAttempt& queued = starts->Get(i).task();
      if (ref_of(queued) != t || queued.attempt() != attempt) continue;
      session_.work_bytes -= std::min<uint64_t>(session_.work_bytes, starts->Get(i).ByteSizeLong());
      starts->DeleteSubrange(i, 1);
      (void)hub_.c_.report_end(t, attempt, session_.node, killed_exit(reason));
      return;
    }
    pb::TaskStop* s = session_.work.add_stop();
    *s->mutable_task() = attempt_of(t, attempt);
    s->set_reason(stop_reason(reason));
    session_.work_bytes += s->ByteSizeLong();
    hub_.flush(session_);
    return;
  }
}

AgentHub::AgentHub(Coordinator& coordinator, AgentHubOptions options,
                   std::function<uint64_t()> now_ms)
    : c_(coordinator), options_(options), now_ms_(std::move(now_ms)) {}

AgentHub::~AgentHub() = default;

// Answers the held poll with what is queued, up to work_bytes_max per answer.
void AgentHub::flush(Session& s) {
  if (!s.poll || (s.work.start_size() == 0 && s.work.stop_size() == 0 && s.work.logs_size() == 0)) {
    return;
  }
  pb::Response resp;
  pb::AgentWork* out = resp.mutable_work();
  uint64_t bytes = 0;
  auto take = [&](auto* from, auto* to) {
    int n = 0;
    while (n < from->size()) {
      // With its field's tag and length. One item over the budget goes alone.
      const uint64_t size = from->Get(n).ByteSizeLong() + kFieldOverheadBytes;
      if (bytes > 0 && bytes + size > options_.work_bytes_max) break;
      bytes += size;
      *to->Add() = std::move(*from->Mutable(n));
      ++n;
    }
    from->DeleteSubrange(0, n);
  };
  take(s.work.mutable_stop(), out->mutable_stop());  // stops first: they free capacity
  take(s.work.mutable_start(), out->mutable_start());
  take(s.work.mutable_logs(), out->mutable_logs());
  s.unconfirmed.assign(out->start().begin(), out->start().end());
  s.work_bytes = s.work_bytes > bytes ? s.work_bytes - bytes : 0;
  net::Responder r = *s.poll;
  s.poll.reset();
  r.reply(std::move(resp));
}

AgentHub::Session* AgentHub::session_for(uint64_t session_id) {
  auto it = session_ids_.find(session_id);
  if (it == session_ids_.end()) {
    ++stats_.stale_sessions;
    return nullptr;
  }
  Session* s = sessions_.at(it->second).get();
  return s->alive && s->id == session_id ? s : nullptr;
}

sched::NodeSpec AgentHub::spec_from(const pb::NodeFacts& f) const {
  sched::NodeSpec spec;
  spec.name = f.name();
  spec.capacity = {f.cpu_millis(), f.mem_bytes()};
  spec.tasks_max = f.tasks_max();
  for (const auto& [k, v] : f.labels()) spec.labels[k] = v;
  if (!f.arch().empty()) spec.labels["arch"] = f.arch();
  return spec;
}

// ---------------------------------------------------------------------------- hello

void AgentHub::on_hello(const pb::AgentHello& m, const net::Responder& r) {
  ++stats_.hellos;
  if (m.identity().empty() || m.facts().name().empty()) {
    return r.reply(error_response({Errc::kInvalidArgument, "hello without identity or name", 0}));
  }
  // Refused before anything is written: a refused agent leaves no node record behind.
  const auto known = c_.state().node_by_identity(m.identity());
  const auto existing = known ? sessions_.find(*known) : sessions_.end();
  if (existing == sessions_.end() && sessions_.size() >= options_.sessions_max) {
    return r.reply(error_response({Errc::kResourceExhausted, "too many agents", 0}));
  }
  // Another agent process with this identity and a live session: two boards share a data
  // dir (a cloned SD card). Taking the session over would make them displace each other
  // for ever; the newcomer is refused until the live one falls silent. (The same process
  // reconnecting, or a restart of it after the old one went quiet, is let in.)
  if (existing != sessions_.end()) {
    const Session& old = *existing->second;
    const bool live = old.alive && now_ms_() - old.last_seen_ms < 2 * options_.heartbeat_ms;
    if (live && (m.incarnation() == 0 || old.incarnation != m.incarnation())) {
      return r.reply(
          error_response({Errc::kBusy,
                          "node identity " + m.identity() + " is in use by a running agent (" +
                              old.facts.name() + "): each board needs its own DATA_DIR/node_id",
                          0}));
    }
  }
  auto node = c_.register_node(m.identity(), spec_from(m.facts()));
  if (!node) return r.reply(error_response(node.error()));
  // A new session replaces any old one of this node (its connection is gone or going).
  auto& slot = sessions_[*node];
  // Starts and log reads the old session never sent go out on the new one (an unsent start
  // is not lost: the agent cannot list it), and so do the starts of its last answer if the
  // agent never confirmed it (below: only those it does not list). Its stops are told again
  // at attach_runner.
  pb::AgentWork unsent;
  std::vector<pb::TaskStart> unconfirmed;
  if (slot) {
    c_.detach_runner(*node);  // the old runner goes with its session
    session_ids_.erase(slot->id);
    if (slot->poll) slot->poll->reply(stale_session());
    for (pb::TaskStart& st : *slot->work.mutable_start()) {
      if (c_.runs(ref_of(st.task()), st.task().attempt(), *node))
        *unsent.add_start() = std::move(st);
    }
    unsent.mutable_logs()->Swap(slot->work.mutable_logs());
    unconfirmed = std::move(slot->unconfirmed);
  }
  slot = std::make_unique<Session>();
  Session& s = *slot;
  s.work = std::move(unsent);
  s.work_bytes = s.work.ByteSizeLong();
  s.id = random_session_id();
  s.node = *node;
  s.identity = m.identity();
  s.incarnation = m.incarnation();
  s.facts = m.facts();
  s.last_seen_ms = now_ms_();
  s.runner = std::make_unique<RemoteRunner>(*this, s);
  session_ids_[s.id] = s.node;
  awaited_.erase(s.node);
  // Before its runner attaches: a hot board that (re)joins gets nothing in between.
  report_heat(c_, s.node, s.facts);

  pb::Response resp;
  pb::AgentWelcome* w = resp.mutable_welcome();
  w->set_node_id(s.node);
  w->set_session(s.id);
  w->set_heartbeat_ms(options_.heartbeat_ms);
  // Ends it kept for us first: they settle those attempts.
  for (const pb::TaskOutcome& o : m.ended()) {
    auto report = c_.report_end(ref_of(o.task()), o.task().attempt(), s.node, exit_of(o));
    if (report != Coordinator::EndReport::kDeferred) *w->add_acked() = o.task();
  }
  // What it still runs: kept when still its own, stopped there otherwise.
  std::set<std::pair<sched::TaskRef, uint32_t>> listed;
  for (const pb::TaskAttempt& a : m.running()) {
    listed.insert({ref_of(a), a.attempt()});
    if (!c_.runs(ref_of(a), a.attempt(), s.node)) {
      *w->add_stop() = a;
      ++stats_.stale_stopped;
    }
  }
  // Starts of an answer it may never have had, that it does not list and that are still
  // its: sent again (an agent ignores a start it knows).
  for (pb::TaskStart& st : unconfirmed) {
    const auto key = std::make_pair(ref_of(st.task()), st.task().attempt());
    if (listed.contains(key) || !c_.runs(key.first, key.second, s.node)) continue;
    s.work_bytes += st.ByteSizeLong();
    *s.work.add_start() = std::move(st);
  }
  for (const pb::TaskStart& st : s.work.start())
    listed.insert({ref_of(st.task()), st.task().attempt()});
  // What the state runs there that the agent no longer knows: gone.
  for (const auto& [t, attempt] : c_.attempts_on(s.node)) {
    if (!listed.contains({t, attempt})) {
      (void)c_.report_end(t, attempt, s.node, TaskExit{pb::TASK_LOST, 0, 0});
    }
  }
  auto welcome = [r, resp = std::move(resp)]() mutable { r.reply(std::move(resp)); };
  if (!c_.when_durable(std::move(welcome))) {
    // Refused for now: no session, no runner (nothing is placed on a node that cannot be
    // told); the agent says hello again shortly. What was applied above stands.
    const sched::NodeId n = s.node;
    session_ids_.erase(s.id);
    sessions_.erase(n);
    return r.reply(error_response({Errc::kBusy, "server busy", 0}));
  }
  c_.attach_runner(s.node, s.runner.get());
}

// ------------------------------------------------------------------ heartbeat, poll

void AgentHub::on_heartbeat(const pb::AgentHeartbeat& m, const net::Responder& r) {
  ++stats_.heartbeats;
  Session* s = session_for(m.session());
  if (s == nullptr) return r.reply(stale_session());
  s->last_seen_ms = now_ms_();
  // Name, capacity or labels changed: a durable update (rare); the rest is only shown.
  sched::NodeSpec spec = spec_from(m.facts());
  const sched::Node* node = c_.state().cluster().node(s->node);
  bool changed = node->spec.name != spec.name ||
                 node->spec.capacity.cpu_millis != spec.capacity.cpu_millis ||
                 node->spec.capacity.mem_bytes != spec.capacity.mem_bytes ||
                 node->spec.tasks_max != spec.tasks_max || node->spec.labels != spec.labels;
  s->facts = m.facts();
  if (changed) (void)c_.register_node(s->identity, spec);
  report_heat(c_, s->node, s->facts);
  r.reply(pb::Response{});
}

void AgentHub::on_poll(const pb::AgentPoll& m, net::Responder r) {
  Session* s = session_for(m.session());
  if (s == nullptr) return r.reply(stale_session());
  s->unconfirmed.clear();  // the last answer arrived: the agent polls only after handling it
  if (s->poll) s->poll->reply(pb::Response{});  // an older poll of this session: answered empty
  s->poll = std::move(r);
  flush(*s);
}

// ------------------------------------------------------------------------- reports

void AgentHub::on_report(const pb::AgentReport& m, const net::Responder& r) {
  ++stats_.reports;
  Session* s = session_for(m.session());
  if (s == nullptr) return r.reply(stale_session());
  s->last_seen_ms = now_ms_();
  pb::Response resp;
  pb::AgentReportAck* ack = resp.mutable_report_ack();
  for (const pb::TaskOutcome& o : m.outcomes()) {
    auto report = c_.report_end(ref_of(o.task()), o.task().attempt(), s->node, exit_of(o));
    // A deferred end is not acknowledged: the agent keeps it and sends it again.
    if (report != Coordinator::EndReport::kDeferred) *ack->add_acked() = o.task();
  }
  // Acknowledged only once durable: the agent forgets what we acknowledge.
  if (!c_.when_durable([r, resp = std::move(resp)]() mutable { r.reply(std::move(resp)); })) {
    r.reply(error_response({Errc::kBusy, "server busy", 0}));
  }
}

// ---------------------------------------------------------------------------- logs

bool AgentHub::serves(sched::NodeId node) const {
  auto it = sessions_.find(node);
  return it != sessions_.end();
}

void AgentHub::fetch_log(sched::NodeId node, const pb::ReadLog& m, uint32_t wait_ms,
                         std::function<void(pb::Response)> reply) {
  auto it = sessions_.find(node);
  const sched::Node* n = c_.state().cluster().node(node);
  const std::string name = n != nullptr ? n->spec.name : std::to_string(node);
  if (it == sessions_.end() || !it->second->alive) {
    return reply(error_response(
        {Errc::kUnavailable, "the logs are on node " + name + ", which is down", 0}));
  }
  if (fetches_.size() >= options_.log_fetches_max) {
    return reply(error_response({Errc::kBusy, "too many log reads waiting", 0}));
  }
  const uint64_t id = next_fetch_id_++;
  pb::LogFetch* f = it->second->work.add_logs();
  f->set_fetch_id(id);
  f->set_job_id(m.job_id());
  f->set_index(m.index());
  f->set_stream(m.stream());
  f->set_offset(m.offset());
  f->set_max_bytes(std::min<uint32_t>(m.max_bytes() == 0 ? kLogChunkBytesMax : m.max_bytes(),
                                      kLogChunkBytesMax));
  f->set_wait_ms(m.tail() ? 0 : wait_ms);
  f->set_tail(m.tail());
  fetches_[id] = Fetch{std::move(reply), now_ms_() + wait_ms + options_.log_fetch_timeout_ms};
  flush(*it->second);
}

void AgentHub::on_log(const pb::AgentLog& m, const net::Responder& r) {
  if (session_for(m.session()) == nullptr) return r.reply(stale_session());
  r.reply(pb::Response{});
  auto it = fetches_.find(m.fetch_id());
  if (it == fetches_.end()) return;  // timed out meanwhile
  auto reply = std::move(it->second.reply);
  fetches_.erase(it);
  if (m.error() != pb::OK) {
    return reply(error_response({static_cast<Errc>(m.error()), m.error_message(), 0}));
  }
  pb::Response resp;
  pb::LogChunk* chunk = resp.mutable_log();
  chunk->set_data(m.data());
  chunk->set_final(m.final());
  reply(std::move(resp));
}

// --------------------------------------------------------------------------- time

void AgentHub::declare_down(Session& s) {
  s.alive = false;
  ++stats_.nodes_declared_down;
  session_ids_.erase(s.id);
  if (s.poll) {
    s.poll->reply(stale_session());
    s.poll.reset();
  }
  c_.detach_runner(s.node);
  c_.end_running_tasks(s.node);
}

void AgentHub::tick() {
  const uint64_t now = now_ms_();
  for (auto& [node, s] : sessions_) {
    if (s->alive && now - s->last_seen_ms > options_.grace_ms) declare_down(*s);
  }
  // Nodes the log says run tasks and that have not come back within their grace.
  for (auto it = awaited_.begin(); it != awaited_.end();) {
    if (now < it->second) {
      ++it;
      continue;
    }
    c_.end_running_tasks(it->first);
    it = awaited_.erase(it);
  }
  for (auto it = fetches_.begin(); it != fetches_.end();) {
    if (now < it->second.deadline_ms) {
      ++it;
      continue;
    }
    auto reply = std::move(it->second.reply);
    it = fetches_.erase(it);
    reply(error_response({Errc::kUnavailable, "the board holding the log did not answer", 0}));
  }
}

void AgentHub::await_returning_nodes(std::optional<sched::NodeId> local) {
  const uint64_t deadline = now_ms_() + options_.grace_ms;
  for (const sched::Node& n : c_.state().cluster().nodes()) {
    if (n.removed || n.running == 0 || (local && n.id == *local)) continue;
    if (!sessions_.contains(n.id)) awaited_[n.id] = deadline;
  }
}

void AgentHub::stop() {
  for (auto& [node, s] : sessions_) {
    if (s->poll) {
      s->poll->reply(pb::Response{});
      s->poll.reset();
    }
  }
  for (auto& [id, f] : fetches_)
    f.reply(error_response({Errc::kUnavailable, "server is stopping", 0}));
  fetches_.clear();
}

void AgentHub::describe(const sched::Node& node, pb::NodeInfo* info) const {
  auto it = sessions_.find(node.id);
  if (it == sessions_.end()) return;
  const pb::NodeFacts& f = it->second->facts;
  info->set_arch(f.arch());
  info->set_isolation(f.isolation());
  for (const auto& e : f.enforced()) info->add_enforced(e);
  info->set_io_backend(f.io_backend());
  info->set_board_model(f.board_model());
  info->set_task_user(f.task_user());
  info->set_root_tasks(f.root_tasks());
  if (f.has_temperature_millicelsius())
    info->set_temperature_millicelsius(f.temperature_millicelsius());
  info->set_throttled(f.throttled());
  info->set_under_voltage(f.under_voltage());
  if (f.has_load1_milli()) info->set_load1_milli(f.load1_milli());
  info->set_last_seen_ms_ago(now_ms_() - it->second->last_seen_ms);
}

}  // namespace cardnode::runtime
