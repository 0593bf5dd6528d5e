// The client API through its narrow interfaces (a Nomad-style harness): a real Coordinator
// on a real LocalStore in a temp dir (runtime/coordinator/test_harness.h), a real LogStore
// and AgentHub beside it, this board registered as the local node with a FakeRunner the test
// ends tasks with, and ClientApi::handle() called with pb::Requests whose answers a
// Responder::to() sink captures.
//
// What is covered: answers wait for durability (submit, cancel, drain, reads, WaitJob);
// refused requests change nothing; cancel and wait against the runner's view; ListJobs pages
// fit a frame and name every job once; ListNodes and drains; ReadLog of this board's logs
// and of another board's (the hub's answer); a stopping server; the bound on reads waiting.
#include "runtime/coordinator/api.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "net/frame.h"
#include "runtime/coordinator/agent_hub.h"
#include "runtime/coordinator/listing.h"
#include "runtime/coordinator/status_site.h"
#include "runtime/coordinator/test_harness.h"
#include "storage/log_store.h"
#include "storage/test_util.h"

namespace cardnode::pb {
// Failure messages say TASK_RUNNING, not 1.
void PrintTo(TaskState s, std::ostream* os) {
  *os << TaskState_Name(s);
}
void PrintTo(JobState s, std::ostream* os) {
  *os << JobState_Name(s);
}
void PrintTo(ErrorCode e, std::ostream* os) {
  *os << ErrorCode_Name(e);
}
}  // namespace cardnode::pb

namespace cardnode::runtime {
namespace {

using storage::testing::TempDir;
using testing::CoordinatorRig;
using testing::FakeRunner;
using TaskKey = std::pair<uint64_t, uint32_t>;

constexpr uint64_t kMem = 64ull << 20;
constexpr uint32_t kLocalCpu = 2000;  // two tasks of 1000 at once
constexpr uint64_t kLocalMem = 4ull << 30;
constexpr uint32_t kLocalTasksMax = 4;

pb::JobSpec spec(uint32_t count, uint32_t cpu_millis = 1000) {
  pb::JobSpec s;
  s.add_command("true");
  s.set_count(count);
  s.set_cpu_millis(cpu_millis);
  s.set_mem_bytes(kMem);
  return s;
}

pb::Request submit_req(pb::JobSpec s) {
  pb::Request r;
  *r.mutable_submit()->mutable_spec() = std::move(s);
  return r;
}
pb::Request get_job_req(uint64_t id, uint32_t first_task = 0, uint32_t max_tasks = 0) {
  pb::Request r;
  r.mutable_get_job()->set_job_id(id);
  r.mutable_get_job()->set_first_task(first_task);
  r.mutable_get_job()->set_max_tasks(max_tasks);
  return r;
}
pb::Request cancel_req(uint64_t id) {
  pb::Request r;
  r.mutable_cancel()->set_job_id(id);
  return r;
}
pb::Request wait_req(uint64_t id) {
  pb::Request r;
  r.mutable_wait_job()->set_job_id(id);
  return r;
}
pb::Request list_jobs_req(uint64_t after = 0, uint32_t max_jobs = 0) {
  pb::Request r;
  r.mutable_list_jobs()->set_after_job_id(after);
  r.mutable_list_jobs()->set_max_jobs(max_jobs);
  return r;
}
pb::Request list_nodes_req() {
  pb::Request r;
  r.mutable_list_nodes();
  return r;
}
pb::Request drain_req(const std::string& node, bool undrain = false) {
  pb::Request r;
  r.mutable_drain()->set_node(node);
  r.mutable_drain()->set_undrain(undrain);
  return r;
}
pb::Request read_log_req(uint64_t job, uint32_t index, pb::LogStream stream = pb::STDOUT,
                         uint64_t offset = 0, uint32_t max_bytes = 0) {
  pb::Request r;
  pb::ReadLog* m = r.mutable_read_log();
  m->set_job_id(job);
  m->set_index(index);
  m->set_stream(stream);
  m->set_offset(offset);
  m->set_max_bytes(max_bytes);
  return r;
}

// An answer captured from a Responder::to(): empty until the API replies. If every copy of
// the Responder is dropped unanswered, the Responder itself answers INTERNAL, which the
// tests rule out by checking the error code. `probe`, if set, is read at the moment of the
// reply (what the store had made durable then).
class Reply {
 public:
  explicit Reply(std::function<uint64_t()> probe = {}) { slot_->probe = std::move(probe); }
  net::Responder responder() const {
    auto slot = slot_;
    return net::Responder::to([slot](pb::Response&& r) {
      ++slot->replies;
      if (slot->probe) slot->at_reply = slot->probe();
      slot->response = std::move(r);
    });
  }
  bool answered() const { return slot_->response.has_value(); }
  const pb::Response& get() const {
    EXPECT_TRUE(answered());
    static const pb::Response kNone;
    return answered() ? *slot_->response : kNone;
  }
  bool ok() const { return answered() && get().error() == pb::OK; }
  uint64_t at_reply() const { return slot_->at_reply; }
  int replies() const { return slot_->replies; }

