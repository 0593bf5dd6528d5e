// favordynmods: mountinfo parsing, the decisions taken from a fake mountinfo file, and,
// as root, the real cgroup2 mount of this machine: turned on (or found on) with every
// option it had kept. Skipped where the kernel or the namespace does not allow it.
#include "runtime/exec/cgroup_mode.h"

#include <gtest/gtest.h>
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
  DynmodsOutcome o = favor_dynamic_moves(f);
  EXPECT_NE(o.result, DynmodsResult::kTurnedOn);
  EXPECT_NE(o.result, DynmodsResult::kAlreadyOn);
  EXPECT_NE(o.detail.find("/nonexistent/cgroup2"), std::string::npos) << o.detail;
  EXPECT_NE(describe(o).find("may wait"), std::string::npos);
  fs::remove(f);

  o = favor_dynamic_moves("/nonexistent/mountinfo");
  EXPECT_EQ(o.result, DynmodsResult::kFailed);
}

// The real mount: on, and no option it had before is lost (a cgroup2 reconfigure clears
// the flags it is not given, e.g. systemd's nsdelegate).
TEST(CgroupModeTest, TheRealMountGetsItAndKeepsItsOptions) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  std::string before = cgroup2_options();
  if (before.empty()) GTEST_SKIP() << "no cgroup2 mount here";
  DynmodsOutcome o = favor_dynamic_moves();
  if (o.result == DynmodsResult::kUnsupported || o.result == DynmodsResult::kNotPermitted)
    GTEST_SKIP() << describe(o);
  ASSERT_TRUE(o.result == DynmodsResult::kTurnedOn || o.result == DynmodsResult::kAlreadyOn)
      << describe(o);
  std::string after = cgroup2_options();
  EXPECT_TRUE(has_mount_option(after, "favordynmods")) << after;
  std::stringstream opts(before);
  for (std::string opt; std::getline(opts, opt, ',');) {
    EXPECT_TRUE(has_mount_option(after, opt)) << opt << " lost: " << before << " -> " << after;
  }
  // A second call finds it on and changes nothing.
  EXPECT_EQ(favor_dynamic_moves().result, DynmodsResult::kAlreadyOn);
  EXPECT_EQ(cgroup2_options(), after);
}

}  // namespace
}  // namespace cardnode::runtime
