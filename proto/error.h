// Errors are values. Every fallible call across a module boundary returns
// Result<T> (= std::expected<T, Error>); nothing throws across a module boundary.
//
// Crash policy (docs/ARCHITECTURE.md, "Errors"): what the outside world can do —
// untrusted bytes, ENOSPC, EIO, ECONNRESET, a vanished board — is an Error that is
// handled and counted. A broken invariant of our own is a bug: CARDNODE_CHECK aborts.
//
// Errc values are sized and stable: they travel on the wire (pb::ErrorCode mirrors them).
#pragma once

#include <cstdint>
#include <expected>
#include <string>
#include <utility>

namespace cardnode {

enum class Errc : uint8_t {
  kOk = 0,
  kInvalidArgument = 1,
  kNotFound = 2,
  kIo = 3,
  kCorruption = 4,
  kUnauthenticated = 5,
  kResourceExhausted = 6,
  kUnavailable = 7,
  kInternal = 8,
  kCancelled = 9,
  kBusy = 10,  // refused for now under load (a full WAL queue): nothing changed, retry
};

struct Error {
  Errc code = Errc::kInternal;
  std::string message;
  int sys_errno = 0;  // errno (positive) when the cause was a system call

  std::string describe() const;  // "io: write wal/00001.wal: No space left on device"
};

template <class T>
using Result = std::expected<T, Error>;
using Status = Result<void>;

[[nodiscard]] inline std::unexpected<Error> fail(Errc code, std::string message,
                                                 int sys_errno = 0) {
  return std::unexpected<Error>(Error{code, std::move(message), sys_errno});
}
// For a failed system call: fail_errno(errno, "open " + path).
[[nodiscard]] std::unexpected<Error> fail_errno(int sys_errno, std::string what);

const char* errc_name(Errc code);

[[noreturn]] void check_failed(const char* expr, const char* file, int line);

}  // namespace cardnode

// Invariant check, kept in release builds: the cost is a compare, the benefit is
// never running on with corrupt state.
#define CARDNODE_CHECK(expr) \
  ((expr) ? (void)0 : ::cardnode::check_failed(#expr, __FILE__, __LINE__))
