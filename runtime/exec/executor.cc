// Executor: per running task two uv_pipe_t (stdout, stderr), one uv_poll_t on the
// pidfd and one uv_timer_t. A task's life:
//   start: create group, open logs, spawn (spawn.h) -> running (timer = timeout)
//   kill:  SIGTERM or SIGKILL to the tree (timer = grace, then SIGKILL)
//   exit:  pidfd readable -> wait4; kill the rest of the tree; read the group's usage;
//          remove the group, retried by the timer until it is empty (never a sleep)
//   both pipes at EOF (or the drain deadline): close both logs
//   group gone, logs closed, every handle closed: report on_exit, forget the task.
#include "runtime/exec/executor.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <deque>
#include <map>
#include <set>

#include "runtime/exec/spawn_worker.h"

namespace cardnode::runtime {
namespace {

constexpr const char* kBasePath =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
constexpr size_t kReadBufferBytes = size_t{64} * 1024;
// One read may pass the log queue's bound by its grant and no more (storage/log_store.h).
static_assert(kReadBufferBytes <= storage::LogStore::kAppendGrantBytes);
// After the exit, the group's removal is retried this often while processes remain
// (SIGKILL is delivered asynchronously), and less often once that has taken a while
// (a process in uninterruptible sleep: the task stays running until it is gone).
constexpr uint64_t kReapRetryMs = 2;
constexpr uint64_t kReapRetrySlowMs = 100;
constexpr uint64_t kReapFastForMs = 1000;

// The loop's share of starting a task (its pipes, logs and environment; the group and the
// clone are the spawn worker's) and of ending one (reap, usage, cgroup removal): at most
// this much of that work per loop turn, so a burst (a 1,000-task array placed at once, or
// ending at once) is spread over turns and requests are answered between them.
constexpr uint64_t kWorkBudgetNs = 2'000'000;
constexpr uint64_t kOutputLostWarnEveryMs = 10'000;

enum class TimerPhase : uint8_t { kTimeout, kGrace, kAfterExit };

pb::TaskState state_for(KillReason r) {
  switch (r) {
    case KillReason::kCancelled: return pb::TASK_CANCELLED;
    case KillReason::kTimedOut: return pb::TASK_TIMED_OUT;
    // A shutdown is not the task's fault: LOST makes the scheduler run it again.
    case KillReason::kShutdown: return pb::TASK_LOST;
  }
  return pb::TASK_CANCELLED;
}

uint64_t micros(const struct timeval& tv) {
  return static_cast<uint64_t>(tv.tv_sec) * 1000000u + static_cast<uint64_t>(tv.tv_usec);
}

void close_fd(int* fd) {
  if (*fd >= 0) ::close(*fd);
  *fd = -1;
}

// On the spawn worker: the task's group, and a descriptor on each of its cgroup.procs for
// the child to join through. Isolation is read-only after construction, so this may run
// beside the loop thread's calls on other groups.
Status join_fds(Isolation& isolation, const std::string& group, const TaskLimits& limits,
                SpawnRequest& r) {
  auto procs = isolation.create_group(group, limits);
  if (!procs) return std::unexpected(procs.error());
  for (const std::string& p : *procs) {
    // Above 0..2 like the pipes: the child's dup2 onto 0..2 must not replace it.
    int fd = above_stdio(::open(p.c_str(), O_WRONLY | O_CLOEXEC));
    if (fd < 0) {
      const int e = errno;
      return fail_errno(e, "open " + p);  // the worker closes those already opened
    }
    r.cgroup_procs_fds.push_back(fd);
  }
  return {};
}

uint32_t spawn_threads(uint32_t asked) {
  if (asked > 0) return asked;
  // One per CPU: each clone waits for its child's execve, and the children run in parallel.
  // Capped: past the CPUs more threads only queue on them.
  constexpr uint32_t kMax = 8;
  const long cpus = ::sysconf(_SC_NPROCESSORS_ONLN);
  return cpus < 1 ? 1 : std::min(static_cast<uint32_t>(cpus), kMax);
}

}  // namespace

struct Executor::Impl {
  struct Task {
    Impl* impl = nullptr;
    uint64_t job_id = 0;
    uint32_t index = 0;
    std::string group;      // "JOB.INDEX"
    TaskLimits limits;      // what its group enforces
    std::string key_entry;  // "CARDNODE_TASK_KEY=<pool>:JOB.INDEX", in the task's env
    storage::LogKey out_key;
    storage::LogKey err_key;
    Executor::ExitCallback on_exit;

    uv_pipe_t out{};
    uv_pipe_t err{};
    uv_poll_t exit_poll{};  // on the pidfd; not initialised without one
    uv_timer_t timer{};
    int32_t pid = 0;
    int pidfd = -1;

