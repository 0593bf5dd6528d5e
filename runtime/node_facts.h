// Facts about this board, read from /proc and /sys: what `nodes` shows and what the
// scheduler's capacity is built from. Blocking reads of virtual files (no disk I/O).
//
// Two kinds: NodeFacts, read once at start (they do not move), and BoardHeat, read again
// with every heartbeat (the agent's, and the server's own board on the same period): the
// temperature and the firmware's throttle flags, which decide whether the board takes new
// tasks (scheduler/heat.h), and the 1-minute load average, which is only shown (`nodes`).
//
// BoardHeat is read under a root directory, "/" on a real board: CARDNODE_SYSFS_ROOT names
// another (a test's fake tree). Every file is optional and read bounded; what cannot be
// read or parsed is skipped, never an error: a board without a sensor is a board.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "proto/error.h"

namespace cardnode::runtime {

struct NodeFacts {
  std::string hostname;
  std::string arch;         // uname -m: aarch64, armv7l, x86_64
  uint32_t cpu_millis = 0;  // online CPUs x 1000
  uint64_t mem_bytes = 0;   // MemTotal
  std::string board_model;  // /proc/device-tree/model, when present
};

NodeFacts read_node_facts();

// Environment variable naming the root BoardHeat is read under (default "/").
inline constexpr const char* kSysfsRootEnv = "CARDNODE_SYSFS_ROOT";
// Under the root: ROOT/sys/class/thermal/thermal_zone*/temp (millidegrees Celsius, one
// integer) and, on a Raspberry Pi, ROOT/sys/devices/platform/soc/soc:firmware/get_throttled
// (a hex bitmask, as `vcgencmd get_throttled` prints it without "throttled=").
// And ROOT/proc/loadavg ("0.52 0.58 0.59 1/389 12345"): its first field.
inline constexpr const char* kThermalDir = "/sys/class/thermal";
inline constexpr const char* kLoadavgPath = "/proc/loadavg";
inline constexpr const char* kGetThrottledPath =
    "/sys/devices/platform/soc/soc:firmware/get_throttled";
inline constexpr uint32_t kThermalDirEntriesMax = 4096;  // listed (zones and cooling devices)
inline constexpr uint32_t kThermalZonesMax = 64;         // zones read per refresh
inline constexpr size_t kSysfsValueBytesMax = 64;        // read of one value file
// Readings outside this are a sensor's error code, not a temperature: skipped.
inline constexpr int32_t kTemperatureMinMillicelsius = -60'000;
inline constexpr int32_t kTemperatureMaxMillicelsius = 200'000;

// get_throttled's "now" bits (16-19 are the same, "has occurred since boot": ignored).
// Throttled: bit 1 arm frequency capped, bit 2 throttled, bit 3 soft temperature limit.
inline constexpr uint32_t kUnderVoltageNowBit = 1u << 0;
inline constexpr uint32_t kThrottledNowBits = (1u << 1) | (1u << 2) | (1u << 3);

struct BoardHeat {
  std::optional<int32_t> temperature_millicelsius;  // the hottest zone that could be read
  bool throttled = false;                           // any of kThrottledNowBits
  bool under_voltage = false;                       // kUnderVoltageNowBit
  std::optional<uint32_t> load1_milli;              // 1-minute load average x 1000
  bool operator==(const BoardHeat&) const = default;
};

// $CARDNODE_SYSFS_ROOT when set and not empty, else "/".
std::string sysfs_root();
BoardHeat read_board_heat(const std::string& root);
// The parsers, for tests: nullopt for what is not a value of that file.
std::optional<int32_t> parse_thermal_temp(std::string_view text);
std::optional<uint32_t> parse_get_throttled(std::string_view text);
// The first field of /proc/loadavg x 1000 ("0.52 ..." -> 520); at most 4'000'000 (a load
// of 4000, far above any board's), beyond that not a load.
std::optional<uint32_t> parse_loadavg_milli(std::string_view text);

// Resident set size of this process (VmRSS), in bytes; 0 if unreadable.
uint64_t resident_bytes();
// Field 22 of /proc/PID/stat (start time in clock ticks): tells a reused pid apart.
std::optional<uint64_t> process_start_ticks(int32_t pid);

}  // namespace cardnode::runtime
