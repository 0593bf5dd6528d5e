// The client subcommands and `server`. Each returns the process exit code; errors are
// printed as one line on stderr ("cardnode: ..."). Exit codes (docs/CLI.md):
// 0 success; 2 usage error, unreachable server, authentication failure; `run --wait`
// and `submit --wait` exit with the task's code (one task), 128+signal, or 0/1 for arrays.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "cardnode.pb.h"
#include "cli/parse.h"
#include "runtime/agent/agent.h"
#include "runtime/coordinator/server.h"

namespace cardnode::cli {

inline constexpr int kExitUsage = 2;

// Where a client finds the server: --server / CARDNODE_ADDR, --token-file /
// CARDNODE_TOKEN, else DIR/addr and DIR/token of --data-dir / CARDNODE_DATA_DIR / default.
// --insecure and --tls-cert/--tls-key/--tls-ca (net/channel.h) are the same for clients,
// agents and the server: both ends of a connection must agree.
struct ClientConfig {
  std::string server;
  std::string token_file;
  std::string data_dir;
  bool insecure = false;
  std::string tls_cert;
  std::string tls_key;
  std::string tls_ca;
};

std::string default_data_dir();
net::SecurityOptions security_options(const ClientConfig& cfg);

int cmd_server(runtime::ServerOptions options);
int cmd_agent(const ClientConfig& cfg, runtime::AgentOptions options);
int cmd_drain(const ClientConfig& cfg, const std::string& node, bool undrain, uint64_t deadline_ms);
int cmd_run(const ClientConfig& cfg, pb::JobSpec spec, bool wait);
int cmd_submit(const ClientConfig& cfg, const std::string& file, bool wait);
int cmd_ps(const ClientConfig& cfg, std::optional<uint64_t> job, bool json);
int cmd_logs(const ClientConfig& cfg, TaskId task, bool follow, bool stderr_stream);
int cmd_cancel(const ClientConfig& cfg, uint64_t job);
int cmd_nodes(const ClientConfig& cfg, bool json);
int cmd_fsck(const std::string& data_dir);
int cmd_salvage(const std::string& data_dir);

// The exit code of `run --wait` for a finished job (brief: "Command line").
int wait_exit_code(const pb::JobDetail& detail);

}  // namespace cardnode::cli
