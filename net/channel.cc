#include "net/channel.h"

#include <sys/auxv.h>
#include <unistd.h>

#include <array>
#include <cstring>

#include "net/handshake.h"
#include "net/openssl_calls.h"  // last of the OpenSSL headers: every call goes through it

#if defined(__aarch64__) || defined(__arm__)
#include <asm/hwcap.h>
#elif defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace cardnode::net {

const char* transport_name(Transport t) {
  switch (t) {
    case Transport::kTlsPsk: return "tls-psk";
    case Transport::kTlsCertificate: return "tls-cert";
    case Transport::kPlaintext: return "plaintext";
  }
  return "unknown";
}

bool cpu_has_aes() {
#if defined(__aarch64__)
  return (getauxval(AT_HWCAP) & HWCAP_AES) != 0;
#elif defined(__arm__)
  return (getauxval(AT_HWCAP2) & HWCAP2_AES) != 0;
#elif defined(__x86_64__) || defined(__i386__)
  // CPUID leaf 1, asked only when a security context is made (a CLI call over the local
  // socket makes none): __builtin_cpu_supports would link libgcc's start-up probe, which
  // runs CPUID several times (each a trap in a VM), into every process start.
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_AES) != 0;
#else
  return false;
#endif
}

namespace {

// The PSK identity both sides name. Versioned: a later key derivation gets a new one.
constexpr std::string_view kPskIdentity = "cardnode-psk-v1";
constexpr std::string_view kPskLabel = "cardnode tls13 external psk v1";
// TLS_AES_128_GCM_SHA256: the PSK session's suite only fixes its hash (SHA-256); the
// connection may still negotiate ChaCha20-Poly1305, which has the same hash.
constexpr std::array<unsigned char, 2> kPskSuite = {0x13, 0x01};
constexpr size_t kSealChunkBytes = 16u << 10;  // one TLS record's plaintext at most
constexpr uint64_t kBioKeepBytes = 4u << 10;   // a memory BIO is renewed past this

struct SslError {
  int reason = 0;  // an SSL_R_* value when the error came from libssl, else 0
  std::string text;
};

// What went wrong, from OpenSSL's error queue, which this empties: the first libssl error
// if there is one (a libcrypto error queued before it must not hide it), else the first.
SslError take_ssl_error() {
  SslError out;
  unsigned long first = 0, first_ssl = 0;
  for (int i = 0; i < 32; ++i) {  // bounded: the queue holds at most 16
    const unsigned long e = ERR_get_error();
    if (e == 0) break;
    if (first == 0) first = e;
    if (first_ssl == 0 && ERR_GET_LIB(e) == ERR_LIB_SSL) first_ssl = e;
  }
  ERR_clear_error();
  const unsigned long e = first_ssl != 0 ? first_ssl : first;
  if (e == 0) {
    out.text = "unknown TLS error";
    return out;
  }
  if (first_ssl != 0) out.reason = ERR_GET_REASON(e);
  const char* reason = ERR_reason_error_string(e);
  out.text = reason != nullptr ? reason : "TLS error " + std::to_string(ERR_GET_REASON(e));
  return out;
}

std::string openssl_error() {
  return take_ssl_error().text;
}

// Alerts with which a TLS 1.3 server refuses a client's certificate.
bool certificate_refused(int reason) {
  return reason == SSL_R_TLSV1_ALERT_UNKNOWN_CA || reason == SSL_R_SSLV3_ALERT_BAD_CERTIFICATE ||
         reason == SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED ||
         reason == SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN;
}

// The largest ClientHello a server takes: ours is ~250 bytes (one PSK identity, one key
// share). Checked from the record's handshake header, before OpenSSL sizes a buffer by
// the length a stranger claims (up to 128 KiB).
constexpr uint32_t kClientHelloBytesMax = 4096;

struct CtxDeleter {
  void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
};

}  // namespace

struct SecurityContext::Impl {
  std::unique_ptr<SSL_CTX, CtxDeleter> ctx;  // null for kPlaintext
  std::array<unsigned char, SHA256_DIGEST_LENGTH> psk{};
  std::string token;  // kPlaintext: the HMAC key
};

