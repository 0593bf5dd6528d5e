// RpcClient against a real RpcServer (and, for bytes no RpcServer sends, a FakeServer),
// all on one loop on the test thread. Every wait runs the loop until a condition holds,
// bounded by kWaitMs; nothing sleeps. Timing assumptions are coarse (hundreds of ms and
// up), so the suite passes under qemu-user too.
#include "net/rpc_client.h"

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <deque>
#include <functional>
#include <optional>
#include <set>
#include <vector>

#include "net/address.h"
#include "net/channel.h"
#include "net/frame.h"
#include "net/rpc_server.h"

namespace cardnode::net {
namespace {

using ::testing::HasSubstr;

const std::string kToken = "test-token-0123456789abcdef";
constexpr uint64_t kWaitMs = 20'000;  // bounds every wait; reached only when a test fails

pb::Request list_jobs(uint64_t after = 0) {
  pb::Request req;
  req.mutable_list_jobs()->set_after_job_id(after);
  return req;
}

std::string frame_of(const pb::Response& response) {
  std::string out;
  EXPECT_TRUE(encode_frame(response, &out).has_value());
  return out;
}

// A port nothing listens on (bound, then closed).
uint16_t free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  socklen_t len = sizeof sa;
  EXPECT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len), 0);
  ::close(fd);
  return ntohs(sa.sin_port);
}

// Speaks the server side of the handshake (a real server channel), then answers every
// request frame with the bytes reply() returns, sealed — whatever they are. Handles free
// themselves, like RpcServer.
class FakeServer {
 public:
  using Reply = std::function<std::string(const pb::Request&)>;

  FakeServer(uv_loop_t* loop, Reply reply) : loop_(loop), reply_(std::move(reply)) {}
  ~FakeServer() { stop(); }

  std::string start() {
    listener_ = new uv_tcp_t{};
    EXPECT_EQ(uv_tcp_init(loop_, listener_), 0);
    listener_->data = this;
    sockaddr_in sa{};
    EXPECT_EQ(uv_ip4_addr("127.0.0.1", 0, &sa), 0);
    EXPECT_EQ(uv_tcp_bind(listener_, reinterpret_cast<sockaddr*>(&sa), 0), 0);
    EXPECT_EQ(uv_listen(reinterpret_cast<uv_stream_t*>(listener_), 8, on_connection), 0);
    sockaddr_storage bound{};
    int len = sizeof bound;
    EXPECT_EQ(uv_tcp_getsockname(listener_, reinterpret_cast<sockaddr*>(&bound), &len), 0);
    return format_sockaddr(reinterpret_cast<sockaddr*>(&bound));
  }

  void stop() {
    if (listener_ != nullptr) {
      uv_close(reinterpret_cast<uv_handle_t*>(listener_),
               [](uv_handle_t* h) { delete reinterpret_cast<uv_tcp_t*>(h); });
      listener_ = nullptr;
    }
    while (!peers_.empty()) close_peer(*peers_.begin());
  }

  int accepted = 0;

 private:
  struct Peer {
    uv_tcp_t tcp{};
    FakeServer* server = nullptr;  // nullptr once closing
    std::unique_ptr<Channel> channel =
        SecurityContext::psk(kToken, SecurityContext::Role::kServer)->channel();
    FrameDecoder decoder;
  };
  struct Write {
    uv_write_t req{};
    std::string bytes;
  };

