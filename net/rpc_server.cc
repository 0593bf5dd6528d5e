#include "net/rpc_server.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <list>
#include <unordered_map>
#include <unordered_set>

#include "net/channel.h"
#include "net/frame.h"

namespace cardnode::net {
namespace {

// A pool's agents all reconnect at once after a server restart: with a short backlog the
// kernel drops their SYNs (a 1 s retransmit) or completes them by SYN cookie and then
// drops them at accept (a silent 5 s connect timeout). The kernel caps it at somaxconn.
constexpr int kListenBacklog = 4096;
constexpr unsigned int kKeepaliveDelaySeconds = 60;
// One read buffer per server, shared by all connections: a read callback copies what
// it needs into the connection's FrameDecoder before the next read can happen.
constexpr size_t kReadChunkBytes = 64u << 10;
// Sources remembered for their failure buckets (and their unauthenticated connections):
// beyond this, idle ones are forgotten first.
constexpr size_t kSourcesMin = 4096;
// Oldest handshakes looked at for one of a source holding several, per eviction.
constexpr uint32_t kEvictScanMax = 64;
// How long a refused connection may take to receive its alert before it is closed.
constexpr uint64_t kRejectLingerMs = 1000;

struct Connection;

// One source address: its unauthenticated connections (oldest first) and its bucket of
// wrong-token handshakes still allowed.
struct Source {
  std::list<Connection*> pending;
  double tokens = 0;
  uint64_t refilled_ms = 0;
};

// Everything the callbacks need. RpcServer::Impl is this plus nothing; it exists as a
// separate type only because RpcServer::Impl is private to RpcServer.
struct ServerCore {
  ServerCore(uv_loop_t* l, std::shared_ptr<const SecurityContext> sec, RpcServerOptions o,
             RequestHandler h)
      : loop(l), security(std::move(sec)), options(std::move(o)), handler(std::move(h)) {}

  uv_loop_t* loop;
  std::shared_ptr<const SecurityContext> security;
  RpcServerOptions options;
  RequestHandler handler;
  RpcServerStats stats;
  // Heap-allocated and freed by its own close callback, so the server object may be
  // destroyed before the loop has run that callback.
  uv_tcp_t* listener = nullptr;
  uv_pipe_t* local_listener = nullptr;          // listen_local()'s, if any; the same ownership
  std::string local_path;                       // its socket file, ours to remove at stop()
  std::unordered_set<Connection*> connections;  // open ones; bounded by the two budgets + 1
  std::list<Connection*> unauthenticated;       // oldest first; bounded by max_unauthenticated
  uint32_t authenticated = 0;
  std::unordered_map<std::string, Source> sources;  // bounded by sources_max()
  size_t sources_max() const {
    return std::max<size_t>(kSourcesMin, 2 * size_t{options.max_unauthenticated});
  }
  std::unique_ptr<char[]> read_buffer = std::make_unique<char[]>(kReadChunkBytes);
  // What one read opened up: reused by every read callback (none runs inside another).
  std::string app_bytes, reply_bytes;
  bool stopped = false;
};

// Owned by its two libuv handles: deleted when both have finished closing. `server`
// is nullptr from the moment the connection starts closing; every callback checks it,
// so nothing touches the server after stop().
struct Connection {
  enum class Phase { kHandshake, kRejecting, kFrames };

  explicit Connection(ServerCore* s) : server(s), channel(s->security->channel()) {}
  Connection(ServerCore* s, std::unique_ptr<Channel> ch) : server(s), channel(std::move(ch)) {}

  uv_tcp_t tcp{};
  uv_pipe_t pipe{};  // instead of tcp, for a connection through listen_local()'s socket
  bool local = false;
  uv_timer_t timer{};  // the handshake deadline, then the idle timeout
  int open_handles = 0;
  ServerCore* server;
  Phase phase = Phase::kHandshake;
  std::unique_ptr<Channel> channel;  // the handshake, then sealing and opening records
  FrameDecoder decoder;
  uint32_t inflight = 0;
  bool reading = false;
  bool pumping = false;
  std::string source;    // the peer's address bytes (no port): the key of ServerCore::sources
  bool pending = false;  // in the unauthenticated lists below
  bool authenticated = false;
  std::list<Connection*>::iterator pending_it, source_it;
  // Shared with every Responder of this connection; cleared when it closes.
  std::shared_ptr<Connection*> cell = std::make_shared<Connection*>(this);

