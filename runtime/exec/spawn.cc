// Spawner: clone(CLONE_VM | CLONE_VFORK) into a child that makes system calls only.
//
// Rules for everything reached from child_main(): no allocation, no locks, no stdio, no
// C++ exceptions, no function that may touch glibc's per-thread state beyond errno. The
// child shares the parent's memory until execve (CLONE_VM), so a malloc there could
// corrupt the parent's heap; the parent is suspended meanwhile (CLONE_VFORK), which is
// what makes reading its prepared arrays safe.
//
// Under qemu-user, CLONE_VFORK | CLONE_VM becomes a plain fork (qemu emulates vfork
// that way) and CLONE_PIDFD may be refused: both are handled, the child code is the same.
#include "runtime/exec/spawn.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <mutex>

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif

namespace cardnode::runtime {
namespace {

// glibc's clone() wants the child's stack; the child needs one PATH_MAX buffer, one
// message buffer and a few frames.
constexpr size_t kChildStackBytes = size_t{64} * 1024;
constexpr size_t kArgsMax = 65536;  // argv + env entries; far above ARG_MAX's reach
constexpr int kExitCannotRun = 127;
constexpr int kExitNotExecutable = 126;
constexpr const char* kDefaultPath = "/usr/local/bin:/usr/bin:/bin";
constexpr char kReleaseByte = 'g';

// What the child reads: prepared by the parent, pointing into the request.
struct ChildArgs {
  const char* file = nullptr;
  char* const* argv = nullptr;
  char* const* envp = nullptr;
  char** sh_argv = nullptr;  // {"/bin/sh", <slot for the found path>, argv[1..], nullptr}
  const char* path_list = nullptr;
  const char* cwd = nullptr;
  const char* fallback_cwd = nullptr;
  int devnull = -1;
  int out = -1;
  int err = -1;
  const int* cgroup_fds = nullptr;
  size_t cgroup_count = 0;
  int hold_fd = -1;
  uint64_t rlimit_as_bytes = 0;
  bool drop = false;
  uid_t uid = 0;
  gid_t gid = 0;
};

// ---- child side: system calls only -------------------------------------------------

// ASan builds: the child runs on a stack of ours in our memory and never returns, so its
// instrumented frames would leave poisoned redzones on the reused stack, and ASan's check
// before each noreturn call cannot tell that stack from a thread's (a false
// stack-buffer-overflow, or a warning in the task's stderr log). The child's code is left
// uninstrumented; it makes system calls only.
#if defined(__SANITIZE_ADDRESS__)
#define CHILD_SIDE __attribute__((no_sanitize_address))
#else
#define CHILD_SIDE
#endif

CHILD_SIDE size_t append(char* buf, size_t at, size_t cap, const char* s) {
  while (s != nullptr && *s != '\0' && at + 1 < cap) buf[at++] = *s++;
  return at;
}

// "cardnode: <what> <subject>: <reason>\n" to fd 2 (the task's stderr log).
CHILD_SIDE void say(const char* what, const char* subject, int err) {
  char buf[512];
  size_t n = append(buf, 0, sizeof buf, "cardnode: ");
  n = append(buf, n, sizeof buf, what);
  if (subject != nullptr) {
    n = append(buf, n, sizeof buf, " ");
    n = append(buf, n, sizeof buf, subject);
  }
  if (err != 0) {
    // strerrordesc_np reads a static table: no locale, no allocation (glibc >= 2.32).
    const char* reason = ::strerrordesc_np(err);
    n = append(buf, n, sizeof buf, ": ");
    n = append(buf, n, sizeof buf, reason != nullptr ? reason : "unknown error");
  }
  if (n + 1 < sizeof buf) buf[n++] = '\n';
  (void)!::write(STDERR_FILENO, buf, n);
}

[[noreturn]] CHILD_SIDE void cannot(const char* what, const char* subject, int err) {
  say(what, subject, err);
  ::_exit(kExitCannotRun);
}

// Raw credential calls: glibc's setresuid & co. broadcast to every thread of the process
// (POSIX per-process credentials), and in a CLONE_VM child "the process" is the
// parent's. The 32-bit variants are the ones with full-width ids on 32-bit ARM.
CHILD_SIDE long sys_setgroups_none() {
#ifdef SYS_setgroups32
  return ::syscall(SYS_setgroups32, 0, nullptr);
#else
  return ::syscall(SYS_setgroups, 0, nullptr);
#endif
}
CHILD_SIDE long sys_setresgid(gid_t g) {
#ifdef SYS_setresgid32
  return ::syscall(SYS_setresgid32, g, g, g);
#else
  return ::syscall(SYS_setresgid, g, g, g);
#endif
}
CHILD_SIDE long sys_setresuid(uid_t u) {
#ifdef SYS_setresuid32
  return ::syscall(SYS_setresuid32, u, u, u);
#else
  return ::syscall(SYS_setresuid, u, u, u);
#endif
}

CHILD_SIDE void enter_dir(const ChildArgs& a) {
  if (a.cwd != nullptr && a.cwd[0] != '\0') {
    if (::chdir(a.cwd) == 0) return;
    int err = errno;
    // A board without the submitter's directory is normal in a pool; one it may not
    // enter is worth a line (as slurmstepd writes "going to /tmp instead").
    if (err != ENOENT && err != ENOTDIR) say("cannot enter", a.cwd, err);
  }
  if (a.fallback_cwd != nullptr && a.fallback_cwd[0] != '\0' && ::chdir(a.fallback_cwd) == 0) {
    return;
  }
  if (::chdir("/tmp") == 0) return;
  (void)::chdir("/");
}

// execvp along the task's PATH (not the server's: execvpe reads the caller's own).
[[noreturn]] CHILD_SIDE void exec_command(const ChildArgs& a) {
  int err = ENOENT;
  if (std::strchr(a.file, '/') != nullptr) {
    ::execve(a.file, a.argv, a.envp);
    err = errno;
    if (err == ENOEXEC) {
      a.sh_argv[1] = const_cast<char*>(a.file);
      ::execve("/bin/sh", a.sh_argv, a.envp);
    }
  } else {
    char path[PATH_MAX];
    size_t file_len = std::strlen(a.file);
    bool eacces = false;
    const char* p = a.path_list;
    for (bool more = true; more;) {
      const char* end = std::strchr(p, ':');
      if (end == nullptr) {
        end = p + std::strlen(p);
        more = false;
      }
      auto dir_len = static_cast<size_t>(end - p);
      if (dir_len == 0) {
        path[0] = '.';  // an empty PATH element is the current directory
        dir_len = 1;
      } else if (dir_len + file_len + 2 <= sizeof path) {
        std::memcpy(path, p, dir_len);
      } else {
        p = end + 1;
        continue;  // longer than PATH_MAX: cannot name a file
      }
      if (dir_len + file_len + 2 <= sizeof path) {
        path[dir_len] = '/';
        std::memcpy(path + dir_len + 1, a.file, file_len + 1);
        ::execve(path, a.argv, a.envp);
        int e = errno;
        if (e == ENOEXEC) {
          a.sh_argv[1] = path;
          ::execve("/bin/sh", a.sh_argv, a.envp);
          e = errno;
        }
        if (e == EACCES) {
          eacces = true;
        } else if (e != ENOENT && e != ENOTDIR && e != ESTALE && e != ENODEV && e != ETIMEDOUT) {
          err = e;
          break;  // a real error: say it rather than hunt further
        }
      }
      p = end + 1;
    }
    if (err == ENOENT && eacces) err = EACCES;
  }
  say("cannot run", a.file, err);
  ::_exit(err == EACCES ? kExitNotExecutable : kExitCannotRun);
}

CHILD_SIDE long close_fds(unsigned first, unsigned last) {
  return first > last ? 0 : ::syscall(SYS_close_range, first, last, 0U);
}

// Held: the start is not durable yet. Only the task's own descriptors stay open while it
// waits (0..2 and hold_fd): the clone copied all of ours, among them the server's end of
// this very socket (and of any other held child's), and such a copy would keep a child
// waiting after the server died. Then one byte decides.
CHILD_SIDE void wait_for_release(int hold_fd) {
  const auto fd = static_cast<unsigned>(hold_fd);
  if (close_fds(3, fd - 1) != 0 || close_fds(fd + 1, ~0U) != 0) {
    cannot("cannot close", "the server's descriptors", errno);
  }
  char go = 0;
  long n = -1;
  // The raw call: glibc's read() is a cancellation point that reads the spawn thread's
  // own thread data, which this child only borrows.
  for (int attempt = 0; attempt < 1000 && n < 0; ++attempt) {  // EINTR: as the joins above
    n = ::syscall(SYS_read, hold_fd, &go, 1);
    if (n < 0 && errno != EINTR) break;
  }
  if (n != 1 || go != kReleaseByte) ::_exit(kExitCannotRun);  // withdrawn: nothing ran
  ::close(hold_fd);
}

CHILD_SIDE int child_main(void* arg) {
  const ChildArgs& a = *static_cast<const ChildArgs*>(arg);
  // The parent blocked every signal before clone; its handlers must never run here.
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig != SIGKILL && sig != SIGSTOP) (void)::sigaction(sig, &dfl, nullptr);
  }
  sigset_t none;
  sigemptyset(&none);
  (void)::pthread_sigmask(SIG_SETMASK, &none, nullptr);

