// rpc_roundtrip: cardnode's RPC round trips on loopback, one call in flight, for
// bench/rpc_peers.sh to set beside gRPC's unary ping-pong (bench/peers/grpc_pingpong.cc).
//
// The shape is gRPC's: a server in-process (net::RpcServer on its libuv loop, on a
// thread of its own, as gRPC's server has its own threads) and a blocking client
// (net::Client, the CLI's) making sequential calls from the main thread. Each request
// carries --payload bytes and each reply carries them back. The first 0.5 s are warm-up.
//   --mode sealed   TLS 1.3 with the token as PSK (the default transport)
//   --mode plain    --insecure on both sides: the token handshake, then plaintext
//   --mode floor    no cardnode at all: two threads echo the payload over blocking TCP on
//                   loopback, the least any two-thread ping-pong costs on this machine
// Prints one line:
//   cardnode mode=sealed|plain rate_per_s=N p50_us=X p99_us=Y calls=K
//
// --handshakes N instead measures what a connection costs: N handshakes of two channels
// joined in memory (no sockets), each side's CPU time by CLOCK_THREAD_CPUTIME_ID:
//   cardnode handshakes=N server_cpu_us=X client_cpu_us=Y
// --seal-mib M [--suite S] measures one cipher: M MiB sealed by a client channel and
// opened by a server channel, 16 KiB records, in MiB/s of one core (run under
// qemu-aarch64 with OPENSSL_armcap=0 to see a board without AES instructions):
//   cardnode suite=S seal_open_mib_per_s=X
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <thread>
#include <vector>

#include "net/channel.h"
#include "net/client.h"
#include "net/rpc_server.h"

namespace {

using namespace cardnode;
using Clock = std::chrono::steady_clock;
const std::string kToken = "rpc-roundtrip-bench-token-0123456789abcdef";

double thread_cpu_us() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) / 1e3;
}

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "rpc_roundtrip: %s\n", what.c_str());
  std::exit(1);
}

std::shared_ptr<const net::SecurityContext> context(bool plain, net::SecurityContext::Role role,
                                                    const std::string& suite = "") {
  net::SecurityOptions o;
  o.token = kToken;
  o.insecure = plain;
  o.ciphersuites = suite;
  auto c = net::SecurityContext::create(o, role);
  if (!c) die(c.error().describe());
  return *c;
}

