#include "net/handshake.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace cardnode::net {
namespace {

const std::string kToken = "0123456789abcdef0123456789abcdef";

struct Outcome {
  bool server_accepted = false;
  bool server_bad_protocol = false;
  Status client;
};

Outcome run(const std::string& server_token, const std::string& client_token) {
  ServerHandshake server(server_token);
  ClientHandshake client(client_token);
  const std::string hello = server.hello();
  EXPECT_EQ(hello.size(), kHelloBytes);
  Result<std::string> proof = client.proof(hello);
  EXPECT_TRUE(proof.has_value());
  EXPECT_EQ(proof->size(), kProofBytes);
  Outcome out;
  const std::string verdict = server.verdict(*proof, &out.server_accepted);
  EXPECT_EQ(verdict.size(), kVerdictBytes);
  out.server_bad_protocol = server.bad_protocol();
  out.client = client.check_verdict(verdict);
  return out;
}

TEST(Handshake, SameTokenIsAcceptedBothWays) {
  Outcome o = run(kToken, kToken);
  EXPECT_TRUE(o.server_accepted);
  EXPECT_TRUE(o.client.has_value());
}

TEST(Handshake, WrongTokenIsRejected) {
  Outcome o = run(kToken, kToken + "x");
  EXPECT_FALSE(o.server_accepted);
  EXPECT_FALSE(o.server_bad_protocol);
  ASSERT_FALSE(o.client.has_value());
  EXPECT_EQ(o.client.error().code, Errc::kUnauthenticated);
  EXPECT_EQ(o.client.error().message, "authentication failed: wrong cluster token");
}

TEST(Handshake, LayoutMatchesHeader) {
  ServerHandshake server(kToken);
  ClientHandshake client(kToken);
  const std::string hello = server.hello();
  EXPECT_EQ(hello.substr(0, 4), "CNOD");
  EXPECT_EQ(static_cast<uint8_t>(hello[4]), kProtocolVersion);
  const std::string proof = *client.proof(hello);
  EXPECT_EQ(proof.substr(0, 5), hello.substr(0, 5));
  bool accepted = false;
  EXPECT_EQ(server.verdict(proof, &accepted).substr(0, 2), "OK");
  ServerHandshake other(kToken + "?");
  other.hello();
  const std::string reject = other.verdict(proof, &accepted);
  EXPECT_FALSE(accepted);
  EXPECT_EQ(reject, "NO" + std::string(kMacBytes, '\0'));
}

TEST(Handshake, EveryTamperedProofByteIsRejected) {
  for (uint32_t i = 0; i < kProofBytes; ++i) {
    ServerHandshake server(kToken);
    ClientHandshake client(kToken);
    std::string proof = *client.proof(server.hello());
    proof[i] = static_cast<char>(proof[i] ^ 0x01);
    bool accepted = true;
    const std::string verdict = server.verdict(proof, &accepted);
    EXPECT_FALSE(accepted) << "byte " << i;
    // Bytes 0..4 are magic and version: a protocol error, not a wrong token.
    EXPECT_EQ(server.bad_protocol(), i < 5) << "byte " << i;
    EXPECT_FALSE(client.check_verdict(verdict).has_value());
  }
}

TEST(Handshake, ShortProofIsAProtocolError) {
  ServerHandshake server(kToken);
  ClientHandshake client(kToken);
  const std::string proof = *client.proof(server.hello());
  bool accepted = true;
  server.verdict(proof.substr(0, kProofBytes - 1), &accepted);
  EXPECT_FALSE(accepted);
  EXPECT_TRUE(server.bad_protocol());
}

TEST(Handshake, ClientChecksTheServerMac) {
  ServerHandshake server(kToken);
  ClientHandshake client(kToken);
  const std::string proof = *client.proof(server.hello());
  bool accepted = false;
  std::string verdict = server.verdict(proof, &accepted);
  ASSERT_TRUE(accepted);
  verdict[10] = static_cast<char>(verdict[10] ^ 0x80);
  Status st = client.check_verdict(verdict);
  ASSERT_FALSE(st.has_value());
  EXPECT_EQ(st.error().code, Errc::kUnauthenticated);
  EXPECT_EQ(st.error().message, "authentication failed: server failed to prove the token");

  // "OK" from a server that does not know the token (all-zero MAC) is not accepted either.
  EXPECT_FALSE(client.check_verdict("OK" + std::string(kMacBytes, '\0')).has_value());
}

TEST(Handshake, ServerMacFromAnotherSessionIsRefused) {
  ServerHandshake server1(kToken);
  ClientHandshake client1(kToken);
  bool accepted = false;
  const std::string verdict1 = server1.verdict(*client1.proof(server1.hello()), &accepted);
  ASSERT_TRUE(accepted);
  ServerHandshake server2(kToken);
  ClientHandshake client2(kToken);
  ASSERT_TRUE(client2.proof(server2.hello()).has_value());
  EXPECT_FALSE(client2.check_verdict(verdict1).has_value());  // replay
}

TEST(Handshake, BadHelloMagicOrVersionFails) {
  ServerHandshake server(kToken);
  std::string hello = server.hello();
  ClientHandshake client(kToken);
  std::string bad_magic = hello;
  bad_magic[0] = 'X';
  Result<std::string> p = client.proof(bad_magic);
  ASSERT_FALSE(p.has_value());
  EXPECT_EQ(p.error().code, Errc::kUnavailable);
  std::string bad_version = hello;
  bad_version[4] = static_cast<char>(kProtocolVersion + 1);
  EXPECT_FALSE(client.proof(bad_version).has_value());
  EXPECT_FALSE(client.proof(hello.substr(1)).has_value());
}

TEST(Handshake, NoncesDifferBetweenRuns) {
  ServerHandshake a(kToken);
  ServerHandshake b(kToken);
  const std::string ha = a.hello();
  const std::string hb = b.hello();
  EXPECT_NE(ha.substr(5), hb.substr(5));
  ClientHandshake ca(kToken);
  ClientHandshake cb(kToken);
  EXPECT_NE(ca.proof(ha)->substr(5, kNonceBytes), cb.proof(ha)->substr(5, kNonceBytes));
}

class TokenFile : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* tmp = std::getenv("TMPDIR");
    std::string templ = std::string(tmp != nullptr ? tmp : "/tmp") + "/handshake_test.XXXXXX";
    ASSERT_NE(::mkdtemp(templ.data()), nullptr);
    dir_ = templ;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string write(const std::string& name, const std::string& contents, mode_t mode) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path) << contents;
    EXPECT_EQ(::chmod(path.c_str(), mode), 0);
    return path;
  }

  std::string dir_;
};

