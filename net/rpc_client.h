// RpcClient: one long-lived client session to an RpcServer on a libuv loop — the agent's
// line to the server. It connects, proves the token in a TLS 1.3 handshake (net/channel.h),
// then sends sealed pb::Request frames and matches pb::Response frames back by id, with many calls
// outstanding at once (a long poll for work next to heartbeats and reports). When a
// session ends or an attempt fails — server restart, network cut, protocol error, wrong
// token — it tries again after a backoff, by itself, until stop().
//
// Threading: loop thread only. No threads of its own and nothing that blocks the loop:
// an IP literal is used as it is; a hostname is resolved on every attempt with
// uv_getaddrinfo (libuv's threadpool), and the attempt uses the next of its addresses
// after each failure, so "localhost" finds the family the server listens on.
//
// Callbacks (on_up, on_down, each call's cb) run on the loop thread, only from libuv
// callbacks or from inside stop() and ~RpcClient — never from inside start(), call() or
// reconnect_now(). A callback may call call(), stop(), reconnect_now(), up() and
// stats(); it must not destroy the RpcClient (checked: defer that to another callback).
//
// Bounds: inflight_max calls awaiting a response (one more fails at once with kBusy);
// write_queue_bytes_max unsent bytes (one more frame fails the call and closes the
// session: a server that does not read is a broken one); frames of at most
// kFrameBytesMax both ways (a bad length or an unparsable response closes the session
// as a protocol error); an attempt lasts at most connect_timeout_ms; a reconnect waits at
// most backoff_max_ms; a hostname yields at most 8 addresses.
//
// Backoff: after the n-th consecutive failure (n from 0; an ended session counts as one)
// the next attempt waits a delay drawn uniformly from
//   [backoff_first_ms / 2, backoff_ceiling_ms(options, n)],  ceiling = min(max, first * 2^n)
// — full jitter, so a restarted server does not get every agent back in the same
// millisecond, floored at half the first delay so that a refused connect can never
// spin. n returns to 0 when a session ends after being up for stable_session_ms.
//
// Lifetime: every libuv handle and request is heap-owned and frees itself in its own
// callback, so the client may be destroyed right after stop() (the destructor calls it)
// without running the loop first. Run the loop until those callbacks have fired before
// uv_loop_close(). start() sets SIGPIPE to SIG_IGN, as RpcServer::start() does.
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "cardnode.pb.h"
#include "net/channel.h"
#include "proto/error.h"

namespace cardnode::net {

struct RpcClientOptions {
  std::string address;  // "HOST:PORT", "[::1]:7420", "board-1.lan:7420"
  std::string token;    // the cluster token: TLS-PSK, unless `security` is set
  std::shared_ptr<const SecurityContext> security;  // a client-role context (net/channel.h)
  uint64_t connect_timeout_ms = 5000;  // resolve + TCP connect + handshake, per attempt
  uint64_t backoff_first_ms = 200;     // reconnect delays: see "Backoff" above
  uint64_t backoff_max_ms = 10'000;
  uint64_t stable_session_ms = 10'000;  // a session up this long resets the backoff
  uint32_t inflight_max = 64;           // calls awaiting a response
  // Unsent request bytes. At least one sealed frame (kFrameHeaderBytes + kFrameBytesMax +
  // kSealSlackBytes): checked.
  uint64_t write_queue_bytes_max = 16ull << 20;
  // With the network path gone silently (a cut cable, a board that lost power), the
  // session ends after about this long and the client reconnects: TCP keepalive probes
  // while idle (a long poll), TCP_USER_TIMEOUT while requests are unacknowledged.
  uint64_t dead_peer_ms = 30'000;
  uint64_t jitter_seed = 0;  // 0: seeded from std::random_device; tests pass a fixed one
  // Local IP to connect from (empty: the kernel's choice). The pool simulator gives each
  // simulated board its own loopback address, as real boards each have their own.
  std::string source_address;
};

struct RpcClientStats {
  uint64_t attempts = 0;               // connection attempts begun
  uint64_t connects = 0;               // sessions established (handshake done, on_up ran)
  uint64_t disconnects = 0;            // established sessions that ended, other than by stop()
  uint64_t connect_failures = 0;       // attempts that ended before TCP was up (resolve,
                                       //   refused, unreachable, connect_timeout_ms)
  uint64_t handshake_failures = 0;     // attempts that reached a server but did not finish the
                                       //   handshake (wrong token, not a cardnode server, timeout)
  uint64_t requests = 0;               // calls sent
  uint64_t responses = 0;              // responses matched to a waiting call
  uint64_t timeouts = 0;               // calls failed by their timeout_ms
  uint64_t dropped_responses = 0;      // responses for no waiting call (late after a timeout,
                                       //   or an id never sent)
  uint64_t protocol_errors = 0;        // bad frame or unparsable response: session closed
  uint64_t rejected_busy = 0;          // calls refused at inflight_max
  uint64_t write_queue_overflows = 0;  // sessions closed over write_queue_bytes_max
  uint64_t inflight = 0;               // calls awaiting a response now
  uint64_t backoff_ms = 0;             // the delay before the next attempt; set before on_down runs
};

// The backoff ceiling after `failures` consecutive failures: min(max, first * 2^failures).
uint64_t backoff_ceiling_ms(const RpcClientOptions& options, uint32_t failures);

class RpcClient {
 public:
  using OnUp = std::function<void()>;  // a session is established (handshake done)
  // A session ended, or an attempt failed; the next attempt is already scheduled
  // (stats().backoff_ms from now). A wrong token is kUnauthenticated, everything else
  // kUnavailable. Not called for stop().
  using OnDown = std::function<void(const Error&)>;
  using OnResponse = std::function<void(Result<pb::Response>)>;

  RpcClient(uv_loop_t* loop, RpcClientOptions options, OnUp on_up, OnDown on_down);
  ~RpcClient();  // stop(); must not run inside one of this client's callbacks (checked)

  // Begins the first attempt; the client then keeps a session up until stop(). Call at
  // most once. Fails (kInvalidArgument) only for an address that does not parse.
  [[nodiscard]] Status start();
  // Ends the session or attempt and stops reconnecting, for good. Every waiting call's
  // cb runs here, once, with kCancelled; no callback runs after stop() returns. Idempotent.
  void stop();
  bool up() const;  // a session is established: call() can send

  // Sends one request; the client sets request.id. Fails at once, and cb is never
  // called, when: not up (kUnavailable), inflight_max calls wait (kBusy), the request
  // does not fit a frame (kInvalidArgument), or the write queue would go over its bound
  // (kUnavailable; the session is closed too). Otherwise cb runs exactly once, from the
  // loop: with the response (any pb::Response: check its error), or kUnavailable when the
  // session ended first, or kUnavailable "timed out" after timeout_ms (0: never). A timeout
  // frees the call's inflight slot and leaves the session up; the late response is dropped
  // and counted. kCancelled when stop() came first. The timeout counts from the loop's
  // time (uv_now), which a call from a loop callback has fresh.
  [[nodiscard]] Status call(pb::Request request, OnResponse cb, uint64_t timeout_ms = 0);

  // Skips the backoff now in progress (a test, a SIGHUP). A no-op in any other state.
  void reconnect_now();

  const RpcClientStats& stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cardnode::net
