// HttpServer: the smallest HTTP/1.x server that serves /metrics to Prometheus from the
// server's own libuv loop — no threads, and no stranger can blind it.
//
// One request per connection (every reply says "Connection: close"). A request is read up
// to its blank line, at most request_bytes_max, within request_timeout_ms; only GET and
// HEAD are answered. Connections are bounded like the RPC port's handshakes
// (net/rpc_server.h): at most connections_max open and connections_per_source_max per
// source address, and a new connection over either bound pushes out the oldest one (of its
// own source first). Idle sockets held open by a stranger are therefore displaced by the
// next connection, and a scrape, the newest, is answered as soon as its request arrives.
//
// Threading: loop thread only; the handler runs on it. Lifetime: as RpcServer (handles
// free themselves in their close callbacks; run the loop before uv_loop_close()).
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

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
  int status = 200;  // 200, 404 or 500 from a handler
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

// path (without the query string) -> reply.
using HttpHandler = std::function<HttpReply(const std::string& path)>;

class HttpServer {
 public:
  HttpServer(uv_loop_t* loop, HttpServerOptions options, HttpHandler handler);
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