TEST_F(TokenFile, LoadTrimsTrailingWhitespace) {
  const std::string path = write("token", kToken + " \n\n", 0600);
  Result<std::string> t = load_token(path);
  ASSERT_TRUE(t.has_value()) << t.error().describe();
  EXPECT_EQ(*t, kToken);
}

TEST_F(TokenFile, LoadRefusesFileReadableByOthers) {
  const std::string path = write("token", kToken, 0644);
  Result<std::string> t = load_token(path);
  ASSERT_FALSE(t.has_value());
  EXPECT_EQ(t.error().message,
            "token file " + path + " is readable by others (mode 0644); chmod 600 " + path);
  const std::string group = write("token2", kToken, 0640);
  EXPECT_FALSE(load_token(group).has_value());
}

TEST_F(TokenFile, LoadRefusesShortToken) {
  const std::string path = write("token", std::string(kTokenBytesMin - 1, 'a') + "\n", 0600);
  EXPECT_FALSE(load_token(path).has_value());
  const std::string ok = write("token2", std::string(kTokenBytesMin, 'a') + "\n", 0600);
  EXPECT_TRUE(load_token(ok).has_value());
}

TEST_F(TokenFile, LoadMissingIsNotFound) {
  Result<std::string> t = load_token(dir_ + "/absent");
  ASSERT_FALSE(t.has_value());
  EXPECT_EQ(t.error().code, Errc::kNotFound);
}

TEST_F(TokenFile, CreateMakesA0600FileAndKeepsIt) {
  const std::string path = dir_ + "/token";
  Result<std::string> first = create_token_if_missing(path);
  ASSERT_TRUE(first.has_value()) << first.error().describe();
  EXPECT_EQ(first->size(), 64u);
  EXPECT_EQ(first->find_first_not_of("0123456789abcdef"), std::string::npos);
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(st.st_size, 65);  // 64 hex chars and a newline

  Result<std::string> second = create_token_if_missing(path);
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(*second, *first);
  EXPECT_EQ(*load_token(path), *first);

  Result<std::string> other = create_token_if_missing(dir_ + "/token-b");
  ASSERT_TRUE(other.has_value());
  EXPECT_NE(*other, *first);
}

TEST_F(TokenFile, CreateLoadsAnExistingTokenAndChecksIt) {
  const std::string path = write("token", kToken + "\n", 0600);
  EXPECT_EQ(*create_token_if_missing(path), kToken);
  ASSERT_EQ(::chmod(path.c_str(), 0604), 0);
  EXPECT_FALSE(create_token_if_missing(path).has_value());
}

// RFC 4231 test cases 1, 2 and 6 (a key longer than the 64-byte block).
std::string hex(const std::array<uint8_t, kMacBytes>& mac) {
  static const char* d = "0123456789abcdef";
  std::string out;
  for (uint8_t b : mac) {
    out.push_back(d[b >> 4]);
    out.push_back(d[b & 15]);
  }
  return out;
}

TEST(HmacSha256, Rfc4231Vectors) {
  EXPECT_EQ(hex(hmac_sha256(std::string(20, '\x0b'), "Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  EXPECT_EQ(hex(hmac_sha256("Jefe", "what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  EXPECT_EQ(hex(hmac_sha256(std::string(131, '\xaa'),
                            "Test Using Larger Than Block-Size Key - Hash Key First")),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
}

}  // namespace
}  // namespace cardnode::net