  static void close_peer(Peer* p) {
    if (p->server == nullptr) return;
    p->server->peers_.erase(p);
    p->server = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(&p->tcp),
             [](uv_handle_t* h) { delete static_cast<Peer*>(h->data); });
  }

  static void write_sealed(Peer* p, const std::string& plain) {
    std::string sealed;
    ASSERT_TRUE(p->channel->seal(plain, &sealed).has_value());
    write(p, std::move(sealed));
  }

  static void write(Peer* p, std::string bytes) {
    if (bytes.empty()) return;
    auto* w = new Write;
    w->bytes = std::move(bytes);
    w->req.data = w;
    const uv_buf_t buf = uv_buf_init(w->bytes.data(), static_cast<unsigned int>(w->bytes.size()));
    const int rc = uv_write(&w->req, reinterpret_cast<uv_stream_t*>(&p->tcp), &buf, 1,
                            [](uv_write_t* req, int) { delete static_cast<Write*>(req->data); });
    if (rc != 0) delete w;
  }

  static void on_connection(uv_stream_t* listener, int status) {
    auto* s = static_cast<FakeServer*>(listener->data);
    if (status < 0) return;
    auto* p = new Peer;
    EXPECT_EQ(uv_tcp_init(s->loop_, &p->tcp), 0);
    p->tcp.data = p;
    p->server = s;
    s->peers_.insert(p);
    if (uv_accept(listener, reinterpret_cast<uv_stream_t*>(&p->tcp)) != 0) return close_peer(p);
    s->accepted++;
    uv_read_start(
        reinterpret_cast<uv_stream_t*>(&p->tcp),
        [](uv_handle_t* h, size_t, uv_buf_t* buf) {
          auto* peer = static_cast<Peer*>(h->data);
          *buf = peer->server == nullptr
                     ? uv_buf_init(nullptr, 0)
                     : uv_buf_init(peer->server->buffer_.data(), peer->server->buffer_.size());
        },
        on_read);
  }

  static void on_read(uv_stream_t* stream, ssize_t n, const uv_buf_t* buf) {
    auto* p = static_cast<Peer*>(stream->data);
    if (p->server == nullptr || n == 0) return;
    if (n < 0) return close_peer(p);
    std::string app, out;
    const Status st =
        p->channel->feed(std::string_view(buf->base, static_cast<size_t>(n)), &app, &out);
    write(p, std::move(out));
    ASSERT_TRUE(st.has_value()) << st.error().describe();
    ASSERT_TRUE(p->decoder.feed(app).has_value());
    while (std::optional<std::string_view> payload = p->decoder.next()) {
      pb::Request req;
      ASSERT_TRUE(req.ParseFromArray(payload->data(), static_cast<int>(payload->size())));
      const std::string reply = p->server->reply_(req);
      if (!reply.empty()) write_sealed(p, reply);
    }
  }

  uv_loop_t* loop_;
  Reply reply_;
  uv_tcp_t* listener_ = nullptr;
  std::set<Peer*> peers_;
  std::array<char, 64 << 10> buffer_{};
};

class RpcClientTest : public ::testing::Test {
 protected:
  struct Outcome {
    int calls = 0;
    std::optional<Result<pb::Response>> result;
  };
  struct Down {
    Error error;
    uint64_t at_ms;       // loop time of on_down
    uint64_t backoff_ms;  // stats().backoff_ms seen inside on_down
  };

  void SetUp() override {
    ASSERT_EQ(uv_loop_init(&loop_), 0);
    ASSERT_EQ(uv_timer_init(&loop_, &wake_), 0);
    ASSERT_EQ(uv_prepare_init(&loop_, &iterations_), 0);
    iterations_.data = &iteration_count_;
  }

  void TearDown() override {
    client_.reset();
    held_.clear();
    server_.reset();
    fake_.reset();
    uv_close(reinterpret_cast<uv_handle_t*>(&iterations_), nullptr);
    // Every handle must close by itself now. The watchdog, unreferenced, does not keep
    // the loop alive, but ends the run if a leaked handle would.
    uv_update_time(&loop_);
    uv_timer_start(
        &wake_, [](uv_timer_t* t) { uv_stop(t->loop); }, kWaitMs, 0);
    uv_unref(reinterpret_cast<uv_handle_t*>(&wake_));
    uv_run(&loop_, UV_RUN_DEFAULT);
    uv_close(reinterpret_cast<uv_handle_t*>(&wake_), nullptr);
    uv_run(&loop_, UV_RUN_NOWAIT);
    EXPECT_EQ(uv_loop_close(&loop_), 0) << "a handle was left open";
  }

  // Runs the loop until done() holds or timeout_ms of loop time pass.
  bool run_until(const std::function<bool()>& done, uint64_t timeout_ms = kWaitMs) {
    bool expired = false;
    wake_.data = &expired;
    uv_update_time(&loop_);
    uv_timer_start(
        &wake_, [](uv_timer_t* t) { *static_cast<bool*>(t->data) = true; }, timeout_ms, 0);
    while (!done() && !expired) uv_run(&loop_, UV_RUN_ONCE);
    uv_timer_stop(&wake_);
    return done();
  }
  void run_for(uint64_t ms) {
    run_until([] { return false; }, ms);
  }