    uint32_t handles_open = 0;  // initialised handles whose close callback has not run
    uint32_t pipes_open = 0;    // pipes not yet at EOF
    bool out_paused = false;    // not read until the log queue has room (backpressure)
    bool err_paused = false;
    uint32_t log_closes_pending = 0;
    TimerPhase phase = TimerPhase::kTimeout;
    bool exited = false;
    bool group_gone = false;
    bool logs_closing = false;
    bool killed = false;
    bool oom = false;
    KillReason reason = KillReason::kCancelled;
    int64_t exit_status = 0;
    int term_signal = 0;
    uint64_t exited_at_ms = 0;
    uint64_t spawned_ns = 0;  // uv_hrtime() just before the spawn: the wall time's start
    // The drain deadline counts from the exit or from the last resume of a pipe paused for
    // backpressure, whichever is later: what waits in a paused pipe is ours to read.
    uint64_t drain_from_ms = 0;
    TaskUsage usage;
    // Set while the start waits for its turn (work budget); its timer is initialised.
    struct Pending {
      TaskLaunch launch;
      TaskCredentials creds;
    };
    std::unique_ptr<Pending> pending;
    // Set while the spawn worker makes its group and process (pid still 0). The pipes'
    // write ends, which the child borrows, stay open until then.
    bool spawning = false;
    uint64_t spawn_tag = 0;
    int out_read = -1;
    int err_read = -1;
    int out_write = -1;
    int err_write = -1;
    uint64_t timeout_ms = 0;
    // Held (start_held) until release(): the spawn gets a socket's end to wait on, and
    // go_fd, the other end, is ours until the release sends on it or a kill closes it.
    bool held = false;
    int go_fd = -1;
    std::shared_ptr<HeldSpawn> hold;  // shared with the spawn request
    bool drop = false;                // runs as an unprivileged user (the dumpable window)
    bool withdrawn = false;           // killed while held: nothing ran
    uint64_t released_ns = 0;         // uv_hrtime() at the release: its run starts here
  };

  // Loop handles of the spawn pacing; heap-allocated as SigchldWatch below.
  struct Pacer {
    uv_idle_t idle{};        // active while spawns wait: drains them, a budget per turn
    uv_prepare_t prepare{};  // each turn: a fresh budget for spawns made in callbacks
    int closing = 0;
  };
  Pacer* pacer = nullptr;
  uint64_t work_ns_this_turn = 0;
  // warn_output_lost's rate limit.
  bool output_lost_warned = false;
  uint64_t output_lost_warned_ms = 0;
  uint64_t output_lost_unwarned = 0;
  std::deque<std::pair<uint64_t, uint32_t>> spawn_queue;  // may hold killed tasks' keys
  std::deque<std::pair<uint64_t, uint32_t>> exit_queue;   // exited, not yet reaped

  uv_loop_t* loop;
  storage::LogStore& logs;
  Isolation& isolation;
  ExecutorOptions options;
  std::map<std::pair<uint64_t, uint32_t>, std::unique_ptr<Task>> tasks;
  // The clones run there, so the loop never waits for a child's execve.
  std::unique_ptr<SpawnWorker> worker;
  std::map<uint64_t, std::pair<uint64_t, uint32_t>> spawning;  // worker tag -> task
  uint64_t next_spawn_tag = 1;
  // Only when a spawn got no pidfd (Linux < 5.3). Heap-allocated: its handles may still
  // be closing when the Executor is gone.
  struct SigchldWatch {
    uv_signal_t signal{};
    uv_timer_t sweep{};  // a safety net: signals coalesce, and qemu-user has lost some
    int closing = 0;
  };
  SigchldWatch* sigchld = nullptr;
  void reap_without_pidfds();
  // Rlimit mode: PR_SET_CHILD_SUBREAPER is set, so a task's orphans become our children
  // (found cheaply; see kill_tagged). task_pids: the running tasks' own pids.
  bool subreaper = false;
  std::set<int32_t> task_pids;
  // libuv reads into this and read_cb consumes it before the next alloc: one suffices.
  char read_buf[kReadBufferBytes];

  Impl(uv_loop_t* l, storage::LogStore& lg, Isolation& iso, ExecutorOptions o)
      : loop(l), logs(lg), isolation(iso), options(std::move(o)) {
    worker = std::make_unique<SpawnWorker>(
        loop, options.pidfd,
        [this](uint64_t tag, Result<Spawned> r) { on_spawned(tag, std::move(r)); },
        spawn_threads(options.spawn_threads));
    pacer = new Pacer;
    uv_idle_init(loop, &pacer->idle);
    uv_prepare_init(loop, &pacer->prepare);
    pacer->idle.data = pacer->prepare.data = this;
    uv_prepare_start(&pacer->prepare,
                     [](uv_prepare_t* h) { static_cast<Impl*>(h->data)->work_ns_this_turn = 0; });
    uv_unref(reinterpret_cast<uv_handle_t*>(&pacer->prepare));
    // Process-wide and never undone: the owner runs one Executor per process.
    // /proc/PID/task/TID/children needs CONFIG_PROC_CHILDREN: without it, the /proc scan.
    const std::string children = "/proc/self/task/" + std::to_string(::gettid()) + "/children";
    subreaper = isolation.info().mode == IsolationMode::kRlimit &&
                ::access(children.c_str(), R_OK) == 0 &&
                ::prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0;
  }

