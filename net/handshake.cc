#include "net/handshake.h"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

// OpenSSL 3's EVP and RAND paths load its provider machinery on first use, which keeps
// ~2.2 MB more of libcrypto resident for the life of the server (measured with VmRSS on
// Debian 12). SHA256_Init/Update/Final and getrandom(2) do not (the one-shot SHA256()
// does: it is EVP_Q_digest in OpenSSL 3); they are deprecated in OpenSSL 3 but not
// removed, and HMAC (RFC 2104) over them is a few lines. OpenSSL is loaded on demand
// (net/openssl.h); SecurityContext::create, the way to a connection that runs this HMAC,
// returns its absence as an error.
#include "net/openssl_calls.h"

namespace cardnode::net {
namespace {

constexpr std::string_view kMagic = "CNOD";
constexpr std::string_view kAccept = "OK";
constexpr std::string_view kReject = "NO";
constexpr std::string_view kClientLabel = "cardnode-client";
constexpr std::string_view kServerLabel = "cardnode-server";
constexpr size_t kTokenFileBytesMax = 4096;
constexpr size_t kNewTokenRandomBytes = 32;

using Nonce = std::array<uint8_t, kNonceBytes>;
using Mac = std::array<uint8_t, kMacBytes>;

void random_fill(uint8_t* out, size_t n) {
  // getrandom fails only when the kernel's entropy source is gone; running on without
  // nonces would void the handshake, so this is treated like a broken invariant.
  size_t done = 0;
  for (int tries = 0; done < n && tries < 16; ++tries) {
    ssize_t got = ::getrandom(out + done, n - done, 0);
    if (got > 0) {
      done += static_cast<size_t>(got);
    } else {
      CARDNODE_CHECK(errno == EINTR);
    }
  }
  CARDNODE_CHECK(done == n);
}

// HMAC-SHA256 (RFC 2104): H((K ^ opad) | H((K ^ ipad) | message)).
Mac hmac_sha256_impl(std::string_view key, std::string_view message) {
  constexpr size_t kBlock = 64;
  std::array<uint8_t, kBlock> k{};
  if (key.size() > kBlock) {
    SHA256_CTX key_ctx;
    SHA256_Init(&key_ctx);
    SHA256_Update(&key_ctx, key.data(), key.size());
    SHA256_Final(k.data(), &key_ctx);
  } else {
    std::memcpy(k.data(), key.data(), key.size());
  }
  std::array<uint8_t, kBlock> ipad{}, opad{};
  for (size_t i = 0; i < kBlock; ++i) {
    ipad[i] = static_cast<uint8_t>(k[i] ^ 0x36);
    opad[i] = static_cast<uint8_t>(k[i] ^ 0x5c);
  }
  Mac inner{}, mac{};
  SHA256_CTX ctx;
  SHA256_Init(&ctx);
  SHA256_Update(&ctx, ipad.data(), ipad.size());
  SHA256_Update(&ctx, message.data(), message.size());
  SHA256_Final(inner.data(), &ctx);
  SHA256_Init(&ctx);
  SHA256_Update(&ctx, opad.data(), opad.size());
  SHA256_Update(&ctx, inner.data(), inner.size());
  SHA256_Final(mac.data(), &ctx);
  OPENSSL_cleanse(k.data(), k.size());
  OPENSSL_cleanse(ipad.data(), ipad.size());
  OPENSSL_cleanse(opad.data(), opad.size());
  return mac;
}

Mac hmac(const std::string& key, std::string_view label, const Nonce& a, const Nonce& b) {
  std::string data;
  data.reserve(label.size() + size_t{2} * kNonceBytes);
  data.append(label);
  data.append(reinterpret_cast<const char*>(a.data()), a.size());
  data.append(reinterpret_cast<const char*>(b.data()), b.size());
  return hmac_sha256_impl(key, data);
}

bool mac_equal(const Mac& mac, std::string_view received) {
  return received.size() == kMacBytes && CRYPTO_memcmp(mac.data(), received.data(), kMacBytes) == 0;
}

// "CNOD" | version: the common prefix of HELLO and PROOF.
bool has_preamble(std::string_view msg) {
  return msg.size() >= kMagic.size() + 1 && msg.substr(0, kMagic.size()) == kMagic &&
         static_cast<uint8_t>(msg[kMagic.size()]) == kProtocolVersion;
}

void append(std::string* out, const std::array<uint8_t, kNonceBytes>& bytes) {
  out->append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

Nonce nonce_at(std::string_view msg, size_t offset) {
  Nonce n{};
  std::memcpy(n.data(), msg.data() + offset, kNonceBytes);
  return n;
}

std::string preamble() {
  std::string out(kMagic);
  out.push_back(static_cast<char>(kProtocolVersion));
  return out;
}

std::string mode_octal(mode_t mode) {
  char buf[8];
  (void)std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode & 07777));  // fits
  return buf;
}

Status fsync_parent_dir(const std::string& path) {
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  const std::string dir = parent.empty() ? std::string(".") : parent.string();
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return fail_errno(errno, "open directory " + dir);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return fail_errno(err, "fsync directory " + dir);
  return {};
}

Status write_all(int fd, std::string_view data, const std::string& path) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail_errno(errno, "write " + path);
    data.remove_prefix(static_cast<size_t>(n));
  }
  return {};
}

