#include "proto/text.h"

#include <algorithm>
#include <cstdint>

namespace cardnode {
namespace {

bool continuation(unsigned char c) {
  return (c & 0xC0) == 0x80;
}

void hex_byte(std::string* out, unsigned char c) {
  static constexpr char kHex[] = "0123456789abcdef";
  out->append("\\x");
  out->push_back(kHex[c >> 4]);
  out->push_back(kHex[c & 0xF]);
}

}  // namespace

size_t utf8_sequence_bytes(std::string_view s, size_t i) {
  const auto at = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = at(i);
  if (c < 0x80) return 1;
  size_t n = 0;
  // The second byte's range excludes overlong forms, surrogates and values past U+10FFFF.
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  if (at(i + 1) < lo || at(i + 1) > hi) return 0;
  for (size_t k = 2; k < n; ++k) {
    if (!continuation(at(i + k))) return 0;
  }
  return n;
}

bool is_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const size_t n = utf8_sequence_bytes(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string shown(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    const auto c = static_cast<unsigned char>(bytes[i]);
    const size_t n = utf8_sequence_bytes(bytes, i);
    if (n == 1 && c >= 0x20 && c < 0x7F) {
      if (c == '\\') out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (n >= 2 && !(c == 0xC2 && static_cast<unsigned char>(bytes[i + 1]) < 0xA0)) {
      // Any character from U+00A0 up; U+0080-U+009F (C1 controls) fall through.
      out.append(bytes.substr(i, n));
    } else {
      // One byte at a time: a C1 control shows as both of its bytes.
      hex_byte(&out, c);
      i += 1;
      continue;
    }
    i += n;
  }
  return out;
}

std::string json_quoted(std::string_view bytes) {
  std::string out = "\"";
  for (size_t i = 0; i < bytes.size();) {
    const auto c = static_cast<unsigned char>(bytes[i]);
    const size_t n = utf8_sequence_bytes(bytes, i);
    if (n == 0) {
      out.append("\xEF\xBF\xBD");  // U+FFFD
      i += 1;
      continue;
    }
    if (n > 1) {
      out.append(bytes.substr(i, n));
      i += n;
      continue;
    }
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          out.append("\\u00");
          out.push_back("0123456789abcdef"[c >> 4]);
          out.push_back("0123456789abcdef"[c & 0xF]);
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
    i += 1;
  }
  out.push_back('"');
  return out;
}

size_t prefix_bytes(std::string_view s, size_t max_bytes) {
  if (s.size() <= max_bytes) return s.size();
  const size_t n = max_bytes;
  if (!continuation(static_cast<unsigned char>(s[n]))) return n;
  size_t k = n;
  while (k > 0 && n - k < 3 && continuation(static_cast<unsigned char>(s[k]))) --k;
  // Back to k only if a valid character starts there and runs past the cut.
  const size_t len = utf8_sequence_bytes(s, k);
  return len > 0 && k + len > n ? k : n;
}

size_t shown_prefix_bytes(std::string_view text, size_t max_bytes) {
  size_t i = 0;
  while (i < text.size()) {
    size_t unit = 1;
    if (text[i] == '\\') {
      unit = i + 1 < text.size() && text[i + 1] == '\\' ? 2 : 4;  // \\ or \xHH
    } else {
      unit = std::max<size_t>(1, utf8_sequence_bytes(text, i));
    }
    if (i + unit > max_bytes) break;
    i += unit;
  }
  return std::min(i, text.size());
}

std::optional<std::string> env_name_error(std::string_view name) {
  if (name.empty()) return "an environment variable name is empty";
  const std::string what = "environment variable name '" + shown(name) + "'";
  if (!is_utf8(name)) return what + " is not UTF-8";
  if (name.find('=') != std::string_view::npos) return what + " holds '='";
  if (name.find('\0') != std::string_view::npos) return what + " holds a NUL byte";
  return std::nullopt;
}

std::optional<std::string> job_spec_bytes_error(const pb::JobSpec& spec) {
  for (int i = 0; i < spec.command_size(); ++i) {
    if (spec.command(i).find('\0') != std::string::npos)
      return "command argument " + std::to_string(i) + " holds a NUL byte";
  }
  for (const auto& [k, v] : spec.env()) {
    if (auto e = env_name_error(k)) return e;
    if (v.find('\0') != std::string::npos)
      return "the value of environment variable " + shown(k) + " holds a NUL byte";
  }
  if (spec.cwd().find('\0') != std::string::npos) return "cwd holds a NUL byte";
  // A POSIX user name: what getpwnam can be asked, nothing a path or a shell could misread.
  constexpr size_t kUserNameBytesMax = 32;
  const std::string& user = spec.user();
  if (user.size() > kUserNameBytesMax || user.starts_with('-') ||
      user.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") !=
          std::string::npos) {
    return "user '" + shown(user) + "' is not a user name";
  }
  for (const auto& [k, v] : spec.constraints()) {
    if (!is_utf8(k) || !is_utf8(v))
      return "constraint '" + shown(k) + "=" + shown(v) + "' is not UTF-8";
  }
  return std::nullopt;
}

}  // namespace cardnode