  void start_server(const std::string& listen = "127.0.0.1:0") {
    server_options_.listen = listen;
    server_ = std::make_unique<RpcServer>(
        &loop_, kToken, server_options_,
        [this](pb::Request&& req, Responder r) { handle(std::move(req), std::move(r)); });
    Result<std::string> addr = server_->start();
    ASSERT_TRUE(addr.has_value()) << addr.error().describe();
    addr_ = *addr;
  }

  // Replies "job-<id>-<after_job_id>", at once or (hold_) when the test says so.
  void handle(pb::Request&& req, Responder r) {
    if (hold_) {
      held_.emplace_back(std::move(req), std::move(r));
      return;
    }
    reply(req, r);
  }
  static void reply(const pb::Request& req, const Responder& r) {
    pb::Response resp;
    resp.mutable_jobs()->add_jobs()->set_name("job-" + std::to_string(req.id()) + "-" +
                                              std::to_string(req.list_jobs().after_job_id()));
    r.reply(std::move(resp));
  }

  RpcClientOptions client_options() {
    RpcClientOptions o;
    o.address = addr_;
    o.token = kToken;
    o.backoff_first_ms = 20;
    o.backoff_max_ms = 200;
    o.jitter_seed = 42;
    return o;
  }

  void make_client(const RpcClientOptions& options) {
    client_ = std::make_unique<RpcClient>(
        &loop_, options,
        [this] {
          ups_++;
          if (on_up_hook_) on_up_hook_();
        },
        [this](const Error& e) {
          downs_.push_back({e, uv_now(&loop_), client_->stats().backoff_ms});
          if (on_down_hook_) on_down_hook_();
        });
    Status st = client_->start();
    ASSERT_TRUE(st.has_value()) << st.error().describe();
  }

  void connect_client(const RpcClientOptions& options) {
    make_client(options);
    ASSERT_TRUE(run_until([&] { return client_->up(); }));
  }

  // Sends a call that must be accepted; its outcome lands in the returned Outcome.
  Outcome* send(pb::Request req = list_jobs(), uint64_t timeout_ms = 0) {
    outcomes_.emplace_back();
    Outcome* o = &outcomes_.back();
    Status st = client_->call(
        std::move(req),
        [o](Result<pb::Response> r) {
          o->calls++;
          o->result = std::move(r);
        },
        timeout_ms);
    EXPECT_TRUE(st.has_value()) << st.error().describe();
    return o;
  }

  bool all_done() const {
    for (const Outcome& o : outcomes_) {
      if (o.calls == 0) return false;
    }
    return true;
  }

  void expect_call_works() {
    hold_ = false;
    Outcome* o = send(list_jobs(7));
    ASSERT_TRUE(run_until([&] { return o->calls == 1; }));
    ASSERT_TRUE(o->result->has_value()) << o->result->error().describe();
    EXPECT_EQ((*o->result)->jobs().jobs(0).name(),
              "job-" + std::to_string((*o->result)->id()) + "-7");
  }

  static void expect_error(const Outcome* o, Errc code, const std::string& part = "") {
    ASSERT_EQ(o->calls, 1);
    ASSERT_FALSE(o->result->has_value());
    EXPECT_EQ(o->result->error().code, code) << o->result->error().describe();
    EXPECT_THAT(o->result->error().message, HasSubstr(part));
  }

  uv_loop_t loop_{};
  uv_timer_t wake_{};
  uv_prepare_t iterations_{};
  uint64_t iteration_count_ = 0;
  RpcServerOptions server_options_;
  std::unique_ptr<RpcServer> server_;
  std::unique_ptr<FakeServer> fake_;
  std::string addr_;
  bool hold_ = false;
  std::deque<std::pair<pb::Request, Responder>> held_;
  std::unique_ptr<RpcClient> client_;
  int ups_ = 0;
  std::vector<Down> downs_;
  std::function<void()> on_up_hook_;
  std::function<void()> on_down_hook_;
  std::deque<Outcome> outcomes_;  // deque: an Outcome* stays valid
};

