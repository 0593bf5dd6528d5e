#include "net/rpc_client.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <climits>
#include <csignal>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <utility>
#include <vector>

#include "net/address.h"
#include "net/channel.h"
#include "net/frame.h"

namespace cardnode::net {
namespace {

constexpr size_t kReadChunkBytes = 64u << 10;
constexpr size_t kAddressesMax = 8;
constexpr int kKeepaliveProbes = 3;

struct Core;
struct Conn;

// A hostname lookup in flight. Owned by itself: deleted in its callback, which libuv
// always runs (with UV_EAI_CANCELED after uv_cancel). `conn` is nullptr once the
// attempt it served is gone.
struct Resolve {
  uv_getaddrinfo_t req{};
  Conn* conn = nullptr;
};

// One attempt, and the session it becomes. Owned by its TCP handle: deleted in the close
// callback, which libuv runs after the connect and write callbacks (UV_ECANCELED).
struct Conn {
  // kResolving and kConnecting end as a connect failure, kHandshake as a handshake
  // failure, kUp as a disconnect.
  enum class Phase { kResolving, kConnecting, kHandshake, kUp };

  Conn(Core* c, std::unique_ptr<Channel> ch) : core(c), notify(c), channel(std::move(ch)) {}

  uv_tcp_t tcp{};
  uv_connect_t connect_req{};
  // nullptr from the moment the connection starts closing: every libuv callback checks
  // it, so nothing that arrives late acts on the client.
  Core* core;
  // Who learns of the close in the close callback; nullptr after stop(), which has done
  // the telling itself.
  Core* notify;
  Resolve* resolve = nullptr;
  Phase phase = Phase::kResolving;
  std::unique_ptr<Channel> channel;  // the handshake, then sealing and opening records
  FrameDecoder decoder;
  uint64_t up_since_ms = 0;
  Error error;  // why it closed
};

struct WriteRequest {
  uv_write_t req{};
  std::string bytes;
};

struct Pending {
  RpcClient::OnResponse cb;
  uint64_t deadline_ms = 0;  // loop time; 0: none
};

// Everything the libuv callbacks need; RpcClient::Impl is this plus nothing.
struct Core {
  // kIdle -> kConnecting [-> kUp] -> kClosing -> kBackoff -> kConnecting ...; any -> kStopped.
  // kClosing lasts from uv_close() to its callback, where the ending is told.
  enum class State { kIdle, kConnecting, kUp, kClosing, kBackoff, kStopped };

  Core(uv_loop_t* l, RpcClientOptions o, RpcClient::OnUp up, RpcClient::OnDown down)
      : loop(l),
        options(std::move(o)),
        on_up(std::move(up)),
        on_down(std::move(down)),
        rng(options.jitter_seed != 0 ? options.jitter_seed : std::random_device{}()) {}

