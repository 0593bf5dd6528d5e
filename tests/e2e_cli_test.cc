// End-to-end: what a person sees of the CLI — progress of `run --wait`, durations in `ps`,
// load in `nodes`, examples in `--help`, bash completion (docs/CLI.md).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "tests/e2e_util.h"

namespace cardnode::e2e {
namespace {

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

TEST_F(Cluster, RunWaitOfAnArrayPrintsPlainProgressLinesWhenStderrIsNotATerminal) {
  start_server();
  // stderr is a pipe here: plain lines, no carriage returns.
  const auto began = std::chrono::steady_clock::now();
  Output ok = cli({"run", "--count", "20", "--cpu", "0.1", "--mem", "16M", "--wait", "--", "true"});
  const auto took_s =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - began)
          .count();
  EXPECT_EQ(ok.code, 0) << ok.err;
  EXPECT_EQ(ok.out, "");
  EXPECT_EQ(ok.err.find('\r'), std::string::npos) << ok.err;
  const auto lines = lines_of(ok.err);
  ASSERT_GE(lines.size(), 3u) << ok.err;
  EXPECT_EQ(lines.front(), "cardnode: job 1 submitted, waiting");
  // The last progress line before today's outcome line: every task done, ETA 0.
  const std::string& last = lines[lines.size() - 2];
  EXPECT_TRUE(last.starts_with("cardnode: job 1: 20/20 done, ")) << ok.err;
  EXPECT_NE(last.find("tasks/s, elapsed "), std::string::npos) << ok.err;
  EXPECT_NE(last.find(", ETA 0.0s (succeeded:20)"), std::string::npos) << ok.err;
  EXPECT_EQ(lines.back(), "cardnode: job 1 succeeded (succeeded:20)");
  // Paced: at most one line per 5 s, and the last.
  int64_t progress = 0;
  for (const auto& l : lines) progress += l.starts_with("cardnode: job 1: ") ? 1 : 0;
  EXPECT_GE(progress, 1);
  EXPECT_LE(progress, 1 + took_s / 5) << ok.err;