namespace {

SSL_SESSION* psk_session(SSL* ssl, const SecurityContext::Impl& impl) {
  const SSL_CIPHER* cipher = SSL_CIPHER_find(ssl, kPskSuite.data());
  if (cipher == nullptr) return nullptr;
  SSL_SESSION* s = SSL_SESSION_new();
  if (s == nullptr) return nullptr;
  if (SSL_SESSION_set1_master_key(s, impl.psk.data(), impl.psk.size()) != 1 ||
      SSL_SESSION_set_cipher(s, cipher) != 1 ||
      SSL_SESSION_set_protocol_version(s, TLS1_3_VERSION) != 1) {
    SSL_SESSION_free(s);
    return nullptr;
  }
  return s;
}

const SecurityContext::Impl& impl_of(SSL* ssl) {
  return *static_cast<const SecurityContext::Impl*>(SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)));
}

// Client: offer the PSK in the ClientHello (OpenSSL then sends psk_dhe_ke only, as
// SSL_OP_ALLOW_NO_DHE_KEX is off).
int use_psk(SSL* ssl, const EVP_MD* md, const unsigned char** id, size_t* idlen,
            SSL_SESSION** sess) {
  *sess = nullptr;
  *id = nullptr;
  *idlen = 0;
  SSL_SESSION* s = psk_session(ssl, impl_of(ssl));
  if (s == nullptr) return 0;
  // After a HelloRetryRequest the hash is fixed; ours is SHA-256 for every suite we offer.
  if (md != nullptr && md != SSL_CIPHER_get_handshake_digest(SSL_SESSION_get0_cipher(s))) {
    SSL_SESSION_free(s);
    return 1;
  }
  *sess = s;
  *id = reinterpret_cast<const unsigned char*>(kPskIdentity.data());
  *idlen = kPskIdentity.size();
  return 1;
}

// Server: the PSK for our identity; the binder check that follows proves the token.
int find_psk(SSL* ssl, const unsigned char* id, size_t idlen, SSL_SESSION** sess) {
  *sess = nullptr;
  if (idlen != kPskIdentity.size() || std::memcmp(id, kPskIdentity.data(), idlen) != 0) {
    return 0;  // not a cardnode peer: fail the handshake
  }
  *sess = psk_session(ssl, impl_of(ssl));
  return *sess != nullptr ? 1 : 0;
}

