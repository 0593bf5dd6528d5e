// Who tasks run as: resolve_task_users against this machine's real user database.
#include "runtime/exec/task_user.h"

#include <gtest/gtest.h>
#include <pwd.h>
#include <unistd.h>

namespace cardnode::runtime {
namespace {

bool user_exists(const char* name) {
  return ::getpwnam(name) != nullptr;  // NOLINT(concurrency-mt-unsafe): one test thread
}

class TaskUserAsRoot : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "the rules for root need root";
  }
};

TEST_F(TaskUserAsRoot, TheDefaultIsUnprivileged) {
  auto u = resolve_task_users({});
  ASSERT_TRUE(u) << u.error().describe();
  EXPECT_NE(u->standard.uid, 0u);
  EXPECT_TRUE(u->standard.drop);
  EXPECT_FALSE(u->root_tasks);
  EXPECT_EQ(u->standard.name, user_exists(kDefaultTaskUser) ? kDefaultTaskUser : "nobody");
}

TEST_F(TaskUserAsRoot, RootNeedsAllowRootTasks) {
  for (TaskUserOptions o :
       {TaskUserOptions{.user = "root"}, TaskUserOptions{.user = "nobody", .allowed = {"root"}}}) {
    auto u = resolve_task_users(o);
    ASSERT_FALSE(u);
    EXPECT_NE(u.error().message.find("--allow-root-tasks"), std::string::npos) << u.error().message;
  }
  auto root = resolve_task_users({.allow_root = true});
  ASSERT_TRUE(root) << root.error().describe();
  EXPECT_EQ(root->standard.uid, 0u);
  EXPECT_FALSE(root->standard.drop);
  EXPECT_TRUE(root->root_tasks);
  // --allow-root-tasks with a --task-user: that user by default, root only when asked.
  auto both = resolve_task_users({.user = "nobody", .allow_root = true, .allowed = {"root"}});
  ASSERT_TRUE(both) << both.error().describe();
  EXPECT_EQ(both->standard.name, "nobody");
  auto asked = both->for_job("root");
  ASSERT_TRUE(asked);
  EXPECT_EQ(asked->uid, 0u);
}

TEST_F(TaskUserAsRoot, UnknownUsersAreNamed) {
  auto u = resolve_task_users({.user = "no-such-user-here"});
  ASSERT_FALSE(u);
  EXPECT_EQ(u.error().code, Errc::kNotFound);
  EXPECT_NE(u.error().message.find("no-such-user-here"), std::string::npos);
}

TEST_F(TaskUserAsRoot, AJobGetsOnlyWhatTheBoardAllows) {
  auto u = resolve_task_users({.user = "nobody", .allowed = {"daemon", "daemon"}});
  ASSERT_TRUE(u) << u.error().describe();
  EXPECT_EQ(u->allowed.size(), 2u);  // nobody and daemon, once
  EXPECT_EQ(u->for_job("")->name, "nobody");
  EXPECT_EQ(u->for_job("daemon")->name, "daemon");
  EXPECT_FALSE(u->for_job("root"));
  EXPECT_FALSE(u->for_job("bin"));
}

TEST(TaskUser, WithoutRootTasksRunAsThisUserAndNoOneElse) {
  TaskUsers self = task_users_self();
  EXPECT_EQ(self.standard.uid, ::geteuid());
  EXPECT_FALSE(self.standard.drop);
  if (::geteuid() == 0) GTEST_SKIP() << "the rest is for a process that is not root";
  EXPECT_TRUE(resolve_task_users({}));
  EXPECT_FALSE(resolve_task_users({.user = "nobody"}));
}

}  // namespace
}  // namespace cardnode::runtime
