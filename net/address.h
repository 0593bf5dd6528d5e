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

}  // namespace cardnode::net