Result<std::unique_ptr<SSL_CTX, CtxDeleter>> make_ctx(const SecurityOptions& o, bool server,
                                                      bool certificates) {
  std::unique_ptr<SSL_CTX, CtxDeleter> ctx(
      SSL_CTX_new(server ? TLS_server_method() : TLS_client_method()));
  if (!ctx) return fail(Errc::kInternal, "TLS: " + openssl_error());
  SSL_CTX* c = ctx.get();
  SSL_CTX_set_min_proto_version(c, TLS1_3_VERSION);
  SSL_CTX_set_max_proto_version(c, TLS1_3_VERSION);
  // No tickets and no session cache: every connection is a full handshake with a fresh
  // X25519 exchange, and no state outlives a connection.
  SSL_CTX_set_num_tickets(c, 0);
  SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_options(
      c, SSL_OP_NO_TICKET | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_PRIORITIZE_CHACHA);
  // The dummy ChangeCipherSpec records only help middleboxes; we have none to please.
  SSL_CTX_clear_options(c, SSL_OP_ENABLE_MIDDLEBOX_COMPAT);
  // An idle connection (an agent's long poll) frees its 16 KiB record buffers.
  SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS);
  const std::string suites = !o.ciphersuites.empty() ? o.ciphersuites
                             : cpu_has_aes()
                                 ? "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256"
                                 : "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256";
  if (SSL_CTX_set_ciphersuites(c, suites.c_str()) != 1) {
    ERR_clear_error();
    return fail(Errc::kInvalidArgument, "TLS: no usable cipher suite in '" + suites + "'");
  }
  if (!certificates) {
    if (server) {
      SSL_CTX_set_psk_find_session_callback(c, find_psk);
    } else {
      SSL_CTX_set_psk_use_session_callback(c, use_psk);
    }
    // A server that answers with a certificate instead of the PSK has not proved the
    // token: with no trusted CA, any certificate fails verification. (A server without
    // a certificate has nothing to fall back to: no PSK, no handshake.)
    if (!server) SSL_CTX_set_verify(c, SSL_VERIFY_PEER, nullptr);
    return ctx;
  }
  // OpenSSL says only "system lib" for a file it cannot open: name the reason first.
  for (const auto& [flag, path] :
       {std::pair{"--tls-cert", &o.cert_file}, std::pair{"--tls-key", &o.key_file},
        std::pair{"--tls-ca", &o.ca_file}}) {
    if (::access(path->c_str(), R_OK) != 0) {
      return fail(Errc::kInvalidArgument, std::string(flag) + " " + *path, errno);
    }
  }
  if (SSL_CTX_use_certificate_chain_file(c, o.cert_file.c_str()) != 1) {
    return fail(Errc::kInvalidArgument, "--tls-cert " + o.cert_file + ": " + openssl_error());
  }
  if (SSL_CTX_use_PrivateKey_file(c, o.key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
    return fail(Errc::kInvalidArgument, "--tls-key " + o.key_file + ": " + openssl_error());
  }
  if (SSL_CTX_check_private_key(c) != 1) {
    return fail(Errc::kInvalidArgument,
                "--tls-key " + o.key_file + " does not match --tls-cert " + o.cert_file);
  }
  // A peer's certificate chain, bounded below OpenSSL's 100 KiB default: a stranger's
  // claimed length must not size a big buffer.
  SSL_CTX_set_max_cert_list(c, 32u << 10);
  if (SSL_CTX_load_verify_locations(c, o.ca_file.c_str(), nullptr) != 1) {
    return fail(Errc::kInvalidArgument, "--tls-ca " + o.ca_file + ": " + openssl_error());
  }
  // Both ways: a server accepts only clients whose certificate the CA signed.
  SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  return ctx;
}

// ---------------------------------------------------------------------------------------
// TLS over two memory BIOs.

class TlsChannel final : public Channel {
 public:
  TlsChannel(std::shared_ptr<const SecurityContext> owner, SSL_CTX* ctx, bool server,
             Transport transport)
      : owner_(std::move(owner)), ssl_(SSL_new(ctx)), server_(server), transport_(transport) {
    CARDNODE_CHECK(ssl_ != nullptr);
    BIO* in = fresh_bio();
    BIO* out = fresh_bio();
    SSL_set_bio(ssl_, in, out);  // ssl_ owns both now
    in_ = in;
    out_ = out;
    if (server_) {
      SSL_set_accept_state(ssl_);
    } else {
      SSL_set_connect_state(ssl_);
    }
  }
  ~TlsChannel() override { SSL_free(ssl_); }
  TlsChannel(const TlsChannel&) = delete;
  TlsChannel& operator=(const TlsChannel&) = delete;

  Status start(std::string* out) override {
    if (server_) return {};
    return drive(nullptr, out);  // the ClientHello
  }

  Status feed(std::string_view in, std::string* app, std::string* out) override {
    if (failed_) return fail(Errc::kUnavailable, "connection already failed");
    if (!open_) {
      handshake_bytes_ += in.size();
      if (Status st = check_first_bytes(in); !st) return failed(st);
    }
    const uint32_t bound = server_ ? kHandshakeBytesMaxServer : kHandshakeBytesMax;
    if (!in.empty() &&
        BIO_write(in_, in.data(), static_cast<int>(in.size())) != static_cast<int>(in.size())) {
      return failed(fail(Errc::kInternal, "TLS: out of memory"));
    }
    in_bytes_ += in.size();
    Status st = drive(app, out);
    if (in_bytes_ > kBioKeepBytes && BIO_ctrl_pending(in_) == 0) {
      in_ = fresh_bio();
      SSL_set0_rbio(ssl_, in_);  // frees the old one and the capacity it grew to
      in_bytes_ = 0;
    }
    // Counted after the bytes were taken: the read that brings the client's Finished may
    // bring its first requests too, which are no part of the handshake. A handshake still
    // unfinished past the bound holds at most the bound plus one read.
    if (st && !open_ && handshake_bytes_ > bound) {
      return failed(fail(Errc::kUnavailable,
                         "TLS handshake larger than " + std::to_string(bound >> 10) + " KiB"));
    }
    return st;
  }