  uv_stream_t* stream() {
    return local ? reinterpret_cast<uv_stream_t*>(&pipe) : reinterpret_cast<uv_stream_t*>(&tcp);
  }
};

}  // namespace

struct Responder::State {
  // A request whose every Responder is gone unanswered still gets a reply (INTERNAL):
  // the client does not hang and the connection's inflight slot is freed.
  ~State();
  std::shared_ptr<Connection*> conn;  // *conn is nullptr once the connection closed
  uint64_t request_id = 0;
  bool replied = false;
  std::function<void(pb::Response&&)> sink;  // Responder::to(): replies go here instead
};

namespace {

struct WriteRequest {
  uv_write_t req{};
  std::string bytes;
  bool close_after = false;
};

void on_handle_closed(uv_handle_t* handle) {
  auto* c = static_cast<Connection*>(handle->data);
  if (--c->open_handles == 0) delete c;
}

// Tops up a source's bucket for the time since it was last looked at.
void refill(const ServerCore& s, Source& src) {
  const uint64_t now = uv_now(s.loop);
  const double burst = s.options.auth_failures_burst;
  src.tokens = std::min(burst, src.tokens + static_cast<double>(now - src.refilled_ms) *
                                                s.options.auth_failures_per_minute / 60'000.0);
  src.refilled_ms = now;
}

// The source's entry, made with a full bucket; idle ones are forgotten when the table is
// full (a forgotten source starts over with a full bucket: bounded memory wins).
Source& source_of(ServerCore& s, const std::string& key) {
  auto it = s.sources.find(key);
  if (it != s.sources.end()) return it->second;
  if (s.sources.size() >= s.sources_max()) {
    for (auto i = s.sources.begin(); i != s.sources.end();) {
      refill(s, i->second);
      const bool full = i->second.tokens >= s.options.auth_failures_burst;
      i = i->second.pending.empty() && full ? s.sources.erase(i) : std::next(i);
    }
    for (auto i = s.sources.begin(); s.sources.size() >= s.sources_max() && i != s.sources.end();) {
      i = i->second.pending.empty() ? s.sources.erase(i) : std::next(i);
    }
  }
  Source& src = s.sources[key];
  src.tokens = s.options.auth_failures_burst;
  src.refilled_ms = uv_now(s.loop);
  return src;
}

// Out of the unauthenticated budget (handshake over, or closing).
void leave_pending(ServerCore* s, Connection* c) {
  if (!c->pending) return;
  c->pending = false;
  s->unauthenticated.erase(c->pending_it);
  auto it = s->sources.find(c->source);
  if (it != s->sources.end()) it->second.pending.erase(c->source_it);
  s->stats.unauthenticated = s->unauthenticated.size();
}

void close_connection(Connection* c) {
  ServerCore* s = c->server;
  if (s == nullptr) return;
  c->server = nullptr;
  *c->cell = nullptr;
  leave_pending(s, c);
  if (c->authenticated) s->authenticated--;
  s->connections.erase(c);
  s->stats.active = s->connections.size();
  // Pending writes complete with UV_ECANCELED before the close callbacks run.
  uv_close(reinterpret_cast<uv_handle_t*>(c->stream()), on_handle_closed);
  uv_close(reinterpret_cast<uv_handle_t*>(&c->timer), on_handle_closed);
}

void on_write_done(uv_write_t* req, int status) {
  std::unique_ptr<WriteRequest> w(static_cast<WriteRequest*>(req->data));
  auto* c = static_cast<Connection*>(req->handle->data);
  if (status < 0 || w->close_after) close_connection(c);  // no-op if already closing
}

// Queues bytes; false if the connection was closed instead (slow reader, write error).
bool write_bytes(Connection* c, std::string bytes, bool close_after) {
  uv_stream_t* stream = c->stream();
  const uint64_t queued = uv_stream_get_write_queue_size(stream);
  if (queued + bytes.size() > c->server->options.write_queue_bytes_max) {
    c->server->stats.rejected_limit++;
    close_connection(c);
    return false;
  }
  auto w = std::make_unique<WriteRequest>();
  w->bytes = std::move(bytes);
  w->close_after = close_after;
  w->req.data = w.get();
  const uv_buf_t buf = uv_buf_init(w->bytes.data(), static_cast<unsigned int>(w->bytes.size()));
  if (uv_write(&w->req, stream, &buf, 1, on_write_done) != 0) {
    close_connection(c);
    return false;
  }
  (void)w.release();  // on_write_done owns it now
  return true;
}

void on_alloc(uv_handle_t* handle, size_t /*suggested*/, uv_buf_t* buf) {
  auto* c = static_cast<Connection*>(handle->data);
  if (c->server == nullptr) {
    *buf = uv_buf_init(nullptr, 0);  // read_cb gets UV_ENOBUFS
  } else {
    *buf = uv_buf_init(c->server->read_buffer.get(), kReadChunkBytes);
  }
}

void on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf);

void set_reading(Connection* c, bool want) {
  if (want == c->reading) return;
  uv_stream_t* stream = c->stream();
  const int rc = want ? uv_read_start(stream, on_alloc, on_read) : uv_read_stop(stream);
  if (rc != 0) {
    close_connection(c);
    return;
  }
  c->reading = want;
}

void dispatch(Connection* c, pb::Request&& request) {
  c->server->stats.requests++;
  c->inflight++;
  Responder responder;
  responder.state_ = std::make_shared<Responder::State>();
  responder.state_->conn = c->cell;
  responder.state_->request_id = request.id();
  responder.request_id_ = request.id();
  c->server->handler(std::move(request), std::move(responder));
}

// Hands buffered frames to the handler while under max_inflight, then reads only if
// there is room for more. Re-entered from a synchronous reply: the outer call goes on.
void pump(Connection* c) {
  if (c->pumping) return;
  c->pumping = true;
  while (c->server != nullptr && c->inflight < c->server->options.max_inflight) {
    const std::optional<std::string_view> payload = c->decoder.next();
    if (!payload) break;
    pb::Request request;
    if (!request.ParseFromArray(payload->data(), static_cast<int>(payload->size()))) {
      c->server->stats.rejected_protocol++;
      close_connection(c);
      break;
    }
    dispatch(c, std::move(request));  // may close c (stop(), failed write)
  }
  c->pumping = false;
  if (c->server != nullptr) set_reading(c, c->inflight < c->server->options.max_inflight);
}

void on_idle_timeout(uv_timer_t* timer) {
  auto* c = static_cast<Connection*>(timer->data);
  if (c->server == nullptr) return;
  // A held request (WaitJob, a poll) or a reply still going out: not idle. The repeating
  // timer looks again; send_reply restarts it when the last request is answered.
  if (c->inflight > 0 || uv_stream_get_write_queue_size(c->stream()) > 0) {
    return;
  }
  c->server->stats.closed_idle++;
  close_connection(c);
}

// (Re)starts the idle clock: at the handshake's end and whenever the peer sends bytes.
void arm_idle_timer(Connection* c) {
  const uint64_t ms = c->server->options.idle_timeout_ms;
  if (ms == 0) return;
  uv_timer_start(&c->timer, on_idle_timeout, ms, ms);
}

// The channel refused the peer: count it, charge a wrong token to its source's bucket,
// send the alert (if any) so the peer learns why, and close.
void on_linger_timeout(uv_timer_t* timer) {
  auto* c = static_cast<Connection*>(timer->data);
  if (c->server != nullptr) close_connection(c);
}

void reject(Connection* c, const Error& e, std::string alert) {
  ServerCore* s = c->server;
  // No reply may go out on a failed channel (a held request answered later is dropped),
  // and the alert gets a short while to leave: a peer that never reads it does not keep
  // the connection.
  *c->cell = nullptr;
  uv_timer_start(&c->timer, on_linger_timeout, kRejectLingerMs, 0);
  if (e.code == Errc::kUnauthenticated) {
    s->stats.rejected_auth++;
    Source& src = source_of(*s, c->source);
    refill(*s, src);
    src.tokens = std::max(0.0, src.tokens - 1);
  } else {
    s->stats.rejected_protocol++;
  }
  c->phase = Connection::Phase::kRejecting;
  set_reading(c, false);
  if (c->server == nullptr) return;
  if (alert.empty()) {
    close_connection(c);
  } else {
    write_bytes(c, std::move(alert), /*close_after=*/true);
  }
}

// The peer proved itself: from the unauthenticated budget to the authenticated one.
// The peer proved the token (TLS-PSK: its binder checked out, before the handshake is
// over): from the unauthenticated budget, where a flood could push it out, to the
// authenticated one. The handshake deadline still runs until the channel is open.
bool admit(Connection* c) {
  ServerCore* s = c->server;
  leave_pending(s, c);
  if (s->authenticated >= s->options.max_connections) {
    s->stats.rejected_limit++;
    close_connection(c);
    return false;
  }
  c->authenticated = true;
  s->authenticated++;
  return true;
}

// The handshake is over: frames may flow.
void on_open(Connection* c) {
  uv_timer_stop(&c->timer);
  c->phase = Connection::Phase::kFrames;
  arm_idle_timer(c);
}

void on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
  auto* c = static_cast<Connection*>(stream->data);
  if (c->server == nullptr || nread == 0) return;
  if (nread < 0) {  // EOF, ECONNRESET, ...: the peer is gone, nothing to count
    close_connection(c);
    return;
  }
  if (c->phase == Connection::Phase::kRejecting) return;
  ServerCore* s = c->server;
  std::string& app = s->app_bytes;
  std::string& out = s->reply_bytes;
  app.clear();
  out.clear();
  // Nothing reaches the frame decoder before the channel is open: the peer has proved
  // the token (or its certificate), and every byte since has passed its record's check.
  const bool was_open = c->channel->open();
  Status st = c->channel->feed(std::string_view(buf->base, static_cast<size_t>(nread)), &app, &out);
  if (!st) {
    reject(c, st.error(), std::move(out));
    return;
  }
  if (!out.empty() && !write_bytes(c, std::string(out), /*close_after=*/false)) return;
  if (!c->authenticated && c->channel->peer_proved() && !admit(c)) return;
  if (!was_open) {
    if (!c->channel->open()) return;
    on_open(c);
  }
  arm_idle_timer(c);
  if (!app.empty() && !c->decoder.feed(app)) {
    s->stats.rejected_protocol++;
    close_connection(c);
    return;
  }
  pump(c);
}

void on_handshake_timeout(uv_timer_t* timer) {
  auto* c = static_cast<Connection*>(timer->data);
  if (c->server == nullptr) return;
  c->server->stats.rejected_limit++;
  close_connection(c);
}

std::string peer_key(const uv_tcp_t* tcp) {
  sockaddr_storage peer{};
  int len = sizeof peer;
  if (uv_tcp_getpeername(tcp, reinterpret_cast<sockaddr*>(&peer), &len) != 0) return {};
  return source_key(peer);
}

void on_connection(uv_stream_t* listener, int status) {
  auto* s = static_cast<ServerCore*>(listener->data);
  if (status < 0 || s->stopped) return;  // e.g. EMFILE: libuv already dropped the peer
  auto* c = new Connection(s);
  CARDNODE_CHECK(uv_tcp_init(s->loop, &c->tcp) == 0);
  CARDNODE_CHECK(uv_timer_init(s->loop, &c->timer) == 0);
  c->tcp.data = c;
  c->timer.data = c;
  c->open_handles = 2;
  s->connections.insert(c);
  s->stats.active = s->connections.size();
  if (uv_accept(listener, reinterpret_cast<uv_stream_t*>(&c->tcp)) != 0) {
    close_connection(c);
    return;
  }
  c->source = peer_key(&c->tcp);
  if (s->authenticated >= s->options.max_connections) {  // no room even if it proves itself
    s->stats.rejected_limit++;
    close_connection(c);
    return;
  }
  Source& src = source_of(*s, c->source);
  refill(*s, src);
  if (src.tokens < 1) {
    s->stats.rejected_rate++;
    close_connection(c);
    return;
  }
  if (s->options.max_unauthenticated == 0 || s->options.max_unauthenticated_per_source == 0) {
    s->stats.rejected_limit++;
    close_connection(c);
    return;
  }
  // Make room by pushing out the oldest handshake, of this source first: a flood only ever
  // displaces itself, and the newest connection (a token holder's) is the last to go.
  Connection* evict = nullptr;
  if (src.pending.size() >= s->options.max_unauthenticated_per_source) {
    evict = src.pending.front();
  } else if (s->unauthenticated.size() >= s->options.max_unauthenticated) {
    // The oldest handshake of a source that has several: a client has one handshake at a
    // time, a flood many, so a client survives a flood from any number of addresses that
    // each hold two or more. Only when every source holds one does the oldest of all go.
    evict = s->unauthenticated.front();
    uint32_t looked = 0;  // bounded: a flood of one-connection sources must not cost O(n)
    for (Connection* p : s->unauthenticated) {
      if (++looked > kEvictScanMax) break;
      auto it = s->sources.find(p->source);
      if (it != s->sources.end() && it->second.pending.size() > 1) {
        evict = p;
        break;
      }
    }
  }
  if (evict != nullptr) {
    s->stats.evicted++;
    close_connection(evict);
  }
  c->pending = true;
  c->pending_it = s->unauthenticated.insert(s->unauthenticated.end(), c);
  c->source_it = src.pending.insert(src.pending.end(), c);
  s->stats.unauthenticated = s->unauthenticated.size();
  s->stats.accepted++;
  uv_tcp_nodelay(&c->tcp, 1);
  // A client waiting on WaitJob is silent for long; keepalive finds one whose board
  // vanished, so it does not hold a max_connections slot forever.
  uv_tcp_keepalive(&c->tcp, 1, kKeepaliveDelaySeconds);
  std::string hello;
  if (Status st = c->channel->start(&hello); !st) {
    close_connection(c);
    return;
  }
  if (!hello.empty() && !write_bytes(c, std::move(hello), /*close_after=*/false)) return;
  uv_timer_start(&c->timer, on_handshake_timeout, s->options.handshake_timeout_ms, 0);
  set_reading(c, true);
}

void delete_listener(uv_handle_t* handle) {
  delete reinterpret_cast<uv_tcp_t*>(handle);
}

void delete_local_listener(uv_handle_t* handle) {
  delete reinterpret_cast<uv_pipe_t*>(handle);
}

// Who is at the other end of a local connection, as the kernel says (SO_PEERCRED): only
// root or this process's own user may use it. The socket's mode (0600, in a 0700 data
// dir) already keeps others out; this holds if either was loosened.
bool local_peer_allowed(uv_pipe_t* pipe) {
  uv_os_fd_t fd = -1;
  if (uv_fileno(reinterpret_cast<uv_handle_t*>(pipe), &fd) != 0) return false;
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return false;
  return cred.uid == 0 || cred.uid == ::geteuid();
}

// A connection on the local socket: no handshake and no strangers' budget (the kernel
// named the peer), straight to frames, counted against max_connections like any other.
void on_local_connection(uv_stream_t* listener, int status) {
  auto* s = static_cast<ServerCore*>(listener->data);
  if (status < 0 || s->stopped) return;
  auto* c = new Connection(s, local_channel());
  c->local = true;
  CARDNODE_CHECK(uv_pipe_init(s->loop, &c->pipe, 0) == 0);
  CARDNODE_CHECK(uv_timer_init(s->loop, &c->timer) == 0);
  c->pipe.data = c;
  c->timer.data = c;
  c->open_handles = 2;
  s->connections.insert(c);
  s->stats.active = s->connections.size();
  if (uv_accept(listener, c->stream()) != 0) {
    close_connection(c);
    return;
  }
  c->source = "local";
  if (!local_peer_allowed(&c->pipe)) {
    s->stats.rejected_auth++;
    close_connection(c);
    return;
  }
  if (s->authenticated >= s->options.max_connections) {
    s->stats.rejected_limit++;
    close_connection(c);
    return;
  }
  s->stats.accepted++;
  s->stats.accepted_local++;
  c->authenticated = true;
  s->authenticated++;
  on_open(c);
  set_reading(c, true);
}

}  // namespace

