// Executor: one uv_process_t, two uv_pipe_t (stdout, stderr) and one uv_timer_t per
// running task. A task's life:
//   start: create group, open logs, spawn -> running (timer = timeout)
//   kill:  SIGTERM or SIGKILL to the tree (timer = grace, then SIGKILL)
//   exit:  kill the rest of the tree, destroy the group (timer = drain deadline)
//   both pipes at EOF (or deadline): close both logs
//   both logs closed, every handle closed: report on_exit, forget the task.
#include "runtime/exec/executor.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <map>

namespace cardnode::runtime {
namespace {

constexpr const char* kBasePath =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
constexpr size_t kReadBufferBytes = size_t{64} * 1024;

enum class TimerPhase : uint8_t { kTimeout, kGrace, kDrain };

pb::TaskState state_for(KillReason r) {
  switch (r) {
    case KillReason::kCancelled: return pb::TASK_CANCELLED;
    case KillReason::kTimedOut: return pb::TASK_TIMED_OUT;
    // A shutdown is not the task's fault: LOST makes the scheduler run it again.
    case KillReason::kShutdown: return pb::TASK_LOST;
  }
  return pb::TASK_CANCELLED;
}

// Direct-spawn mode only (no trampoline): joins the group after the fact.
void join_cgroup(const std::string& procs_path, int32_t pid) {
  int fd = ::open(procs_path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return;
  std::string s = std::to_string(pid);
  (void)!::write(fd, s.data(), s.size());
  ::close(fd);
}

}  // namespace

struct Executor::Impl {
  struct Task {
    Impl* impl = nullptr;
    uint64_t job_id = 0;
    uint32_t index = 0;
    std::string group;      // "JOB.INDEX"
    std::string key_entry;  // "CARDNODE_TASK_KEY=<pool>:JOB.INDEX", in the task's env
    storage::LogKey out_key;
    storage::LogKey err_key;
    Executor::ExitCallback on_exit;

    uv_process_t process{};
    uv_pipe_t out{};
    uv_pipe_t err{};
    uv_timer_t timer{};
    int32_t pid = 0;

    uint32_t handles_open = 0;  // initialised handles whose close callback has not run
    uint32_t pipes_open = 0;    // pipes not yet at EOF
    uint32_t log_closes_pending = 0;
    TimerPhase phase = TimerPhase::kTimeout;
    bool spawn_failed = false;  // owns itself until its handles are closed, then deletes itself
    bool exited = false;
    bool logs_closing = false;
    bool killed = false;
    bool oom = false;
    KillReason reason = KillReason::kCancelled;
    int64_t exit_status = 0;
    int term_signal = 0;
  };

  uv_loop_t* loop;
  storage::LogStore& logs;
  Isolation& isolation;
  ExecutorOptions options;
  std::map<std::pair<uint64_t, uint32_t>, std::unique_ptr<Task>> tasks;
  // libuv reads into this and read_cb consumes it before the next alloc: one suffices.
  char read_buf[kReadBufferBytes];

  Impl(uv_loop_t* l, storage::LogStore& lg, Isolation& iso, ExecutorOptions o)
      : loop(l), logs(lg), isolation(iso), options(std::move(o)) {}

  Result<int32_t> start(const TaskLaunch& launch, ExitCallback on_exit);
  Status spawn(Task& t, const TaskLaunch& launch, const std::vector<std::string>& procs);
  void kill(Task& t, KillReason reason);
  void signal_tree(Task& t, int sig);
  // Without cgroups: signals the task's processes that left its process group, found by
  // their environment tag. Bounded by kTaggedScanMax; a no-op under cgroups, which hold
  // the whole tree already.
  void kill_tagged(Task& t, int sig);
  void on_exited(Task& t);
  void step(Task* t);
  void finish(Task* t);

  static void close_handle(uv_handle_t* h);
  static void end_pipe(Task& t, uv_pipe_t* p);
  static void on_handle_closed(uv_handle_t* h);
  static void on_alloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
  static void on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf);
  static void on_exit_cb(uv_process_t* p, int64_t exit_status, int term_signal);
  static void on_timer(uv_timer_t* timer);
};

// ---- handles -----------------------------------------------------------------------

void Executor::Impl::close_handle(uv_handle_t* h) {
  if (!uv_is_closing(h)) uv_close(h, &Impl::on_handle_closed);
}

void Executor::Impl::end_pipe(Task& t, uv_pipe_t* p) {
  if (uv_is_closing(reinterpret_cast<uv_handle_t*>(p))) return;
  uv_close(reinterpret_cast<uv_handle_t*>(p), &Impl::on_handle_closed);
  --t.pipes_open;
}

void Executor::Impl::on_handle_closed(uv_handle_t* h) {
  Task* t = static_cast<Task*>(h->data);
  --t->handles_open;
  if (t->spawn_failed) {
    if (t->handles_open == 0) delete t;
    return;
  }
  t->impl->step(t);
}

void Executor::Impl::on_alloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
  Task* t = static_cast<Task*>(h->data);
  buf->base = t->impl->read_buf;
  buf->len = sizeof t->impl->read_buf;
}

