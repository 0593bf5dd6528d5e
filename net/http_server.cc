#include "net/http_server.h"

#include <csignal>
#include <list>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "net/address.h"

namespace cardnode::net {
namespace {
struct Conn;
}  // namespace

struct HttpResponder::Slot {
  Conn* conn = nullptr;  // nullptr once the connection closed or was answered
  bool head = false;
};

namespace {

constexpr int kListenBacklog = 128;
constexpr uint32_t kEvictScanMax = 64;  // oldest connections looked at per eviction

struct Conn;

struct Core {
  Core(uv_loop_t* l, HttpServerOptions o, HttpAsyncHandler h)
      : loop(l), options(std::move(o)), handler(std::move(h)) {}
  uv_loop_t* loop;
  HttpServerOptions options;
  HttpAsyncHandler handler;
  HttpServerStats stats;
  uv_tcp_t* listener = nullptr;  // heap: freed by its close callback
  std::list<Conn*> open;         // oldest first; bounded by connections_max
  std::unordered_map<std::string, std::list<Conn*>> by_source;  // bounded by `open`
  bool stopped = false;
};

// Owned by its two handles: deleted when both have closed. `core` is nullptr from the
// moment it starts closing.
struct Conn {
  explicit Conn(Core* c) : core(c) {}
  uv_tcp_t tcp{};
  uv_timer_t timer{};  // the request deadline
  int open_handles = 0;
  Core* core;
  std::string source;
  std::string request;  // bytes so far, up to request_bytes_max
  bool replied = false;
  bool answering = false;  // the handler has the request; no second one is read
  // What an HttpResponder holds: emptied when the connection starts closing.
  std::shared_ptr<HttpResponder::Slot> slot;
  std::list<Conn*>::iterator open_it, source_it;
};

struct Write {
  uv_write_t req{};
  std::string bytes;
};

void on_closed(uv_handle_t* h) {
  auto* c = static_cast<Conn*>(h->data);
  if (--c->open_handles == 0) delete c;
}

void close_conn(Conn* c) {
  Core* core = c->core;
  if (core == nullptr) return;
  c->core = nullptr;
  if (c->slot) c->slot->conn = nullptr;
  core->open.erase(c->open_it);
  auto it = core->by_source.find(c->source);
  if (it != core->by_source.end()) {
    it->second.erase(c->source_it);
    if (it->second.empty()) core->by_source.erase(it);
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&c->tcp), on_closed);
  uv_close(reinterpret_cast<uv_handle_t*>(&c->timer), on_closed);
}

const char* reason(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 431: return "Request Header Fields Too Large";
    case 503: return "Service Unavailable";
    default: return "Internal Server Error";
  }
}

// Sends the reply and closes once it is written (or at once if it cannot be queued).
void send_reply(Conn* c, HttpReply r, bool head) {
  c->replied = true;
  c->core->stats.served++;
  uv_timer_stop(&c->timer);
  uv_read_stop(reinterpret_cast<uv_stream_t*>(&c->tcp));
  if (r.body.size() > c->core->options.reply_bytes_max) {
    r = HttpReply{500, "text/plain; charset=utf-8", "reply too large\n"};
  }
  // A header line break from a handler would let it write a second header or a body.
  auto breaks = [](const std::string& s) { return s.find_first_of("\r\n") != std::string::npos; };
  bool bad_header = breaks(r.content_type);
  for (const auto& [name, value] : r.headers)
    bad_header = bad_header || breaks(name) || breaks(value);
  if (bad_header) r = HttpReply{500, "text/plain; charset=utf-8", "bad reply header\n"};
  auto w = std::make_unique<Write>();
  w->bytes = "HTTP/1.1 " + std::to_string(r.status) + " " + reason(r.status) +
             "\r\nContent-Type: " + r.content_type +
             "\r\nContent-Length: " + std::to_string(r.body.size());
  for (const auto& [name, value] : r.headers) w->bytes += "\r\n" + name + ": " + value;
  w->bytes += "\r\nConnection: close\r\n\r\n";
  if (!head) w->bytes += r.body;
  w->req.data = w.get();
  const uv_buf_t buf = uv_buf_init(w->bytes.data(), static_cast<unsigned int>(w->bytes.size()));
  const int rc =
      uv_write(&w->req, reinterpret_cast<uv_stream_t*>(&c->tcp), &buf, 1, [](uv_write_t* req, int) {
        std::unique_ptr<Write> done(static_cast<Write*>(req->data));
        close_conn(static_cast<Conn*>(req->handle->data));
      });
  if (rc != 0) {
    close_conn(c);
    return;
  }
  (void)w.release();  // the write callback owns it
}

