// Prometheus for real: Debian's `prometheus` (2.42) and `promtool` against a running pool.
// Prometheus runs as this test's own process — its own port, its own TSDB in the test's temp
// dir, a config made from deploy/prometheus.yml with the pool's metrics addresses (a server
// that runs tasks and one agent) as targets and 1 s intervals — never the system service the
// package starts. Checked: promtool finds nothing to lint in either board's scrape;
// Prometheus scrapes both, types every cardnode_* family as /metrics declares it, loads
// deploy/alerts.yml, and answers every query of deploy/grafana-dashboard.json with data once
// work has run. The alert rules' own unit tests (deploy/alerts_test.yml) run through
// `promtool test rules`.
//
// Without prometheus/promtool installed (a developer machine) the tests skip and say so;
// `make test` installs them (Makefile DEPS). Waits are bounded polls, never guessed sleeps.
#include <gtest/gtest.h>

#include <map>

#include "tests/e2e_pool.h"

namespace cardnode::e2e {
namespace {

const std::string kDeploy = std::string(CARDNODE_SOURCE_DIR) + "/deploy";

// The executable `name` on PATH, or "".
std::string on_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path != nullptr ? path : "/usr/bin:/bin");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    const std::string p = dir + "/" + name;
    if (::access(p.c_str(), X_OK) == 0) return p;
  }
  return "";
}

// Runs a tool to completion: stdin from `in` (or /dev/null), output captured in files.
Output run_tool(const std::vector<std::string>& argv, const std::string& scratch,
                const std::string& in = "/dev/null") {
  return run_program(argv, scratch, {}, in, "tool");
}

