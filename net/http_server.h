// HttpServer: the smallest HTTP/1.x server that serves /metrics to Prometheus (and the
// server's status page) from the process's own libuv loop — no threads, and no stranger can
// blind it.
//
// One request per connection (every reply says "Connection: close"). A request is read up
// to its blank line, at most request_bytes_max, within request_timeout_ms; only GET and
// HEAD are answered. Connections are bounded like the RPC port's handshakes
// (net/rpc_server.h): at most connections_max open and connections_per_source_max per
// source address, and a new connection over either bound pushes out the oldest one (of its
// own source first). Idle sockets held open by a stranger are therefore displaced by the
// next connection, and a scrape, the newest, is answered as soon as its request arrives.
//
// A handler answers at once (HttpHandler) or later (HttpAsyncHandler, for pages that wait on
// storage or an agent): the request's deadline still holds, so a late answer finds the
// connection closed and is dropped. Replies carry extra headers (the status page's
// Content-Security-Policy) when the handler sets them. The asynchronous handler is also told
// the request's Host header (HttpRequest), so pages can refuse names a DNS-rebinding page
// could use (runtime/coordinator/status_page.h host_allowed); /metrics ignores it.
//
// Threading: loop thread only; the handler runs on it. Lifetime: as RpcServer (handles
// free themselves in their close callbacks; run the loop before uv_loop_close()).
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "proto/error.h"

namespace cardnode::net {

struct HttpServerOptions {
  std::string listen = "127.0.0.1:9420";
  uint32_t connections_max = 64;
  uint32_t connections_per_source_max = 8;
  uint32_t request_bytes_max = 8192;
  uint64_t request_timeout_ms = 2000;
  uint64_t reply_bytes_max = 16u << 20;  // a reply larger than this is a 500
};

struct HttpServerStats {
  uint64_t served = 0;    // replies sent (any status)
  uint64_t evicted = 0;   // pushed out by a newer connection
  uint64_t rejected = 0;  // oversize, malformed or late requests
};

struct HttpReply {
  int status = 200;  // 200, 403, 404, 500 or 503 from a handler
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  // Sent as "Name: value"; names and values must hold no CR or LF (a reply that does is a 500).
  std::vector<std::pair<std::string, std::string>> headers = {};
};

// path (without the query string) -> reply.
using HttpHandler = std::function<HttpReply(const std::string& path)>;

// What an asynchronous handler is told of a request.
struct HttpRequest {
  std::string path;  // without the query string
  // The Host header's value, SP/HTAB trimmed (port and all, as sent); none without one
  // (HTTP/1.0). A request with two Host headers is a 400 and reaches no handler.
  std::optional<std::string> host;
};

// The Host header of a request's head (request line and header lines, CRLF-separated, up to
// the blank line): the header name matched case-insensitively, the value trimmed. False if
// the head has two Host headers or one with whitespace before its colon (RFC 9112: a 400).
[[nodiscard]] bool parse_host_header(std::string_view head, std::optional<std::string>* host);

// Answers one request, once; later calls, and calls after the connection closed (its
// deadline passed, it was evicted, the server stopped), do nothing. Copyable; safe to keep
// past the server's stop (not past its destruction's loop run).
class HttpResponder {
 public:
  void reply(HttpReply reply) const;
  struct Slot;
  std::shared_ptr<Slot> slot_;
};

// request -> a reply through the responder, now or later (on the loop thread).
using HttpAsyncHandler = std::function<void(const HttpRequest& request, HttpResponder responder)>;

class HttpServer {
 public:
  HttpServer(uv_loop_t* loop, HttpServerOptions options, HttpHandler handler);
  HttpServer(uv_loop_t* loop, HttpServerOptions options, HttpAsyncHandler handler);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds and listens; returns the bound address ("127.0.0.1:41234").
  [[nodiscard]] Result<std::string> start();
  void stop();
  const HttpServerStats& stats() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace cardnode::net