  Status start(const TaskLaunch& launch, ExitCallback on_exit, bool held);
  // Only on an idle board: there the spawn's work would otherwise wait for the fdatasync
  // on CPUs with nothing else to do. With tasks running (an array, a burst) a hold saves
  // little and costs a wake-up more per task, and a held clone keeps its spawn thread
  // until the release (docs/PERFORMANCE.md, "A spawn thread per CPU, and held starts").
  bool can_hold_now() const { return Spawner::can_hold() && tasks.empty(); }
  void release(Task& t);
  // The task's logs, then its start queued on a spawn thread (which makes its group and
  // process). On failure nothing is left behind (no open log, no handle).
  Status launch_now(Task& t, const TaskLaunch& launch, const TaskCredentials& creds);
  void drain_queues();
  void start_pacer();
  // A task that never got (or never will get) a process: ends like an exited one.
  void end_without_process(Task& t, int status);
  // Prepares the request (pipes, environment) and hands it to the worker, which makes the
  // group and the clone; the process exists once on_spawned() has run.
  Status spawn(Task& t, const TaskLaunch& launch, const TaskCredentials& creds);
  void on_spawned(uint64_t tag, Result<Spawned> spawned);
  // The loop's half of a spawn: the handles on the new process, or its failure.
  Status adopt(Task& t, Result<Spawned> spawned);
  // The signals of a kill (SIGKILL, or SIGTERM and the grace timer).
  void send_kill(Task& t);
  std::vector<std::string> environment(const Task& t, const TaskLaunch& launch,
                                       const TaskCredentials& creds) const;
  void watch_sigchld();
  void try_reap(Task& t);
  void kill(Task& t, KillReason reason);
  void signal_tree(Task& t, int sig);
  // Without cgroups: signals the task's processes that left its process group, found by
  // their environment tag. Bounded by kTaggedScanMax; a no-op under cgroups, which hold
  // the whole tree already.
  // Returns how many it signalled.
  // Signals what carries t's tag; `unsure` (subreaper only) counts orphans whose
  // environment could not be read yet, in the first kReapFastForMs after t's exit.
  uint32_t kill_tagged(Task& t, int sig, uint32_t* unsure = nullptr);
  void on_exited(Task& t, int status, const struct rusage& ru);
  // One round of ending what is left of an exited task: its group (cgroups), or its
  // adopted orphans (rlimit mode as subreaper). True once nothing is left.
  bool tree_gone(Task& t) {
    bool gone = isolation.reap_group(t.group);
    uint32_t unsure = 0;
    if (subreaper && kill_tagged(t, SIGKILL, &unsure) + unsure > 0) gone = false;
    return gone;
  }
  void after_exit_tick(Task& t);
  void schedule_after_exit(Task& t);
  void step(Task* t);
  void warn_output_lost(const Task& t, const Error& e);
  void finish(Task* t);

  static void close_handle(uv_handle_t* h);
  static void end_pipe(Task& t, uv_pipe_t* p);
  static void on_handle_closed(uv_handle_t* h);
  static void on_alloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
  static void on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf);
  void pause(Task& t, bool is_out);
  static bool all_open_pipes_paused(Task& t);
  static void on_exit_poll(uv_poll_t* p, int status, int events);
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
    if (!t->impl->logs.has_room()) t->impl->pause(*t, is_out);
    return;
  }
  if (nread == 0) return;                    // EAGAIN
  end_pipe(*t, is_out ? &t->out : &t->err);  // EOF, or an error that ends the stream
  t->impl->step(t);
}

// Stops reading one pipe until the log queue drains: the task then blocks on a full pipe
// instead of its output being dropped. The waiter is dropped with the log (a task closes
// its logs before it is freed), so `t` is alive whenever it runs.
void Executor::Impl::pause(Task& t, bool is_out) {
  uv_pipe_t* p = is_out ? &t.out : &t.err;
  bool& paused = is_out ? t.out_paused : t.err_paused;
  if (paused) return;
  paused = true;
  uv_read_stop(reinterpret_cast<uv_stream_t*>(p));
  Task* tp = &t;
  Status waiting = logs.when_room(is_out ? t.out_key : t.err_key, [this, tp, p, is_out] {
    (is_out ? tp->out_paused : tp->err_paused) = false;
    tp->drain_from_ms = uv_now(loop);
    if (uv_is_closing(reinterpret_cast<uv_handle_t*>(p))) return;
    if (uv_read_start(reinterpret_cast<uv_stream_t*>(p), &Impl::on_alloc, &Impl::on_read) != 0) {
      end_pipe(*tp, p);
      step(tp);
      return;
    }
    if (tp->exited) schedule_after_exit(*tp);
  });
  if (!waiting && paused) {
    // Not waitable (the log is closing): read on; append() drops and marks what it must.
    paused = false;
    uv_read_start(reinterpret_cast<uv_stream_t*>(p), &Impl::on_alloc, &Impl::on_read);
  }
}

bool Executor::Impl::all_open_pipes_paused(Task& t) {
  bool out_open = !uv_is_closing(reinterpret_cast<uv_handle_t*>(&t.out));
  bool err_open = !uv_is_closing(reinterpret_cast<uv_handle_t*>(&t.err));
  return (!out_open || t.out_paused) && (!err_open || t.err_paused);
}

void Executor::Impl::on_exit_poll(uv_poll_t* p, int, int) {
  Task* t = static_cast<Task*>(p->data);
  Impl* impl = t->impl;
  if (impl->exit_queue.empty() && impl->work_ns_this_turn < kWorkBudgetNs) {
    uint64_t t0 = uv_hrtime();
    impl->try_reap(*t);
    impl->work_ns_this_turn += uv_hrtime() - t0;
    return;
  }
  uv_poll_stop(p);  // level-triggered: it would fire every turn until reaped
  impl->exit_queue.emplace_back(t->job_id, t->index);
  impl->start_pacer();
}

void Executor::Impl::on_timer(uv_timer_t* timer) {
  Task* t = static_cast<Task*>(timer->data);
  switch (t->phase) {
    case TimerPhase::kTimeout: t->impl->kill(*t, KillReason::kTimedOut); return;
    case TimerPhase::kGrace: t->impl->signal_tree(*t, SIGKILL); return;
    case TimerPhase::kAfterExit: t->impl->after_exit_tick(*t); return;
  }
}

// ---- exits -------------------------------------------------------------------------