 private:
  struct Slot {
    std::optional<pb::Response> response;
    std::function<uint64_t()> probe;
    uint64_t at_reply = 0;
    int replies = 0;
  };
  std::shared_ptr<Slot> slot_ = std::make_shared<Slot>();
};

class ClientApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(tmp_.path().empty());
    dir_ = tmp_.path() + "/data";
    ASSERT_EQ(::mkdir(dir_.c_str(), 0700), 0);
  }
  void TearDown() override { close(); }

  // The server as server.cc builds it: store and coordinator recovered, hub and log store,
  // this board registered as node "pi-local" and running tasks through runner_.
  void open() {
    rig_ = std::make_unique<CoordinatorRig>(dir_, options_, &wall_ms_);
    ASSERT_TRUE(rig_->open());
    hub_ = std::make_unique<AgentHub>(rig_->c(), AgentHubOptions{}, [this] { return mono_ms_; });
    logs_ = std::make_unique<storage::LogStore>(
        rig_->engine(), storage::LogStoreOptions{.dir = tmp_.path() + "/logs"});
    sched::NodeSpec local;
    local.name = "pi-local";
    local.capacity = {kLocalCpu, kLocalMem};
    local.labels = {{"arch", "aarch64"}};
    local.tasks_max = kLocalTasksMax;
    auto id = c().register_node("board-local", local);
    ASSERT_TRUE(id) << id.error().describe();
    local_ = *id;
    c().attach_runner(*local_, &runner_);
    settle();
    // As Server::Impl::describe: the board's own facts for the local node; the test records
    // which nodes it was asked about.
    api_ = std::make_unique<ClientApi>(c(), *logs_, *hub_, local_,
                                       [this](const sched::Node& n, pb::NodeInfo* info) {
                                         described_.insert(n.spec.name);
                                         if (n.id != *local_) return;
                                         info->set_arch("aarch64");
                                         info->set_isolation("cgroup-v2");
                                         info->add_enforced("memory");
                                         info->set_io_backend("io_uring");
                                       });
  }
  // As the server stops: the API goes, the coordinator stops and the store drains, then the
  // hub and the log store go before the engine they use.
  void close() {
    if (!rig_) return;
    api_.reset();
    rig_->close([this] {
      if (hub_) hub_->stop();
      hub_.reset();
      logs_.reset();
    });
    rig_.reset();
  }

  Coordinator& c() { return rig_->c(); }
  void settle() { rig_->settle(); }
  uint64_t records() { return rig_->store().next_sequence(); }

  Reply send(pb::Request req) {
    Reply r;
    api_->handle(std::move(req), r.responder());
    return r;
  }
  // Sends and drives the rig until it is quiet: for a request whose answer needs nothing
  // but the store and the turns.
  pb::Response ask(pb::Request req) {
    Reply r = send(std::move(req));
    settle();
    EXPECT_TRUE(r.answered()) << "no answer once the rig was quiet";
    EXPECT_EQ(r.replies(), r.answered() ? 1 : 0);
    return r.answered() ? r.get() : pb::Response{};
  }
  sched::JobId submit(pb::JobSpec s) {
    pb::Response r = ask(submit_req(std::move(s)));
    EXPECT_EQ(r.error(), pb::OK) << r.error_message();
    EXPECT_TRUE(r.has_submitted());
    return r.submitted().job_id();
  }
  pb::JobDetail get_job(sched::JobId id) {
    pb::Response r = ask(get_job_req(id));
    EXPECT_EQ(r.error(), pb::OK) << r.error_message();
    return r.job();
  }
  std::set<TaskKey> running() const {
    std::set<TaskKey> out;
    for (const auto& [k, cb] : runner_.running) out.insert(k);
    return out;
  }
  const pb::NodeInfo* find_node(const pb::Response& r, const std::string& name) {
    for (const pb::NodeInfo& n : r.nodes().nodes()) {
      if (n.name() == name) return &n;
    }
    return nullptr;
  }

  TempDir tmp_;
  std::string dir_;
  CoordinatorOptions options_;
  uint64_t wall_ms_ = 1'700'000'000'000;
  uint64_t mono_ms_ = 5'000'000;
  FakeRunner runner_;      // this board's tasks
  FakeRunner far_runner_;  // another board's, where a test attaches one
  std::unique_ptr<CoordinatorRig> rig_;
  std::unique_ptr<AgentHub> hub_;
  std::unique_ptr<storage::LogStore> logs_;
  std::unique_ptr<ClientApi> api_;
  std::optional<sched::NodeId> local_;
  std::set<std::string> described_;
};

