// favordynmods: mountinfo parsing, the decisions taken from a fake mountinfo file, and,
// as root, the real cgroup2 mount of this machine: turned on (or found on) with every
// option it had kept. Skipped where the kernel or the namespace does not allow it.
#include "runtime/exec/cgroup_mode.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace cardnode::runtime {
namespace {

namespace fs = std::filesystem;

constexpr const char* kHybrid =
    "22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw\n"
    "26 22 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755\n"
    "27 26 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - "
    "cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n"
    "30 26 0:27 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:13 - cgroup "
    "cgroup rw,memory\n";

std::string temp_file(const std::string& text) {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base != nullptr ? base : "/tmp") + "/mountinfo.XXXXXX";
  int fd = ::mkstemp(tmpl.data());
  EXPECT_GE(fd, 0);
  if (fd >= 0) ::close(fd);
  std::ofstream(tmpl) << text;
  return tmpl;
}

// The tests that switch the host's cgroup2 flag (this one and
// tests/e2e_privilege_test.cc) hold this lock, so ctest -j never runs them at once.
class HostFlagLock {
 public:
  HostFlagLock() : fd_(::open(kCgroup2FlagLock, O_RDWR | O_CREAT | O_CLOEXEC, 0600)) {
    if (fd_ >= 0) (void)::flock(fd_, LOCK_EX);
  }
  ~HostFlagLock() {
    if (fd_ >= 0) ::close(fd_);
  }
  HostFlagLock(const HostFlagLock&) = delete;
  HostFlagLock& operator=(const HostFlagLock&) = delete;

 private:
  int fd_;
};

std::string cgroup2_options() {
  std::ifstream in("/proc/self/mountinfo");
  std::stringstream ss;
  ss << in.rdbuf();
  for (const MountEntry& m : parse_mountinfo(ss.str())) {
    if (m.fs_type == "cgroup2") return m.super_options;
  }
  return {};
}

TEST(CgroupModeTest, ParsesMountinfoLines) {
  std::string text = std::string(kHybrid) +
                     "garbage without a separator\n"
                     "31 26 0:28 / /mnt/with\\040space rw - ext4 /dev/sda1 rw,errors=remount-ro\n";
  auto m = parse_mountinfo(text);
  ASSERT_EQ(m.size(), 5u);
  EXPECT_EQ(m[2].mount_point, "/sys/fs/cgroup/unified");
  EXPECT_EQ(m[2].fs_type, "cgroup2");
  EXPECT_EQ(m[2].super_options, "rw,nsdelegate,memory_recursiveprot");
  EXPECT_EQ(m[3].fs_type, "cgroup");
  EXPECT_EQ(m[4].mount_point, "/mnt/with space");
  EXPECT_EQ(parse_mountinfo(text, 2).size(), 2u);
}

TEST(CgroupModeTest, OptionsMatchWholeWords) {
  EXPECT_TRUE(has_mount_option("rw,favordynmods", "favordynmods"));
  EXPECT_TRUE(has_mount_option("favordynmods", "favordynmods"));
  EXPECT_FALSE(has_mount_option("rw,nofavordynmods", "favordynmods"));
  EXPECT_FALSE(has_mount_option("rw,favordynmods2", "favordynmods"));
  EXPECT_FALSE(has_mount_option("", "favordynmods"));
}

TEST(CgroupModeTest, AV1OnlySystemHasNothingToSwitch) {
  std::string f =
      temp_file("30 26 0:27 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n");
  DynmodsOutcome o = favor_dynamic_moves(f);
  EXPECT_EQ(o.result, DynmodsResult::kNoCgroup2);
  EXPECT_NE(describe(o).find("no cgroup2 mount"), std::string::npos);
  fs::remove(f);
}

TEST(CgroupModeTest, AMountThatHasItIsLeftAlone) {
  // The mount point does not exist: touching it would fail, so success means untouched.
  std::string f = temp_file(
      "27 26 0:24 / /nonexistent/cgroup2 rw - cgroup2 cgroup2 rw,nsdelegate,favordynmods\n");
  DynmodsOutcome o = favor_dynamic_moves(f);
  EXPECT_EQ(o.result, DynmodsResult::kAlreadyOn);
  EXPECT_EQ(o.mount_point, "/nonexistent/cgroup2");
  fs::remove(f);
}