// One wait4 for one task: O(1) per exit with a pidfd.
void Executor::Impl::try_reap(Task& t) {
  if (t.exited || t.pid <= 0) return;  // wait4(0) would reap any child of ours
  int status = 0;
  struct rusage ru {};
  pid_t r = -1;
  do {
    r = ::wait4(t.pid, &status, WNOHANG, &ru);
  } while (r < 0 && errno == EINTR);
  if (r == 0) {  // not yet (a spurious wake-up, or a queued exit that was not one)
    if (t.pidfd >= 0) uv_poll_start(&t.exit_poll, UV_READABLE, &Impl::on_exit_poll);
    return;
  }
  if (r < 0) {
    // ECHILD: someone else reaped it (a SIG_IGN'd SIGCHLD in an embedding program). The
    // status is lost; the task cannot be called a success.
    status = 127 << 8;
  }
  task_pids.erase(t.pid);
  if (t.pidfd >= 0) {
    uv_poll_stop(&t.exit_poll);
    close_fd(&t.pidfd);
    close_handle(reinterpret_cast<uv_handle_t*>(&t.exit_poll));
  }
  on_exited(t, status, ru);
}

// The fallback for kernels without pidfds: every SIGCHLD (and, as a safety net, every
// kSigchldSweepMs) tries each task without one: O(running tasks) per exit, as libuv does.
void Executor::Impl::reap_without_pidfds() {
  std::vector<std::pair<uint64_t, uint32_t>> waiting;
  for (const auto& [key, t] : tasks) {
    if (t->pidfd < 0 && !t->exited && t->pid > 0) waiting.push_back(key);
  }
  for (const auto& key : waiting) {  // a report may start or end other tasks
    auto it = tasks.find(key);
    if (it != tasks.end()) try_reap(*it->second);
  }
}

void Executor::Impl::watch_sigchld() {
  constexpr uint64_t kSigchldSweepMs = 100;
  if (sigchld != nullptr) return;
  sigchld = new SigchldWatch;
  uv_signal_init(loop, &sigchld->signal);
  uv_timer_init(loop, &sigchld->sweep);
  sigchld->signal.data = sigchld->sweep.data = this;
  uv_signal_start(
      &sigchld->signal,
      [](uv_signal_t* h, int) { static_cast<Impl*>(h->data)->reap_without_pidfds(); }, SIGCHLD);
  uv_timer_start(
      &sigchld->sweep, [](uv_timer_t* h) { static_cast<Impl*>(h->data)->reap_without_pidfds(); },
      kSigchldSweepMs, kSigchldSweepMs);
  // Nothing to wait for when no task runs: the timer must not keep a loop alive.
  uv_unref(reinterpret_cast<uv_handle_t*>(&sigchld->sweep));
}

void Executor::Impl::on_exited(Task& t, int status, const struct rusage& ru) {
  // Reaped now: uv_hrtime, not the loop's cached uv_now, which may be a turn behind.
  // A held task's run starts at its release, not at the clone that waited for it.
  t.usage.wall_us = (uv_hrtime() - std::max(t.spawned_ns, t.released_ns)) / 1000;
  t.exited = true;
  // Withdrawn while held, its child exits 127 having run nothing: an exit of no command.
  t.exit_status = WIFEXITED(status) && !t.withdrawn ? WEXITSTATUS(status) : 0;
  t.term_signal = WIFSIGNALED(status) && !t.withdrawn ? WTERMSIG(status) : 0;
  t.exited_at_ms = uv_now(loop);
  // The main process is gone; nothing else of the task may stay. The group must be
  // read for OOM and usage before it is removed. An OOM kill counts only if the task did
  // not succeed: a shell that survives its child's OOM and exits 0 has succeeded, and
  // its stderr log says what happened.
  ::kill(-t.pid, SIGKILL);
  if (!subreaper) kill_tagged(t, SIGKILL);  // as subreaper: in tree_gone() below
  bool failed = t.term_signal != 0 || t.exit_status != 0;
  GroupUsage g = isolation.usage(t.group);
  // The OOM killer acts only at the limit: a task that succeeded with its peak well below
  // it (the usual case) costs no read of the OOM counter.
  const uint64_t mem_limit = t.limits.mem_bytes;
  const bool near_limit =
      !g.has_mem || mem_limit == 0 || g.mem_peak_bytes >= mem_limit - mem_limit / 8;
  const bool oom_in_group = (failed || near_limit) && isolation.oom_killed(t.group);
  t.oom = failed && oom_in_group;
  if (!failed && oom_in_group) {
    // Succeeded all the same (Slurm would say OUT_OF_MEMORY), but not without a word.
    logs.append(t.err_key,
                "\n[cardnode: the memory limit killed a process of this task; it exited 0]\n");
  }
  t.usage.cpu_user_us = g.has_cpu ? g.cpu_user_us : micros(ru.ru_utime);
  t.usage.cpu_system_us = g.has_cpu ? g.cpu_system_us : micros(ru.ru_stime);
  t.usage.mem_peak_bytes =
      g.has_mem ? g.mem_peak_bytes : static_cast<uint64_t>(ru.ru_maxrss) * 1024u;
  // The group of a task that ended well is kept for the next one with the same limits
  // when it is already empty (v1; see Isolation): two renames instead of a mkdir and an
  // rmdir per hierarchy. Not after a task that ran as root: it could have moved its
  // processes between hierarchies, made child groups or rewritten its limits. Anything
  // else is torn down as usual.
  t.group_gone = (!failed && !oom_in_group && !t.killed && !t.withdrawn && t.drop &&
                  isolation.recycle_group(t.group, t.limits)) ||
                 tree_gone(t);
  t.phase = TimerPhase::kAfterExit;
  schedule_after_exit(t);
  step(&t);
}