// Every error answer is one line a person can read.
void expect_error(const pb::Response& r, pb::ErrorCode code, const std::string& says) {
  EXPECT_EQ(r.error(), code) << r.error_message();
  EXPECT_NE(r.error_message().find(says), std::string::npos)
      << "'" << r.error_message() << "' does not say '" << says << "'";
  EXPECT_EQ(r.error_message().find('\n'), std::string::npos) << r.error_message();
  EXPECT_EQ(r.body_case(), pb::Response::BODY_NOT_SET) << "an error with a body";
}

// ------------------------------------------------------------------------- status page

// Status page requests wait, as reads do, for durability; strangers may send them, so the
// site holds only its cap of them and answers the rest at once (503), never queueing more.
TEST_F(ClientApiTest, TheStatusPageHoldsAtMostItsCapOfRequestsWaiting) {
  open();
  StatusSite site(c(), *api_, StatusSiteOptions{.logs = true, .hosts = {}, .in_flight_max = 3});
  Reply submitted = send(submit_req(spec(1)));  // not durable yet: pages wait behind it
  ASSERT_FALSE(c().all_durable());
  for (int i = 0; i < 5; ++i) site.serve({"/", "127.0.0.1:9742"}, net::HttpResponder{});
  EXPECT_EQ(site.in_flight(), 3u);
  site.serve({"/", "evil.example"}, net::HttpResponder{});  // refused before it could wait
  EXPECT_EQ(site.in_flight(), 3u);
  rig_->complete();
  EXPECT_TRUE(submitted.ok());
  EXPECT_EQ(site.in_flight(), 0u) << "answered pages give their places back";
  site.serve({"/jobs/1", std::nullopt}, net::HttpResponder{});  // durable: answered at once
  EXPECT_EQ(site.in_flight(), 0u);
}

// ------------------------------------------------------------------------- submit

TEST_F(ClientApiTest, SubmitIsAnsweredOnlyOnceDurableAndGetJobShowsTheTasks) {
  open();
  pb::JobSpec s = spec(3, 500);
  s.add_command("--flag");
  const uint64_t seq = records();  // the JobSubmitted record's sequence number
  Reply submitted([this] { return rig_->store().durable_sequence(); });
  api_->handle(submit_req(s), submitted.responder());
  EXPECT_FALSE(submitted.answered()) << "answered before the job's record was durable";
  EXPECT_FALSE(c().all_durable());
  // A read sent meanwhile waits too: it would show a job that a crash could take back.
  Reply early_read = send(get_job_req(1));
  EXPECT_FALSE(early_read.answered()) << "a read showed a job before it was durable";

  rig_->complete();  // storage completions only: no turn, so nothing is placed yet
  ASSERT_TRUE(submitted.ok()) << submitted.get().error_message();
  EXPECT_GE(submitted.at_reply(), seq) << "the reply went out before its record was durable";
  EXPECT_EQ(submitted.get().submitted().job_id(), 1u) << "the first job is job 1";
  EXPECT_EQ(submitted.replies(), 1);
  ASSERT_TRUE(early_read.ok()) << early_read.get().error_message();
  const pb::JobDetail& queued = early_read.get().job();
  EXPECT_EQ(queued.job().id(), 1u);
  EXPECT_EQ(queued.job().state(), pb::JOB_QUEUED);
  EXPECT_EQ(queued.job().count(), 3u);
  EXPECT_EQ(queued.job().name(), "true") << "the name defaults to the program";
  EXPECT_EQ(std::vector<std::string>(queued.job().command().begin(), queued.job().command().end()),
            (std::vector<std::string>{"true", "--flag"}));
  ASSERT_EQ(queued.tasks_size(), 3);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(queued.tasks(i).index(), static_cast<uint32_t>(i));
    EXPECT_EQ(queued.tasks(i).state(), pb::TASK_QUEUED);
    EXPECT_EQ(queued.tasks(i).attempts(), 0u);
  }
  EXPECT_EQ(runner_.starts, 0u);

  // The turn places the tasks; they start once their placements are durable.
  settle();
  EXPECT_EQ(running(), (std::set<TaskKey>{{1, 0}, {1, 1}, {1, 2}}));
  pb::JobDetail d = get_job(1);
  EXPECT_EQ(d.job().state(), pb::JOB_RUNNING);
  EXPECT_EQ(d.job().states().at("running"), 3u);
  EXPECT_EQ(d.next_task(), 0u) << "every task is in the one page";
  ASSERT_EQ(d.tasks_size(), 3);
  for (const pb::TaskInfo& t : d.tasks()) {
    EXPECT_EQ(t.state(), pb::TASK_RUNNING);
    EXPECT_EQ(t.attempts(), 1u);
    EXPECT_EQ(t.node(), "pi-local");
  }

  // GetJob pages through the tasks from first_task.
  pb::Response page = ask(get_job_req(1, 0, 2));
  ASSERT_EQ(page.job().tasks_size(), 2);
  EXPECT_EQ(page.job().next_task(), 2u);
  page = ask(get_job_req(1, 2, 2));
  ASSERT_EQ(page.job().tasks_size(), 1);
  EXPECT_EQ(page.job().tasks(0).index(), 2u);
  EXPECT_EQ(page.job().next_task(), 0u);

  expect_error(ask(get_job_req(99)), pb::NOT_FOUND, "no job 99");
}

