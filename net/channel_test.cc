#include "net/channel.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "net/handshake.h"
#include "net/test_certs.h"

namespace cardnode::net {
namespace {

using Role = SecurityContext::Role;

const std::string kToken = "0123456789abcdef0123456789abcdef";

// Two channels joined back to back: what one sends, the other is fed. Keeps what each
// side's application received and the first error each side hit.
struct Pair {
  Pair(std::shared_ptr<const SecurityContext> server_ctx,
       std::shared_ptr<const SecurityContext> client_ctx)
      : server(server_ctx->channel()), client(client_ctx->channel()) {
    std::string out;
    EXPECT_TRUE(server->start(&to_client).has_value());
    EXPECT_TRUE(client->start(&to_server).has_value());
  }
  // Moves bytes both ways until neither side has anything to send (bounded).
  void run() {
    for (int i = 0; i < 16 && !(to_server.empty() && to_client.empty()); ++i) {
      if (!to_server.empty() && server_error.empty()) {
        std::string in;
        in.swap(to_server);
        server_wire += in;
        if (Status st = server->feed(in, &server_app, &to_client); !st) {
          server_error = st.error().message;
          server_code = st.error().code;
        }
      } else {
        to_server.clear();
      }
      if (!to_client.empty() && client_error.empty()) {
        std::string in;
        in.swap(to_client);
        if (Status st = client->feed(in, &client_app, &to_server); !st) {
          client_error = st.error().message;
          client_code = st.error().code;
        }
      } else {
        to_client.clear();
      }
    }
  }
  std::unique_ptr<Channel> server, client;
  std::string to_server, to_client, server_app, client_app;
  std::string server_wire;  // every byte the server was fed
  std::string server_error, client_error;
  Errc server_code = Errc::kInternal, client_code = Errc::kInternal;
};

std::shared_ptr<const SecurityContext> make(SecurityOptions o, Role role) {
  auto ctx = SecurityContext::create(o, role);
  EXPECT_TRUE(ctx.has_value()) << (ctx ? "" : ctx.error().describe());
  return ctx ? *ctx : nullptr;
}

SecurityOptions psk(const std::string& token, const std::string& suites = "") {
  SecurityOptions o;
  o.token = token;
  o.ciphersuites = suites;
  return o;
}

TEST(Channel, PskHandshakeSealsBothWaysWithForwardSecrecy) {
  Pair p(SecurityContext::psk(kToken, Role::kServer), SecurityContext::psk(kToken, Role::kClient));
  p.run();
  ASSERT_TRUE(p.client->open()) << p.client_error;
  ASSERT_TRUE(p.server->open()) << p.server_error;
  // TLS 1.3, the PSK used, and an (EC)DHE group negotiated: psk_dhe_ke.
  for (const auto* ch : {p.server.get(), p.client.get()}) {
    const std::string d = ch->describe();
    EXPECT_NE(d.find("TLSv1.3"), std::string::npos) << d;
    EXPECT_NE(d.find("psk"), std::string::npos) << d;
    EXPECT_NE(d.find("X25519"), std::string::npos) << d;
  }
  const std::string secret = "run --env PASSWORD=hunter2 -- ./work.sh";
  ASSERT_TRUE(p.client->seal(secret, &p.to_server).has_value());
  EXPECT_EQ(p.to_server.find("hunter2"), std::string::npos);  // sealed on the wire
  p.run();
  EXPECT_EQ(p.server_app, secret);
  ASSERT_TRUE(p.server->seal("ok", &p.to_client).has_value());
  p.run();
  EXPECT_EQ(p.client_app, "ok");
  EXPECT_EQ(p.server_wire.find("hunter2"), std::string::npos);
}

TEST(Channel, WrongTokenIsRefusedOnBothSidesAndNamed) {
  Pair p(SecurityContext::psk(kToken, Role::kServer),
         SecurityContext::psk("another-token-entirely-0000", Role::kClient));
  p.run();
  EXPECT_FALSE(p.server->open());
  EXPECT_FALSE(p.client->open());
  EXPECT_EQ(p.server_code, Errc::kUnauthenticated) << p.server_error;
  EXPECT_EQ(p.server_error, "wrong cluster token");
  EXPECT_FALSE(p.server->peer_proved());
  // The server's alert tells the client why.
  EXPECT_EQ(p.client_code, Errc::kUnauthenticated) << p.client_error;
  EXPECT_NE(p.client_error.find("wrong cluster token"), std::string::npos) << p.client_error;
}

TEST(Channel, NoApplicationByteBeforeTheClientFinished) {
  Pair p(SecurityContext::psk(kToken, Role::kServer), SecurityContext::psk(kToken, Role::kClient));
  // ClientHello to the server, ServerHello..Finished back to the client.
  std::string hello;
  hello.swap(p.to_server);
  EXPECT_FALSE(p.server->peer_proved());
  ASSERT_TRUE(p.server->feed(hello, &p.server_app, &p.to_client).has_value());
  EXPECT_FALSE(p.server->open());
  EXPECT_TRUE(p.server->peer_proved());  // the binder checked out; the Finished is to come
  std::string flight;
  flight.swap(p.to_client);
  ASSERT_TRUE(p.client->feed(flight, &p.client_app, &p.to_server).has_value());
  ASSERT_TRUE(p.client->open());
  // The client's Finished and a first sealed request travel together, as they do on TCP.
  ASSERT_TRUE(p.client->seal("first request", &p.to_server).has_value());
  std::string finished_and_request;
  finished_and_request.swap(p.to_server);
  // Everything but the last byte: the server must not be open nor hand anything over.
  ASSERT_TRUE(
      p.server
          ->feed(std::string_view(finished_and_request).substr(0, 10), &p.server_app, &p.to_client)
          .has_value());
  EXPECT_FALSE(p.server->open());
  EXPECT_TRUE(p.server_app.empty());
  ASSERT_TRUE(
      p.server->feed(std::string_view(finished_and_request).substr(10), &p.server_app, &p.to_client)
          .has_value());
  EXPECT_TRUE(p.server->open());
  EXPECT_EQ(p.server_app, "first request");
}

// A client sends its first requests right behind its Finished: a read may bring far more
// than the handshake bound, and none of it counts against the handshake.
TEST(Channel, BigFirstRequestsBehindTheFinishedAreNotHandshakeBytes) {
  Pair p(SecurityContext::psk(kToken, Role::kServer), SecurityContext::psk(kToken, Role::kClient));
  std::string hello;
  hello.swap(p.to_server);
  ASSERT_TRUE(p.server->feed(hello, &p.server_app, &p.to_client).has_value());
  std::string flight;
  flight.swap(p.to_client);
  ASSERT_TRUE(p.client->feed(flight, &p.client_app, &p.to_server).has_value());
  const std::string big(3 * kHandshakeBytesMax, 'r');
  ASSERT_TRUE(p.client->seal(big, &p.to_server).has_value());
  std::string all;
  all.swap(p.to_server);
  ASSERT_TRUE(p.server->feed(all, &p.server_app, &p.to_client).has_value());
  EXPECT_TRUE(p.server->open());
  EXPECT_EQ(p.server_app, big);
}

TEST(Channel, AnyFlippedByteOfASealedRecordEndsTheChannelAndDeliversNothing) {
  Pair ready(SecurityContext::psk(kToken, Role::kServer),
             SecurityContext::psk(kToken, Role::kClient));
  ready.run();
  ASSERT_TRUE(ready.server->open());
  std::string record;
  ASSERT_TRUE(ready.client->seal("list jobs", &record).has_value());
  for (size_t i = 0; i < record.size(); ++i) {
    // A fresh pair per position: a record is accepted at most once, in order.
    Pair p(SecurityContext::psk(kToken, Role::kServer),
           SecurityContext::psk(kToken, Role::kClient));
    p.run();
    ASSERT_TRUE(p.server->open());
    std::string r;
    ASSERT_TRUE(p.client->seal("list jobs", &r).has_value());
    ASSERT_EQ(r.size(), record.size());
    r[i] = static_cast<char>(r[i] ^ 0x01);
    std::string app, out;
    Status st = p.server->feed(r, &app, &out);
    if (st) {
      // A flipped length byte can make the record look longer: then it is incomplete,
      // and the bytes that follow are checked against the tag just the same.
      ASSERT_LT(i, 5u) << "byte " << i << " accepted";
      st = p.server->feed(std::string(18u << 10, 'x'), &app, &out);
    }
    EXPECT_FALSE(st.has_value()) << "byte " << i;
    EXPECT_TRUE(app.empty()) << "byte " << i;
    // And the channel stays failed.
    EXPECT_FALSE(p.server->feed("", &app, &out).has_value());
  }
}

TEST(Channel, AReplayedConnectionNeverOpensNorDeliversItsRequest) {
  Pair p(SecurityContext::psk(kToken, Role::kServer), SecurityContext::psk(kToken, Role::kClient));
  p.run();
  ASSERT_TRUE(p.server->open());
  ASSERT_TRUE(p.client->seal("submit job", &p.to_server).has_value());
  p.run();
  ASSERT_EQ(p.server_app, "submit job");
  // Every byte the first server saw, played to a new server: its fresh random and key
  // share make the recorded Finished wrong.
  auto replay = SecurityContext::psk(kToken, Role::kServer)->channel();
  std::string app, out;
  Status st = replay->feed(p.server_wire, &app, &out);
  EXPECT_FALSE(st.has_value());
  EXPECT_FALSE(replay->open());
  EXPECT_TRUE(app.empty());
}

TEST(Channel, StrangersAreNamedFromTheirFirstBytes) {
  auto server = SecurityContext::psk(kToken, Role::kServer);
  {
    auto ch = server->channel();
    std::string app, out;
    Status st = ch->feed("GET /metrics HTTP/1.1\r\n", &app, &out);
    ASSERT_FALSE(st.has_value());
    EXPECT_EQ(st.error().message, "not a TLS peer");
  }
  {
    // A plaintext (--insecure) client's PROOF starts "CNOD".
    auto ch = server->channel();
    std::string app, out;
    Status st = ch->feed("CNOD\x01", &app, &out);
    ASSERT_FALSE(st.has_value());
    EXPECT_NE(st.error().message.find("--insecure"), std::string::npos);
  }
  {
    // A TLS client meeting a plaintext server is told so, not left to time out.
    SecurityOptions o = psk(kToken);
    o.insecure = true;
    Pair p(make(o, Role::kServer), SecurityContext::psk(kToken, Role::kClient));
    p.run();
    EXPECT_NE(p.client_error.find("--insecure"), std::string::npos) << p.client_error;
    EXPECT_NE(p.server_error.find("--insecure"), std::string::npos) << p.server_error;
  }
}

TEST(Channel, AHandshakeIsBoundedInBytes) {
  {
    // A record header that claims a huge record, then filler.
    auto ch = SecurityContext::psk(kToken, Role::kServer)->channel();
    std::string app, out;
    std::string junk = "\x16\x03\x01\x7f\xff";
    junk += std::string(kHandshakeBytesMax, 'A');
    EXPECT_FALSE(ch->feed(junk, &app, &out).has_value());
    EXPECT_FALSE(ch->open());
  }
  {
    // A ClientHello header claiming 100 KiB: refused from its 9 header bytes, before
    // OpenSSL would size a buffer for it.
    auto ch = SecurityContext::psk(kToken, Role::kServer)->channel();
    std::string app, out;
    Status st = ch->feed(std::string("\x16\x03\x01\x40\x00\x01\x01\x90\x00", 9), &app, &out);
    ASSERT_FALSE(st.has_value());
    EXPECT_EQ(st.error().message, "not a cardnode ClientHello");
  }
  {
    // Well-formed ClientHello records that never end the handshake: cut at the bound.
    auto ch = SecurityContext::psk(kToken, Role::kServer)->channel();
    std::string app, out;
    std::string start = "\x16\x03\x01\x40\x00\x01\x00\x0f\x00";  // hello of 3,840 bytes
    Status st = ch->feed(start, &app, &out);
    ASSERT_TRUE(st.has_value());
    for (int i = 0; i < 64 && st; ++i) st = ch->feed(std::string(1024, '\0'), &app, &out);
    EXPECT_FALSE(st.has_value());
    EXPECT_FALSE(ch->open());
  }
}

// A reply that comes after the channel failed (a held request answered late) is refused,
// never a crash.
TEST(Channel, SealAfterAFailureIsRefused) {
  Pair p(SecurityContext::psk(kToken, Role::kServer), SecurityContext::psk(kToken, Role::kClient));
  p.run();
  ASSERT_TRUE(p.server->open());
  std::string app, out;
  EXPECT_FALSE(p.server->feed(std::string(64, '\x17'), &app, &out).has_value());
  std::string sealed;
  Status st = p.server->seal("late reply", &sealed);
  EXPECT_FALSE(st.has_value());
  EXPECT_TRUE(sealed.empty());
}

TEST(Channel, ASlowlorisHandshakeByteByByteStillWorksWhenItIsReal) {
  // The channel does not care how bytes are cut; the server's deadline bounds the time.
  Pair p(SecurityContext::psk(kToken, Role::kServer), SecurityContext::psk(kToken, Role::kClient));
  std::string hello;
  hello.swap(p.to_server);
  for (char ch : hello) {
    ASSERT_TRUE(p.server->feed(std::string_view(&ch, 1), &p.server_app, &p.to_client).has_value());
  }
  p.run();
  EXPECT_TRUE(p.server->open());
  EXPECT_TRUE(p.client->open());
}

TEST(Channel, ChaChaWhenEitherSideLacksAes) {
  // The server prefers AES; a client that lists ChaCha20 first (no AES instructions) gets it.
  Pair p(make(psk(kToken, "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256"), Role::kServer),
         make(psk(kToken, "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"), Role::kClient));
  p.run();
  ASSERT_TRUE(p.client->open()) << p.client_error;
  EXPECT_NE(p.client->describe().find("CHACHA20"), std::string::npos) << p.client->describe();
  // A server without AES prefers ChaCha20 over a client that has it.
  Pair q(make(psk(kToken, "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"), Role::kServer),
         make(psk(kToken, "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256"), Role::kClient));
  q.run();
  ASSERT_TRUE(q.server->open()) << q.server_error;
  EXPECT_NE(q.server->describe().find("CHACHA20"), std::string::npos) << q.server->describe();
  // Both with AES: AES-GCM.
  Pair r(make(psk(kToken, "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256"), Role::kServer),
         make(psk(kToken, "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256"), Role::kClient));
  r.run();
  ASSERT_TRUE(r.server->open()) << r.server_error;
  EXPECT_NE(r.server->describe().find("AES_128_GCM"), std::string::npos) << r.server->describe();
}

TEST(Channel, PlaintextModeIsTheTokenHandshakeThenClearBytes) {
  SecurityOptions o = psk(kToken);
  o.insecure = true;
  Pair p(make(o, Role::kServer), make(o, Role::kClient));
  p.run();
  ASSERT_TRUE(p.server->open()) << p.server_error;
  ASSERT_TRUE(p.client->open()) << p.client_error;
  ASSERT_TRUE(p.client->seal("clear", &p.to_server).has_value());
  EXPECT_EQ(p.to_server, "clear");
  p.run();
  EXPECT_EQ(p.server_app, "clear");
  SecurityOptions wrong = o;
  wrong.token = "not-the-cluster-token-0000";
  Pair w(make(o, Role::kServer), make(wrong, Role::kClient));
  w.run();
  EXPECT_EQ(w.server_code, Errc::kUnauthenticated);
  EXPECT_EQ(w.client_code, Errc::kUnauthenticated);
}

class CertChannel : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/cardnode-certs-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    pki_ = testing::make_pki(dir_, {"server", "board-1"});
    std::filesystem::create_directory(dir_ + "/other");
    other_ = testing::make_pki(dir_ + "/other", {"intruder"}, "someone else's CA");
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  SecurityOptions opts(const testing::Pki& pki, const std::string& name, const std::string& ca) {
    SecurityOptions o;
    o.cert_file = pki.cert(name);
    o.key_file = pki.key(name);
    o.ca_file = ca;
    return o;
  }
  std::string dir_;
  testing::Pki pki_, other_;
};

TEST_F(CertChannel, MembersOfTheCaTalkOthersAreRefused) {
  Pair ok(make(opts(pki_, "server", pki_.ca), Role::kServer),
          make(opts(pki_, "board-1", pki_.ca), Role::kClient));
  ok.run();
  ASSERT_TRUE(ok.server->open()) << ok.server_error;
  ASSERT_TRUE(ok.client->open()) << ok.client_error;
  EXPECT_NE(ok.client->describe().find("certificate"), std::string::npos);
  EXPECT_EQ(make(opts(pki_, "server", pki_.ca), Role::kServer)->transport(),
            Transport::kTlsCertificate);

  // A client with a certificate from another CA: the server refuses it.
  Pair intruder(make(opts(pki_, "server", pki_.ca), Role::kServer),
                make(opts(other_, "intruder", pki_.ca), Role::kClient));
  intruder.run();
  EXPECT_FALSE(intruder.server->open());
  EXPECT_EQ(intruder.server_code, Errc::kUnauthenticated) << intruder.server_error;

  // A server with a certificate from another CA: the client refuses it.
  Pair fake_server(make(opts(other_, "intruder", other_.ca), Role::kServer),
                   make(opts(pki_, "board-1", pki_.ca), Role::kClient));
  fake_server.run();
  EXPECT_FALSE(fake_server.client->open());
  EXPECT_EQ(fake_server.client_code, Errc::kUnauthenticated) << fake_server.client_error;

  // A PSK client cannot talk to a certificate server (nor prove anything to it).
  Pair mixed(make(opts(pki_, "server", pki_.ca), Role::kServer),
             SecurityContext::psk(kToken, Role::kClient));
  mixed.run();
  EXPECT_FALSE(mixed.server->open());
  EXPECT_FALSE(mixed.client->open());
}

TEST_F(CertChannel, ConfigurationErrorsAreOneLine) {
  SecurityOptions o = opts(pki_, "server", pki_.ca);
  o.ca_file.clear();
  auto r = SecurityContext::create(o, Role::kServer);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("--tls-ca"), std::string::npos);
  o = opts(pki_, "server", pki_.ca);
  o.key_file = pki_.key("board-1");  // not this certificate's key
  r = SecurityContext::create(o, Role::kServer);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("--tls-key"), std::string::npos) << r.error().message;
  o = opts(pki_, "server", dir_ + "/missing.pem");
  r = SecurityContext::create(o, Role::kServer);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, Errc::kInvalidArgument);
  EXPECT_NE(r.error().describe().find("--tls-ca " + dir_ + "/missing.pem: No such file"),
            std::string::npos)
      << r.error().describe();
  EXPECT_FALSE(SecurityContext::create(SecurityOptions{}, Role::kClient).has_value());
}

}  // namespace
}  // namespace cardnode::net
