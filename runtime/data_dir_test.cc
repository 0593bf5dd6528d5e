// DataDir against real directories: what a first start makes (and with which modes), what
// later starts keep (token, node identity), the one-process lock, damaged identity files,
// and publish(). Everything a server or agent relies on before its loop starts.
#include "runtime/data_dir.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <vector>

#include "storage/test_util.h"

namespace cardnode::runtime {
namespace {

namespace fs = std::filesystem;
using storage::testing::TempDir;

std::string slurp(const std::string& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

uint32_t mode_of(const std::string& p) {
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) return 0xffffffff;
  return st.st_mode & 07777;
}

// Restores the process umask: the tests set odd ones on purpose.
class UmaskScope {
 public:
  explicit UmaskScope(mode_t m) : old_(::umask(m)) {}
  ~UmaskScope() { ::umask(old_); }

 private:
  mode_t old_;
};

TEST(DataDir, AFirstStartMakesTheDirItsTokenItsIdentityAndItsFolders) {
  TempDir tmp;
  UmaskScope wide(0);  // a careless umask must not open the token or the dir to others
  const std::string dir = tmp.path() + "/a/b/data";  // parents made too
  auto d = DataDir::open(dir, "");
  ASSERT_TRUE(d) << d.error().describe();
  EXPECT_EQ(mode_of(dir), 0700u);
  EXPECT_EQ(mode_of(dir + "/token"), 0600u);
  EXPECT_FALSE(d->token().empty());
  EXPECT_NE(slurp(dir + "/token").find(d->token()), std::string::npos);
  EXPECT_EQ(d->node_identity().size(), 32u);  // 16 random bytes in hex
  EXPECT_EQ(slurp(dir + "/node_id"), d->node_identity() + "\n");
  EXPECT_EQ(d->log_dir(), dir + "/logs");
  EXPECT_EQ(d->work_dir(), dir + "/work");
  EXPECT_TRUE(fs::is_directory(d->log_dir()));
  EXPECT_TRUE(fs::is_directory(d->work_dir()));
  EXPECT_FALSE(fs::exists(dir + "/node_id.tmp"));
}

TEST(DataDir, TokenAndIdentitySurviveARestart) {
  TempDir tmp;
  const std::string dir = tmp.path() + "/data";
  std::string token, identity;
  {
    auto d = DataDir::open(dir, "");
    ASSERT_TRUE(d) << d.error().describe();
    token = d->token();
    identity = d->node_identity();
  }
  auto again = DataDir::open(dir, "");
  ASSERT_TRUE(again) << again.error().describe();
  EXPECT_EQ(again->token(), token);
  // The identity is what makes a renamed board the same node: never remade.
  EXPECT_EQ(again->node_identity(), identity);

  TempDir other;
  auto elsewhere = DataDir::open(other.path() + "/data", "");
  ASSERT_TRUE(elsewhere);
  EXPECT_NE(elsewhere->node_identity(), identity);
  EXPECT_NE(elsewhere->token(), token);
}

TEST(DataDir, OneProcessAtATime) {
  TempDir tmp;
  const std::string dir = tmp.path() + "/data";
  std::optional<DataDir> first;
  {
    auto d = DataDir::open(dir, "");
    ASSERT_TRUE(d);
    first.emplace(std::move(*d));
  }
  // flock belongs to the open file: a second open in this same process conflicts just
  // as a second server would (after the wait a restart is given; none here).
  auto second = DataDir::open(dir, "", true, /*lock_wait_ms=*/0);
  ASSERT_FALSE(second);
  EXPECT_EQ(second.error().code, Errc::kUnavailable);
  EXPECT_NE(second.error().message.find(dir), std::string::npos);
  first.reset();
  auto third = DataDir::open(dir, "");
  EXPECT_TRUE(third) << third.error().describe();
}

// A lock held a moment longer (a dead server's child between fork and exec) is waited for.
TEST(DataDir, ALockReleasedWithinTheWaitIsTaken) {
  TempDir tmp;
  const std::string dir = tmp.path() + "/data";
  auto first = DataDir::open(dir, "");
  ASSERT_TRUE(first);
  const std::string lock = dir + "/lock";
  // A child holds its own open of the lock file, then lets go once the parent is waiting.
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  std::optional<DataDir> held(std::move(*first));
  held.reset();
  pid_t child = ::fork();
  if (child == 0) {
    int fd = ::open(lock.c_str(), O_RDWR);
    if (fd < 0 || ::flock(fd, LOCK_EX) != 0) ::_exit(1);
    char c = 1;
    (void)!::write(ready[1], &c, 1);
    ::usleep(300 * 1000);  // the parent's open is waiting on the lock meanwhile
    ::_exit(0);            // exit releases the lock
  }
  ::close(ready[1]);
  char c = 0;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);  // the child holds it now
  ::close(ready[0]);
  auto second = DataDir::open(dir, "", true, /*lock_wait_ms=*/60'000);
  EXPECT_TRUE(second) << second.error().describe();
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

TEST(DataDir, AnAgentIsGivenItsTokenAndMakesNone) {
  TempDir tmp;
  const std::string dir = tmp.path() + "/agent";
  auto d = DataDir::open(dir, "", /*make_token=*/false);
  ASSERT_TRUE(d) << d.error().describe();
  EXPECT_TRUE(d->token().empty());
  EXPECT_FALSE(fs::exists(dir + "/token"));
  EXPECT_EQ(d->node_identity().size(), 32u);
}

TEST(DataDir, ADamagedIdentityIsRefusedAndLeftForTheOperator) {
  TempDir tmp;
  const std::string dir = tmp.path() + "/data";
  fs::create_directories(dir);
  const std::vector<std::string> damaged = {"Not An Id!\n", "", std::string(200, 'a') + "\n",
                                            "ab/../cd\n"};
  for (const std::string& bad : damaged) {
    std::ofstream(dir + "/node_id", std::ios::trunc) << bad;
    auto d = DataDir::open(dir, "");
    ASSERT_FALSE(d) << "accepted " << bad;
    EXPECT_EQ(d.error().code, Errc::kCorruption);
    // A new identity would make this board a stranger to its own history: keep the file.
    EXPECT_EQ(slurp(dir + "/node_id"), bad);
  }
  // An identity written by hand (or by an older version) with trailing space is fine.
  std::ofstream(dir + "/node_id", std::ios::trunc) << "pi-kitchen-7 \n";
  auto d = DataDir::open(dir, "");
  ASSERT_TRUE(d) << d.error().describe();
  EXPECT_EQ(d->node_identity(), "pi-kitchen-7");
}

TEST(DataDir, LogDirCanLiveElsewhere) {
  TempDir tmp;
  const std::string logs = tmp.path() + "/usb/cardnode-logs";
  auto d = DataDir::open(tmp.path() + "/data", logs);
  ASSERT_TRUE(d) << d.error().describe();
  EXPECT_EQ(d->log_dir(), logs);
  EXPECT_TRUE(fs::is_directory(logs));
  EXPECT_FALSE(fs::exists(tmp.path() + "/data/logs"));
  // Tasks run as another user: they must not read other tasks' logs there.
  EXPECT_EQ(fs::status(logs).permissions() & fs::perms::all, fs::perms::owner_all);
}

TEST(DataDir, AnOperatorsPermissionsOnAnExistingDirAreKept) {
  TempDir tmp;
  const std::string dir = tmp.path() + "/data";
  fs::create_directories(dir);
  ::chmod(dir.c_str(), 0750);
  auto d = DataDir::open(dir, "");
  ASSERT_TRUE(d);
  EXPECT_EQ(mode_of(dir), 0750u);
}

TEST(DataDir, PublishReplacesTheFileWhole) {
  TempDir tmp;
  auto d = DataDir::open(tmp.path() + "/data", "");
  ASSERT_TRUE(d);
  ASSERT_TRUE(d->publish("addr", "127.0.0.1:7070 metrics_addr=127.0.0.1:9100\n"));
  EXPECT_EQ(slurp(d->path() + "/addr"), "127.0.0.1:7070 metrics_addr=127.0.0.1:9100\n");
  ASSERT_TRUE(d->publish("addr", "x\n"));  // shorter: no tail of the old content
  EXPECT_EQ(slurp(d->path() + "/addr"), "x\n");
  EXPECT_FALSE(fs::exists(d->path() + "/addr.tmp"));
}

TEST(DataDir, AFileWhereTheDirShouldBeIsAClearError) {
  TempDir tmp;
  const std::string dir = tmp.path() + "/data";
  std::ofstream(dir) << "not a directory";
  auto d = DataDir::open(dir, "");
  ASSERT_FALSE(d);
  EXPECT_NE(d.error().describe().find(dir), std::string::npos) << d.error().describe();
}

}  // namespace
}  // namespace cardnode::runtime