TEST_F(ClientApiTest, BadSubmitsAreRefusedAtOnceWithAReasonAndChangeNothing) {
  open();
  const uint64_t before = records();
  struct Case {
    const char* what;
    pb::JobSpec spec;
    pb::ErrorCode code;
    std::string says;
  };
  std::vector<Case> cases;
  {
    pb::JobSpec s = spec(1);
    s.clear_command();
    cases.push_back({"no command", s, pb::INVALID_ARGUMENT, "no command"});
  }
  {
    pb::JobSpec s = spec(1);
    s.set_command(0, "");
    cases.push_back({"an empty program", s, pb::INVALID_ARGUMENT, "no command"});
  }
  {
    pb::JobSpec s = spec(1);
    for (uint32_t i = 0; i < kCommandArgsMax; ++i) s.add_command("a");
    cases.push_back({"too many arguments", s, pb::INVALID_ARGUMENT, "4096 arguments"});
  }
  {
    pb::JobSpec s = spec(1);
    s.add_command(std::string(kSpecBytesMax, 'x'));
    cases.push_back({"a spec over its bound", s, pb::INVALID_ARGUMENT, "256 KiB"});
  }
  {
    pb::JobSpec s = spec(1);
    s.set_priority(101);
    cases.push_back({"priority 101", s, pb::INVALID_ARGUMENT, "priority must be 0-100"});
  }
  {
    pb::JobSpec s = spec(1);
    s.set_retries(1'000'000);
    cases.push_back({"a million retries", s, pb::INVALID_ARGUMENT, "retries must be 0-100"});
  }
  {
    // Over sched::Limits::tasks_per_job_max: the message names the count and the limit.
    pb::JobSpec s = spec(options_.limits.tasks_per_job_max + 1);
    cases.push_back({"an array over the task bound", s, pb::INVALID_ARGUMENT,
                     "is over the limit of " + std::to_string(options_.limits.tasks_per_job_max) +
                         " tasks per job"});
  }
  {
    pb::JobSpec s = spec(1);
    s.set_after(42);
    cases.push_back({"--after an unknown job", s, pb::NOT_FOUND, "no job 42"});
  }

  for (Case& k : cases) {
    SCOPED_TRACE(k.what);
    Reply r = send(submit_req(k.spec));
    // A refusal needs no disk: it is answered before any storage completion.
    ASSERT_TRUE(r.answered()) << "a refusal waited";
    expect_error(r.get(), k.code, k.says);
  }
  Reply no_body = send(pb::Request{});
  ASSERT_TRUE(no_body.answered());
  expect_error(no_body.get(), pb::INVALID_ARGUMENT, "no body");

  settle();
  EXPECT_EQ(records(), before) << "a refused request wrote a record";
  pb::Response list = ask(list_jobs_req());
  ASSERT_EQ(list.error(), pb::OK);
  EXPECT_EQ(list.jobs().jobs_size(), 0);
  EXPECT_EQ(list.jobs().next_after(), 0u);
  EXPECT_EQ(c().state().cluster().last_job_id(), 0u) << "a refusal used up a job id";

  // The next valid submit is job 1. A count of 0 means 1 (proto/cardnode.proto), as do the
  // other zero defaults.
  pb::JobSpec zero;
  zero.add_command("true");
  EXPECT_EQ(submit(zero), 1u);
  pb::JobDetail d = get_job(1);
  EXPECT_EQ(d.job().count(), 1u);
  EXPECT_EQ(d.tasks_size(), 1);
  EXPECT_EQ(d.job().priority(), kDefaultPriority);
}

// ------------------------------------------------------------------------- cancel

