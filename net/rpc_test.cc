// RpcServer + Client over real TCP on 127.0.0.1. The server's loop runs on its own
// thread; the test thread is the client and reaches into the loop only through
// LoopThread::run(), so every server-side read is ordered by a mutex.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <deque>
#include <fstream>
#include <functional>
#include <future>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "net/channel.h"
#include "net/client.h"
#include "net/frame.h"
#include "net/rpc_server.h"

namespace cardnode::net {
namespace {

using namespace std::chrono_literals;

const std::string kToken = "test-token-0123456789abcdef";
constexpr uint32_t kCallTimeoutMs = 10000;

// Bounded polling for state that changes on the loop thread (e.g. a connection's close
// after the peer went away). Fails the wait, not the process, after 10 s.
bool wait_until(const std::function<bool()>& done) {
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(2ms);
  }
  return done();
}

class LoopThread {
 public:
  LoopThread() {
    EXPECT_EQ(uv_loop_init(&loop_), 0);
    EXPECT_EQ(uv_async_init(&loop_, &async_, on_async), 0);
    async_.data = this;
  }
  ~LoopThread() {
    if (thread_.joinable()) {
      stop();
    } else if (!stopped_) {  // never started
      uv_close(reinterpret_cast<uv_handle_t*>(&async_), nullptr);
      uv_run(&loop_, UV_RUN_DEFAULT);
    }
    EXPECT_EQ(uv_loop_close(&loop_), 0) << "a handle was left open";
  }
  uv_loop_t* loop() { return &loop_; }
  void start() {
    thread_ = std::thread([this] { uv_run(&loop_, UV_RUN_DEFAULT); });
  }
  // Runs fn on the loop thread and returns its result.
  template <class F>
  auto run(F fn) -> decltype(fn()) {
    std::packaged_task<decltype(fn())()> task(std::move(fn));
    auto result = task.get_future();
    {
      std::lock_guard<std::mutex> lock(mu_);
      tasks_.emplace_back([&task] { task(); });
    }
    uv_async_send(&async_);
    return result.get();
  }
  // `last` runs on the loop and must close every handle it owns; the loop then ends.
  void stop(const std::function<void()>& last = [] {}) {
    run([&] {
      last();
      uv_close(reinterpret_cast<uv_handle_t*>(&async_), nullptr);
    });
    thread_.join();
    stopped_ = true;
  }

 private:
  static void on_async(uv_async_t* async) {
    auto* self = static_cast<LoopThread*>(async->data);
    std::deque<std::function<void()>> tasks;
    {
      std::lock_guard<std::mutex> lock(self->mu_);
      tasks.swap(self->tasks_);
    }
    for (auto& t : tasks) t();
  }

  uv_loop_t loop_{};
  uv_async_t async_{};
  std::thread thread_;
  bool stopped_ = false;
  std::mutex mu_;
  std::deque<std::function<void()>> tasks_;
};

class RpcTest : public ::testing::Test {
 protected:
  void start_server() {
    options_.listen = "127.0.0.1:0";
    server_ = std::make_unique<RpcServer>(
        loop_.loop(), kToken, options_,
        [this](pb::Request&& req, Responder r) { handle(std::move(req), std::move(r)); });
    Result<std::string> addr = server_->start();
    ASSERT_TRUE(addr.has_value()) << addr.error().describe();
    if (!local_path_.empty()) {
      Status local = server_->listen_local(local_path_);
      ASSERT_TRUE(local.has_value()) << local.error().describe();
    }
    addr_ = *addr;
    port_ = parse_host_port(addr_)->port;
    ASSERT_EQ(uv_timer_init(loop_.loop(), &timer_), 0);
    timer_.data = this;
    loop_.start();  // from here on the server is touched only through loop_.run()
  }

  void TearDown() override {
    if (server_ == nullptr) return;
    loop_.stop([this] {
      server_->stop();
      server_->stop();  // twice is fine
      uv_close(reinterpret_cast<uv_handle_t*>(&timer_), nullptr);
      held_.clear();
    });
    server_.reset();
  }

  // ListJobs: one job named after the request id. GetJob: a reply of big_reply_bytes_.
  // WaitJob: held; released by the timer (auto_release_) or by release_front().
  // CancelJob: the Responder is dropped unanswered.
  void handle(pb::Request&& req, Responder r) {
    if (req.has_cancel()) return;  // dropped without a reply
    if (req.has_wait_job()) {
      held_.push_back(r);
      max_held_ = std::max(max_held_, held_.size());
      if (auto_release_) uv_timer_start(&timer_, on_timer, 20, 0);
      return;
    }
    pb::Response resp;
    if (req.has_get_job()) {
      resp.mutable_job()->mutable_job()->set_name(std::string(big_reply_bytes_, 'b'));
    } else {
      resp.mutable_jobs()->add_jobs()->set_name("job-" + std::to_string(req.id()));
    }
    r.reply(std::move(resp));
  }

  static void on_timer(uv_timer_t* t) {
    auto* self = static_cast<RpcTest*>(t->data);
    while (!self->held_.empty()) self->release_front();
  }

  // Loop thread only. Pops before replying: a reply may dispatch the next request.
  void release_front() {
    Responder r = held_.front();
    held_.pop_front();
    pb::Response resp;
    resp.mutable_jobs()->add_jobs()->set_name("waited");
    r.reply(std::move(resp));
  }

  RpcServerStats stats() {
    return loop_.run([this] { return server_->stats(); });
  }
  size_t held() {
    return loop_.run([this] { return held_.size(); });
  }

  std::unique_ptr<Client> connect(const std::string& token = kToken) {
    Result<std::unique_ptr<Client>> c = Client::connect(addr_, token, kCallTimeoutMs);
    EXPECT_TRUE(c.has_value()) << c.error().describe();
    return c ? std::move(*c) : nullptr;
  }

  static pb::Request list_jobs() {
    pb::Request req;
    req.mutable_list_jobs();
    return req;
  }

