// Spawning one task process, with no helper process and no second exec.
//
// The child is a clone(CLONE_VM | CLONE_VFORK) of this process running on its own small
// stack, the way posix_spawn works inside glibc: no page tables are copied (the server's
// size does not matter) and the parent waits only until the child's execve. Between
// clone and execve the child makes plain system calls only, in this order:
//   signal dispositions to default, signals unblocked  (the parent's handlers must never
//                                                        run in the shared address space)
//   setsid                        (the task's pid is its process group: kill(-pid))
//   stdin /dev/null, stdout/stderr the pipes           (so every reason below is logged)
//   write "0" to each cgroup.procs fd                  (before anything can fork: nothing
//                                                        escapes the group; v1 and v2)
//   if held (hold_fd): every other descriptor closed, then wait for one byte "g" on
//   hold_fd; anything else (EOF: the start was withdrawn, or the server died) exits
//   127 with nothing run. Still root here, so no task process can signal or stop it.
//   setrlimit(RLIMIT_AS)          (rlimit mode only)
//   setgroups(0), setresgid, setresuid                 (the task user, raw syscalls:
//                                                        glibc's wrappers would signal the
//                                                        parent's threads)
//   prctl(PR_SET_NO_NEW_PRIVS)    (a setuid binary cannot give the privileges back)
//   chdir: the job's dir, else `fallback_cwd`, else /tmp, else /  (as the task user)
//   close_range(3, ~0)            (no socket, WAL or eventfd leaks into the task)
//   execve along the task's own PATH, like execvp (a file without #! runs under /bin/sh)
// A failure at any step writes "cardnode: <step>: <reason>" to the task's stderr and
// exits 127 (126 for a command found but not executable), as a shell does. So the
// command's pid is the pid returned here, and a task that ran at all has its reason in
// its log.
//
// The parent gets a pidfd (CLONE_PIDFD, else pidfd_open) that becomes readable when the
// process exits: one poll handle per task, one wait4 per exit. Kernels before 5.3 have
// no pidfd: `pidfd` is -1 and the caller falls back to SIGCHLD.
//
// Threading: any thread, one spawn at a time per Spawner (it owns the child's stack);
// Spawners on several threads may spawn at once.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "proto/error.h"

namespace cardnode::runtime {

// Who a task runs as. drop == false: as this process's own user (an agent that is not
// root, or root with --allow-root-tasks).
struct TaskCredentials {
  bool drop = false;
  uid_t uid = 0;
  gid_t gid = 0;
  std::string name;  // for USER / LOGNAME
  std::string home;  // for HOME; "/" when the user has none
};

// One held spawn's progress, shared by the spawn thread and the releaser. It places the
// dumpable window (spawn.cc) around what a held child does as the task user, not around
// its wait: the releaser enters the window just before the child may go on, the spawn
// thread leaves it once the clone has returned (or, with no clone, when it is done with
// the request: spawn_worker.cc), and a release that comes after that (qemu-user's clone
// returns before the exec) undoes its own entry.
struct HeldSpawn {
  std::atomic<int> state{0};  // 0 held, 1 released (window entered), 2 clone returned
};

struct SpawnRequest {
  std::vector<std::string> argv;  // argv[0] is looked up along PATH from `env`
  std::vector<std::string> env;   // "K=V", the whole environment
  std::string cwd;                // the job's directory; may be empty
  std::string fallback_cwd;       // tried when `cwd` cannot be entered; may be empty
  int stdout_fd = -1;             // write ends; borrowed
  int stderr_fd = -1;
  std::vector<int> cgroup_procs_fds;  // opened O_WRONLY; borrowed
  // A socket's end above 2, or -1: the child waits on it before it drops privileges and
  // execs (see the order above); borrowed, like the cgroup fds. `hold` is then shared
  // with whoever releases it (release_held).
  int hold_fd = -1;
  std::shared_ptr<HeldSpawn> hold;
  uint64_t rlimit_as_bytes = 0;  // 0: none
  TaskCredentials creds;
};

struct Spawned {
  pid_t pid = 0;
  int pidfd = -1;           // owned by the caller; -1: no pidfd on this kernel
  uint64_t started_ns = 0;  // CLOCK_MONOTONIC (uv_hrtime's clock) just before the clone
};

// Moves a descriptor above 0..2, closing the original (-1 stays -1; -1 if no room): one the
// child dup2s onto 0..2, or one it must still write after that, must not be among them (a
// daemon started with a closed stdin gets fd 0 from its first open).
int above_stdio(int fd);

enum class PidfdSupport : uint8_t {
  kAuto,  // CLONE_PIDFD, else pidfd_open, else none
  kNone,  // never (tests of the SIGCHLD fallback)
};

// Around each clone whose child drops to the task user: the process stays non-dumpable
// while any such child may still run in its memory (spawn.cc says why), and is made
// dumpable again (if it was) when the last one has exec'd. Spawner::spawn calls these;
// declared here for tests.
void enter_task_user_window();
void leave_task_user_window();

// Lets a held child (SpawnRequest::hold_fd) go on to its exec: sends the byte it waits
// for on `fd`, the other end of its socket. `drop`: the request's creds.drop. False if it
// could not (the child is gone); the caller closes `fd` either way, and closing it unsent
// withdraws the start.
bool release_held(int fd, HeldSpawn& hold, bool drop);

class Spawner {
 public:
  explicit Spawner(PidfdSupport pidfd = PidfdSupport::kAuto);
  ~Spawner();
  Spawner(const Spawner&) = delete;
  Spawner& operator=(const Spawner&) = delete;

  // Starts the process. An error means no process exists (clone failed, or a bound on
  // the request was exceeded); every failure after clone is the child's exit status.
  [[nodiscard]] Result<Spawned> spawn(const SpawnRequest& request);
  // Whether a request may be held (hold_fd): the child must close every descriptor but
  // its own before it waits, since its clone copied ours, the other end of its own socket
  // among them, and that copy would keep it waiting after the server died; close_range
  // (Linux 5.9) does it in one call.
  static bool can_hold();

 private:
  struct Stack;
  std::unique_ptr<Stack> stack_;
  PidfdSupport pidfd_;
  bool clone_pidfd_refused_ = false;  // EINVAL once: pidfd_open from then on
  int devnull_fd_ = -1;
};

}  // namespace cardnode::runtime
