// Agent (`cardnode agent --join`) against a scripted fake server: a real net::RpcServer on
// 127.0.0.1, on the test's own loop and thread, plays the AgentHub's side of
// runtime/agent_protocol.md (welcome, work in poll answers, report acks) and records what the
// agent says. The agent runs on a thread of its own (stopped with request_stop) with real
// processes (rlimit isolation, as root where the test is), a real journal and
// real logs in a temp data dir. Covered: the hello; a task's end, reported until acknowledged
// and then never again; ends while the server is away; a stop (and work that comes during
// it) and a crash leaving nothing running; tasks_max.
//
// Every wait runs the test's loop until a condition holds, bounded by kWait: nothing sleeps a
// guessed time (under qemu-user a spawn is ~10x slower). Tasks that must outlive a step wait
// for a file the test creates, so the test decides when they end.
#include "runtime/agent/agent.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cardnode.pb.h"
#include "net/rpc_server.h"
#include "runtime/exec/test_cgroups.h"
#include "storage/test_util.h"

namespace cardnode::runtime {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

const std::string kToken = "agent-test-token-0123456789abcdef";
constexpr auto kWait = std::chrono::seconds(30);  // reached only when a test fails
constexpr uint32_t kNodeId = 7;
constexpr uint64_t kHeartbeatMs = 100;

pb::TaskAttempt attempt(uint64_t job, uint32_t index, uint32_t n) {
  pb::TaskAttempt a;
  a.set_job_id(job);
  a.set_index(index);
  a.set_attempt(n);
  return a;
}

bool same(const pb::TaskAttempt& a, const pb::TaskAttempt& b) {
  return a.job_id() == b.job_id() && a.index() == b.index() && a.attempt() == b.attempt();
}

pb::TaskStart start_of(const pb::TaskAttempt& a, const std::vector<std::string>& argv) {
  pb::TaskStart s;
  *s.mutable_task() = a;
  s.set_count(1);
  for (const auto& arg : argv) s.add_command(arg);
  s.set_node_name("board-7");
  return s;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Alive and not a zombie: a task whose parent died may linger as a zombie until init reaps
// it; it runs nothing.
bool alive(pid_t pid) {
  if (pid <= 0 || ::kill(pid, 0) != 0) return false;
  const std::string stat = slurp("/proc/" + std::to_string(pid) + "/stat");
  const size_t paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] != 'Z';
}

// The server's side of the protocol, scripted by the test, recording what the agent says.
// On the test's loop: only the test thread touches it.
class FakeServer {
 public:
  explicit FakeServer(uv_loop_t* loop) : loop_(loop) {}
  ~FakeServer() { stop(); }

  // Listens on `address` (port 0: any). Each start is a new server generation with a new
  // session number: a restarted server has forgotten the old sessions, as the hub has.
  std::string start(const std::string& address = "127.0.0.1:0") {
    ++generation;
    session_ = generation * 1000 + 1;
    server_ = std::make_unique<net::RpcServer>(
        loop_, kToken, net::RpcServerOptions{.listen = address},
        [this](pb::Request&& req, net::Responder r) { handle(std::move(req), std::move(r)); });
    auto bound = server_->start();
    EXPECT_TRUE(bound) << bound.error().describe();
    address_ = bound ? *bound : "";
    return address_;
  }
  // Closes every connection; the handles finish closing on the loop.
  void stop() {
    if (server_) server_->stop();
    server_.reset();
    held_poll_.reset();  // its connection is gone: replying is a no-op
  }
  const std::string& address() const { return address_; }
  uint64_t session() const { return session_; }

  // Work for the agent: answers the poll it holds, else the next one.
  void give(pb::AgentWork work) {
    if (held_poll_) {
      pb::Response resp;
      *resp.mutable_work() = std::move(work);
      reply_held(std::move(resp));
    } else {
      work_.push_back(std::move(work));
    }
  }
  void give_start(const pb::TaskAttempt& a, const std::vector<std::string>& argv) {
    pb::AgentWork w;
    *w.add_start() = start_of(a, argv);
    give(std::move(w));
  }
  // Answers the held poll with no work (as the hub does when a newer poll displaces it).
  bool answer_poll_empty() {
    if (!held_poll_) return false;
    reply_held(pb::Response{});
    return true;
  }
  bool poll_held() const { return held_poll_.has_value(); }