  // Checks a full round trip; id is what the client assigned.
  static void expect_call_works(Client* c) {
    ASSERT_NE(c, nullptr);
    Result<pb::Response> resp = c->call(list_jobs(), kCallTimeoutMs);
    ASSERT_TRUE(resp.has_value()) << resp.error().describe();
    ASSERT_EQ(resp->jobs().jobs_size(), 1);
    EXPECT_EQ(resp->jobs().jobs(0).name(), "job-" + std::to_string(resp->id()));
  }

  // A plain blocking socket, for speaking (or not speaking) the protocol by hand.
  int raw_connect() {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    EXPECT_GE(fd, 0);
    timeval tv{10, 0};  // bounds every read below
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port_);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
    return fd;
  }

  // As raw_connect, from another loopback address (127.0.0.0/8 is all on lo): another
  // source, as far as the server's per-source budgets can tell.
  int raw_connect_from(const std::string& source_ip) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    EXPECT_GE(fd, 0);
    timeval tv{10, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_in from{};
    from.sin_family = AF_INET;
    EXPECT_EQ(::inet_pton(AF_INET, source_ip.c_str(), &from.sin_addr), 1);
    EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof from), 0) << source_ip;
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port_);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
    return fd;
  }

  // A half-open stranger: the first half of a ClientHello (a stranger cannot make a whole
  // one that proves the token), once the server has taken the connection in; never more.
  int half_open_from(const std::string& source_ip) {
    const uint64_t before = stats().accepted + stats().evicted + stats().rejected_limit;
    const int fd = raw_connect_from(source_ip);
    const std::string hello = client_hello(kToken);
    send_all(fd, hello.substr(0, hello.size() / 2));
    EXPECT_TRUE(wait_until([&] {
      const RpcServerStats st = stats();
      return st.accepted + st.evicted + st.rejected_limit > before;
    })) << source_ip;
    return fd;
  }

  // The first flight of a TLS client holding `token`.
  static std::string client_hello(const std::string& token) {
    std::string out;
    EXPECT_TRUE(SecurityContext::psk(token, SecurityContext::Role::kClient)
                    ->channel()
                    ->start(&out)
                    .has_value());
    return out;
  }

  static std::string read_exact(int fd, size_t n) {
    std::string out(n, '\0');
    size_t got = 0;
    while (got < n) {
      const ssize_t r = ::recv(fd, out.data() + got, n - got, 0);
      if (r <= 0) break;
      got += static_cast<size_t>(r);
    }
    out.resize(got);
    return out;
  }

  static void send_all(int fd, std::string_view data) {
    while (!data.empty()) {
      const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return;  // the server may already have closed us; the caller checks that
      data.remove_prefix(static_cast<size_t>(n));
    }
  }

  // True once the server closed the socket (EOF or reset); false if it stayed open
  // for the whole SO_RCVTIMEO.
  static bool closed_by_server(int fd) {
    char buf[4096];
    for (int i = 0; i < 100000; ++i) {  // drains what the server sent before closing
      const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n == 0) return true;
      if (n < 0) return errno == ECONNRESET;
    }
    return false;
  }

  // A TLS client driven by hand over a blocking socket, so a test decides every byte
  // that goes out (sealed or not) and when.
  struct Raw {
    int fd = -1;
    std::unique_ptr<Channel> ch;
    std::string app;  // opened bytes from the server not yet taken
    FrameDecoder decoder;
    Status error;  // the channel's error, if it failed
    // Reads once and feeds the channel; false on EOF, a timeout or a channel error.
    bool read_some() {
      char buf[16384];
      const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n <= 0) return false;
      std::string out;
      error = ch->feed(std::string_view(buf, static_cast<size_t>(n)), &app, &out);
      if (!out.empty()) send_all(fd, out);
      return error.has_value();
    }
    void send_sealed(std::string_view plain) {
      std::string sealed;
      ASSERT_TRUE(ch->seal(plain, &sealed).has_value());
      send_all(fd, sealed);
    }
    // One whole response frame's payload; nullopt if the connection ended first.
    std::optional<std::string> read_frame() {
      for (;;) {  // bounded by SO_RCVTIMEO per read
        if (!app.empty()) {
          if (!decoder.feed(app)) return std::nullopt;
          app.clear();
        }
        if (auto p = decoder.next()) return std::string(*p);
        if (!read_some()) return std::nullopt;
      }
    }
  };

  // A TLS client on fd holding `token`; its ClientHello in *hello, not yet sent.
  static Raw raw_client(int fd, const std::string& token, std::string* hello) {
    Raw r;
    r.fd = fd;
    r.ch = SecurityContext::psk(token, SecurityContext::Role::kClient)->channel();
    EXPECT_TRUE(r.ch->start(hello).has_value());
    return r;
  }

  // Runs the TLS handshake on fd with `token`; the returned Raw is open if it worked.
  static Raw raw_handshake(int fd, const std::string& token) {
    std::string out;
    Raw r = raw_client(fd, token, &out);
    send_all(fd, out);
    while (!r.ch->open() && r.read_some()) {
    }
    EXPECT_TRUE(r.ch->open()) << (r.error ? "no answer" : r.error.error().describe());
    return r;
  }

  static std::string frame_of(uint64_t id, bool wait) {
    pb::Request req;
    req.set_id(id);
    if (wait) {
      req.mutable_wait_job()->set_job_id(1);
    } else {
      req.mutable_get_job()->set_job_id(1);
    }
    std::string out;
    EXPECT_TRUE(encode_frame(req, &out).has_value());
    return out;
  }

  LoopThread loop_;
  RpcServerOptions options_;
  std::string local_path_;  // listen_local() there too, when set
  std::unique_ptr<RpcServer> server_;
  std::string addr_;
  uint16_t port_ = 0;
  uv_timer_t timer_{};
  // Loop-thread state.
  std::deque<Responder> held_;
  size_t max_held_ = 0;
  bool auto_release_ = true;
  uint32_t big_reply_bytes_ = 16;
};

