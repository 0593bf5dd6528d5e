#include "runtime/node_facts.h"

#include <sys/utsname.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

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

}  // namespace

NodeFacts read_node_facts() {
  NodeFacts f;
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) == 0) f.hostname = host;
  struct utsname u {};
  if (uname(&u) == 0) f.arch = u.machine;
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  f.cpu_millis = static_cast<uint32_t>(cpus > 0 ? cpus : 1) * 1000u;
  f.mem_bytes = read_kb_field("/proc/meminfo", "MemTotal").value_or(0);
  std::ifstream t("/sys/class/thermal/thermal_zone0/temp");
  long long milli = 0;
  if (t >> milli) f.temperature_millicelsius = static_cast<int32_t>(milli);
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
