#include "cli/job_json.h"

#include <charconv>
#include <cmath>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

namespace cardnode::cli {
namespace {

using Json = nlohmann::json;

Error bad(const std::string& field, const std::string& why) {
  return {Errc::kInvalidArgument, "\"" + field + "\": " + why, 0};
}

// An unsigned integer field: a JSON number, or a decimal string (how the protobuf JSON
// mapping writes 64-bit values), at most `max`.
Result<uint64_t> unsigned_value(const std::string& field, const Json& v, uint64_t max) {
  uint64_t out = 0;
  if (v.is_number_unsigned()) {
    out = v.get<uint64_t>();
  } else if (v.is_number_integer()) {
    return std::unexpected(bad(field, "must not be negative"));
  } else if (v.is_number_float()) {
    const double d = v.get<double>();
    // double(UINT64_MAX) rounds up to 2^64, which does not convert: refuse it explicitly.
    if (d < 0 || d != std::floor(d) || d > static_cast<double>(max) || d >= 0x1p64) {
      return std::unexpected(bad(field, "must be a whole number from 0 to " + std::to_string(max)));
    }
    out = static_cast<uint64_t>(d);
  } else if (v.is_string()) {
    const std::string& s = v.get_ref<const std::string&>();
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    if (s.empty() || ec != std::errc{} || end != s.data() + s.size()) {
      return std::unexpected(bad(field, "is not a whole number: \"" + s + "\""));
    }
  } else {
    return std::unexpected(bad(field, "must be a number"));
  }
  if (out > max) return std::unexpected(bad(field, "is above " + std::to_string(max)));
  return out;
}

Result<std::string> string_value(const std::string& field, const Json& v) {
  if (!v.is_string()) return std::unexpected(bad(field, "must be a string"));
  return v.get<std::string>();
}

Status string_map(const std::string& field, const Json& v,
                  google::protobuf::Map<std::string, std::string>* out) {
  if (!v.is_object()) return std::unexpected(bad(field, "must be an object of strings"));
  for (const auto& [k, item] : v.items()) {
    if (!item.is_string()) return std::unexpected(bad(field + "." + k, "must be a string"));
    (*out)[k] = item.get<std::string>();
  }
  return {};
}

// "cpuMillis" -> "cpu_millis"
std::string snake_case(const std::string& name) {
  std::string out;
  for (char c : name) {
    if (c >= 'A' && c <= 'Z') {
      out.push_back('_');
      out.push_back(static_cast<char>(c - 'A' + 'a'));
    } else {
      out.push_back(c);
    }
  }
  return out;
}

Status set_field(pb::JobSpec* spec, const std::string& field, const std::string& name,
                 const Json& v) {
  constexpr uint64_t k32 = std::numeric_limits<uint32_t>::max();
  constexpr uint64_t k64 = std::numeric_limits<uint64_t>::max();
  auto u = [&](uint64_t max) { return unsigned_value(field, v, max); };
  if (name == "name") {
    auto s = string_value(field, v);
    if (!s) return std::unexpected(s.error());
    spec->set_name(*s);
  } else if (name == "command") {
    if (!v.is_array()) return std::unexpected(bad(field, "must be an array of strings"));
    for (const Json& arg : v) {
      if (!arg.is_string()) return std::unexpected(bad(field, "must be an array of strings"));
      spec->add_command(arg.get<std::string>());
    }
  } else if (name == "count" || name == "cpu_millis" || name == "retries" || name == "priority") {
    auto n = u(k32);
    if (!n) return std::unexpected(n.error());
    const auto n32 = static_cast<uint32_t>(*n);
    if (name == "count") spec->set_count(n32);
    if (name == "cpu_millis") spec->set_cpu_millis(n32);
    if (name == "retries") spec->set_retries(n32);
    if (name == "priority") spec->set_priority(n32);
  } else if (name == "mem_bytes" || name == "timeout_ms" || name == "after") {
    auto n = u(k64);
    if (!n) return std::unexpected(n.error());
    if (name == "mem_bytes") spec->set_mem_bytes(*n);
    if (name == "timeout_ms") spec->set_timeout_ms(*n);
    if (name == "after") spec->set_after(*n);
  } else if (name == "constraints") {
    return string_map(field, v, spec->mutable_constraints());
  } else if (name == "env") {
    return string_map(field, v, spec->mutable_env());
  } else if (name == "user") {
    auto s = string_value(field, v);
    if (!s) return std::unexpected(s.error());
    spec->set_user(*s);
  } else if (name == "spread") {
    // The protobuf JSON mapping writes a bool as true/false.
    if (!v.is_boolean()) return std::unexpected(bad(field, "must be true or false"));
    spec->set_spread(v.get<bool>());
  } else if (name == "cwd") {
    auto s = string_value(field, v);
    if (!s) return std::unexpected(s.error());
    spec->set_cwd(*s);
  } else {
    return std::unexpected(bad(field, "is not a JobSpec field"));
  }
  return {};
}

}  // namespace

Result<pb::JobSpec> job_spec_from_json(std::string_view text) {
  Json doc = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return fail(Errc::kInvalidArgument, "not valid JSON");
  if (!doc.is_object()) return fail(Errc::kInvalidArgument, "not a JSON object");
  pb::JobSpec spec;
  std::set<std::string> seen;
  for (const auto& [field, v] : doc.items()) {
    const std::string name = snake_case(field);
    // Both spellings of one field is one field given twice.
    if (!seen.insert(name).second) return std::unexpected(bad(field, "is given twice"));
    if (v.is_null()) continue;  // the protobuf JSON mapping: null is the default
    if (auto st = set_field(&spec, field, name, v); !st) return std::unexpected(st.error());
  }
  return spec;
}

}  // namespace cardnode::cli
