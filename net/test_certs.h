// Test support: a throwaway CA and certificates signed by it, written as PEM files, for
// the certificate mode of net/channel.h. Made with OpenSSL's API (P-256 keys, one day of
// validity) so no test depends on the `openssl` command being installed.
// Not for production: no extensions beyond what a TLS peer needs to accept the chain.
#pragma once

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

namespace cardnode::net::testing {

struct KeyDeleter {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct CertDeleter {
  void operator()(X509* c) const { X509_free(c); }
};
using Key = std::unique_ptr<EVP_PKEY, KeyDeleter>;
// Header-only, so the end-to-end tests (which link none of the project's libraries) can
// use it too: a failure here is a broken test setup, and aborts.
inline void require(bool ok) {
  if (!ok) std::abort();
}
using Cert = std::unique_ptr<X509, CertDeleter>;

inline Key new_key() {
  return Key(EVP_EC_gen("P-256"));
}

inline void add_ext(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  require(ext != nullptr);
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

// A certificate for `cn` with `key`, signed by issuer/issuer_key (self-signed when null).
inline Cert new_cert(const std::string& cn, EVP_PKEY* key, X509* issuer, EVP_PKEY* issuer_key,
                     bool ca, long serial) {
  Cert cert(X509_new());
  X509_set_version(cert.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), serial);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 86400);
  X509_set_pubkey(cert.get(), key);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509* signer = issuer != nullptr ? issuer : cert.get();
  X509_set_issuer_name(cert.get(), X509_get_subject_name(signer));
  add_ext(cert.get(), signer, NID_basic_constraints, ca ? "critical,CA:TRUE" : "CA:FALSE");
  if (ca) add_ext(cert.get(), signer, NID_key_usage, "critical,keyCertSign,cRLSign");
  add_ext(cert.get(), signer, NID_subject_key_identifier, "hash");
  require(X509_sign(cert.get(), issuer_key != nullptr ? issuer_key : key, EVP_sha256()) > 0);
  return cert;
}

inline void write_pem(const std::string& path, X509* cert, EVP_PKEY* key) {
  FILE* f = std::fopen(path.c_str(), "w");
  require(f != nullptr);
  if (cert != nullptr) PEM_write_X509(f, cert);
  if (key != nullptr) PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr);
  std::fclose(f);
}

// Writes DIR/ca.pem and, for each name, DIR/NAME.crt and DIR/NAME.key signed by that CA.
struct Pki {
  std::string ca;
  std::string cert(const std::string& name) const { return dir + "/" + name + ".crt"; }
  std::string key(const std::string& name) const { return dir + "/" + name + ".key"; }
  std::string dir;
};

inline Pki make_pki(const std::string& dir, std::initializer_list<std::string> names,
                    const std::string& ca_name = "cardnode test CA") {
  Pki pki{dir + "/ca.pem", dir};
  Key ca_key = new_key();
  Cert ca = new_cert(ca_name, ca_key.get(), nullptr, nullptr, /*ca=*/true, 1);
  write_pem(pki.ca, ca.get(), nullptr);
  long serial = 2;
  for (const std::string& n : names) {
    Key k = new_key();
    Cert c = new_cert(n, k.get(), ca.get(), ca_key.get(), /*ca=*/false, serial++);
    write_pem(pki.cert(n), c.get(), nullptr);
    write_pem(pki.key(n), nullptr, k.get());
  }
  return pki;
}

}  // namespace cardnode::net::testing
