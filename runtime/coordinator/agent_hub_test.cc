// The agent hub through its narrow interfaces (a Nomad-style harness): a real Coordinator on
// a real LocalStore in a temp dir (runtime/coordinator/test_harness.h), the hub's request
// handlers called directly with Responder::to() capturing their answers, fake agents that
// play the protocol of runtime/agent/agent.cc by hand, and two fake clocks — the
// coordinator's wall clock and the hub's monotonic one — that only the test moves.
//
// Every test asserts on what can be observed from outside: the answers an agent gets, the
// coordinator's state, and the records (or bytes) that reached the store.
#include "runtime/coordinator/agent_hub.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cerrno>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "runtime/coordinator/api.h"
#include "runtime/coordinator/test_harness.h"
#include "storage/log_store.h"
#include "storage/test_util.h"

namespace cardnode::sched {
// Failure messages say "running", not "1-byte object <01>".
void PrintTo(TaskState s, std::ostream* os) {
  *os << task_state_name(s);
}
void PrintTo(JobState s, std::ostream* os) {
  *os << job_state_name(s);
}
void PrintTo(NodeState s, std::ostream* os) {
  *os << node_state_name(s);
}
}  // namespace cardnode::sched

namespace cardnode::runtime {
namespace {

using storage::testing::TempDir;
using testing::CoordinatorRig;
using Attempt = std::tuple<uint64_t, uint32_t, uint32_t>;  // job, index, attempt

constexpr uint64_t kMem = 64ull << 20;

pb::TaskAttempt attempt(uint64_t job, uint32_t index, uint32_t n) {
  pb::TaskAttempt a;
  a.set_job_id(job);
  a.set_index(index);
  a.set_attempt(n);
  return a;
}

Attempt key(const pb::TaskAttempt& a) {
  return {a.job_id(), a.index(), a.attempt()};
}

pb::TaskOutcome outcome(uint64_t job, uint32_t index, uint32_t n, pb::TaskState state,
                        int32_t exit_code = 0, bool requeue_free = false) {
  pb::TaskOutcome o;
  *o.mutable_task() = attempt(job, index, n);
  o.set_state(state);
  o.set_exit_code(exit_code);
  o.set_requeue_free(requeue_free);
  return o;
}

pb::JobSpec spec(uint32_t count, uint32_t cpu_millis = 1000, uint32_t retries = 0) {
  pb::JobSpec s;
  s.add_command("true");
  s.set_count(count);
  s.set_cpu_millis(cpu_millis);
  s.set_mem_bytes(kMem);
  s.set_retries(retries);
  return s;
}

// An answer captured from a Responder::to(): empty until the hub replies. If the hub drops
// every copy unanswered, the Responder itself answers INTERNAL, which the tests rule out.
class Reply {
 public:
  net::Responder responder() const {
    auto slot = slot_;
    return net::Responder::to([slot](pb::Response&& r) { *slot = std::move(r); });
  }
  bool answered() const { return slot_->has_value(); }
  const pb::Response& get() const {
    EXPECT_TRUE(answered());
    static const pb::Response kNone;
    return answered() ? **slot_ : kNone;
  }
  bool ok() const { return answered() && get().error() == pb::OK; }

 private:
  std::shared_ptr<std::optional<pb::Response>> slot_ =
      std::make_shared<std::optional<pb::Response>>();
};

class AgentHubTest;

// One board, played by the test: it says what the protocol says and remembers what it got.
class FakeAgent {
 public:
  FakeAgent(AgentHubTest& t, std::string name, uint32_t tasks_max = 0, uint32_t cpu_millis = 8000,
            std::map<std::string, std::string> labels = {})
      : t_(t), identity_("id-" + name), incarnation_(next_incarnation()) {
    facts_.set_name(name);
    facts_.set_arch("aarch64");
    facts_.set_cpu_millis(cpu_millis);
    facts_.set_mem_bytes(8ull << 30);
    facts_.set_tasks_max(tasks_max);
    facts_.set_isolation("cgroup-v2");
    facts_.set_io_backend("io_uring");
    for (const auto& [k, v] : labels) (*facts_.mutable_labels())[k] = v;
  }

  // Hello, answered once durable (the caller settles or completes the store).
  Reply hello(const std::vector<pb::TaskAttempt>& running = {},
              const std::vector<pb::TaskOutcome>& ended = {});
  // Hello, settled, and the welcome taken: the session is this one from now on.
  pb::AgentWelcome join(const std::vector<pb::TaskAttempt>& running = {},
                        const std::vector<pb::TaskOutcome>& ended = {});
  Reply heartbeat();
  Reply report(const std::vector<pb::TaskOutcome>& outcomes);
  Reply log(uint64_t fetch_id, std::string data, bool final);
  // Sends a poll and keeps it outstanding (as the agent always does).
  Reply& poll();
  // Takes every answer the hub has for this agent: polls again while polls are answered,
  // and leaves one poll outstanding. Each answer is also kept in `answers`, in order.
  pb::AgentWork work();

  // Another board with this one's data dir (a cloned SD card): same identity, another process.
  void clone_identity_of(const FakeAgent& other) { identity_ = other.identity_; }
  // The agent process restarted: same identity, a new incarnation.
  void restart_process() { incarnation_ = next_incarnation(); }
  static uint64_t next_incarnation() {
    static uint64_t n = 0;
    return ++n;
  }

  uint64_t session() const { return session_; }
  void set_session(uint64_t s) { session_ = s; }
  sched::NodeId node() const { return node_; }
  pb::NodeFacts& facts() { return facts_; }
  Reply& held() { return held_; }
  // Everything this agent was told, in the order it was told (work answers only).
  std::vector<pb::AgentWork> answers;

 private:
  AgentHubTest& t_;
  std::string identity_;
  uint64_t incarnation_ = 0;
  pb::NodeFacts facts_;
  uint64_t session_ = 0;
  sched::NodeId node_ = 0;
  Reply held_;
};

class AgentHubTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(tmp_.path().empty());
    dir_ = tmp_.path() + "/data";
    ASSERT_EQ(::mkdir(dir_.c_str(), 0700), 0);
  }
  void TearDown() override {
    if (rig_) rig_->close([this] { drop_hub(); });
  }

  void open() {
    rig_ = std::make_unique<CoordinatorRig>(dir_, options_, &wall_ms_, faulty_fs_);
    rig_->segment_bytes = segment_bytes_;
    ASSERT_TRUE(rig_->open());
    make_hub();
  }
  void make_hub() {
    hub_ = std::make_unique<AgentHub>(rig_->c(), hub_options_, [this] { return mono_ms_; });
  }
  void drop_hub() {
    if (hub_) hub_->stop();
    hub_.reset();
  }
  // The server stops and starts again over the same data dir (as after a kill -9 the
  // durable part is the same: nothing of the old process's memory survives).
  void restart() {
    ASSERT_TRUE(rig_->restart([this] { drop_hub(); }));
    make_hub();
    hub_->await_returning_nodes(std::nullopt);
  }

  void advance(uint64_t ms) {
    mono_ms_ += ms;
    wall_ms_ += ms;
  }
  void settle() { rig_->settle(); }

  sched::JobId submit(pb::JobSpec s) {
    std::optional<Result<sched::JobId>> id;
    rig_->c().submit(std::move(s), [&](Result<sched::JobId> r) { id = r; });
    settle();
    EXPECT_TRUE(id && *id);
    return id && *id ? **id : 0;
  }

  Coordinator& c() { return rig_->c(); }
  AgentHub& hub() { return *hub_; }
  const sched::Task& task(sched::JobId job, uint32_t index) {
    return c().state().cluster().job(job)->tasks[index];
  }
  const sched::Node& node(sched::NodeId id) { return *c().state().cluster().node(id); }
  uint64_t records() { return rig_->store().next_sequence(); }