std::string new_token() {
  std::array<uint8_t, kNewTokenRandomBytes> raw{};
  random_fill(raw.data(), raw.size());
  static constexpr char kHex[] = "0123456789abcdef";
  std::string token;
  for (const uint8_t b : raw) {
    token.push_back(kHex[b >> 4]);
    token.push_back(kHex[b & 0xf]);
  }
  return token;
}

}  // namespace

Result<std::string> load_token(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail_errno(errno, "open token file " + path);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return fail_errno(err, "stat token file " + path);
  }
  if ((st.st_mode & 077) != 0) {
    ::close(fd);
    return fail(Errc::kInvalidArgument, "token file " + path + " is readable by others (mode " +
                                            mode_octal(st.st_mode) + "); chmod 600 " + path);
  }
  std::string contents(kTokenFileBytesMax + 1, '\0');
  size_t got = 0;
  while (got < contents.size()) {  // bounded by the buffer size
    const ssize_t n = ::read(fd, contents.data() + got, contents.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      return fail_errno(err, "read token file " + path);
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  if (got > kTokenFileBytesMax) {
    return fail(Errc::kInvalidArgument, "token file " + path + " is larger than " +
                                            std::to_string(kTokenFileBytesMax) + " bytes");
  }
  contents.resize(got);
  while (!contents.empty() && std::strchr(" \t\r\n\v\f", contents.back()) != nullptr) {
    contents.pop_back();
  }
  if (contents.size() < kTokenBytesMin) {
    return fail(Errc::kInvalidArgument,
                "token file " + path + " holds a " + std::to_string(contents.size()) +
                    "-byte token; at least " + std::to_string(kTokenBytesMin) + " are required");
  }
  return contents;
}

Result<std::string> create_token_if_missing(const std::string& path) {
  // O_EXCL: an existing token is never replaced; every board of the cluster holds it.
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0 && errno == EEXIST) return load_token(path);
  if (fd < 0) return fail_errno(errno, "create token file " + path);
  const std::string token = new_token();
  Status st = write_all(fd, token + "\n", path);
  if (st && ::fsync(fd) != 0) st = fail_errno(errno, "fsync " + path);
  ::close(fd);
  if (st) st = fsync_parent_dir(path);
  if (!st) {
    ::unlink(path.c_str());  // a half-written token would be loaded by the next start
    return std::unexpected(st.error());
  }
  return token;
}

std::array<uint8_t, kMacBytes> hmac_sha256(std::string_view key, std::string_view message) {
  return hmac_sha256_impl(key, message);
}

ServerHandshake::ServerHandshake(std::string token) : token_(std::move(token)) {}

std::string ServerHandshake::hello() {
  random_fill(server_nonce_.data(), server_nonce_.size());
  hello_sent_ = true;
  std::string out = preamble();
  append(&out, server_nonce_);
  return out;
}

std::string ServerHandshake::verdict(std::string_view proof, bool* accepted) {
  CARDNODE_CHECK(hello_sent_);
  *accepted = false;
  bad_protocol_ = proof.size() != kProofBytes || !has_preamble(proof);
  if (!bad_protocol_) {
    const Nonce client_nonce = nonce_at(proof, kMagic.size() + 1);
    const Mac expected = hmac(token_, kClientLabel, server_nonce_, client_nonce);
    if (mac_equal(expected, proof.substr(kMagic.size() + 1 + kNonceBytes))) {
      *accepted = true;
      const Mac mine = hmac(token_, kServerLabel, client_nonce, server_nonce_);
      std::string out(kAccept);
      out.append(reinterpret_cast<const char*>(mine.data()), mine.size());
      return out;
    }
  }
  std::string out(kReject);
  out.append(kMacBytes, '\0');
  return out;
}

ClientHandshake::ClientHandshake(std::string token) : token_(std::move(token)) {}

Result<std::string> ClientHandshake::proof(std::string_view hello) {
  if (hello.size() != kHelloBytes || hello.substr(0, kMagic.size()) != kMagic) {
    return fail(Errc::kUnavailable, "peer is not a cardnode server (bad handshake magic)");
  }
  if (!has_preamble(hello)) {
    return fail(Errc::kUnavailable, "server speaks protocol version " +
                                        std::to_string(static_cast<uint8_t>(hello[kMagic.size()])) +
                                        ", this client speaks " + std::to_string(kProtocolVersion));
  }
  server_nonce_ = nonce_at(hello, kMagic.size() + 1);
  random_fill(client_nonce_.data(), client_nonce_.size());
  proof_sent_ = true;
  const Mac mac = hmac(token_, kClientLabel, server_nonce_, client_nonce_);
  std::string out = preamble();
  append(&out, client_nonce_);
  out.append(reinterpret_cast<const char*>(mac.data()), mac.size());
  return out;
}

Status ClientHandshake::check_verdict(std::string_view verdict) const {
  CARDNODE_CHECK(proof_sent_);
  if (verdict.size() == kVerdictBytes && verdict.substr(0, kReject.size()) == kReject) {
    return fail(Errc::kUnauthenticated, "authentication failed: wrong cluster token");
  }
  if (verdict.size() != kVerdictBytes || verdict.substr(0, kAccept.size()) != kAccept) {
    return fail(Errc::kUnavailable, "peer is not a cardnode server (bad handshake verdict)");
  }
  const Mac expected = hmac(token_, kServerLabel, client_nonce_, server_nonce_);
  if (!mac_equal(expected, verdict.substr(kAccept.size()))) {
    return fail(Errc::kUnauthenticated, "authentication failed: server failed to prove the token");
  }
  return {};
}

}  // namespace cardnode::net
