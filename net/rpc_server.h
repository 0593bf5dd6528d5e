// RpcServer: the libuv TCP listener that serves pb::Request frames after the token
// handshake. For every connection: HELLO, PROOF within handshake_timeout_ms, then
// frames. Garbage, an oversize length, a wrong token or a slow reader closes that
// connection only and bumps a counter; every other connection keeps being served.
//
// Bounds: max_connections (further accepts are closed at once), per connection at
// most max_inflight requests awaiting a reply (beyond: the connection stops reading
// until replies drain) and write_queue_bytes_max of unsent replies (beyond: closed).
//
// Threading: loop thread only. The handler runs on the loop thread and may reply later
// (WaitJob) through the Responder; replying to a closed connection is a no-op.
//
// Lifetime: every libuv handle (listener, connections) is heap-owned and frees itself
// in its close callback, so the RpcServer may be destroyed right after stop() (the
// destructor calls it) without running the loop first. Run the loop until those
// callbacks have fired before uv_loop_close(). start() sets SIGPIPE to SIG_IGN: libuv
// writes with write(2), and a peer resetting mid-reply must not kill the process.
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "cardnode.pb.h"
#include "net/address.h"
#include "proto/error.h"

namespace cardnode::net {

struct RpcServerOptions {
  std::string listen = "0.0.0.0:7420";
  uint32_t max_connections = 256;
  uint32_t max_inflight = 64;
  uint64_t write_queue_bytes_max = 16ull << 20;
  uint64_t handshake_timeout_ms = 5000;
};

struct RpcServerStats {
  uint64_t accepted = 0;           // connections admitted under max_connections
  uint64_t active = 0;             // open connections, in handshake or serving
  uint64_t rejected_auth = 0;      // wrong token
  uint64_t rejected_protocol = 0;  // bad handshake bytes, bad frame, unparsable message
  uint64_t rejected_limit = 0;     // over max_connections, slow reader, handshake timeout
  uint64_t requests = 0;
};

// Sends the reply for one request. Copyable; safe to call after the connection closed.
// Only the first reply() of a request is sent (later ones are ignored); it sets the
// response's id. If every copy is destroyed without a reply, the client gets an
// INTERNAL error response. The fields are set by the server; a default Responder
// does nothing.
class Responder {
 public:
  // A Responder whose reply goes to `sink` instead of a connection: for in-process callers
  // and for tests that drive a request handler directly. The same rules hold: one reply,
  // and an INTERNAL error response if every copy is dropped unanswered.
  static Responder to(std::function<void(pb::Response&&)> sink);
  void reply(pb::Response&& response) const;
  struct State;
  std::shared_ptr<State> state_;  // shared with the connection: a Responder may outlive it
  uint64_t request_id_ = 0;
};

using RequestHandler = std::function<void(pb::Request&& request, Responder responder)>;

class RpcServer {
 public:
  RpcServer(uv_loop_t* loop, std::string token, RpcServerOptions options, RequestHandler handler);
  ~RpcServer();

  // Binds and listens; returns the bound address (port 0 becomes the real port).
  [[nodiscard]] Result<std::string> start();
  // Stops accepting and closes every connection; handles finish closing on the loop.
  void stop();
  const RpcServerStats& stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cardnode::net
