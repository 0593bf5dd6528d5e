// Log lines on stderr: "2026-11-28T16:40:00.123Z INFO  server: listening on 0.0.0.0:7420".
// One write(2) per line, so lines from the exposer thread never interleave mid-line.
#pragma once

#include <string_view>

namespace cardnode::runtime {

enum class Level { kDebug, kInfo, kWarn, kError };

void set_log_level(Level min);
void log(Level level, std::string_view module, std::string_view message);

}  // namespace cardnode::runtime