  uv_loop_t* loop;
  RpcClientOptions options;
  RpcClient::OnUp on_up;
  RpcClient::OnDown on_down;
  RpcClientStats stats;
  State state = State::kIdle;
  HostPort target;
  std::string port_text;
  bool literal = false;  // target.host is an IP address: addresses[0], no lookup
  // Heap-allocated, freed by their close callbacks (the client may be gone by then).
  uv_timer_t* attempt_timer = nullptr;   // connect timeout in kConnecting, delay in kBackoff
  uv_timer_t* deadline_timer = nullptr;  // the earliest call deadline
  Conn* conn = nullptr;  // the attempt or session, open or closing: at most one at a time
  std::vector<sockaddr_storage> addresses;  // the last resolution, bounded by kAddressesMax
  uint32_t failures = 0;                    // consecutive, for the backoff
  uint64_t next_id = 1;
  std::map<uint64_t, Pending> pending;                // by id; bounded by inflight_max
  std::set<std::pair<uint64_t, uint64_t>> deadlines;  // (deadline_ms, id), same bound
  std::mt19937_64 rng;
  std::unique_ptr<char[]> read_buffer = std::make_unique<char[]>(kReadChunkBytes);
  std::string app_bytes;  // what one read opened up; reused (reads do not nest)
  std::shared_ptr<const SecurityContext> security;  // from options: made in start()
  int callback_depth = 0;  // > 0 while a user callback runs; the destructor checks it
};

// Runs a user callback, so that the destructor can tell it is not called from one.
template <class F, class... Args>
void invoke(Core* core, F& fn, Args&&... args) {
  if (!fn) return;
  core->callback_depth++;
  fn(std::forward<Args>(args)...);
  core->callback_depth--;
}

void delete_timer(uv_handle_t* handle) {
  delete reinterpret_cast<uv_timer_t*>(handle);
}

uint64_t now_ms(const Core* core) {
  return uv_now(core->loop);
}

void begin_attempt(Core* core);
void on_conn_closed(uv_handle_t* handle);

// Closes the connection's handles; no callback of it acts on the client after this.
void close_conn_handles(Conn* c) {
  c->core = nullptr;
  if (c->resolve != nullptr) {
    c->resolve->conn = nullptr;
    uv_cancel(reinterpret_cast<uv_req_t*>(&c->resolve->req));  // if it has not started
    c->resolve = nullptr;
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&c->tcp), on_conn_closed);
}

// Ends an attempt or a session. The rest — failing its calls, on_down, the backoff —
// happens in the close callback, so that it never runs inside call().
void end_conn(Conn* c, Error error) {
  Core* core = c->core;
  if (core == nullptr) return;  // already closing
  switch (c->phase) {
    case Conn::Phase::kResolving:
    case Conn::Phase::kConnecting: core->stats.connect_failures++; break;
    case Conn::Phase::kHandshake: core->stats.handshake_failures++; break;
    case Conn::Phase::kUp: core->stats.disconnects++; break;
  }
  c->error = std::move(error);
  uv_timer_stop(core->attempt_timer);
  core->state = Core::State::kClosing;
  close_conn_handles(c);
}

void set_inflight(Core* core) {
  core->stats.inflight = core->pending.size();
}

// Fails every waiting call with `error`. A callback may call stop(); the rest still get
// `error`, each exactly once.
void fail_pending(Core* core, const Error& error) {
  std::map<uint64_t, Pending> pending = std::exchange(core->pending, {});
  core->deadlines.clear();
  set_inflight(core);
  if (core->deadline_timer != nullptr) uv_timer_stop(core->deadline_timer);
  for (auto& [id, p] : pending) invoke(core, p.cb, std::unexpected(error));
}

uint64_t backoff_delay_ms(Core* core) {
  const uint64_t floor_ms = std::max<uint64_t>(1, core->options.backoff_first_ms / 2);
  const uint64_t ceiling_ms = std::max(floor_ms, backoff_ceiling_ms(core->options, core->failures));
  return std::uniform_int_distribution<uint64_t>(floor_ms, ceiling_ms)(core->rng);
}

void on_backoff_done(uv_timer_t* timer) {
  auto* core = static_cast<Core*>(timer->data);
  if (core->state == Core::State::kBackoff) begin_attempt(core);
}

// The connection is closed: schedule the next attempt, then tell the calls and on_down.
void after_close(Core* core, bool was_up, uint64_t up_ms, const Error& error) {
  if (was_up && up_ms >= core->options.stable_session_ms) core->failures = 0;
  const uint64_t delay_ms = backoff_delay_ms(core);
  if (core->failures < UINT32_MAX) core->failures++;
  core->stats.backoff_ms = delay_ms;
  core->state = Core::State::kBackoff;
  uv_timer_start(core->attempt_timer, on_backoff_done, delay_ms, 0);
  if (!core->pending.empty()) {
    fail_pending(core,
                 Error{Errc::kUnavailable, "session with " + core->options.address +
                                               " ended before the response: " + error.describe()});
  }
  if (core->state != Core::State::kStopped) invoke(core, core->on_down, error);
}

void on_conn_closed(uv_handle_t* handle) {
  std::unique_ptr<Conn> c(static_cast<Conn*>(handle->data));
  Core* core = c->notify;
  if (core == nullptr) return;  // stop() came first and did the telling
  CARDNODE_CHECK(core->conn == c.get() && core->state == Core::State::kClosing);
  core->conn = nullptr;
  const bool was_up = c->phase == Conn::Phase::kUp;
  after_close(core, was_up, was_up ? now_ms(core) - c->up_since_ms : 0, c->error);
}

void on_write_done(uv_write_t* req, int status) {
  std::unique_ptr<WriteRequest> w(static_cast<WriteRequest*>(req->data));
  auto* c = static_cast<Conn*>(req->handle->data);
  if (status < 0 && c->core != nullptr) {
    end_conn(c, Error{Errc::kUnavailable, "connection to " + c->core->options.address + " failed",
                      -status});
  }
}

// Queues bytes. Fails, and ends the connection, over the write-queue bound or on a
// write error.
Status write_bytes(Conn* c, std::string bytes) {
  Core* core = c->core;
  auto* stream = reinterpret_cast<uv_stream_t*>(&c->tcp);
  const uint64_t queued = uv_stream_get_write_queue_size(stream);
  if (queued + bytes.size() > core->options.write_queue_bytes_max) {
    core->stats.write_queue_overflows++;
    Error error{Errc::kUnavailable, "server at " + core->options.address + " is not reading (" +
                                        std::to_string(queued) + " bytes unsent)"};
    end_conn(c, error);
    return std::unexpected(std::move(error));
  }
  auto w = std::make_unique<WriteRequest>();
  w->bytes = std::move(bytes);
  w->req.data = w.get();
  const uv_buf_t buf = uv_buf_init(w->bytes.data(), static_cast<unsigned int>(w->bytes.size()));
  if (const int rc = uv_write(&w->req, stream, &buf, 1, on_write_done); rc != 0) {
    Error error{Errc::kUnavailable, "connection to " + core->options.address + " failed", -rc};
    end_conn(c, error);
    return std::unexpected(std::move(error));
  }
  (void)w.release();  // on_write_done owns it now
  return {};
}

// ---------------------------------------------------------------- calls and deadlines

void on_deadline(uv_timer_t* timer);

void arm_deadline_timer(Core* core) {
  if (core->deadlines.empty()) {
    uv_timer_stop(core->deadline_timer);
    return;
  }
  const uint64_t first = core->deadlines.begin()->first;
  const uint64_t now = now_ms(core);
  uv_timer_start(core->deadline_timer, on_deadline, first > now ? first - now : 0, 0);
}

void on_deadline(uv_timer_t* timer) {
  auto* core = static_cast<Core*>(timer->data);
  const uint64_t now = now_ms(core);
  // Each pass removes one entry; a callback may add (call()) or clear (stop()) entries,
  // but only with later deadlines or none.
  while (core->state != Core::State::kStopped && !core->deadlines.empty() &&
         core->deadlines.begin()->first <= now) {
    const auto [deadline_ms, id] = *core->deadlines.begin();
    core->deadlines.erase(core->deadlines.begin());
    auto it = core->pending.find(id);
    CARDNODE_CHECK(it != core->pending.end());  // a call and its deadline leave together
    Pending p = std::move(it->second);
    core->pending.erase(it);
    set_inflight(core);
    core->stats.timeouts++;
    invoke(core, p.cb,
           std::unexpected(Error{Errc::kUnavailable, "call to " + core->options.address +
                                                         " timed out (no response in time)"}));
  }
  if (core->state != Core::State::kStopped) arm_deadline_timer(core);
}

void deliver(Core* core, pb::Response&& response) {
  auto it = core->pending.find(response.id());
  if (it == core->pending.end()) {
    core->stats.dropped_responses++;
    return;
  }
  Pending p = std::move(it->second);
  core->pending.erase(it);
  if (p.deadline_ms != 0) core->deadlines.erase({p.deadline_ms, response.id()});
  set_inflight(core);
  core->stats.responses++;
  invoke(core, p.cb, Result<pb::Response>(std::move(response)));
}

// ---------------------------------------------------------------- the connection

Error protocol_error(Core* core, const std::string& what) {
  core->stats.protocol_errors++;
  return Error{Errc::kUnavailable, "protocol error from " + core->options.address + ": " + what};
}

void on_alloc(uv_handle_t* handle, size_t /*suggested*/, uv_buf_t* buf) {
  auto* c = static_cast<Conn*>(handle->data);
  if (c->core == nullptr) {
    *buf = uv_buf_init(nullptr, 0);  // read_cb gets UV_ENOBUFS
  } else {
    *buf = uv_buf_init(c->core->read_buffer.get(), kReadChunkBytes);
  }
}

void session_up(Conn* c) {
  Core* core = c->core;
  uv_timer_stop(core->attempt_timer);
  c->phase = Conn::Phase::kUp;
  c->up_since_ms = now_ms(core);
  core->state = Core::State::kUp;
  core->stats.connects++;
  invoke(core, core->on_up);
}

Error with_address(Core* core, const Error& e) {
  return Error{e.code, core->options.address + ": " + e.message, e.sys_errno};
}

// Bytes from the server: through the channel (the handshake, then opening records),
// then frames. Nothing is decoded before the server proved the token.
void read_bytes(Conn* c, size_t n) {
  Core* core = c->core;
  std::string& app = core->app_bytes;
  app.clear();
  std::string out;
  const bool was_open = c->channel->open();
  Status st = c->channel->feed(std::string_view(core->read_buffer.get(), n), &app, &out);
  if (!out.empty()) {
    // The handshake's next flight, or an alert; a write failure has ended the connection.
    if (!write_bytes(c, std::move(out))) return;
  }
  if (!st) {
    // A tampered or cut record is a protocol error; a refusal (TLS 1.3: a server's verdict
    // on our certificate comes after we are open) stays what it is.
    if (was_open && st.error().code != Errc::kUnauthenticated) {
      return end_conn(c, protocol_error(core, st.error().message));
    }
    return end_conn(c, with_address(core, st.error()));
  }
  if (!was_open) {
    if (!c->channel->open()) return;
    session_up(c);  // may end the session (stop())
    if (c->core == nullptr) return;
  }
  if (app.empty()) return;
  if (Status fst = c->decoder.feed(app); !fst) {
    return end_conn(c, protocol_error(core, fst.error().message));
  }
  // A callback may end the session (stop()): c->core tells.
  while (c->core != nullptr) {
    const std::optional<std::string_view> payload = c->decoder.next();
    if (!payload) break;
    pb::Response response;
    if (!response.ParseFromArray(payload->data(), static_cast<int>(payload->size()))) {
      return end_conn(c, protocol_error(core, "unparsable response"));
    }
    deliver(core, std::move(response));
  }
}

void on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* /*buf*/) {
  auto* c = static_cast<Conn*>(stream->data);
  Core* core = c->core;
  if (core == nullptr || nread == 0) return;
  if (nread < 0) {
    const bool handshake = c->phase != Conn::Phase::kUp;
    std::string what = "server at " + core->options.address + " closed the connection";
    if (handshake) what += " during the handshake";
    return end_conn(c, Error{Errc::kUnavailable, std::move(what),
                             nread == UV_EOF ? 0 : static_cast<int>(-nread)});
  }
  read_bytes(c, static_cast<size_t>(nread));
}

