// cardnode: one binary for every role. `server` runs the pool and `agent` runs a board's
// tasks for it; every other subcommand is a short-lived client of the server, except `fsck`,
// which reads a data dir (docs/CLI.md).
//
// Each subcommand is one add_*() below: it declares its options and returns what runs it.
#include <signal.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cli/commands.h"
#include "cli/parse.h"
#include "proto/text.h"
#include "runtime/exec/executor.h"

namespace {

// --task-user, --allow-root-tasks, --allow-task-user: the server's board and an agent's.
void add_task_user_flags(CLI::App* sub, cardnode::runtime::TaskUserOptions* o) {
  sub->add_option("--task-user", o->user,
                  "Run tasks as USER when run as root (default cardnode-task, else nobody)");
  sub->add_flag("--allow-root-tasks", o->allow_root, "Let tasks run as root (shown in `nodes`)");
  sub->add_option("--allow-task-user", o->allowed,
                  "A user a job may ask for with `run --user` (repeatable)")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
}

// --no-favordynmods: the server's board and an agent's (runtime/exec/cgroup_mode.h). On
// unless given: the options' own default is off, for library users (tests).
void add_dynmods_flag(CLI::App* sub, bool* favor) {
  *favor = true;
  sub->add_flag_function(
      "--no-favordynmods", [favor](int64_t) { *favor = false; },
      "Leave cgroup2's favordynmods mount option as it is (by default it is turned on, "
      "host-wide: an idle board's task start then skips a kernel RCU grace period)");
}

using namespace cardnode::cli;
using cardnode::Result;

// `cardnode SUB --help` ends with how it is used.
void add_example(CLI::App* sub, std::initializer_list<const char*> examples) {
  std::string text = examples.size() == 1 ? "Example:" : "Examples:";
  for (const char* e : examples) text.append("\n  ").append(e);
  sub->footer(text);
}

int usage_error(const std::string& message) {
  // One line (docs/CLI.md). Best effort: the exit code says it too.
  // shown(): the message may quote what was typed, control characters included.
  (void)std::fprintf(stderr, "cardnode: %s (see cardnode --help)\n",
                     cardnode::shown(message).c_str());
  return kExitUsage;
}

// The first parse error wins; later values are left unset.
template <class T>
std::optional<T> check(Result<T> r, std::string* error) {
  if (r) return *r;
  if (error->empty()) *error = r.error().message;
  return std::nullopt;
}

struct Entry {
  CLI::App* app;
  std::function<int()> run;
  // Where the words after `--` go, verbatim (`run`); nullptr: the subcommand takes none.
  std::vector<std::string>* after_dashes = nullptr;
};

Entry add_server(CLI::App& app, const ClientConfig& client) {
  struct Args {
    cardnode::runtime::ServerOptions options;
    std::vector<std::string> labels;
    bool no_exec = false;
    std::string keep_for = "7d";
    std::string snapshot_bytes = "8M";
    std::string heartbeat = "1s";
    std::string grace = "10s";
    double hot_celsius = 80;
    double cool_margin = 5;
  };
  auto a = std::make_shared<Args>();
  auto* sub = app.add_subcommand("server", "Run the coordinator (and execute tasks here)");
  add_example(sub, {"cardnode server --data-dir /var/lib/cardnode --listen 0.0.0.0:7420"});
  sub->add_option("--listen", a->options.listen, "Client API address")->capture_default_str();
  sub->add_option("--metrics-listen", a->options.metrics_listen,
                  "Prometheus /metrics address; also serves the status page at /")
      ->capture_default_str();
  sub->add_flag(
      "--no-status-page", [a](int64_t) { a->options.status_page = false; },
      "Serve only /metrics on --metrics-listen (no status page)");
  sub->add_flag("--status-logs", a->options.status_logs,
                "Show jobs' commands and task log tails on the status page even when "
                "--metrics-listen is not a loopback address (they may hold secrets)");
  sub->add_option("--status-host", a->options.status_hosts,
                  "A Host name the status page answers to besides IP addresses, localhost and "
                  "this hostname (repeatable; guards against DNS rebinding)")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  sub->add_flag("--no-exec", a->no_exec, "Coordinate only; run no tasks on this board");
  sub->add_option("--log-dir", a->options.log_dir,
                  "Task logs (default DATA_DIR/logs), e.g. on tmpfs");
  sub->add_option("--name", a->options.node_name, "This board's node name (default: hostname)");
  sub->add_option("--label", a->labels, "Node label K=V (repeatable)")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  sub->add_option("--keep-finished", a->options.keep_finished,
                  "Finished jobs kept in memory and snapshots (default 10000)")
      ->check(CLI::Range(0u, 100'000'000u));
  sub->add_option("--keep-finished-for", a->keep_for,
                  "And for at most this long, e.g. 7d, 12h (default 7d)");
  sub->add_option("--snapshot-wal-bytes", a->snapshot_bytes,
                  "Snapshot once the WAL since the last one passes this (default 8M)");
  sub->add_option("--heartbeat", a->heartbeat, "Agents' heartbeat interval (default 1s)");
  sub->add_option("--grace", a->grace,
                  "Silence after which an agent's node is down and its tasks lost (default 10s)");
  sub->add_option("--hot-celsius", a->hot_celsius,
                  "A board above this, or throttled or under-voltage, gets no new tasks "
                  "(default 80)")
      ->check(CLI::Range(0.0, 150.0));
  sub->add_option("--cool-margin", a->cool_margin,
                  "... until it has cooled this many degrees below --hot-celsius (default 5)")
      ->check(CLI::Range(0.0, 50.0));
  add_task_user_flags(sub, &a->options.task_users);
  add_dynmods_flag(sub, &a->options.favor_dynmods);
  return {sub, [a, &client] {
            std::string err;
            a->options.data_dir = client.data_dir;
            a->options.security = cardnode::cli::security_options(client);
            a->options.exec = !a->no_exec;
            for (const auto& l : a->labels) {
              if (auto kv = check(parse_label(l), &err)) a->options.labels[kv->first] = kv->second;
            }
            if (auto v = check(parse_duration_ms(a->keep_for), &err)) {
              a->options.keep_finished_for_ms = *v;
            }
            if (auto v = check(parse_size(a->snapshot_bytes), &err)) {
              a->options.snapshot_wal_bytes = *v;
            }
            if (auto v = check(parse_duration_ms(a->heartbeat), &err)) a->options.heartbeat_ms = *v;
            if (auto v = check(parse_duration_ms(a->grace), &err)) a->options.grace_ms = *v;
            if (err.empty() && (a->options.heartbeat_ms < 10 || a->options.heartbeat_ms > 60'000)) {
              err = "--heartbeat must be between 10ms and 60s";
            }
            if (err.empty() && a->options.grace_ms < 2 * a->options.heartbeat_ms) {
              err = "--grace must be at least two heartbeats";
            }
            // Both in range (checked above): the millidegrees fit an int32.
            a->options.hot_millicelsius =
                static_cast<int32_t>(round_half_away(a->hot_celsius * 1000));
            a->options.cool_margin_millicelsius =
                static_cast<int32_t>(round_half_away(a->cool_margin * 1000));
            if (!err.empty()) return usage_error(err);
            return cmd_server(std::move(a->options));
          }};
}

Entry add_agent(CLI::App& app, const ClientConfig& client) {
  struct Args {
    cardnode::runtime::AgentOptions options;
    std::vector<std::string> labels;
    uint32_t tasks_max = 1024;
  };
  auto a = std::make_shared<Args>();
  auto* sub = app.add_subcommand("agent", "Run tasks on this board for the server at --join");
  add_example(
      sub, {"cardnode agent --join pi-1:7420 --token-file /etc/cardnode/token --label camera=yes"});
  sub->add_option("--join", a->options.join, "The server's address HOST:PORT")->required();
  sub->add_option("--log-dir", a->options.log_dir,
                  "Task logs (default DATA_DIR/logs), e.g. on tmpfs");
  sub->add_option("--name", a->options.node_name, "This board's node name (default: hostname)");
  sub->add_option("--label", a->labels, "Node label K=V (repeatable)")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  sub->add_option("--tasks-max", a->tasks_max, "Tasks this board runs at once (default 1024)")
      ->check(CLI::Range(1u, 1024u));
  a->options.metrics_listen = "0.0.0.0:9742";
  sub->add_option("--metrics-listen", a->options.metrics_listen,
                  "This board's Prometheus /metrics address")
      ->capture_default_str();
  add_task_user_flags(sub, &a->options.task_users);
  add_dynmods_flag(sub, &a->options.favor_dynmods);
  return {sub, [a, &client, sub] {
            std::string err;
            a->options.tasks_max = a->tasks_max;
            a->options.metrics_listen_default = sub->count("--metrics-listen") == 0;
            for (const auto& l : a->labels) {
              if (auto kv = check(parse_label(l), &err)) a->options.labels[kv->first] = kv->second;
            }
            if (!err.empty()) return usage_error(err);
            return cmd_agent(client, std::move(a->options));
          }};
}

Entry add_drain(CLI::App& app, const ClientConfig& client) {
  struct Args {
    std::string node, deadline;
    bool undrain = false;
  };
  auto a = std::make_shared<Args>();
  auto* sub = app.add_subcommand(
      "drain", "Stop placing tasks on NODE; running ones finish (or stop after --deadline)");
  add_example(sub, {"cardnode drain pi-3 --deadline 5m"});
  sub->add_option("node", a->node, "NODE")->required();
  sub->add_option("--deadline", a->deadline,
                  "Stop what still runs after this long and requeue it, e.g. 5m");
  sub->add_flag("--undrain", a->undrain, "Place tasks on NODE again");
  return {sub, [a, &client] {
            uint64_t deadline_ms = 0;
            if (!a->deadline.empty()) {
              if (a->undrain) return usage_error("--deadline makes no sense with --undrain");
              auto v = parse_duration_ms(a->deadline);
              if (!v) return usage_error(v.error().message);
              if (*v == 0) return usage_error("--deadline must be above zero");
              deadline_ms = *v;
            }
            return cmd_drain(client, a->node, a->undrain, deadline_ms);
          }};
}

Entry add_run(CLI::App& app, const ClientConfig& client) {
  struct Args {
    std::string cpu, mem, timeout, name, user;
    uint32_t count = 1, retries = 0, priority = 50;
    uint64_t after = 0;
    std::vector<std::string> constraints, env, command;
    bool wait = false, spread = false;
  };
  auto a = std::make_shared<Args>();
  auto* sub = app.add_subcommand("run", "Submit a job: run CMD as COUNT tasks");
  add_example(sub, {"cardnode run --count 500 --cpu 0.5 -- ./render.sh",
                    "cardnode run --mem 256M --timeout 5m --wait -- python3 crunch.py"});
  sub->add_option("--cpu", a->cpu, "Cores per task (default 1)");
  sub->add_option("--mem", a->mem, "Memory per task, e.g. 256M (default 128M)");
  sub->add_option("--count", a->count, "Tasks in the array (default 1)")
      ->check(CLI::Range(1u, 1'000'000u));
  sub->add_option("--retries", a->retries, "Extra attempts for a failed task")
      ->check(CLI::Range(0u, 100u));
  sub->add_option("--timeout", a->timeout, "Time limit per attempt, e.g. 90s, 5m");
  sub->add_option("--constraint", a->constraints, "Node label K=V the task needs (repeatable)")
      ->expected(1)
      ->allow_extra_args(false)  // one value each: `run --env A=1 sh -c X` must not eat sh
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  sub->add_option("--env", a->env, "Environment variable NAME=VALUE for the tasks (repeatable)")
      ->expected(1)
      ->allow_extra_args(false)  // one value each: `run --env A=1 sh -c X` must not eat sh
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  sub->add_option("--priority", a->priority, "0-100, higher first (default 50)")
      ->check(CLI::Range(0u, 100u));
  sub->add_option("--after", a->after, "Start once job AFTER succeeded");
  sub->add_option("--name", a->name, "Job name (default: the command)");
  sub->add_option("--user", a->user,
                  "Run the tasks as USER (boards must allow it: --allow-task-user)");
  sub->add_flag("--spread", a->spread,
                "One task per board first (default: fill the fullest board that fits)");
  sub->add_flag("--wait", a->wait,
                "Wait for the job and exit with its result (one task: show its output too)");
  // Without `--` the command's words are CLI11's positionals; main() hands over what
  // follows `--` itself, since CLI11 (2.1) would split an argument written "[a,b]" into
  // a and b and drop "[]" (`sh -c '[ -f x ]'` must reach the task as it was typed).
  sub->add_option("command", a->command, "-- CMD [ARG...]");
  return {sub,
          [a, &client] {
            std::string err;
            if (a->command.empty()) return usage_error("run needs a command: run [OPTIONS] -- CMD");
            cardnode::pb::JobSpec spec;
            for (const auto& arg : a->command) spec.add_command(arg);
            spec.set_name(a->name);
            spec.set_user(a->user);
            spec.set_count(a->count);
            spec.set_retries(a->retries);
            spec.set_priority(a->priority);
            spec.set_after(a->after);
            spec.set_spread(a->spread);
            if (!a->cpu.empty()) {
              if (auto v = check(parse_cpu(a->cpu), &err)) spec.set_cpu_millis(*v);
            }
            if (!a->mem.empty()) {
              if (auto v = check(parse_size(a->mem), &err)) spec.set_mem_bytes(*v);
            }
            if (!a->timeout.empty()) {
              if (auto v = check(parse_duration_ms(a->timeout), &err)) spec.set_timeout_ms(*v);
            }
            for (const auto& c : a->constraints) {
              if (auto kv = check(parse_label(c), &err)) {
                (*spec.mutable_constraints())[kv->first] = kv->second;
              }
            }
            for (const auto& e : a->env) {
              // The value is bytes, taken as it is; the name is checked before sending.
              const size_t eq = e.find('=');
              if (eq == std::string::npos) {
                if (err.empty())
                  err = "bad --env '" + cardnode::shown(e) + "': expected NAME=VALUE";
              } else {
                (*spec.mutable_env())[e.substr(0, eq)] = e.substr(eq + 1);
              }
            }
            if (!err.empty()) return usage_error(err);
            return cmd_run(client, std::move(spec), a->wait);
          },
          &a->command};
}

Entry add_submit(CLI::App& app, const ClientConfig& client) {
  struct Args {
    std::string file;
    bool wait = false;
  };
  auto a = std::make_shared<Args>();
  auto* sub = app.add_subcommand("submit", "Submit a job spec (JobSpec in JSON)");
  add_example(sub, {"cardnode submit job.json --wait"});
  sub->add_option("file", a->file, "FILE.json")->required();
  sub->add_flag("--wait", a->wait,
                "Wait for the job and exit with its result (one task: show its output too)");
  return {sub, [a, &client] { return cmd_submit(client, a->file, a->wait); }};
}

Entry add_ps(CLI::App& app, const ClientConfig& client) {
  struct Args {
    std::string job;
    bool json = false;
  };
  auto a = std::make_shared<Args>();
  auto* sub = app.add_subcommand("ps", "List jobs, or one job's tasks");
  add_example(sub, {"cardnode ps", "cardnode ps 7 --json"});
  sub->add_option("job", a->job, "JOB");
  sub->add_flag("--json", a->json, "One JSON document on stdout");
  return {sub, [a, &client] {
            std::string err;
            std::optional<uint64_t> job;
            if (!a->job.empty()) job = check(parse_job_id(a->job), &err);
            if (!err.empty()) return usage_error(err);
            return cmd_ps(client, job, a->json);
          }};
}

Entry add_logs(CLI::App& app, const ClientConfig& client) {
  struct Args {
    std::string task;
    bool follow = false, want_stderr = false;
  };
  auto a = std::make_shared<Args>();
  auto* sub = app.add_subcommand("logs", "Print a task's output");
  add_example(sub, {"cardnode logs 7.3 -f"});
  sub->add_option("task", a->task, "JOB or JOB.INDEX")->required();
  sub->add_flag("-f,--follow", a->follow, "Keep printing until the task ends");
  sub->add_flag("--stderr", a->want_stderr, "Print stderr instead of stdout");
  return {sub, [a, &client] {
            std::string err;
            auto t = check(parse_task_id(a->task), &err);
            if (!t) return usage_error(err);
            return cmd_logs(client, *t, a->follow, a->want_stderr);
          }};
}

Entry add_cancel(CLI::App& app, const ClientConfig& client) {
  auto job = std::make_shared<std::string>();
  auto* sub =
      app.add_subcommand("cancel", "Cancel a job: queued tasks drop, running ones are killed");
  add_example(sub, {"cardnode cancel 7"});
  sub->add_option("job", *job, "JOB")->required();
  return {sub, [job, &client] {
            std::string err;
            auto j = check(parse_job_id(*job), &err);
            if (!j) return usage_error(err);
            return cmd_cancel(client, *j);
          }};
}

Entry add_nodes(CLI::App& app, const ClientConfig& client) {
  auto json = std::make_shared<bool>(false);
  auto* sub = app.add_subcommand("nodes", "List the boards in the pool");
  add_example(sub, {"cardnode nodes --json"});
  sub->add_flag("--json", *json, "One JSON document on stdout");
  return {sub, [json, &client] { return cmd_nodes(client, *json); }};
}

Entry add_fsck(CLI::App& app, const ClientConfig&) {
  struct Args {
    std::string dir;
    bool salvage = false;
  };
  auto a = std::make_shared<Args>();
  auto* sub = app.add_subcommand(
      "fsck", "Check a data dir's snapshots and WAL without changing them (exit 1 if damaged)");
  add_example(sub, {"cardnode fsck /var/lib/cardnode"});
  sub->add_option("data_dir", a->dir, "DATA_DIR")->required();
  sub->add_flag("--salvage", a->salvage,
                "Keep every record before the first damage, move the rest aside (never deleted)");
  return {sub, [a] { return a->salvage ? cmd_salvage(a->dir) : cmd_fsck(a->dir); }};
}

using AddSubcommand = Entry (*)(CLI::App&, const ClientConfig&);
struct Subcommand {
  std::string_view name;
  AddSubcommand add;
};
constexpr std::array<Subcommand, 10> kSubcommands = {{
    {"server", add_server},
    {"agent", add_agent},
    {"run", add_run},
    {"submit", add_submit},
    {"ps", add_ps},
    {"logs", add_logs},
    {"cancel", add_cancel},
    {"nodes", add_nodes},
    {"drain", add_drain},
    {"fsck", add_fsck},
}};

// The first word that is neither an option nor a client option's value: the subcommand.
std::optional<std::string_view> first_word(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a == "--server" || a == "--token-file" || a == "--data-dir" || a == "--tls-cert" ||
        a == "--tls-key" || a == "--tls-ca") {
      ++i;
      continue;
    }
    if (a.starts_with("-")) continue;
    return a;
  }
  return std::nullopt;
}