  // What `cardnode nodes` says of a node, through the real client API.
  std::string node_state(const std::string& name) {
    std::optional<pb::NodeInfo> n = listed_node(name);
    return n ? n->state() : "(absent)";
  }
  // The whole entry, with what the hub knows of the board (facts), as the server fills it.
  pb::NodeInfo node_info(const std::string& name) {
    std::optional<pb::NodeInfo> n = listed_node(name);
    if (!n) ADD_FAILURE() << "no node " << name;
    return n.value_or(pb::NodeInfo{});
  }

  std::optional<pb::NodeInfo> listed_node(const std::string& name) {
    storage::LogStore logs(rig_->engine(), storage::LogStoreOptions{.dir = tmp_.path() + "/logs"});
    ClientApi api(c(), logs, hub(), std::nullopt,
                  [this](const sched::Node& n, pb::NodeInfo* i) { hub().describe(n, i); });
    Reply r;
    pb::Request req;
    req.mutable_list_nodes();
    api.handle(std::move(req), r.responder());
    settle();
    for (const pb::NodeInfo& n : r.get().nodes().nodes()) {
      if (n.name() == name) return n;
    }
    return std::nullopt;
  }

  TempDir tmp_;
  std::string dir_;
  CoordinatorOptions options_;
  AgentHubOptions hub_options_;
  bool faulty_fs_ = false;
  uint64_t segment_bytes_ = 1 << 20;
  uint64_t wall_ms_ = 1'700'000'000'000;
  uint64_t mono_ms_ = 5'000'000;
  std::unique_ptr<CoordinatorRig> rig_;
  std::unique_ptr<AgentHub> hub_;

  friend class FakeAgent;
};

Reply FakeAgent::hello(const std::vector<pb::TaskAttempt>& running,
                       const std::vector<pb::TaskOutcome>& ended) {
  pb::AgentHello h;
  h.set_identity(identity_);
  h.set_incarnation(incarnation_);
  *h.mutable_facts() = facts_;
  for (const auto& a : running) *h.add_running() = a;
  for (const auto& o : ended) *h.add_ended() = o;
  Reply r;
  t_.hub().on_hello(h, r.responder());
  return r;
}

pb::AgentWelcome FakeAgent::join(const std::vector<pb::TaskAttempt>& running,
                                 const std::vector<pb::TaskOutcome>& ended) {
  Reply r = hello(running, ended);
  t_.settle();
  EXPECT_TRUE(r.ok()) << (r.answered() ? r.get().error_message() : "no answer");
  if (!r.ok()) return {};
  session_ = r.get().welcome().session();
  node_ = r.get().welcome().node_id();
  held_ = Reply{};
  return r.get().welcome();
}

Reply FakeAgent::heartbeat() {
  pb::AgentHeartbeat m;
  m.set_session(session_);
  *m.mutable_facts() = facts_;
  Reply r;
  t_.hub().on_heartbeat(m, r.responder());
  return r;
}

Reply FakeAgent::report(const std::vector<pb::TaskOutcome>& outcomes) {
  pb::AgentReport m;
  m.set_session(session_);
  for (const auto& o : outcomes) *m.add_outcomes() = o;
  Reply r;
  t_.hub().on_report(m, r.responder());
  return r;
}

Reply FakeAgent::log(uint64_t fetch_id, std::string data, bool final) {
  pb::AgentLog m;
  m.set_session(session_);
  m.set_fetch_id(fetch_id);
  m.set_data(std::move(data));
  m.set_final(final);
  Reply r;
  t_.hub().on_log(m, r.responder());
  return r;
}

Reply& FakeAgent::poll() {
  pb::AgentPoll m;
  m.set_session(session_);
  held_ = Reply{};
  t_.hub().on_poll(m, held_.responder());
  return held_;
}

pb::AgentWork FakeAgent::work() {
  pb::AgentWork all;
  for (int i = 0; i < 1000; ++i) {
    if (!held_.answered()) {
      // A poll is outstanding and unanswered, or none was ever sent: send one and look.
      Reply& r = poll();
      if (!r.answered()) return all;
    }
    const pb::Response& resp = held_.get();
    EXPECT_EQ(resp.error(), pb::OK) << resp.error_message();
    if (resp.error() != pb::OK) return all;
    answers.push_back(resp.work());
    all.MergeFrom(resp.work());
    held_ = Reply{};
  }
  ADD_FAILURE() << "the hub kept answering";
  return all;
}

std::vector<Attempt> starts(const pb::AgentWork& w) {
  std::vector<Attempt> out;
  for (const auto& s : w.start()) out.push_back(key(s.task()));
  return out;
}

std::vector<std::pair<Attempt, pb::StopReason>> stops(const pb::AgentWork& w) {
  std::vector<std::pair<Attempt, pb::StopReason>> out;
  for (const auto& s : w.stop()) out.emplace_back(key(s.task()), s.reason());
  return out;
}

std::vector<Attempt> acked(const pb::Response& r) {
  std::vector<Attempt> out;
  const auto& list = r.has_welcome() ? r.welcome().acked() : r.report_ack().acked();
  for (const auto& a : list) out.push_back(key(a));
  return out;
}

// ------------------------------------------------------------------- hello, dispatch

TEST_F(AgentHubTest, HelloRegistersTheNodeAndItsTasksGoOutOnlyOnceTheirPlacementIsDurable) {
  hub_options_.heartbeat_ms = 1500;
  open();
  FakeAgent a(*this, "pi-a", /*tasks_max=*/7, /*cpu_millis=*/4000, {{"zone", "a"}});
  Reply hello = a.hello();
  EXPECT_FALSE(hello.answered()) << "welcomed before the node's record was durable";
  rig_->complete();
  ASSERT_TRUE(hello.ok()) << hello.get().error_message();
  const pb::AgentWelcome& w = hello.get().welcome();
  EXPECT_NE(w.session(), 0u);
  EXPECT_EQ(w.heartbeat_ms(), 1500u);
  EXPECT_EQ(w.stop_size(), 0);
  a.set_session(w.session());

  const sched::Node& n = node(w.node_id());
  EXPECT_EQ(n.spec.name, "pi-a");
  EXPECT_EQ(n.spec.capacity.cpu_millis, 4000u);
  EXPECT_EQ(n.spec.capacity.mem_bytes, 8ull << 30);
  EXPECT_EQ(n.spec.tasks_max, 7u);
  EXPECT_EQ(n.spec.labels,
            (std::map<std::string, std::string>{{"arch", "aarch64"}, {"zone", "a"}}));
  EXPECT_EQ(n.state, sched::NodeState::kReady);

  Reply& held = a.poll();
  EXPECT_FALSE(held.answered()) << "a poll with no work is held";

  pb::JobSpec s = spec(2);
  s.add_command("--flag");
  std::optional<Result<sched::JobId>> id;
  c().submit(s, [&](Result<sched::JobId> r) { id = r; });
  rig_->complete();
  ASSERT_TRUE(id && *id);
  rig_->turn();  // the placements are applied and logged ...
  EXPECT_EQ(node(w.node_id()).running, 2u);
  EXPECT_FALSE(held.answered()) << "a task went out before its placement was durable";
  rig_->complete();  // ... and go out once durable, in the answer of the held poll
  ASSERT_TRUE(held.ok());
  ASSERT_GE(held.get().work().start_size(), 1);
  const pb::TaskStart& first = held.get().work().start(0);
  EXPECT_EQ(key(first.task()), Attempt(**id, 0, 1));
  EXPECT_EQ(first.count(), 2u);
  EXPECT_EQ(std::vector<std::string>(first.command().begin(), first.command().end()),
            (std::vector<std::string>{"true", "--flag"}));
  EXPECT_EQ(first.node_name(), "pi-a");
  EXPECT_EQ(first.cpu_millis(), 1000u);
  EXPECT_EQ(first.mem_bytes(), kMem);

  // What the held poll could not carry goes out with the next poll, at once.
  const std::vector<Attempt> in_held = starts(held.get().work());
  std::set<Attempt> all(in_held.begin(), in_held.end());
  a.held() = Reply{};
  for (Attempt x : starts(a.work())) EXPECT_TRUE(all.insert(x).second) << "sent twice";
  EXPECT_EQ(all, (std::set<Attempt>{{**id, 0, 1}, {**id, 1, 1}}));
  EXPECT_FALSE(a.held().answered()) << "nothing more to send";
}