// Best effort: a socket that keeps the defaults still works, it only notices a dead
// path later.
void tune_socket(Conn* c, uint64_t dead_peer_ms) {
  uv_tcp_nodelay(&c->tcp, 1);  // small request frames
  const auto idle_s = static_cast<unsigned int>(std::max<uint64_t>(1, dead_peer_ms / 2000));
  uv_tcp_keepalive(&c->tcp, 1, idle_s);
  uv_os_fd_t fd = -1;
  if (uv_fileno(reinterpret_cast<uv_handle_t*>(&c->tcp), &fd) != 0) return;
  const int interval_s =
      static_cast<int>(std::max<uint64_t>(1, dead_peer_ms / 2000 / kKeepaliveProbes));
  const int probes = kKeepaliveProbes;
  const auto user_timeout_ms =
      static_cast<unsigned int>(std::min<uint64_t>(dead_peer_ms, INT32_MAX));
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval_s, sizeof interval_s);
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof probes);
  ::setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms, sizeof user_timeout_ms);
}

void on_connected(uv_connect_t* req, int status) {
  auto* c = static_cast<Conn*>(req->handle->data);
  Core* core = c->core;
  if (core == nullptr) return;  // UV_ECANCELED from a close
  if (status < 0) {
    return end_conn(
        c, Error{Errc::kUnavailable, "cannot reach server at " + core->options.address, -status});
  }
  tune_socket(c, core->options.dead_peer_ms);
  c->phase = Conn::Phase::kHandshake;
  std::string hello;
  if (Status st = c->channel->start(&hello); !st)
    return end_conn(c, with_address(core, st.error()));
  if (!hello.empty() && !write_bytes(c, std::move(hello))) return;
  if (const int rc = uv_read_start(reinterpret_cast<uv_stream_t*>(&c->tcp), on_alloc, on_read);
      rc != 0) {
    end_conn(c,
             Error{Errc::kUnavailable, "connection to " + core->options.address + " failed", -rc});
  }
}