TEST_F(ClientApiTest, CancelOfAnUnknownJobIsAnErrorOfARunningOneEndsItsTasksCancelled) {
  open();
  expect_error(ask(cancel_req(7)), pb::NOT_FOUND, "no job 7");

  // Three tasks of 1000 on a board of 2000: two run, one waits.
  const sched::JobId job = submit(spec(3, 1000));
  ASSERT_EQ(runner_.running.size(), 2u);
  const std::set<TaskKey> ran = running();
  uint32_t waiting = 0;
  while (ran.contains({job, waiting})) ++waiting;

  Reply cancel = send(cancel_req(job));
  EXPECT_FALSE(cancel.answered()) << "answered before the cancel was durable";
  EXPECT_TRUE(runner_.kills.empty()) << "a kill went out before the cancel was durable";
  rig_->complete();
  ASSERT_TRUE(cancel.ok()) << cancel.get().error_message();
  EXPECT_EQ(cancel.get().cancelled().tasks_cancelled(), 2u) << "the running tasks are killed";
  EXPECT_EQ(runner_.kills, ran);

  // The queued task is cancelled at once; the job ends when the killed tasks do.
  pb::JobDetail d = get_job(job);
  EXPECT_EQ(d.tasks(static_cast<int>(waiting)).state(), pb::TASK_CANCELLED);
  EXPECT_NE(d.job().state(), pb::JOB_CANCELLED) << "final while tasks still run";
  for (const TaskKey& k : ran) {
    EXPECT_TRUE(runner_.end(k, TaskExit{pb::TASK_CANCELLED, 0, 15}));
  }
  settle();
  d = get_job(job);
  EXPECT_EQ(d.job().state(), pb::JOB_CANCELLED);
  EXPECT_EQ(d.job().states().at("cancelled"), 3u);
  for (const pb::TaskInfo& t : d.tasks()) EXPECT_EQ(t.state(), pb::TASK_CANCELLED);
  EXPECT_EQ(runner_.starts, 2u) << "the cancelled queued task started when room came";

  // Cancelling a final job again changes nothing and says so.
  const uint64_t before = records();
  pb::Response again = ask(cancel_req(job));
  ASSERT_EQ(again.error(), pb::OK) << again.error_message();
  EXPECT_EQ(again.cancelled().tasks_cancelled(), 0u);
  EXPECT_EQ(records(), before);
}

// --------------------------------------------------------------------------- wait

TEST_F(ClientApiTest, WaitJobAnswersOnceTheJobIsFinalAndThatIsDurable) {
  open();
  expect_error(ask(wait_req(5)), pb::NOT_FOUND, "no job 5");

  const sched::JobId job = submit(spec(2, 1000));
  ASSERT_EQ(running(), (std::set<TaskKey>{{job, 0}, {job, 1}}));
  Reply wait = send(wait_req(job));
  settle();
  EXPECT_FALSE(wait.answered()) << "answered while the job runs";

  ASSERT_TRUE(runner_.end({job, 0}, TaskExit{pb::TASK_SUCCEEDED, 0, 0}));
  settle();
  EXPECT_FALSE(wait.answered()) << "answered with a task still running";

  ASSERT_TRUE(runner_.end({job, 1}, TaskExit{pb::TASK_FAILED, 3, 0}));
  EXPECT_EQ(c().state().cluster().job(job)->state, sched::JobState::kFailed) << "applied at once";
  EXPECT_FALSE(wait.answered()) << "answered before the final record was durable";
  // A wait that comes in now, with the job final but its end not durable, waits as well.
  Reply wait_after = send(wait_req(job));
  EXPECT_FALSE(wait_after.answered()) << "answered before the final record was durable";
  rig_->complete();
  ASSERT_TRUE(wait_after.ok()) << wait_after.get().error_message();
  EXPECT_EQ(wait_after.get().job().job().state(), pb::JOB_FAILED);
  ASSERT_TRUE(wait.ok()) << wait.get().error_message();
  const pb::JobDetail& d = wait.get().job();
  EXPECT_EQ(d.job().id(), job);
  EXPECT_EQ(d.job().state(), pb::JOB_FAILED);
  ASSERT_EQ(d.tasks_size(), 2);
  EXPECT_EQ(d.tasks(0).state(), pb::TASK_SUCCEEDED);
  EXPECT_EQ(d.tasks(1).state(), pb::TASK_FAILED);
  EXPECT_EQ(d.tasks(1).exit_code(), 3);
  EXPECT_EQ(wait.replies(), 1);

  // A wait on a job that is already final is answered at once (its end is durable).
  Reply late = send(wait_req(job));
  ASSERT_TRUE(late.ok()) << late.get().error_message();
  EXPECT_EQ(late.get().job().job().state(), pb::JOB_FAILED);
}

// -------------------------------------------------------------------------- lists