TEST_F(RpcTest, ConnectAndCall) {
  start_server();
  EXPECT_TRUE(addr_.starts_with("127.0.0.1:"));
  EXPECT_NE(port_, 0);
  auto c = connect();
  Result<pb::Response> resp = c->call(list_jobs(), kCallTimeoutMs);
  ASSERT_TRUE(resp.has_value()) << resp.error().describe();
  EXPECT_EQ(resp->id(), 1u);
  EXPECT_EQ(resp->error(), pb::OK);
  ASSERT_EQ(resp->jobs().jobs_size(), 1);
  EXPECT_EQ(resp->jobs().jobs(0).name(), "job-1");
  const RpcServerStats s = stats();
  EXPECT_EQ(s.accepted, 1u);
  EXPECT_EQ(s.active, 1u);
  EXPECT_EQ(s.requests, 1u);
}

TEST_F(RpcTest, ManySequentialCallsOnSeveralClients) {
  start_server();
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < 4; ++i) clients.push_back(connect());
  for (int round = 0; round < 200; ++round) {
    for (auto& c : clients) {
      Result<pb::Response> resp = c->call(list_jobs(), kCallTimeoutMs);
      ASSERT_TRUE(resp.has_value()) << resp.error().describe();
      ASSERT_EQ(resp->id(), static_cast<uint64_t>(round + 1));
      ASSERT_EQ(resp->jobs().jobs(0).name(), "job-" + std::to_string(round + 1));
    }
  }
  EXPECT_EQ(stats().requests, 800u);
}

TEST_F(RpcTest, WrongTokenIsUnauthenticated) {
  start_server();
  Result<std::unique_ptr<Client>> c = Client::connect(addr_, kToken + "-wrong", kCallTimeoutMs);
  ASSERT_FALSE(c.has_value());
  EXPECT_EQ(c.error().code, Errc::kUnauthenticated);
  EXPECT_EQ(c.error().message, addr_ + ": wrong cluster token (the server refused it)");
  const RpcServerStats s = stats();
  EXPECT_EQ(s.rejected_auth, 1u);
  EXPECT_EQ(s.rejected_protocol, 0u);
  auto good = connect();
  expect_call_works(good.get());
}

TEST_F(RpcTest, GarbageBeforeHandshakeClosesOnlyThatConnection) {
  start_server();
  auto good = connect();
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  std::string garbage(200, '\0');
  for (char& ch : garbage) ch = static_cast<char>(rng());
  garbage[0] = 'G';  // never a valid magic, so always a protocol error
  const int fd = raw_connect();
  send_all(fd, garbage);
  EXPECT_TRUE(closed_by_server(fd));
  ::close(fd);
  EXPECT_EQ(stats().rejected_protocol, 1u);
  EXPECT_EQ(stats().rejected_auth, 0u);
  expect_call_works(good.get());
  auto fresh = connect();
  expect_call_works(fresh.get());
}

TEST_F(RpcTest, OversizeLengthAfterHandshakeClosesConnection) {
  start_server();
  const int fd = raw_connect();
  Raw r = raw_handshake(fd, kToken);
  r.send_sealed(std::string(4, '\xff'));
  EXPECT_TRUE(closed_by_server(fd));
  ::close(fd);
  EXPECT_EQ(stats().rejected_protocol, 1u);
  EXPECT_EQ(stats().requests, 0u);
  auto c = connect();
  expect_call_works(c.get());
}

TEST_F(RpcTest, UnparsableFrameClosesConnection) {
  start_server();
  const int fd = raw_connect();
  Raw r = raw_handshake(fd, kToken);
  r.send_sealed(std::string("\x00\x00\x00\x03\xff\xff\xff", 7));
  EXPECT_TRUE(closed_by_server(fd));
  ::close(fd);
  EXPECT_EQ(stats().rejected_protocol, 1u);
  EXPECT_EQ(stats().requests, 0u);
  auto c = connect();
  expect_call_works(c.get());
}

TEST_F(RpcTest, FramesPipelinedBehindAWrongTokenAreNeverParsed) {
  start_server();
  const int fd = raw_connect();
  // A whole request frame right behind a ClientHello with the wrong token.
  send_all(fd, client_hello(kToken + "-wrong") + frame_of(1, false));
  EXPECT_TRUE(closed_by_server(fd));
  ::close(fd);
  EXPECT_EQ(stats().rejected_auth, 1u);
  EXPECT_EQ(stats().requests, 0u);
}

// A tampered record on a connection with a request held (an agent's poll, a `wait`): the
// connection drops, and the late answer to the held request goes nowhere — it must not
// be sealed on the failed channel.
TEST_F(RpcTest, ATamperedRecordWithARequestHeldDropsTheConnectionAndTheLateReply) {
  auto_release_ = false;
  start_server();
  const int fd = raw_connect();
  Raw r = raw_handshake(fd, kToken);
  r.send_sealed(frame_of(1, /*wait=*/true));
  ASSERT_TRUE(wait_until([&] { return held() == 1; }));
  std::string record;
  ASSERT_TRUE(r.ch->seal(frame_of(2, false), &record).has_value());
  record[record.size() - 1] = static_cast<char>(record.back() ^ 0x01);  // the AEAD tag
  send_all(fd, record);
  ASSERT_TRUE(wait_until([&] { return stats().rejected_protocol == 1; }));
  loop_.run([this] { release_front(); });  // the late reply
  EXPECT_TRUE(closed_by_server(fd));
  ::close(fd);
  EXPECT_EQ(stats().requests, 1u);
  auto c = connect();
  expect_call_works(c.get());
}

TEST_F(RpcTest, DeferredReply) {
  start_server();
  auto c = connect();
  for (int i = 0; i < 3; ++i) {
    pb::Request req;
    req.mutable_wait_job()->set_job_id(7);
    Result<pb::Response> resp = c->call(std::move(req), 0);  // 0: wait forever
    ASSERT_TRUE(resp.has_value()) << resp.error().describe();
    EXPECT_EQ(resp->id(), static_cast<uint64_t>(i + 1));
    EXPECT_EQ(resp->jobs().jobs(0).name(), "waited");
  }
  expect_call_works(c.get());
}

