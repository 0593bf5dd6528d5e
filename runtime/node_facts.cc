#include "runtime/node_facts.h"

#include <fcntl.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "storage/posix.h"

namespace cardnode::runtime {
namespace {

// Reads "Key:   123 kB" from a /proc status-style file; returns bytes.
std::optional<uint64_t> read_kb_field(const char* path, const char* key) {
  std::ifstream in(path);
  std::string line;
  const size_t key_len = std::strlen(key);
  for (int lines = 0; lines < 256 && std::getline(in, line); ++lines) {
    if (line.compare(0, key_len, key) == 0 && line.size() > key_len && line[key_len] == ':') {
      unsigned long long kb = 0;
      if (std::sscanf(line.c_str() + key_len + 1, "%llu", &kb) == 1) return kb * 1024ull;
    }
  }
  return std::nullopt;
}

// A sysfs value file: one read of at most kSysfsValueBytesMax bytes (sysfs hands a small
// attribute over whole in the first read; its st_size says 4096 whatever it holds).
std::optional<std::string> read_value_file(const std::string& path) {
  auto fd = storage::open_fd(path, O_RDONLY);
  if (!fd) return std::nullopt;
  char buf[kSysfsValueBytesMax];
  const ssize_t n = storage::retry_eintr([&] { return ::read(fd->get(), buf, sizeof(buf)); });
  if (n < 0) return std::nullopt;  // e.g. EIO/ENODATA from a sensor that is switched off
  return std::string(buf, static_cast<size_t>(n));
}

std::string_view trimmed(std::string_view s) {
  const size_t first = s.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos) return {};
  return s.substr(first, s.find_last_not_of(" \t\r\n") - first + 1);
}

std::optional<int32_t> hottest_zone(const std::string& root) {
  auto names = storage::list_dir(root + kThermalDir, kThermalDirEntriesMax);
  if (!names) return std::nullopt;
  std::sort(names->begin(), names->end());  // the same zones each time, when over the bound
  std::optional<int32_t> hottest;
  uint32_t zones = 0;
  for (const std::string& name : *names) {
    if (!name.starts_with("thermal_zone")) continue;
    if (++zones > kThermalZonesMax) break;
    auto text = read_value_file(root + kThermalDir + "/" + name + "/temp");
    if (!text) continue;
    auto milli = parse_thermal_temp(*text);
    if (milli && (!hottest || *milli > *hottest)) hottest = milli;
  }
  return hottest;
}

}  // namespace

std::optional<int32_t> parse_thermal_temp(std::string_view text) {
  const std::string_view t = trimmed(text);
  int32_t v = 0;
  auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
  if (t.empty() || ec != std::errc() || end != t.data() + t.size()) return std::nullopt;
  if (v < kTemperatureMinMillicelsius || v > kTemperatureMaxMillicelsius) return std::nullopt;
  return v;
}

std::optional<uint32_t> parse_get_throttled(std::string_view text) {
  std::string_view t = trimmed(text);
  if (t.starts_with("throttled=")) t.remove_prefix(10);  // vcgencmd's form, if copied over
  if (t.starts_with("0x") || t.starts_with("0X")) t.remove_prefix(2);
  uint32_t v = 0;
  auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), v, 16);
  if (t.empty() || ec != std::errc() || end != t.data() + t.size()) return std::nullopt;
  return v;
}

std::optional<uint32_t> parse_loadavg_milli(std::string_view text) {
  std::string_view t = trimmed(text);
  t = t.substr(0, t.find_first_of(" \t"));
  const size_t dot = t.find('.');
  const std::string_view whole = t.substr(0, dot);
  std::string_view frac = dot == std::string_view::npos ? std::string_view{} : t.substr(dot + 1);
  uint32_t w = 0;
  auto [end, ec] = std::from_chars(whole.data(), whole.data() + whole.size(), w);
  if (whole.empty() || ec != std::errc() || end != whole.data() + whole.size()) return std::nullopt;
  if (w > 4000) return std::nullopt;
  uint32_t milli = w * 1000;
  uint32_t scale = 100;
  for (char ch : frac) {  // the kernel prints two decimals; more are cut, not rounded
    if (ch < '0' || ch > '9') return std::nullopt;
    milli += static_cast<uint32_t>(ch - '0') * scale;
    scale /= 10;
  }
  if (dot != std::string_view::npos && frac.empty()) return std::nullopt;
  return milli;
}

std::string sysfs_root() {
  const char* env = std::getenv(kSysfsRootEnv);
  return env != nullptr && env[0] != '\0' ? env : "/";
}

BoardHeat read_board_heat(const std::string& root) {
  // "/" and "/tmp/x/" both work: the paths below start with '/'.
  std::string base = root;
  while (!base.empty() && base.back() == '/') base.pop_back();
  BoardHeat h;
  h.temperature_millicelsius = hottest_zone(base);
  if (auto text = read_value_file(base + kGetThrottledPath)) {
    if (auto bits = parse_get_throttled(*text)) {
      h.under_voltage = (*bits & kUnderVoltageNowBit) != 0;
      h.throttled = (*bits & kThrottledNowBits) != 0;
    }
  }
  if (auto text = read_value_file(base + kLoadavgPath)) h.load1_milli = parse_loadavg_milli(*text);
  return h;
}

NodeFacts read_node_facts() {
  NodeFacts f;
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) == 0) f.hostname = host;
  struct utsname u {};
  if (uname(&u) == 0) f.arch = u.machine;
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  f.cpu_millis = static_cast<uint32_t>(cpus > 0 ? cpus : 1) * 1000u;
  f.mem_bytes = read_kb_field("/proc/meminfo", "MemTotal").value_or(0);
  std::ifstream model("/proc/device-tree/model");
  if (std::getline(model, f.board_model, '\0') && f.board_model.size() > 128) {
    f.board_model.resize(128);
  }
  return f;
}

uint64_t resident_bytes() {
  return read_kb_field("/proc/self/status", "VmRSS").value_or(0);
}

std::optional<uint64_t> process_start_ticks(int32_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(in, stat)) return std::nullopt;
  // comm (field 2) may contain spaces and parentheses: fields resume after the last ')'.
  size_t close = stat.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream rest(stat.substr(close + 2));
  std::string field;
  // Field 3 is the first after ')'; field 22 is the 20th from there.
  for (int i = 3; i < 22; ++i)
    if (!(rest >> field)) return std::nullopt;
  unsigned long long ticks = 0;
  if (!(rest >> ticks)) return std::nullopt;
  return ticks;
}

}  // namespace cardnode::runtime