bool asks_for_help(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a == "--") return false;
    if (a == "-h" || a == "--help" || a == "--version") return true;
  }
  return false;
}

}  // namespace

// What escapes (std::bad_alloc, a bug) ends the process through std::terminate, on purpose.
int main(int argc, char** argv) {    // NOLINT(bugprone-exception-escape)
  (void)::signal(SIGPIPE, SIG_IGN);  // fails only for an invalid signal number

  CLI::App app{"cardnode: pool ARM boards into one compute cluster", "cardnode"};
  app.set_version_flag("--version", "cardnode " CARDNODE_VERSION);
  app.require_subcommand(1);
  app.fallthrough();  // client options may come before or after the subcommand
  ClientConfig client;
  app.add_option("--server", client.server, "Server address HOST:PORT (or CARDNODE_ADDR)");
  app.add_option("--token-file", client.token_file, "Cluster token file (or CARDNODE_TOKEN)");
  app.add_option("--data-dir", client.data_dir,
                 "Data directory (server), or where a client finds addr and token");
  app.add_flag("--insecure", client.insecure,
               "Plaintext connections after the token handshake (server, agents and clients "
               "alike); anyone on the path can read and rewrite them");
  app.add_option("--tls-cert", client.tls_cert,
                 "Certificate mode: this process's certificate (PEM), with --tls-key and --tls-ca");
  app.add_option("--tls-key", client.tls_key, "Certificate mode: its private key (PEM)");
  app.add_option("--tls-ca", client.tls_ca,
                 "Certificate mode: the CA whose certificates are the cluster's members");

  // A call names one subcommand, and only its options are declared: declaring all ten
  // subcommands' ~70 options was ~5% of a short CLI call. Help and --version get all.
  const Subcommand* named = nullptr;
  if (auto word = first_word(argc, argv)) {
    for (const Subcommand& s : kSubcommands) {
      if (s.name == *word) named = &s;
    }
    // CLI11 would report a mistyped subcommand as a missing one; name it instead.
    if (named == nullptr) return usage_error("unknown subcommand '" + std::string(*word) + "'");
  }
  const bool all = named == nullptr || asks_for_help(argc, argv);
  std::vector<Entry> entries;
  for (const Subcommand& s : kSubcommands) {
    if (all || &s == named) entries.push_back(s.add(app, client));
  }
  // For a subcommand that takes a command (run), CLI11 sees the words before the first
  // `--` and the rest goes to it as typed; the others give `--` to CLI11, where it ends
  // the options as usual (`fsck -- DIR`).
  int parse_argc = argc;
  std::vector<std::string> after_dashes;
  const bool takes_command = std::any_of(entries.begin(), entries.end(),
                                         [](const Entry& e) { return e.after_dashes != nullptr; });
  for (int i = 1; takes_command && i < argc; ++i) {
    if (std::string_view(argv[i]) == "--") {
      parse_argc = i;
      after_dashes.assign(argv + i + 1, argv + argc);
      break;
    }
  }
  try {
    app.parse(parse_argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    return usage_error(e.what());
  }
  for (const Entry& e : entries) {
    if (!*e.app) continue;
    if (e.after_dashes != nullptr) {
      e.after_dashes->insert(e.after_dashes->end(), after_dashes.begin(), after_dashes.end());
    }
    return e.run();
  }
  return usage_error("no subcommand");
}