// ------------------------------------------------------------------------- reports

TEST_F(AgentHubTest, AReportIsAcknowledgedOnlyOnceDurableAndAppliedOnce) {
  open();
  FakeAgent a(*this, "pi-a");
  a.join();
  const sched::JobId job = submit(spec(1, 1000, /*retries=*/2));
  ASSERT_EQ(starts(a.work()), (std::vector<Attempt>{{job, 0, 1}}));

  // The same report twice (the agent sent it again before hearing back).
  Reply first = a.report({outcome(job, 0, 1, pb::TASK_FAILED, 3)});
  Reply again = a.report({outcome(job, 0, 1, pb::TASK_FAILED, 3)});
  EXPECT_EQ(task(job, 0).state, sched::TaskState::kQueued) << "applied at once, in WAL order";
  EXPECT_FALSE(first.answered()) << "acknowledged before it was durable";
  EXPECT_FALSE(again.answered()) << "acknowledged before the first was durable";
  const uint64_t before = records();
  rig_->complete();
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(acked(first.get()), (std::vector<Attempt>{{job, 0, 1}}));
  EXPECT_EQ(acked(again.get()), (std::vector<Attempt>{{job, 0, 1}}));
  EXPECT_EQ(records(), before) << "the duplicate logged something";

  // One failure used one retry: the second attempt is placed, not a third.
  settle();
  EXPECT_EQ(task(job, 0).state, sched::TaskState::kRunning);
  EXPECT_EQ(task(job, 0).attempts, 2u);
  EXPECT_EQ(starts(a.work()), (std::vector<Attempt>{{job, 0, 2}}));

  // Late, a third copy: acknowledged (so the agent forgets it), nothing changes.
  const uint64_t stale_before = c().stats().stale_reports;
  const uint64_t records_before = records();
  Reply late = a.report({outcome(job, 0, 1, pb::TASK_FAILED, 3)});
  settle();
  ASSERT_TRUE(late.ok());
  EXPECT_EQ(acked(late.get()), (std::vector<Attempt>{{job, 0, 1}}));
  EXPECT_EQ(records(), records_before);
  EXPECT_EQ(task(job, 0).attempts, 2u);
  EXPECT_EQ(task(job, 0).state, sched::TaskState::kRunning);
  EXPECT_EQ(c().stats().stale_reports, stale_before + 1);
}

// Node a goes silent, its task moves to b; a comes back and reports the old attempt's end.
TEST_F(AgentHubTest, AReportOfAnAttemptRescheduledElsewhereChangesNothing) {
  open();
  FakeAgent a(*this, "pi-a");
  a.join();
  const sched::JobId job = submit(spec(1));
  ASSERT_EQ(starts(a.work()), (std::vector<Attempt>{{job, 0, 1}}));
  FakeAgent b(*this, "pi-b");
  b.join();
  for (int i = 0; i < 11; ++i) {
    advance(1000);
    EXPECT_TRUE(b.heartbeat().ok());
    hub().tick();
  }
  settle();
  ASSERT_EQ(task(job, 0).node, b.node());
  ASSERT_EQ(task(job, 0).attempts, 2u);
  ASSERT_EQ(starts(b.work()), (std::vector<Attempt>{{job, 0, 2}}));

  pb::AgentWelcome w = a.join({attempt(job, 0, 1)});
  ASSERT_EQ(w.stop_size(), 1);
  EXPECT_EQ(key(w.stop(0)), Attempt(job, 0, 1)) << "the stale copy is stopped there";
  const uint64_t before = records();
  Reply r = a.report({outcome(job, 0, 1, pb::TASK_SUCCEEDED)});
  settle();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(acked(r.get()), (std::vector<Attempt>{{job, 0, 1}})) << "so that a forgets it";
  EXPECT_EQ(records(), before);
  EXPECT_EQ(task(job, 0).state, sched::TaskState::kRunning);
  EXPECT_EQ(task(job, 0).node, b.node());
  EXPECT_EQ(task(job, 0).attempts, 2u);
}

// ------------------------------------------------------------ failure detection

TEST_F(AgentHubTest, ANodeSilentForTheGraceIsDownAndItsTasksAreRequeued) {
  hub_options_.grace_ms = 10'000;
  open();
  FakeAgent a(*this, "pi-a");
  a.join();
  const sched::JobId job = submit(spec(2));
  ASSERT_EQ(starts(a.work()).size(), 2u);
  FakeAgent b(*this, "pi-b");
  b.join();
  b.work();

  // b heartbeats, a says nothing: exactly the grace is not yet down.
  for (int i = 0; i < 10; ++i) {
    advance(1000);
    EXPECT_TRUE(b.heartbeat().ok());
    hub().tick();
  }
  EXPECT_EQ(node(a.node()).state, sched::NodeState::kReady);
  EXPECT_FALSE(a.held().answered());
  advance(1);
  hub().tick();
  EXPECT_EQ(node(a.node()).state, sched::NodeState::kDown);
  EXPECT_EQ(node(b.node()).state, sched::NodeState::kReady);
  EXPECT_EQ(hub().stats().nodes_declared_down, 1u);
  ASSERT_TRUE(a.held().answered()) << "a's held poll is answered";
  EXPECT_EQ(a.held().get().error(), pb::UNAVAILABLE) << "... with: say hello again";

  // Lost, requeued by the scheduler's rules (the lost budget), and placed on b.
  settle();
  for (uint32_t i = 0; i < 2; ++i) {
    EXPECT_EQ(task(job, i).state, sched::TaskState::kRunning);
    EXPECT_EQ(task(job, i).node, b.node());
    EXPECT_EQ(task(job, i).attempts, 2u);
    EXPECT_EQ(task(job, i).lost, 1u);
  }
  std::vector<Attempt> on_b = starts(b.work());
  EXPECT_EQ(std::set<Attempt>(on_b.begin(), on_b.end()),
            (std::set<Attempt>{{job, 0, 2}, {job, 1, 2}}));
  EXPECT_EQ(a.heartbeat().get().error(), pb::UNAVAILABLE) << "a's session is over";
}

TEST_F(AgentHubTest, ATaskLostMoreOftenThanTheBudgetEndsLost) {
  options_.limits.lost_requeues_max = 1;
  open();
  FakeAgent a(*this, "pi-a");
  const sched::JobId job = [&] {
    a.join();
    return submit(spec(1));
  }();
  for (uint32_t round = 1; round <= 2; ++round) {
    ASSERT_EQ(starts(a.work()), (std::vector<Attempt>{{job, 0, round}}));
    advance(hub_options_.grace_ms + 1);
    hub().tick();
    settle();
    a.join({});
  }
  EXPECT_EQ(task(job, 0).state, sched::TaskState::kLost);
  EXPECT_EQ(c().state().cluster().job(job)->state, sched::JobState::kFailed);
}

