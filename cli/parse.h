// Parsing of the values users type on the command line. Pure; errors are one-line
// messages for the user.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "proto/error.h"

namespace cardnode::cli {

// std::llround without libm, a shared library every start of the binary would load for
// this alone (docs/PERFORMANCE.md): the nearest integer, halves away from zero. Exact for
// |v| < 2^52, which every caller's range check guarantees.
inline int64_t round_half_away(double v) {
  auto i = static_cast<int64_t>(v);  // toward zero
  const double rest = v - static_cast<double>(i);
  if (rest >= 0.5) ++i;
  if (rest <= -0.5) --i;
  return i;
}

// "512M", "1G", "1.5G", "64Mi", "100MB", "4096" (bytes). K/M/G/T are powers of 1024,
// with or without "i"/"iB"/"B"; like Slurm's --mem and Nomad's memory, not SI.
[[nodiscard]] Result<uint64_t> parse_size(std::string_view text);
// "0.5", "2", "250m" (millicores) -> millicores.
[[nodiscard]] Result<uint32_t> parse_cpu(std::string_view text);
// "90", "90s", "500ms", "5m", "2h", "1h30m" -> milliseconds.
[[nodiscard]] Result<uint64_t> parse_duration_ms(std::string_view text);

struct TaskId {
  uint64_t job = 0;
  uint32_t index = 0;
};
// "7" -> 7.0, "7.3" -> 7.3.
[[nodiscard]] Result<TaskId> parse_task_id(std::string_view text);
[[nodiscard]] Result<uint64_t> parse_job_id(std::string_view text);
// "K=V" -> (K, V); K non-empty.
[[nodiscard]] Result<std::pair<std::string, std::string>> parse_label(std::string_view text);

}  // namespace cardnode::cli
