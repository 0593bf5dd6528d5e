#include "runtime/exec/task_user.h"

#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

namespace cardnode::runtime {
namespace {

constexpr size_t kPasswdBufBytes = 16384;

// One passwd entry; kNotFound when the system has no such user.
Result<TaskCredentials> lookup(const std::string& name, bool by_uid, uid_t uid) {
  struct passwd pw {};
  struct passwd* found = nullptr;
  std::string buf(kPasswdBufBytes, '\0');
  int rc = by_uid ? ::getpwuid_r(uid, &pw, buf.data(), buf.size(), &found)
                  : ::getpwnam_r(name.c_str(), &pw, buf.data(), buf.size(), &found);
  if (rc != 0) return fail_errno(rc, "look up user '" + name + "'");
  if (found == nullptr) {
    if (by_uid) return TaskCredentials{false, uid, ::getgid(), std::to_string(uid), "/"};
    return fail(Errc::kNotFound, "no user '" + name + "' on this system");
  }
  TaskCredentials c;
  c.uid = pw.pw_uid;
  c.gid = pw.pw_gid;
  c.name = pw.pw_name;
  struct stat st {};
  // nobody's home is /nonexistent: HOME must name a directory a program can use.
  bool home_ok = pw.pw_dir != nullptr && ::stat(pw.pw_dir, &st) == 0 && S_ISDIR(st.st_mode);
  c.home = home_ok ? pw.pw_dir : "/";
  return c;
}

}  // namespace

Result<TaskCredentials> TaskUsers::for_job(const std::string& user) const {
  if (user.empty()) return standard;
  for (const TaskCredentials& c : allowed) {
    if (c.name == user) return c;
  }
  return fail(Errc::kInvalidArgument,
              "user '" + user + "' is not allowed on this node (see --allow-task-user)");
}

std::string describe_task_user(const TaskUsers& u) {
  std::string s = (u.standard.name.empty() ? std::string("?") : u.standard.name) + " (uid " +
                  std::to_string(u.standard.uid);
  if (u.standard.uid == 0) s += u.root_tasks ? ", --allow-root-tasks" : "";
  s += ")";
  if (u.allowed.size() > 1) {
    s += "; jobs may ask for";
    for (size_t i = 1; i < u.allowed.size(); ++i) s += " " + u.allowed[i].name;
  }
  return s;
}

TaskUsers task_users_self() {
  TaskUsers u;
  auto self = lookup("", /*by_uid=*/true, ::geteuid());
  u.standard = self ? *self : TaskCredentials{false, ::geteuid(), ::getegid(), "", "/"};
  u.standard.drop = false;
  u.allowed = {u.standard};
  u.root_tasks = ::geteuid() == 0;
  return u;
}

Result<TaskUsers> resolve_task_users(const TaskUserOptions& o) {
  if (::geteuid() != 0) {
    // No privilege to switch: tasks run as this user, and asking for another is an error
    // rather than a silent no-op.
    TaskUsers self = task_users_self();
    std::vector<std::string> asked = o.allowed;
    if (!o.user.empty()) asked.push_back(o.user);
    for (const std::string& name : asked) {
      if (name != self.standard.name) {
        return fail(Errc::kInvalidArgument,
                    "running tasks as '" + name +
                        "' needs this process to run as root (it runs as '" + self.standard.name +
                        "')");
      }
    }
    return self;
  }
  auto resolve = [&](const std::string& name) -> Result<TaskCredentials> {
    auto c = lookup(name, false, 0);
    if (!c) return c;
    if (c->uid == 0 && !o.allow_root) {
      return fail(Errc::kInvalidArgument,
                  "tasks would run as root ('" + name + "'): that needs --allow-root-tasks");
    }
    if (c->gid == 0 && !o.allow_root) {  // group root reads what root's group may
      return fail(Errc::kInvalidArgument, "user '" + name +
                                              "' has group root (gid 0): tasks would run "
                                              "with it; that needs --allow-root-tasks");
    }
    c->drop = c->uid != 0;
    return c;
  };
  TaskUsers u;
  u.root_tasks = o.allow_root;
  if (!o.user.empty()) {
    auto c = resolve(o.user);
    if (!c) return std::unexpected(c.error());
    u.standard = *c;
  } else if (o.allow_root) {
    auto c = resolve("root");
    if (!c) return std::unexpected(c.error());
    u.standard = *c;
  } else {
    auto c = resolve(kDefaultTaskUser);
    if (!c && c.error().code == Errc::kNotFound) c = resolve(kFallbackTaskUser);
    if (!c) {
      return fail(Errc::kNotFound, std::string("no unprivileged user for tasks: create '") +
                                       kDefaultTaskUser + "' or pass --task-user USER");
    }
    u.standard = *c;
  }
  u.allowed.push_back(u.standard);
  for (const std::string& name : o.allowed) {
    auto c = resolve(name);
    if (!c) return std::unexpected(c.error());
    bool seen = std::any_of(u.allowed.begin(), u.allowed.end(),
                            [&](const TaskCredentials& a) { return a.name == c->name; });
    if (!seen) u.allowed.push_back(*c);
  }
  return u;
}

}  // namespace cardnode::runtime
