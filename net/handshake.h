// clang-format off
// Token handshake: both sides prove they hold the cluster token before a single frame
// is parsed (guarantee 3). Fixed-size raw messages, no protobuf, no length prefix:
//
//   server -> client  HELLO  := "CNOD" | version (1 byte) | server_nonce (32 bytes)
//   client -> server  PROOF  := "CNOD" | version (1 byte) | client_nonce (32 bytes)
//                               | HMAC-SHA256(token, "cardnode-client" | server_nonce | client_nonce)
//   server -> client  ACCEPT := "OK" | HMAC-SHA256(token, "cardnode-server" | client_nonce | server_nonce)
//                or  REJECT := "NO" | 32 zero bytes, then the server closes
//
// The client checks ACCEPT's MAC too, so a client never talks to a server that does not
// hold the token. MACs are compared in constant time (CRYPTO_memcmp). Nonces come from
// getrandom(2). Sans-I/O: these classes take and produce bytes; net/rpc_server.cc and
// net/client.cc move them. No shared state; one object per connection.
// clang-format on
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "proto/error.h"

namespace cardnode::net {

inline constexpr uint8_t kProtocolVersion = 1;
inline constexpr uint32_t kNonceBytes = 32;
inline constexpr uint32_t kMacBytes = 32;
inline constexpr uint32_t kHelloBytes = 4 + 1 + kNonceBytes;              // 37
inline constexpr uint32_t kProofBytes = 4 + 1 + kNonceBytes + kMacBytes;  // 69
inline constexpr uint32_t kVerdictBytes = 2 + kMacBytes;                  // 34
inline constexpr uint32_t kTokenBytesMin = 16;

// Loads a token file: its contents with trailing whitespace removed. Fails if missing,
// unreadable, shorter than kTokenBytesMin, or readable by group/other (mode & 077).
[[nodiscard]] Result<std::string> load_token(const std::string& path);
// Creates a new random token (64 hex chars) in `path` with mode 0600, unless it exists.
[[nodiscard]] Result<std::string> create_token_if_missing(const std::string& path);

// HMAC-SHA256 (RFC 2104) of message under key; exposed for its test vectors.
std::array<uint8_t, kMacBytes> hmac_sha256(std::string_view key, std::string_view message);

class ServerHandshake {
 public:
  explicit ServerHandshake(std::string token);
  // The HELLO to send first.
  std::string hello();
  // Given the client's PROOF (exactly kProofBytes), returns the verdict bytes to send.
  // *accepted tells whether to keep the connection; on REJECT send the bytes and close.
  std::string verdict(std::string_view proof, bool* accepted);
  // After a REJECT: true when the PROOF was malformed (size, magic, version) rather
  // than carrying a wrong MAC — the server counts the two apart.
  bool bad_protocol() const { return bad_protocol_; }

 private:
  std::string token_;
  std::array<uint8_t, kNonceBytes> server_nonce_{};
  bool hello_sent_ = false;
  bool bad_protocol_ = false;
};

class ClientHandshake {
 public:
  explicit ClientHandshake(std::string token);
  // Given HELLO (exactly kHelloBytes), the PROOF to send. Fails (kUnavailable) on a bad
  // magic/version: the peer is not a cardnode server we can talk to.
  [[nodiscard]] Result<std::string> proof(std::string_view hello);
  // Given the verdict (exactly kVerdictBytes): ok, or kUnauthenticated ("wrong cluster
  // token" on REJECT, "server failed to prove the token" on a bad MAC).
  [[nodiscard]] Status check_verdict(std::string_view verdict) const;

 private:
  std::string token_;
  std::array<uint8_t, kNonceBytes> server_nonce_{};
  std::array<uint8_t, kNonceBytes> client_nonce_{};
  bool proof_sent_ = false;
};

}  // namespace cardnode::net