  Status seal(std::string_view app, std::string* out) override {
    // A reply may still be on its way when the connection failed: refuse, never abort.
    if (failed_) return fail(Errc::kUnavailable, "connection already failed");
    CARDNODE_CHECK(open_);
    while (!app.empty()) {  // bounded: each pass takes up to one record's worth
      const size_t n = std::min(app.size(), kSealChunkBytes);
      size_t written = 0;
      if (SSL_write_ex(ssl_, app.data(), n, &written) != 1 || written != n) {
        return failed(fail(Errc::kInternal, "TLS: " + openssl_error()));
      }
      app.remove_prefix(n);
    }
    drain(out);
    return {};
  }

  bool open() const override { return open_; }
  // OpenSSL marks a server's session reused exactly when it accepted the client's PSK,
  // which it does only after the binder (an HMAC of the ClientHello under the PSK) verified.
  bool peer_proved() const override {
    return open_ || (server_ && !failed_ && transport_ == Transport::kTlsPsk &&
                     SSL_session_reused(ssl_) != 0);
  }

  std::string describe() const override {
    std::string d = SSL_get_version(ssl_);
    if (const SSL_CIPHER* c = SSL_get_current_cipher(ssl_))
      d += std::string(" ") + SSL_CIPHER_get_name(c);
    const int group = SSL_get_negotiated_group(ssl_);
    if (group != 0) {
      const char* name = OBJ_nid2sn(group);
      d += std::string(" ") + (name != nullptr ? name : "?");
    }
    d += SSL_session_reused(ssl_) != 0 ? " psk" : " certificate";
    return d;
  }

 private:
  Status failed(Status st) {
    failed_ = true;
    return st;
  }

  // Before OpenSSL sees them: a stranger's bytes that are no TLS handshake record (an
  // HTTP probe, a plaintext cardnode peer) are named and closed at once.
  Status check_first_bytes(std::string_view in) {
    for (char ch : in) {
      if (first_bytes_seen_ >= first_bytes_.size()) break;
      first_bytes_[first_bytes_seen_++] = ch;
    }
    const size_t n = first_bytes_seen_;
    const auto byte = [this](size_t i) { return static_cast<uint8_t>(first_bytes_[i]); };
    if (n >= 4 && std::memcmp(first_bytes_.data(), "CNOD", 4) == 0) {
      return fail(Errc::kUnavailable,
                  server_ ? "plaintext (--insecure) client, but this server seals its connections"
                          : "the server runs --insecure (plaintext); pass --insecure too, or "
                            "better, run the server without it");
    }
    // A TLS record: type 22 (handshake) from a client; 22 or 21 (an alert) from a server.
    const auto type = static_cast<uint8_t>(first_bytes_[0]);
    const bool type_ok = type == 22 || (!server_ && type == 21);
    if ((n >= 1 && !type_ok) || (n >= 2 && first_bytes_[1] != 3)) {
      return fail(Errc::kUnavailable, "not a TLS peer");
    }
    // A server's first record must start a ClientHello (handshake type 1) of a sane size.
    if (server_ && n >= 9) {
      const uint32_t hello = (uint32_t{byte(6)} << 16) | (uint32_t{byte(7)} << 8) | byte(8);
      if (byte(5) != 1 || hello > kClientHelloBytesMax) {
        return fail(Errc::kUnavailable, "not a cardnode ClientHello");
      }
    }
    return {};
  }