TEST_F(RpcClientTest, ConcurrentCallsAreMatchedByIdWhenAnsweredOutOfOrder) {
  start_server();
  hold_ = true;
  connect_client(client_options());
  for (uint64_t i = 1; i <= 5; ++i) send(list_jobs(100 + i));
  EXPECT_EQ(client_->stats().inflight, 5u);
  ASSERT_TRUE(run_until([&] { return held_.size() == 5; }));
  for (auto it = held_.rbegin(); it != held_.rend(); ++it) reply(it->first, it->second);
  held_.clear();
  ASSERT_TRUE(run_until([&] { return all_done(); }));
  for (uint64_t i = 1; i <= 5; ++i) {
    const Outcome& o = outcomes_[i - 1];
    EXPECT_EQ(o.calls, 1);
    ASSERT_TRUE(o.result->has_value()) << o.result->error().describe();
    EXPECT_EQ((*o.result)->error(), pb::OK);
    EXPECT_EQ((*o.result)->id(), i);  // ids are assigned in call order
    EXPECT_EQ((*o.result)->jobs().jobs(0).name(),
              "job-" + std::to_string(i) + "-" + std::to_string(100 + i));
  }
  const RpcClientStats& s = client_->stats();
  EXPECT_EQ(s.requests, 5u);
  EXPECT_EQ(s.responses, 5u);
  EXPECT_EQ(s.inflight, 0u);
  EXPECT_EQ(s.connects, 1u);
  EXPECT_EQ(ups_, 1);
  EXPECT_TRUE(downs_.empty());
}

