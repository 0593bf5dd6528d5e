#include "net/client.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <climits>
#include <cstring>
#include <optional>

#include "net/address.h"
#include "net/channel.h"

namespace cardnode::net {
namespace {

using Clock = std::chrono::steady_clock;
using Deadline = std::optional<Clock::time_point>;  // nullopt: wait forever

constexpr size_t kReadChunkBytes = 64u << 10;
// Responses to earlier calls that timed out may still arrive; skip at most this many.
constexpr uint32_t kStaleResponsesMax = 1024;

Deadline deadline_after(uint32_t timeout_ms) {
  if (timeout_ms == 0) return std::nullopt;
  return Clock::now() + std::chrono::milliseconds(timeout_ms);
}

std::unexpected<Error> timed_out(const std::string& peer) {
  return fail(Errc::kUnavailable, "timed out waiting for " + peer);
}

// The deadline passed (a failed socket call carries its errno; a timeout none).
bool is_timeout(const Error& e, const Deadline& deadline) {
  return e.sys_errno == 0 && deadline && Clock::now() >= *deadline;
}

// Waits until fd is ready for `events` or the deadline passes.
Status wait_for(int fd, short events, const Deadline& deadline, const std::string& peer) {
  for (;;) {  // repeats only on EINTR; the deadline bounds it
    int timeout_ms = -1;
    if (deadline) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(*deadline - Clock::now());
      if (left.count() <= 0) return timed_out(peer);
      timeout_ms = static_cast<int>(std::min<int64_t>(left.count(), INT_MAX));
    }
    pollfd p{fd, events, 0};
    const int rc = ::poll(&p, 1, timeout_ms);
    if (rc > 0) return {};
    if (rc == 0) return timed_out(peer);
    if (errno != EINTR) return fail(Errc::kUnavailable, "poll on connection to " + peer, errno);
  }
}

// Reads what is there (at least one byte); 0 means the server closed the connection.
Result<size_t> read_some(int fd, char* buf, size_t len, const Deadline& deadline,
                         const std::string& peer) {
  for (;;) {  // bounded by the deadline
    const ssize_t n = ::recv(fd, buf, len, 0);
    if (n >= 0) return static_cast<size_t>(n);
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      return fail(Errc::kUnavailable, "connection to " + peer + " failed", errno);
    }
    if (Status st = wait_for(fd, POLLIN, deadline, peer); !st) return std::unexpected(st.error());
  }
}

Status write_all(int fd, std::string_view data, const Deadline& deadline, const std::string& peer) {
  while (!data.empty()) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n >= 0) {
      data.remove_prefix(static_cast<size_t>(n));
      continue;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      return fail(Errc::kUnavailable, "connection to " + peer + " failed", errno);
    }
    if (Status st = wait_for(fd, POLLOUT, deadline, peer); !st) return st;
  }
  return {};
}

// Non-blocking connect bounded by the deadline. Returns the connected socket.
Result<int> connect_socket(const sockaddr_storage& addr, const Deadline& deadline,
                           const std::string& peer) {
  const int fd = ::socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail(Errc::kUnavailable, "cannot reach server at " + peer, errno);
  const socklen_t len = addr.ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
  Status st;
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), len) != 0) {
    if (errno != EINPROGRESS && errno != EINTR) {
      st = fail(Errc::kUnavailable, "cannot reach server at " + peer, errno);
    } else {
      st = wait_for(fd, POLLOUT, deadline, peer);
      int err = 0;
      socklen_t err_len = sizeof err;
      if (st && ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &err_len) != 0) err = errno;
      if (st && err != 0) st = fail(Errc::kUnavailable, "cannot reach server at " + peer, err);
    }
  }
  if (!st) {
    ::close(fd);
    return std::unexpected(st.error());
  }
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // small request frames
  return fd;
}

}  // namespace