  // Runs the handshake as far as the bytes allow, then decrypts what is there.
  Status drive(std::string* app, std::string* out) {
    ERR_clear_error();
    if (!open_) {
      const int rc = SSL_do_handshake(ssl_);
      if (rc != 1) {
        const int err = SSL_get_error(ssl_, rc);
        if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) {
          Status st = handshake_error();
          drain(out);  // the alert, so the peer learns why
          return failed(st);
        }
        drain(out);
        return {};
      }
      // A client in PSK mode must see the server use the PSK: a certificate would have
      // failed verification above, this is belt and braces.
      if (!server_ && transport_ == Transport::kTlsPsk && SSL_session_reused(ssl_) == 0) {
        drain(out);
        return failed(fail(Errc::kUnauthenticated, "server did not prove the cluster token"));
      }
      open_ = true;
    }
    drain(out);
    if (app == nullptr) return {};
    std::array<char, kSealChunkBytes> buf;  // one record's plaintext at most
    for (;;) {  // bounded: each pass consumes at least one record of what was fed
      size_t got = 0;
      const int rc = SSL_read_ex(ssl_, buf.data(), buf.size(), &got);
      if (rc == 1) {
        app->append(buf.data(), got);
        continue;
      }
      const int err = SSL_get_error(ssl_, 0);
      if (err == SSL_ERROR_WANT_READ) break;
      drain(out);
      if (err == SSL_ERROR_ZERO_RETURN) {
        return failed(fail(Errc::kUnavailable, "the peer closed the connection"));
      }
      const SslError e = take_ssl_error();
      // TLS 1.3: a client is open before the server has checked its certificate, so the
      // server's refusal arrives here, as an alert.
      if (!server_ && certificate_refused(e.reason)) {
        return failed(
            fail(Errc::kUnauthenticated, "the server refused our certificate: " + e.text));
      }
      // A flipped, cut, replayed or reordered record fails its AEAD tag or sequence.
      return failed(fail(Errc::kUnavailable, "sealed record rejected: " + e.text));
    }
    drain(out);
    return {};
  }

  Status handshake_error() {
    const SslError e = take_ssl_error();
    const std::string& what = e.text;
    if (server_ && certificate_refused(e.reason)) {  // the client's alert, not our verdict
      return fail(Errc::kUnavailable, "TLS handshake failed: the client sent " + what);
    }
    switch (e.reason) {
      case SSL_R_BINDER_DOES_NOT_VERIFY:  // server: the client's PSK is not ours
        return fail(Errc::kUnauthenticated, "wrong cluster token");
      case SSL_R_TLSV1_ALERT_DECRYPT_ERROR:
      case SSL_R_SSLV3_ALERT_ILLEGAL_PARAMETER:
        // Client: OpenSSL's server answers a PSK binder that does not verify with one of
        // these; between cardnode peers it is the token.
        if (transport_ == Transport::kTlsPsk && !server_) {
          return fail(Errc::kUnauthenticated, "wrong cluster token (the server refused it)");
        }
        return fail(Errc::kUnavailable, "TLS handshake failed: " + what);
      case SSL_R_CERTIFICATE_VERIFY_FAILED:
        return fail(Errc::kUnauthenticated,
                    transport_ == Transport::kTlsPsk
                        ? "the peer sent a certificate instead of proving the cluster token"
                        : "peer certificate not signed by --tls-ca: " + what);
      case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
        return fail(Errc::kUnauthenticated, "the peer sent no certificate");
      case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
      case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
      case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
      case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
        return fail(Errc::kUnauthenticated, "the server refused our certificate: " + what);
      default:
        return fail(Errc::kUnavailable,
                    "TLS handshake failed: " + what +
                        " (do both sides use the same --tls-* / --insecure settings?)");
    }
  }

  void drain(std::string* out) {
    const size_t pending = BIO_ctrl_pending(out_);
    if (pending == 0) return;
    if (out == nullptr) {  // nothing to send it with: drop it (never the case in use)
      (void)BIO_reset(out_);
      return;
    }
    const size_t at = out->size();
    out->resize(at + pending);
    const int n = BIO_read(out_, out->data() + at, static_cast<int>(pending));
    out->resize(at + static_cast<size_t>(std::max(n, 0)));
    out_bytes_ += pending;
    if (out_bytes_ > kBioKeepBytes && BIO_ctrl_pending(out_) == 0) {
      out_ = fresh_bio();
      SSL_set0_wbio(ssl_, out_);
      out_bytes_ = 0;
    }
  }

  // A memory BIO keeps the capacity its biggest message grew it to: an idle connection
  // (an agent's held poll) would hold a 4 MiB reply's worth. Once one has carried more
  // than kBioKeepBytes and is empty, it is replaced by a new one.
  static BIO* fresh_bio() {
    BIO* b = BIO_new(BIO_s_mem());
    CARDNODE_CHECK(b != nullptr);
    BIO_set_mem_eof_return(b, -1);  // empty means "wait for more", not end of stream
    return b;
  }

  // The PSK callbacks read the context's key through the SSL_CTX's app data.
  std::shared_ptr<const SecurityContext> owner_;
  SSL* ssl_;
  BIO* in_ = nullptr;       // owned by ssl_
  uint64_t in_bytes_ = 0;   // written into in_ since it was made
  uint64_t out_bytes_ = 0;  // read out of out_ since it was made
  BIO* out_ = nullptr;      // owned by ssl_
  bool server_;
  Transport transport_;
  bool open_ = false;
  bool failed_ = false;
  uint64_t handshake_bytes_ = 0;
  std::array<char, 9> first_bytes_{};  // record header (5) + handshake header (4)
  size_t first_bytes_seen_ = 0;
};

