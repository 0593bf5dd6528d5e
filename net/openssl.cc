#include "net/openssl.h"

#include <dlfcn.h>

#include <cstdio>
#include <string>

namespace cardnode::net {
namespace {

struct Loaded {
  OpenSsl table;
  Status outcome;
};

Loaded load() {
  Loaded l;
  // RTLD_LOCAL: nothing of OpenSSL's joins the process's global symbols (a process that
  // links libssl.so.3 itself, as the tests do, gets the same already-loaded copy back).
  void* lib = ::dlopen(kOpenSslLibrary, RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* why = ::dlerror();
    l.outcome = fail(Errc::kUnavailable,
                     std::string("TCP connections (TLS, and --insecure's HMAC) need OpenSSL 3 (") +
                         kOpenSslLibrary +
                         "), which cannot be loaded: " + (why != nullptr ? why : "unknown reason") +
                         "; install the libssl3 package");
    return l;
  }
  // dlsym through libssl's handle also finds libcrypto's functions: it searches the
  // library and then what it depends on.
#define CARDNODE_OPENSSL_LOOKUP(name)                                                        \
  l.table.name = reinterpret_cast<decltype(l.table.name)>(::dlsym(lib, #name));              \
  if (l.table.name == nullptr) {                                                             \
    l.outcome = fail(Errc::kUnavailable,                                                     \
                     std::string(kOpenSslLibrary) + " has no " #name " (is it OpenSSL 3?)"); \
    return l;                                                                                \
  }
  CARDNODE_OPENSSL_FUNCTIONS(CARDNODE_OPENSSL_LOOKUP)
#undef CARDNODE_OPENSSL_LOOKUP
  // Without openssl.cnf: ~2 ms, and nothing in it applies to the fixed TLS 1.3 suites and
  // options set in net/channel.cc. The first initialising call decides, and this is it.
  (void)l.table.OPENSSL_init_ssl(OPENSSL_INIT_NO_LOAD_CONFIG, nullptr);
  return l;
}

const Loaded& loaded() {
  // Once per process, whichever thread comes first. Never destroyed: OpenSSL's own exit
  // handlers run after static destructors and may still reach code that reads the table.
  static const Loaded* const l = new Loaded(load());  // NOLINT(cppcoreguidelines-owning-memory)
  return *l;
}

}  // namespace

Status load_openssl() {
  return loaded().outcome;
}

const OpenSsl& openssl() {
  const Loaded& l = loaded();
  if (!l.outcome) {
    // Only the conveniences without an error path get here (net/openssl.h).
    (void)std::fprintf(stderr, "cardnode: %s\n", l.outcome.error().message.c_str());
    CARDNODE_CHECK(l.outcome.has_value());
  }
  return l.table;
}

}  // namespace cardnode::net