namespace {

void send_reply(Responder::State* state, pb::Response&& response) {
  if (state->replied) return;
  state->replied = true;
  if (state->sink) {
    response.set_id(state->request_id);
    state->sink(std::move(response));
    return;
  }
  Connection* c = *state->conn;
  if (c == nullptr || c->server == nullptr || c->phase != Connection::Phase::kFrames) return;
  c->inflight--;
  if (c->inflight == 0) arm_idle_timer(c);  // idle counts from the last answer, not before
  response.set_id(state->request_id);
  std::string frame;
  if (Status st = encode_frame(response, &frame); !st) {
    // Too big to send: the client still gets an answer for its id.
    pb::Response error;
    error.set_id(state->request_id);
    error.set_error(pb::RESOURCE_EXHAUSTED);
    error.set_error_message("response not sent: " + st.error().describe());
    frame.clear();
    CARDNODE_CHECK(encode_frame(error, &frame).has_value());
  }
  std::string sealed;
  if (Status st = c->channel->seal(frame, &sealed); !st) {
    close_connection(c);
    return;
  }
  if (write_bytes(c, std::move(sealed), /*close_after=*/false)) pump(c);
}

}  // namespace

Responder::State::~State() {
  if (replied) return;
  pb::Response dropped;
  dropped.set_error(pb::INTERNAL);
  dropped.set_error_message("request dropped by the server without a reply");
  send_reply(this, std::move(dropped));
}