// The request line of a complete request: "GET /metrics?x HTTP/1.1".
void answer(Conn* c) {
  const std::string_view req(c->request);
  const std::string_view line = req.substr(0, req.find("\r\n"));
  const size_t sp1 = line.find(' ');
  const size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || !line.substr(sp2 + 1).starts_with("HTTP/1.")) {
    c->core->stats.rejected++;
    return send_reply(c, {400, "text/plain; charset=utf-8", "bad request\n"}, false);
  }
  const std::string_view method = line.substr(0, sp1);
  std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  target = target.substr(0, target.find('?'));
  const bool head = method == "HEAD";
  if (method != "GET" && !head) {
    return send_reply(c, {405, "text/plain; charset=utf-8", "only GET\n"}, false);
  }
  std::optional<std::string> host;
  if (!parse_host_header(req.substr(0, req.find("\r\n\r\n")), &host)) {
    c->core->stats.rejected++;
    return send_reply(c, {400, "text/plain; charset=utf-8", "bad Host header\n"}, false);
  }
  // One request per connection: nothing after it is read while the handler works.
  c->answering = true;
  c->slot = std::make_shared<HttpResponder::Slot>();
  c->slot->conn = c;
  c->slot->head = head;
  c->core->handler(HttpRequest{std::string(target), std::move(host)}, HttpResponder{c->slot});
}

void on_alloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
  auto* c = static_cast<Conn*>(h->data);
  if (c->core == nullptr) {
    *buf = uv_buf_init(nullptr, 0);
    return;
  }
  // Never past the bound: read into the request buffer's free tail.
  const size_t have = c->request.size();
  const size_t room = c->core->options.request_bytes_max - have;
  c->request.resize(have + room);
  *buf = uv_buf_init(c->request.data() + have, static_cast<unsigned int>(room));
}

void on_read(uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
  auto* c = static_cast<Conn*>(s->data);
  if (c->core == nullptr) return;
  const size_t before =
      buf->base == nullptr ? c->request.size() : static_cast<size_t>(buf->base - c->request.data());
  c->request.resize(before + (n > 0 ? static_cast<size_t>(n) : 0));
  // A client that half-closes after its request still gets the answer a handler gives later.
  if (n == UV_EOF && c->answering) return (void)uv_read_stop(s);
  if (n < 0) return close_conn(c);  // EOF before a whole request, or an error
  if (c->replied || c->answering) return;
  // Search only where the new bytes can complete "\r\n\r\n".
  const size_t from = before >= 3 ? before - 3 : 0;
  if (c->request.find("\r\n\r\n", from) != std::string::npos) return answer(c);
  if (c->request.size() >= c->core->options.request_bytes_max) {
    c->core->stats.rejected++;
    send_reply(c, {431, "text/plain; charset=utf-8", "request too large\n"}, false);
  }
}

void on_deadline(uv_timer_t* t) {
  auto* c = static_cast<Conn*>(t->data);
  if (c->core == nullptr || c->replied) return;
  c->core->stats.rejected++;
  close_conn(c);
}

void on_connection(uv_stream_t* listener, int status) {
  auto* core = static_cast<Core*>(listener->data);
  if (status < 0 || core->stopped) return;
  auto* c = new Conn(core);
  CARDNODE_CHECK(uv_tcp_init(core->loop, &c->tcp) == 0);
  CARDNODE_CHECK(uv_timer_init(core->loop, &c->timer) == 0);
  c->tcp.data = c;
  c->timer.data = c;
  c->open_handles = 2;
  c->open_it = core->open.insert(core->open.end(), c);
  if (uv_accept(listener, reinterpret_cast<uv_stream_t*>(&c->tcp)) != 0) {
    c->source_it = core->by_source[c->source].insert(core->by_source[c->source].end(), c);
    return close_conn(c);
  }
  sockaddr_storage peer{};
  int len = sizeof peer;
  if (uv_tcp_getpeername(&c->tcp, reinterpret_cast<sockaddr*>(&peer), &len) == 0) {
    c->source = source_key(peer);
  }
  std::list<Conn*>& mine = core->by_source[c->source];
  // Room first, by pushing out the oldest: of this source, else of all (never c itself,
  // which is the newest of both lists once inserted below).
  Conn* evict = nullptr;
  if (mine.size() >= core->options.connections_per_source_max && !mine.empty()) {
    evict = mine.front();
  } else if (core->open.size() > core->options.connections_max) {
    // The oldest connection of a source holding several (a scraper holds one), as the RPC
    // port does (net/rpc_server.cc); the oldest of all only if every source holds one.
    evict = core->open.front();
    uint32_t looked = 0;  // bounded, as on the RPC port
    for (Conn* p : core->open) {
      if (p == c || ++looked > kEvictScanMax) break;
      auto it = core->by_source.find(p->source);
      if (it != core->by_source.end() && it->second.size() > 1) {
        evict = p;
        break;
      }
    }
  }
  c->source_it = mine.insert(mine.end(), c);
  if (evict != nullptr && evict != c) {
    core->stats.evicted++;
    close_conn(evict);
  }
  uv_tcp_nodelay(&c->tcp, 1);
  uv_timer_start(&c->timer, on_deadline, core->options.request_timeout_ms, 0);
  if (uv_read_start(reinterpret_cast<uv_stream_t*>(&c->tcp), on_alloc, on_read) != 0) {
    close_conn(c);
  }
}

}  // namespace