void connect_to(Conn* c, const sockaddr_storage& addr) {
  c->phase = Conn::Phase::kConnecting;
  if (const std::string& from = c->core->options.source_address; !from.empty()) {
    sockaddr_storage local{};
    const bool v6 = addr.ss_family == AF_INET6;
    const int prc = v6 ? uv_ip6_addr(from.c_str(), 0, reinterpret_cast<sockaddr_in6*>(&local))
                       : uv_ip4_addr(from.c_str(), 0, reinterpret_cast<sockaddr_in*>(&local));
    const int brc =
        prc == 0 ? uv_tcp_bind(&c->tcp, reinterpret_cast<const sockaddr*>(&local), 0) : prc;
    if (brc != 0) {
      return end_conn(c, Error{Errc::kInvalidArgument, "cannot connect from " + from, -brc});
    }
  }
  const int rc = uv_tcp_connect(&c->connect_req, &c->tcp, reinterpret_cast<const sockaddr*>(&addr),
                                on_connected);
  if (rc != 0) {
    end_conn(c,
             Error{Errc::kUnavailable, "cannot reach server at " + c->core->options.address, -rc});
  }
}

void on_resolved(uv_getaddrinfo_t* req, int status, addrinfo* list) {
  std::unique_ptr<Resolve> r(static_cast<Resolve*>(req->data));
  std::unique_ptr<addrinfo, void (*)(addrinfo*)> guard(list, uv_freeaddrinfo);
  Conn* c = r->conn;
  if (c == nullptr) return;  // the attempt ended (timeout, stop()) meanwhile
  c->resolve = nullptr;
  Core* core = c->core;
  if (status < 0) {
    return end_conn(c, Error{Errc::kUnavailable,
                             "cannot resolve '" + core->target.host + "': " + uv_strerror(status)});
  }
  core->addresses.clear();
  for (const addrinfo* ai = list; ai != nullptr && core->addresses.size() < kAddressesMax;
       ai = ai->ai_next) {
    if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
        ai->ai_addrlen > sizeof(sockaddr_storage)) {
      continue;
    }
    sockaddr_storage addr{};
    std::memcpy(&addr, ai->ai_addr, ai->ai_addrlen);
    core->addresses.push_back(addr);
  }
  if (core->addresses.empty()) {
    return end_conn(
        c, Error{Errc::kUnavailable, "cannot resolve '" + core->target.host + "': no IP address"});
  }
  // getaddrinfo orders by preference (RFC 6724); each failure moves on to the next.
  connect_to(c, core->addresses[core->failures % core->addresses.size()]);
}

