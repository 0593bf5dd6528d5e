// cardnode: one binary for every role. `server` and `agent` run the pool; every other
// subcommand is a short-lived client of the server (docs/CLI.md). "__task-exec" is the
// internal entry the executor spawns for each task (runtime/executor.h).
#include <signal.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/parse.h"
#include "runtime/executor.h"

namespace {

using cardnode::cli::kExitUsage;

int usage_error(const std::string& message) {
  std::fprintf(stderr, "cardnode: %s\nRun 'cardnode --help' for usage.\n", message.c_str());
  return kExitUsage;
}

template <class T>
std::optional<T> check(cardnode::Result<T> r, std::string* error) {
  if (r) return *r;
  if (error->empty()) *error = r.error().message;
  return std::nullopt;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "__task-exec") == 0)
    return cardnode::runtime::task_exec_main(argc, argv);
  ::signal(SIGPIPE, SIG_IGN);

  CLI::App app{"cardnode: pool ARM boards into one compute cluster", "cardnode"};
  app.set_version_flag("--version", "cardnode " CARDNODE_VERSION);
  app.require_subcommand(1);
  app.fallthrough();  // client options may come before or after the subcommand
  cardnode::cli::ClientConfig client;
  app.add_option("--server", client.server, "Server address HOST:PORT (or CARDNODE_ADDR)");
  app.add_option("--token-file", client.token_file, "Cluster token file (or CARDNODE_TOKEN)");
  app.add_option("--data-dir", client.data_dir,
                 "Data directory (server), or where a client finds addr and token");

  // server
  cardnode::runtime::ServerOptions sopt;
  std::vector<std::string> server_labels;
  bool no_exec = false;
  auto* server = app.add_subcommand("server", "Run the coordinator (and execute tasks here)");
  server->add_option("--listen", sopt.listen, "Client API address")->capture_default_str();
  server->add_option("--metrics-listen", sopt.metrics_listen, "Prometheus /metrics address")
      ->capture_default_str();
  server->add_flag("--no-exec", no_exec, "Coordinate only; run no tasks on this board");
  server->add_option("--log-dir", sopt.log_dir, "Task logs (default DATA_DIR/logs), e.g. on tmpfs");
  server->add_option("--name", sopt.node_name, "This board's node name (default: hostname)");
  server->add_option("--label", server_labels, "Node label K=V (repeatable)")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);

  // run
  std::string cpu, mem, timeout, name;
  uint32_t count = 1, retries = 0, priority = 50;
  uint64_t after = 0;
  std::vector<std::string> constraints, command;
  bool wait = false;
  auto* run = app.add_subcommand("run", "Submit a job: run CMD as COUNT tasks");
  run->add_option("--cpu", cpu, "Cores per task (default 1)");
  run->add_option("--mem", mem, "Memory per task, e.g. 256M (default 128M)");
  run->add_option("--count", count, "Tasks in the array (default 1)")
      ->check(CLI::Range(1u, 1'000'000u));
  run->add_option("--retries", retries, "Extra attempts for a failed task")
      ->check(CLI::Range(0u, 100u));
  run->add_option("--timeout", timeout, "Time limit per attempt, e.g. 90s, 5m");
  run->add_option("--constraint", constraints, "Node label K=V the task needs (repeatable)")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  run->add_option("--priority", priority, "0-100, higher first (default 50)")
      ->check(CLI::Range(0u, 100u));
  run->add_option("--after", after, "Start once job AFTER succeeded");
  run->add_option("--name", name, "Job name (default: the command)");
  run->add_flag("--wait", wait, "Wait for the job and exit with its result");
  run->add_option("command", command, "-- CMD [ARG...]")->required();

  // submit
  std::string spec_file;
  bool submit_wait = false;
  auto* submit = app.add_subcommand("submit", "Submit a job spec (JobSpec in JSON)");
  submit->add_option("file", spec_file, "FILE.json")->required();
  submit->add_flag("--wait", submit_wait, "Wait for the job and exit with its result");

  // ps, logs, cancel, nodes, fsck
  std::string ps_job;
  bool json = false;
  auto* ps = app.add_subcommand("ps", "List jobs, or one job's tasks");
  ps->add_option("job", ps_job, "JOB");
  ps->add_flag("--json", json, "One JSON document on stdout");
  std::string log_task;
  bool follow = false, want_stderr = false;
  auto* logs = app.add_subcommand("logs", "Print a task's output");
  logs->add_option("task", log_task, "JOB or JOB.INDEX")->required();
  logs->add_flag("-f,--follow", follow, "Keep printing until the task ends");
  logs->add_flag("--stderr", want_stderr, "Print stderr instead of stdout");
  std::string cancel_job;
  auto* cancel =
      app.add_subcommand("cancel", "Cancel a job: queued tasks drop, running ones are killed");
  cancel->add_option("job", cancel_job, "JOB")->required();
  bool nodes_json = false;
  auto* nodes = app.add_subcommand("nodes", "List the boards in the pool");
  nodes->add_flag("--json", nodes_json, "One JSON document on stdout");
  std::string fsck_dir;
  auto* fsck = app.add_subcommand("fsck", "Check a data dir's WAL without changing it");
  fsck->add_option("data_dir", fsck_dir, "DATA_DIR")->required();

  // CLI11 reports a mistyped subcommand as a missing one; name it instead.
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--server" || a == "--token-file" || a == "--data-dir") {
      ++i;
      continue;
    }
    if (a.rfind("-", 0) == 0) continue;
    bool known = false;
    for (const CLI::App* sub : app.get_subcommands({})) known |= sub->get_name() == a;
    if (!known) return usage_error("unknown subcommand '" + a + "'");
    break;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    return usage_error(e.what());
  }

  using namespace cardnode::cli;
  std::string err;
  if (*server) {
    sopt.data_dir = client.data_dir;
    sopt.exec = !no_exec;
    for (const auto& l : server_labels)
      if (auto kv = check(parse_label(l), &err)) sopt.labels[kv->first] = kv->second;
    if (!err.empty()) return usage_error(err);
    return cmd_server(std::move(sopt));
  }
  if (*run) {
    cardnode::pb::JobSpec spec;
    for (const auto& a : command) spec.add_command(a);
    spec.set_name(name);
    spec.set_count(count);
    spec.set_retries(retries);
    spec.set_priority(priority);
    spec.set_after(after);
    if (!cpu.empty())
      if (auto v = check(parse_cpu(cpu), &err)) spec.set_cpu_millis(*v);
    if (!mem.empty())
      if (auto v = check(parse_size(mem), &err)) spec.set_mem_bytes(*v);
    if (!timeout.empty())
      if (auto v = check(parse_duration_ms(timeout), &err)) spec.set_timeout_ms(*v);
    for (const auto& c : constraints)
      if (auto kv = check(parse_label(c), &err))
        (*spec.mutable_constraints())[kv->first] = kv->second;
    if (!err.empty()) return usage_error(err);
    return cmd_run(client, std::move(spec), wait);
  }
  if (*submit) return cmd_submit(client, spec_file, submit_wait);
  if (*ps) {
    std::optional<uint64_t> job;
    if (!ps_job.empty()) job = check(parse_job_id(ps_job), &err);
    if (!err.empty()) return usage_error(err);
    return cmd_ps(client, job, json);
  }
  if (*logs) {
    auto t = check(parse_task_id(log_task), &err);
    if (!t) return usage_error(err);
    return cmd_logs(client, *t, follow, want_stderr);
  }
  if (*cancel) {
    auto j = check(parse_job_id(cancel_job), &err);
    if (!j) return usage_error(err);
    return cmd_cancel(client, *j);
  }
  if (*nodes) return cmd_nodes(client, nodes_json);
  if (*fsck) return cmd_fsck(fsck_dir);
  return usage_error("no subcommand");
}