Responder Responder::to(std::function<void(pb::Response&&)> sink) {
  Responder r;
  r.state_ = std::make_shared<State>();
  r.state_->conn = std::make_shared<Connection*>(nullptr);
  r.state_->sink = std::move(sink);
  return r;
}

void Responder::reply(pb::Response&& response) const {
  if (state_) send_reply(state_.get(), std::move(response));
}

struct RpcServer::Impl : ServerCore {
  using ServerCore::ServerCore;
  void stop();
};

void RpcServer::Impl::stop() {
  if (stopped) return;
  stopped = true;
  if (listener != nullptr) {
    uv_close(reinterpret_cast<uv_handle_t*>(listener), delete_listener);
    listener = nullptr;
  }
  if (local_listener != nullptr) {
    uv_close(reinterpret_cast<uv_handle_t*>(local_listener), delete_local_listener);
    local_listener = nullptr;
  }
  if (!local_path.empty()) {
    // libuv's close of a bound pipe unlinks it too; this says so here, and a client then
    // finds no file and goes by TCP at once.
    (void)::unlink(local_path.c_str());
    local_path.clear();
  }
  while (!connections.empty()) close_connection(*connections.begin());  // each erases itself
  sources.clear();
}

RpcServer::RpcServer(uv_loop_t* loop, std::shared_ptr<const SecurityContext> security,
                     RpcServerOptions options, RequestHandler handler)
    : impl_(std::make_unique<Impl>(loop, std::move(security), std::move(options),
                                   std::move(handler))) {
  CARDNODE_CHECK(impl_->security != nullptr &&
                 impl_->security->role() == SecurityContext::Role::kServer);
  CARDNODE_CHECK(impl_->options.max_inflight >= 1);
}