// Calls `one_call` back to back for `seconds` (the first 0.5 s not counted) and prints the
// result line for `mode`. one_call dies on a failure.
template <class F>
void measure(const char* mode, double seconds, F one_call) {
  std::vector<double> lat_us;
  lat_us.reserve(1 << 20);
  const auto start = Clock::now();
  const auto warm_end = start + std::chrono::milliseconds(500);
  const auto end = start + std::chrono::duration<double>(seconds);
  Clock::time_point first{}, last{};
  for (;;) {  // bounded by the run's end
    const auto t0 = Clock::now();
    if (t0 >= end) break;
    one_call();
    const auto t1 = Clock::now();
    if (t0 < warm_end) continue;
    if (lat_us.empty()) first = t0;
    last = t1;
    lat_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  if (lat_us.empty()) die("no calls counted");
  std::sort(lat_us.begin(), lat_us.end());
  const double span_s = std::chrono::duration<double>(last - first).count();
  std::printf("cardnode mode=%s rate_per_s=%.0f p50_us=%.1f p99_us=%.1f calls=%zu\n", mode,
              static_cast<double>(lat_us.size()) / span_s, lat_us[lat_us.size() / 2],
              lat_us[lat_us.size() * 99 / 100], lat_us.size());
}

int roundtrips(bool plain, uint32_t payload, double seconds) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  uv_async_t stop_async;
  net::RpcServerOptions ro;
  ro.listen = "127.0.0.1:0";
  net::RpcServer server(&loop, context(plain, net::SecurityContext::Role::kServer), ro,
                        [](pb::Request&& req, net::Responder r) {
                          pb::Response resp;
                          resp.mutable_jobs()->add_jobs()->set_name(req.submit().spec().name());
                          r.reply(std::move(resp));
                        });
  auto addr = server.start();
  if (!addr) die(addr.error().describe());
  stop_async.data = &server;
  uv_async_init(&loop, &stop_async, [](uv_async_t* a) {
    static_cast<net::RpcServer*>(a->data)->stop();
    uv_close(reinterpret_cast<uv_handle_t*>(a), nullptr);
  });
  std::thread loop_thread([&] { uv_run(&loop, UV_RUN_DEFAULT); });

  auto client =
      net::Client::connect(*addr, context(plain, net::SecurityContext::Role::kClient), 5000);
  if (!client) die(client.error().describe());
  pb::Request req;
  req.mutable_submit()->mutable_spec()->set_name(std::string(payload, 'p'));
  measure(plain ? "plain" : "sealed", seconds, [&] {
    auto resp = (*client)->call(req, 10'000);
    if (!resp) die(resp.error().describe());
    if (resp->jobs().jobs_size() != 1 || resp->jobs().jobs(0).name().size() != payload) {
      die("wrong reply");
    }
  });
  client->reset();
  uv_async_send(&stop_async);
  loop_thread.join();
  uv_run(&loop, UV_RUN_DEFAULT);  // the server's handles finish closing
  uv_loop_close(&loop);
  return 0;
}

bool io_all(int fd, char* buf, size_t n, bool write_it) {
  for (size_t done = 0; done < n;) {  // bounded by n
    const ssize_t r = write_it ? ::send(fd, buf + done, n - done, MSG_NOSIGNAL)
                               : ::recv(fd, buf + done, n - done, 0);
    if (r <= 0) return false;
    done += static_cast<size_t>(r);
  }
  return true;
}

int floor(uint32_t payload, double seconds) {
  const int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof sa;
  if (::bind(lfd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::listen(lfd, 1) != 0 ||
      ::getsockname(lfd, reinterpret_cast<sockaddr*>(&sa), &len) != 0) {
    die("floor: cannot listen");
  }
  std::thread echo([&] {
    const int fd = ::accept(lfd, nullptr, nullptr);
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    std::vector<char> buf(payload);
    while (io_all(fd, buf.data(), payload, false) && io_all(fd, buf.data(), payload, true)) {
    }
    ::close(fd);
  });
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) die("floor: connect");
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  std::vector<char> buf(payload, 'p');
  measure("floor", seconds, [&] {
    if (!io_all(fd, buf.data(), payload, true) || !io_all(fd, buf.data(), payload, false)) {
      die("floor: echo failed");
    }
  });
  ::close(fd);
  echo.join();
  ::close(lfd);
  return 0;
}

// Moves bytes between two channels until both are quiet; adds each side's CPU time.
void exchange(net::Channel& server, net::Channel& client, std::string to_server, double* server_us,
              double* client_us) {
  std::string to_client, app;
  for (int i = 0; i < 8 && !(to_server.empty() && to_client.empty()); ++i) {
    if (!to_server.empty()) {
      std::string in;
      in.swap(to_server);
      const double t0 = thread_cpu_us();
      if (!server.feed(in, &app, &to_client)) die("server handshake failed");
      *server_us += thread_cpu_us() - t0;
    }
    if (!to_client.empty()) {
      std::string in;
      in.swap(to_client);
      const double t0 = thread_cpu_us();
      if (!client.feed(in, &app, &to_server)) die("client handshake failed");
      *client_us += thread_cpu_us() - t0;
    }
  }
}

int handshakes(uint32_t n) {
  auto sctx = context(false, net::SecurityContext::Role::kServer);
  auto cctx = context(false, net::SecurityContext::Role::kClient);
  double server_us = 0, client_us = 0;
  for (uint32_t i = 0; i < n; ++i) {
    double t0 = thread_cpu_us();
    auto s = sctx->channel();
    server_us += thread_cpu_us() - t0;
    t0 = thread_cpu_us();
    auto c = cctx->channel();
    std::string hello;
    if (!c->start(&hello)) die("client start failed");
    client_us += thread_cpu_us() - t0;
    exchange(*s, *c, std::move(hello), &server_us, &client_us);
    if (!s->open() || !c->open()) die("handshake did not finish");
  }
  std::printf("cardnode handshakes=%u server_cpu_us=%.1f client_cpu_us=%.1f\n", n, server_us / n,
              client_us / n);
  return 0;
}

int seal_open(uint32_t mib, const std::string& suite) {
  auto s = context(false, net::SecurityContext::Role::kServer, suite)->channel();
  auto c = context(false, net::SecurityContext::Role::kClient, suite)->channel();
  std::string hello;
  if (!c->start(&hello)) die("client start failed");
  double ignored = 0;
  exchange(*s, *c, std::move(hello), &ignored, &ignored);
  if (!s->open()) die("handshake did not finish");
  const std::string block(16u << 10, 'x');
  std::string sealed, app, out;
  const uint64_t blocks = uint64_t{mib} * 64;
  const double t0 = thread_cpu_us();
  for (uint64_t i = 0; i < blocks; ++i) {
    sealed.clear();
    app.clear();
    if (!c->seal(block, &sealed) || !s->feed(sealed, &app, &out) || app.size() != block.size()) {
      die("seal/open failed");
    }
  }
  const double us = thread_cpu_us() - t0;
  const std::string d = s->describe();
  std::printf("cardnode suite=%s seal_open_mib_per_s=%.1f (%s)\n",
              suite.empty() ? "default" : suite.c_str(), mib / (us / 1e6), d.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"cardnode RPC round trips, handshake cost and cipher speed"};
  std::string mode = "sealed";
  uint32_t payload = 64;
  double seconds = 5;
  uint32_t n_handshakes = 0;
  uint32_t seal_mib = 0;
  std::string suite;
  app.add_option("--mode", mode, "sealed | plain | floor")
      ->check(CLI::IsMember({"sealed", "plain", "floor"}));
  app.add_option("--payload", payload, "Bytes each way per call")->check(CLI::Range(1u, 1u << 20));
  app.add_option("--seconds", seconds, "Length of the run, 0.5 s warm-up included")
      ->check(CLI::Range(1.0, 3600.0));
  app.add_option("--handshakes", n_handshakes, "Measure N handshakes' CPU cost instead");
  app.add_option("--seal-mib", seal_mib, "Measure sealing+opening M MiB instead");
  app.add_option("--suite", suite, "TLS 1.3 suite for --seal-mib (OpenSSL's name)");
  CLI11_PARSE(app, argc, argv);
  if (n_handshakes > 0) return handshakes(n_handshakes);
  if (seal_mib > 0) return seal_open(seal_mib, suite);
  if (mode == "floor") return floor(payload, seconds);
  return roundtrips(mode == "plain", payload, seconds);
}