void start_resolve(Conn* c) {
  Core* core = c->core;
  auto* r = new Resolve;
  r->conn = c;
  r->req.data = r;
  c->resolve = r;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  const int rc = uv_getaddrinfo(core->loop, &r->req, on_resolved, core->target.host.c_str(),
                                core->port_text.c_str(), &hints);
  if (rc != 0) {
    c->resolve = nullptr;
    delete r;
    end_conn(c, Error{Errc::kUnavailable,
                      "cannot resolve '" + core->target.host + "': " + uv_strerror(rc)});
  }
}

// An IP literal, v4 or v6 (with a %zone), needs no lookup.
bool parse_literal(const HostPort& hp, sockaddr_storage* out) {
  *out = {};
  if (uv_ip4_addr(hp.host.c_str(), hp.port, reinterpret_cast<sockaddr_in*>(out)) == 0) return true;
  *out = {};
  return uv_ip6_addr(hp.host.c_str(), hp.port, reinterpret_cast<sockaddr_in6*>(out)) == 0;
}

void on_attempt_timeout(uv_timer_t* timer) {
  auto* core = static_cast<Core*>(timer->data);
  if (core->state != Core::State::kConnecting || core->conn == nullptr) return;
  end_conn(core->conn, Error{Errc::kUnavailable,
                             "timed out connecting to " + core->options.address + " after " +
                                 std::to_string(core->options.connect_timeout_ms) + " ms"});
}