  (void)::setsid();
  if (::dup2(a.devnull, STDIN_FILENO) < 0 || ::dup2(a.out, STDOUT_FILENO) < 0 ||
      ::dup2(a.err, STDERR_FILENO) < 0) {
    ::_exit(kExitCannotRun);  // nowhere to say it
  }
  // Joining fails closed: a task must not run without the limits it was given.
  for (size_t i = 0; i < a.cgroup_count; ++i) {
    ssize_t n = -1;
    for (int attempt = 0; attempt < 1000 && n < 0; ++attempt) {  // EINTR: isolation.cc
      n = ::write(a.cgroup_fds[i], "0", 1);
      if (n < 0 && errno != EINTR) break;
    }
    if (n != 1) cannot("cannot join", "its cgroup", errno);
  }
  if (a.hold_fd >= 0) wait_for_release(a.hold_fd);
  if (a.rlimit_as_bytes > 0) {
    struct rlimit rl {};
    // rlim_t may be 32 bits: a limit it cannot hold means no limit there.
    rl.rlim_cur = rl.rlim_max =
        a.rlimit_as_bytes >= RLIM_INFINITY ? RLIM_INFINITY : static_cast<rlim_t>(a.rlimit_as_bytes);
    if (::setrlimit(RLIMIT_AS, &rl) != 0) cannot("cannot set", "RLIMIT_AS", errno);
  }
  if (a.drop) {
    if (sys_setgroups_none() != 0) cannot("cannot drop", "supplementary groups", errno);
    if (sys_setresgid(a.gid) != 0) cannot("cannot set", "the task group", errno);
    if (sys_setresuid(a.uid) != 0) cannot("cannot set", "the task user", errno);
    // Until execve, no process of the task user may ptrace us (this memory is the
    // parent's): not dumpable, whatever fs.suid_dumpable says. The parent restores itself.
    (void)::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  }
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) cannot("cannot set", "no_new_privs", errno);
  enter_dir(a);
  // Everything above 2 goes, whatever O_CLOEXEC discipline the rest of the binary keeps.
  // ENOSYS (before Linux 5.9) leaves it to O_CLOEXEC.
  (void)::syscall(SYS_close_range, 3U, ~0U, 0U);
  exec_command(a);
}

