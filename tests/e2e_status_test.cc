// The status page in a real browser: Debian's headless `chromium` loads the server's pages
// (`--dump-dom`, the DOM after parsing) while a job with a hostile name, on a board with a
// hostile name, prints hostile lines. Checked: names, states and the log tail appear as
// text; what would be markup appears escaped and no element was injected (no <b
// id="pwned">, no <img>, no <script> at all: the page has none of its own). And the
// exposure rules: task logs and commands only on a loopback listener or with --status-logs
// (else 403, and the job page hides the command), foreign Host names refused (DNS
// rebinding) while /metrics answers any, and --no-status-page leaves /metrics alone.
//
// chromium missing is a failure, not a skip: `make test` installs it (Makefile DEPS).
// Waits are bounded polls; chromium runs under a deadline and is killed (its whole process
// group) past it.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include "tests/e2e_pool.h"

namespace cardnode::e2e {
namespace {

constexpr const char* kJobName = "<script>alert(1)</script>\"><b id=\"pwned\">x</b>";
constexpr const char* kNodeName = "pi<i>&\"1\"</i>";
constexpr const char* kImgLine = "<img src=x onerror=alert(1)>";
constexpr const char* kCloserLine = "</textarea></pre><script>";
constexpr auto kBrowserLimit = 60s;

std::string find_chromium() {
  for (const char* p : {"/usr/bin/chromium", "/usr/bin/chromium-browser"}) {
    if (::access(p, X_OK) == 0) return p;
  }
  return "";
}

class StatusPage : public Pool {
 protected:
  // The DOM chromium built from `url`; fails the test if it did not finish in time.
  std::string dump_dom(const std::string& url) {
    const std::string browser = find_chromium();
    EXPECT_FALSE(browser.empty())
        << "chromium is not installed: apt-get install chromium (`make test` installs it)";
    if (browser.empty()) return "";
    const std::string out = root_ + "/dom.html", err = root_ + "/chromium.err";
    pid_t pid = fork();
    if (pid == 0) {
      ::setpgid(0, 0);  // its zygote and renderers go with it on a kill
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      dup2(::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644), 1);
      dup2(::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644), 2);
      // As root chromium needs --no-sandbox; a throwaway profile, so no run sees another's.
      const std::string profile = "--user-data-dir=" + root_ + "/chromium-profile";
      execl(browser.c_str(), browser.c_str(), "--headless=new", "--no-sandbox", "--disable-gpu",
            "--no-first-run", "--disable-extensions", profile.c_str(), "--dump-dom", url.c_str(),
            static_cast<char*>(nullptr));
      _exit(127);
    }
    int status = 0;
    const bool exited =
        eventually([&] { return waitpid(pid, &status, WNOHANG) == pid; }, kBrowserLimit);
    if (!exited) {
      ::kill(-pid, SIGKILL);
      waitpid(pid, &status, 0);
      ADD_FAILURE() << "chromium did not finish within 60 s on " << url << ":\n" << slurp(err);
      return "";
    }
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << "chromium failed on " << url << ":\n"
        << slurp(err);
    ::kill(-pid, SIGKILL);  // anything of its group left behind
    return slurp(out);
  }

  std::string url(const std::string& path) { return "http://" + metrics_addr_ + path; }

  // Submits the hostile job and waits until it has ended; returns its id.
  std::string run_hostile_job() {
    const std::string script = std::string("printf '%s\\n' 'first line' '") + kImgLine + "' '" +
                               kCloserLine + "' 'last line'; printf 'to stderr\\n' >&2";
    Output o = cli({"run", "--name", kJobName, "--", "sh", "-c", script});
    EXPECT_EQ(o.code, 0) << o.err;
    std::string id = o.out;
    id.erase(id.find_last_not_of("\n") + 1);
    EXPECT_TRUE(eventually(
        [&] {
          const Json j = try_json(cli({"ps", id, "--json"}));
          return !j.is_discarded() && j.value("state", "") == "succeeded";
        },
        30s))
        << cli({"ps", id}).out;
    return id;
  }
};

// Markup only the page's own template may hold.
void ExpectNothingInjected(const std::string& dom) {
  EXPECT_EQ(dom.find("<b id=\"pwned\""), std::string::npos) << dom;
  EXPECT_EQ(dom.find("<img"), std::string::npos) << dom;
  EXPECT_EQ(dom.find("<script"), std::string::npos) << dom;
  EXPECT_EQ(dom.find("<i>"), std::string::npos) << dom;
}