void Executor::Impl::schedule_after_exit(Task& t) {
  uint64_t now = uv_now(loop);
  uint64_t since = now - t.exited_at_ms;
  uint64_t draining = now - std::max(t.exited_at_ms, t.drain_from_ms);
  if (!t.group_gone) {
    uv_timer_start(&t.timer, &Impl::on_timer,
                   since < kReapFastForMs ? kReapRetryMs : kReapRetrySlowMs, 0);
  } else if (t.pipes_open > 0 && !all_open_pipes_paused(t)) {
    // A paused pipe holds our own backlog, not an escaped writer: its deadline waits.
    uint64_t left = draining < options.drain_ms ? options.drain_ms - draining : 0;
    uv_timer_start(&t.timer, &Impl::on_timer, left, 0);
  } else {
    uv_timer_stop(&t.timer);
  }
}

void Executor::Impl::after_exit_tick(Task& t) {
  if (!t.group_gone) t.group_gone = tree_gone(t);
  if (t.pipes_open > 0 &&
      uv_now(loop) - std::max(t.exited_at_ms, t.drain_from_ms) >= options.drain_ms) {
    // A writer escaped the kill (rlimit mode: it left the process group). Its output
    // from here on is lost; the task's report must not wait for it. A pipe paused for
    // backpressure is read to its end first.
    if (!t.out_paused) end_pipe(t, &t.out);
    if (!t.err_paused) end_pipe(t, &t.err);
  }
  schedule_after_exit(t);
  step(&t);
}

// ---- lifecycle ---------------------------------------------------------------------

Status Executor::Impl::start(const TaskLaunch& launch, ExitCallback on_exit, bool held) {
  if (held && !Spawner::can_hold()) {
    return fail(Errc::kUnavailable, "this kernel cannot hold a spawn (no close_range)");
  }
  if (held && !can_hold_now()) return fail(Errc::kUnavailable, "not holding: tasks run here");
  auto key = std::make_pair(launch.job_id, launch.index);
  if (launch.argv.empty()) return fail(Errc::kInvalidArgument, "task has no command");
  if (tasks.contains(key)) return fail(Errc::kInvalidArgument, "task already running here");
  if (tasks.size() >= options.running_max) {
    return fail(Errc::kResourceExhausted, "running_max tasks already running");
  }
  auto creds = options.users.for_job(launch.user);
  if (!creds) return std::unexpected(creds.error());
  auto t = std::make_unique<Task>();
  t->impl = this;
  t->job_id = launch.job_id;
  t->index = launch.index;
  t->group = std::to_string(launch.job_id) + "." + std::to_string(launch.index);
  t->limits = launch.limits;
  t->key_entry = task_key_prefix(options.pool_tag) + t->group;
  t->out_key = {launch.job_id, launch.index, storage::Stream::kStdout};
  t->err_key = {launch.job_id, launch.index, storage::Stream::kStderr};
  t->on_exit = std::move(on_exit);
  t->held = held;

  if (!spawn_queue.empty() || work_ns_this_turn >= kWorkBudgetNs) {
    // Its turn comes in a later loop turn (drain_queues); the timer keeps the task's end on
    // the usual path (step, close callbacks) whatever happens before.
    uv_timer_init(loop, &t->timer);
    t->timer.data = t.get();
    t->handles_open = 1;
    t->pending = std::make_unique<Task::Pending>(Task::Pending{launch, *creds});
    spawn_queue.push_back(key);
    start_pacer();
    tasks.emplace(key, std::move(t));
    return {};
  }
  uint64_t t0 = uv_hrtime();
  Status st = launch_now(*t, launch, *creds);
  work_ns_this_turn += uv_hrtime() - t0;
  if (!st) return st;
  tasks.emplace(key, std::move(t));
  return {};
}

Status Executor::Impl::launch_now(Task& t, const TaskLaunch& launch, const TaskCredentials& creds) {
  Status opened = logs.open(t.out_key);
  if (opened) {
    opened = logs.open(t.err_key);
    if (!opened) logs.close(t.out_key, [](Status) {});
  }
  if (!opened) return std::unexpected(opened.error());
  if (Status st = spawn(t, launch, creds); !st) {
    logs.close(t.out_key, [](Status) {});
    logs.close(t.err_key, [](Status) {});
    return st;
  }
  return {};
}

void Executor::Impl::start_pacer() {
  uv_idle_start(&pacer->idle, [](uv_idle_t* h) { static_cast<Impl*>(h->data)->drain_queues(); });
}

// Exits first (they free capacity and finish reports), then starts, each within the budget.
void Executor::Impl::drain_queues() {
  work_ns_this_turn = 0;
  uint64_t t0 = uv_hrtime();
  while (!exit_queue.empty() && uv_hrtime() - t0 < kWorkBudgetNs) {
    auto it = tasks.find(exit_queue.front());
    exit_queue.pop_front();
    if (it != tasks.end()) try_reap(*it->second);
  }
  while (!spawn_queue.empty() && uv_hrtime() - t0 < kWorkBudgetNs) {
    auto it = tasks.find(spawn_queue.front());
    spawn_queue.pop_front();
    if (it == tasks.end() || !it->second->pending) continue;  // killed while it waited
    Task& t = *it->second;
    std::unique_ptr<Task::Pending> p = std::move(t.pending);
    if (Status st = launch_now(t, p->launch, p->creds); !st) {
      // Too late to refuse the start: the attempt fails, and its log says why.
      if (logs.open(t.err_key)) {
        logs.append(t.err_key, "cardnode: cannot start task: " + st.error().describe() + "\n");
      }
      end_without_process(t, 127 << 8);
    }
  }
  work_ns_this_turn = uv_hrtime() - t0;
  if (exit_queue.empty() && spawn_queue.empty()) uv_idle_stop(&pacer->idle);
}

void Executor::Impl::end_without_process(Task& t, int status) {
  t.exited = true;
  t.exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : 0;
  t.exited_at_ms = uv_now(loop);
  t.group_gone = tree_gone(t);
  t.phase = TimerPhase::kAfterExit;
  schedule_after_exit(t);
  step(&t);
}