// Every job's entry is bounded (a spec is at most kSpecBytesMax); pages are bounded by
// kPageBytesMax and always fit a frame, and following next_after names every job once.
TEST_F(ClientApiTest, ListJobsPagesFitAFrameAndNameEveryJobOnce) {
  open();
  // Four arguments and the name (the program, by default): a spec just under kSpecBytesMax.
  // A list carries the command shortened but the name whole: about 46 KB an entry, so the
  // jobs take three pages of kPageBytesMax.
  constexpr size_t kArgBytes = 45'000;
  constexpr int kLongJobs = 60;
  std::map<sched::JobId, pb::JobSpec> submitted;
  auto add = [&](pb::JobSpec s) {
    s.set_cpu_millis(kLocalCpu + 1);  // fits no board: the jobs stay queued, nothing runs
    const sched::JobId id = submit(s);
    ASSERT_NE(id, 0u);
    submitted[id] = s;
  };
  for (int i = 0; i < kLongJobs; ++i) {
    pb::JobSpec s = spec(1);
    s.set_command(0, "/opt/" + std::to_string(i) + std::string(kArgBytes, 'p'));
    for (int a = 0; a < 3; ++a) s.add_command(std::string(kArgBytes, 'a'));
    add(s);
  }
  {
    pb::JobSpec s = spec(1);  // short: listed whole
    s.add_command("--x");
    add(s);
  }
  {
    pb::JobSpec s = spec(1);  // over kListedArgsMax short arguments
    for (uint32_t a = 0; a < kListedArgsMax + 4; ++a) s.add_command("arg" + std::to_string(a));
    add(s);
  }
  {
    pb::JobSpec s = spec(1);  // cut inside a long argument of 2-byte characters
    std::string e;
    for (int i = 0; i < 1000; ++i) e += "\xc3\xa9";  // é
    s.add_command(e);
    add(s);
  }
  if (HasFatalFailure()) return;

  std::map<sched::JobId, int> seen;
  std::vector<int> page_sizes;
  uint64_t after = 0;
  sched::JobId submitted_meanwhile = 0;
  for (int pages = 0; pages < 100; ++pages) {
    pb::Response r = ask(list_jobs_req(after));
    ASSERT_EQ(r.error(), pb::OK) << r.error_message();
    EXPECT_LE(r.ByteSizeLong(), net::kFrameBytesMax) << "page " << pages << " overflows a frame";
    const pb::JobList& list = r.jobs();
    ASSERT_GT(list.jobs_size(), 0) << "an empty page: paging would not progress";
    page_sizes.push_back(list.jobs_size());
    for (const pb::JobSummary& j : list.jobs()) {
      EXPECT_GT(j.id(), after) << "out of order";
      ++seen[j.id()];
    }
    if (list.next_after() == 0) break;
    EXPECT_EQ(list.next_after(), list.jobs(list.jobs_size() - 1).id());
    after = list.next_after();
    if (pages == 0) {
      // A job submitted between pages is listed once, at the end.
      pb::JobSpec s = spec(1, kLocalCpu + 1);
      submitted_meanwhile = submit(s);
      submitted[submitted_meanwhile] = s;
    }
  }
  EXPECT_GE(page_sizes.size(), 3u) << "the byte bound was never reached";
  ASSERT_EQ(seen.size(), submitted.size());
  for (const auto& [id, n] : seen) {
    EXPECT_TRUE(submitted.contains(id)) << "listed job " << id << " was never submitted";
    EXPECT_EQ(n, 1) << "job " << id << " listed " << n << " times";
  }
  EXPECT_TRUE(seen.contains(submitted_meanwhile));

  // Commands in a list are shortened, and say so; a job's own page has its command whole.
  pb::Response all = ask(list_jobs_req(0, 1000));
  ASSERT_EQ(all.error(), pb::OK);
  for (const pb::JobSummary& j : all.jobs().jobs()) {
    SCOPED_TRACE("job " + std::to_string(j.id()));
    const auto& whole = submitted.at(j.id()).command();
    size_t bytes = 0;
    for (int a = 0; a < j.command_size(); ++a) {
      bytes += j.command(a).size();
      ASSERT_LT(a, whole.size());
      EXPECT_EQ(whole[a].compare(0, j.command(a).size(), j.command(a)), 0) << "not a prefix";
      if (whole[a].starts_with("\xc3")) {
        EXPECT_EQ(j.command(a).size() % 2, 0u) << "a character was cut in two";
      }
    }
    EXPECT_LE(static_cast<uint32_t>(j.command_size()), kListedArgsMax);
    EXPECT_LE(bytes, kListedCommandBytesMax);
    size_t whole_bytes = 0;
    for (const std::string& a : whole) whole_bytes += a.size();
    const bool shortened = j.command_size() < whole.size() || bytes < whole_bytes;
    EXPECT_EQ(j.command_shortened(), shortened);
  }
  const pb::JobDetail d = get_job(1);
  EXPECT_EQ(d.job().command_size(), submitted.at(1).command_size());
  EXPECT_EQ(d.job().command(3), submitted.at(1).command(3)) << "a job's page cut its command";
  EXPECT_FALSE(d.job().command_shortened());

  // max_jobs pages by count.
  pb::Response first = ask(list_jobs_req(0, 7));
  ASSERT_EQ(first.jobs().jobs_size(), 7);
  EXPECT_EQ(first.jobs().next_after(), first.jobs().jobs(6).id());
}

// -------------------------------------------------------------------------- nodes

