// fuzz_handshake: the token handshake (net/handshake.h) on arbitrary bytes, both sides.
// Input: byte 0 picks a mode, the rest is its material:
//   0  server: verdict() on an arbitrary PROOF;
//   1  server: verdict() on a genuine PROOF (made with the token) with input bytes XORed in;
//   2  server: verdict() on a genuine PROOF made with a token taken from the input (the
//      same token, or it with NULs appended up to HMAC's 64-byte block, is the same key);
//   3  client: proof() on an arbitrary HELLO, then check_verdict() on an arbitrary verdict;
//   4  client: check_verdict() on a genuine ACCEPT with input bytes XORed in.
// Must hold: the server accepts exactly when the PROOF is well formed and its MAC is the
// HMAC of the token over the nonces (so random bytes, a mutated proof or another token are
// refused), and answers kVerdictBytes either way; the client takes a verdict only when it
// is "OK" and the token's MAC; no crash, no read past the bytes given.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "net/handshake.h"

namespace {

using namespace cardnode::net;

const std::string kToken = "fuzz-token-0123456789abcdef0123456789";

void require(bool ok) {
  if (!ok) std::abort();
}

std::string mac_of(std::string_view label, std::string_view a, std::string_view b) {
  std::string msg(label);
  msg.append(a);
  msg.append(b);
  auto m = hmac_sha256(kToken, msg);
  return std::string(reinterpret_cast<const char*>(m.data()), m.size());
}

bool well_formed(std::string_view msg, size_t size) {
  return msg.size() == size && msg.substr(0, 4) == "CNOD" &&
         static_cast<uint8_t>(msg[4]) == kProtocolVersion;
}

// What the server must decide, from the bytes alone.
bool proof_is_genuine(std::string_view hello, std::string_view proof) {
  if (!well_formed(proof, kProofBytes)) return false;
  return proof.substr(5 + kNonceBytes) ==
         mac_of("cardnode-client", hello.substr(5, kNonceBytes), proof.substr(5, kNonceBytes));
}

void server_check(std::string_view proof) {
  ServerHandshake server(kToken);
  const std::string hello = server.hello();
  require(hello.size() == kHelloBytes);
  bool accepted = true;
  const std::string verdict = server.verdict(proof, &accepted);
  require(verdict.size() == kVerdictBytes);
  require(accepted == proof_is_genuine(hello, proof));
  require(verdict.substr(0, 2) == (accepted ? "OK" : "NO"));
  require(server.bad_protocol() == !well_formed(proof, kProofBytes));
}

std::string xored(std::string s, std::string_view mask) {
  for (size_t i = 0; i < mask.size(); ++i) s[i % s.size()] ^= mask[i];
  return s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 5) {
    case 0: server_check(in); break;
    case 1: {
      ServerHandshake server(kToken);
      ClientHandshake client(kToken);
      auto proof = client.proof(server.hello());
      require(proof.has_value());
      const std::string sent = xored(*proof, in);
      bool accepted = false;
      const std::string verdict = server.verdict(sent, &accepted);
      require(accepted == (sent == *proof));
      require(static_cast<bool>(client.check_verdict(verdict)) == accepted);
      break;
    }
    case 2: {
      ServerHandshake server(kToken);
      ClientHandshake client{std::string(in)};
      auto proof = client.proof(server.hello());
      require(proof.has_value());
      bool accepted = false;
      const std::string verdict = server.verdict(*proof, &accepted);
      // HMAC pads a key shorter than its 64-byte block with zeros, so the token followed
      // by NULs is the same key (a token file never holds NULs: it is 64 hex chars).
      const bool same_key = in.size() <= 64 && in.substr(0, kToken.size()) == kToken &&
                            in.substr(kToken.size()).find_first_not_of('\0') == std::string::npos;
      require(accepted == same_key);
      require(static_cast<bool>(client.check_verdict(verdict)) == accepted);
      break;
    }
    case 3: {
      const std::string_view hello = in.substr(0, kHelloBytes);
      const std::string_view verdict = in.substr(hello.size());
      ClientHandshake client(kToken);
      auto proof = client.proof(hello);
      require(proof.has_value() == well_formed(hello, kHelloBytes));
      if (!proof) break;
      require(proof->size() == kProofBytes && proof_is_genuine(hello, *proof));
      const bool genuine =
          verdict.size() == kVerdictBytes && verdict.substr(0, 2) == "OK" &&
          verdict.substr(2) == mac_of("cardnode-server", proof->substr(5, kNonceBytes),
                                      hello.substr(5, kNonceBytes));
      require(static_cast<bool>(client.check_verdict(verdict)) == genuine);
      break;
    }
    case 4: {
      ServerHandshake server(kToken);
      ClientHandshake client(kToken);
      auto proof = client.proof(server.hello());
      require(proof.has_value());
      bool accepted = false;
      const std::string verdict = server.verdict(*proof, &accepted);
      require(accepted);
      const std::string got = xored(verdict, in);
      require(static_cast<bool>(client.check_verdict(got)) == (got == verdict));
      break;
    }
  }
  return 0;
}