// ---------------------------------------------------------------------------------------
// A Unix socket on this board: bytes as they are.

class LocalChannel final : public Channel {
 public:
  Status start(std::string*) override { return {}; }
  Status feed(std::string_view in, std::string* app, std::string*) override {
    app->append(in);
    return {};
  }
  Status seal(std::string_view app, std::string* out) override {
    out->append(app);
    return {};
  }
  bool open() const override { return true; }
  std::string describe() const override { return "local"; }
};

}  // namespace

std::unique_ptr<Channel> local_channel() {
  return std::make_unique<LocalChannel>();
}

namespace {

// ---------------------------------------------------------------------------------------
// --insecure: the HMAC handshake of net/handshake.h, then bytes as they are.

class PlainChannel final : public Channel {
 public:
  PlainChannel(const std::string& token, bool server)
      : server_(server), server_hs_(token), client_hs_(token) {}

  Status start(std::string* out) override {
    if (server_) out->append(server_hs_.hello());
    return {};
  }

  Status feed(std::string_view in, std::string* app, std::string* out) override {
    if (failed_) return fail(Errc::kUnavailable, "connection already failed");
    if (open_) {
      app->append(in);
      return {};
    }
    const uint32_t want = server_ ? kProofBytes : (hello_done_ ? kVerdictBytes : kHelloBytes);
    const size_t take = std::min<size_t>(in.size(), want - buffered_.size());
    const size_t before = buffered_.size();
    buffered_.append(in.substr(0, take));
    in.remove_prefix(take);
    // A peer that is not a plaintext cardnode peer (a TLS ClientHello, an HTTP probe)
    // shows it in the first 5 bytes of its first message.
    if (server_ && before < 5 && buffered_.size() >= 5 &&
        (buffered_.compare(0, 4, "CNOD") != 0 ||
         static_cast<uint8_t>(buffered_[4]) != kProtocolVersion)) {
      failed_ = true;
      const bool tls = static_cast<uint8_t>(buffered_[0]) == 22;
      return fail(Errc::kUnavailable,
                  tls ? "TLS client, but this server runs --insecure" : "not a cardnode peer");
    }
    if (buffered_.size() < want) return {};
    if (server_) {
      bool accepted = false;
      out->append(server_hs_.verdict(buffered_, &accepted));
      if (!accepted) {
        failed_ = true;
        return fail(server_hs_.bad_protocol() ? Errc::kUnavailable : Errc::kUnauthenticated,
                    server_hs_.bad_protocol() ? "bad handshake" : "wrong cluster token");
      }
    } else if (!hello_done_) {
      Result<std::string> proof = client_hs_.proof(buffered_);
      if (!proof) {
        failed_ = true;
        return std::unexpected(proof.error());
      }
      out->append(*proof);
      hello_done_ = true;
      buffered_.clear();
      return feed(in, app, out);  // the verdict may have come in the same read
    } else if (Status st = client_hs_.check_verdict(buffered_); !st) {
      failed_ = true;
      return st;
    }
    open_ = true;
    buffered_.clear();
    app->append(in);
    return {};
  }