TEST_F(ClientApiTest, ListNodesShowsTheLocalBoardAndDrainsAreDurableAndShown) {
  open();
  sched::NodeSpec far;
  far.name = "pi-far";
  far.capacity = {4000, 8ull << 30};
  far.labels = {{"zone", "b"}};
  ASSERT_TRUE(c().register_node("board-far", far));  // no runner: down
  settle();

  pb::Response r = ask(list_nodes_req());
  ASSERT_EQ(r.error(), pb::OK) << r.error_message();
  ASSERT_EQ(r.nodes().nodes_size(), 2);
  const pb::NodeInfo* local = find_node(r, "pi-local");
  ASSERT_NE(local, nullptr);
  EXPECT_EQ(local->state(), "ready");
  EXPECT_EQ(local->cpu_millis(), kLocalCpu);
  EXPECT_EQ(local->mem_bytes(), kLocalMem);
  EXPECT_EQ(local->tasks_max(), kLocalTasksMax);
  EXPECT_EQ(local->labels().at("arch"), "aarch64");
  EXPECT_EQ(local->running_tasks(), 0u);
  // What only the board knows comes from DescribeNode.
  EXPECT_EQ(local->arch(), "aarch64");
  EXPECT_EQ(local->isolation(), "cgroup-v2");
  ASSERT_EQ(local->enforced_size(), 1);
  EXPECT_EQ(local->enforced(0), "memory");
  EXPECT_EQ(local->io_backend(), "io_uring");
  const pb::NodeInfo* remote = find_node(r, "pi-far");
  ASSERT_NE(remote, nullptr);
  EXPECT_EQ(remote->state(), "down");
  EXPECT_EQ(remote->labels().at("zone"), "b");
  EXPECT_EQ(described_, (std::set<std::string>{"pi-local", "pi-far"}));

  // A task uses the board; the list says how much.
  const sched::JobId job = submit(spec(1, 500));
  ASSERT_EQ(running(), (std::set<TaskKey>{{job, 0}}));
  r = ask(list_nodes_req());
  local = find_node(r, "pi-local");
  ASSERT_NE(local, nullptr);
  EXPECT_EQ(local->running_tasks(), 1u);
  EXPECT_EQ(local->cpu_millis_used(), 500u);
  EXPECT_EQ(local->mem_bytes_used(), kMem);

  expect_error(ask(drain_req("pi-nowhere")), pb::NOT_FOUND, "pi-nowhere");

  Reply drain = send(drain_req("pi-local"));
  EXPECT_FALSE(drain.answered()) << "answered before the drain was durable";
  rig_->complete();
  ASSERT_TRUE(drain.ok()) << drain.get().error_message();
  r = ask(list_nodes_req());
  EXPECT_EQ(find_node(r, "pi-local")->state(), "draining") << "a task still runs there";

  // Nothing new goes to a draining board; once its task ends it is drained.
  const sched::JobId later = submit(spec(1, 500));
  EXPECT_EQ(get_job(later).tasks(0).state(), pb::TASK_QUEUED);
  ASSERT_TRUE(runner_.end({job, 0}, TaskExit{pb::TASK_SUCCEEDED, 0, 0}));
  settle();
  r = ask(list_nodes_req());
  EXPECT_EQ(find_node(r, "pi-local")->state(), "drained");
  EXPECT_EQ(get_job(later).tasks(0).state(), pb::TASK_QUEUED);

  ASSERT_EQ(ask(drain_req("pi-local", /*undrain=*/true)).error(), pb::OK);
  r = ask(list_nodes_req());
  EXPECT_EQ(find_node(r, "pi-local")->state(), "ready");
  EXPECT_EQ(get_job(later).tasks(0).state(), pb::TASK_RUNNING);

  // A board that took over a name retires the old node: it is listed no more.
  ASSERT_TRUE(c().register_node("board-far-2", far));
  settle();
  r = ask(list_nodes_req());
  EXPECT_EQ(r.nodes().nodes_size(), 2);
  EXPECT_EQ(std::count_if(r.nodes().nodes().begin(), r.nodes().nodes().end(),
                          [](const pb::NodeInfo& n) { return n.name() == "pi-far"; }),
            1);
}

// --------------------------------------------------------------------------- logs