// Between its setresuid and its execve a child runs as the task user in our memory; the
// kernel (commit_creds) and the child's own prctl then make that memory non-dumpable, so no
// process of the task user may ptrace it. Being one mm, the flag is the whole process's:
// it is made dumpable again (core dumps, /proc/self owned by our user) only when no child
// of any spawn thread is in that window. The count changes under the lock, and the last
// one out restores under it, so a restore can never land after another child's setresuid.
struct TaskUserWindow {
  std::mutex mu;
  uint32_t children = 0;  // guarded by mu: clones with credentials to drop, under way
  bool restore = false;   // guarded by mu: the flag as it was when the first one began
};

TaskUserWindow& task_user_window() {
  static TaskUserWindow w;  // process-wide, like the flag
  return w;
}

}  // namespace

void enter_task_user_window() {
  TaskUserWindow& w = task_user_window();
  std::lock_guard lock(w.mu);
  if (w.children++ == 0) w.restore = ::prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 1;
}

void leave_task_user_window() {
  TaskUserWindow& w = task_user_window();
  std::lock_guard lock(w.mu);
  if (--w.children == 0 && w.restore) (void)::prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
}

bool Spawner::can_hold() {
  // An empty range: 0 where close_range exists, ENOSYS where it does not.
  static const bool supported = ::syscall(SYS_close_range, ~0U, ~0U, 0U) == 0;
  return supported;
}

bool release_held(int fd, HeldSpawn& hold, bool drop) {
  if (drop) {
    enter_task_user_window();  // before the child can reach its setresuid
    int held = 0;
    // The clone came back already (qemu-user; or the child died): no one leaves for us.
    if (!hold.state.compare_exchange_strong(held, 1)) leave_task_user_window();
  }
  return ::send(fd, &kReleaseByte, 1, MSG_NOSIGNAL | MSG_DONTWAIT) == 1;
}

int above_stdio(int fd) {
  if (fd < 0 || fd > STDERR_FILENO) return fd;
  int moved = ::fcntl(fd, F_DUPFD_CLOEXEC, STDERR_FILENO + 1);
  ::close(fd);
  return moved;
}

struct Spawner::Stack {
  void* base = MAP_FAILED;
  ~Stack() {
    if (base != MAP_FAILED) ::munmap(base, kChildStackBytes);
  }
};

Spawner::Spawner(PidfdSupport pidfd) : stack_(std::make_unique<Stack>()), pidfd_(pidfd) {
  devnull_fd_ = above_stdio(::open("/dev/null", O_RDONLY | O_CLOEXEC));
}

Spawner::~Spawner() {
  if (devnull_fd_ >= 0) ::close(devnull_fd_);
}