Result<std::unique_ptr<Client>> Client::connect(const std::string& host_port,
                                                const std::string& token, uint32_t timeout_ms) {
  if (token.empty()) return fail(Errc::kUnauthenticated, "no cluster token");
  SecurityOptions o;
  o.token = token;
  auto security = SecurityContext::create(o, SecurityContext::Role::kClient);
  if (!security) return std::unexpected(security.error());
  return connect(host_port, *security, timeout_ms);
}

Result<std::unique_ptr<Client>> Client::connect(
    const std::string& host_port, const std::shared_ptr<const SecurityContext>& security,
    uint32_t timeout_ms) {
  CARDNODE_CHECK(security != nullptr && security->role() == SecurityContext::Role::kClient);
  Result<HostPort> hp = parse_host_port(host_port);
  if (!hp) return std::unexpected(hp.error());
  Result<sockaddr_storage> addr = resolve(*hp);
  if (!addr) {
    return fail(Errc::kUnavailable,
                "cannot reach server at " + host_port + ": " + addr.error().message,
                addr.error().sys_errno);
  }
  const Deadline deadline = deadline_after(timeout_ms);
  Result<int> fd = connect_socket(*addr, deadline, host_port);
  if (!fd) return std::unexpected(fd.error());
  std::unique_ptr<Client> client(new Client(*fd, host_port, security->channel()));
  if (Status st = client->handshake(deadline); !st) return std::unexpected(st.error());
  return client;
}