void Executor::Impl::on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) {
  Task* t = static_cast<Task*>(s->data);
  bool is_out = s == reinterpret_cast<uv_stream_t*>(&t->out);
  if (nread > 0) {
    t->impl->logs.append(is_out ? t->out_key : t->err_key,
                         std::string_view(buf->base, static_cast<size_t>(nread)));
    return;
  }
  if (nread == 0) return;                    // EAGAIN
  end_pipe(*t, is_out ? &t->out : &t->err);  // EOF, or an error that ends the stream
  t->impl->step(t);
}

void Executor::Impl::on_exit_cb(uv_process_t* p, int64_t exit_status, int term_signal) {
  Task* t = static_cast<Task*>(p->data);
  t->exited = true;
  t->exit_status = exit_status;
  t->term_signal = term_signal;
  close_handle(reinterpret_cast<uv_handle_t*>(p));
  t->impl->on_exited(*t);
}

void Executor::Impl::on_timer(uv_timer_t* timer) {
  Task* t = static_cast<Task*>(timer->data);
  switch (t->phase) {
    case TimerPhase::kTimeout: t->impl->kill(*t, KillReason::kTimedOut); return;
    case TimerPhase::kGrace: t->impl->signal_tree(*t, SIGKILL); return;
    case TimerPhase::kDrain:
      // A writer escaped the kill (rlimit mode: it left the process group). Its output
      // from here on is lost; the task's report must not wait for it.
      end_pipe(*t, &t->out);
      end_pipe(*t, &t->err);
      t->impl->step(t);
      return;
  }
}

// ---- lifecycle ---------------------------------------------------------------------

Result<int32_t> Executor::Impl::start(const TaskLaunch& launch, ExitCallback on_exit) {
  auto key = std::make_pair(launch.job_id, launch.index);
  if (launch.argv.empty()) return fail(Errc::kInvalidArgument, "task has no command");
  if (tasks.contains(key)) return fail(Errc::kInvalidArgument, "task already running here");
  if (tasks.size() >= options.running_max) {
    return fail(Errc::kResourceExhausted, "running_max tasks already running");
  }
  auto t = std::make_unique<Task>();
  t->impl = this;
  t->job_id = launch.job_id;
  t->index = launch.index;
  t->group = std::to_string(launch.job_id) + "." + std::to_string(launch.index);
  t->key_entry = task_key_prefix(options.pool_tag) + t->group;
  t->out_key = {launch.job_id, launch.index, storage::Stream::kStdout};
  t->err_key = {launch.job_id, launch.index, storage::Stream::kStderr};
  t->on_exit = std::move(on_exit);

  auto procs = isolation.create_group(t->group, launch.limits);
  if (!procs) return std::unexpected(procs.error());
  Status opened = logs.open(t->out_key);
  if (opened) {
    opened = logs.open(t->err_key);
    if (!opened) logs.close(t->out_key, [](Status) {});
  }
  if (!opened) {
    isolation.destroy_group(t->group);
    return std::unexpected(opened.error());
  }
  if (Status st = spawn(*t, launch, *procs); !st) {
    logs.close(t->out_key, [](Status) {});
    logs.close(t->err_key, [](Status) {});
    isolation.destroy_group(t->group);
    t->spawn_failed = true;
    (void)t.release();  // deletes itself once libuv has closed its handles
    return std::unexpected(st.error());
  }
  int32_t pid = t->pid;
  tasks.emplace(key, std::move(t));
  return pid;
}