TEST_F(StatusPage, ChromiumShowsNodesJobsAndALogTailWithHostileTextAsText) {
  start_server({"--name", kNodeName});
  const std::string id = run_hostile_job();

  const std::string overview = dump_dom(url("/"));
  ASSERT_FALSE(overview.empty());
  ExpectNothingInjected(overview);
  // The DOM serializes text with < > & escaped (quotes stay as they are).
  EXPECT_NE(overview.find("pi&lt;i&gt;&amp;\"1\"&lt;/i&gt;"), std::string::npos) << overview;
  EXPECT_NE(
      overview.find("&lt;script&gt;alert(1)&lt;/script&gt;\"&gt;&lt;b id=\"pwned\"&gt;x&lt;/b&gt;"),
      std::string::npos)
      << overview;
  EXPECT_NE(overview.find("<a href=\"/jobs/" + id + "\">" + id + "</a>"), std::string::npos);
  EXPECT_NE(overview.find("succeeded:1"), std::string::npos) << overview;
  EXPECT_NE(overview.find("http-equiv=\"refresh\""), std::string::npos);

  const std::string job = dump_dom(url("/jobs/" + id));
  ExpectNothingInjected(job);
  EXPECT_NE(job.find("<h1>Job " + id + "</h1>"), std::string::npos) << job;
  EXPECT_NE(job.find("<a href=\"/jobs/" + id + "/tasks/0\">" + id + ".0</a>"), std::string::npos)
      << job;
  EXPECT_NE(job.find("&lt;img src=x onerror=alert(1)&gt;"), std::string::npos);  // the command
  EXPECT_NE(job.find(">succeeded<"), std::string::npos) << job;

  const std::string task = dump_dom(url("/jobs/" + id + "/tasks/0"));
  ExpectNothingInjected(task);
  EXPECT_NE(task.find("<pre id=\"stdout\">first line\n&lt;img src=x onerror=alert(1)&gt;\n"
                      "&lt;/textarea&gt;&lt;/pre&gt;&lt;script&gt;\nlast line\n</pre>"),
            std::string::npos)
      << task;
  EXPECT_NE(task.find("<pre id=\"stderr\">to stderr\n</pre>"), std::string::npos) << task;

  const std::string missing = dump_dom(url("/jobs/999999"));
  EXPECT_NE(missing.find("<h1>Not found</h1>"), std::string::npos) << missing;
}

