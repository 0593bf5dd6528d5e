// submit_bench: durable submits per second through the real RPC path.
//
// N threads, each with its own net::Client connection, send SubmitJob (a one-task job of
// `true`) back to back. The server replies only once the job's WAL record is on disk
// (docs/GUARANTEES.md), so every acknowledged submit is a durable one. Point it at a
// `cardnode server --no-exec`: the jobs then stay queued and nothing runs, so what is
// measured is decode, record, fdatasync and reply.
//
// A refusal (RESOURCE_EXHAUSTED, UNAVAILABLE: a busy server) is counted and retried after
// a short backoff; its latency runs from the first attempt. Any other error ends the run
// (exit 1). Output: one `result` line on stdout (bench/durable_bench.h), a sentence on stderr.
//
//   submit_bench (--addr HOST:PORT --token-file F | --data-dir DIR) [--submitters N]
//                [--seconds S] [--count C] [--probe-rpc]
//
// --probe-rpc sends ListNodes instead, which writes nothing: the RPC path alone, to set
// beside a submit's latency.
#include <CLI/CLI.hpp>
#include <csignal>
#include <fstream>
#include <string>

#include "bench/durable_bench.h"
#include "net/client.h"
#include "net/handshake.h"

namespace {

using cardnode::bench::Attempt;
using cardnode::bench::AttemptResult;

constexpr uint32_t kConnectTimeoutMs = 5000;
constexpr uint32_t kCallTimeoutMs = 30'000;
constexpr uint32_t kSubmittersMax = 1024;  // the server admits 256 connections by default

class Submitter {
 public:
  // probe: ListNodes instead of SubmitJob, a round trip that writes nothing.
  Submitter(std::unique_ptr<cardnode::net::Client> client, std::string command, bool probe)
      : client_(std::move(client)) {
    if (probe) {
      request_.mutable_list_nodes();
      return;
    }
    auto* spec = request_.mutable_submit()->mutable_spec();
    spec->set_name("submit-bench");
    spec->add_command(std::move(command));
    spec->set_count(1);
  }

  AttemptResult attempt() {
    auto resp = client_->call(request_, kCallTimeoutMs);
    if (!resp) return std::unexpected(resp.error().describe());
    switch (resp->error()) {
      case cardnode::pb::OK: return Attempt::kAcked;
      case cardnode::pb::RESOURCE_EXHAUSTED:
      case cardnode::pb::UNAVAILABLE:
        last_refusal_ = cardnode::pb::ErrorCode_Name(resp->error()) + ": " + resp->error_message();
        return Attempt::kRefused;
      default:
        return std::unexpected("server: " + cardnode::pb::ErrorCode_Name(resp->error()) + ": " +
                               resp->error_message());
    }
  }
  const std::string& last_refusal() const { return last_refusal_; }

 private:
  std::unique_ptr<cardnode::net::Client> client_;
  cardnode::pb::Request request_;
  std::string last_refusal_;
};

std::string first_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

// A server bound to the wildcard address is reached on loopback.
std::string connectable(std::string addr) {
  if (addr.rfind("0.0.0.0:", 0) == 0) return "127.0.0.1:" + addr.substr(8);
  if (addr.rfind("[::]:", 0) == 0) return "[::1]:" + addr.substr(5);
  return addr;
}

int fail_line(const std::string& message) {
  std::fprintf(stderr, "submit_bench: %s\n", message.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);
  CLI::App app{"Durable submits per second through cardnode's RPC path", "submit_bench"};
  std::string addr, token_file, data_dir, command = "true";
  cardnode::bench::RunOptions o;
  app.add_option("--addr", addr, "Server address HOST:PORT (default: DATA_DIR/addr)");
  app.add_option("--token-file", token_file, "Cluster token file (default: DATA_DIR/token)");
  app.add_option("--data-dir", data_dir, "A local server's data dir: reads addr and token");
  app.add_option("--submitters", o.writers, "Concurrent submitters, one connection each")
      ->check(CLI::Range(1u, kSubmittersMax))
      ->capture_default_str();
  auto* secs = app.add_option("--seconds", o.seconds,
                              "Run this long (default 10; with --count alone: no limit)")
                   ->check(CLI::PositiveNumber);
  app.add_option("--count", o.count,
                 "Submit at most this many jobs in all (stops at whichever comes first)")
      ->check(CLI::PositiveNumber);
  app.add_option("--command", command, "The one-word command of each job")->capture_default_str();
  bool probe = false;
  app.add_flag("--probe-rpc", probe,
               "Send ListNodes instead: the RPC round trip alone, with no disk write");
  app.add_option("--refused-for-max-ms", o.refused_for_max_ms,
                 "Give up when one submit is refused this long")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (o.count != 0 && secs->count() == 0) o.seconds = 0;

  if (addr.empty() && !data_dir.empty()) addr = first_line(data_dir + "/addr");
  if (token_file.empty() && !data_dir.empty()) token_file = data_dir + "/token";
  if (addr.empty() || token_file.empty())
    return fail_line("need --addr and --token-file, or --data-dir of a running server");
  auto token = cardnode::net::load_token(token_file);
  if (!token) return fail_line(token.error().describe());

  // Connect and handshake before the clock starts: a submit is what is measured.
  std::vector<std::unique_ptr<Submitter>> submitters;
  for (uint32_t i = 0; i < o.writers; ++i) {
    auto c = cardnode::net::Client::connect(connectable(addr), *token, kConnectTimeoutMs);
    if (!c) return fail_line("connection " + std::to_string(i) + ": " + c.error().describe());
    submitters.push_back(std::make_unique<Submitter>(std::move(*c), command, probe));
  }
  auto result = cardnode::bench::run_writers(probe ? "cardnode-rpc" : "cardnode", o, submitters);
  if (!result) return fail_line(result.error());
  cardnode::bench::print_result(*result, probe ? "ListNodes round trips" : "durable submits");
  return 0;
}
