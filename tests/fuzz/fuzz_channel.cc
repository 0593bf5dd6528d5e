// fuzz_channel: the connection's record layer (net/channel.h) on arbitrary bytes: the TLS
// 1.3 handshake with the token as PSK, then sealed records, as the server and as the client.
// Input: byte 0 picks a mode, byte 1 a chunk size (how the bytes are cut into feeds, as TCP
// would), the rest is the material:
//   0  server: arbitrary bytes as a client's first flight;
//   1  server: a genuine ClientHello with input bytes XORed in, then the rest of the input;
//   2  server, after a genuine handshake: a genuine sealed record with input bytes XORed in;
//   3  client, after its ClientHello: arbitrary bytes as the server's answer;
//   4  plaintext (--insecure) server: arbitrary bytes as a PROOF and what follows.
// Must hold: without the token no channel ever opens and no application byte comes out
// (modes 0, 1, 3, 4); a record comes out exactly when no byte of it was changed, and then
// as it was sealed (mode 2); an error is final; no crash, no read past the bytes given.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "net/channel.h"

namespace {

using namespace cardnode::net;
using Role = SecurityContext::Role;

const std::string kToken = "fuzz-token-0123456789abcdef0123456789";

void require(bool ok) {
  if (!ok) std::abort();
}

const std::shared_ptr<const SecurityContext>& ctx(Role role, bool insecure = false) {
  static const auto make = [](Role r, bool plain) {
    SecurityOptions o;
    o.token = kToken;
    o.insecure = plain;
    auto c = SecurityContext::create(o, r);
    require(c.has_value());
    return *c;
  };
  static const auto server = make(Role::kServer, false), client = make(Role::kClient, false),
                    plain_server = make(Role::kServer, true);
  if (insecure) return plain_server;
  return role == Role::kServer ? server : client;
}

// Feeds `in` in chunks of `chunk` bytes; stops at the first error, which must be final.
// Returns whether every feed succeeded.
bool feed_all(Channel& ch, std::string_view in, size_t chunk, std::string* app) {
  std::string out;
  while (!in.empty()) {
    const size_t n = std::min(chunk, in.size());
    if (!ch.feed(in.substr(0, n), app, &out)) {
      require(!ch.feed("x", app, &out));  // failed for good
      return false;
    }
    in.remove_prefix(n);
  }
  return true;
}

void xor_into(std::string& s, std::string_view in) {
  for (size_t i = 0; i < s.size() && i < in.size(); ++i) s[i] = static_cast<char>(s[i] ^ in[i]);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const uint8_t mode = data[0] % 5;
  const size_t chunk = 1 + data[1];
  const std::string_view in(reinterpret_cast<const char*>(data) + 2, size - 2);
  std::string app;
  switch (mode) {
    case 0: {
      auto server = ctx(Role::kServer)->channel();
      feed_all(*server, in, chunk, &app);
      require(!server->open() && app.empty());
      break;
    }
    case 1: {
      auto client = ctx(Role::kClient)->channel();
      std::string hello;
      require(client->start(&hello).has_value());
      xor_into(hello, in);
      auto server = ctx(Role::kServer)->channel();
      std::string rest(in.size() > hello.size() ? in.substr(hello.size()) : std::string_view());
      feed_all(*server, hello + rest, chunk, &app);
      require(!server->open() && app.empty());  // no client Finished can be made without keys
      break;
    }
    case 2: {
      auto client = ctx(Role::kClient)->channel();
      auto server = ctx(Role::kServer)->channel();
      std::string to_server, to_client, ignored;
      require(client->start(&to_server).has_value());
      require(server->feed(to_server, &ignored, &to_client).has_value());
      to_server.clear();
      require(client->feed(to_client, &ignored, &to_server).has_value());
      require(server->feed(to_server, &ignored, &to_client).has_value());
      require(server->open() && client->open());
      const std::string plain = "a request frame";
      std::string record;
      require(client->seal(plain, &record).has_value());
      const std::string original = record;
      xor_into(record, in);
      const bool ok = feed_all(*server, record, chunk, &app);
      if (record == original) {
        require(ok && app == plain);
      } else {
        require(app.empty());  // a changed record never yields a byte (it may be incomplete)
      }
      break;
    }
    case 3: {
      auto client = ctx(Role::kClient)->channel();
      std::string hello;
      require(client->start(&hello).has_value());
      feed_all(*client, in, chunk, &app);
      require(!client->open() && app.empty());
      break;
    }
    default: {
      auto server = ctx(Role::kServer, /*insecure=*/true)->channel();
      std::string hello;
      require(server->start(&hello).has_value());
      feed_all(*server, in, chunk, &app);
      require(!server->open() && app.empty());
      break;
    }
  }
  return 0;
}