TEST_F(RpcClientTest, CallbacksMayCallAndStop) {
  start_server();
  // on_up sends the first call (an agent's hello); each response sends the next; the
  // third stops the client from inside its callback.
  std::vector<uint64_t> ids;
  std::function<void(Result<pb::Response>)> next = [&](Result<pb::Response> r) {
    ASSERT_TRUE(r.has_value()) << r.error().describe();
    ids.push_back(r->id());
    if (ids.size() == 3) return client_->stop();
    ASSERT_TRUE(client_->call(list_jobs(), next).has_value());
  };
  on_up_hook_ = [&] { ASSERT_TRUE(client_->call(list_jobs(), next).has_value()); };
  make_client(client_options());
  ASSERT_TRUE(run_until([&] { return ids.size() == 3; }));
  EXPECT_EQ(ids, (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_FALSE(client_->up());
  run_for(100);  // nothing more happens: no on_down, no reconnect
  EXPECT_TRUE(downs_.empty());
  EXPECT_EQ(client_->stats().attempts, 1u);
}

TEST_F(RpcClientTest, ServerRestartFailsPendingCallsThenReconnectsByItself) {
  start_server();
  const std::string port_addr = addr_;
  hold_ = true;
  connect_client(client_options());
  Outcome* a = send();
  Outcome* b = send();
  ASSERT_TRUE(run_until([&] { return held_.size() == 2; }));

  server_->stop();
  held_.clear();  // replies to a closed connection are no-ops
  ASSERT_TRUE(run_until([&] { return !downs_.empty() && a->calls == 1 && b->calls == 1; }));
  expect_error(a, Errc::kUnavailable, "ended before the response");
  expect_error(b, Errc::kUnavailable, "ended before the response");
  EXPECT_EQ(downs_[0].error.code, Errc::kUnavailable);
  EXPECT_THAT(downs_[0].error.message, HasSubstr("closed the connection"));
  EXPECT_FALSE(client_->up());
  EXPECT_FALSE(client_->call(list_jobs(), [](Result<pb::Response>) { FAIL(); }).has_value());
  // While the server is gone, attempts are refused and retried.
  ASSERT_TRUE(run_until([&] { return client_->stats().connect_failures >= 2; }));
  EXPECT_EQ(ups_, 1);

  server_.reset();
  start_server(port_addr);  // the same port
  ASSERT_TRUE(run_until([&] { return ups_ == 2; }));
  expect_call_works();
  const RpcClientStats& s = client_->stats();
  EXPECT_EQ(s.connects, 2u);
  EXPECT_EQ(s.disconnects, 1u);
  EXPECT_EQ(s.handshake_failures, 0u);
  EXPECT_EQ(downs_.size(), 1 + s.connect_failures);  // one on_down per ending
}

TEST(RpcClientBackoff, CeilingDoublesFromFirstAndIsCapped) {
  RpcClientOptions o;
  o.backoff_first_ms = 200;
  o.backoff_max_ms = 10'000;
  std::vector<uint64_t> ceilings;
  for (uint32_t n = 0; n < 9; ++n) ceilings.push_back(backoff_ceiling_ms(o, n));
  EXPECT_EQ(ceilings,
            (std::vector<uint64_t>{200, 400, 800, 1600, 3200, 6400, 10'000, 10'000, 10'000}));
  EXPECT_EQ(backoff_ceiling_ms(o, UINT32_MAX), 10'000u);  // no overflow
  o.backoff_max_ms = UINT64_MAX;
  EXPECT_EQ(backoff_ceiling_ms(o, 100), UINT64_MAX);
}

TEST_F(RpcClientTest, WrongTokenRetriesWithGrowingCappedDelaysAndNeverComesUp) {
  start_server();
  RpcClientOptions o = client_options();
  o.token = kToken + "-wrong";
  o.backoff_first_ms = 20;
  o.backoff_max_ms = 160;
  make_client(o);
  ASSERT_TRUE(run_until([&] { return downs_.size() >= 8; }));
  client_->stop();
  EXPECT_EQ(ups_, 0);
  EXPECT_EQ(client_->stats().connects, 0u);
  EXPECT_EQ(client_->stats().handshake_failures, downs_.size());
  EXPECT_EQ(server_->stats().rejected_auth, downs_.size());
  uint64_t late_max_ms = 0;
  for (size_t k = 0; k < downs_.size(); ++k) {
    SCOPED_TRACE("failure " + std::to_string(k));
    EXPECT_EQ(downs_[k].error.code, Errc::kUnauthenticated);
    EXPECT_THAT(downs_[k].error.message, HasSubstr("wrong cluster token"));
    EXPECT_GE(downs_[k].backoff_ms, o.backoff_first_ms / 2);
    EXPECT_LE(downs_[k].backoff_ms, backoff_ceiling_ms(o, static_cast<uint32_t>(k)));
    EXPECT_LE(downs_[k].backoff_ms, o.backoff_max_ms);
    if (k >= 3) late_max_ms = std::max(late_max_ms, downs_[k].backoff_ms);
    // The next attempt came no sooner than the delay (loop time, so exact).
    if (k + 1 < downs_.size()) {
      EXPECT_GE(downs_[k + 1].at_ms - downs_[k].at_ms, downs_[k].backoff_ms);
    }
  }
  EXPECT_GT(late_max_ms, o.backoff_first_ms);  // the delays grew past the first ceiling
}

TEST_F(RpcClientTest, InflightMaxRefusesAtOnceAndSlotsFreeAsResponsesArrive) {
  start_server();
  hold_ = true;
  RpcClientOptions o = client_options();
  o.inflight_max = 3;
  connect_client(o);
  for (int i = 0; i < 3; ++i) send();
  int refused_cb_calls = 0;
  Status st = client_->call(list_jobs(), [&](Result<pb::Response>) { refused_cb_calls++; });
  ASSERT_FALSE(st.has_value());
  EXPECT_EQ(st.error().code, Errc::kBusy);
  EXPECT_EQ(client_->stats().rejected_busy, 1u);
  ASSERT_TRUE(run_until([&] { return held_.size() == 3; }));
  reply(held_.front().first, held_.front().second);
  held_.pop_front();
  ASSERT_TRUE(run_until([&] { return outcomes_[0].calls == 1; }));
  EXPECT_EQ(client_->stats().inflight, 2u);
  send();  // the freed slot
  EXPECT_FALSE(client_->call(list_jobs(), [&](Result<pb::Response>) { refused_cb_calls++; }));
  ASSERT_TRUE(run_until([&] { return held_.size() == 3; }));
  for (auto& [req, r] : held_) reply(req, r);
  held_.clear();
  ASSERT_TRUE(run_until([&] { return all_done(); }));
  for (const Outcome& out : outcomes_) EXPECT_TRUE(out.result->has_value());
  EXPECT_EQ(refused_cb_calls, 0);
  EXPECT_EQ(client_->stats().rejected_busy, 2u);
  EXPECT_TRUE(downs_.empty());
}

TEST_F(RpcClientTest, TimeoutFailsTheCallKeepsTheSessionAndDropsTheLateAnswer) {
  start_server();
  hold_ = true;
  connect_client(client_options());
  Outcome* later = send(list_jobs(1), 900);
  Outcome* sooner = send(list_jobs(2), 300);
  Outcome* answered = send(list_jobs(3), 60'000);
  ASSERT_TRUE(run_until([&] { return held_.size() == 3; }));
  reply(held_.back().first, held_.back().second);  // the third, in time
  held_.pop_back();
  ASSERT_TRUE(run_until([&] { return sooner->calls == 1; }));
  EXPECT_EQ(later->calls, 0);  // deadlines fire in their own order
  expect_error(sooner, Errc::kUnavailable, "timed out");
  ASSERT_TRUE(run_until([&] { return later->calls == 1; }));
  expect_error(later, Errc::kUnavailable, "timed out");
  ASSERT_EQ(answered->calls, 1);
  EXPECT_TRUE(answered->result->has_value());
  EXPECT_TRUE(client_->up());
  EXPECT_EQ(client_->stats().timeouts, 2u);
  EXPECT_EQ(client_->stats().inflight, 0u);

  for (auto& [req, r] : held_) reply(req, r);  // the late answers
  held_.clear();
  ASSERT_TRUE(run_until([&] { return client_->stats().dropped_responses == 2; }));
  expect_call_works();
  EXPECT_EQ(later->calls, 1);
  EXPECT_EQ(sooner->calls, 1);
  EXPECT_EQ(client_->stats().disconnects, 0u);
  EXPECT_TRUE(downs_.empty());
}

TEST_F(RpcClientTest, StopCancelsEveryPendingCallOnceAndLeaksNoHandle) {
  start_server();
  hold_ = true;
  connect_client(client_options());
  for (int i = 0; i < 3; ++i) send(list_jobs(), i == 0 ? 60'000 : 0);
  ASSERT_TRUE(run_until([&] { return held_.size() == 3; }));
  client_->stop();
  for (const Outcome& o : outcomes_) expect_error(&o, Errc::kCancelled);  // inside stop()
  client_->stop();                                                        // idempotent
  EXPECT_FALSE(client_->up());
  EXPECT_FALSE(client_->call(list_jobs(), [](Result<pb::Response>) { FAIL(); }).has_value());
  client_.reset();  // right after stop(), before the loop ran its close callbacks
  for (auto& [req, r] : held_) reply(req, r);
  held_.clear();
  run_for(100);
  for (const Outcome& o : outcomes_) EXPECT_EQ(o.calls, 1);
  EXPECT_TRUE(downs_.empty());
  // TearDown: the loop runs dry and uv_loop_close() returns 0.
}

TEST_F(RpcClientTest, DestroyedWithoutStopCancelsPendingCalls) {
  start_server();
  hold_ = true;
  connect_client(client_options());
  Outcome* o = send();
  ASSERT_TRUE(run_until([&] { return held_.size() == 1; }));
  client_.reset();
  expect_error(o, Errc::kCancelled);
}

TEST_F(RpcClientTest, StartStopAndDestroyBeforeTheLoopEverRuns) {
  addr_ = "127.0.0.1:" + std::to_string(free_port());
  make_client(client_options());
  client_.reset();
  RpcClientOptions o = client_options();
  o.address = "localhost:1";  // a lookup in flight when destroyed
  make_client(o);
  client_.reset();
  RpcClient never_started(&loop_, client_options(), nullptr, nullptr);
}

TEST_F(RpcClientTest, NothingListeningRetriesWithBackoffWithoutSpinning) {
  addr_ = "127.0.0.1:" + std::to_string(free_port());
  RpcClientOptions o = client_options();
  o.backoff_first_ms = 100;
  o.backoff_max_ms = 400;
  uv_prepare_start(&iterations_, [](uv_prepare_t* p) { ++*static_cast<uint64_t*>(p->data); });
  make_client(o);
  constexpr uint64_t kPeriodMs = 2000;
  run_for(kPeriodMs);
  const RpcClientStats s = client_->stats();
  client_->stop();
  // The floor (first / 2 = 50 ms) bounds the rate: at most 2000 / 50 + 1 attempts.
  EXPECT_GE(s.attempts, 3u);
  EXPECT_LE(s.attempts, kPeriodMs / (o.backoff_first_ms / 2) + 1);
  EXPECT_GE(s.connect_failures + 1, s.attempts);  // all but perhaps the one under way
  // A busy loop would iterate thousands of times; each attempt takes a handful.
  EXPECT_LE(iteration_count_, 20 * s.attempts + 20);
  ASSERT_FALSE(downs_.empty());
  EXPECT_EQ(downs_[0].error.code, Errc::kUnavailable);
  EXPECT_THAT(downs_[0].error.message, HasSubstr("cannot reach server at " + addr_));
  EXPECT_EQ(ups_, 0);
}

// reconnect_now() from on_down skips every backoff, so many delays are drawn at once.
TEST_F(RpcClientTest, BackoffDelaysAreJitteredAndReconnectNowSkipsThem) {
  addr_ = "127.0.0.1:" + std::to_string(free_port());
  RpcClientOptions o = client_options();
  o.backoff_first_ms = 1000;
  o.backoff_max_ms = 60'000;
  on_down_hook_ = [&] {
    if (downs_.size() == 10) return client_->stop();
    client_->reconnect_now();
  };
  make_client(o);
  ASSERT_TRUE(run_until([&] { return downs_.size() == 10; }, 10'000));  // << the delays
  std::set<uint64_t> distinct;
  for (size_t k = 0; k < downs_.size(); ++k) {
    distinct.insert(downs_[k].backoff_ms);
    EXPECT_GE(downs_[k].backoff_ms, 500u);
    EXPECT_LE(downs_[k].backoff_ms, backoff_ceiling_ms(o, static_cast<uint32_t>(k)));
  }
  EXPECT_GE(distinct.size(), 5u);
  EXPECT_EQ(client_->stats().attempts, 10u);
}

TEST_F(RpcClientTest, ReconnectNowAfterAServerRestart) {
  start_server();
  const std::string port_addr = addr_;
  RpcClientOptions o = client_options();
  o.backoff_first_ms = 60'000;  // a backoff longer than the test's bound on waits
  o.backoff_max_ms = 60'000;
  connect_client(o);
  server_.reset();
  ASSERT_TRUE(run_until([&] { return downs_.size() == 1; }));
  EXPECT_GE(client_->stats().backoff_ms, 30'000u);
  start_server(port_addr);
  client_->reconnect_now();
  ASSERT_TRUE(run_until([&] { return ups_ == 2; }, 10'000));
  expect_call_works();
  client_->reconnect_now();  // up: a no-op
  EXPECT_TRUE(client_->up());
}

TEST_F(RpcClientTest, ConnectTimeoutWhenTheServerNeverSpeaks) {
  // A listening socket nobody accepts from: TCP connects, HELLO never comes.
  const int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(lfd, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  ASSERT_EQ(::listen(lfd, 4), 0);
  socklen_t len = sizeof sa;
  ASSERT_EQ(::getsockname(lfd, reinterpret_cast<sockaddr*>(&sa), &len), 0);
  addr_ = "127.0.0.1:" + std::to_string(ntohs(sa.sin_port));
  RpcClientOptions o = client_options();
  o.connect_timeout_ms = 300;
  make_client(o);
  ASSERT_TRUE(run_until([&] { return !downs_.empty(); }));
  client_->stop();
  ::close(lfd);
  EXPECT_EQ(downs_[0].error.code, Errc::kUnavailable);
  EXPECT_EQ(downs_[0].error.message, "timed out connecting to " + addr_ + " after 300 ms");
  EXPECT_EQ(client_->stats().handshake_failures, 1u);
}

TEST_F(RpcClientTest, WriteQueueOverBoundFailsTheCallAndClosesTheSession) {
  server_options_.max_inflight = 1;  // the server stops reading after one request
  start_server();
  hold_ = true;
  RpcClientOptions o = client_options();
  o.write_queue_bytes_max = kFrameHeaderBytes + kFrameBytesMax + kSealSlackBytes;  // the least
  connect_client(o);
  pb::Request big;
  big.mutable_submit()->mutable_spec()->set_name(std::string(3u << 20, 'x'));
  Status st;
  int sent = 0;
  for (; sent < 64; ++sent) {  // kernel buffers take some MiB; then the queue fills
    st = client_->call(big, [&](Result<pb::Response> r) {
      outcomes_.push_back({1, std::move(r)});
    });
    if (!st) break;
  }
  ASSERT_FALSE(st.has_value()) << "64 x 3 MiB queued without reaching the bound";
  EXPECT_EQ(st.error().code, Errc::kUnavailable);
  EXPECT_THAT(st.error().message, HasSubstr("is not reading"));
  EXPECT_EQ(client_->stats().write_queue_overflows, 1u);
  EXPECT_FALSE(client_->up());
  EXPECT_TRUE(downs_.empty());  // callbacks never run inside call()
  EXPECT_TRUE(outcomes_.empty());
  ASSERT_TRUE(run_until([&] { return downs_.size() == 1; }));
  ASSERT_EQ(outcomes_.size(), static_cast<size_t>(sent));
  for (const Outcome& out : outcomes_) expect_error(&out, Errc::kUnavailable);
  held_.clear();
  ASSERT_TRUE(run_until([&] { return ups_ == 2; }));
  expect_call_works();
}

TEST_F(RpcClientTest, UnknownIdsAreDroppedAndCounted) {
  fake_ = std::make_unique<FakeServer>(&loop_, [](const pb::Request& req) {
    pb::Response stray, real;
    stray.set_id(req.id() + 1000);
    stray.set_error(pb::INTERNAL);
    real.set_id(req.id());
    real.mutable_jobs()->add_jobs()->set_name("real");
    return frame_of(stray) + frame_of(real);
  });
  addr_ = fake_->start();
  connect_client(client_options());
  Outcome* o = send();
  ASSERT_TRUE(run_until([&] { return o->calls == 1; }));
  ASSERT_TRUE(o->result->has_value());
  EXPECT_EQ((*o->result)->jobs().jobs(0).name(), "real");
  EXPECT_EQ(client_->stats().dropped_responses, 1u);
  EXPECT_TRUE(client_->up());
}

TEST_F(RpcClientTest, UnparsableResponseIsAProtocolErrorThatEndsTheSession) {
  for (const std::string& garbage :
       {std::string("\x00\x00\x00\x03\xff\xff\xff", 7), std::string(4, '\xff')}) {
    SCOPED_TRACE(garbage.size() == 4 ? "bad length" : "bad payload");
    downs_.clear();
    outcomes_.clear();
    ups_ = 0;
    fake_ = std::make_unique<FakeServer>(&loop_, [&](const pb::Request&) { return garbage; });
    addr_ = fake_->start();
    connect_client(client_options());
    Outcome* o = send();
    ASSERT_TRUE(run_until([&] { return o->calls == 1 && !downs_.empty(); }));
    expect_error(o, Errc::kUnavailable, "protocol error");
    EXPECT_THAT(downs_[0].error.message, HasSubstr("protocol error from " + addr_));
    EXPECT_EQ(client_->stats().protocol_errors, 1u);
    EXPECT_EQ(client_->stats().disconnects, 1u);
    ASSERT_TRUE(run_until([&] { return ups_ == 2; }));  // and it comes back
    client_.reset();
  }
}

TEST_F(RpcClientTest, Ipv6LiteralAndHostname) {
  server_options_.listen = "[::1]:0";
  server_ = std::make_unique<RpcServer>(
      &loop_, kToken, server_options_,
      [this](pb::Request&& req, Responder r) { handle(std::move(req), std::move(r)); });
  if (Result<std::string> addr = server_->start(); addr.has_value()) {
    addr_ = *addr;
    EXPECT_TRUE(addr_.starts_with("[::1]:")) << addr_;
    connect_client(client_options());
    expect_call_works();
    client_.reset();
  } else {
    GTEST_LOG_(INFO) << "no IPv6 loopback here: " << addr.error().describe();
  }
  server_.reset();
  start_server();
  // "localhost" may resolve to ::1 first; the next attempt then takes the next address.
  addr_ = "localhost:" + std::to_string(parse_host_port(addr_)->port);
  connect_client(client_options());
  expect_call_works();
}

TEST_F(RpcClientTest, DestroyingTheClientInsideItsOwnCallbackIsCaught) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // libuv's threadpool may be running
  start_server();
  on_up_hook_ = [&] { client_.reset(); };
  EXPECT_DEATH(
      {
        make_client(client_options());
        run_until([&] { return client_ == nullptr; });
      },
      "invariant broken: impl_->callback_depth == 0");
  on_up_hook_ = nullptr;
}

TEST_F(RpcClientTest, BadAddressFailsStart) {
  for (const char* bad : {"no-port", "host:99999", "127.0.0.1:0"}) {
    RpcClientOptions o = client_options();
    o.address = bad;
    RpcClient client(&loop_, o, nullptr, nullptr);
    Status st = client.start();
    ASSERT_FALSE(st.has_value()) << bad;
    EXPECT_EQ(st.error().code, Errc::kInvalidArgument) << bad;
  }
}

TEST_F(RpcClientTest, UnresolvableHostnameIsRetried) {
  RpcClientOptions o = client_options();
  o.address = "host.invalid:7420";
  make_client(o);
  ASSERT_TRUE(run_until([&] { return downs_.size() >= 2; }));
  client_->stop();
  EXPECT_EQ(downs_[0].error.code, Errc::kUnavailable);
  EXPECT_THAT(downs_[0].error.message, HasSubstr("cannot resolve 'host.invalid'"));
}

}  // namespace
}  // namespace cardnode::net