// run --wait's shape: a WaitJob whose answer does not come within a short wait is waited
// for again by its id (one request on the server, not two); calls made meanwhile on
// another connection work, and nothing is mistaken for the held answer.
TEST_F(RpcTest, AReceiveThatTimesOutLeavesTheSameAnswerToWaitFor) {
  auto_release_ = false;
  start_server();
  auto c = connect();
  ASSERT_NE(c, nullptr);
  pb::Request wait;
  wait.mutable_wait_job()->set_job_id(7);
  Result<uint64_t> id = c->send(wait, kCallTimeoutMs);
  ASSERT_TRUE(id.has_value()) << id.error().describe();
  ASSERT_TRUE(wait_until([&] { return held() == 1; }));
  Result<std::optional<pb::Response>> first = c->receive(*id, 50);
  ASSERT_TRUE(first.has_value()) << first.error().describe();
  EXPECT_FALSE(first->has_value());  // nothing yet, and the connection is intact
  auto other = connect();
  expect_call_works(other.get());
  loop_.run([this] { release_front(); });
  Result<std::optional<pb::Response>> second = c->receive(*id, 0);
  ASSERT_TRUE(second.has_value()) << second.error().describe();
  ASSERT_TRUE(second->has_value());
  EXPECT_EQ((*second)->id(), *id);
  EXPECT_EQ((*second)->jobs().jobs(0).name(), "waited");
  EXPECT_EQ(loop_.run([this] { return max_held_; }), 1u);  // asked once
  expect_call_works(c.get());
  // call() with a short timeout still fails the call, with the same words as before.
  Result<pb::Response> timed = c->call(wait, 50);
  ASSERT_FALSE(timed.has_value());
  EXPECT_EQ(timed.error().code, Errc::kUnavailable);
  EXPECT_EQ(timed.error().describe(), "timed out waiting for " + addr_);
  loop_.run([this] { release_front(); });
  expect_call_works(c.get());  // the late answer is skipped
}

TEST_F(RpcTest, ReplyAfterTheClientLeftIsANoop) {
  auto_release_ = false;
  start_server();
  const int fd = raw_connect();
  Raw r = raw_handshake(fd, kToken);
  r.send_sealed(frame_of(1, true));
  ASSERT_TRUE(wait_until([&] { return held() == 1; }));
  ::close(fd);
  ASSERT_TRUE(wait_until([&] { return stats().active == 0; }));
  loop_.run([this] { release_front(); });
  auto c = connect();
  expect_call_works(c.get());
}

TEST_F(RpcTest, MaxInflightStopsReadingUntilRepliesDrain) {
  options_.max_inflight = 1;
  auto_release_ = false;
  start_server();
  const int fd = raw_connect();
  Raw r = raw_handshake(fd, kToken);
  r.send_sealed(frame_of(1, true) + frame_of(2, true) + frame_of(3, true));  // one record
  for (uint64_t id = 1; id <= 3; ++id) {
    ASSERT_TRUE(wait_until([&] { return held() > 0; }));
    loop_.run([this] { release_front(); });
    const std::optional<std::string> payload = r.read_frame();
    ASSERT_TRUE(payload.has_value());
    pb::Response resp;
    ASSERT_TRUE(resp.ParseFromString(*payload));
    EXPECT_EQ(resp.id(), id);
  }
  ::close(fd);
  EXPECT_EQ(loop_.run([this] { return max_held_; }), 1u);
  EXPECT_EQ(stats().requests, 3u);
}

TEST_F(RpcTest, DroppedResponderAnswersInternalAndFreesTheSlot) {
  options_.max_inflight = 1;
  start_server();
  auto c = connect();
  for (int i = 0; i < 3; ++i) {  // with one inflight slot, a leaked one would hang here
    pb::Request req;
    req.mutable_cancel()->set_job_id(1);
    Result<pb::Response> resp = c->call(std::move(req), kCallTimeoutMs);
    ASSERT_TRUE(resp.has_value()) << resp.error().describe();
    EXPECT_EQ(resp->error(), pb::INTERNAL);
    EXPECT_EQ(resp->id(), static_cast<uint64_t>(i + 1));
  }
  expect_call_works(c.get());
}

TEST_F(RpcTest, MaxConnectionsBound) {
  options_.max_connections = 2;
  start_server();
  auto a = connect();
  auto b = connect();
  Result<std::unique_ptr<Client>> third = Client::connect(addr_, kToken, kCallTimeoutMs);
  ASSERT_FALSE(third.has_value());
  EXPECT_EQ(third.error().code, Errc::kUnavailable);
  EXPECT_EQ(stats().rejected_limit, 1u);
  EXPECT_EQ(stats().accepted, 2u);
  expect_call_works(b.get());
  a.reset();
  ASSERT_TRUE(wait_until([&] { return stats().active == 1; }));
  auto c = connect();
  expect_call_works(c.get());
  expect_call_works(b.get());
}

TEST_F(RpcTest, HandshakeTimeoutClosesIdleConnection) {
  options_.handshake_timeout_ms = 200;
  start_server();
  const int idle = raw_connect();  // says nothing
  const int partial = raw_connect();
  send_all(partial, client_hello(kToken).substr(0, 10));  // a valid, short start
  EXPECT_TRUE(closed_by_server(idle));
  EXPECT_TRUE(closed_by_server(partial));
  ::close(idle);
  ::close(partial);
  EXPECT_TRUE(wait_until([&] { return stats().rejected_limit == 2; }));
  auto c = connect();
  expect_call_works(c.get());
}

// A peer that is no cardnode client shows it in 5 bytes; it is closed at once, long
// before the handshake timeout.
TEST_F(RpcTest, ForeignProtocolIsClosedBeforeTheTimeout) {
  options_.handshake_timeout_ms = 60'000;
  start_server();
  const int http = raw_connect();
  send_all(http, "GET / HTTP/1.0\r\n");
  EXPECT_TRUE(closed_by_server(http));
  ::close(http);
  EXPECT_EQ(stats().rejected_protocol, 1u);
  EXPECT_EQ(stats().rejected_limit, 0u);
  auto c = connect();
  expect_call_works(c.get());
}

