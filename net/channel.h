// clang-format off
// Channel: what travels between two cardnode processes once TCP is up, as bytes in and
// bytes out (sans-I/O: net/rpc_server.cc, net/rpc_client.cc and net/client.cc move the
// bytes; this file never touches a socket). Three transports, one per process, chosen
// by SecurityOptions and the same for every connection of that process:
//
//   kTlsPsk (default)  TLS 1.3, the cluster token as the external PSK, key exchange
//                      psk_dhe_ke (X25519: forward secrecy). The peer proves it holds the
//                      token in the handshake (the PSK binder, then Finished) before one
//                      application byte is decrypted; every byte after that is sealed
//                      (AEAD: encrypted, authenticated, in order, not replayable).
//   kTlsCertificate    TLS 1.3 with certificates both ways, each checked against --tls-ca
//                      (the CA is the cluster: any certificate it signed is a member; no
//                      host names are checked). The token is not used.
//   kPlaintext         --insecure on both sides: the HMAC token handshake of
//                      net/handshake.h, then frames in the clear. Authenticates the peer,
//                      protects nothing after that. For benchmarks and closed networks.
//
// Ciphers (TLS): AES-128-GCM and ChaCha20-Poly1305, both SHA-256 (the PSK's hash). A
// process on a CPU without AES instructions (a Pi 4's Cortex-A72, any armhf board) lists
// ChaCha20 first, and the server honours a client's ChaCha20 preference
// (SSL_OP_PRIORITIZE_CHACHA), so whichever side lacks AES gets ChaCha20.
//
// Bounds: a handshake may take at most kHandshakeBytesMaxServer (server) or
// kHandshakeBytesMax (client) from the peer, and a server takes a ClientHello of at most
// 4 KiB (ours is ~250 bytes), checked from its header before OpenSSL allocates for it;
// certificate chains are capped at 32 KiB. Application bytes are decrypted as they come,
// so a feed() yields at most what it was given plus one partial record (16 KiB) left in
// OpenSSL. An unauthenticated connection holds about 40 KiB at most.
//
// Threading: a SecurityContext is immutable once made and may be shared by every
// connection and thread; a Channel belongs to one connection on one thread.
// clang-format on
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "proto/error.h"

namespace cardnode::net {

enum class Transport : uint8_t { kTlsPsk, kTlsCertificate, kPlaintext };
// "tls-psk", "tls-cert", "plaintext": as `nodes` and the metrics show it.
const char* transport_name(Transport t);

// Bytes a handshake may take from the peer before it is done. A server's side is small (a
// ClientHello, a Finished, in certificate mode a client's certificate chain); a client's
// must hold a server's certificate chain.
inline constexpr uint32_t kHandshakeBytesMax = 64u << 10;
inline constexpr uint32_t kHandshakeBytesMaxServer = 16u << 10;
// What sealing adds to a frame at most, for bounds that must hold one whole frame: 22 bytes
// (header and AEAD tag) per record of up to 16 KiB of a 4 MiB frame, rounded up.
inline constexpr uint32_t kSealSlackBytes = 8u << 10;

struct SecurityOptions {
  std::string token;  // the cluster token: the TLS PSK (and the HMAC key when insecure)
  // All three: certificate mode (PEM files). Any one without the others is an error.
  std::string cert_file;
  std::string key_file;
  std::string ca_file;
  bool insecure = false;  // plaintext frames after the HMAC handshake (--insecure)
  // TLS 1.3 suites in OpenSSL's spelling; empty: by the CPU, as above. Benchmarks set it.
  std::string ciphersuites;
};

// One connection's transport. The first bytes to send come from start(); then feed()
// takes what the peer sent and says what to send back and what the application gets.
class Channel {
 public:
  virtual ~Channel() = default;
  // Bytes to send as soon as the connection is up (a TLS client's ClientHello, a
  // plaintext server's HELLO); appended to *out.
  [[nodiscard]] virtual Status start(std::string* out) = 0;
  // Bytes from the peer. Appends the application bytes they carried to *app (only once
  // open()) and bytes owed to the peer (handshake messages, an alert) to *out. An error
  // ends the channel; *out may still hold an alert to send before closing. Errors:
  // kUnauthenticated (wrong token, certificate not from the CA), kUnavailable (not a
  // cardnode peer, transport mismatch, a record that fails its check, the peer closed).
  [[nodiscard]] virtual Status feed(std::string_view in, std::string* app, std::string* out) = 0;
  // Seals application bytes (only once open()); appends the record(s) to *out.
  [[nodiscard]] virtual Status seal(std::string_view app, std::string* out) = 0;
  // The handshake is over and the peer proved itself: application bytes may flow.
  virtual bool open() const = 0;
  // The peer has proved it holds the token, perhaps before the handshake is over: a TLS
  // server once the client's PSK binder checked out (the client's Finished is still to
  // come). A server takes such a connection out of the strangers' budget at once. Else
  // the same as open().
  virtual bool peer_proved() const { return open(); }
  // After open(): e.g. "TLSv1.3 TLS_CHACHA20_POLY1305_SHA256 X25519 psk".
  virtual std::string describe() const = 0;
};

// A connection over a Unix socket on this board (the server's DATA_DIR/api.sock): open
// from the start, bytes as they are. Nothing on the path but the kernel, and the peer was
// named by the kernel (SO_PEERCRED) before the first byte, so there is nothing to seal or
// prove: no token, no TLS set-up or handshake for a CLI call on the server's own board.
std::unique_ptr<Channel> local_channel();

class SecurityContext : public std::enable_shared_from_this<SecurityContext> {
 public:
  enum class Role : uint8_t { kServer, kClient };
  // Loads the certificates (certificate mode) or derives the PSK from the token. Errors
  // (kInvalidArgument): a missing or unreadable file, a key that does not match its
  // certificate, a cert/key/ca given without the others, an empty token.
  [[nodiscard]] static Result<std::shared_ptr<const SecurityContext>> create(
      const SecurityOptions& options, Role role);
  // The flags alone, before a token is looked for: a cert/key/ca given without the
  // others, or with --insecure (kInvalidArgument).
  [[nodiscard]] static Status check_flags(const SecurityOptions& options);
  // The default transport for a token: TLS-PSK. For tests and callers that checked
  // load_openssl() (net/openssl.h): where OpenSSL cannot be loaded it stops the process;
  // create() returns that as an error. A non-empty token never fails otherwise.
  static std::shared_ptr<const SecurityContext> psk(const std::string& token, Role role);
  ~SecurityContext();
  SecurityContext(const SecurityContext&) = delete;
  SecurityContext& operator=(const SecurityContext&) = delete;

  // A new connection's channel; it keeps this context alive.
  std::unique_ptr<Channel> channel() const;
  Transport transport() const { return transport_; }
  Role role() const { return role_; }

  struct Impl;

 private:
  SecurityContext(Transport t, Role r, std::unique_ptr<Impl> impl);
  Transport transport_;
  Role role_;
  std::unique_ptr<Impl> impl_;
};

// True when this CPU has AES instructions that OpenSSL uses (x86 AES-NI, ARMv8 crypto
// extensions); decides the cipher order above.
bool cpu_has_aes();

}  // namespace cardnode::net
