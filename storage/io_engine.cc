#include "storage/io_engine.h"

#include <time.h>

#include <cstdlib>
#include <string_view>

#include "storage/engines.h"

namespace cardnode::storage {

uint64_t monotonic_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000U + static_cast<uint64_t>(ts.tv_nsec);
}

void IoStats::note_fsync_latency(uint64_t ns) {
  const double seconds = static_cast<double>(ns) / 1e9;
  size_t b = 0;
  while (b < kFsyncBucketsSeconds.size() && seconds > kFsyncBucketsSeconds[b]) ++b;
  ++fsync_buckets[b];
  fsync_ns_sum += ns;
}

const char* backend_name(Backend b) {
  switch (b) {
    case Backend::kIoUring: return "io_uring";
    case Backend::kFallback: return "fallback";
  }
  return "unknown";
}

namespace {

bool fallback_forced_by_env() {
  const char* env = std::getenv("CARDNODE_IO_BACKEND");
  return env != nullptr && std::string_view(env) == "fallback";
}

}  // namespace

Result<std::unique_ptr<IoEngine>> IoEngine::create(const IoOptions& options,
                                                   std::string* why_fallback) {
  if (options.queue_depth == 0) return fail(Errc::kInvalidArgument, "io queue_depth is 0");
  std::string why;
  if (options.force_fallback) {
    why = "forced by IoOptions::force_fallback";
  } else if (fallback_forced_by_env()) {
    why = "forced by CARDNODE_IO_BACKEND";
  } else {
    auto uring = make_uring_engine(options);
    if (uring) return uring;
    why = uring.error().describe();
  }
  if (why_fallback != nullptr) *why_fallback = why;
  return make_fallback_engine(options);
}

}  // namespace cardnode::storage