  // An array with a failure: exit code 1, as before.
  Output bad = cli({"run", "--count", "3", "--cpu", "0.1", "--mem", "16M", "--wait", "--", "sh",
                    "-c", "exit $CARDNODE_TASK_INDEX"});
  EXPECT_EQ(bad.code, 1) << bad.err;
  EXPECT_NE(bad.err.find("cardnode: job 2: 3/3 done, "), std::string::npos) << bad.err;
  EXPECT_NE(bad.err.find("cardnode: job 2 failed (succeeded:1 failed:2)"), std::string::npos)
      << bad.err;
  // One task: no progress line, its exit code.
  Output one = cli({"run", "--wait", "--", "sh", "-c", "exit 4"});
  EXPECT_EQ(one.code, 4);
  EXPECT_EQ(one.err.find("done, "), std::string::npos) << one.err;
}

TEST_F(Cluster, PsShowsHowLongAJobRanAndNodesTheBoardsLoad) {
  // The board's load, read with its heat under CARDNODE_SYSFS_ROOT: a fake /proc/loadavg.
  const std::string sysfs = root_ + "/sysfs";
  fs::create_directories(sysfs + "/proc");
  std::ofstream(sysfs + "/proc/loadavg") << "1.25 0.50 0.10 2/300 4242\n";
  start_server({}, {"CARDNODE_SYSFS_ROOT=" + sysfs});
  ASSERT_EQ(cli({"run", "--wait", "--", "true"}).code, 0);
  Json one = json_of(cli({"ps", "1", "--json"}));
  ASSERT_TRUE(one.contains("submitted_ms")) << one.dump();
  ASSERT_TRUE(one.contains("finished_ms")) << one.dump();
  EXPECT_GE(one["finished_ms"].get<uint64_t>(), one["submitted_ms"].get<uint64_t>());
  EXPECT_EQ(one["elapsed_ms"].get<uint64_t>(),
            one["finished_ms"].get<uint64_t>() - one["submitted_ms"].get<uint64_t>());
  Json list = json_of(cli({"ps", "--json"}));
  ASSERT_EQ(list["jobs"].size(), 1u);
  EXPECT_EQ(list["jobs"][0]["elapsed_ms"], one["elapsed_ms"]);
  const std::string table = cli({"ps"}).out;
  EXPECT_NE(table.find(" ELAPSED "), std::string::npos) << table;
  EXPECT_NE(table.find("s  true"), std::string::npos) << table;  // e.g. "0.1s  true"

  Json nodes;
  ASSERT_TRUE(eventually([&] {
    nodes = try_json(cli({"nodes", "--json"}));
    return !nodes.is_discarded() && nodes.contains("nodes") && !nodes["nodes"].empty() &&
           nodes["nodes"][0].contains("load1");
  })) << nodes.dump();
  EXPECT_DOUBLE_EQ(nodes["nodes"][0]["load1"].get<double>(), 1.25) << nodes.dump();
  const std::string board = cli({"nodes"}).out;
  EXPECT_NE(board.find(" LOAD "), std::string::npos) << board;
  EXPECT_NE(board.find(" 1.25 "), std::string::npos) << board;
}

// The DURATION column (the task row's sixth field) of `ps JOB`, in seconds: "0.3s" only (the
// form below 10 s); -1 when it says "-" or something else.
double task_duration_column(const std::string& table, const std::string& task) {
  for (const std::string& line : lines_of(table)) {
    std::istringstream in(line);
    std::vector<std::string> f;
    for (std::string w; in >> w;) f.push_back(w);
    if (f.size() < 6 || f[0] != task) continue;
    if (f[5].size() < 2 || !f[5].ends_with("s")) return -1;
    return std::strtod(f[5].c_str(), nullptr);
  }
  return -1;
}

TEST_F(Cluster, PsJobShowsHowLongEachTaskRan) {
  start_server();
  ASSERT_EQ(cli({"run", "--wait", "--", "sleep", "0.3"}).code, 0);
  Json done = json_of(cli({"ps", "1", "--json"}));
  const Json& t = done["tasks"][0];
  ASSERT_TRUE(t.contains("duration_seconds")) << done.dump();
  EXPECT_GE(t["duration_seconds"].get<double>(), 0.3) << done.dump();
  EXPECT_LT(t["duration_seconds"].get<double>(), 60.0) << done.dump();  // sanity only
  const std::string table = cli({"ps", "1"}).out;
  EXPECT_NE(table.find(" DURATION "), std::string::npos) << table;
  EXPECT_GE(task_duration_column(table, "1.0"), 0.3) << table;
  // And as a metric: one finished attempt, at least 0.3 s.
  const std::string metrics = http_get(metrics_addr_, "/metrics");
  EXPECT_EQ(metric(metrics, "cardnode_task_duration_seconds_count"), 1.0) << metrics;
  EXPECT_GE(metric(metrics, "cardnode_task_duration_seconds_sum"), 0.3) << metrics;

  // A running task: its attempt so far, growing. A queued one: unknown.
  ASSERT_EQ(cli({"run", "--cpu", "0.1", "--", "sleep", "30"}).code, 0);
  Json running;
  ASSERT_TRUE(eventually([&] {
    running = try_json(cli({"ps", "2", "--json"}));
    return !running.is_discarded() && running["tasks"][0]["state"] == "running" &&
           running["tasks"][0].contains("duration_seconds") &&
           running["tasks"][0]["duration_seconds"].get<double>() >= 0.2;
  })) << running.dump();
  EXPECT_GE(task_duration_column(cli({"ps", "2"}).out, "2.0"), 0.2);
  EXPECT_EQ(cli({"cancel", "2"}).code, 0);
}

// deploy/example-job.json is what deploy/README.md and the package's examples show.
TEST_F(Cluster, TheExampleJobInDeployRunsAsItsReadmeSays) {
  start_server();
  Output r = cli({"submit", CARDNODE_SOURCE_DIR "/deploy/example-job.json", "--wait"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("cardnode: job 1 succeeded (succeeded:8)"), std::string::npos) << r.err;
  for (int i = 0; i < 8; ++i) {
    Output log = cli({"logs", "1." + std::to_string(i)});
    EXPECT_EQ(log.out, "frame " + std::to_string(i) + "\n") << log.err;
  }
}

// On the server's board a client given only --data-dir goes through DATA_DIR/api.sock: no
// token (the socket is the owner's alone, 0600), no TLS. Credentials of its own mean TCP,
// as before, and so does a stopped server (its socket file is gone).
TEST_F(Cluster, ClientsOnTheServersBoardUseItsLocalSocket) {
  start_server();
  const std::string sock = data_ + "/api.sock";
  struct stat st {};
  ASSERT_EQ(::lstat(sock.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  const std::string token = data_ + "/token", away = data_ + "/token.away";
  ASSERT_EQ(std::rename(token.c_str(), away.c_str()), 0);
  Output local = cli({"run", "--wait", "--", "true"});
  EXPECT_EQ(local.code, 0) << local.err;
  Output tcp = cli({"--server", addr_, "ps"});
  EXPECT_EQ(tcp.code, 2);
  EXPECT_NE(tcp.err.find("no cluster token"), std::string::npos) << tcp.err;
  // Credentials of its own: TCP with them, even with the socket there (a wrong token
  // is refused; through the socket it would not have been asked for).
  const std::string wrong = root_ + "/wrong-token";
  { std::ofstream(wrong) << "not-the-cluster-token\n"; }
  ASSERT_EQ(::chmod(wrong.c_str(), 0600), 0);
  Output own = cli({"--token-file", wrong, "ps"});
  EXPECT_EQ(own.code, 2);
  EXPECT_NE(own.err.find("wrong cluster token"), std::string::npos) << own.err;
  EXPECT_EQ(cli({"--token-file", away, "ps"}).code, 0);
  ASSERT_EQ(std::rename(away.c_str(), token.c_str()), 0);
  EXPECT_EQ(cli({"--server", addr_, "ps"}).code, 0);
  EXPECT_EQ(stop_server(SIGTERM), 0);
  EXPECT_NE(::access(sock.c_str(), F_OK), 0) << "a stopped server leaves no socket";
  Output down = cli({"ps"});
  EXPECT_EQ(down.code, 2);
  EXPECT_NE(down.err.find("cannot reach server"), std::string::npos) << down.err;
}

TEST(CliHelp, EverySubcommandsHelpEndsWithAnExample) {
  char tmpl[] = "/tmp/cardnode-help-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string scratch = tmpl;
  for (const char* sub :
       {"server", "agent", "run", "submit", "ps", "logs", "cancel", "nodes", "drain", "fsck"}) {
    Output h = cardnode({sub, "--help"}, scratch);
    EXPECT_EQ(h.code, 0) << sub;
    EXPECT_NE(h.out.find("Example"), std::string::npos) << sub << ":\n" << h.out;
    EXPECT_NE(h.out.find("  cardnode " + std::string(sub)), std::string::npos) << h.out;
  }
  EXPECT_NE(cardnode({"run", "--help"}, scratch).out.find("cardnode run --count 500 --cpu 0.5 -- "),
            std::string::npos);
  // A call declares only the subcommand it names; help without one still lists them all.
  Output top = cardnode({"--help"}, scratch);
  EXPECT_EQ(top.code, 0);
  for (const char* sub :
       {"server", "agent", "run", "submit", "ps", "logs", "cancel", "nodes", "drain", "fsck"}) {
    EXPECT_NE(top.out.find("\n  " + std::string(sub) + " "), std::string::npos) << top.out;
  }
  fs::remove_all(scratch);
}

// Runs `script` in bash after sourcing the completion file; its stdout.
std::string in_bash(const std::string& script) {
  const std::string cmd = "bash --norc --noprofile -c 'source \"" CARDNODE_SOURCE_DIR
                          "/deploy/cardnode.bash-completion\" && " +
                          script + "' 2>&1";
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return "popen failed";
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  (void)::pclose(p);
  return out;
}

TEST(BashCompletion, OffersSubcommandsAndTheirFlags) {
  EXPECT_EQ(in_bash("complete -p cardnode"), "complete -F _cardnode cardnode\n");
  // `cardnode r<TAB>`
  EXPECT_EQ(in_bash("COMP_WORDS=(cardnode r); COMP_CWORD=1; _cardnode; echo \"${COMPREPLY[*]}\""),
            "run\n");
  // `cardnode run --c<TAB>`
  EXPECT_EQ(in_bash("COMP_WORDS=(cardnode run --c); COMP_CWORD=2; _cardnode; "
                    "echo \"${COMPREPLY[*]}\""),
            "--cpu --count --constraint\n");
  // After client options, and for another subcommand.
  EXPECT_EQ(in_bash("COMP_WORDS=(cardnode --server h:1 ps --j); COMP_CWORD=4; _cardnode; "
                    "echo \"${COMPREPLY[*]}\""),
            "--json\n");
  EXPECT_EQ(
      in_bash("COMP_WORDS=(cardnode \"\"); COMP_CWORD=1; _cardnode; echo \"${COMPREPLY[*]}\""),
      "server agent run submit ps logs cancel nodes drain fsck\n");
}

}  // namespace
}  // namespace cardnode::e2e