Status Executor::Impl::spawn(Task& t, const TaskLaunch& launch,
                             const std::vector<std::string>& procs) {
  bool trampoline = !options.task_exec_program.empty();
  std::vector<std::string> args;
  if (trampoline) {
    args = {options.task_exec_program, "__task-exec"};
    for (const std::string& p : procs) args.insert(args.end(), {"--cgroup-procs", p});
    if (isolation.memory_by_rlimit() && launch.limits.mem_bytes > 0) {
      args.insert(args.end(), {"--rlimit-as", std::to_string(launch.limits.mem_bytes)});
    }
    args.push_back("--");
  }
  args.insert(args.end(), launch.argv.begin(), launch.argv.end());

  const char* home = std::getenv("HOME");
  std::vector<std::pair<std::string, std::string>> env_kv = {
      {"HOME", home != nullptr ? home : "/"},
      {"CARDNODE_JOB_ID", std::to_string(launch.job_id)},
      {"CARDNODE_TASK_INDEX", std::to_string(launch.index)},
      {"CARDNODE_TASK_COUNT", std::to_string(launch.count)},
      {"CARDNODE_NODE", launch.node_name},
      {"CARDNODE_ATTEMPT", std::to_string(launch.attempt)},
  };
  std::vector<std::string> env = {kBasePath};
  for (const auto& [k, v] : env_kv) env.push_back(k + "=" + v);
  for (const auto& [k, v] : launch.env) {
    std::string prefix = k + "=";
    std::erase_if(env, [&](const std::string& e) { return e.starts_with(prefix); });
    env.push_back(prefix + v);  // the job's value wins over the base
  }
  std::erase_if(env, [](const std::string& e) { return e.starts_with("CARDNODE_TASK_KEY="); });
  env.push_back(t.key_entry);

  std::vector<char*> argp, envp;
  for (std::string& a : args) argp.push_back(a.data());
  argp.push_back(nullptr);
  for (std::string& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);

  uv_pipe_init(loop, &t.out, 0);
  uv_pipe_init(loop, &t.err, 0);
  uv_timer_init(loop, &t.timer);
  t.out.data = t.err.data = t.timer.data = &t;
  uv_stdio_container_t stdio[3];
  stdio[0].flags = UV_IGNORE;  // /dev/null
  stdio[1].flags = static_cast<uv_stdio_flags>(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
  stdio[1].data.stream = reinterpret_cast<uv_stream_t*>(&t.out);
  stdio[2].flags = static_cast<uv_stdio_flags>(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
  stdio[2].data.stream = reinterpret_cast<uv_stream_t*>(&t.err);
  uv_process_options_t opts{};
  opts.exit_cb = &Impl::on_exit_cb;
  opts.file = argp[0];
  opts.args = argp.data();
  opts.env = envp.data();
  opts.cwd = launch.cwd.empty() ? nullptr : launch.cwd.c_str();
  // A new session: the task's process group is its pid, so kill(-pid) reaches the
  // tree even without cgroups.
  opts.flags = UV_PROCESS_DETACHED;
  opts.stdio_count = 3;
  opts.stdio = stdio;
  int rc = uv_spawn(loop, &t.process, &opts);
  t.handles_open = 4;  // uv_spawn initialises the process handle even when it fails
  t.process.data = &t;
  if (rc != 0) {
    close_handle(reinterpret_cast<uv_handle_t*>(&t.process));
    close_handle(reinterpret_cast<uv_handle_t*>(&t.out));
    close_handle(reinterpret_cast<uv_handle_t*>(&t.err));
    close_handle(reinterpret_cast<uv_handle_t*>(&t.timer));
    return fail_errno(-rc, "spawn " + std::string(argp[0]));
  }
  t.pid = t.process.pid;
  // Without the trampoline a fork before this line escapes the group (documented).
  if (!trampoline) {
    for (const std::string& p : procs) join_cgroup(p, t.pid);
  }
  t.pipes_open = 2;
  for (uv_pipe_t* p : {&t.out, &t.err}) {
    if (uv_read_start(reinterpret_cast<uv_stream_t*>(p), &Impl::on_alloc, &Impl::on_read) != 0) {
      end_pipe(t, p);
    }
  }
  if (launch.timeout_ms > 0) {
    t.phase = TimerPhase::kTimeout;
    uv_timer_start(&t.timer, &Impl::on_timer, launch.timeout_ms, 0);
  }
  return {};
}

void Executor::Impl::kill_tagged(Task& t, int sig) {
  if (isolation.info().mode != IsolationMode::kRlimit) return;
  constexpr uint32_t kTaggedScanMax = 4096;
  for (int32_t pid : pids_with_env(t.key_entry, /*prefix=*/false, kTaggedScanMax)) ::kill(pid, sig);
}

void Executor::Impl::signal_tree(Task& t, int sig) {
  if (t.pid > 0) ::kill(-t.pid, sig);
  // SIGTERM goes to the process group only, as a terminal sends it: through the cgroup
  // or the tag as well, every member of both would get it twice and run its trap twice.
  // Processes that left the group (setsid) get the SIGKILL at the end of the grace.
  if (sig == SIGTERM) return;
  isolation.signal_group(t.group, sig);
  kill_tagged(t, sig);
}

void Executor::Impl::kill(Task& t, KillReason reason) {
  if (t.exited || t.killed) return;  // the first reason is the one reported
  t.killed = true;
  t.reason = reason;
  if (options.kill_grace_ms == 0) {
    signal_tree(t, SIGKILL);
    uv_timer_stop(&t.timer);
    return;
  }
  signal_tree(t, SIGTERM);
  t.phase = TimerPhase::kGrace;
  uv_timer_start(&t.timer, &Impl::on_timer, options.kill_grace_ms, 0);
}

void Executor::Impl::on_exited(Task& t) {
  // The main process is gone; nothing else of the task may stay. The group must be
  // read for OOM before it is destroyed. An OOM kill counts only if the task did not
  // succeed: a shell that survives its child's OOM and exits 0 has succeeded.
  ::kill(-t.pid, SIGKILL);
  kill_tagged(t, SIGKILL);
  bool failed = t.term_signal != 0 || t.exit_status != 0;
  t.oom = failed && isolation.oom_killed(t.group);
  isolation.destroy_group(t.group);
  t.phase = TimerPhase::kDrain;
  uv_timer_start(&t.timer, &Impl::on_timer, options.drain_ms, 0);
  step(&t);
}

// Advances a task that has exited towards its report. Safe to call at any time.
void Executor::Impl::step(Task* t) {
  if (!t->exited || t->pipes_open > 0) return;
  if (!t->logs_closing) {
    t->logs_closing = true;
    // The timer's close callback runs on a later loop turn, so handles_open > 0 until
    // then: finish() cannot run from inside a synchronous close `done` below.
    close_handle(reinterpret_cast<uv_handle_t*>(&t->timer));
    t->log_closes_pending = 2;
    auto done = [this, t](Status) {
      --t->log_closes_pending;  // a log write error loses output, not the task's result
      step(t);
    };
    logs.close(t->out_key, done);
    logs.close(t->err_key, done);
    return;
  }
  if (t->log_closes_pending > 0 || t->handles_open > 0) return;
  finish(t);
}

void Executor::Impl::finish(Task* t) {
  TaskExit e;
  e.signal = t->term_signal;
  e.exit_code = t->term_signal != 0 ? 0 : static_cast<int32_t>(t->exit_status);
  if (t->killed) {
    e.state = state_for(t->reason);
    e.requeue_free = t->reason == KillReason::kShutdown;
  } else if (t->oom) {
    e.state = pb::TASK_OOM_KILLED;
  } else if (t->term_signal == 0 && t->exit_status == 0) {
    e.state = pb::TASK_SUCCEEDED;
  } else {
    e.state = pb::TASK_FAILED;
  }
  ExitCallback cb = std::move(t->on_exit);
  tasks.erase(std::make_pair(t->job_id, t->index));  // before cb: it may start a retry
  if (cb) cb(e);
}

// ---- Executor ----------------------------------------------------------------------

Executor::Executor(uv_loop_t* loop, storage::LogStore& logs, Isolation& isolation,
                   ExecutorOptions options)
    : impl_(std::make_unique<Impl>(loop, logs, isolation, std::move(options))) {}

Executor::~Executor() {
  CARDNODE_CHECK(impl_->tasks.empty());
}

Result<int32_t> Executor::start(const TaskLaunch& launch, ExitCallback on_exit) {
  return impl_->start(launch, std::move(on_exit));
}

void Executor::kill(uint64_t job_id, uint32_t index, KillReason reason) {
  auto it = impl_->tasks.find(std::make_pair(job_id, index));
  if (it != impl_->tasks.end()) impl_->kill(*it->second, reason);
}

void Executor::kill_all() {
  for (auto& [key, t] : impl_->tasks) impl_->kill(*t, KillReason::kShutdown);
}

uint32_t Executor::running() const {
  return static_cast<uint32_t>(impl_->tasks.size());
}

std::string task_key_prefix(const std::string& pool_tag) {
  return "CARDNODE_TASK_KEY=" + pool_tag + ":";
}

}  // namespace cardnode::runtime