bool parse_host_header(std::string_view head, std::optional<std::string>* host) {
  host->reset();
  auto trim = [](std::string_view v) {
    const size_t b = v.find_first_not_of(" \t");
    if (b == std::string_view::npos) return std::string_view();
    return v.substr(b, v.find_last_not_of(" \t") - b + 1);
  };
  auto is_host = [](std::string_view name) {
    constexpr std::string_view kHost = "host";
    if (name.size() != kHost.size()) return false;
    for (size_t i = 0; i < name.size(); ++i) {
      const char c = name[i] >= 'A' && name[i] <= 'Z' ? static_cast<char>(name[i] + 32) : name[i];
      if (c != kHost[i]) return false;
    }
    return true;
  };
  size_t at = head.find("\r\n");  // past the request line
  while (at != std::string_view::npos) {
    at += 2;
    const size_t end = head.find("\r\n", at);
    const std::string_view line = head.substr(at, end == std::string_view::npos ? end : end - at);
    at = end;
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    const std::string_view name = line.substr(0, colon);
    if (!is_host(trim(name))) continue;
    if (host->has_value() || trim(name).size() != name.size()) return false;
    *host = std::string(trim(line.substr(colon + 1)));
  }
  return true;
}

void HttpResponder::reply(HttpReply r) const {
  if (!slot_ || slot_->conn == nullptr) return;
  Conn* c = std::exchange(slot_->conn, nullptr);
  if (c->core == nullptr || c->replied) return;
  send_reply(c, std::move(r), slot_->head);
}

struct HttpServer::Impl : Core {
  using Core::Core;
};

HttpServer::HttpServer(uv_loop_t* loop, HttpServerOptions options, HttpHandler handler)
    : HttpServer(loop, std::move(options),
                 [h = std::move(handler)](const HttpRequest& req, const HttpResponder& r) {
                   r.reply(h(req.path));
                 }) {}

HttpServer::HttpServer(uv_loop_t* loop, HttpServerOptions options, HttpAsyncHandler handler)
    : impl_(std::make_unique<Impl>(loop, std::move(options), std::move(handler))) {
  CARDNODE_CHECK(impl_->options.connections_max >= 1 &&
                 impl_->options.connections_per_source_max >= 1 &&
                 impl_->options.request_bytes_max >= 64);
}

HttpServer::~HttpServer() {
  stop();
}

Result<std::string> HttpServer::start() {
  Impl& s = *impl_;
  CARDNODE_CHECK(s.listener == nullptr && !s.stopped);
  Result<HostPort> hp = parse_host_port(s.options.listen);
  if (!hp) return std::unexpected(hp.error());
  Result<sockaddr_storage> addr = resolve(*hp);
  if (!addr) return std::unexpected(addr.error());
  (void)std::signal(SIGPIPE, SIG_IGN);  // a scraper that resets mid-reply must not kill us
  auto* listener = new uv_tcp_t{};
  CARDNODE_CHECK(uv_tcp_init(s.loop, listener) == 0);
  listener->data = static_cast<Core*>(&s);
  int rc = uv_tcp_bind(listener, reinterpret_cast<const sockaddr*>(&*addr), 0);
  if (rc == 0) {
    rc = uv_listen(reinterpret_cast<uv_stream_t*>(listener), kListenBacklog, on_connection);
  }
  auto free_listener = [](uv_handle_t* h) { delete reinterpret_cast<uv_tcp_t*>(h); };
  if (rc != 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(listener), free_listener);
    return fail(Errc::kUnavailable, "cannot listen for metrics on " + s.options.listen, -rc);
  }
  s.listener = listener;
  sockaddr_storage bound{};
  int len = sizeof bound;
  rc = uv_tcp_getsockname(listener, reinterpret_cast<sockaddr*>(&bound), &len);
  if (rc != 0) return fail(Errc::kInternal, "getsockname on " + s.options.listen, -rc);
  return format_sockaddr(reinterpret_cast<const sockaddr*>(&bound));
}

void HttpServer::stop() {
  Impl& s = *impl_;
  if (s.stopped) return;
  s.stopped = true;
  if (s.listener != nullptr) {
    uv_close(reinterpret_cast<uv_handle_t*>(s.listener),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_tcp_t*>(h); });
    s.listener = nullptr;
  }
  while (!s.open.empty()) close_conn(s.open.front());
}

const HttpServerStats& HttpServer::stats() const {
  return impl_->stats;
}

}  // namespace cardnode::net
