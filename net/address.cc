#include "net/address.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>

#include <cerrno>
#include <charconv>
#include <cstring>

namespace cardnode::net {
namespace {

std::unexpected<Error> bad_address(std::string_view text, std::string_view why) {
  return fail(Errc::kInvalidArgument,
              "bad address '" + std::string(text) + "': " + std::string(why));
}

constexpr std::string_view kExpected = "expected HOST:PORT (IPv6 as [ADDR]:PORT)";

}  // namespace

Result<HostPort> parse_host_port(std::string_view text) {
  std::string_view host;
  std::string_view rest;
  if (text.starts_with('[')) {
    const size_t close = text.find(']');
    if (close == std::string_view::npos) return bad_address(text, "missing ']'");
    host = text.substr(1, close - 1);
    rest = text.substr(close + 1);
    if (!rest.starts_with(':')) return bad_address(text, kExpected);
  } else {
    const size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) return bad_address(text, kExpected);
    host = text.substr(0, colon);
    rest = text.substr(colon);
    if (host.find(':') != std::string_view::npos) return bad_address(text, kExpected);
  }
  const std::string_view port_text = rest.substr(1);
  if (host.empty()) return bad_address(text, kExpected);
  uint32_t port = 0;
  const char* end = port_text.data() + port_text.size();
  const auto [ptr, ec] = std::from_chars(port_text.data(), end, port);
  if (port_text.empty() || port_text.size() > 5 || ec != std::errc() || ptr != end ||
      port > 65535) {
    return bad_address(text, "port must be a number from 0 to 65535");
  }
  return HostPort{std::string(host), static_cast<uint16_t>(port)};
}

Result<sockaddr_storage> resolve(const HostPort& hp) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* list = nullptr;
  const std::string port = std::to_string(hp.port);
  const int rc = ::getaddrinfo(hp.host.c_str(), port.c_str(), &hints, &list);
  if (rc == EAI_SYSTEM) return fail(Errc::kUnavailable, "cannot resolve '" + hp.host + "'", errno);
  if (rc != 0) {
    return fail(Errc::kUnavailable, "cannot resolve '" + hp.host + "': " + gai_strerror(rc));
  }
  sockaddr_storage out{};
  // getaddrinfo orders results by RFC 6724 preference; the first is the one to use.
  CARDNODE_CHECK(list != nullptr && list->ai_addrlen <= sizeof out);
  std::memcpy(&out, list->ai_addr, list->ai_addrlen);
  ::freeaddrinfo(list);
  return out;
}

std::string format_sockaddr(const sockaddr* sa) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (sa->sa_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    ::inet_ntop(AF_INET, &in->sin_addr, buf, sizeof buf);
    return std::string(buf) + ":" + std::to_string(ntohs(in->sin_port));
  }
  if (sa->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    ::inet_ntop(AF_INET6, &in6->sin6_addr, buf, sizeof buf);
    std::string out = "[";  // appended, not "[" + ...: GCC 12 -Wrestrict false positive
    out.append(buf).append("]:").append(std::to_string(ntohs(in6->sin6_port)));
    return out;
  }
  return "(address family " + std::to_string(sa->sa_family) + ")";
}

std::string source_key(const sockaddr_storage& peer) {
  if (peer.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&peer);
    return std::string(reinterpret_cast<const char*>(&in->sin_addr), 4);
  }
  if (peer.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&peer);
    const auto* b = reinterpret_cast<const char*>(&in6->sin6_addr);
    if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) return std::string(b + 12, 4);
    // One host gets a whole /64 (SLAAC, privacy addresses): that is the source.
    return std::string(b, 8);
  }
  return {};
}

}  // namespace cardnode::net