void begin_attempt(Core* core) {
  CARDNODE_CHECK(core->conn == nullptr);
  CARDNODE_CHECK(core->state == Core::State::kIdle || core->state == Core::State::kBackoff);
  core->state = Core::State::kConnecting;
  core->stats.attempts++;
  auto* c = new Conn(core, core->security->channel());
  CARDNODE_CHECK(uv_tcp_init(core->loop, &c->tcp) == 0);
  c->tcp.data = c;
  core->conn = c;
  uv_timer_start(core->attempt_timer, on_attempt_timeout, core->options.connect_timeout_ms, 0);
  if (core->literal) {
    connect_to(c, core->addresses[0]);
  } else {
    start_resolve(c);
  }
}

}  // namespace

uint64_t backoff_ceiling_ms(const RpcClientOptions& options, uint32_t failures) {
  uint64_t ceiling = options.backoff_first_ms;
  for (uint32_t i = 0; i < failures && ceiling < options.backoff_max_ms; ++i) {
    ceiling = ceiling > UINT64_MAX / 2 ? UINT64_MAX : ceiling * 2;
  }
  return std::min(ceiling, options.backoff_max_ms);
}

struct RpcClient::Impl : Core {
  using Core::Core;
  void stop();
};

void RpcClient::Impl::stop() {
  if (state == State::kStopped) return;
  state = State::kStopped;
  uv_close(reinterpret_cast<uv_handle_t*>(attempt_timer), delete_timer);
  uv_close(reinterpret_cast<uv_handle_t*>(deadline_timer), delete_timer);
  attempt_timer = nullptr;
  deadline_timer = nullptr;
  if (conn != nullptr) {
    conn->notify = nullptr;
    if (conn->core != nullptr) close_conn_handles(conn);
    conn = nullptr;
  }
  fail_pending(this, Error{Errc::kCancelled, "client stopped"});
}