  // Every end the agent told a server (in a hello or a report), with the generation it
  // told, oldest first.
  std::vector<std::pair<int, pb::TaskOutcome>> ends_of(const pb::TaskAttempt& a) const {
    std::vector<std::pair<int, pb::TaskOutcome>> out;
    for (const auto& [gen, o] : ends_) {
      if (same(o.task(), a)) out.emplace_back(gen, o);
    }
    return out;
  }
  bool acked(const pb::TaskAttempt& a) const {
    for (const auto& x : acked_) {
      if (same(x, a)) return true;
    }
    return false;
  }

  // The script.
  bool ack_ends = true;  // false: reports are refused ("server busy"), hellos' ends not acked
  std::function<void(const pb::AgentReport&)> on_report;  // before the report is answered
  // The record.
  int generation = 0;
  std::vector<pb::AgentHello> hellos;
  std::vector<pb::AgentReport> reports;
  std::vector<pb::AgentHeartbeat> heartbeats;
  std::vector<pb::AgentLog> agent_logs;
  int polls = 0;

 private:
  void reply_held(pb::Response resp) {
    net::Responder r = *held_poll_;
    held_poll_.reset();
    r.reply(std::move(resp));
  }

  static pb::Response error(pb::ErrorCode code, const std::string& message) {
    pb::Response resp;
    resp.set_error(code);
    resp.set_error_message(message);
    return resp;
  }

  void handle(pb::Request&& req, net::Responder r) {
    pb::Response resp;
    const auto stale = [&](uint64_t session) {
      if (session == session_) return false;
      r.reply(error(pb::UNAVAILABLE, "stale agent session; say hello again"));
      return true;
    };
    switch (req.body_case()) {
      case pb::Request::kAgentHello: {
        const pb::AgentHello& h = req.agent_hello();
        hellos.push_back(h);
        pb::AgentWelcome* w = resp.mutable_welcome();
        w->set_node_id(kNodeId);
        w->set_session(session_);
        w->set_heartbeat_ms(kHeartbeatMs);
        for (const pb::TaskOutcome& o : h.ended()) {
          ends_.emplace_back(generation, o);
          if (!ack_ends) continue;
          *w->add_acked() = o.task();
          acked_.push_back(o.task());
        }
        break;
      }
      case pb::Request::kAgentPoll:
        ++polls;
        if (stale(req.agent_poll().session())) return;
        if (!work_.empty()) {
          *resp.mutable_work() = std::move(work_.front());
          work_.pop_front();
          break;
        }
        held_poll_ = std::move(r);  // answered by give() or answer_poll_empty()
        return;
      case pb::Request::kAgentHeartbeat:
        if (stale(req.agent_heartbeat().session())) return;
        heartbeats.push_back(req.agent_heartbeat());
        break;
      case pb::Request::kAgentReport: {
        if (stale(req.agent_report().session())) return;
        reports.push_back(req.agent_report());
        if (on_report) on_report(req.agent_report());
        for (const pb::TaskOutcome& o : req.agent_report().outcomes()) {
          ends_.emplace_back(generation, o);
        }
        if (!ack_ends) {
          resp = error(pb::BUSY, "server busy");
          break;
        }
        for (const pb::TaskOutcome& o : req.agent_report().outcomes()) {
          *resp.mutable_report_ack()->add_acked() = o.task();
          acked_.push_back(o.task());
        }
        break;
      }
      case pb::Request::kAgentLog: agent_logs.push_back(req.agent_log()); break;
      default: resp = error(pb::INVALID_ARGUMENT, "not an agent request");
    }
    r.reply(std::move(resp));
  }

