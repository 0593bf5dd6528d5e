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
// A peer's address without its port, as raw bytes: the key per-source budgets count by.
// IPv4: the address (4 bytes; IPv4-mapped IPv6 too). IPv6: its /64 prefix (8 bytes), since
// one host can use a whole /64. Empty for other families.
std::string source_key(const sockaddr_storage& peer);

}  // namespace cardnode::net
