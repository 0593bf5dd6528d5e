// DataDir: a server's directory and its small files, created on first start and locked
// while a process uses it (docs/ARCHITECTURE.md, "Data dir").
//
//   DATA_DIR/lock          flock: one process per data dir
//   DATA_DIR/token         the cluster token (0600), generated on first start
//   DATA_DIR/node_id       this board's identity: random, made once, kept through renames
//   DATA_DIR/addr          where the server listens (metrics_addr: its /metrics), each start
//   DATA_DIR/api.sock      the server's Unix socket for clients on this board (0600)
//   DATA_DIR/wal, snapshots   durable state (storage/local_store.h)
//   DATA_DIR/logs, work    task output (or --log-dir) and the fallback working directory
//
// The data dir itself is made 0700: it holds the token and everything tasks must not read.
// Threading: plain blocking calls, at start-up only.
#pragma once

#include <cstdint>
#include <string>

#include "proto/error.h"
#include "storage/posix.h"

namespace cardnode::runtime {

// The server's local socket in its data dir; a client with --data-dir tries it first.
inline constexpr const char* kLocalSocketName = "api.sock";

class DataDir {
 public:
  // Creates what is missing and takes the lock (kUnavailable if another process still holds
  // it after lock_wait_ms). A server makes the cluster token on first start; an agent is
  // given it (make_token false).
  //
  // Why wait at all: after a kill -9, a child forked by the dead process that has not yet
  // reached its exec still holds the lock's file (O_CLOEXEC closes it only at exec), so a
  // restart right away (systemd, a test) can find it held for a moment.
  [[nodiscard]] static Result<DataDir> open(const std::string& path, const std::string& log_dir,
                                            bool make_token = true,
                                            uint32_t lock_wait_ms = kLockWaitMsDefault);
  static constexpr uint32_t kLockWaitMsDefault = 5000;

  const std::string& path() const { return path_; }
  const std::string& token() const { return token_; }
  const std::string& node_identity() const { return node_identity_; }
  const std::string& log_dir() const { return log_dir_; }
  const std::string& work_dir() const { return work_dir_; }

  // Replaces DATA_DIR/name with content, atomically for readers (write + rename).
  [[nodiscard]] Status publish(const std::string& name, const std::string& content) const;

 private:
  std::string path_;
  std::string token_;
  std::string node_identity_;
  std::string log_dir_;
  std::string work_dir_;
  storage::UniqueFd lock_;
};

// Reads DATA_DIR/node_id, creating it (random, fsynced with its directory) when missing.
[[nodiscard]] Result<std::string> load_or_create_identity(const std::string& path);

}  // namespace cardnode::runtime
