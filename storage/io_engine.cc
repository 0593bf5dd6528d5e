#include "storage/io_engine.h"

#include <cstdlib>
#include <string_view>

#include "storage/engines.h"

namespace cardnode::storage {

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