std::string url_encode(const std::string& s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

// The body of a GET, when the answer was 200.
std::string http_body(const std::string& addr, const std::string& path) {
  const std::string resp = http_get(addr, path);
  const size_t end = resp.find("\r\n\r\n");
  if (resp.rfind("HTTP/1.", 0) != 0 || resp.find(" 200 ") != 8 || end == std::string::npos) {
    return "";
  }
  return resp.substr(end + 4);
}

// The API's "data" member, or a discarded value (not ready yet, or an error).
Json api(const std::string& addr, const std::string& path) {
  const Json j = Json::parse(http_body(addr, path), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || j.value("status", "") != "success") {
    return Json(Json::value_t::discarded);
  }
  return j["data"];
}

// "# TYPE cardnode_x counter" lines of an exposition: family name -> type.
std::map<std::string, std::string> declared_types(const std::string& exposition) {
  std::map<std::string, std::string> types;
  std::istringstream in(exposition);
  for (std::string line; std::getline(in, line);) {
    std::istringstream words(line);
    std::string hash, kw, name, type;
    if (words >> hash >> kw >> name >> type && hash == "#" && kw == "TYPE" &&
        name.rfind("cardnode_", 0) == 0) {
      types[name] = type;
    }
  }
  return types;
}

// deploy/prometheus.yml with `targets` replaced and every interval and timeout at 1 s.
std::string scrape_config(const std::vector<std::string>& targets) {
  std::istringstream in(slurp(kDeploy + "/prometheus.yml"));
  std::string out;
  bool in_targets = false;
  std::string item_indent;
  for (std::string line; std::getline(in, line);) {
    const size_t indent = line.find_first_not_of(' ');
    const std::string body = indent == std::string::npos ? "" : line.substr(indent);
    if (in_targets && body.rfind("- ", 0) == 0 && indent == item_indent.size()) continue;
    in_targets = false;
    for (const char* key : {"scrape_interval:", "evaluation_interval:", "scrape_timeout:"}) {
      if (body.rfind(key, 0) == 0) line = line.substr(0, indent) + key + " 1s";
    }
    out += line + "\n";
    if (body == "- targets:") {
      in_targets = true;
      item_indent = std::string(indent + 4, ' ');
      for (const auto& t : targets) out += item_indent + "- " + t + "\n";
    }
  }
  return out;
}

// Every `expr` of the dashboard's panels (rows may nest panels).
void collect_exprs(const Json& j, std::vector<std::string>* out) {
  if (j.is_object()) {
    if (j.contains("expr") && j["expr"].is_string()) out->push_back(j["expr"]);
    for (const auto& [key, value] : j.items()) collect_exprs(value, out);
  } else if (j.is_array()) {
    for (const auto& v : j) collect_exprs(v, out);
  }
}

bool tools_missing(std::string* why) {
  for (const char* tool : {"prometheus", "promtool"}) {
    if (on_path(tool).empty()) {
      *why = std::string(tool) +
             " is not installed (apt-get install prometheus; `make test` installs it): skipped";
      return true;
    }
  }
  return false;
}

class Prometheus : public Pool {
 protected:
  void TearDown() override {
    if (prom_ > 0) {
      kill(prom_, SIGTERM);
      if (!eventually([&] { return waitpid(prom_, nullptr, WNOHANG) == prom_; }, 15s)) {
        kill(prom_, SIGKILL);
        waitpid(prom_, nullptr, 0);
      }
      prom_ = -1;
    }
    Pool::TearDown();
  }

  // Starts prometheus on a free loopback port with `config` (alerts.yml beside it) and
  // waits until it is ready. A port taken between free_port() and the bind (a parallel
  // test) makes it exit: then it tries another port.
  void start_prometheus(const std::string& config) {
    const std::string dir = root_ + "/prometheus";
    fs::create_directories(dir + "/tsdb");
    std::ofstream(dir + "/prometheus.yml") << config;
    fs::copy_file(kDeploy + "/alerts.yml", dir + "/alerts.yml",
                  fs::copy_options::overwrite_existing);
    const Output check =
        run_tool({on_path("promtool"), "check", "config", dir + "/prometheus.yml"}, root_);
    ASSERT_EQ(check.code, 0) << check.out << check.err << config;
    for (int attempt = 0; attempt < 5; ++attempt) {
      prom_addr_ = "127.0.0.1:" + std::to_string(free_port());
      const std::string log = dir + "/prometheus.log";
      prom_ = fork();
      if (prom_ == 0) {
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        const std::string bin = on_path("prometheus");
        std::vector<std::string> args{bin, "--config.file=" + dir + "/prometheus.yml",
                                      "--storage.tsdb.path=" + dir + "/tsdb",
                                      "--web.listen-address=" + prom_addr_, "--log.level=warn"};
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(a.data());
        argv.push_back(nullptr);
        execv(argv[0], argv.data());
        _exit(127);
      }
      bool exited = false;
      const bool ready = eventually(
          [&] {
            exited = exited || waitpid(prom_, nullptr, WNOHANG) == prom_;
            return exited || http_body(prom_addr_, "/-/ready").find("Ready") != std::string::npos;
          },
          30s);
      if (ready && !exited) return;
      if (!exited) {
        kill(prom_, SIGKILL);
        waitpid(prom_, nullptr, 0);
      }
      prom_ = -1;
      if (slurp(log).find("address already in use") == std::string::npos) break;
    }
    FAIL() << "prometheus did not start:\n" << slurp(dir + "/prometheus.log");
  }

  // A fake sysfs with a temperature and clear firmware flags, so the heat series exist.
  std::string warm_sysfs() {
    const std::string root = root_ + "/sysfs";
    fs::create_directories(root + "/sys/class/thermal/thermal_zone0");
    std::ofstream(root + "/sys/class/thermal/thermal_zone0/temp") << "45000\n";
    fs::create_directories(root + "/sys/devices/platform/soc/soc:firmware");
    std::ofstream(root + "/sys/devices/platform/soc/soc:firmware/get_throttled") << "0x0\n";
    return root;
  }

  pid_t prom_ = -1;
  std::string prom_addr_;
};

TEST(PrometheusRules, AlertRulesLoadAndPassTheirUnitTests) {
  std::string why;
  if (tools_missing(&why)) GTEST_SKIP() << why;
  const std::string promtool = on_path("promtool");
  const Output check = run_tool({promtool, "check", "rules", kDeploy + "/alerts.yml"}, "/tmp");
  EXPECT_EQ(check.code, 0) << check.out << check.err;
  const Output config =
      run_tool({promtool, "check", "config", kDeploy + "/prometheus.yml"}, "/tmp");
  EXPECT_EQ(config.code, 0) << config.out << config.err;
  const Output unit = run_tool({promtool, "test", "rules", kDeploy + "/alerts_test.yml"}, "/tmp");
  EXPECT_EQ(unit.code, 0) << unit.out << unit.err;
}

TEST_F(Prometheus, ScrapesEveryMetricWithItsTypeAndAnswersEveryDashboardQuery) {
  std::string why;
  if (tools_missing(&why)) GTEST_SKIP() << why;
  // A server that runs tasks and one agent, both on a warm board (their heat series exist).
  const std::string sysfs = warm_sysfs();
  start_server({}, {"CARDNODE_SYSFS_ROOT=" + sysfs});
  start_agent("a1", {}, true, {"env", "CARDNODE_SYSFS_ROOT=" + sysfs});
  ASSERT_TRUE(eventually([&] { return ready_nodes() == 2; }, 20s)) << logs();
  const std::string agent_metrics_file = agent_dir("a1") + "/metrics_addr";
  ASSERT_TRUE(eventually([&] { return fs::exists(agent_metrics_file); })) << logs();
  std::string agent_metrics = slurp(agent_metrics_file);
  agent_metrics.erase(agent_metrics.find_last_not_of('\n') + 1);

  // Work first, so every counter and histogram has moved.
  Output ok = cli({"run", "--count", "4", "--spread", "--wait", "--", "sh", "-c", "echo frame"});
  ASSERT_EQ(ok.code, 0) << ok.out << ok.err << logs();
  Output failed = cli({"run", "--wait", "--", "sh", "-c", "exit 3"});
  ASSERT_EQ(failed.code, 3) << failed.out << failed.err;

  // Two targets on one host: deploy/prometheus.yml names the instance after the host part of
  // the address, so the agent is reached as "localhost" (instance="localhost"), the server
  // as 127.0.0.1 (instance="127").
  const std::vector<std::string> targets{
      metrics_addr_, "localhost" + agent_metrics.substr(agent_metrics.rfind(':'))};

  // promtool's lint (names, units, _total, help): nothing to say about either board.
  std::map<std::string, std::string> types;
  for (const auto& target : {metrics_addr_, agent_metrics}) {
    const std::string exposition = http_body(target, "/metrics");
    ASSERT_NE(exposition, "") << target;
    const std::string file = root_ + "/scrape.txt";
    std::ofstream(file) << exposition;
    const Output lint = run_tool({on_path("promtool"), "check", "metrics"}, root_, file);
    EXPECT_EQ(lint.code, 0) << lint.out << lint.err;
    EXPECT_EQ(lint.out + lint.err, "") << target;
    const auto declared = declared_types(exposition);
    // Every board's own families, the agent's included.
    for (const char* board : {"cardnode_node_running_tasks", "cardnode_node_temperature_celsius",
                              "cardnode_storage_fsync_duration_seconds",
                              "cardnode_storage_bytes_written_total", "cardnode_build_info"}) {
      EXPECT_TRUE(declared.contains(board)) << target << " " << board;
    }
    for (const auto& [name, type] : declared) types[name] = type;
  }
  ASSERT_GE(types.size(), 20u);

  start_prometheus(scrape_config(targets));
  ASSERT_GT(prom_, 0);

  // Every target scraped, and healthy.
  ASSERT_TRUE(eventually(
      [&] {
        const Json t = api(prom_addr_, "/api/v1/targets?state=active");
        if (t.is_discarded() || t["activeTargets"].size() != targets.size()) return false;
        std::set<std::string> instances;
        for (const auto& target : t["activeTargets"]) {
          if (target["health"] != "up") return false;
          instances.insert(target["labels"].value("instance", ""));
        }
        return instances == std::set<std::string>{"127", "localhost"};
      },
      30s))
      << http_body(prom_addr_, "/api/v1/targets");

  // Every family Prometheus typed as /metrics declares it, and every sample name stored.
  Json metadata;
  ASSERT_TRUE(eventually(
      [&] {
        metadata = api(prom_addr_, "/api/v1/metadata");
        if (metadata.is_discarded()) return false;
        for (const auto& [name, type] : types) {
          if (!metadata.contains(name)) return false;
        }
        return true;
      },
      20s))
      << metadata.dump();
  for (const auto& [name, type] : types) {
    ASSERT_TRUE(metadata.contains(name)) << name;
    EXPECT_EQ(metadata[name][0].value("type", ""), type) << name;
    EXPECT_NE(metadata[name][0].value("help", ""), "") << name;
  }
  const Json series =
      api(prom_addr_, "/api/v1/series?match[]=" + url_encode("{__name__=~\"cardnode_.+\"}"));
  ASSERT_FALSE(series.is_discarded());
  std::set<std::string> stored;
  for (const auto& s : series) stored.insert(s["__name__"].get<std::string>());
  for (const auto& [name, type] : types) {
    if (type == "histogram") {
      for (const char* suffix : {"_bucket", "_sum", "_count"}) {
        EXPECT_TRUE(stored.contains(name + suffix)) << name << suffix;
      }
    } else {
      EXPECT_TRUE(stored.contains(name)) << name;
    }
  }

  // deploy/alerts.yml, loaded through prometheus.yml's rule_files, evaluates cleanly.
  Json rules;
  ASSERT_TRUE(eventually(
      [&] {
        rules = api(prom_addr_, "/api/v1/rules?type=alert");
        if (rules.is_discarded() || rules["groups"].empty()) return false;
        for (const auto& group : rules["groups"]) {
          for (const auto& rule : group["rules"]) {
            if (rule.value("health", "") != "ok") return false;
          }
        }
        return true;
      },
      20s))
      << rules.dump();
  EXPECT_EQ(rules["groups"][0]["rules"].size(), 8u);

  // Every dashboard query returns data (rate() windows fill after two scrapes).
  std::vector<std::string> exprs;
  collect_exprs(Json::parse(slurp(kDeploy + "/grafana-dashboard.json")), &exprs);
  ASSERT_GE(exprs.size(), 20u);
  for (const auto& expr : exprs) {
    Json result;
    EXPECT_TRUE(eventually(
        [&] {
          result = api(prom_addr_, "/api/v1/query?query=" + url_encode(expr));
          return !result.is_discarded() && !result["result"].empty();
        },
        20s))
        << expr << " -> " << result.dump();
  }
}

}  // namespace
}  // namespace cardnode::e2e