RpcServer::RpcServer(uv_loop_t* loop, const std::string& token, RpcServerOptions options,
                     RequestHandler handler)
    : RpcServer(loop, SecurityContext::psk(token, SecurityContext::Role::kServer),
                std::move(options), std::move(handler)) {}

RpcServer::~RpcServer() {
  impl_->stop();
}

namespace {

// The directory a local socket goes in: ours (or root's) and writable by no one else, so no
// other user can put a file, a symlink or a socket of their own at the path.
Status check_socket_dir(const std::string& path) {
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "."
                          : slash == 0               ? "/"
                                                     : path.substr(0, slash);
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) return fail_errno(errno, "stat " + dir);
  if (!S_ISDIR(st.st_mode)) return fail(Errc::kInvalidArgument, dir + " is not a directory");
  if (st.st_uid != ::geteuid() && st.st_uid != 0) {
    return fail(Errc::kInvalidArgument, dir + " belongs to another user");
  }
  if ((st.st_mode & 022) != 0) {
    return fail(Errc::kInvalidArgument, dir + " is writable by others (chmod go-w " + dir +
                                            ", or 0700 as cardnode makes it)");
  }
  return {};
}

}  // namespace

Status RpcServer::listen_local(const std::string& path) {
  ServerCore& s = *impl_;
  CARDNODE_CHECK(s.listener != nullptr && s.local_listener == nullptr && !s.stopped);
  sockaddr_un probe{};
  if (path.size() >= sizeof probe.sun_path) {
    return fail(Errc::kInvalidArgument,
                "local socket path too long (" + std::to_string(path.size()) + " bytes, at most " +
                    std::to_string(sizeof probe.sun_path - 1) + "): " + path);
  }
  if (Status st = check_socket_dir(path); !st) return st;
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return fail(Errc::kInvalidArgument, path + " exists and is not a socket");
    }
    if (::unlink(path.c_str()) != 0) return fail_errno(errno, "remove stale " + path);
  }
  auto* listener = new uv_pipe_t{};
  CARDNODE_CHECK(uv_pipe_init(s.loop, listener, 0) == 0);
  listener->data = &s;
  // Made 0600 by bind itself (no chmod of a path afterwards, which would follow a
  // symlink). umask is the process's: listen_local runs at start-up, before the threads.
  const mode_t old_mask = ::umask(0177);
  int rc = uv_pipe_bind(listener, path.c_str());
  ::umask(old_mask);
  if (rc == 0) s.local_path = path;
  if (rc == 0) {
    rc = uv_listen(reinterpret_cast<uv_stream_t*>(listener), kListenBacklog, on_local_connection);
  }
  if (rc != 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(listener), delete_local_listener);
    return fail(Errc::kUnavailable, "cannot listen on " + path, -rc);
  }
  s.local_listener = listener;
  return {};
}