RpcClient::RpcClient(uv_loop_t* loop, RpcClientOptions options, OnUp on_up, OnDown on_down)
    : impl_(
          std::make_unique<Impl>(loop, std::move(options), std::move(on_up), std::move(on_down))) {
  const RpcClientOptions& o = impl_->options;
  CARDNODE_CHECK(o.inflight_max >= 1);
  CARDNODE_CHECK(o.connect_timeout_ms >= 1);
  CARDNODE_CHECK(o.backoff_first_ms >= 1 && o.backoff_max_ms >= o.backoff_first_ms);
  // One whole frame, sealed: 22 bytes of TLS per 16 KiB record on top.
  CARDNODE_CHECK(o.write_queue_bytes_max >= kFrameHeaderBytes + kFrameBytesMax + kSealSlackBytes);
  for (uv_timer_t** t : {&impl_->attempt_timer, &impl_->deadline_timer}) {
    *t = new uv_timer_t{};
    CARDNODE_CHECK(uv_timer_init(loop, *t) == 0);
    (*t)->data = static_cast<Core*>(impl_.get());
  }
}

RpcClient::~RpcClient() {
  // Destroying the client from inside its own callback would free what the caller of
  // that callback is still using.
  CARDNODE_CHECK(impl_->callback_depth == 0);
  impl_->stop();
}

Status RpcClient::start() {
  Impl& s = *impl_;
  CARDNODE_CHECK(s.state == Core::State::kIdle);
  Result<HostPort> hp = parse_host_port(s.options.address);
  if (!hp) return std::unexpected(hp.error());
  if (hp->port == 0) {
    return fail(Errc::kInvalidArgument, "bad address '" + s.options.address + "': port 0");
  }
  s.target = std::move(*hp);
  s.port_text = std::to_string(s.target.port);
  sockaddr_storage literal{};
  s.literal = parse_literal(s.target, &literal);
  if (s.literal) s.addresses = {literal};
  s.security = s.options.security;
  if (!s.security) {
    if (s.options.token.empty()) return fail(Errc::kInvalidArgument, "no cluster token");
    SecurityOptions o;
    o.token = s.options.token;
    auto security = SecurityContext::create(o, SecurityContext::Role::kClient);
    if (!security) return std::unexpected(security.error());
    s.security = std::move(*security);
  }
  CARDNODE_CHECK(s.security->role() == SecurityContext::Role::kClient);
  // libuv writes with write(2): a server resetting mid-request must not kill the process.
  (void)std::signal(SIGPIPE, SIG_IGN);  // cannot fail for SIGPIPE
  begin_attempt(&s);
  return {};
}

void RpcClient::stop() {
  impl_->stop();
}

bool RpcClient::up() const {
  return impl_->state == Core::State::kUp;
}

Status RpcClient::call(pb::Request request, OnResponse cb, uint64_t timeout_ms) {
  Impl& s = *impl_;
  if (s.state != Core::State::kUp) {
    return fail(Errc::kUnavailable, "not connected to " + s.options.address);
  }
  if (s.pending.size() >= s.options.inflight_max) {
    s.stats.rejected_busy++;
    return fail(Errc::kBusy, std::to_string(s.pending.size()) + " calls to " + s.options.address +
                                 " await a response (the limit)");
  }
  const uint64_t id = s.next_id++;
  request.set_id(id);
  std::string frame;
  if (Status st = encode_frame(request, &frame); !st) return st;
  std::string sealed;
  if (Status st = s.conn->channel->seal(frame, &sealed); !st) {
    end_conn(s.conn, with_address(&s, st.error()));  // a failed channel: the session is over
    return st;
  }
  if (Status st = write_bytes(s.conn, std::move(sealed)); !st) return st;
  Pending& p = s.pending[id];
  p.cb = std::move(cb);
  if (timeout_ms != 0) {
    p.deadline_ms = now_ms(&s) + timeout_ms;
    const bool earliest = s.deadlines.empty() || p.deadline_ms < s.deadlines.begin()->first;
    s.deadlines.insert({p.deadline_ms, id});
    if (earliest) arm_deadline_timer(&s);
  }
  set_inflight(&s);
  s.stats.requests++;
  return {};
}

void RpcClient::reconnect_now() {
  Impl& s = *impl_;
  if (s.state != Core::State::kBackoff) return;
  uv_timer_stop(s.attempt_timer);
  begin_attempt(&s);
}

const RpcClientStats& RpcClient::stats() const {
  return impl_->stats;
}

}  // namespace cardnode::net