  uv_loop_t* loop_;
  std::unique_ptr<net::RpcServer> server_;
  std::string address_;
  uint64_t session_ = 0;
  std::deque<pb::AgentWork> work_;
  std::optional<net::Responder> held_poll_;
  std::vector<std::pair<int, pb::TaskOutcome>> ends_;
  std::vector<pb::TaskAttempt> acked_;
};

class AgentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(tmp_.path().empty());
    data_dir_ = tmp_.path() + "/data";
    files_ = tmp_.path() + "/files";
    fs::create_directories(files_);
    ASSERT_EQ(uv_loop_init(&loop_), 0);
    loop_open_ = true;
    // Wakes the loop now and then so that eventually() looks at its condition and deadline.
    uv_timer_init(&loop_, &tick_);
    uv_timer_start(
        &tick_, [](uv_timer_t*) {}, 10, 10);
    server_ = std::make_unique<FakeServer>(&loop_);
  }

  void TearDown() override {
    if (running_) stop_agent();
    runtime::testing::remove_pool_groups_under(tmp_.path());
    server_.reset();
    if (!loop_open_) return;
    uv_close(reinterpret_cast<uv_handle_t*>(&tick_), nullptr);
    uv_run(&loop_, UV_RUN_DEFAULT);  // the servers' handles close
    EXPECT_EQ(uv_loop_close(&loop_), 0);
  }

  // Runs the test's loop (the fake server) until pred holds; false after kWait.
  bool eventually(const std::function<bool()>& pred) {
    const auto deadline = Clock::now() + kWait;
    while (!pred()) {
      if (Clock::now() > deadline) return false;
      uv_run(&loop_, UV_RUN_ONCE);
    }
    return true;
  }

  AgentOptions options() const {
    AgentOptions o;
    o.join = server_->address();
    o.security.token = kToken;
    o.data_dir = data_dir_;
    o.node_name = "board-7";
    o.labels = {{"rack", "a"}, {"role", "test"}};
    // The tasks wait for files in the test's own 0700 temp dir.
    o.task_users.allow_root = true;
    o.disable_cgroups = true;  // the test's tasks need no cgroups, and leave none behind
    o.tasks_max = 3;
    o.heartbeat_ms = kHeartbeatMs;
    return o;
  }

  struct Running {
    std::unique_ptr<Agent> agent;
    std::thread thread;
    std::atomic<bool> done{false};
    int rc = -1;
  };

  void start_agent(AgentOptions o) {
    auto a = Agent::open(std::move(o));
    ASSERT_TRUE(a) << a.error().describe();
    running_ = std::make_unique<Running>();
    Running* r = running_.get();
    r->agent = std::move(*a);
    r->thread = std::thread([r] {
      r->rc = r->agent->run();
      r->done = true;
    });
  }

  // As SIGTERM would: serves the agent's last words until run() returns; run()'s exit code.
  int stop_agent() {
    running_->agent->request_stop();
    EXPECT_TRUE(eventually([&] { return running_->done.load(); })) << "the agent did not stop";
    running_->thread.join();
    const int rc = running_->rc;
    running_.reset();  // the agent goes, and with it the data dir's lock
    return rc;
  }

  // A task that writes its pid (the task's own: the spawn execs the command itself) to
  // NAME.pid, then runs until the test creates NAME.go.
  std::vector<std::string> waiting_task(const std::string& name) const {
    const std::string pid = "'" + files_ + "/" + name + ".pid'";
    const std::string go = "'" + files_ + "/" + name + ".go'";
    return {"sh", "-c",
            "echo $$ > " + pid + ".tmp && mv " + pid + ".tmp " + pid + "; while [ ! -e " + go +
                " ]; do sleep 0.05; done"};
  }
  bool started(const std::string& name) const { return fs::exists(files_ + "/" + name + ".pid"); }
  pid_t pid_of(const std::string& name) {
    EXPECT_TRUE(eventually([&] { return started(name); })) << name << " never started";
    return static_cast<pid_t>(std::atol(slurp(files_ + "/" + name + ".pid").c_str()));
  }
  void release(const std::string& name) const { std::ofstream(files_ + "/" + name + ".go"); }

  storage::testing::TempDir tmp_;
  std::string data_dir_;
  std::string files_;
  uv_loop_t loop_{};
  uv_timer_t tick_{};
  bool loop_open_ = false;
  std::unique_ptr<FakeServer> server_;
  std::unique_ptr<Running> running_;
};

