// User text on Linux is bytes: argv, environment values and paths need not be UTF-8, so the
// schema carries them as `bytes` (proto/cardnode.proto). This is the one rule for showing
// such bytes (docs/CLI.md, "Bytes in commands") and for checking what must stay a protobuf
// `string` (which protobuf requires to be UTF-8: env names, constraints).
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "cardnode.pb.h"

namespace cardnode {

// Bytes in the valid UTF-8 sequence that starts at s[i] (1-4); 0 if none starts there
// (a stray continuation byte, an overlong form, a surrogate, above U+10FFFF, cut short).
size_t utf8_sequence_bytes(std::string_view s, size_t i);
bool is_utf8(std::string_view s);

// For tables and log lines (bash's $'...' notation): printable ASCII and valid UTF-8
// characters from U+00A0 up as they are, a backslash as \\, every other byte (control
// bytes, DEL, C1 controls, bytes that are not UTF-8) as \xHH. One line, always UTF-8.
std::string shown(std::string_view bytes);

// A JSON string literal, quotes included: valid UTF-8 as it is (", \ and control
// characters escaped the JSON way); each byte that is not part of a valid UTF-8 sequence
// becomes U+FFFD. Always parses.
std::string json_quoted(std::string_view bytes);

// The longest prefix of s of at most max_bytes that does not split a valid UTF-8
// character; backs up at most 3 bytes, so bytes that are not UTF-8 are cut at the budget.
size_t prefix_bytes(std::string_view s, size_t max_bytes);

// As prefix_bytes, for text from shown(): does not split an escape either.
size_t shown_prefix_bytes(std::string_view shown_text, size_t max_bytes);

// Why `name` cannot name an environment variable, or nullopt: it must be non-empty,
// UTF-8 (a protobuf map key) and hold no '=' or NUL.
std::optional<std::string> env_name_error(std::string_view name);

// What in a job spec a task could not be given as it is, or nullopt: an env name (above),
// a NUL byte in an argument, env value or cwd (execve would cut there), a constraint that
// is not UTF-8. One line, for the user; checked by the client and again by the server.
std::optional<std::string> job_spec_bytes_error(const pb::JobSpec& spec);

}  // namespace cardnode