Result<std::unique_ptr<Client>> Client::connect_local(const std::string& path,
                                                      uint32_t timeout_ms) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path) {
    return fail(Errc::kNotFound, "no local socket path");
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail(Errc::kUnavailable, "cannot reach server at " + path, errno);
  // Always bounded: a full backlog is waited out for at most this long.
  const Deadline deadline = deadline_after(timeout_ms != 0 ? timeout_ms : 10'000);
  Status st;
  // A local connect completes or fails at once, except EAGAIN when the backlog is full.
  while (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    const int e = errno;
    if (e == EINTR) continue;
    if (e == EAGAIN) {  // the server's backlog is full: try again shortly
      if (deadline && Clock::now() >= *deadline) {
        st = timed_out(path);
        break;
      }
      (void)::poll(nullptr, 0, 1);
      continue;  // bounded by the deadline
    }
    st = fail(e == ENOENT || e == ECONNREFUSED ? Errc::kNotFound : Errc::kUnavailable,
              "cannot reach server at " + path, e);
    break;
  }
  // The server must be root or our own user, as the kernel says: a socket another user
  // put at that path (a data dir others can write to) never gets our requests.
  ucred cred{};
  socklen_t len = sizeof cred;
  if (st && (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 ||
             (cred.uid != 0 && cred.uid != ::geteuid()))) {
    st = fail(Errc::kUnauthenticated,
              "the socket " + path + " is not a server of root's or ours: not used");
  }
  if (!st) {
    ::close(fd);
    return std::unexpected(st.error());
  }
  return std::unique_ptr<Client>(new Client(fd, path, local_channel()));
}

// Until the channel is open: each pass reads at least one byte, and the channel bounds
// the handshake's bytes, so this ends by the deadline or the bound.
Status Client::handshake(const std::optional<std::chrono::steady_clock::time_point>& deadline) {
  std::string out;
  if (Status st = channel_->start(&out); !st) return st;
  char* chunk = read_buffer();
  std::string app;
  size_t received = 0;
  for (;;) {
    if (!out.empty()) {
      if (Status st = write_all(fd_, out, deadline, peer_); !st) return st;
      out.clear();
    }
    if (channel_->open()) break;
    Result<size_t> n = read_some(fd_, chunk, kReadChunkBytes, deadline, peer_);
    if (!n) return std::unexpected(n.error());
    if (*n == 0) {
      // Closed without a word: a plaintext (--insecure) client meets a TLS server that way
      // (each waits for the other to speak first); the reverse is named by the channel.
      return fail(Errc::kUnavailable,
                  "server at " + peer_ + " closed the connection during the handshake" +
                      (received == 0 ? " (do both sides use the same --tls-* / --insecure "
                                       "settings?)"
                                     : ""));
    }
    received += *n;
    if (Status st = channel_->feed(std::string_view(chunk, *n), &app, &out); !st) {
      if (!out.empty()) (void)write_all(fd_, out, deadline, peer_);  // the alert, best effort
      return fail(st.error().code, peer_ + ": " + st.error().message);
    }
  }
  // Bytes that came with the server's last flight belong to the frame stream.
  if (!app.empty()) {
    if (Status st = decoder_.feed(app); !st) {
      return fail(Errc::kUnavailable, "protocol error from " + peer_ + ": " + st.error().message);
    }
  }
  return {};
}

Client::Client(int fd, std::string peer, std::unique_ptr<Channel> channel)
    : fd_(fd), peer_(std::move(peer)), channel_(std::move(channel)) {}

char* Client::read_buffer() {
  if (!read_buffer_) read_buffer_ = std::make_unique_for_overwrite<char[]>(kReadChunkBytes);
  return read_buffer_.get();
}

Client::~Client() {
  if (fd_ >= 0) ::close(fd_);
}

Result<uint64_t> Client::send(pb::Request request, uint32_t timeout_ms) {
  const uint64_t id = next_id_++;
  request.set_id(id);
  skipped_ = 0;
  std::string frame;
  if (Status st = encode_frame(request, &frame); !st) return std::unexpected(st.error());
  std::string sealed;
  if (Status st = channel_->seal(frame, &sealed); !st) return std::unexpected(st.error());
  if (Status st = write_all(fd_, sealed, deadline_after(timeout_ms), peer_); !st) {
    return std::unexpected(st.error());
  }
  return id;
}

Result<std::optional<pb::Response>> Client::receive(uint64_t id, uint32_t timeout_ms) {
  const Deadline deadline = deadline_after(timeout_ms);
  char* chunk = read_buffer();
  for (;;) {  // each pass reads at least one byte; bounded by the deadline and skipped_
    while (std::optional<std::string_view> payload = decoder_.next()) {
      pb::Response response;
      if (!response.ParseFromArray(payload->data(), static_cast<int>(payload->size()))) {
        return fail(Errc::kUnavailable, "malformed response from " + peer_);
      }
      if (response.id() == id) return response;
      if (++skipped_ > kStaleResponsesMax) {
        return fail(Errc::kUnavailable, peer_ + " sent too many responses to other requests");
      }
    }
    Result<size_t> n = read_some(fd_, chunk, kReadChunkBytes, deadline, peer_);
    if (!n && is_timeout(n.error(), deadline)) return std::optional<pb::Response>{};
    if (!n) return std::unexpected(n.error());
    if (*n == 0) return fail(Errc::kUnavailable, "server at " + peer_ + " closed the connection");
    std::string app;
    std::string out;
    if (Status st = channel_->feed(std::string_view(chunk, *n), &app, &out); !st) {
      return fail(st.error().code, "connection to " + peer_ + " failed: " + st.error().message);
    }
    if (!out.empty()) {
      if (Status st = write_all(fd_, out, deadline, peer_); !st) return std::unexpected(st.error());
    }
    if (Status st = decoder_.feed(app); !st) {
      return fail(Errc::kUnavailable, "protocol error from " + peer_ + ": " + st.error().message);
    }
  }
}

Result<pb::Response> Client::call(pb::Request request, uint32_t timeout_ms) {
  auto id = send(std::move(request), timeout_ms);
  if (!id) return std::unexpected(id.error());
  auto response = receive(*id, timeout_ms);
  if (!response) return std::unexpected(response.error());
  if (!*response) return timed_out(peer_);
  return std::move(**response);
}

}  // namespace cardnode::net
