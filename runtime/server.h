// Server: the coordinator process (`cardnode server`). Owns the event loop and, driven
// from it, the WAL, the cluster state, the client API, the local executor and the
// metrics exposer. Every state change follows one path (docs/ARCHITECTURE.md):
//
//   event -> WAL record -> State::apply -> side effects (reply, spawn, kill)
//
// with one rule about order: nothing a client or a process can observe happens before
// the record that causes it is fsynced. Placements are applied at once (so capacity is
// reserved) but spawned only once durable; submits and cancels are applied once durable.
//
// Threading: run() owns the calling thread; the exposer keeps its own threads.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "proto/error.h"

namespace cardnode::runtime {

struct ServerOptions {
  std::string data_dir;
  std::string listen = "0.0.0.0:7420";
  std::string metrics_listen = "0.0.0.0:9742";
  std::string log_dir;    // empty: DATA_DIR/logs
  bool exec = true;       // false: --no-exec, coordinate only
  std::string node_name;  // empty: the hostname
  std::map<std::string, std::string> labels;
  std::string task_exec_program;  // empty: this binary (/proc/self/exe)
  bool disable_cgroups = false;   // rlimits only (CARDNODE_NO_CGROUPS=1)
};

class Server {
 public:
  // Opens (creating if needed) the data dir, token and lock, replays the WAL, and binds
  // both listeners. Errors are for the operator: one line, then exit 1.
  [[nodiscard]] static Result<std::unique_ptr<Server>> open(ServerOptions options);
  ~Server();

  // Serves until SIGINT or SIGTERM (clean stop: tasks killed, WAL drained) or a storage
  // failure. Returns the process exit code.
  int run();

  struct Impl;

 private:
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace cardnode::runtime
