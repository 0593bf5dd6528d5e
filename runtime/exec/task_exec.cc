// `cardnode __task-exec`: the few steps between fork and the task's exec that libuv's
// uv_spawn cannot do — join the task's cgroups and set rlimits — done in a freshly
// exec'd image of our own binary, so the task's command keeps the spawned pid and
// nothing it forks can start outside its group.
//
// No PR_SET_PDEATHSIG: it fires when the *thread* that forked exits, not the process,
// which is fragile, and a task outliving a crashed server is handled anyway: the next
// server/agent start kills every leftover group (Isolation::destroy_all_groups).
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "runtime/exec/executor.h"

namespace cardnode::runtime {
namespace {

constexpr int kExitCannotRun = 127;      // like a shell: command not found / not run
constexpr int kExitNotExecutable = 126;  // like a shell: found but permission denied
constexpr int kCgroupsMax = 8;

// The task's stderr is where the reason goes; if that fails too, the exit code remains.
int cannot(const std::string& what, int err) {
  // NOLINTNEXTLINE(concurrency-mt-unsafe): glibc >= 2.32 keeps strerror's text per thread
  (void)std::fprintf(stderr, "cardnode: %s: %s\n", what.c_str(), std::strerror(err));
  return kExitCannotRun;
}

bool join_cgroup(const char* procs_path, int* err) {
  int fd = ::open(procs_path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) {
    *err = errno;
    return false;
  }
  std::string pid = std::to_string(::getpid());
  ssize_t n = -1;
  for (int attempt = 0; attempt < 1000; ++attempt) {  // EINTR: see isolation.cc write_file
    n = ::write(fd, pid.data(), pid.size());
    *err = errno;
    if (n >= 0 || *err != EINTR) break;
  }
  ::close(fd);
  return n == static_cast<ssize_t>(pid.size());
}

}  // namespace

int task_exec_main(int argc, char** argv) {
  std::vector<const char*> cgroups;
  unsigned long long rlimit_as_bytes = 0;
  int i = 2;  // argv[0] is the program, argv[1] "__task-exec"
  for (; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--") {
      ++i;
      break;
    }
    if (arg == "--cgroup-procs" && i + 1 < argc && cgroups.size() < kCgroupsMax) {
      cgroups.push_back(argv[++i]);
    } else if (arg == "--rlimit-as" && i + 1 < argc) {
      char* end = nullptr;
      rlimit_as_bytes = std::strtoull(argv[++i], &end, 10);
      if (*end != '\0') return cannot("__task-exec: bad --rlimit-as", EINVAL);
    } else {
      return cannot("__task-exec: bad argument '" + arg + "'", EINVAL);
    }
  }
  if (i >= argc) return cannot("__task-exec: no command after --", EINVAL);

  // Joining fails closed: a task must not run without the limits it was given.
  for (const char* procs : cgroups) {
    int err = 0;
    if (!join_cgroup(procs, &err)) return cannot(std::string("cannot join cgroup ") + procs, err);
  }
  if (rlimit_as_bytes > 0) {
    struct rlimit rl {};
    // rlim_t is 32 bits on armhf: a limit it cannot hold means no limit there.
    rl.rlim_cur = rl.rlim_max =
        rlimit_as_bytes >= RLIM_INFINITY ? RLIM_INFINITY : static_cast<rlim_t>(rlimit_as_bytes);
    if (::setrlimit(RLIMIT_AS, &rl) != 0) return cannot("cannot set RLIMIT_AS", errno);
  }
  // The server's sockets, WAL and eventfds must not leak into the task, whatever
  // O_CLOEXEC discipline the rest of the binary keeps. Failure (old kernel) is harmless.
  (void)::close_range(3, ~0U, 0);

  ::execvp(argv[i], argv + i);
  int err = errno;
  // NOLINTNEXTLINE(concurrency-mt-unsafe): glibc >= 2.32 keeps strerror's text per thread
  (void)std::fprintf(stderr, "cardnode: cannot run %s: %s\n", argv[i], std::strerror(err));
  return err == EACCES ? kExitNotExecutable : kExitCannotRun;
}

}  // namespace cardnode::runtime