TEST(CgroupModeTest, AFailureIsAValueThatNamesTheStep) {
  std::string f =
      temp_file("27 26 0:24 / /nonexistent/cgroup2 rw - cgroup2 cgroup2 rw,nsdelegate\n");
  std::string features = temp_file("nsdelegate\nfavordynmods\n");
  DynmodsOutcome o = set_favor_dynamic_moves(true, f, features);
  EXPECT_NE(o.result, DynmodsResult::kTurnedOn);
  EXPECT_NE(o.result, DynmodsResult::kAlreadyOn);
  EXPECT_NE(o.detail.find("/nonexistent/cgroup2"), std::string::npos) << o.detail;
  EXPECT_NE(describe(o).find("may wait"), std::string::npos);
  fs::remove(f);
  fs::remove(features);

  o = favor_dynamic_moves("/nonexistent/mountinfo");
  EXPECT_EQ(o.result, DynmodsResult::kFailed);
}

// The real mount: turned on (from off: a host where it was on is switched off first), no
// option it had is lost, and the host is left as it was found (a cgroup2 reconfigure
// clears the flags it is not given, e.g. systemd's nsdelegate).
TEST(CgroupModeTest, TheRealMountGetsItAndKeepsItsOptions) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  HostFlagLock lock;
  const std::string before = cgroup2_options();
  if (before.empty()) GTEST_SKIP() << "no cgroup2 mount here";
  const bool was_on = has_mount_option(before, "favordynmods");
  auto cannot = [](const DynmodsOutcome& o) {
    return o.result == DynmodsResult::kUnsupported || o.result == DynmodsResult::kNotPermitted ||
           o.result == DynmodsResult::kIgnored;
  };
  if (was_on) {
    DynmodsOutcome off = set_favor_dynamic_moves(false);
    if (cannot(off)) GTEST_SKIP() << describe(off);
    ASSERT_EQ(off.result, DynmodsResult::kTurnedOff) << describe(off);
    EXPECT_FALSE(has_mount_option(cgroup2_options(), "favordynmods"));
  }
  const std::string off_options = cgroup2_options();
  DynmodsOutcome o = favor_dynamic_moves();
  if (cannot(o)) GTEST_SKIP() << describe(o);
  ASSERT_EQ(o.result, DynmodsResult::kTurnedOn) << describe(o);
  std::string after = cgroup2_options();
  EXPECT_TRUE(has_mount_option(after, "favordynmods")) << after;
  std::stringstream opts(off_options);
  for (std::string opt; std::getline(opts, opt, ',');) {
    EXPECT_TRUE(has_mount_option(after, opt)) << opt << " lost: " << off_options << " -> " << after;
  }
  // A second call finds it on and changes nothing.
  EXPECT_EQ(favor_dynamic_moves().result, DynmodsResult::kAlreadyOn);
  EXPECT_EQ(cgroup2_options(), after);
  if (!was_on) {
    EXPECT_EQ(set_favor_dynamic_moves(false).result, DynmodsResult::kTurnedOff);
  }
  EXPECT_EQ(cgroup2_options(), before) << "the host was not left as it was found";
}

// A kernel whose feature list lacks the option is not asked (before 6.0).
TEST(CgroupModeTest, AKernelWithoutTheFeatureIsNotAsked) {
  std::string info =
      temp_file("27 26 0:24 / /nonexistent/cgroup2 rw - cgroup2 cgroup2 rw,nsdelegate\n");
  std::string features = temp_file("nsdelegate\nmemory_localevents\n");
  DynmodsOutcome o = set_favor_dynamic_moves(true, info, features);
  EXPECT_EQ(o.result, DynmodsResult::kUnsupported);
  EXPECT_TRUE(o.detail.empty()) << "it tried the mount: " << o.detail;
  fs::remove(info);
  fs::remove(features);
}

// A mountinfo cut by the size bound never yields a half line: its options could be short.
TEST(CgroupModeTest, OnlyWholeLinesCount) {
  std::string f = temp_file("27 26 0:24 / /nonexistent/cgroup2 rw - cgroup2 cgroup2 rw,nsdeleg");
  EXPECT_EQ(favor_dynamic_moves(f).result, DynmodsResult::kNoCgroup2);
  fs::remove(f);
}

}  // namespace
}  // namespace cardnode::runtime
