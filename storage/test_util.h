// Helpers shared by the storage tests: temp dirs, backend parameterization, and a
// bounded way to drive an engine until a condition holds.
#pragma once

#include <ftw.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <ostream>
#include <string>

#include "storage/io_engine.h"

namespace cardnode::storage {
// Test names and failure messages show "io_uring"/"fallback", not raw bytes.
inline void PrintTo(Backend b, std::ostream* os) {
  *os << backend_name(b);
}
}  // namespace cardnode::storage

namespace cardnode::storage::testing {

class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl =
        std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/cardnode-storage-XXXXXX";
    if (::mkdtemp(tmpl.data()) != nullptr) path_ = tmpl;
  }
  ~TempDir() {
    if (path_.empty()) return;
    ::nftw(
        path_.c_str(),
        [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); }, 16,
        FTW_DEPTH | FTW_PHYS);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline std::string param_name(const ::testing::TestParamInfo<Backend>& info) {
  return backend_name(info.param);
}

// The engine for a backend parameter; empty with *skip set when io_uring is not
// available here (qemu-user, seccomp, CARDNODE_IO_BACKEND=fallback).
inline std::unique_ptr<IoEngine> make_engine(Backend backend, uint32_t queue_depth,
                                             std::string* skip) {
  IoOptions options;
  options.queue_depth = queue_depth;
  options.force_fallback = backend == Backend::kFallback;
  std::string why;
  auto engine = IoEngine::create(options, &why);
  if (!engine) {
    ADD_FAILURE() << "IoEngine::create: " << engine.error().describe();
    return nullptr;
  }
  if ((*engine)->backend() != backend) {
    *skip = "io_uring unavailable, fallback chosen: " + why;
    return nullptr;
  }
  return std::move(*engine);
}

// Waits on the engine until done() holds; false if it never does within the bound.
inline bool run_until(IoEngine& engine, const std::function<bool()>& done,
                      uint32_t waits_max = 100000) {
  for (uint32_t i = 0; i < waits_max; ++i) {
    if (done()) return true;
    if (engine.in_flight() == 0) return done();
    engine.wait();
  }
  return done();
}

inline std::string read_file(const std::string& path) {
  std::string out;
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return out;
  char buf[4096];
  size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  std::fclose(f);
  return out;
}

}  // namespace cardnode::storage::testing

// Declares the fixture member `engine` for a backend-parameterized suite, skipping the
// io_uring parameter where io_uring cannot run.
#define CARDNODE_SETUP_ENGINE(queue_depth)                                                     \
  do {                                                                                         \
    std::string skip_reason;                                                                   \
    engine = ::cardnode::storage::testing::make_engine(GetParam(), queue_depth, &skip_reason); \
    if (!skip_reason.empty()) GTEST_SKIP() << skip_reason;                                     \
    ASSERT_NE(engine, nullptr);                                                                \
  } while (0)
