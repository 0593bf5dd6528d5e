// OpenSSL, loaded from the system's libssl.so.3 (and the libcrypto.so.3 it needs) the first
// time something needs it, not linked into the binary.
//
// Why: linked in, OpenSSL's tables (~360 KB of pointers in .data.rel.ro, error strings,
// method tables) were relocated at every start of the binary, and its CPU probe ran, in
// every CLI call, although a call over the server's local socket never uses OpenSSL
// (net/channel.h: local_channel). That was a third of the CLI's own start and exit
// (docs/PERFORMANCE.md, "OpenSSL loaded when needed"). Loaded on demand, only a TLS or
// --insecure connection pays it, once per process; security fixes to OpenSSL reach
// cardnode with the system's libssl3 package.
//
// Who loads it: SecurityContext::create, the way the server, the agent and the CLI make
// their TLS or HMAC connections, calls load_openssl() first and returns its error as a
// value. Code that calls OpenSSL includes net/openssl_calls.h, which routes each call
// through openssl(), the table filled here; openssl() loads on first use too, for the
// conveniences that have no error path (SecurityContext::psk, hmac_sha256 for its test
// vectors), and stops the process with the reason where OpenSSL cannot be loaded.
//
// Threading: load_openssl() may be called from any thread, any number of times; the first
// call loads, later calls return the first call's outcome. The table is read-only after.
// The library is never unloaded.
#pragma once

// SHA256_Init/Update/Final are deprecated in OpenSSL 3 but kept (net/handshake.cc says
// why they are used); their declarations are needed for the table's types. So this must
// be the first OpenSSL header a file includes (through net/openssl_calls.h).
#ifndef OPENSSL_SUPPRESS_DEPRECATED
#define OPENSSL_SUPPRESS_DEPRECATED
#endif
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/opensslv.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>

#include "proto/error.h"

// The table's types come from these headers, the functions from kOpenSslLibrary below.
#if OPENSSL_VERSION_MAJOR != 3
#error "cardnode is built against OpenSSL 3's headers and loads libssl.so.3"
#endif

namespace cardnode::net {

// The shared object dlopen() asks for: OpenSSL 3's ABI (every 3.x release keeps it).
inline constexpr const char* kOpenSslLibrary = "libssl.so.3";

// Every OpenSSL function cardnode calls, after macro expansion (SSL_CTX_set_mode is
// SSL_CTX_ctrl, BIO_reset is BIO_ctrl, ...). A call to one missing here does not link:
// the binary has no OpenSSL to resolve it against.
#define CARDNODE_OPENSSL_FUNCTIONS(X)      \
  X(BIO_ctrl)                              \
  X(BIO_ctrl_pending)                      \
  X(BIO_new)                               \
  X(BIO_read)                              \
  X(BIO_s_mem)                             \
  X(BIO_write)                             \
  X(CRYPTO_memcmp)                         \
  X(ERR_clear_error)                       \
  X(ERR_get_error)                         \
  X(ERR_reason_error_string)               \
  X(OBJ_nid2sn)                            \
  X(OPENSSL_cleanse)                       \
  X(OPENSSL_init_ssl)                      \
  X(SHA256)                                \
  X(SHA256_Final)                          \
  X(SHA256_Init)                           \
  X(SHA256_Update)                         \
  X(SSL_CIPHER_find)                       \
  X(SSL_CIPHER_get_handshake_digest)       \
  X(SSL_CIPHER_get_name)                   \
  X(SSL_CTX_check_private_key)             \
  X(SSL_CTX_clear_options)                 \
  X(SSL_CTX_ctrl)                          \
  X(SSL_CTX_free)                          \
  X(SSL_CTX_get_ex_data)                   \
  X(SSL_CTX_load_verify_locations)         \
  X(SSL_CTX_new)                           \
  X(SSL_CTX_set_ciphersuites)              \
  X(SSL_CTX_set_ex_data)                   \
  X(SSL_CTX_set_num_tickets)               \
  X(SSL_CTX_set_options)                   \
  X(SSL_CTX_set_psk_find_session_callback) \
  X(SSL_CTX_set_psk_use_session_callback)  \
  X(SSL_CTX_set_verify)                    \
  X(SSL_CTX_use_PrivateKey_file)           \
  X(SSL_CTX_use_certificate_chain_file)    \
  X(SSL_SESSION_free)                      \
  X(SSL_SESSION_get0_cipher)               \
  X(SSL_SESSION_new)                       \
  X(SSL_SESSION_set1_master_key)           \
  X(SSL_SESSION_set_cipher)                \
  X(SSL_SESSION_set_protocol_version)      \
  X(SSL_ctrl)                              \
  X(SSL_do_handshake)                      \
  X(SSL_free)                              \
  X(SSL_get_SSL_CTX)                       \
  X(SSL_get_current_cipher)                \
  X(SSL_get_error)                         \
  X(SSL_get_version)                       \
  X(SSL_new)                               \
  X(SSL_read_ex)                           \
  X(SSL_session_reused)                    \
  X(SSL_set0_rbio)                         \
  X(SSL_set0_wbio)                         \
  X(SSL_set_accept_state)                  \
  X(SSL_set_bio)                           \
  X(SSL_set_connect_state)                 \
  X(SSL_write_ex)                          \
  X(TLS_client_method)                     \
  X(TLS_server_method)

struct OpenSsl {
// NOLINTNEXTLINE(bugprone-macro-parentheses): a name, which parentheses would not leave one
#define CARDNODE_OPENSSL_MEMBER(name) decltype(&::name) name = nullptr;
  CARDNODE_OPENSSL_FUNCTIONS(CARDNODE_OPENSSL_MEMBER)
#undef CARDNODE_OPENSSL_MEMBER
};

// Loads kOpenSslLibrary and looks up every function above. Errors (kUnavailable): the
// library is missing ("TCP connections (TLS, and --insecure's HMAC) need OpenSSL 3
// (libssl.so.3), which cannot be loaded: ...; install the libssl3 package") or lacks a
// function. Later calls return the first call's outcome.
[[nodiscard]] Status load_openssl();

// The table, loaded on first use; where it cannot be loaded, prints the reason and stops
// the process (CARDNODE_CHECK).
const OpenSsl& openssl();

}  // namespace cardnode::net
