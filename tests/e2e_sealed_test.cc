// Sealed connections (net/channel.h) end to end: a real `cardnode` CLI talks to a real
// server through a TCP relay that the test controls, as an attacker on the path would
// (ARP spoofing on a shared LAN is enough): it reads every byte, flips one, or replays a
// whole captured connection. Then certificate mode and --insecure.
#include <poll.h>

#include <algorithm>
#include <atomic>
#include <mutex>

#include "net/test_certs.h"
#include "tests/e2e_pool.h"

namespace cardnode::e2e {
namespace {

// A one-connection-at-a-time TCP relay on 127.0.0.1:0 to `target`. It keeps the bytes of
// the last connection each way, and can flip one byte of the client->server stream.
class Relay {
 public:
  explicit Relay(const std::string& target) : target_(target) {
    listener_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(bind(listener_, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
    EXPECT_EQ(listen(listener_, 16), 0);
    socklen_t len = sizeof sa;
    EXPECT_EQ(getsockname(listener_, reinterpret_cast<sockaddr*>(&sa), &len), 0);
    address_ = "127.0.0.1:" + std::to_string(ntohs(sa.sin_port));
    thread_ = std::thread([this] { serve(); });
  }
  ~Relay() {
    stop_ = true;
    thread_.join();
    close(listener_);
  }
  const std::string& address() const { return address_; }
  // The next connection has byte `offset` of its client->server stream XORed with 0x01
  // (-1: none).
  void flip_next(int64_t offset) { flip_.store(offset); }
  std::string to_server() {
    std::lock_guard<std::mutex> l(mu_);
    return up_;
  }
  std::string to_client() {
    std::lock_guard<std::mutex> l(mu_);
    return down_;
  }

 private:
  void serve() {
    while (!stop_) {  // one connection at a time, until the test ends
      pollfd p{listener_, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0) continue;
      const int client = accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
      if (client < 0) continue;
      const int server = dial(target_);
      {
        std::lock_guard<std::mutex> l(mu_);
        up_.clear();
        down_.clear();
      }
      const int64_t flip = flip_.exchange(-1);
      if (server >= 0) pump(client, server, flip);
      close(client);
      if (server >= 0) close(server);
    }
  }
  // A flipped length byte makes a record look longer than what was sent: the server then
  // waits for bytes that never come, and the client for an answer (30 s). A relay that
  // changed a byte also ends the client's side once the client has gone quiet, so the
  // server sees the record cut short at once; that only saves the wait.
  void pump(int client, int server, int64_t flip) {
    uint64_t up_bytes = 0;
    char buf[65536];
    int quiet_polls = 0;
    bool half_closed = false;
    for (;;) {  // until either side closes, or the test ends
      pollfd p[2] = {{client, POLLIN, 0}, {server, POLLIN, 0}};
      const int ready = poll(p, 2, 50);
      if (ready < 0 || stop_) return;
      if (ready == 0 && flip >= 0 && up_bytes > static_cast<uint64_t>(flip) && !half_closed &&
          ++quiet_polls >= 4) {
        shutdown(server, SHUT_WR);
        half_closed = true;
      }
      for (int i = 0; i < 2; ++i) {
        if ((p[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
        const ssize_t n = read(p[i].fd, buf, sizeof buf);
        if (n <= 0) return;
        if (i == 0 && flip >= 0 && static_cast<uint64_t>(flip) >= up_bytes &&
            static_cast<uint64_t>(flip) < up_bytes + static_cast<uint64_t>(n)) {
          buf[flip - static_cast<int64_t>(up_bytes)] ^= 0x01;
        }
        {
          std::lock_guard<std::mutex> l(mu_);
          (i == 0 ? up_ : down_).append(buf, static_cast<size_t>(n));
        }
        if (i == 0) up_bytes += static_cast<uint64_t>(n);
        if (write(i == 0 ? server : client, buf, static_cast<size_t>(n)) != n) return;
      }
    }
  }

  std::string target_, address_;
  int listener_ = -1;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> flip_{-1};
  std::mutex mu_;
  std::string up_, down_;
};

// The TLS records of a byte stream: (offset, length) of each whole one.
std::vector<std::pair<size_t, size_t>> records_of(const std::string& s) {
  std::vector<std::pair<size_t, size_t>> out;
  size_t at = 0;
  while (at + 5 <= s.size()) {
    const size_t len = (size_t{uint8_t(s[at + 3])} << 8) | uint8_t(s[at + 4]);
    if (at + 5 + len > s.size()) break;
    out.emplace_back(at, 5 + len);
    at += 5 + len;
  }
  return out;
}

TEST_F(Cluster, ARelayOnThePathSeesNoSecretAndCannotChangeOrReplayARequest) {
  start_server();
  auto jobs_in = [this](Cluster*) { return json_of(cli({"ps", "--json"}))["jobs"].size(); };
  Relay relay(addr_);
  const std::string token = slurp(data_ + "/token");
  const std::string cmd = "sealed-cmd-" + std::to_string(getpid());
  const std::string env = "sealed-env-" + std::to_string(getpid());

  // 1. What the relay sees of a whole `run --wait` (request, wait, answer): no command
  //    line, no environment value, no token, no output.
  Output r = cli({"--server", relay.address(), "run", "--wait", "--env", "SECRET=" + env, "--",
                  "sh", "-c", "echo " + cmd + " $SECRET"});
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string up = relay.to_server(), down = relay.to_client();
  ASSERT_GT(up.size(), 200u);
  for (const std::string& secret : {cmd, env, token.substr(0, 16)}) {
    EXPECT_EQ(up.find(secret), std::string::npos) << secret;
    EXPECT_EQ(down.find(secret), std::string::npos) << secret;
  }
  // Every record after the ClientHello is TLS 1.3 application data (type 23): sealed.
  const auto records = records_of(up);
  ASSERT_GE(records.size(), 3u);
  EXPECT_EQ(up[0], 22);
  for (size_t i = 1; i < records.size(); ++i) EXPECT_EQ(up[records[i].first], 23) << i;
  ASSERT_EQ(jobs_in(this), 1u);

  // 2. A `run` (no wait) captured whole: its ClientHello, its Finished, its SubmitJob.
  Output captured = cli({"--server", relay.address(), "run", "--", "true"});
  ASSERT_EQ(captured.code, 0) << captured.err;
  const std::string capture = relay.to_server();
  const auto recs = records_of(capture);
  ASSERT_GE(recs.size(), 3u);
  ASSERT_EQ(jobs_in(this), 2u);
  // Flip each byte of the Finished and of the SubmitJob record in turn: every such
  // connection drops (exit 2), and no request is ever changed into another: no job appears.
  const size_t first = recs[1].first, end = recs[2].first + recs[2].second;
  int dropped = 0;
  for (size_t k = first; k < end; ++k) {
    relay.flip_next(static_cast<int64_t>(k));
    Output f = cli({"--server", relay.address(), "run", "--", "echo", "flipped"});
    EXPECT_EQ(f.code, 2) << "byte " << k << ": " << f.out << f.err;
    if (f.code == 2) ++dropped;
  }
  EXPECT_EQ(dropped, static_cast<int>(end - first));
  EXPECT_EQ(jobs_in(this), 2u);

  // 3. The captured connection replayed to the server, byte for byte: no job, and the
  //    server counts a refused connection.
  const double before = metric(http_get(metrics_addr_, "/metrics"),
                               "cardnode_net_connections_rejected_total{reason=\"protocol\"}");
  for (int i = 0; i < 3; ++i) {
    const int fd = dial(addr_);
    ASSERT_GE(fd, 0);
    (void)!write(fd, capture.data(), capture.size());
    EXPECT_TRUE(closed_by_peer(fd));
    close(fd);
  }
  EXPECT_EQ(jobs_in(this), 2u);
  const double after = metric(http_get(metrics_addr_, "/metrics"),
                              "cardnode_net_connections_rejected_total{reason=\"protocol\"}");
  EXPECT_GE(after - before, 3) << before << " -> " << after;
  std::printf("relay: %zu bytes up, %zu down for run --wait; %d of %zu flipped bytes dropped\n",
              up.size(), down.size(), dropped, end - first);
}

TEST_F(Cluster, CertificateModeAdmitsTheCasMembersOnly) {
  const std::string pki_dir = root_ + "/pki";
  fs::create_directories(pki_dir + "/other");
  const net::testing::Pki pki = net::testing::make_pki(pki_dir, {"server", "laptop"});
  const net::testing::Pki other =
      net::testing::make_pki(pki_dir + "/other", {"intruder"}, "someone else's CA");
  start_server(
      {"--tls-cert", pki.cert("server"), "--tls-key", pki.key("server"), "--tls-ca", pki.ca});
  // A member: no token needed.
  Output ok = cardnode({"--server", addr_, "--tls-cert", pki.cert("laptop"), "--tls-key",
                        pki.key("laptop"), "--tls-ca", pki.ca, "run", "--wait", "--", "true"},
                       root_);
  EXPECT_EQ(ok.code, 0) << ok.err;
  // A certificate from another CA, and a token holder without a certificate: refused.
  Output intruder = cardnode({"--server", addr_, "--tls-cert", other.cert("intruder"), "--tls-key",
                              other.key("intruder"), "--tls-ca", pki.ca, "ps"},
                             root_);
  EXPECT_EQ(intruder.code, 2);
  EXPECT_NE(intruder.err.find("certificate"), std::string::npos) << intruder.err;
  // Over TCP (on this board, --data-dir alone would take the local socket, which needs
  // neither: docs/ARCHITECTURE.md, "Sealed connections").
  Output psk = cli({"--server", addr_, "ps"});
  EXPECT_EQ(psk.code, 2) << psk.out;
  const std::string m = http_get(metrics_addr_, "/metrics");
  EXPECT_GE(metric(m, "cardnode_net_connections_rejected_total{reason=\"auth\"}"), 1) << m;
  // Half a configuration is a usage error, before anything is started.
  Output half = cardnode({"--server", addr_, "--tls-cert", pki.cert("laptop"), "ps"}, root_);
  EXPECT_EQ(half.code, 2);
  EXPECT_NE(half.err.find("--tls-ca"), std::string::npos) << half.err;
  Output listed = cardnode({"--server", addr_, "--tls-cert", pki.cert("laptop"), "--tls-key",
                            pki.key("laptop"), "--tls-ca", pki.ca, "nodes", "--json"},
                           root_);
  ASSERT_EQ(listed.code, 0) << listed.err;
  EXPECT_EQ(json_of(listed)["nodes"][0]["transport"], "tls-cert");
}

TEST_F(Cluster, InsecureNeedsBothSidesAndSaysSoInNodes) {
  start_server();
  Output sealed = cli({"nodes", "--json"});
  ASSERT_EQ(sealed.code, 0) << sealed.err;
  EXPECT_EQ(json_of(sealed)["nodes"][0]["transport"], "tls-psk");
  EXPECT_EQ(json_of(sealed)["nodes"][0]["insecure"], false);
  stop_server(SIGTERM);

  start_server({"--insecure"});
  Output mismatch = cli({"--server", addr_, "ps"});  // TCP, not the local socket
  EXPECT_EQ(mismatch.code, 2);
  EXPECT_NE(mismatch.err.find("--insecure"), std::string::npos) << mismatch.err;
  Output plain_json = cli({"--insecure", "nodes", "--json"});
  ASSERT_EQ(plain_json.code, 0) << plain_json.err;
  EXPECT_EQ(json_of(plain_json)["nodes"][0]["insecure"], true);
  Output plain = cli({"--insecure", "nodes"});
  ASSERT_EQ(plain.code, 0) << plain.err;
  EXPECT_NE(plain.out.find("plaintext"), std::string::npos) << plain.out;
  EXPECT_NE(plain.out.find("not encrypted"), std::string::npos) << plain.out;
  const std::string bad_token = root_ + "/bad-token";
  {
    std::ofstream f(bad_token);
    f << "not-the-cluster-token-0123456789abcdef\n";
  }
  fs::permissions(bad_token, fs::perms::owner_read | fs::perms::owner_write);
  Output refused =
      cardnode({"--server", addr_, "--token-file", bad_token, "--insecure", "ps"}, root_);
  EXPECT_EQ(refused.code, 2);
  EXPECT_NE(refused.err.find("wrong cluster token"), std::string::npos) << refused.err;
}

// OpenSSL is loaded when a connection first needs it (net/openssl.h). A CLI call over the
// server's local socket never loads it; one that needs TLS, where libssl.so.3 cannot be
// loaded, stops with one line that says so. A file that is not a library stands in for a
// broken OpenSSL, found first through LD_LIBRARY_PATH (the server keeps the real one).
TEST_F(Cluster, OnlyAConnectionThatNeedsTlsLoadsOpenSsl) {
  start_server();
  ASSERT_TRUE(fs::exists(data_ + "/api.sock"));  // the local calls below go through it
  const std::string broken = root_ + "/broken-openssl";
  fs::create_directories(broken);
  std::ofstream(broken + "/libssl.so.3") << "not a shared object\n";
  const std::vector<std::string> env = {"LD_LIBRARY_PATH=" + broken};

  Output local = cli({"run", "--wait", "--", "true"}, env);
  EXPECT_EQ(local.code, 0) << local.err;
  Output listed = cli({"ps", "1"}, env);
  EXPECT_EQ(listed.code, 0) << listed.err;

  Output tls = cli({"--server", addr_, "ps"}, env);  // TCP: TLS with the data dir's token
  EXPECT_EQ(tls.code, 2) << tls.err;
  EXPECT_EQ(std::count(tls.err.begin(), tls.err.end(), '\n'), 1) << tls.err;
  EXPECT_NE(tls.err.find("need OpenSSL 3 (libssl.so.3), which cannot be loaded"), std::string::npos)
      << tls.err;
  EXPECT_NE(tls.err.find("install the libssl3 package"), std::string::npos) << tls.err;

  Output fine = cli({"--server", addr_, "ps"});
  EXPECT_EQ(fine.code, 0) << fine.err;
}

// Agents seal their line to the server too: in certificate mode a board with a certificate
// from the cluster's CA joins and runs tasks, one from another CA never joins; with
// --insecure on both sides a board joins and `nodes` says its line is plaintext.
TEST_F(Pool, AgentsJoinOnlyWithTheClustersCertificateOrMatchingInsecure) {
  const std::string pki_dir = root_ + "/pki";
  fs::create_directories(pki_dir + "/other");
  const net::testing::Pki pki = net::testing::make_pki(pki_dir, {"server", "a1", "laptop"});
  const net::testing::Pki other =
      net::testing::make_pki(pki_dir + "/other", {"intruder"}, "someone else's CA");
  auto certs = [](const net::testing::Pki& p, const std::string& who, const std::string& ca) {
    return std::vector<std::string>{"--tls-cert", p.cert(who), "--tls-key",
                                    p.key(who),   "--tls-ca",  ca};
  };
  ASSERT_NO_FATAL_FAILURE(start_pool_server(certs(pki, "server", pki.ca)));
  ASSERT_NO_FATAL_FAILURE(start_agent("a1", certs(pki, "a1", pki.ca), /*copy_token=*/false));
  ASSERT_NO_FATAL_FAILURE(
      start_agent("intruder", certs(other, "intruder", pki.ca), /*copy_token=*/false));
  auto laptop = [&](std::vector<std::string> args) {
    std::vector<std::string> all = certs(pki, "laptop", pki.ca);
    all.insert(all.begin(), {"--server", addr_});
    all.insert(all.end(), args.begin(), args.end());
    return cardnode(all, root_);
  };
  auto ready = [&] {
    const Json j = try_json(laptop({"nodes", "--json"}));
    std::set<std::string> names;
    if (j.is_discarded() || !j.contains("nodes")) return names;
    for (const auto& n : j["nodes"]) {
      if (n["state"] == "ready") names.insert(n["name"].get<std::string>());
    }
    return names;
  };
  ASSERT_TRUE(eventually([&] { return ready().count("a1") == 1; })) << logs();
  Output r = laptop({"run", "--wait", "--", "true"});
  EXPECT_EQ(r.code, 0) << r.err << logs();
  ASSERT_TRUE(eventually([&] {
    return slurp(agent_log("intruder")).find("certificate") != std::string::npos;
  })) << logs();
  EXPECT_EQ(ready(), std::set<std::string>{"a1"});
  kill_agent("a1", SIGTERM);
  kill_agent("intruder", SIGTERM);
  stop_server(SIGTERM);

  // --insecure on both sides: the board joins; nodes says plaintext.
  ASSERT_NO_FATAL_FAILURE(start_pool_server({"--insecure"}));
  ASSERT_NO_FATAL_FAILURE(start_agent("plain", {"--insecure"}));
  ASSERT_NO_FATAL_FAILURE(start_agent("sealed"));  // without --insecure: never joins
  ASSERT_TRUE(eventually([&] {
    const Json j = try_json(cli({"--insecure", "nodes", "--json"}));
    if (j.is_discarded() || !j.contains("nodes")) return false;
    for (const auto& n : j["nodes"]) {  // a1, from the first half, is there too (down)
      if (n["name"] == "plain") return n["state"] == "ready" && n["transport"] == "plaintext";
    }
    return false;
  })) << logs();
  ASSERT_TRUE(eventually([&] {
    return slurp(agent_log("sealed")).find("--insecure") != std::string::npos;
  })) << logs();
}

}  // namespace
}  // namespace cardnode::e2e