TEST_F(AgentTest, HelloCarriesIdentityFactsAndTheSameNodeIdAfterARestart) {
  server_->start();
  start_agent(options());
  ASSERT_TRUE(eventually([&] { return !server_->heartbeats.empty(); }));

  ASSERT_EQ(server_->hellos.size(), 1u);
  const pb::AgentHello first = server_->hellos[0];
  std::string node_id = slurp(data_dir_ + "/node_id");
  while (!node_id.empty() && node_id.back() == '\n') node_id.pop_back();
  EXPECT_FALSE(node_id.empty());
  EXPECT_EQ(first.identity(), node_id);
  EXPECT_NE(first.incarnation(), 0u);
  EXPECT_EQ(first.running_size(), 0);
  EXPECT_EQ(first.ended_size(), 0);
  const pb::NodeFacts& f = first.facts();
  EXPECT_EQ(f.name(), "board-7");
  EXPECT_EQ(f.tasks_max(), 3u);
  ASSERT_EQ(f.labels_size(), 2);
  EXPECT_EQ(f.labels().at("rack"), "a");
  EXPECT_EQ(f.labels().at("role"), "test");
  struct utsname u {};
  ASSERT_EQ(::uname(&u), 0);
  EXPECT_EQ(f.arch(), u.machine);
  EXPECT_GT(f.cpu_millis(), 0u);
  EXPECT_GT(f.mem_bytes(), 0u);
  EXPECT_EQ(f.isolation(), "rlimit");  // disable_cgroups
  EXPECT_FALSE(f.io_backend().empty());
  // The session the welcome gave is the one the agent uses from then on.
  EXPECT_GE(server_->polls, 1);
  EXPECT_EQ(server_->heartbeats[0].session(), server_->session());
  EXPECT_EQ(server_->heartbeats[0].facts().name(), "board-7");
  EXPECT_EQ(stop_agent(), 0);

  // A second run on the same data dir is the same node: another process, same identity.
  start_agent(options());
  ASSERT_TRUE(eventually([&] { return server_->hellos.size() == 2; }));
  EXPECT_EQ(server_->hellos[1].identity(), node_id);
  EXPECT_NE(server_->hellos[1].incarnation(), first.incarnation());
  EXPECT_EQ(stop_agent(), 0);
}

