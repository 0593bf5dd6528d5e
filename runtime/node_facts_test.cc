// BoardHeat from a fake sysfs tree in a temp dir, as CARDNODE_SYSFS_ROOT points a real
// board's reader at one: several thermal zones (the hottest wins), zones that cannot be
// read or say nothing sensible (skipped), and the Raspberry Pi firmware's get_throttled.
#include "runtime/node_facts.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>

#include "storage/test_util.h"

namespace cardnode::runtime {
namespace {

namespace fs = std::filesystem;

class FakeSysfs : public ::testing::Test {
 protected:
  std::string root() const { return dir_.path(); }
  void write(const std::string& rel, const std::string& text) {
    const fs::path p = fs::path(root()) / rel;
    fs::create_directories(p.parent_path());
    std::ofstream(p) << text;
  }
  void zone(int i, const std::string& text) {
    write("sys/class/thermal/thermal_zone" + std::to_string(i) + "/temp", text);
  }
  void throttled(const std::string& text) {
    write("sys/devices/platform/soc/soc:firmware/get_throttled", text);
  }
  BoardHeat read() const { return read_board_heat(root()); }

  storage::testing::TempDir dir_;
};

TEST_F(FakeSysfs, NoThermalZonesAndNoFirmwareMeanNothingKnownAndNothingHeld) {
  EXPECT_EQ(read(), BoardHeat{});
  fs::create_directories(root() + "/sys/class/thermal");
  EXPECT_EQ(read(), BoardHeat{});
}

TEST_F(FakeSysfs, TheHottestOfSeveralZonesIsTheBoardsTemperature) {
  zone(0, "45000\n");
  zone(1, "61234\n");
  zone(2, "50000\n");
  // Cooling devices share the directory and have no temp: ignored.
  write("sys/class/thermal/cooling_device0/cur_state", "3\n");
  EXPECT_EQ(read().temperature_millicelsius, 61'234);
}

TEST_F(FakeSysfs, UnreadableAndNonsenseZonesAreSkipped) {
  zone(0, "52000\n");
  fs::create_directories(root() + "/sys/class/thermal/thermal_zone1");       // no temp file
  fs::create_directories(root() + "/sys/class/thermal/thermal_zone2/temp");  // EISDIR on read
  zone(3, "hot\n");
  zone(4, "");
  zone(5, "71.5\n");
  zone(6, "99999999999999\n");  // does not fit
  zone(7, "250000\n");          // a sensor's error value, not 250 C
  zone(8, "-274000\n");
  zone(9, "80000 90000\n");
  EXPECT_EQ(read().temperature_millicelsius, 52'000);
  // All of them bad: unknown, not zero.
  fs::remove_all(root() + "/sys/class/thermal/thermal_zone0");
  EXPECT_EQ(read().temperature_millicelsius, std::nullopt);
}

TEST_F(FakeSysfs, ATemperatureChangeIsSeenOnTheNextRead) {
  zone(0, "85000\n");
  EXPECT_EQ(read().temperature_millicelsius, 85'000);
  zone(0, "70000\n");
  EXPECT_EQ(read().temperature_millicelsius, 70'000);
}

TEST_F(FakeSysfs, OnlyTheFirmwaresNowBitsCount) {
  struct Case {
    const char* text;
    bool throttled, under_voltage;
  };
  for (const Case& c :
       {Case{"0x0\n", false, false}, Case{"0x1\n", false, true}, Case{"0x2\n", true, false},
        Case{"0x4\n", true, false}, Case{"0x8\n", true, false}, Case{"0x50000\n", false, false},
        Case{"0xf0000\n", false, false}, Case{"0x50005\n", true, true},
        Case{"throttled=0x4\n", true, false}, Case{"6", true, false},
        Case{"nonsense\n", false, false}, Case{"", false, false}}) {
    throttled(c.text);
    const BoardHeat h = read();
    EXPECT_EQ(h.throttled, c.throttled) << c.text;
    EXPECT_EQ(h.under_voltage, c.under_voltage) << c.text;
  }
}

TEST_F(FakeSysfs, TheRootMayEndInASlash) {
  zone(0, "40000");
  throttled("0x1");
  const BoardHeat h = read_board_heat(root() + "/");
  EXPECT_EQ(h.temperature_millicelsius, 40'000);
  EXPECT_TRUE(h.under_voltage);
}

TEST_F(FakeSysfs, ZonesPastTheBoundAreNotRead) {
  for (uint32_t i = 0; i < kThermalZonesMax + 10; ++i) zone(static_cast<int>(i), "30000\n");
  EXPECT_EQ(read().temperature_millicelsius, 30'000);
}

TEST_F(FakeSysfs, TheLoadAverageIsTheFirstFieldOfLoadavgInThousandths) {
  EXPECT_EQ(read().load1_milli, std::nullopt);  // no file: unknown, not zero
  write("proc/loadavg", "0.52 0.58 0.59 1/389 12345\n");
  EXPECT_EQ(read().load1_milli, 520u);
  write("proc/loadavg", "12.07 3.00 1.00 4/400 99\n");
  EXPECT_EQ(read().load1_milli, 12'070u);
  write("proc/loadavg", "nonsense\n");
  EXPECT_EQ(read().load1_milli, std::nullopt);
}

TEST(ParseLoadavg, AcceptsTheKernelsFormOnly) {
  EXPECT_EQ(parse_loadavg_milli("0.00 0.01 0.05 1/2 3"), 0u);
  EXPECT_EQ(parse_loadavg_milli("3 1 1"), 3000u);
  EXPECT_EQ(parse_loadavg_milli("1.5"), 1500u);
  EXPECT_EQ(parse_loadavg_milli("1.23456"), 1234u);
  for (const char* bad : {"", "-1.00", "1.", ".5", "1.x", "4001.00", "99999999999.0"})
    EXPECT_EQ(parse_loadavg_milli(bad), std::nullopt) << bad;
}

TEST(SysfsRoot, TheEnvironmentNamesItElseSlash) {
  ::unsetenv(kSysfsRootEnv);
  EXPECT_EQ(sysfs_root(), "/");
  ::setenv(kSysfsRootEnv, "", 1);
  EXPECT_EQ(sysfs_root(), "/");
  ::setenv(kSysfsRootEnv, "/tmp/fake", 1);
  EXPECT_EQ(sysfs_root(), "/tmp/fake");
  ::unsetenv(kSysfsRootEnv);
}

TEST(HeatParsers, AcceptOnlyWholeValues) {
  EXPECT_EQ(parse_thermal_temp("45000\n"), 45'000);
  EXPECT_EQ(parse_thermal_temp("  45000  "), 45'000);
  EXPECT_EQ(parse_thermal_temp("-5000"), -5'000);
  EXPECT_EQ(parse_thermal_temp(""), std::nullopt);
  EXPECT_EQ(parse_thermal_temp("45000x"), std::nullopt);
  EXPECT_EQ(parse_get_throttled("0x80008"), 0x80008u);
  EXPECT_EQ(parse_get_throttled("0X1"), 1u);
  EXPECT_EQ(parse_get_throttled("0x"), std::nullopt);
  EXPECT_EQ(parse_get_throttled("0x1g"), std::nullopt);
  EXPECT_EQ(parse_get_throttled("0x1ffffffff"), std::nullopt);  // wider than the mask
}

}  // namespace
}  // namespace cardnode::runtime