Result<Spawned> Spawner::spawn(const SpawnRequest& r) {
  if (r.argv.empty() || r.argv[0].empty()) return fail(Errc::kInvalidArgument, "no command");
  if (r.argv.size() + r.env.size() > kArgsMax) {
    return fail(Errc::kInvalidArgument, "too many arguments and environment entries");
  }
  if (r.stdout_fd <= STDERR_FILENO || r.stderr_fd <= STDERR_FILENO) {
    return fail(Errc::kInvalidArgument, "task output descriptors must be above 2");
  }
  if (r.hold_fd >= 0 && r.hold_fd <= STDERR_FILENO) {
    return fail(Errc::kInvalidArgument, "a hold descriptor must be above 2");
  }
  if (r.hold_fd >= 0 && (!can_hold() || r.hold == nullptr)) {
    return fail(Errc::kUnavailable, "cannot hold a spawn here");
  }
  if (devnull_fd_ < 0) return fail(Errc::kIo, "cannot open /dev/null");
  if (stack_->base == MAP_FAILED) {
    stack_->base = ::mmap(nullptr, kChildStackBytes, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack_->base == MAP_FAILED) return fail_errno(errno, "mmap the spawn stack");
  }

  std::vector<char*> argv, envp, sh_argv;
  argv.reserve(r.argv.size() + 1);
  for (const std::string& s : r.argv) argv.push_back(const_cast<char*>(s.c_str()));
  argv.push_back(nullptr);
  sh_argv = {const_cast<char*>("/bin/sh"), nullptr};
  sh_argv.insert(sh_argv.end(), argv.begin() + 1, argv.end());  // argv[1..] and the nullptr
  envp.reserve(r.env.size() + 1);
  const char* path_list = kDefaultPath;
  bool path_seen = false;
  for (const std::string& e : r.env) {
    envp.push_back(const_cast<char*>(e.c_str()));
    if (!path_seen && e.starts_with("PATH=")) {  // the first wins, as getenv finds it
      path_list = e.c_str() + 5;
      path_seen = true;
    }
  }
  envp.push_back(nullptr);

  ChildArgs a;
  a.file = r.argv[0].c_str();
  a.argv = argv.data();
  a.envp = envp.data();
  a.sh_argv = sh_argv.data();
  a.path_list = path_list;
  a.cwd = r.cwd.c_str();
  a.fallback_cwd = r.fallback_cwd.c_str();
  a.devnull = devnull_fd_;
  a.out = r.stdout_fd;
  a.err = r.stderr_fd;
  a.cgroup_fds = r.cgroup_procs_fds.data();
  a.cgroup_count = r.cgroup_procs_fds.size();
  a.rlimit_as_bytes = r.rlimit_as_bytes;
  a.hold_fd = r.hold_fd;
  a.drop = r.creds.drop;
  a.uid = r.creds.uid;
  a.gid = r.creds.gid;

  // A held child waits as root: its window opens at its release (release_held), not here.
  const bool held = r.hold_fd >= 0;
  if (r.creds.drop && !held) enter_task_user_window();
  void* stack_top = static_cast<char*>(stack_->base) + kChildStackBytes;
  constexpr int kFlags = CLONE_VM | CLONE_VFORK | SIGCHLD;
  sigset_t all, old;
  sigfillset(&all);
  ::pthread_sigmask(SIG_BLOCK, &all, &old);
  timespec now{};
  ::clock_gettime(CLOCK_MONOTONIC, &now);
  const uint64_t started_ns =
      static_cast<uint64_t>(now.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(now.tv_nsec);
  int pidfd = -1;
  pid_t pid = -1;
  int err = 0;
  if (pidfd_ == PidfdSupport::kAuto && !clone_pidfd_refused_) {
    pid = ::clone(&child_main, stack_top, kFlags | CLONE_PIDFD, &a, &pidfd);
    err = errno;
    if (pid < 0 && err == EINVAL) clone_pidfd_refused_ = true;  // before Linux 5.2, qemu-user
  }
  if (pid < 0 && (pidfd_ == PidfdSupport::kNone || clone_pidfd_refused_)) {
    pidfd = -1;
    pid = ::clone(&child_main, stack_top, kFlags, &a);
    err = errno;
  }
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (r.creds.drop && (!held || r.hold->state.exchange(2) == 1)) leave_task_user_window();
  if (pid < 0) return fail_errno(err, "clone a task process");
  if (pidfd < 0 && pidfd_ == PidfdSupport::kAuto) {
    // A child not yet waited for cannot be reaped by anyone else, so its pid is still
    // this child's. ENOSYS (before Linux 5.3): -1, the caller uses SIGCHLD.
    pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0U));
  }
  return Spawned{pid, pidfd < 0 ? -1 : pidfd, started_ns};
}

}  // namespace cardnode::runtime