TEST_F(ClientApiTest, ReadLogServesThisBoardsLogsFromTheLogStore) {
  open();
  expect_error(ask(read_log_req(9, 0)), pb::NOT_FOUND, "no job 9");

  const sched::JobId job = submit(spec(1));
  ASSERT_EQ(running(), (std::set<TaskKey>{{job, 0}}));
  expect_error(ask(read_log_req(job, 5)), pb::NOT_FOUND, "no task " + std::to_string(job) + ".5");

  // What the executor does for a running task: open the attempt's files and append.
  const storage::LogKey out{job, 0, storage::Stream::kStdout};
  const storage::LogKey err{job, 0, storage::Stream::kStderr};
  ASSERT_TRUE(logs_->open(out));
  ASSERT_TRUE(logs_->open(err));
  logs_->append(out, "hello\n");
  logs_->append(out, "world\n");
  logs_->append(err, "oops\n");
  rig_->complete();  // the appends are written

  pb::Response r = ask(read_log_req(job, 0));
  ASSERT_EQ(r.error(), pb::OK) << r.error_message();
  EXPECT_EQ(r.log().data(), "hello\nworld\n");
  EXPECT_EQ(r.log().next_offset(), 12u);
  EXPECT_FALSE(r.log().final()) << "the task still runs";

  r = ask(read_log_req(job, 0, pb::STDOUT, 6, 3));
  EXPECT_EQ(r.log().data(), "wor");
  EXPECT_EQ(r.log().next_offset(), 9u);
  r = ask(read_log_req(job, 0, pb::STDERR));
  EXPECT_EQ(r.log().data(), "oops\n");
  // tail (the status page): the last max_bytes, whatever the offset.
  pb::Request tail = read_log_req(job, 0, pb::STDOUT, 3, 8);
  tail.mutable_read_log()->set_tail(true);
  r = ask(std::move(tail));
  ASSERT_EQ(r.error(), pb::OK) << r.error_message();
  EXPECT_EQ(r.log().data(), "o\nworld\n");
  r = ask(read_log_req(job, 0, pb::STDOUT, 12));
  EXPECT_EQ(r.log().data(), "");
  EXPECT_EQ(r.log().next_offset(), 12u);
  EXPECT_FALSE(r.log().final());

  // The end: "final" is said only once the task's end is durable, and only at the end.
  logs_->close(out, [](Status) {});
  ASSERT_TRUE(runner_.end({job, 0}, TaskExit{pb::TASK_SUCCEEDED, 0, 0}));
  Reply before_durable = send(read_log_req(job, 0, pb::STDOUT, 12));
  ASSERT_TRUE(before_durable.answered()) << "a read at the end of the file waited";
  EXPECT_FALSE(before_durable.get().log().final()) << "final before the end was durable";
  settle();
  r = ask(read_log_req(job, 0, pb::STDOUT, 12));
  EXPECT_TRUE(r.log().final());
  r = ask(read_log_req(job, 0, pb::STDOUT, 0));
  EXPECT_EQ(r.log().data(), "hello\nworld\n");
  EXPECT_FALSE(r.log().final()) << "final with bytes still to read";

  // A task that never started has no log yet: an empty chunk where the client asked.
  const sched::JobId queued = submit(spec(1, kLocalCpu + 1));
  r = ask(read_log_req(queued, 0, pb::STDOUT, 7));
  ASSERT_EQ(r.error(), pb::OK) << r.error_message();
  EXPECT_EQ(r.log().data(), "");
  EXPECT_EQ(r.log().next_offset(), 7u);
  EXPECT_FALSE(r.log().final());
}

TEST_F(ClientApiTest, ReadLogOfAnotherBoardsTaskGoesToItsAgentNotTheLocalFiles) {
  open();
  sched::NodeSpec far;
  far.name = "pi-far";
  far.capacity = {4000, 8ull << 30};
  far.labels = {{"zone", "b"}};
  auto far_id = c().register_node("board-far", far);
  ASSERT_TRUE(far_id);
  // far_runner_ runs the task, but no agent session is connected for that board.
  c().attach_runner(*far_id, &far_runner_);
  pb::JobSpec s = spec(1);
  (*s.mutable_constraints())["zone"] = "b";
  const sched::JobId job = submit(s);
  ASSERT_EQ(far_runner_.running.size(), 1u);

  // Bytes under that key here are not that task's log: the board that ran it has it.
  const storage::LogKey out{job, 0, storage::Stream::kStdout};
  ASSERT_TRUE(logs_->open(out));
  logs_->append(out, "not here\n");
  rig_->complete();
  pb::Response r = ask(read_log_req(job, 0));
  expect_error(r, pb::UNAVAILABLE, "pi-far");
  EXPECT_NE(r.error_message().find("down"), std::string::npos) << r.error_message();
}

// ------------------------------------------------------------------------ refusals

TEST_F(ClientApiTest, AStoppingServerRefusesEveryRequest) {
  open();
  const sched::JobId job = submit(spec(1));
  c().stop();
  for (pb::Request req : {submit_req(spec(1)), get_job_req(job), list_jobs_req(), cancel_req(job),
                          wait_req(job), list_nodes_req(), read_log_req(job, 0)}) {
    SCOPED_TRACE(req.body_case());
    Reply r = send(std::move(req));
    ASSERT_TRUE(r.answered());
    expect_error(r.get(), pb::UNAVAILABLE, "stopping");
  }
}

TEST_F(ClientApiTest, ReadsWaitingForDurabilityAreBoundedAndTheRestAreToldBusy) {
  options_.barriers_max = 1;
  open();
  Reply submitted = send(submit_req(spec(1)));
  Reply first = send(list_jobs_req());
  Reply second = send(list_jobs_req());
  EXPECT_FALSE(first.answered());
  ASSERT_TRUE(second.answered()) << "a read past the bound waited";
  expect_error(second.get(), pb::BUSY, "try again");
  rig_->complete();
  ASSERT_TRUE(submitted.ok());
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first.get().jobs().jobs_size(), 1);
}

}  // namespace
}  // namespace cardnode::runtime
