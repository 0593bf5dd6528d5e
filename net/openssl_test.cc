#include "net/openssl.h"

#include <dlfcn.h>
#include <gtest/gtest.h>
#include <link.h>

#include <string>

namespace cardnode::net {
namespace {

// True when a shared object whose path contains `name` is mapped in this process.
bool mapped(const std::string& name) {
  struct Ask {
    const std::string* name;
    bool found;
  } ask{&name, false};
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* data) {
        auto* a = static_cast<Ask*>(data);
        if (info->dlpi_name != nullptr &&
            std::string(info->dlpi_name).find(*a->name) != std::string::npos) {
          a->found = true;
        }
        return 0;
      },
      &ask);
  return ask.found;
}

// Before main, before any test asked for OpenSSL.
const bool kMappedAtStart = mapped("libssl.so");

// The shared object a function pointer lies in.
std::string library_of(const void* fn) {
  Dl_info info{};
  if (dladdr(fn, &info) == 0 || info.dli_fname == nullptr) return "?";
  return info.dli_fname;
}

// This test's binary links no OpenSSL (net/CMakeLists.txt): libssl.so.3 comes into the
// process with the first load_openssl(), and every function of the table is libssl's or
// libcrypto's own, not something else of the same name.
TEST(OpenSsl, IsLoadedOnlyWhenAskedAndEveryFunctionIsOpenSsls) {
  EXPECT_FALSE(kMappedAtStart) << "linked or loaded before anything asked for it";
  ASSERT_TRUE(load_openssl().has_value()) << load_openssl().error().message;
  EXPECT_TRUE(mapped("libssl.so.3"));
  EXPECT_TRUE(mapped("libcrypto.so.3"));
  const OpenSsl& o = openssl();
  std::string foreign;
#define CARDNODE_OPENSSL_WHERE(name)                                             \
  if (const std::string lib = library_of(reinterpret_cast<const void*>(o.name)); \
      lib.find("libssl.so.3") == std::string::npos &&                            \
      lib.find("libcrypto.so.3") == std::string::npos) {                         \
    foreign += std::string(#name) + " in " + lib + "; ";                         \
  }
  CARDNODE_OPENSSL_FUNCTIONS(CARDNODE_OPENSSL_WHERE)
#undef CARDNODE_OPENSSL_WHERE
  EXPECT_EQ(foreign, "");
  // The table calls the library: a digest of "abc" (FIPS 180-2's first example).
  unsigned char d[SHA256_DIGEST_LENGTH];
  SHA256_CTX c;
  ASSERT_EQ(o.SHA256_Init(&c), 1);
  ASSERT_EQ(o.SHA256_Update(&c, "abc", 3), 1);
  ASSERT_EQ(o.SHA256_Final(d, &c), 1);
  EXPECT_EQ(d[0], 0xba);
  EXPECT_EQ(d[31], 0xad);
  EXPECT_TRUE(load_openssl().has_value());  // later calls: the first call's outcome
}

}  // namespace
}  // namespace cardnode::net