std::vector<std::string> Executor::Impl::environment(const Task& t, const TaskLaunch& launch,
                                                     const TaskCredentials& creds) const {
  std::string home = creds.home;
  if (!creds.drop) {
    const char* own = std::getenv("HOME");  // NOLINT(concurrency-mt-unsafe): loop thread
    home = own != nullptr ? own : "/";
  }
  std::vector<std::pair<std::string, std::string>> env_kv = {
      {"HOME", home},
      {"CARDNODE_JOB_ID", std::to_string(launch.job_id)},
      {"CARDNODE_TASK_INDEX", std::to_string(launch.index)},
      {"CARDNODE_TASK_COUNT", std::to_string(launch.count)},
      {"CARDNODE_NODE", launch.node_name},
      {"CARDNODE_ATTEMPT", std::to_string(launch.attempt)},
  };
  if (!creds.name.empty()) {
    env_kv.emplace_back("USER", creds.name);
    env_kv.emplace_back("LOGNAME", creds.name);
  }
  std::vector<std::string> env = {kBasePath};
  for (const auto& [k, v] : env_kv) env.push_back(k + "=" + v);
  for (const auto& [k, v] : launch.env) {
    std::string prefix = k + "=";
    std::erase_if(env, [&](const std::string& e) { return e.starts_with(prefix); });
    env.push_back(prefix + v);  // the job's value wins over the base
  }
  std::erase_if(env, [](const std::string& e) { return e.starts_with("CARDNODE_TASK_KEY="); });
  env.push_back(t.key_entry);
  return env;
}

Status Executor::Impl::spawn(Task& t, const TaskLaunch& launch, const TaskCredentials& creds) {
  SpawnRequest req;
  req.argv = launch.argv;
  req.env = environment(t, launch, creds);
  req.cwd = launch.cwd;
  req.fallback_cwd = options.fallback_cwd;
  req.creds = creds;
  if (isolation.memory_by_rlimit()) req.rlimit_as_bytes = launch.limits.mem_bytes;

  int out[2] = {-1, -1};
  int err[2] = {-1, -1};
  auto close_all = [&] {
    for (int* fd : {&out[0], &out[1], &err[0], &err[1]}) close_fd(fd);
  };
  if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) {
    int e = errno;
    close_all();
    return fail_errno(e, "pipe for task output");
  }
  for (int* fd : {&out[0], &out[1], &err[0], &err[1]}) *fd = above_stdio(*fd);
  req.stdout_fd = out[1];
  req.stderr_fd = err[1];
  if (out[1] < 0 || err[1] < 0) {
    close_all();
    return fail(Errc::kIo, "no descriptor for task output");
  }
  int go[2] = {-1, -1};  // [0] the child waits on (the worker's once submitted), [1] ours
  if (t.held) {
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, go) != 0) {
      int e = errno;
      close_all();
      return fail_errno(e, "socketpair to hold the task");
    }
    for (int& fd : go) fd = above_stdio(fd);
    if (go[0] < 0 || go[1] < 0) {
      close_fd(&go[0]);
      close_fd(&go[1]);
      close_all();
      return fail(Errc::kIo, "no descriptor to hold the task");
    }
    req.hold_fd = go[0];
    req.hold = t.hold = std::make_shared<HeldSpawn>();
  }
  t.drop = creds.drop;
  t.timeout_ms = launch.timeout_ms;
  // The group is made on the worker, just before the clone: a failure there fails the
  // attempt (on_spawned), and an empty group left behind is removed on the usual path.
  const uint64_t tag = next_spawn_tag++;
  Status queued = worker->submit(tag, std::move(req),
                                 [iso = &isolation, group = t.group, limits = launch.limits](
                                     SpawnRequest& r) { return join_fds(*iso, group, limits, r); });
  if (!queued) {  // no spawn thread (the process limit): nothing was made
    close_all();
    close_fd(&go[0]);
    close_fd(&go[1]);
    return queued;
  }
  t.go_fd = go[1];
  t.out_read = out[0];
  t.err_read = err[0];
  t.out_write = out[1];
  t.err_write = err[1];
  if (t.handles_open == 0) {  // a queued spawn's timer is initialised already
    uv_timer_init(loop, &t.timer);
    t.timer.data = &t;
    ++t.handles_open;
  }
  t.spawning = true;
  t.spawn_tag = tag;
  spawning.emplace(tag, std::make_pair(t.job_id, t.index));
  return {};
}

void Executor::Impl::on_spawned(uint64_t tag, Result<Spawned> spawned) {
  auto s = spawning.find(tag);
  CARDNODE_CHECK(s != spawning.end());
  auto it = tasks.find(s->second);
  spawning.erase(s);
  // A spawning task is not finished: it has not exited.
  CARDNODE_CHECK(it != tasks.end());
  Task& t = *it->second;
  t.spawning = false;
  if (Status st = adopt(t, std::move(spawned)); !st) {
    if (t.killed) {  // withdrawn by its kill, or failed after it: ends as killed
      end_without_process(t, 0);
      return;
    }
    // No process: the attempt fails, and its log says why.
    logs.append(t.err_key, "cardnode: cannot start task: " + st.error().describe() + "\n");
    end_without_process(t, 127 << 8);
    return;
  }
  if (t.killed) send_kill(t);    // cancelled (or the board stopping) while it was spawned
  if (t.pidfd < 0) try_reap(t);  // SIGCHLD fallback: an exit before its pid was known
}

