// Who tasks run as on this board: least privilege by default (Guarantee 7).
//
// An agent or server running as root runs tasks as an unprivileged user: --task-user,
// else the system user `cardnode-task` (the package creates it), else `nobody`. Tasks run
// as root only with --allow-root-tasks. A job may name another user (JobSpec.user) only
// if this board was given it with --allow-task-user. Not running as root, the board runs
// tasks as itself and can switch to no one.
//
// Resolved once at start-up (getpwnam: NSS may read files or ask a daemon); the spawn
// path only copies numbers.
//
// Threading: resolve_task_users() at start-up, before the loop runs; TaskUsers is then
// read-only.
#pragma once

#include <string>
#include <vector>

#include "proto/error.h"
#include "runtime/exec/spawn.h"

namespace cardnode::runtime {

inline constexpr const char* kDefaultTaskUser = "cardnode-task";
inline constexpr const char* kFallbackTaskUser = "nobody";

struct TaskUserOptions {
  std::string user;                  // --task-user; empty: the default above
  bool allow_root = false;           // --allow-root-tasks
  std::vector<std::string> allowed;  // --allow-task-user, repeatable
};

struct TaskUsers {
  TaskCredentials standard;              // a job that names no user
  std::vector<TaskCredentials> allowed;  // names a job may ask for (standard included)
  bool root_tasks = false;               // tasks may run as uid 0 here (shown in `nodes`)

  // The credentials for a job's `user` field (empty: standard). kInvalidArgument when the
  // board was not given that user.
  [[nodiscard]] Result<TaskCredentials> for_job(const std::string& user) const;
};

// Looks the users up. Errors are for the operator, one line each: an unknown user, root
// without --allow-root-tasks, a non-root process asked to switch users, no unprivileged
// user on the system.
[[nodiscard]] Result<TaskUsers> resolve_task_users(const TaskUserOptions& options);

// "nobody (uid 65534)", "root (uid 0, --allow-root-tasks)": for the start-up log.
std::string describe_task_user(const TaskUsers& users);

// The user this process runs as, unprivileged (tests, and a board not run as root).
TaskUsers task_users_self();

}  // namespace cardnode::runtime
