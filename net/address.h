// HOST:PORT parsing and formatting. "0.0.0.0:7420", "127.0.0.1:0", "[::1]:7420",
// "localhost:7420" (resolved with getaddrinfo, blocking: CLI and startup only).
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "proto/error.h"

namespace cardnode::net {

struct HostPort {
  std::string host;
  uint16_t port = 0;
};

[[nodiscard]] Result<HostPort> parse_host_port(std::string_view text);
[[nodiscard]] Result<sockaddr_storage> resolve(const HostPort& hp);
std::string format_sockaddr(const sockaddr* sa);  // "127.0.0.1:41234", "[::1]:7420"
// A peer's address without its port, as raw bytes (4 or 16): the key per-source budgets
// count by. An IPv4-mapped IPv6 address is the IPv4 address. Empty for other families.
std::string source_key(const sockaddr_storage& peer);

}  // namespace cardnode::net
