// RpcServer: the libuv TCP listener that serves pb::Request frames over sealed channels
// (net/channel.h: TLS 1.3 with the cluster token as PSK by default). For every
// connection: the handshake within handshake_timeout_ms, then frames, each in its own
// sealed record. Garbage, an oversize length, a wrong token, a tampered record or a slow
// reader closes that connection only and bumps a counter; every other connection keeps
// being served.
//
// Two budgets, so strangers cannot starve token holders (docs/GUARANTEES.md):
// - Unauthenticated connections (accepted, handshake not done): at most
//   max_unauthenticated in all and max_unauthenticated_per_source per source address.
//   A new connection over either bound evicts the oldest unauthenticated one: of its own
//   source if that is over its bound, else the oldest of any source that holds several
//   (a client holds one handshake at a time), else the oldest of all. A flood keeps
//   pushing out its own connections; a token holder's handshake is not touched unless
//   every source holds just one.
// - Authenticated connections: at most max_connections; per connection at most
//   max_inflight requests awaiting a reply (beyond: the connection stops reading until
//   replies drain), write_queue_bytes_max of unsent replies (beyond: closed), and an idle
//   timeout while nothing is in flight.
// Wrong-token handshakes are rate-limited per source (a token bucket: a burst of
// auth_failures_burst, refilled at auth_failures_per_minute): a source out of tokens has
// its connections closed at accept. Garbage is closed at its first byte and half-open
// connections by the deadline and the eviction above, so neither is rate-limited: a token
// holder behind the same address as a garbage sender is never refused for it.
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
#include "net/channel.h"
#include "proto/error.h"

namespace cardnode::net {

struct RpcServerOptions {
  std::string listen = "0.0.0.0:7420";
  uint32_t max_connections = 256;  // authenticated
  uint32_t max_unauthenticated = 1024;
  uint32_t max_unauthenticated_per_source = 16;
  uint32_t auth_failures_burst = 32;  // wrong-token handshakes per source before refusals
  uint32_t auth_failures_per_minute = 60;
  uint32_t max_inflight = 64;
  uint64_t write_queue_bytes_max = 16ull << 20;
  // One round trip and an HMAC: a board on a poor Wi-Fi link needs well under a second.
  uint64_t handshake_timeout_ms = 3000;
  // An authenticated connection with no request in flight and no bytes from the peer for
  // this long is closed (0: never). A held request (WaitJob, an agent's poll) is not idle.
  uint64_t idle_timeout_ms = 300'000;
};

struct RpcServerStats {
  uint64_t accepted = 0;           // connections taken into the handshake (or local ones)
  uint64_t accepted_local = 0;     // of those, through listen_local()'s socket
  uint64_t active = 0;             // open connections, in handshake or serving
  uint64_t unauthenticated = 0;    // open connections still in the handshake
  uint64_t rejected_auth = 0;      // wrong token
  uint64_t rejected_protocol = 0;  // bad handshake bytes, bad frame, unparsable message
  uint64_t rejected_limit = 0;     // over max_connections, slow reader, handshake timeout
  uint64_t rejected_rate = 0;      // refused at accept: its source failed too many handshakes
  uint64_t evicted = 0;            // unauthenticated, pushed out by a newer connection
  uint64_t closed_idle = 0;        // authenticated, nothing in flight for idle_timeout_ms
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
  // security: a server-role context (net/channel.h); every connection gets its channel.
  RpcServer(uv_loop_t* loop, std::shared_ptr<const SecurityContext> security,
            RpcServerOptions options, RequestHandler handler);
  // TLS with the token as PSK, the default transport.
  RpcServer(uv_loop_t* loop, const std::string& token, RpcServerOptions options,
            RequestHandler handler);
  ~RpcServer();

  // Binds and listens; returns the bound address (port 0 becomes the real port).
  [[nodiscard]] Result<std::string> start();
  // After start(): a Unix stream socket at `path` for clients on this board, made 0600 in
  // a directory that must be this user's (or root's) and writable by no one else. A
  // socket file left by a server that died is replaced; anything else there is an error
  // and is left alone. Removed at stop(). Its peers must be root or this process's user
  // (SO_PEERCRED); they skip the handshake and the strangers' budget and send frames as
  // they are (net/channel.h, local_channel), counted against max_connections like any
  // other. An error leaves the TCP listener as it is. At start-up only: the socket's mode
  // comes from the process's umask, set around its bind.
  [[nodiscard]] Status listen_local(const std::string& path);
  // Stops accepting and closes every connection; handles finish closing on the loop.
  void stop();
  const RpcServerStats& stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cardnode::net