Status Executor::Impl::adopt(Task& t, Result<Spawned> spawned) {
  close_fd(&t.out_write);  // the task holds the write ends now: EOF comes when it is done
  close_fd(&t.err_write);
  if (!spawned) {
    close_fd(&t.out_read);
    close_fd(&t.err_read);
    return std::unexpected(spawned.error());
  }
  t.pid = spawned->pid;
  task_pids.insert(t.pid);
  t.pidfd = spawned->pidfd;
  // Read by the spawn thread just before the clone: not the queue's wait before it, and not
  // the loop's wait for this result after it (a loaded board).
  t.spawned_ns = spawned->started_ns;

  uv_pipe_init(loop, &t.out, 0);
  uv_pipe_init(loop, &t.err, 0);
  t.out.data = t.err.data = t.exit_poll.data = &t;
  t.handles_open += 2;
  t.pipes_open = 2;
  int* read_end[2] = {&t.out_read, &t.err_read};
  uv_pipe_t* pipes[2] = {&t.out, &t.err};
  for (int i = 0; i < 2; ++i) {
    uv_stream_t* s = reinterpret_cast<uv_stream_t*>(pipes[i]);
    if (uv_pipe_open(pipes[i], *read_end[i]) == 0) {
      *read_end[i] = -1;  // the handle owns it
      if (uv_read_start(s, &Impl::on_alloc, &Impl::on_read) == 0) continue;
    }
    close_fd(read_end[i]);
    end_pipe(t, pipes[i]);
  }
  if (t.pidfd >= 0 && uv_poll_init(loop, &t.exit_poll, t.pidfd) == 0) {
    ++t.handles_open;
    uv_poll_start(&t.exit_poll, UV_READABLE, &Impl::on_exit_poll);
  } else {
    close_fd(&t.pidfd);
    // Later exits come by SIGCHLD. This child may have ended before its pid was known
    // here (its SIGCHLD found no task to try): on_spawned tries it once.
    watch_sigchld();
  }
  if (t.timeout_ms > 0 && !t.killed && !t.held) {  // held: from its release (qemu-user)
    t.phase = TimerPhase::kTimeout;
    uv_timer_start(&t.timer, &Impl::on_timer, t.timeout_ms, 0);
  }
  return {};
}

uint32_t Executor::Impl::kill_tagged(Task& t, int sig, uint32_t* unsure) {
  if (isolation.info().mode != IsolationMode::kRlimit) return 0;
  constexpr uint32_t kTaggedScanMax = 4096;
  uint32_t signalled = 0;
  if (!subreaper) {
    for (int32_t pid : pids_with_env(t.key_entry, /*prefix=*/false, kTaggedScanMax)) {
      signalled += ::kill(pid, sig) == 0 ? 1 : 0;
    }
    return signalled;
  }
  // As the subreaper, every process that left a task's group and lost its parent is our
  // child: only those are read, not all of /proc. One that still has a parent in the task
  // becomes ours when that parent is killed: the after-exit timer comes back for it.
  // Tasks are children of the spawn threads, orphans are adopted by the main thread
  // (adopted_children): a task whose pid is still on its way from the worker is never
  // taken for an orphan (and reaped, its status lost).
  for (int32_t pid : adopted_children(kTaggedScanMax)) {
    if (task_pids.contains(pid)) continue;  // a task's own process: its pidfd reaps it
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) continue;  // an adopted orphan that ended
    switch (environ_match(pid, t.key_entry)) {
      case EnvironMatch::kYes: signalled += ::kill(pid, sig) == 0 ? 1 : 0; break;
      case EnvironMatch::kNo: break;
      case EnvironMatch::kUnreadable:
        // An escapee caught inside its execve (`setsid sleep`) reads as empty for a
        // moment: look again on the next tick rather than report it gone. Bounded: an
        // orphan that cleared its environment is not waited for past the fast window.
        if (unsure != nullptr && t.exited && uv_now(loop) - t.exited_at_ms < kReapFastForMs) {
          ++*unsure;
        }
        break;
    }
  }
  return signalled;
}

void Executor::Impl::signal_tree(Task& t, int sig) {
  // No such group yet: the child has not reached its setsid. Not with CLONE_VFORK, which
  // returns after the exec; but qemu-user turns that into a fork, and the parent races on.
  if (t.pid > 0 && ::kill(-t.pid, sig) != 0 && errno == ESRCH) ::kill(t.pid, sig);
  // SIGTERM goes to the process group only, as a terminal sends it: through the cgroup
  // or the tag as well, every member of both would get it twice and run its trap twice.
  // Processes that left the group (setsid) get the SIGKILL at the end of the grace.
  if (sig == SIGTERM) return;
  isolation.signal_group(t.group, sig);
  kill_tagged(t, sig);
}

void Executor::Impl::kill(Task& t, KillReason reason) {
  // An exit waiting in exit_queue (pacing) is an exit, not something to kill.
  if (!t.pending && !t.exited) try_reap(t);
  if (t.exited || t.killed) return;  // the first reason is the one reported
  t.killed = true;
  t.reason = reason;
  // Held: closing our end unsent withdraws the start; its child exits without running.
  t.withdrawn = t.held && t.go_fd >= 0;
  t.held = false;
  close_fd(&t.go_fd);
  if (t.pending) {  // never started: nothing to signal
    t.pending.reset();
    end_without_process(t, 0);
    return;
  }
  if (t.spawning) {
    // No pid yet. Not begun on the worker: it never gets a process (on_spawned ends it).
    // Begun: on_spawned sends the signals once its pid is known.
    worker->cancel(t.spawn_tag);
    return;
  }
  send_kill(t);
}