TEST_F(RpcTest, SlowReaderIsClosed) {
  options_.write_queue_bytes_max = 1u << 20;
  big_reply_bytes_ = 512u << 10;
  start_server();
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int rcvbuf = 64 << 10;  // fixed, small: kernel buffers hold little of the flood
  ASSERT_EQ(::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf), 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port_);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  Raw r = raw_handshake(fd, kToken);
  std::string flood;  // 200 requests for 100 MiB of replies, never read
  for (uint64_t id = 1; id <= 200; ++id) flood += frame_of(id, false);
  r.send_sealed(flood);
  EXPECT_TRUE(wait_until([&] { return stats().rejected_limit == 1; }));
  EXPECT_TRUE(wait_until([&] { return stats().active == 0; }));
  ::close(fd);
  auto c = connect();
  expect_call_works(c.get());
}

// ---- strangers cannot starve token holders -------------------------------------------

// Half-open connections live in their own budget: however many, they never take an
// authenticated slot, and the newest connection (a token holder's) gets its handshake.
TEST_F(RpcTest, HalfOpenStrangersNeverTakeATokenHoldersSlot) {
  options_.handshake_timeout_ms = 60'000;  // only eviction may make room, even under qemu
  options_.max_connections = 2;
  options_.max_unauthenticated = 8;
  options_.max_unauthenticated_per_source = 4;
  start_server();
  std::vector<int> strangers;
  for (int i = 0; i < 20; ++i) strangers.push_back(half_open_from("127.0.0.1"));
  auto a = connect();
  auto b = connect();
  expect_call_works(a.get());
  expect_call_works(b.get());
  RpcServerStats st = stats();
  EXPECT_LE(st.unauthenticated, 4u);
  EXPECT_GE(st.evicted, 17u);  // 20 + 2 handshakes through a 4-slot source budget
  EXPECT_EQ(st.rejected_limit, 0u);
  EXPECT_TRUE(closed_by_server(strangers.front()));  // the oldest went first
  for (int fd : strangers) ::close(fd);
}

// Many sources (127.0.0.2-41) holding half-open connections past the global budget, and a
// garbage sender, while a token holder connects and calls again and again: every call works.
TEST_F(RpcTest, AFloodFromManySourcesStillServesEveryTokenHoldersCall) {
  options_.handshake_timeout_ms = 60'000;  // only eviction may make room, even under qemu
  options_.max_unauthenticated = 64;
  options_.max_unauthenticated_per_source = 8;
  start_server();
  std::vector<int> strangers;
  for (int src = 2; src <= 41; ++src) {
    for (int i = 0; i < 8; ++i)
      strangers.push_back(half_open_from("127.0.0." + std::to_string(src)));
  }
  for (int round = 0; round < 10; ++round) {
    for (int i = 0; i < 20; ++i) {
      strangers.push_back(half_open_from("127.0.0." + std::to_string(2 + (round * 20 + i) % 40)));
    }
    const int garbage = raw_connect_from("127.0.0.1");
    send_all(garbage, "GET / HTTP/1.0\r\n\r\n");
    EXPECT_TRUE(closed_by_server(garbage));
    ::close(garbage);
    auto holder = connect();
    expect_call_works(holder.get());
  }
  RpcServerStats st = stats();
  EXPECT_LE(st.unauthenticated, 64u);
  EXPECT_GE(st.evicted, 320u + 200u - 64u);
  EXPECT_EQ(st.rejected_protocol, 10u);
  EXPECT_EQ(st.rejected_rate, 0u);  // garbage and half-open are bounded, not rate-limited
  for (int fd : strangers) ::close(fd);
}

// A client has one handshake at a time; a flood has many. When the whole budget is full,
// what goes is the oldest handshake of a source holding several — even one far newer than
// the client's — so a client that connected before a flood from other addresses still
// finishes its handshake.
TEST_F(RpcTest, AClientsOneHandshakeOutlivesAFloodFromOtherAddresses) {
  options_.handshake_timeout_ms = 60'000;
  options_.max_unauthenticated = 8;
  options_.max_unauthenticated_per_source = 100;
  start_server();
  // The oldest handshake of all, not yet proved: half its ClientHello is in.
  const uint64_t before = stats().accepted;
  const int client = raw_connect_from("127.0.0.9");
  std::string hello;
  Raw r = raw_client(client, kToken, &hello);
  send_all(client, hello.substr(0, hello.size() / 2));
  ASSERT_TRUE(wait_until([&] { return stats().accepted > before; }));
  std::vector<int> flood;
  for (int i = 0; i < 50; ++i) {
    flood.push_back(half_open_from("127.0.0." + std::to_string(20 + i % 5)));
  }
  EXPECT_GE(stats().evicted, 43u);                   // 51 handshakes through 8 slots
  send_all(client, hello.substr(hello.size() / 2));  // long after 43 evictions, still there
  while (!r.ch->open() && r.read_some()) {
  }
  ASSERT_TRUE(r.ch->open());
  r.send_sealed(frame_of(1, false));
  EXPECT_TRUE(r.read_frame().has_value());
  ::close(client);
  for (int fd : flood) ::close(fd);
}

// A client whose ClientHello proved the token (its PSK binder checked out) leaves the
// strangers' budget at once: a flood from its own address, which pushes out that source's
// oldest handshakes, cannot push it out while its Finished is on the way.
TEST_F(RpcTest, AProvedClientHelloIsNeverEvictedByAFloodFromItsOwnAddress) {
  options_.handshake_timeout_ms = 60'000;
  options_.max_unauthenticated_per_source = 4;
  start_server();
  const int client = raw_connect_from("127.0.0.7");
  std::string hello;
  Raw r = raw_client(client, kToken, &hello);
  send_all(client, hello);
  char buf[16384];
  const ssize_t n = ::recv(client, buf, sizeof buf, 0);  // the server's flight: binder checked
  ASSERT_GT(n, 0);
  std::string finished;
  ASSERT_TRUE(r.ch->feed(std::string_view(buf, static_cast<size_t>(n)), &r.app, &finished));
  EXPECT_EQ(stats().unauthenticated, 0u);
  std::vector<int> flood;
  for (int i = 0; i < 20; ++i) flood.push_back(half_open_from("127.0.0.7"));
  EXPECT_GE(stats().evicted, 16u);  // 20 through the source's 4 slots
  send_all(client, finished);
  r.send_sealed(frame_of(1, false));
  EXPECT_TRUE(r.read_frame().has_value());
  ::close(client);
  for (int fd : flood) ::close(fd);
}

