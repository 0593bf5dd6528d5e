// Blocking client for the CLI: connect, the channel's handshake (net/channel.h: TLS 1.3
// with the token as PSK by default), then one sealed request/response at a time. Plain POSIX
// sockets with poll() timeouts — the CLI is a short-lived process with nothing else to do while it
// waits, so an event loop would add nothing. Not thread-safe; one object per connection.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "cardnode.pb.h"
#include "net/channel.h"
#include "net/frame.h"
#include "proto/error.h"

namespace cardnode::net {

class Client {
 public:
  // Errors: kUnavailable (cannot resolve/connect: "cannot reach server at HOST:PORT: ..."),
  // kUnauthenticated (wrong token), kInvalidArgument (bad address).
  [[nodiscard]] static Result<std::unique_ptr<Client>> connect(const std::string& host_port,
                                                               const std::string& token,
                                                               uint32_t timeout_ms);
  // The same with a client-role SecurityContext (certificate mode, --insecure).
  [[nodiscard]] static Result<std::unique_ptr<Client>> connect(
      const std::string& host_port, const std::shared_ptr<const SecurityContext>& security,
      uint32_t timeout_ms);
  // The server's Unix socket on this board (RpcServerOptions::local_path): no token, no
  // TLS. kNotFound when there is no socket file or no server behind it (ECONNREFUSED):
  // the caller then tries TCP; kUnauthenticated for a listener that is neither root nor
  // this process's user (SO_PEERCRED; it is sent nothing); kUnavailable for anything
  // else (EACCES: the socket is not ours to use).
  [[nodiscard]] static Result<std::unique_ptr<Client>> connect_local(const std::string& path,
                                                                     uint32_t timeout_ms);
  ~Client();
  // Sends one request (its id is set here) and waits for the matching response.
  // timeout_ms 0 waits forever (WaitJob). No answer in time: kUnavailable ("timed out
  // waiting for ..."); the connection stays usable and a late answer is skipped.
  [[nodiscard]] Result<pb::Response> call(pb::Request request, uint32_t timeout_ms);
  // call() in two halves, for a caller that does something else while it waits (run
  // --wait's notice of a queued job). send() returns the request's id; receive() waits up
  // to timeout_ms (0: forever) for its answer, skipping others, and nullopt means none came
  // in time: the connection is intact and receive() may be called again for the same id.
  [[nodiscard]] Result<uint64_t> send(pb::Request request, uint32_t timeout_ms);
  [[nodiscard]] Result<std::optional<pb::Response>> receive(uint64_t id, uint32_t timeout_ms);

 private:
  Client(int fd, std::string peer, std::unique_ptr<Channel> channel);
  Status handshake(const std::optional<std::chrono::steady_clock::time_point>& deadline);
  // The read buffer, made on first use and not zeroed: the kernel writes only what arrives,
  // so a short answer touches one page of it, not all 16 (a CLI call's start counts them).
  char* read_buffer();
  int fd_ = -1;
  std::string peer_;
  std::unique_ptr<Channel> channel_;
  uint64_t next_id_ = 1;
  uint32_t skipped_ = 0;  // answers to other (timed-out) requests skipped since send()
  FrameDecoder decoder_;
  std::unique_ptr<char[]> read_buffer_;
};

}  // namespace cardnode::net