  Status seal(std::string_view app, std::string* out) override {
    CARDNODE_CHECK(open_);
    out->append(app);
    return {};
  }
  bool open() const override { return open_; }
  std::string describe() const override { return "plaintext (--insecure)"; }

 private:
  bool server_;
  ServerHandshake server_hs_;
  ClientHandshake client_hs_;
  std::string buffered_;  // at most one handshake message
  bool hello_done_ = false;
  bool open_ = false;
  bool failed_ = false;
};

}  // namespace

SecurityContext::SecurityContext(Transport t, Role r, std::unique_ptr<Impl> impl)
    : transport_(t), role_(r), impl_(std::move(impl)) {}

SecurityContext::~SecurityContext() = default;

Status SecurityContext::check_flags(const SecurityOptions& o) {
  const int given = int{!o.cert_file.empty()} + int{!o.key_file.empty()} + int{!o.ca_file.empty()};
  if (given != 0 && given != 3) {
    return fail(Errc::kInvalidArgument,
                "certificate mode needs all of --tls-cert, --tls-key and --tls-ca");
  }
  if (given == 3 && o.insecure) {
    return fail(Errc::kInvalidArgument, "--insecure and --tls-cert exclude each other");
  }
  return {};
}

Result<std::shared_ptr<const SecurityContext>> SecurityContext::create(const SecurityOptions& o,
                                                                       Role role) {
  if (Status st = check_flags(o); !st) return std::unexpected(st.error());
  const bool certificates = !o.cert_file.empty();
  if (!certificates && o.token.empty()) {
    return fail(Errc::kInvalidArgument, "no cluster token");
  }
  // Every transport needs OpenSSL: TLS, and --insecure's HMAC (net/handshake.cc).
  if (Status st = load_openssl(); !st) return std::unexpected(st.error());
  auto impl = std::make_unique<Impl>();
  Transport t = Transport::kTlsPsk;
  if (o.insecure) {
    t = Transport::kPlaintext;
    impl->token = o.token;
  } else {
    t = certificates ? Transport::kTlsCertificate : Transport::kTlsPsk;
    auto ctx = make_ctx(o, role == Role::kServer, certificates);
    if (!ctx) return std::unexpected(ctx.error());
    impl->ctx = std::move(*ctx);
    if (!certificates) {
      // PSK = SHA-256(label | token): a fixed 32 bytes whatever the token's length, and
      // not the token itself, so the token's bytes never serve two purposes.
      std::string material(kPskLabel);
      material.push_back('\0');
      material += o.token;
      SHA256(reinterpret_cast<const unsigned char*>(material.data()), material.size(),
             impl->psk.data());
      OPENSSL_cleanse(material.data(), material.size());
    }
    SSL_CTX_set_app_data(impl->ctx.get(), impl.get());
  }
  return std::shared_ptr<const SecurityContext>(new SecurityContext(t, role, std::move(impl)));
}

std::shared_ptr<const SecurityContext> SecurityContext::psk(const std::string& token, Role role) {
  SecurityOptions o;
  o.token = token;
  auto ctx = create(o, role);
  CARDNODE_CHECK(ctx.has_value());
  return *ctx;
}

std::unique_ptr<Channel> SecurityContext::channel() const {
  const bool server = role_ == Role::kServer;
  if (transport_ == Transport::kPlaintext) {
    return std::make_unique<PlainChannel>(impl_->token, server);
  }
  return std::make_unique<TlsChannel>(shared_from_this(), impl_->ctx.get(), server, transport_);
}

}  // namespace cardnode::net