// Wrong tokens are rate-limited per source: past the burst, that source is refused at
// accept (no HELLO), counted; other sources, and garbage, are not affected.
TEST_F(RpcTest, WrongTokensAreRateLimitedPerSource) {
  options_.auth_failures_burst = 3;
  options_.auth_failures_per_minute = 1;  // no refill within the test
  start_server();
  // True when the server tried the handshake and refused the token (with an alert);
  // false when it closed without a word: refused at accept.
  auto wrong_token_from = [&](const std::string& ip) {
    const int fd = raw_connect_from(ip);
    std::string hello;
    Raw r = raw_client(fd, "not-the-token-0123456789abcdef", &hello);
    send_all(fd, hello);
    const bool answered = r.read_some() || !r.error.has_value();
    if (answered) {
      EXPECT_FALSE(r.error.has_value());
      if (!r.error) {
        EXPECT_EQ(r.error.error().code, Errc::kUnauthenticated);
      }
      EXPECT_TRUE(closed_by_server(fd));
    }
    ::close(fd);
    return answered;
  };
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(wrong_token_from("127.0.0.3")) << i;
  EXPECT_EQ(stats().rejected_auth, 3u);
  EXPECT_FALSE(wrong_token_from("127.0.0.3"));
  const int refused = raw_connect_from("127.0.0.3");  // says nothing, closed at accept
  EXPECT_TRUE(closed_by_server(refused));
  ::close(refused);
  RpcServerStats st = stats();
  EXPECT_EQ(st.rejected_rate, 2u);
  EXPECT_EQ(st.rejected_auth, 3u);  // no handshake was even tried
  // Another source still gets in, with or without the token.
  EXPECT_TRUE(wrong_token_from("127.0.0.4"));
  auto holder = connect();
  expect_call_works(holder.get());
}

// A slowloris dribbling a valid handshake a byte at a time is cut at the deadline: the
// deadline is for the whole handshake, not per byte.
TEST_F(RpcTest, ASlowlorisIsCutAtTheHandshakeDeadline) {
  options_.handshake_timeout_ms = 300;
  start_server();
  const int fd = raw_connect();
  const std::string hello = client_hello(kToken);
  size_t sent = 0;
  bool closed = false;
  while (sent < hello.size()) {
    if (::send(fd, hello.data() + sent, 1, MSG_NOSIGNAL) != 1) {
      closed = true;
      break;
    }
    ++sent;
    // ~250 bytes at 100 ms take 25 s: far past the 300 ms deadline on any machine.
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_TRUE(closed || closed_by_server(fd));
  EXPECT_LT(sent, hello.size());
  ::close(fd);
  EXPECT_TRUE(wait_until([&] { return stats().rejected_limit == 1; }));
  EXPECT_EQ(stats().requests, 0u);
}

// An authenticated connection that sends nothing and waits for nothing is closed after the
// idle timeout; one holding a request (a `wait`, an agent's poll) is not idle.
TEST_F(RpcTest, IdleAuthenticatedConnectionsCloseButHeldRequestsDoNot) {
  options_.idle_timeout_ms =
      500;  // far above a slow (qemu) client's gap between handshake and frame
  auto_release_ = false;
  start_server();
  const int holder = raw_connect();
  Raw h = raw_handshake(holder, kToken);
  h.send_sealed(frame_of(1, /*wait=*/true));
  ASSERT_TRUE(wait_until([&] { return held() == 1; }));
  const int idle = raw_connect();
  Raw i1 = raw_handshake(idle, kToken);
  EXPECT_TRUE(closed_by_server(idle));
  ::close(idle);
  // Several idle periods later (the idle one is gone), the held request's connection is
  // still there, and its reply still arrives.
  ASSERT_TRUE(wait_until([&] { return stats().closed_idle == 1; }));
  const int idle2 = raw_connect();
  Raw i2 = raw_handshake(idle2, kToken);
  EXPECT_TRUE(closed_by_server(idle2));
  ::close(idle2);
  EXPECT_EQ(stats().closed_idle, 2u);
  EXPECT_EQ(stats().active, 1u);
  loop_.run([this] {
    release_front();
    return 0;
  });
  EXPECT_TRUE(h.read_frame().has_value());
  // Held for several idle periods, answered: the idle clock starts again from the answer,
  // so a request sent right away is served, not cut off by a tick that was due.
  h.send_sealed(frame_of(2, /*wait=*/false));
  EXPECT_TRUE(h.read_frame().has_value());
  // Once answered, the holder is idle too.
  EXPECT_TRUE(closed_by_server(holder));
  ::close(holder);
  EXPECT_TRUE(wait_until([&] { return stats().closed_idle == 3; }));
}

TEST_F(RpcTest, ClientTimesOutWhenServerNeverSpeaks) {
  // A listening socket nobody accepts from: connect succeeds, HELLO never comes.
  const int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(lfd, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  ASSERT_EQ(::listen(lfd, 4), 0);
  socklen_t len = sizeof sa;
  ASSERT_EQ(::getsockname(lfd, reinterpret_cast<sockaddr*>(&sa), &len), 0);
  const std::string addr = "127.0.0.1:" + std::to_string(ntohs(sa.sin_port));
  Result<std::unique_ptr<Client>> c = Client::connect(addr, kToken, 100);
  ASSERT_FALSE(c.has_value());
  EXPECT_EQ(c.error().code, Errc::kUnavailable);
  EXPECT_EQ(c.error().message, "timed out waiting for " + addr);
  ::close(lfd);
}

TEST_F(RpcTest, ClientReportsRefusedConnection) {
  // Bind then close to find a port with no listener.
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  socklen_t len = sizeof sa;
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len), 0);
  ::close(fd);
  const std::string addr = "127.0.0.1:" + std::to_string(ntohs(sa.sin_port));
  Result<std::unique_ptr<Client>> c = Client::connect(addr, kToken, kCallTimeoutMs);
  ASSERT_FALSE(c.has_value());
  EXPECT_EQ(c.error().code, Errc::kUnavailable);
  EXPECT_EQ(c.error().describe(), "cannot reach server at " + addr + ": Connection refused");

  Result<std::unique_ptr<Client>> bad = Client::connect("no-port", kToken, kCallTimeoutMs);
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().code, Errc::kInvalidArgument);
}

