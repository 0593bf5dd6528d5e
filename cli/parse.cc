#include "cli/parse.h"

#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdlib>

namespace cardnode::cli {
namespace {

// Leading decimal number (digits with an optional fraction); the rest is the unit.
bool split_number(std::string_view text, double* value, std::string_view* unit) {
  size_t i = 0;
  bool digits = false;
  while (i < text.size() && ((text[i] >= '0' && text[i] <= '9') || text[i] == '.')) {
    digits |= text[i] != '.';
    ++i;
  }
  if (!digits || i > 32) return false;
  std::string num(text.substr(0, i));
  char* end = nullptr;
  *value = std::strtod(num.c_str(), &end);
  if (end != num.c_str() + num.size() || !std::isfinite(*value)) return false;
  *unit = text.substr(i);
  return true;
}

std::string quoted(std::string_view s) {
  return "'" + std::string(s) + "'";
}

}  // namespace

Result<uint64_t> parse_size(std::string_view text) {
  double v = 0;
  std::string_view unit;
  if (!split_number(text, &v, &unit))
    return fail(Errc::kInvalidArgument, "bad size " + quoted(text) + ": expected e.g. 512M or 2G");
  std::string u(unit);
  for (char& c : u) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (u.size() >= 2 && u.back() == 'B') u.pop_back();  // "MB", "MiB" -> "M", "Mi"
  if (u.size() == 2 && u[1] == 'I') u.pop_back();
  double mult = 0;
  if (u.empty() || u == "B") {
    mult = 1;
  } else if (u == "K") {
    mult = 1024.0;
  } else if (u == "M") {
    mult = 1024.0 * 1024;
  } else if (u == "G") {
    mult = 1024.0 * 1024 * 1024;
  } else if (u == "T") {
    mult = 1024.0 * 1024 * 1024 * 1024;
  } else {
    return fail(Errc::kInvalidArgument, "bad size " + quoted(text) + ": unit must be K, M, G or T");
  }
  double bytes = v * mult;
  if (bytes < 1 || bytes > 1e18)
    return fail(Errc::kInvalidArgument, "bad size " + quoted(text) + ": out of range");
  return static_cast<uint64_t>(bytes);
}

Result<uint32_t> parse_cpu(std::string_view text) {
  double v = 0;
  std::string_view unit;
  if (!split_number(text, &v, &unit) || (unit != "" && unit != "m")) {
    return fail(Errc::kInvalidArgument,
                "bad cpu " + quoted(text) + ": expected cores, e.g. 0.5 or 2");
  }
  double millis = unit == "m" ? v : v * 1000.0;
  if (millis < 1 || millis > 1e6)
    return fail(Errc::kInvalidArgument, "bad cpu " + quoted(text) + ": out of range");
  return static_cast<uint32_t>(round_half_away(millis));
}

Result<uint64_t> parse_duration_ms(std::string_view text) {
  if (text.empty()) return fail(Errc::kInvalidArgument, "empty duration");
  double total = 0;
  std::string_view rest = text;
  for (int parts = 0; !rest.empty(); ++parts) {
    double v = 0;
    std::string_view unit;
    if (parts > 8 || !split_number(rest, &v, &unit)) {
      return fail(Errc::kInvalidArgument,
                  "bad duration " + quoted(text) + ": expected e.g. 90s, 5m, 1h30m");
    }
    size_t ulen = 0;
    while (ulen < unit.size() && !(unit[ulen] >= '0' && unit[ulen] <= '9')) ++ulen;
    std::string_view u = unit.substr(0, ulen);
    double mult = 0;
    if (u == "ms") {
      mult = 1;
    } else if (u == "s" || (u.empty() && parts == 0 && ulen == unit.size())) {
      mult = 1000;
    } else if (u == "m") {
      mult = 60'000;
    } else if (u == "h") {
      mult = 3'600'000;
    } else if (u == "d") {
      mult = 86'400'000;
    } else {
      return fail(Errc::kInvalidArgument,
                  "bad duration " + quoted(text) + ": unit must be ms, s, m, h or d");
    }
    total += v * mult;
    rest = unit.substr(ulen);
  }
  if (total < 1 || total > 1e13)
    return fail(Errc::kInvalidArgument, "bad duration " + quoted(text) + ": out of range");
  return static_cast<uint64_t>(total);
}

Result<uint64_t> parse_job_id(std::string_view text) {
  uint64_t id = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), id);
  if (ec != std::errc() || p != text.data() + text.size() || id == 0) {
    return fail(Errc::kInvalidArgument,
                "bad job id " + quoted(text) + ": expected a number from 1");
  }
  return id;
}

Result<TaskId> parse_task_id(std::string_view text) {
  size_t dot = text.find('.');
  auto job = parse_job_id(text.substr(0, dot));
  if (!job)
    return fail(Errc::kInvalidArgument, "bad task " + quoted(text) + ": expected JOB or JOB.INDEX");
  TaskId t{*job, 0};
  if (dot != std::string_view::npos) {
    std::string_view idx = text.substr(dot + 1);
    auto [p, ec] = std::from_chars(idx.data(), idx.data() + idx.size(), t.index);
    if (idx.empty() || ec != std::errc() || p != idx.data() + idx.size()) {
      return fail(Errc::kInvalidArgument,
                  "bad task " + quoted(text) + ": expected JOB or JOB.INDEX");
    }
  }
  return t;
}

Result<std::pair<std::string, std::string>> parse_label(std::string_view text) {
  size_t eq = text.find('=');
  if (eq == std::string_view::npos || eq == 0)
    return fail(Errc::kInvalidArgument, "bad label " + quoted(text) + ": expected K=V");
  return std::make_pair(std::string(text.substr(0, eq)), std::string(text.substr(eq + 1)));
}

}  // namespace cardnode::cli