TEST_F(AgentHubTest, HeartbeatsKeepANodeUpAndWriteNothing) {
  open();
  FakeAgent a(*this, "pi-a");
  a.join();
  a.work();
  settle();
  const uint64_t records_before = records();
  const uint64_t appended_before = rig_->store().wal().stats().bytes_appended;
  const storage::IoStats io_before = rig_->engine().stats();
  for (int i = 0; i < 1000; ++i) {
    advance(1000);
    a.facts().set_temperature_millicelsius(40'000 + i);  // shown, not durable
    Reply r = a.heartbeat();
    ASSERT_TRUE(r.ok()) << r.get().error_message();
    hub().tick();
    rig_->turn();
  }
  settle();
  EXPECT_EQ(node(a.node()).state, sched::NodeState::kReady);
  EXPECT_EQ(hub().stats().heartbeats, 1000u);
  EXPECT_EQ(records(), records_before);
  EXPECT_EQ(rig_->store().wal().stats().bytes_appended, appended_before);
  EXPECT_EQ(rig_->engine().stats().writes, io_before.writes);
  EXPECT_EQ(rig_->engine().stats().bytes_written, io_before.bytes_written);
  EXPECT_EQ(rig_->engine().stats().fsyncs, io_before.fsyncs);

  // What the scheduler relies on is durable when it changes (rarely): one record.
  a.facts().set_cpu_millis(2000);
  EXPECT_TRUE(a.heartbeat().ok());
  settle();
  EXPECT_EQ(records(), records_before + 1);
  EXPECT_EQ(node(a.node()).spec.capacity.cpu_millis, 2000u);
}

// -------------------------------------------------------------------- heat and power

TEST_F(AgentHubTest, AHotBoardGetsNoNewTasksUntilItHasCooledByTheMargin) {
  open();  // default bounds: 80 C, released at 75 C
  FakeAgent hot(*this, "pi-hot");
  FakeAgent cool(*this, "pi-cool");
  hot.facts().set_temperature_millicelsius(85'000);
  cool.facts().set_temperature_millicelsius(50'000);
  hot.join();
  cool.join();
  EXPECT_EQ(node(hot.node()).hold, sched::NodeHold::kHot);
  const sched::JobId job = submit(spec(4));
  EXPECT_TRUE(starts(hot.work()).empty());
  EXPECT_EQ(starts(cool.work()).size(), 4u);
  pb::NodeInfo info = node_info("pi-hot");
  EXPECT_EQ(info.state(), "ready") << "a held board is up";
  EXPECT_EQ(info.skip_reason(), "hot 85.0C");
  EXPECT_EQ(info.temperature_millicelsius(), 85'000);
  EXPECT_EQ(node_info("pi-cool").skip_reason(), "");

  // Below the bound but not by the margin: still held, and the reason says so.
  const uint64_t records_before = records();
  hot.facts().set_temperature_millicelsius(76'000);
  ASSERT_TRUE(hot.heartbeat().ok());
  settle();
  EXPECT_EQ(node_info("pi-hot").skip_reason(), "hot 76.0C, cooling to 75.0C");
  const sched::JobId second = submit(spec(2));
  EXPECT_TRUE(starts(hot.work()).empty());
  EXPECT_EQ(starts(cool.work()).size(), 2u);

  // Cooled by the margin: released, and the queue moves there at once.
  const sched::JobId third = submit(spec(20));  // more than the cool board holds (8 cores)
  (void)cool.work();
  hot.facts().set_temperature_millicelsius(75'000);
  ASSERT_TRUE(hot.heartbeat().ok());
  settle();
  EXPECT_EQ(node(hot.node()).hold, sched::NodeHold::kNone);
  // No longer hot: the queue filled it at once, so what it says now is that it is full.
  EXPECT_EQ(node_info("pi-hot").skip_reason(), "full");
  std::vector<Attempt> on_hot = starts(hot.work());
  EXPECT_FALSE(on_hot.empty());
  for (const Attempt& a : on_hot) EXPECT_EQ(std::get<0>(a), third);
  (void)job, (void)second;
  // Holding and releasing wrote nothing of their own: only the submits and placements.
  EXPECT_EQ(records(), records_before + 1 + 2 + 1 + 2 + on_hot.size());
}

TEST_F(AgentHubTest, ThrottledAndUnderVoltageBoardsAreHeldFromTheirHello) {
  open();
  FakeAgent weak(*this, "pi-weak");
  FakeAgent slow(*this, "pi-slow");
  FakeAgent ok(*this, "pi-ok");
  weak.facts().set_under_voltage(true);
  weak.facts().set_throttled(true);
  slow.facts().set_throttled(true);  // no temperature known: the flags alone hold it
  weak.join();
  slow.join();
  ok.join();
  submit(spec(3));
  EXPECT_TRUE(starts(weak.work()).empty());
  EXPECT_TRUE(starts(slow.work()).empty());
  EXPECT_EQ(starts(ok.work()).size(), 3u);
  const pb::NodeInfo w = node_info("pi-weak");
  EXPECT_EQ(w.skip_reason(), "under-voltage");
  EXPECT_TRUE(w.under_voltage());
  EXPECT_TRUE(w.throttled());
  const pb::NodeInfo s = node_info("pi-slow");
  EXPECT_EQ(s.skip_reason(), "throttled");
  EXPECT_TRUE(s.throttled());
  EXPECT_FALSE(s.under_voltage());
  EXPECT_FALSE(s.has_temperature_millicelsius());

  // The flags clear on a cool board: released at once.
  slow.facts().set_throttled(false);
  ASSERT_TRUE(slow.heartbeat().ok());
  submit(spec(1));
  EXPECT_EQ(node(slow.node()).hold, sched::NodeHold::kNone);
  EXPECT_EQ(starts(slow.work()).size() + starts(ok.work()).size(), 1u);
}

TEST_F(AgentHubTest, AHoldOutlivesAReconnectButNotAServerRestart) {
  open();
  FakeAgent a(*this, "pi-a");
  a.facts().set_temperature_millicelsius(90'000);
  a.join();
  ASSERT_EQ(node(a.node()).hold, sched::NodeHold::kHot);
  // The connection broke; it comes back a little cooler, inside the margin: still held.
  a.facts().set_temperature_millicelsius(78'000);
  a.join();
  EXPECT_EQ(node(a.node()).hold, sched::NodeHold::kHot);
  submit(spec(1));
  EXPECT_TRUE(starts(a.work()).empty());
  // A restart forgets holds (they are not durable); the hello decides afresh — at 78 C,
  // below the bound, the board takes work.
  restart();
  EXPECT_EQ(node(a.node()).hold, sched::NodeHold::kNone);
  a.join();
  EXPECT_EQ(node(a.node()).hold, sched::NodeHold::kNone);
  settle();
  EXPECT_EQ(starts(a.work()).size(), 1u);
}

TEST_F(AgentHubTest, HeatBoundsComeFromTheOptions) {
  options_.heat = {.hot_millicelsius = 60'000, .cool_margin_millicelsius = 10'000};
  open();
  FakeAgent a(*this, "pi-a");
  a.facts().set_temperature_millicelsius(61'000);
  a.join();
  EXPECT_EQ(node(a.node()).hold, sched::NodeHold::kHot);
  EXPECT_EQ(node_info("pi-a").skip_reason(), "hot 61.0C");
  a.facts().set_temperature_millicelsius(51'000);
  ASSERT_TRUE(a.heartbeat().ok());
  EXPECT_EQ(node_info("pi-a").skip_reason(), "hot 51.0C, cooling to 50.0C");
  a.facts().set_temperature_millicelsius(50'000);
  ASSERT_TRUE(a.heartbeat().ok());
  EXPECT_EQ(node(a.node()).hold, sched::NodeHold::kNone);
}

TEST_F(AgentHubTest, ADownOrDrainingBoardSaysThatFirst) {
  open();
  FakeAgent a(*this, "pi-a");
  a.facts().set_temperature_millicelsius(90'000);
  a.join();
  std::optional<Status> drained;
  c().drain("pi-a", false, 0, [&](Status st) { drained = st; });
  settle();
  ASSERT_TRUE(drained && *drained);
  EXPECT_EQ(node_info("pi-a").skip_reason(), "drained");
  advance(hub_options_.grace_ms + 1);
  hub().tick();
  EXPECT_EQ(node_info("pi-a").skip_reason(), "down");
}

// ------------------------------------------------------------------ reconciliation

TEST_F(AgentHubTest, AReconnectingAgentKeepsItsOwnAttemptsAndWhatItForgotEndsLost) {
  open();
  FakeAgent a(*this, "pi-a");
  const uint64_t first_session = a.join().session();
  const sched::JobId job = submit(spec(4));
  ASSERT_EQ(starts(a.work()).size(), 4u);
  Reply& old_poll = a.held();
  ASSERT_FALSE(old_poll.answered());
  Reply old = old_poll;

  // The connection broke and came back: 0 and 3 still run, 1 ended, 2 it does not know.
  Reply hello =
      a.hello({attempt(job, 0, 1), attempt(job, 3, 1)}, {outcome(job, 1, 1, pb::TASK_SUCCEEDED)});
  EXPECT_FALSE(hello.answered()) << "welcomed before the end it brought was durable";
  ASSERT_TRUE(old.answered()) << "the replaced session's poll is answered";
  EXPECT_EQ(old.get().error(), pb::UNAVAILABLE);
  settle();
  ASSERT_TRUE(hello.ok());
  const pb::AgentWelcome& w = hello.get().welcome();
  EXPECT_NE(w.session(), first_session);
  EXPECT_EQ(w.stop_size(), 0) << "its own attempts are not stopped";
  EXPECT_EQ(acked(hello.get()), (std::vector<Attempt>{{job, 1, 1}}));
  a.set_session(w.session());

  for (uint32_t i : {0u, 3u}) {
    EXPECT_EQ(task(job, i).state, sched::TaskState::kRunning);
    EXPECT_EQ(task(job, i).attempts, 1u) << "task " << i << " was started again";
    EXPECT_EQ(task(job, i).lost, 0u);
  }
  EXPECT_EQ(task(job, 1).state, sched::TaskState::kSucceeded);
  EXPECT_EQ(task(job, 2).lost, 1u) << "what the agent does not know ended lost";
  EXPECT_EQ(task(job, 2).attempts, 2u) << "... and was requeued";
  a.held() = Reply{};
  EXPECT_EQ(starts(a.work()), (std::vector<Attempt>{{job, 2, 2}})) << "only 2 runs again";

  // The hello's end comes again in a report: acknowledged, applied once.
  const uint64_t before = records();
  Reply r = a.report({outcome(job, 1, 1, pb::TASK_SUCCEEDED)});
  settle();
  EXPECT_EQ(acked(r.get()), (std::vector<Attempt>{{job, 1, 1}}));
  EXPECT_EQ(records(), before);

  // The old session is gone for good.
  a.set_session(first_session);
  EXPECT_EQ(a.report({outcome(job, 0, 1, pb::TASK_SUCCEEDED)}).get().error(), pb::UNAVAILABLE);
  EXPECT_EQ(task(job, 0).state, sched::TaskState::kRunning);
}

TEST_F(AgentHubTest, AReturningAgentIsToldToStopWhatWasRescheduledMeanwhile) {
  open();
  FakeAgent a(*this, "pi-a");
  a.join();
  const sched::JobId job = submit(spec(2));
  ASSERT_EQ(starts(a.work()).size(), 2u);
  FakeAgent b(*this, "pi-b");
  b.join();
  for (int i = 0; i < 11; ++i) {
    advance(1000);
    (void)b.heartbeat();
    hub().tick();
  }
  settle();
  ASSERT_EQ(task(job, 0).node, b.node());
  ASSERT_EQ(task(job, 1).node, b.node());
  // 0's old attempt still runs on a; 1's ended there while a was away.
  const uint64_t before = records();
  pb::AgentWelcome w = a.join({attempt(job, 0, 1)}, {outcome(job, 1, 1, pb::TASK_SUCCEEDED)});
  ASSERT_EQ(w.stop_size(), 1);
  EXPECT_EQ(key(w.stop(0)), Attempt(job, 0, 1));
  EXPECT_EQ(hub().stats().stale_stopped, 1u);
  // The old attempt's end is acknowledged (a may forget it) and changes nothing.
  ASSERT_EQ(w.acked_size(), 1);
  EXPECT_EQ(key(w.acked(0)), Attempt(job, 1, 1));
  EXPECT_EQ(records(), before);
  for (uint32_t i = 0; i < 2; ++i) {
    EXPECT_EQ(task(job, i).state, sched::TaskState::kRunning);
    EXPECT_EQ(task(job, i).node, b.node());
    EXPECT_EQ(task(job, i).attempts, 2u);
  }
}

// ------------------------------------------------------------------ server restart

TEST_F(AgentHubTest, AfterARestartReturningNodesGetTheGraceAndKeepTheirTasks) {
  hub_options_.grace_ms = 10'000;
  open();
  FakeAgent a(*this, "pi-a", 0, 8000, {{"zone", "a"}});
  FakeAgent b(*this, "pi-b", 0, 8000, {{"zone", "b"}});
  a.join();
  b.join();
  pb::JobSpec on_a = spec(1);
  (*on_a.mutable_constraints())["zone"] = "a";
  pb::JobSpec on_b = spec(1);
  (*on_b.mutable_constraints())["zone"] = "b";
  const sched::JobId ja = submit(on_a);
  const sched::JobId jb = submit(on_b);
  ASSERT_EQ(starts(a.work()), (std::vector<Attempt>{{ja, 0, 1}}));
  ASSERT_EQ(starts(b.work()), (std::vector<Attempt>{{jb, 0, 1}}));

  restart();
  EXPECT_EQ(node(a.node()).state, sched::NodeState::kDown) << "no runner yet";
  EXPECT_EQ(task(ja, 0).state, sched::TaskState::kRunning);
  EXPECT_EQ(task(jb, 0).state, sched::TaskState::kRunning);

  // a is back within the grace and still runs its attempt: kept, not started again.
  advance(5'000);
  hub().tick();
  settle();
  pb::AgentWelcome w = a.join({attempt(ja, 0, 1)});
  EXPECT_EQ(w.stop_size(), 0);
  EXPECT_EQ(task(jb, 0).state, sched::TaskState::kRunning) << "b's grace is not over";
  advance(4'999);
  hub().tick();
  settle();
  EXPECT_EQ(task(jb, 0).state, sched::TaskState::kRunning) << "b's grace is not over";

  // b never comes back: its task ends lost once the grace is over, and waits (zone=b).
  advance(1);
  EXPECT_TRUE(a.heartbeat().ok());
  hub().tick();
  settle();
  EXPECT_EQ(task(jb, 0).state, sched::TaskState::kQueued);
  EXPECT_EQ(task(jb, 0).lost, 1u);
  EXPECT_EQ(task(ja, 0).state, sched::TaskState::kRunning);
  EXPECT_EQ(task(ja, 0).attempts, 1u) << "a's task ran twice";
  EXPECT_EQ(task(ja, 0).node, a.node());
  EXPECT_TRUE(starts(a.work()).empty()) << "a was asked to start something again";

  // a's end, reported to the new server, settles the job.
  Reply r = a.report({outcome(ja, 0, 1, pb::TASK_SUCCEEDED)});
  settle();
  EXPECT_EQ(acked(r.get()), (std::vector<Attempt>{{ja, 0, 1}}));
  EXPECT_EQ(c().state().cluster().job(ja)->state, sched::JobState::kSucceeded);
}

// A cancel while the board is away (after a restart, before it said hello) still reaches it:
// the board keeps the attempt, and must then be told to stop it.
TEST_F(AgentHubTest, ACancelWhileTheBoardIsAwayReachesItWhenItComesBack) {
  open();
  FakeAgent a(*this, "pi-a");
  a.join();
  const sched::JobId job = submit(spec(1));
  ASSERT_EQ(starts(a.work()).size(), 1u);
  restart();
  std::optional<Result<uint32_t>> cancelled;
  c().cancel(job, [&](Result<uint32_t> n) { cancelled = n; });
  settle();
  ASSERT_TRUE(cancelled && *cancelled);
  a.join({attempt(job, 0, 1)});
  EXPECT_EQ(stops(a.work()),
            (std::vector<std::pair<Attempt, pb::StopReason>>{{{job, 0, 1}, pb::STOP_CANCELLED}}));
  Reply r = a.report({outcome(job, 0, 1, pb::TASK_CANCELLED)});
  settle();
  EXPECT_EQ(acked(r.get()), (std::vector<Attempt>{{job, 0, 1}}));
  EXPECT_EQ(c().state().cluster().job(job)->state, sched::JobState::kCancelled);
}

// ------------------------------------------------------------------------- drain

TEST_F(AgentHubTest, ADrainStopsPlacementsAndPastItsDeadlineStopsTasksRequeueFree) {
  open();
  FakeAgent a(*this, "pi-a");
  a.join();
  const sched::JobId job = submit(spec(2));
  ASSERT_EQ(starts(a.work()).size(), 2u);
  std::optional<Status> drained;
  c().drain("pi-a", false, 60'000, [&](Status st) { drained = st; });
  settle();
  ASSERT_TRUE(drained && *drained);
  EXPECT_EQ(node_state("pi-a"), "draining");

  const sched::JobId later = submit(spec(1));
  EXPECT_EQ(task(later, 0).state, sched::TaskState::kQueued) << "placed on a draining node";
  EXPECT_TRUE(a.work().start().empty());

  advance(59'999);
  rig_->turn();
  settle();
  EXPECT_TRUE(a.work().stop().empty()) << "stopped before the deadline";
  advance(1);
  rig_->turn();
  settle();
  auto stopped = stops(a.work());
  EXPECT_EQ(std::set(stopped.begin(), stopped.end()),
            (std::set<std::pair<Attempt, pb::StopReason>>{{{job, 0, 1}, pb::STOP_SHUTDOWN},
                                                          {{job, 1, 1}, pb::STOP_SHUTDOWN}}));
  rig_->turn();
  settle();
  EXPECT_TRUE(a.work().stop().empty()) << "told twice";

  // The agent stops them cleanly and says so: requeued without using the lost budget.
  Reply r = a.report(
      {outcome(job, 0, 1, pb::TASK_LOST, 0, true), outcome(job, 1, 1, pb::TASK_LOST, 0, true)});
  settle();
  EXPECT_EQ(acked(r.get()).size(), 2u);
  for (uint32_t i = 0; i < 2; ++i) {
    EXPECT_EQ(task(job, i).state, sched::TaskState::kQueued);
    EXPECT_EQ(task(job, i).lost, 0u) << "the lost budget was used";
    EXPECT_EQ(task(job, i).lost_free, 1u);
  }
  EXPECT_EQ(node(a.node()).running, 0u);
  EXPECT_EQ(node_state("pi-a"), "drained");
  EXPECT_TRUE(a.work().start().empty());

  FakeAgent b(*this, "pi-b");
  b.join();
  EXPECT_EQ(starts(b.work()).size(), 3u);
}

// A stop the hub queued for a session that is then replaced (the agent reconnected before
// its poll took it) still reaches the agent: it would never be sent again otherwise.
TEST_F(AgentHubTest, AStopQueuedForAReplacedSessionStillReachesTheAgent) {
  open();
  FakeAgent a(*this, "pi-a");
  a.join();
  Reply& first = a.poll();
  const sched::JobId job = submit(spec(1));
  ASSERT_TRUE(first.ok());
  ASSERT_EQ(starts(first.get().work()), (std::vector<Attempt>{{job, 0, 1}}));
  // Before the agent polls again, the drain's deadline passes: the stop waits in the
  // session, and the connection breaks.
  std::optional<Status> drained;
  c().drain("pi-a", false, 1'000, [&](Status st) { drained = st; });
  settle();
  advance(1'000);
  rig_->turn();
  settle();
  a.join({attempt(job, 0, 1)});
  EXPECT_EQ(stops(a.work()),
            (std::vector<std::pair<Attempt, pb::StopReason>>{{{job, 0, 1}, pb::STOP_SHUTDOWN}}));
}

// A start the hub had not sent yet when the agent reconnected goes out on the new session:
// the agent could not list it, and it must not end lost (using the task's lost budget) for
// never having been sent.
TEST_F(AgentHubTest, AStartQueuedForAReplacedSessionGoesOutOnTheNewOne) {
  open();
  FakeAgent a(*this, "pi-a");
  a.join();
  const sched::JobId job = submit(spec(1));  // no poll is held: the start waits
  a.join({});
  EXPECT_EQ(task(job, 0).state, sched::TaskState::kRunning);
  EXPECT_EQ(task(job, 0).attempts, 1u);
  EXPECT_EQ(task(job, 0).lost, 0u);
  EXPECT_EQ(starts(a.work()), (std::vector<Attempt>{{job, 0, 1}}));
}

// A node declared down and back: what its dead session never sent is not sent now (those
// attempts ended lost and run again as new ones).
TEST_F(AgentHubTest, WorkOfADeadSessionIsNotSentAfterItComesBack) {
  open();
  FakeAgent a(*this, "pi-a");
  a.join();
  const sched::JobId job = submit(spec(1));  // the start waits
  advance(hub_options_.grace_ms + 1);
  hub().tick();
  settle();
  EXPECT_EQ(task(job, 0).lost, 1u);
  a.join({});
  EXPECT_EQ(starts(a.work()), (std::vector<Attempt>{{job, 0, 2}})) << "only the new attempt";
}

// ------------------------------------------------------------------------ capacity

TEST_F(AgentHubTest, ANodeNeverGetsMoreTasksThanItsTasksMax) {
  open();
  FakeAgent a(*this, "pi-a", /*tasks_max=*/3, /*cpu_millis=*/64'000);
  a.join();
  const sched::JobId job = submit(spec(10, 100));
  std::set<Attempt> outstanding, done;
  for (int round = 0; round < 100 && done.size() < 10; ++round) {
    for (Attempt x : starts(a.work())) EXPECT_TRUE(outstanding.insert(x).second);
    ASSERT_LE(outstanding.size(), 3u) << "more tasks sent than the node said it runs";
    ASSERT_LE(node(a.node()).running, 3u);
    ASSERT_FALSE(outstanding.empty());
    const Attempt x = *outstanding.begin();
    outstanding.erase(outstanding.begin());
    done.insert(x);
    Reply r =
        a.report({outcome(std::get<0>(x), std::get<1>(x), std::get<2>(x), pb::TASK_SUCCEEDED)});
    settle();
    ASSERT_TRUE(r.ok());
  }
  EXPECT_EQ(done.size(), 10u);
  EXPECT_EQ(c().state().cluster().job(job)->state, sched::JobState::kSucceeded);
}

TEST_F(AgentHubTest, AWorkAnswerStaysWithinWorkBytesMax) {
  hub_options_.work_bytes_max = 4096;
  open();
  FakeAgent a(*this, "pi-a", 0, 64'000);
  a.join();
  pb::JobSpec big = spec(20, 100);
  big.add_command(std::string(1000, 'x'));
  const sched::JobId job = submit(big);  // no poll is held: all 20 wait in the session
  std::set<Attempt> got;
  a.work();
  ASSERT_GE(a.answers.size(), 5u);
  for (const pb::AgentWork& w : a.answers) {
    ASSERT_GE(w.start_size(), 1);
    if (w.start_size() > 1) {
      EXPECT_LE(w.ByteSizeLong(), 4096u);
    }
    for (Attempt x : starts(w)) EXPECT_TRUE(got.insert(x).second) << "sent twice";
  }
  EXPECT_EQ(got.size(), 20u);
  for (uint32_t i = 0; i < 20; ++i) EXPECT_TRUE(got.contains({job, i, 1}));
}

// A cancel that comes while the task's start still waits in the session (no poll took it
// yet): the task never starts there, and ends cancelled without a report.
TEST_F(AgentHubTest, ACancelBeforeTheStartWentOutMeansTheTaskNeverStarts) {
  open();
  FakeAgent a(*this, "pi-a");
  a.join();
  const sched::JobId job = submit(spec(1));  // the start waits: no poll is held
  std::optional<Result<uint32_t>> cancelled;
  c().cancel(job, [&](Result<uint32_t> n) { cancelled = n; });
  settle();
  ASSERT_TRUE(cancelled && *cancelled);
  pb::AgentWork w = a.work();
  // The agent handles stops before starts: a start behind its own stop would run.
  EXPECT_TRUE(starts(w).empty()) << "a cancelled task was sent to the board";
  settle();
  EXPECT_EQ(c().state().cluster().job(job)->state, sched::JobState::kCancelled);
  EXPECT_EQ(task(job, 0).state, sched::TaskState::kCancelled);
}

// --------------------------------------------------------------------------- logs

TEST_F(AgentHubTest, ALogFetchGoesToTheAgentAndItsAnswerComesBack) {
  open();
  FakeAgent a(*this, "pi-a");
  a.join();
  const sched::JobId job = submit(spec(1));
  ASSERT_EQ(starts(a.work()).size(), 1u);
  pb::ReadLog m;
  m.set_job_id(job);
  m.set_index(0);
  m.set_stream(pb::STDERR);
  m.set_offset(5);
  std::vector<pb::Response> replies;
  hub().fetch_log(a.node(), m, 2000, [&](pb::Response r) { replies.push_back(r); });
  pb::AgentWork w = a.work();
  ASSERT_EQ(w.logs_size(), 1);
  const pb::LogFetch& f = w.logs(0);
  EXPECT_EQ(f.job_id(), job);
  EXPECT_EQ(f.index(), 0u);
  EXPECT_EQ(f.stream(), pb::STDERR);
  EXPECT_EQ(f.offset(), 5u);
  EXPECT_EQ(f.max_bytes(), kLogChunkBytesMax);
  EXPECT_EQ(f.wait_ms(), 2000u);
  EXPECT_TRUE(replies.empty());

  EXPECT_TRUE(a.log(f.fetch_id(), "abc", false).ok());
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(replies[0].error(), pb::OK);
  EXPECT_EQ(replies[0].log().data(), "abc");
  EXPECT_FALSE(replies[0].log().final());
  EXPECT_TRUE(a.log(f.fetch_id(), "again", true).ok());
  EXPECT_EQ(replies.size(), 1u) << "one fetch answered twice";
}

TEST_F(AgentHubTest, ALogFetchTheAgentDoesNotAnswerTimesOutWithAnError) {
  hub_options_.log_fetch_timeout_ms = 30'000;
  open();
  FakeAgent a(*this, "pi-a");
  a.join();
  const sched::JobId job = submit(spec(1));
  ASSERT_EQ(starts(a.work()).size(), 1u);
  pb::ReadLog m;
  m.set_job_id(job);
  std::vector<pb::Response> replies;
  hub().fetch_log(a.node(), m, 2000, [&](pb::Response r) { replies.push_back(r); });
  pb::AgentWork w = a.work();
  ASSERT_EQ(w.logs_size(), 1);
  advance(2000 + 30'000 - 1);
  (void)a.heartbeat();
  hub().tick();
  EXPECT_TRUE(replies.empty()) << "timed out early";
  advance(1);
  hub().tick();
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(replies[0].error(), pb::UNAVAILABLE);
  EXPECT_FALSE(replies[0].error_message().empty());
  EXPECT_TRUE(a.log(w.logs(0).fetch_id(), "late", true).ok());
  EXPECT_EQ(replies.size(), 1u) << "answered again after its timeout";
}

TEST_F(AgentHubTest, ALogFetchFromADownNodeSaysSoInOneLine) {
  open();
  FakeAgent a(*this, "pi-a");
  a.join();
  const sched::JobId job = submit(spec(1));
  ASSERT_EQ(starts(a.work()).size(), 1u);
  advance(hub_options_.grace_ms + 1);
  hub().tick();
  pb::ReadLog m;
  m.set_job_id(job);
  std::vector<pb::Response> replies;
  hub().fetch_log(a.node(), m, 0, [&](pb::Response r) { replies.push_back(r); });
  ASSERT_EQ(replies.size(), 1u) << "answered at once";
  EXPECT_EQ(replies[0].error(), pb::UNAVAILABLE);
  EXPECT_NE(replies[0].error_message().find("pi-a"), std::string::npos)
      << replies[0].error_message();
  EXPECT_NE(replies[0].error_message().find("down"), std::string::npos)
      << replies[0].error_message();
  EXPECT_EQ(replies[0].error_message().find('\n'), std::string::npos);
}

TEST_F(AgentHubTest, LogFetchesWaitingOnAgentsAreBounded) {
  hub_options_.log_fetches_max = 2;
  open();
  FakeAgent a(*this, "pi-a");
  a.join();
  pb::ReadLog m;
  std::vector<pb::Response> replies;
  for (int i = 0; i < 3; ++i) {
    hub().fetch_log(a.node(), m, 0, [&](pb::Response r) { replies.push_back(r); });
  }
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(replies[0].error(), pb::BUSY);
  hub().stop();  // the others are answered when the server stops
  EXPECT_EQ(replies.size(), 3u);
}

// ------------------------------------------------------------------- held answers

// An agent has one poll outstanding; a newer one releases the older (answered empty) and
// work goes to the newer. Nothing is answered twice, and nothing is held forever: a stop
// answers what is still held.
TEST_F(AgentHubTest, HeldPollsAreAnsweredOnceAndReleasedAtStop) {
  open();
  FakeAgent a(*this, "pi-a");
  a.join();
  Reply first = a.poll();
  Reply second = a.poll();
  ASSERT_TRUE(first.ok()) << "the older poll is still held";
  EXPECT_FALSE(first.get().has_work());
  EXPECT_FALSE(second.answered());
  const sched::JobId job = submit(spec(1));
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(starts(second.get().work()), (std::vector<Attempt>{{job, 0, 1}}));
  Reply third = a.poll();
  pb::ReadLog m;
  m.set_job_id(job);
  std::vector<pb::Response> fetched;
  hub().fetch_log(a.node(), m, 0, [&](pb::Response r) { fetched.push_back(r); });
  ASSERT_TRUE(third.ok());
  EXPECT_EQ(third.get().work().logs_size(), 1);
  Reply fourth = a.poll();
  hub().stop();
  ASSERT_TRUE(fourth.ok()) << "a poll held through the stop";
  EXPECT_FALSE(fourth.get().has_work());
  ASSERT_EQ(fetched.size(), 1u);
  EXPECT_EQ(fetched[0].error(), pb::UNAVAILABLE);
}

// ------------------------------------------------------------------------ bad input

TEST_F(AgentHubTest, RequestsOfAnUnknownSessionAreRefusedAndChangeNothing) {
  open();
  FakeAgent a(*this, "pi-a");
  a.join();
  const sched::JobId job = submit(spec(1));
  ASSERT_EQ(starts(a.work()).size(), 1u);
  const uint64_t before = records();
  const uint64_t real = a.session();
  a.set_session(real ^ 0x5a5a5a5a5a5a5a5aull);
  Reply poll = a.poll();
  Reply hb = a.heartbeat();
  Reply rep = a.report({outcome(job, 0, 1, pb::TASK_SUCCEEDED)});
  Reply log = a.log(1, "x", true);
  settle();
  for (const Reply* r : {&poll, &hb, &rep, &log}) {
    ASSERT_TRUE(r->answered());
    EXPECT_EQ(r->get().error(), pb::UNAVAILABLE);
  }
  EXPECT_EQ(hub().stats().stale_sessions, 4u);
  EXPECT_EQ(records(), before);
  EXPECT_EQ(task(job, 0).state, sched::TaskState::kRunning);

  // A hello without identity or name: refused, no node.
  const size_t nodes = c().state().cluster().nodes().size();
  pb::AgentHello h;
  h.mutable_facts()->set_name("pi-x");
  Reply no_identity;
  hub().on_hello(h, no_identity.responder());
  h.set_identity("id-x");
  h.mutable_facts()->clear_name();
  Reply no_name;
  hub().on_hello(h, no_name.responder());
  settle();
  EXPECT_EQ(no_identity.get().error(), pb::INVALID_ARGUMENT);
  EXPECT_EQ(no_name.get().error(), pb::INVALID_ARGUMENT);
  EXPECT_EQ(c().state().cluster().nodes().size(), nodes);
  EXPECT_EQ(records(), before);

  // The real session still works.
  a.set_session(real);
  EXPECT_TRUE(a.heartbeat().ok());
}

// An end in a state this server does not know (a newer agent, a damaged message) is taken
// as lost; it does not wedge the ends behind it.
TEST_F(AgentHubTest, AnEndInAnUnknownStateIsTakenAsLost) {
  open();
  FakeAgent a(*this, "pi-a");
  a.join();
  const sched::JobId job = submit(spec(2));
  ASSERT_EQ(starts(a.work()).size(), 2u);
  Reply odd = a.report({outcome(job, 0, 1, static_cast<pb::TaskState>(42))});
  settle();
  EXPECT_EQ(acked(odd.get()), (std::vector<Attempt>{{job, 0, 1}}));
  EXPECT_EQ(task(job, 0).lost, 1u);
  Reply fine = a.report({outcome(job, 1, 1, pb::TASK_SUCCEEDED)});
  settle();
  EXPECT_EQ(acked(fine.get()), (std::vector<Attempt>{{job, 1, 1}}));
  EXPECT_EQ(task(job, 1).state, sched::TaskState::kSucceeded);
  EXPECT_TRUE(c().all_durable());
}

// The store refuses for a while (a full disk at a segment roll): the end is not acknowledged
// (the agent keeps it), waits once however often the agent sends it, and is logged once the
// store takes records again.
TEST_F(AgentHubTest, AnEndTheStoreRefusesIsNotAcknowledgedAndWaitsOnce) {
  faulty_fs_ = true;
  segment_bytes_ = 160;  // about one record per segment: every append rolls
  open();
  FakeAgent a(*this, "pi-a");
  a.join();
  const sched::JobId job = submit(spec(1));
  ASSERT_EQ(starts(a.work()).size(), 1u);
  rig_->fs()->fail_always("open", EDQUOT);
  for (int i = 0; i < 50; ++i) {
    Reply r = a.report({outcome(job, 0, 1, pb::TASK_SUCCEEDED)});
    settle();
    ASSERT_TRUE(r.ok());
    EXPECT_TRUE(acked(r.get()).empty()) << "acknowledged an end that is not durable";
  }
  EXPECT_EQ(task(job, 0).state, sched::TaskState::kRunning);
  EXPECT_EQ(c().stats().outcomes_deferred, 1u) << "one end queued once per copy";
  rig_->fs()->stop_failing("open");
  const uint64_t before = records();
  rig_->turn();
  settle();
  EXPECT_EQ(task(job, 0).state, sched::TaskState::kSucceeded);
  EXPECT_EQ(records(), before + 1);
  Reply r = a.report({outcome(job, 0, 1, pb::TASK_SUCCEEDED)});
  settle();
  EXPECT_EQ(acked(r.get()), (std::vector<Attempt>{{job, 0, 1}}));
  EXPECT_EQ(records(), before + 1);
}

// Two boards with one data dir (a cloned SD card) must not displace each other for ever:
// while the first one's session is alive the second is refused, and nothing is written.
TEST_F(AgentHubTest, ASecondBoardWithTheSameIdentityIsRefusedWhileTheFirstIsAlive) {
  open();
  FakeAgent a(*this, "pi-a");
  a.join();
  FakeAgent b(*this, "pi-b");
  b.clone_identity_of(a);
  const uint64_t before = records();
  for (int i = 0; i < 5; ++i) {
    Reply r = b.hello();
    settle();
    ASSERT_TRUE(r.answered());
    EXPECT_NE(r.get().error(), pb::OK);
    EXPECT_NE(r.get().error_message().find("node_id"), std::string::npos)
        << r.get().error_message();
    advance(hub_options_.heartbeat_ms / 2);
    ASSERT_TRUE(a.heartbeat().ok());  // the first board is untouched
  }
  EXPECT_EQ(records(), before);  // no rename record per attempt
  EXPECT_EQ(node_state("pi-a"), "ready");
  EXPECT_EQ(node_state("pi-b"), "(absent)");

  // The first one falls silent: the second may take the identity over.
  advance(2 * hub_options_.heartbeat_ms);
  b.join();
  EXPECT_FALSE(a.heartbeat().ok());
  EXPECT_EQ(node_state("pi-b"), "ready");
}

// The same agent process reconnecting is not a second board, however soon it comes back;
// a restarted process is let in once the old one's heartbeats have stopped.
TEST_F(AgentHubTest, AReconnectOrARestartOfTheSameBoardIsLetIn) {
  open();
  FakeAgent a(*this, "pi-a");
  const auto first = a.join();
  const auto again = a.join();  // a new connection, the same process: at once
  EXPECT_NE(again.session(), first.session());
  a.restart_process();
  Reply early = a.hello();
  settle();
  EXPECT_NE(early.get().error(), pb::OK);  // the old process's session still looks alive
  advance(2 * hub_options_.heartbeat_ms);
  a.join();
  EXPECT_EQ(node_state("pi-a"), "ready");
}

TEST_F(AgentHubTest, AHelloRefusedForTooManyAgentsLeavesNoNodeBehind) {
  hub_options_.sessions_max = 1;
  open();
  FakeAgent a(*this, "pi-a");
  a.join();
  FakeAgent b(*this, "pi-b");
  const uint64_t before = records();
  Reply r = b.hello();
  settle();
  ASSERT_TRUE(r.answered());
  EXPECT_EQ(r.get().error(), pb::RESOURCE_EXHAUSTED);
  EXPECT_EQ(records(), before);
  EXPECT_EQ(node_state("pi-b"), "(absent)");
}

// An answer sent on a connection that broke is lost with it; the agent cannot list a start
// it never got. Its starts go out again on the next session instead of ending lost.
TEST_F(AgentHubTest, AStartInAnAnswerTheAgentNeverGotIsSentAgainNotLost) {
  open();
  FakeAgent a(*this, "pi-a");
  a.join();
  Reply& held = a.poll();
  const sched::JobId job = submit(spec(1));
  settle();
  ASSERT_TRUE(held.answered());
  ASSERT_EQ(starts(held.get().work()), (std::vector<Attempt>{{job, 0, 1}}));
  // The answer never arrived: the agent reconnects and lists nothing.
  a.join();
  EXPECT_EQ(task(job, 0).state, sched::TaskState::kRunning);
  EXPECT_EQ(task(job, 0).attempts, 1u);
  EXPECT_EQ(starts(a.work()), (std::vector<Attempt>{{job, 0, 1}}));

  // Once an answer is confirmed (the agent polled again), a start it then does not list
  // did end with it: lost, as before.
  a.join();
  EXPECT_EQ(task(job, 0).attempts, 2u);
  EXPECT_EQ(task(job, 0).lost, 1u);
}

}  // namespace
}  // namespace cardnode::runtime