// ---- the local socket (RpcServer::listen_local) ----------------------------------------

class LocalSocketTest : public RpcTest {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/cardnode-local-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/api.sock";
    local_path_ = path_;
  }
  void TearDown() override {
    RpcTest::TearDown();
    (void)::unlink(path_.c_str());
    (void)::unlink((dir_ + "/file").c_str());
    (void)::rmdir(dir_.c_str());
  }
  std::string dir_, path_;
};

TEST_F(LocalSocketTest, ACallNeedsNoTokenAndTheSocketIsTheOwnersAlone) {
  start_server();
  struct stat st {};
  ASSERT_EQ(::lstat(path_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  Result<std::unique_ptr<Client>> c = Client::connect_local(path_, kCallTimeoutMs);
  ASSERT_TRUE(c.has_value()) << c.error().describe();
  expect_call_works(c->get());
  expect_call_works(c->get());
  expect_call_works(connect().get());  // TCP beside it, with the token, as before
  const RpcServerStats s = stats();
  EXPECT_EQ(s.accepted, 2u);
  EXPECT_EQ(s.accepted_local, 1u);
  EXPECT_EQ(s.requests, 3u);
}

TEST_F(LocalSocketTest, NoSocketOrNoServerIsNotFoundSoTheClientTriesTcp) {
  Result<std::unique_ptr<Client>> none = Client::connect_local(path_, kCallTimeoutMs);
  ASSERT_FALSE(none.has_value());
  EXPECT_EQ(none.error().code, Errc::kNotFound);
  {  // a socket file with no one listening, as a kill -9 leaves it: ECONNREFUSED
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::memcpy(sa.sun_path, path_.data(), path_.size());
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
    Result<std::unique_ptr<Client>> refused = Client::connect_local(path_, kCallTimeoutMs);
    ::close(fd);
    ASSERT_FALSE(refused.has_value());
    EXPECT_EQ(refused.error().code, Errc::kNotFound);
    EXPECT_EQ(refused.error().sys_errno, ECONNREFUSED);
    ASSERT_EQ(::unlink(path_.c_str()), 0);
  }
  start_server();
  loop_.run([this] {
    server_->stop();
    return 0;
  });
  EXPECT_NE(::access(path_.c_str(), F_OK), 0) << "stop() leaves no socket file";
  Result<std::unique_ptr<Client>> gone = Client::connect_local(path_, kCallTimeoutMs);
  ASSERT_FALSE(gone.has_value());
  EXPECT_EQ(gone.error().code, Errc::kNotFound);
}

TEST_F(LocalSocketTest, AStaleSocketIsReplacedAndAnyOtherFileIsLeftAlone) {
  // A socket file with no server behind it, as a kill -9 leaves.
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::memcpy(sa.sun_path, path_.data(), path_.size());
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  ::close(fd);
  start_server();
  Result<std::unique_ptr<Client>> c = Client::connect_local(path_, kCallTimeoutMs);
  ASSERT_TRUE(c.has_value()) << c.error().describe();
  expect_call_works(c->get());

  uv_loop_t loop;
  ASSERT_EQ(uv_loop_init(&loop), 0);
  {
    const std::string file = dir_ + "/file";
    ASSERT_TRUE(std::ofstream(file) << "keep");
    RpcServerOptions opts;
    opts.listen = "127.0.0.1:0";
    RpcServer server(&loop, kToken, opts, [](pb::Request&&, Responder) {});
    ASSERT_TRUE(server.start().has_value());
    Status r = server.listen_local(file);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, Errc::kInvalidArgument);
    EXPECT_EQ(r.error().message, file + " exists and is not a socket");
    std::string kept;
    std::getline(std::ifstream(file), kept);
    EXPECT_EQ(kept, "keep");
  }
  EXPECT_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
  EXPECT_EQ(uv_loop_close(&loop), 0);
}

// No socket in a directory another user may write to (a symlink or a socket of theirs
// could be put at the path): the server refuses, and TCP goes on.
TEST_F(LocalSocketTest, NoSocketInADirectoryOthersMayWriteTo) {
  ASSERT_EQ(::chmod(dir_.c_str(), 0777), 0);
  uv_loop_t loop;
  ASSERT_EQ(uv_loop_init(&loop), 0);
  {
    RpcServerOptions opts;
    opts.listen = "127.0.0.1:0";
    RpcServer server(&loop, kToken, opts, [](pb::Request&&, Responder) {});
    ASSERT_TRUE(server.start().has_value());
    Status r = server.listen_local(path_);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, Errc::kInvalidArgument);
    EXPECT_NE(r.error().message.find("is writable by others"), std::string::npos)
        << r.error().describe();
    EXPECT_NE(::access(path_.c_str(), F_OK), 0);
  }
  EXPECT_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
  EXPECT_EQ(uv_loop_close(&loop), 0);
}

