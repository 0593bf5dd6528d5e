#include "proto/error.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace cardnode {

const char* errc_name(Errc code) {
  switch (code) {
    case Errc::kOk: return "ok";
    case Errc::kInvalidArgument: return "invalid argument";
    case Errc::kNotFound: return "not found";
    case Errc::kIo: return "io";
    case Errc::kCorruption: return "corruption";
    case Errc::kUnauthenticated: return "unauthenticated";
    case Errc::kResourceExhausted: return "resource exhausted";
    case Errc::kUnavailable: return "unavailable";
    case Errc::kInternal: return "internal";
    case Errc::kCancelled: return "cancelled";
    case Errc::kBusy: return "busy";
  }
  return "unknown";
}

std::string Error::describe() const {
  std::string out = message;
  if (sys_errno != 0) {
    out += ": ";
    // NOLINTNEXTLINE(concurrency-mt-unsafe): glibc >= 2.32 keeps strerror's text per thread
    out += std::strerror(sys_errno);
  }
  return out;
}

std::unexpected<Error> fail_errno(int sys_errno, std::string what) {
  Errc code = Errc::kIo;
  if (sys_errno == ENOENT) code = Errc::kNotFound;
  if (sys_errno == ENOSPC || sys_errno == EMFILE || sys_errno == ENFILE || sys_errno == ENOMEM)
    code = Errc::kResourceExhausted;
  if (sys_errno == EINVAL) code = Errc::kInvalidArgument;
  return std::unexpected<Error>(Error{code, std::move(what), sys_errno});
}

void check_failed(const char* expr, const char* file, int line) {
  (void)std::fprintf(stderr, "cardnode: invariant broken: %s at %s:%d\n", expr, file, line);
  std::abort();
}

}  // namespace cardnode