TEST_F(AgentTest, HelloAndEveryHeartbeatCarryTheBoardsHeatReadAfresh) {
  // A fake sysfs tree: two zones (the hotter counts) and the Pi firmware's flags.
  const std::string root = tmp_.path() + "/sysfs";
  auto put = [&](const std::string& rel, const std::string& text) {
    fs::create_directories(fs::path(root + rel).parent_path());
    std::ofstream(root + rel) << text;
  };
  put("/sys/class/thermal/thermal_zone0/temp", "52000\n");
  put("/sys/class/thermal/thermal_zone1/temp", "85000\n");
  put("/sys/devices/platform/soc/soc:firmware/get_throttled", "0x50005\n");
  server_->start();
  AgentOptions o = options();
  o.sysfs_root = root;
  start_agent(o);
  ASSERT_TRUE(eventually([&] { return !server_->heartbeats.empty(); }));
  const pb::NodeFacts& hello = server_->hellos.at(0).facts();
  EXPECT_EQ(hello.temperature_millicelsius(), 85'000);
  EXPECT_TRUE(hello.throttled());
  EXPECT_TRUE(hello.under_voltage());

  // The board cools and the firmware clears its "now" bits ("has occurred" ones stay).
  put("/sys/class/thermal/thermal_zone1/temp", "70000\n");
  put("/sys/devices/platform/soc/soc:firmware/get_throttled", "0x50000\n");
  ASSERT_TRUE(eventually([&] {
    const pb::NodeFacts& f = server_->heartbeats.back().facts();
    return f.temperature_millicelsius() == 70'000 && !f.throttled() && !f.under_voltage();
  }));
  // No zone left at all: the temperature is unknown, not 0.
  fs::remove_all(root + "/sys/class/thermal");
  ASSERT_TRUE(eventually(
      [&] { return !server_->heartbeats.back().facts().has_temperature_millicelsius(); }));
  EXPECT_EQ(stop_agent(), 0);
}

TEST_F(AgentTest, TaskEndIsReportedUntilAcknowledgedThenNeverAgain) {
  const pb::TaskAttempt a = attempt(1, 0, 1);
  server_->start();
  server_->ack_ends = false;  // refuses reports at first, as a busy server does
  server_->give_start(a, {"sh", "-c", "echo hi"});
  start_agent(options());

  // Refused, so sent again (a second apart), each time the same end.
  ASSERT_TRUE(eventually([&] { return server_->ends_of(a).size() >= 2; }));
  for (const auto& [gen, o] : server_->ends_of(a)) {
    EXPECT_EQ(o.state(), pb::TASK_SUCCEEDED);
    EXPECT_EQ(o.exit_code(), 0);
    EXPECT_EQ(o.signal(), 0);
  }
  server_->ack_ends = true;
  ASSERT_TRUE(eventually([&] { return server_->acked(a); }));
  const size_t told = server_->ends_of(a).size();

  // Its output stayed on the board: fetched as the hub fetches it, in a poll answer.
  const auto fetch = [&](uint64_t id, uint64_t offset) {
    pb::AgentWork w;
    pb::LogFetch* f = w.add_logs();
    f->set_fetch_id(id);
    f->set_job_id(a.job_id());
    f->set_index(a.index());
    f->set_stream(pb::STDOUT);
    f->set_offset(offset);
    f->set_max_bytes(4096);
    return w;
  };
  ASSERT_TRUE(eventually([&] { return server_->poll_held(); }));
  server_->give(fetch(42, 0));
  ASSERT_TRUE(eventually([&] { return server_->agent_logs.size() == 1; }));
  EXPECT_EQ(server_->agent_logs[0].fetch_id(), 42u);
  EXPECT_EQ(server_->agent_logs[0].data(), "hi\n");
  // From where that ended: nothing more, and the task is over.
  ASSERT_TRUE(eventually([&] { return server_->poll_held(); }));
  server_->give(fetch(43, 3));
  ASSERT_TRUE(eventually([&] { return server_->agent_logs.size() == 2; }));
  EXPECT_EQ(server_->agent_logs[1].fetch_id(), 43u);
  EXPECT_EQ(server_->agent_logs[1].data(), "");
  EXPECT_TRUE(server_->agent_logs[1].final());

  // A server restart: the agent's new hello does not carry the acknowledged end, nor does
  // anything after it (a heartbeat of the new session comes after any report would have).
  const std::string address = server_->address();
  server_->stop();
  server_->start(address);
  ASSERT_TRUE(eventually([&] {
    return !server_->heartbeats.empty() &&
           server_->heartbeats.back().session() == server_->session();
  }));
  ASSERT_EQ(server_->hellos.size(), 2u);
  EXPECT_EQ(server_->hellos[1].ended_size(), 0);
  EXPECT_EQ(server_->hellos[1].running_size(), 0);
  EXPECT_EQ(server_->ends_of(a).size(), told);
  EXPECT_EQ(stop_agent(), 0);

  // Nor does the journal keep it: the next agent on this data dir has nothing to tell.
  start_agent(options());
  ASSERT_TRUE(eventually([&] { return server_->hellos.size() == 3; }));
  EXPECT_EQ(server_->hellos[2].ended_size(), 0);
  EXPECT_EQ(stop_agent(), 0);
  EXPECT_EQ(server_->ends_of(a).size(), told);
}

TEST_F(AgentTest, AnEndWhileTheServerIsAwayGoesOutWhenItIsBack) {
  const pb::TaskAttempt a = attempt(2, 0, 1);
  server_->start();
  server_->give_start(a, waiting_task("t"));
  start_agent(options());
  const pid_t pid = pid_of("t");
  ASSERT_TRUE(alive(pid));

  // The server goes away; the task runs on and ends by itself, with nobody to tell.
  const std::string address = server_->address();
  server_->stop();
  release("t");
  ASSERT_TRUE(eventually([&] { return !alive(pid); }));
  EXPECT_TRUE(server_->ends_of(a).empty());

  // A server on the same address: the agent finds it again (its backoff is at most 2 s)
  // and the end goes out, in the hello or a report, until acknowledged.
  server_->start(address);
  ASSERT_TRUE(eventually([&] { return server_->acked(a); }));
  const auto ends = server_->ends_of(a);
  ASSERT_FALSE(ends.empty());
  for (const auto& [gen, o] : ends) {
    EXPECT_EQ(gen, 2);                         // told the second server only
    EXPECT_EQ(o.state(), pb::TASK_SUCCEEDED);  // it ran to its end: not killed meanwhile
    EXPECT_EQ(o.exit_code(), 0);
  }
  EXPECT_EQ(server_->hellos.size(), 2u);
  EXPECT_EQ(stop_agent(), 0);
}

TEST_F(AgentTest, StopKillsWhatRunsReportsItLostAndLeavesNothing) {
  const pb::TaskAttempt a = attempt(3, 0, 1);
  server_->start();
  server_->give_start(a, waiting_task("t"));  // never released
  AgentOptions with_cgroups = options();
  with_cgroups.disable_cgroups = false;  // where there are any: root on a cgroup machine
  start_agent(with_cgroups);
  const pid_t pid = pid_of("t");
  ASSERT_TRUE(alive(pid));
  // Anywhere in the cgroup tree: at a hierarchy's root, or inside a systemd service's
  // own cgroup when the test runs in one (runtime/exec/isolation.h).
  auto group_exists = [&] {
    const std::string name = pool_group_name(data_dir_);
    std::error_code ec;
    for (fs::recursive_directory_iterator it("/sys/fs/cgroup", ec), end; !ec && it != end;
         it.increment(ec)) {
      if (it.depth() >= 8) it.disable_recursion_pending();
      if (it->path().filename() == name) return true;
    }
    return false;
  };
  ASSERT_FALSE(server_->hellos.empty());
  // Where the agent uses cgroups (root placement here), the parent group is there now.
  if (server_->hellos[0].facts().isolation() != "rlimit") {
    EXPECT_TRUE(group_exists());
  }

  EXPECT_EQ(stop_agent(), 0);
  // run() returns once the task's tree is gone, and the end went to the server that could
  // hear it: lost, free of the task's lost budget (the task did nothing wrong).
  EXPECT_FALSE(alive(pid));
  const auto ends = server_->ends_of(a);
  ASSERT_EQ(ends.size(), 1u);
  EXPECT_EQ(ends[0].second.state(), pb::TASK_LOST);
  EXPECT_TRUE(ends[0].second.requeue_free());
  EXPECT_TRUE(server_->acked(a));
  // Nor its cgroups: the parent group goes too, as a server's does.
  EXPECT_FALSE(group_exists());

  // The next agent on this data dir runs nothing and has nothing more to tell.
  start_agent(options());
  ASSERT_TRUE(eventually([&] { return server_->hellos.size() == 2; }));
  EXPECT_EQ(server_->hellos[1].running_size(), 0);
  EXPECT_EQ(server_->hellos[1].ended_size(), 0);
  EXPECT_EQ(stop_agent(), 0);
  EXPECT_EQ(server_->ends_of(a).size(), 1u);
}

// A poll answered while the agent stops (it keeps one outstanding): what it starts must not
// run, or it would outlive the agent's kill of everything, untracked.
TEST_F(AgentTest, WorkThatComesWhileStoppingDoesNotRun) {
  const pb::TaskAttempt first = attempt(6, 0, 1);
  const pb::TaskAttempt late = attempt(6, 1, 1);
  server_->start();
  server_->give_start(first, waiting_task("first"));  // never released
  // The stop kills `first`; its end is the sign the agent is stopping: the held poll is
  // answered then, with a start, just ahead of the report's ack.
  server_->on_report = [&](const pb::AgentReport& r) {
    for (const auto& o : r.outcomes()) {
      if (same(o.task(), first)) server_->give_start(late, waiting_task("late"));
    }
  };
  start_agent(options());
  const pid_t pid = pid_of("first");
  ASSERT_TRUE(eventually([&] { return server_->poll_held(); }));

  EXPECT_EQ(stop_agent(), 0);
  EXPECT_FALSE(alive(pid));
  EXPECT_FALSE(started("late"));
  if (started("late")) ::kill(pid_of("late"), SIGKILL);  // not left to the next test
  // Ended unspawned, as a shutdown ends what runs: lost, free, and told before run() returned.
  const auto ends = server_->ends_of(late);
  ASSERT_EQ(ends.size(), 1u);
  EXPECT_EQ(ends[0].second.state(), pb::TASK_LOST);
  EXPECT_TRUE(ends[0].second.requeue_free());
  EXPECT_TRUE(server_->acked(late));
}

TEST_F(AgentTest, AfterACrashTheNextStartKillsTheLeftoverAndReportsItLost) {
  const pb::TaskAttempt a = attempt(4, 0, 1);
  server_->start();
  server_->give_start(a, waiting_task("t"));  // never released
  // The agent that crashes runs in a child process (killed with SIGKILL: no stop of its
  // own). Forked while the test has no other thread: the child builds its agent from scratch.
  const AgentOptions o = options();
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto agent = Agent::open(o);
    ::_exit(agent ? (*agent)->run() : 3);
  }
  const pid_t pid = pid_of("t");
  ASSERT_EQ(::kill(child, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the crashing agent ended by itself: " << status;
  // Its task runs on (in a session of its own), and nobody tracks it now.
  ASSERT_TRUE(alive(pid));
  EXPECT_TRUE(server_->ends_of(a).empty());

  // The next agent on this data dir kills it (by its task tag: no cgroups here) and reports
  // it lost; not free this time: nothing stopped it cleanly.
  start_agent(options());
  ASSERT_TRUE(eventually([&] { return !alive(pid); })) << "the leftover still runs";
  ASSERT_TRUE(eventually([&] { return server_->acked(a); }));
  const auto ends = server_->ends_of(a);
  ASSERT_FALSE(ends.empty());
  EXPECT_EQ(ends[0].second.state(), pb::TASK_LOST);
  EXPECT_FALSE(ends[0].second.requeue_free());
  EXPECT_EQ(server_->hellos.back().running_size(), 0);
  EXPECT_EQ(stop_agent(), 0);
}

TEST_F(AgentTest, NoMoreThanTasksMaxRunAndNoWorkWhileTasksMaxEndsWait) {
  const std::vector<pb::TaskAttempt> tasks = {attempt(5, 0, 1), attempt(5, 1, 1), attempt(5, 2, 1)};
  server_->start();
  AgentOptions o = options();
  o.tasks_max = 2;
  server_->ack_ends = false;
  // One more than the node said it runs (a server never sends that: rule 8).
  pb::AgentWork w;
  for (const auto& a : tasks) *w.add_start() = start_of(a, waiting_task(std::to_string(a.index())));
  server_->give(std::move(w));
  start_agent(o);
  ASSERT_TRUE(eventually([&] { return !server_->hellos.empty(); }));
  EXPECT_EQ(server_->hellos[0].facts().tasks_max(), 2u);

  // Two run; the one over the limit does not start here and ends failed at once.
  ASSERT_TRUE(eventually([&] {
    int ended = 0;
    for (const auto& a : tasks) ended += !server_->ends_of(a).empty();
    return ended == 1;
  }));
  std::vector<std::string> runs;
  for (const auto& a : tasks) {
    const auto ends = server_->ends_of(a);
    if (ends.empty()) {
      runs.push_back(std::to_string(a.index()));
      continue;
    }
    EXPECT_EQ(ends[0].second.state(), pb::TASK_FAILED);
    EXPECT_EQ(ends[0].second.exit_code(), 127);
    EXPECT_FALSE(started(std::to_string(a.index())));
  }
  ASSERT_EQ(runs.size(), 2u);
  for (const auto& name : runs) EXPECT_GT(pid_of(name), 0);

  // Both end; with tasks_max ends waiting for an ack, the agent asks for no more work.
  for (const auto& name : runs) release(name);
  ASSERT_TRUE(eventually(
      [&] { return !server_->reports.empty() && server_->reports.back().outcomes_size() == 3; }));
  ASSERT_TRUE(eventually([&] { return server_->poll_held(); }));
  const int polls = server_->polls;
  ASSERT_TRUE(server_->answer_poll_empty());
  // Two more refused reports (a second apart) and still no poll.
  const size_t reports = server_->reports.size();
  ASSERT_TRUE(eventually([&] { return server_->reports.size() >= reports + 2; }));
  EXPECT_EQ(server_->polls, polls);
  EXPECT_FALSE(server_->poll_held());

  // Acknowledged: the agent asks for work again.
  server_->ack_ends = true;
  ASSERT_TRUE(eventually([&] { return server_->polls > polls && server_->poll_held(); }));
  for (const auto& a : tasks) EXPECT_TRUE(server_->acked(a));
  EXPECT_EQ(stop_agent(), 0);
}

}  // namespace
}  // namespace cardnode::runtime
