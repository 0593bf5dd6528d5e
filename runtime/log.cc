#include "runtime/log.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <string>

namespace cardnode::runtime {
namespace {

std::atomic<int> g_min_level{static_cast<int>(Level::kInfo)};

const char* level_name(Level l) {
  switch (l) {
    case Level::kDebug: return "DEBUG";
    case Level::kInfo: return "INFO ";
    case Level::kWarn: return "WARN ";
    case Level::kError: return "ERROR";
  }
  return "?";
}

}  // namespace

void set_log_level(Level min) {
  g_min_level = static_cast<int>(min);
}

void log(Level level, std::string_view module, std::string_view message) {
  if (static_cast<int>(level) < g_min_level) return;
  auto now = std::chrono::system_clock::now();
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
  std::time_t secs = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char stamp[96];  // ample for any int the compiler imagines in tm fields
  (void)std::snprintf(stamp, sizeof(stamp), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
                      tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                      tm.tm_sec, static_cast<int>(ms % 1000));
  std::string line;
  line.reserve(64 + message.size());
  line.append(stamp).append(" ").append(level_name(level)).append(" ");
  line.append(module).append(": ").append(message).append("\n");
  // Best effort: a log line that cannot be written is not worth failing for.
  ssize_t ignored = ::write(STDERR_FILENO, line.data(), line.size());
  (void)ignored;
}

}  // namespace cardnode::runtime
