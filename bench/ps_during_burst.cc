// ps_during_burst: does the server still answer while it starts and reaps a burst of tasks?
//
// One connection (made before the clock starts) sends ListJobs — what `cardnode ps` asks —
// back to back: first for --idle-calls calls on an idle server, then from the moment a
// --count-task array of --command is acknowledged until that job is final. Each call's
// round trip is one sample. Output: p50 / p99 / max of both phases and the burst's tasks/s,
// one `result` line each (machine-readable), then a sentence on stderr.
//
//   ps_during_burst --data-dir DIR [--count 2000] [--command "/bin/true"] [--idle-calls 200]
//
// --command is split at spaces ("sleep 1": tasks that leave the CPUs to the server, so what
// shows is the loop, not 2 cores shared with 1,000 starting processes).
//
// Every spawn, exit, cgroup write and log flush of the burst runs on the server's one loop
// thread: a ListJobs that waits behind them shows here as a long round trip.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "net/client.h"
#include "net/handshake.h"

namespace {

using Clock = std::chrono::steady_clock;
constexpr uint32_t kCallTimeoutMs = 60'000;
constexpr size_t kSamplesMax = 10'000'000;  // a bound on the samples kept

std::string first_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  if (line.rfind("0.0.0.0:", 0) == 0) line = "127.0.0.1:" + line.substr(8);
  return line;
}

int fail_line(const std::string& message) {
  std::fprintf(stderr, "ps_during_burst: %s\n", message.c_str());
  return 1;
}

double percentile_us(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

void print(const char* phase, const std::vector<double>& us) {
  std::printf("result phase=%s calls=%zu p50_us=%.0f p99_us=%.0f max_us=%.0f\n", phase, us.size(),
              percentile_us(us, 0.50), percentile_us(us, 0.99),
              us.empty() ? 0.0 : *std::max_element(us.begin(), us.end()));
}

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);
  CLI::App app{"ListJobs round trips while the server runs a burst of tasks", "ps_during_burst"};
  std::string data_dir, command = "/bin/true";
  uint32_t count = 2000, idle_calls = 200;
  app.add_option("--data-dir", data_dir, "A local server's data dir")->required();
  app.add_option("--count", count, "Tasks in the burst")->check(CLI::Range(1u, 1'000'000u));
  app.add_option("--command", command, "Each task's command, split at spaces")
      ->capture_default_str();
  app.add_option("--idle-calls", idle_calls, "Calls before the burst")
      ->check(CLI::Range(1u, 100'000u));
  CLI11_PARSE(app, argc, argv);
  auto token = cardnode::net::load_token(data_dir + "/token");
  if (!token) return fail_line(token.error().describe());
  auto c = cardnode::net::Client::connect(first_line(data_dir + "/addr"), *token, 5000);
  if (!c) return fail_line(c.error().describe());
  cardnode::net::Client& client = **c;

  cardnode::pb::Request list;
  list.mutable_list_jobs();
  auto timed_call = [&](std::vector<double>* us) -> cardnode::Result<cardnode::pb::Response> {
    auto t0 = Clock::now();
    auto r = client.call(list, kCallTimeoutMs);
    if (us->size() < kSamplesMax) {
      us->push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    }
    return r;
  };
  std::vector<double> idle, burst;
  for (uint32_t i = 0; i < idle_calls; ++i) {
    if (auto r = timed_call(&idle); !r) return fail_line(r.error().describe());
  }

  cardnode::pb::Request submit;
  auto* spec = submit.mutable_submit()->mutable_spec();
  spec->set_name("ps-during-burst");
  for (size_t at = 0; at < command.size();) {
    size_t end = command.find(' ', at);
    if (end == std::string::npos) end = command.size();
    if (end > at) spec->add_command(command.substr(at, end - at));
    at = end + 1;
  }
  spec->set_count(count);
  spec->set_cpu_millis(1);  // as many at once as the board's task bound allows
  spec->set_mem_bytes(1 << 20);
  auto t0 = Clock::now();
  auto acked = client.call(submit, kCallTimeoutMs);
  if (!acked) return fail_line(acked.error().describe());
  if (acked->error() != cardnode::pb::OK) return fail_line("submit: " + acked->error_message());
  const uint64_t job = acked->submitted().job_id();
  for (bool done = false; !done;) {
    auto r = timed_call(&burst);
    if (!r) return fail_line(r.error().describe());
    for (const auto& j : r->jobs().jobs()) {
      if (j.id() == job) done = j.state() >= cardnode::pb::JOB_SUCCEEDED;
    }
  }
  double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  print("idle", idle);
  print("burst", burst);
  std::printf("result phase=burst tasks=%u seconds=%.3f tasks_per_s=%.0f\n", count, secs,
              count / secs);
  std::fprintf(stderr,
               "ps_during_burst: %u tasks in %.2f s; ListJobs p99 %.1f ms idle, %.1f ms "
               "during the burst (max %.1f ms)\n",
               count, secs, percentile_us(idle, 0.99) / 1e3, percentile_us(burst, 0.99) / 1e3,
               burst.empty() ? 0.0 : *std::max_element(burst.begin(), burst.end()) / 1e3);
  return 0;
}