TEST_F(StatusPage, RepliesSayHtmlAndForbidEverythingButInlineStyle) {
  start_server();
  const std::string r = http_get(metrics_addr_, "/");
  EXPECT_EQ(r.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << r;
  EXPECT_NE(r.find("\r\nContent-Type: text/html; charset=utf-8\r\n"), std::string::npos) << r;
  EXPECT_NE(r.find("\r\nX-Content-Type-Options: nosniff\r\n"), std::string::npos) << r;
  EXPECT_NE(r.find("\r\nContent-Security-Policy: default-src 'none'; style-src 'unsafe-inline'"),
            std::string::npos)
      << r;
  EXPECT_EQ(http_get(metrics_addr_, "/nope").rfind("HTTP/1.1 404", 0), 0u);
  EXPECT_EQ(http_get(metrics_addr_, "/jobs/1/tasks/0").rfind("HTTP/1.1 404", 0), 0u);  // no job 1
  EXPECT_NE(http_get(metrics_addr_, "/metrics").find("cardnode_jobs_submitted_total"),
            std::string::npos);
}

// 0.0.0.0 is not loopback (it takes connections from anywhere), yet this test reaches it
// over loopback: the log page is refused there unless --status-logs says otherwise.
TEST_F(StatusPage, LogsAreForbiddenOffLoopbackUnlessStatusLogs) {
  start_server({"--metrics-listen", "0.0.0.0:0"});
  const std::string id = run_hostile_job();
  std::string r = http_get(metrics_addr_, "/jobs/" + id + "/tasks/0");
  EXPECT_EQ(r.rfind("HTTP/1.1 403 Forbidden\r\n", 0), 0u) << r;
  EXPECT_NE(r.find("--status-logs"), std::string::npos) << r;
  EXPECT_EQ(r.find("first line"), std::string::npos);
  // The job page is served, its command (which may hold secrets) is not.
  r = http_get(metrics_addr_, "/jobs/" + id);
  EXPECT_EQ(r.rfind("HTTP/1.1 200", 0), 0u) << r;
  EXPECT_EQ(r.find("onerror"), std::string::npos) << r;
  EXPECT_NE(r.find("hidden: this listener is not loopback"), std::string::npos) << r;

  ASSERT_EQ(stop_server(SIGTERM) >= 0, true);
  start_server({"--metrics-listen", "0.0.0.0:0", "--status-logs"});
  r = http_get(metrics_addr_, "/jobs/" + id + "/tasks/0");
  EXPECT_EQ(r.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << r;
  EXPECT_NE(r.find("first line"), std::string::npos) << r;
  r = http_get(metrics_addr_, "/jobs/" + id);
  EXPECT_NE(r.find("&lt;img src=x onerror=alert(1)&gt;"), std::string::npos) << r;
}

// DNS rebinding: a page whose name was pointed at this listener sends its own name as Host.
// The status pages refuse it; /metrics answers any Host (Prometheus scrapes by any name).
TEST_F(StatusPage, AForeignHostNameIsRefusedButMetricsAnswerIt) {
  start_server({"--status-host", "pool.example"});
  std::string r = http_get(metrics_addr_, "/", "evil.example");
  EXPECT_EQ(r.rfind("HTTP/1.1 403 Forbidden\r\n", 0), 0u) << r;
  EXPECT_NE(r.find("--status-host"), std::string::npos) << r;
  EXPECT_EQ(r.find("<h1>Pool</h1>"), std::string::npos) << r;
  r = http_get(metrics_addr_, "/jobs/1", "evil.example:9742");
  EXPECT_EQ(r.rfind("HTTP/1.1 403", 0), 0u) << r;
  r = http_get(metrics_addr_, "/metrics", "evil.example");
  EXPECT_EQ(r.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << r;
  EXPECT_NE(r.find("cardnode_jobs_submitted_total"), std::string::npos) << r;
  for (const char* ok : {"localhost:1", "pool.example", "[::1]:9742"}) {
    r = http_get(metrics_addr_, "/", ok);
    EXPECT_EQ(r.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << ok << "\n" << r;
    EXPECT_NE(r.find("<h1>Pool</h1>"), std::string::npos) << r;
  }
}

// A task that ran on an agent: its tail is read there (ReadLog.tail through the agent), and
// only the end of a long log is shown, with a note.
TEST_F(StatusPage, AnAgentsTaskShowsTheEndOfItsLog) {
  start_pool_server();
  start_agent("pi-2");
  ASSERT_TRUE(eventually([&] { return ready_nodes() == 1; })) << logs();
  Output o = cli({"run", "--", "seq", "-f", "line %g", "0", "4999"});  // ~49 KiB
  ASSERT_EQ(o.code, 0) << o.err;
  std::string id = o.out;
  id.erase(id.find_last_not_of("\n") + 1);
  ASSERT_TRUE(eventually(
      [&] {
        const Json j = try_json(cli({"ps", id, "--json"}));
        return !j.is_discarded() && j.value("state", "") == "succeeded";
      },
      30s))
      << logs();
  const std::string r = http_get(metrics_addr_, "/jobs/" + id + "/tasks/0");
  EXPECT_EQ(r.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << r;
  EXPECT_NE(r.find("<pre id=\"stdout\">line 4800\n"), std::string::npos) << r;
  EXPECT_NE(r.find("line 4999\n</pre>"), std::string::npos) << r;
  EXPECT_EQ(r.find("line 4799\n"), std::string::npos) << r;
  EXPECT_NE(r.find("Earlier output not shown"), std::string::npos) << r;
  EXPECT_NE(r.find("pi-2"), std::string::npos) << r;  // the node it ran on
}

TEST_F(StatusPage, NoStatusPageServesOnlyMetrics) {
  start_server({"--no-status-page"});
  EXPECT_EQ(http_get(metrics_addr_, "/").rfind("HTTP/1.1 404", 0), 0u);
  EXPECT_EQ(http_get(metrics_addr_, "/jobs/1").rfind("HTTP/1.1 404", 0), 0u);
  EXPECT_EQ(http_get(metrics_addr_, "/metrics").rfind("HTTP/1.1 200", 0), 0u);
}

}  // namespace
}  // namespace cardnode::e2e