// The socket's mode keeps other users out; the server checks the peer's uid anyway
// (SO_PEERCRED), for a socket or data dir whose mode was loosened. Needs root to be
// another user.
TEST_F(LocalSocketTest, AnotherUserIsRefusedEvenWhenTheModeLetsItIn) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to connect as another user";
  start_server();
  ASSERT_EQ(::chmod(dir_.c_str(), 0755), 0);
  ASSERT_EQ(::chmod(path_.c_str(), 0666), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    if (::setresgid(65534, 65534, 65534) != 0 || ::setresuid(65534, 65534, 65534) != 0) {
      ::_exit(3);
    }
    Result<std::unique_ptr<Client>> c = Client::connect_local(path_, kCallTimeoutMs);
    if (!c) ::_exit(4);  // the mode let it connect: the server must close it
    Result<pb::Response> r = (*c)->call(list_jobs(), kCallTimeoutMs);
    ::_exit(r.has_value() ? 1 : 0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: served; 3: setresuid; 4: could not connect";
  const RpcServerStats s = stats();
  EXPECT_EQ(s.rejected_auth, 1u);
  EXPECT_EQ(s.requests, 0u);
}

// The other way round: a listener another user put at the path (a data dir others may
// write to) gets no request from a client; the client refuses it by SO_PEERCRED.
TEST_F(LocalSocketTest, AClientNeverTalksToAnotherUsersSocket) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to listen as another user";
  ASSERT_EQ(::chmod(dir_.c_str(), 0777), 0);
  int ready[2], done[2];
  ASSERT_EQ(::pipe(ready), 0);
  ASSERT_EQ(::pipe(done), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(ready[0]);
    ::close(done[1]);  // else its read below never sees the parent's close
    if (::setresgid(65534, 65534, 65534) != 0 || ::setresuid(65534, 65534, 65534) != 0) {
      ::_exit(3);  // closes ready[1]: the parent's read returns 0
    }
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::memcpy(sa.sun_path, path_.data(), path_.size());
    if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::listen(fd, 4) != 0) {
      ::_exit(4);
    }
    (void)::chmod(path_.c_str(), 0666);
    (void)!::write(ready[1], "r", 1);
    char c;
    (void)!::read(done[0], &c, 1);  // until the parent is done
    ::_exit(0);
  }
  ::close(ready[1]);
  ::close(done[0]);
  char c = 0;
  ASSERT_EQ(::read(ready[0], &c, 1), 1) << "the other user's listener did not start";
  Result<std::unique_ptr<Client>> got = Client::connect_local(path_, kCallTimeoutMs);
  ::close(done[1]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ::close(ready[0]);
  ASSERT_FALSE(got.has_value());
  EXPECT_EQ(got.error().code, Errc::kUnauthenticated);
  EXPECT_NE(got.error().message.find("not a server of root's or ours"), std::string::npos)
      << got.error().describe();
}

TEST(RpcServerLifecycle, StartFailuresAndDestructionWithoutStop) {
  uv_loop_t loop;
  ASSERT_EQ(uv_loop_init(&loop), 0);
  {
    RpcServerOptions bad;
    bad.listen = "not an address";
    RpcServer server(&loop, kToken, bad, [](pb::Request&&, Responder) {});
    Result<std::string> r = server.start();
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, Errc::kInvalidArgument);
  }
  {
    RpcServerOptions opts;
    opts.listen = "127.0.0.1:0";
    RpcServer first(&loop, kToken, opts, [](pb::Request&&, Responder) {});
    Result<std::string> addr = first.start();
    ASSERT_TRUE(addr.has_value());
    opts.listen = *addr;
    RpcServer second(&loop, kToken, opts, [](pb::Request&&, Responder) {});
    Result<std::string> r = second.start();
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, Errc::kUnavailable);
    // Both destroyed here without stop() and before the loop ran their close callbacks.
  }
  EXPECT_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
  EXPECT_EQ(uv_loop_close(&loop), 0);
}

TEST(Address, Parse) {
  Result<HostPort> a = parse_host_port("0.0.0.0:7420");
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->host, "0.0.0.0");
  EXPECT_EQ(a->port, 7420);
  Result<HostPort> b = parse_host_port("[::1]:65535");
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->host, "::1");
  EXPECT_EQ(b->port, 65535);
  EXPECT_EQ(parse_host_port("localhost:0")->port, 0);
  for (const char* bad : {"", "7420", "host", ":7420", "host:", "host:65536", "host:-1", "host:+1",
                          "host:12ab", "::1:7420", "[::1]7420", "[::1", "h:1:2", "host:000001"}) {
    Result<HostPort> r = parse_host_port(bad);
    EXPECT_FALSE(r.has_value()) << bad;
    if (!r) {
      EXPECT_EQ(r.error().code, Errc::kInvalidArgument) << bad;
    }
  }
  EXPECT_EQ(parse_host_port("x").error().message,
            "bad address 'x': expected HOST:PORT (IPv6 as [ADDR]:PORT)");
}

TEST(Address, ResolveAndFormat) {
  Result<sockaddr_storage> v4 = resolve(HostPort{"127.0.0.1", 7420});
  ASSERT_TRUE(v4.has_value());
  EXPECT_EQ(format_sockaddr(reinterpret_cast<const sockaddr*>(&*v4)), "127.0.0.1:7420");
  Result<sockaddr_storage> v6 = resolve(HostPort{"::1", 80});
  ASSERT_TRUE(v6.has_value());
  EXPECT_EQ(format_sockaddr(reinterpret_cast<const sockaddr*>(&*v6)), "[::1]:80");
  Result<sockaddr_storage> none = resolve(HostPort{"host.invalid", 1});
  ASSERT_FALSE(none.has_value());
  EXPECT_EQ(none.error().code, Errc::kUnavailable);
}

}  // namespace
}  // namespace cardnode::net

namespace cardnode::net {
namespace {

TEST(ResponderTo, RepliesOnceToItsSinkAndAnswersADroppedRequest) {
  std::vector<pb::Response> got;
  {
    Responder r = Responder::to([&](pb::Response&& resp) { got.push_back(std::move(resp)); });
    pb::Response first;
    first.mutable_submitted()->set_job_id(7);
    Responder copy = r;
    copy.reply(std::move(first));
    r.reply(pb::Response{});  // a second reply is ignored
  }
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].submitted().job_id(), 7u);
  {
    Responder dropped = Responder::to([&](pb::Response&& resp) { got.push_back(std::move(resp)); });
  }
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[1].error(), pb::INTERNAL);
}

}  // namespace
}  // namespace cardnode::net