Result<std::string> RpcServer::start() {
  Impl& s = *impl_;
  CARDNODE_CHECK(s.listener == nullptr && !s.stopped);
  Result<HostPort> hp = parse_host_port(s.options.listen);
  if (!hp) return std::unexpected(hp.error());
  Result<sockaddr_storage> addr = resolve(*hp);
  if (!addr) return std::unexpected(addr.error());
  // libuv writes with write(2): a peer resetting mid-reply must not kill the process.
  (void)std::signal(SIGPIPE, SIG_IGN);  // cannot fail for SIGPIPE
  auto* listener = new uv_tcp_t{};
  CARDNODE_CHECK(uv_tcp_init(s.loop, listener) == 0);
  listener->data = static_cast<ServerCore*>(&s);
  int rc = uv_tcp_bind(listener, reinterpret_cast<const sockaddr*>(&*addr), 0);
  if (rc == 0) {
    rc = uv_listen(reinterpret_cast<uv_stream_t*>(listener), kListenBacklog, on_connection);
  }
  if (rc != 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(listener), delete_listener);
    return fail(Errc::kUnavailable, "cannot listen on " + s.options.listen, -rc);
  }
  s.listener = listener;
  sockaddr_storage bound{};
  int bound_len = sizeof bound;
  rc = uv_tcp_getsockname(listener, reinterpret_cast<sockaddr*>(&bound), &bound_len);
  if (rc != 0) return fail(Errc::kInternal, "getsockname on " + s.options.listen, -rc);
  return format_sockaddr(reinterpret_cast<const sockaddr*>(&bound));
}

void RpcServer::stop() {
  impl_->stop();
}

const RpcServerStats& RpcServer::stats() const {
  return impl_->stats;
}

}  // namespace cardnode::net