void Executor::Impl::send_kill(Task& t) {
  if (options.kill_grace_ms == 0) {
    signal_tree(t, SIGKILL);
    uv_timer_stop(&t.timer);
    return;
  }
  signal_tree(t, SIGTERM);
  t.phase = TimerPhase::kGrace;
  uv_timer_start(&t.timer, &Impl::on_timer, options.kill_grace_ms, 0);
}

// Advances a task that has exited towards its report. Safe to call at any time.
void Executor::Impl::step(Task* t) {
  if (!t->exited || t->pipes_open > 0 || !t->group_gone) return;
  if (!t->logs_closing) {
    t->logs_closing = true;
    // The timer's close callback runs on a later loop turn, so handles_open > 0 until
    // then: finish() cannot run from inside a synchronous close `done` below.
    close_handle(reinterpret_cast<uv_handle_t*>(&t->timer));
    t->log_closes_pending = 2;
    auto done = [this, t](Status st) {
      --t->log_closes_pending;  // a log write error loses output, not the task's result
      if (!st) warn_output_lost(*t, st.error());
      step(t);
    };
    logs.close(t->out_key, done);
    logs.close(t->err_key, done);
    return;
  }
  if (t->log_closes_pending > 0 || t->handles_open > 0) return;
  finish(t);
}

void Executor::Impl::warn_output_lost(const Task& t, const Error& e) {
  if (!options.warn) return;
  const uint64_t now = uv_now(loop);
  if (output_lost_warned && now - output_lost_warned_ms < kOutputLostWarnEveryMs) {
    ++output_lost_unwarned;
    return;
  }
  std::string line = "task " + std::to_string(t.job_id) + "." + std::to_string(t.index) +
                     ": output lost: " + e.describe();
  if (output_lost_unwarned > 0) {
    line += " (and " + std::to_string(output_lost_unwarned) + " more since the last warning)";
  }
  output_lost_warned = true;
  output_lost_warned_ms = now;
  output_lost_unwarned = 0;
  options.warn(line);
}

void Executor::Impl::release(Task& t) {
  if (!t.held) return;
  t.held = false;
  if (t.go_fd < 0) return;  // not launched yet: its spawn will not be held
  // A child already gone (killed as root by someone else) cannot take it: its exit is
  // seen as any other.
  (void)release_held(t.go_fd, *t.hold, t.drop);
  close_fd(&t.go_fd);
  t.released_ns = uv_hrtime();
  // Its pid came before the release (qemu-user, whose clone does not wait for the exec):
  // the timeout counts from now.
  if (t.pid > 0 && t.timeout_ms > 0 && !t.killed && !t.exited) {
    t.phase = TimerPhase::kTimeout;
    uv_timer_start(&t.timer, &Impl::on_timer, t.timeout_ms, 0);
  }
}

void Executor::Impl::finish(Task* t) {
  close_fd(&t->go_fd);  // held to the end (its spawn failed): nothing waits on it now
  TaskExit e;
  e.signal = t->term_signal;
  e.exit_code = t->term_signal != 0 ? 0 : static_cast<int32_t>(t->exit_status);
  e.usage = t->usage;
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

namespace {

// Closes the two handles of a heap-allocated holder (Pacer, SigchldWatch) and deletes it
// once both close callbacks ran: the loop still touches a handle until its callback.
template <class Holder, class A, class B>
void close_and_delete(Holder* h, A* a, B* b) {
  h->closing = 2;
  a->data = b->data = h;
  auto closed = [](uv_handle_t* handle) {
    auto* holder = static_cast<Holder*>(handle->data);
    if (--holder->closing == 0) delete holder;
  };
  uv_close(reinterpret_cast<uv_handle_t*>(a), closed);
  uv_close(reinterpret_cast<uv_handle_t*>(b), closed);
}

}  // namespace

Executor::Executor(uv_loop_t* loop, storage::LogStore& logs, Isolation& isolation,
                   ExecutorOptions options)
    : impl_(std::make_unique<Impl>(loop, logs, isolation, std::move(options))) {}

Executor::~Executor() {
  CARDNODE_CHECK(impl_->tasks.empty());
  if (Impl::Pacer* p = impl_->pacer) close_and_delete(p, &p->idle, &p->prepare);
  if (Impl::SigchldWatch* w = impl_->sigchld) close_and_delete(w, &w->signal, &w->sweep);
}

Status Executor::start(const TaskLaunch& launch, ExitCallback on_exit) {
  return impl_->start(launch, std::move(on_exit), /*held=*/false);
}

Status Executor::start_held(const TaskLaunch& launch, ExitCallback on_exit) {
  return impl_->start(launch, std::move(on_exit), /*held=*/true);
}

bool Executor::can_hold_now() const {
  return impl_->can_hold_now();
}

void Executor::release(uint64_t job_id, uint32_t index) {
  auto it = impl_->tasks.find(std::make_pair(job_id, index));
  if (it != impl_->tasks.end()) impl_->release(*it->second);
}

void Executor::kill(uint64_t job_id, uint32_t index, KillReason reason) {
  auto it = impl_->tasks.find(std::make_pair(job_id, index));
  if (it != impl_->tasks.end()) impl_->kill(*it->second, reason);
}

void Executor::kill_all() {
  for (auto& [key, t] : impl_->tasks) impl_->kill(*t, KillReason::kShutdown);
}

int32_t Executor::pid_of(uint64_t job_id, uint32_t index) const {
  auto it = impl_->tasks.find(std::make_pair(job_id, index));
  return it == impl_->tasks.end() ? 0 : it->second->pid;
}

uint32_t Executor::running() const {
  return static_cast<uint32_t>(impl_->tasks.size());
}

std::string task_key_prefix(const std::string& pool_tag) {
  return "CARDNODE_TASK_KEY=" + pool_tag + ":";
}

}  // namespace cardnode::runtime
