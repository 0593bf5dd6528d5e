// The status pages as pure functions: what a hostile job name, command, node name or log line
// becomes (text, never markup), the bounds on every list, the routes, and who may see logs.
#include "runtime/coordinator/status_page.h"

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>

#include <string>

namespace cardnode::runtime::status {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr const char* kScript = "<script>alert(1)</script>";
constexpr const char* kBreakOut = "\"><b id=\"pwned\">x</b>";
constexpr const char* kImg = "<img src=x onerror=alert(1)>";
constexpr const char* kCloser = "</textarea></pre><script>";

std::string header(const net::HttpReply& r, const std::string& name) {
  for (const auto& [k, v] : r.headers)
    if (k == name) return v;
  return "";
}

// Markup a page may carry only from its own template.
void ExpectNoInjectedMarkup(const std::string& html) {
  EXPECT_THAT(html, Not(HasSubstr("<script")));
  EXPECT_THAT(html, Not(HasSubstr("<img")));
  EXPECT_THAT(html, Not(HasSubstr("<b ")));
  EXPECT_THAT(html, Not(HasSubstr("id=\"pwned\"")));
  EXPECT_THAT(html, Not(HasSubstr("</textarea>")));
  EXPECT_THAT(html, Not(HasSubstr("</pre><script")));
}

pb::JobSummary hostile_job(uint64_t id, const std::string& name) {
  pb::JobSummary j;
  j.set_id(id);
  j.set_name(name);
  j.set_state(pb::JOB_FAILED);
  j.set_count(1);
  j.add_command("sh");
  j.add_command(std::string("-c ") + kImg);
  (*j.mutable_states())["failed"] = 1;
  j.set_submitted_ms(1'700'000'000'000);
  j.set_finished_ms(1'700'000'083'000);
  j.set_wait_reason(kBreakOut);
  return j;
}

TEST(StatusPage, HostileJobAndNodeNamesAreTextNeverMarkup) {
  pb::NodeList nodes;
  pb::NodeInfo* n = nodes.add_nodes();
  n->set_name(kBreakOut);
  n->set_state("ready");
  n->set_arch("aarch64");
  n->set_skip_reason(kScript);
  pb::JobList jobs;
  *jobs.add_jobs() = hostile_job(2, kScript);
  *jobs.add_jobs() = hostile_job(1, kBreakOut);
  const net::HttpReply r = overview_page(nodes, jobs, 2);
  EXPECT_EQ(r.status, 200);
  ExpectNoInjectedMarkup(r.body);
  EXPECT_THAT(r.body, HasSubstr("&lt;script&gt;alert(1)&lt;/script&gt;"));
  EXPECT_THAT(r.body, HasSubstr("&quot;&gt;&lt;b id=&quot;pwned&quot;&gt;x&lt;/b&gt;"));
  EXPECT_THAT(r.body, HasSubstr("<a href=\"/jobs/2\">2</a>"));
  EXPECT_THAT(r.body, HasSubstr("1m23s"));  // elapsed, as `ps` says it
}

TEST(StatusPage, EveryPageIsHtml5WithAPolicyThatForbidsScriptsAndRefreshes) {
  const net::HttpReply r = overview_page({}, {}, 0);
  EXPECT_TRUE(r.body.starts_with("<!doctype html>\n"));
  EXPECT_THAT(r.body, HasSubstr("<meta charset=\"utf-8\">"));
  EXPECT_THAT(r.body, HasSubstr("<meta http-equiv=\"refresh\" content=\"5\">"));
  EXPECT_EQ(r.content_type, "text/html; charset=utf-8");
  EXPECT_EQ(header(r, "X-Content-Type-Options"), "nosniff");
  EXPECT_THAT(header(r, "Content-Security-Policy"), HasSubstr("default-src 'none'"));
  EXPECT_THAT(r.body, Not(HasSubstr("http://")));  // no external asset
  EXPECT_THAT(r.body, Not(HasSubstr("https://")));
  EXPECT_THAT(r.body, Not(HasSubstr("<script")));
}

TEST(StatusPage, JobPageEscapesCommandAndWaitReasonAndLinksTasksByNumber) {
  pb::JobDetail d;
  *d.mutable_job() = hostile_job(7, kScript);
  pb::TaskInfo* t = d.add_tasks();
  t->set_index(0);
  t->set_state(pb::TASK_FAILED);
  t->set_exit_code(3);
  t->set_node(kImg);
  t->mutable_usage()->set_wall_ms(83'000);
  pb::JobSpec spec;
  (*spec.mutable_constraints())["arch"] = kBreakOut;
  spec.set_cpu_millis(500);
  const net::HttpReply r = job_page(d, &spec, true);
  EXPECT_EQ(r.status, 200);
  ExpectNoInjectedMarkup(r.body);
  EXPECT_THAT(r.body, HasSubstr("sh -c &lt;img src=x onerror=alert(1)&gt;"));
  EXPECT_THAT(r.body, HasSubstr("<a href=\"/jobs/7/tasks/0\">7.0</a>"));
  EXPECT_THAT(r.body, HasSubstr("failed"));
  EXPECT_THAT(r.body, HasSubstr("0.5 cores"));
  EXPECT_THAT(r.body, HasSubstr("<td class=\"n\">1m23s</td></tr>"));  // ps JOB's DURATION
}

TEST(StatusPage, HostileLogLinesAreText) {
  pb::JobDetail d;
  *d.mutable_job() = hostile_job(7, "ok");
  d.add_tasks()->set_state(pb::TASK_SUCCEEDED);
  LogTail out{std::string(kImg) + "\n" + kCloser + "\n", ""};
  LogTail err{"", std::string("the logs are on node ") + kScript + ", which is down"};
  const net::HttpReply r = task_page(d, out, err);
  EXPECT_EQ(r.status, 200);
  ExpectNoInjectedMarkup(r.body);
  EXPECT_THAT(r.body, HasSubstr("&lt;img src=x onerror=alert(1)&gt;\n"
                                "&lt;/textarea&gt;&lt;/pre&gt;&lt;script&gt;\n</pre>"));
  EXPECT_THAT(r.body, HasSubstr("cannot read it: the logs are on node &lt;script&gt;"));
}

TEST(StatusPage, InvalidUtf8AndControlBytesInLogsAreShownEscaped) {
  bool dropped = true;
  const std::string html = html_log("a\x01\x1b[31mred\xff\xc3(\r\n\xc3\xa9t\xc3\xa9\n", &dropped);
  EXPECT_FALSE(dropped);
  EXPECT_EQ(html, "a\\x01\\x1b[31mred\\xff\\xc3(\\x0d\n\xc3\xa9t\xc3\xa9\n");
  // NUL too: a C string would stop at it.
  EXPECT_EQ(html_log(std::string("x\0<y", 4), &dropped), "x\\x00&lt;y\n");
}

TEST(StatusPage, ALogTailKeepsTheLastBytesAndLinesAndSaysSo) {
  std::string log;
  for (int i = 0; i < 1000; ++i) log += "line " + std::to_string(i) + "\n";
  bool dropped = false;
  std::string html = html_log(log, &dropped);
  EXPECT_TRUE(dropped);
  EXPECT_TRUE(html.starts_with("line 800\n"));
  EXPECT_TRUE(html.ends_with("line 999\n"));
  // Bytes past the bound: the cut line is dropped.
  std::string big(kLogTailBytesMax, 'x');
  big += "\nlast\n";
  html = html_log(big, &dropped);
  EXPECT_TRUE(dropped);
  EXPECT_EQ(html, "last\n");
  // Short and whole: nothing dropped.
  EXPECT_EQ(html_log("one\ntwo", &dropped), "one\ntwo\n");
  EXPECT_FALSE(dropped);
  EXPECT_EQ(html_log("", &dropped), "");
}

TEST(StatusPage, AJobOfAHundredThousandTasksRendersABoundedPage) {
  pb::JobDetail d;
  *d.mutable_job() = hostile_job(9, "array");
  d.mutable_job()->set_count(100'000);
  for (uint32_t i = 0; i < 100'000; ++i) {
    pb::TaskInfo* t = d.add_tasks();
    t->set_index(i);
    t->set_node(std::string(1000, 'n'));
  }
  const net::HttpReply r = job_page(d, nullptr, true);
  EXPECT_LT(r.body.size(), 1u << 20);
  EXPECT_THAT(r.body, HasSubstr("/jobs/9/tasks/499\""));
  EXPECT_THAT(r.body, Not(HasSubstr("/jobs/9/tasks/500\"")));
  EXPECT_THAT(r.body, HasSubstr("99500 more tasks not shown."));
}

TEST(StatusPage, TheOverviewIsBoundedHoweverManyJobsAndNodes) {
  pb::NodeList nodes;
  for (int i = 0; i < 5000; ++i) nodes.add_nodes()->set_name(std::string(1000, 'n'));
  pb::JobList jobs;
  for (int i = 0; i < 300; ++i) *jobs.add_jobs() = hostile_job(1000 - i, std::string(10'000, 'j'));
  const net::HttpReply r = overview_page(nodes, jobs, 123'456);
  EXPECT_LT(r.body.size(), 8u << 20);
  EXPECT_THAT(r.body, HasSubstr("904 more nodes not shown."));
  EXPECT_THAT(r.body, HasSubstr("123256 more jobs not shown."));
  EXPECT_THAT(r.body, HasSubstr("&hellip;"));  // a long name is cut, and says so
}

TEST(StatusPage, RoutesAreNumbersOnly) {
  EXPECT_EQ(parse_route("/").kind, Route::Kind::kOverview);
  Route r = parse_route("/jobs/18446744073709551615");
  EXPECT_EQ(r.kind, Route::Kind::kJob);
  EXPECT_EQ(r.job_id, 18446744073709551615ull);
  r = parse_route("/jobs/7/tasks/3");
  EXPECT_EQ(r.kind, Route::Kind::kTask);
  EXPECT_EQ(r.job_id, 7u);
  EXPECT_EQ(r.index, 3u);
  for (const char* bad :
       {"", "/jobs", "/jobs/", "/jobs/07", "/jobs/-1", "/jobs/1x", "/jobs/7/", "/jobs/7/tasks/",
        "/jobs/7/tasks/4294967296", "/jobs/18446744073709551616", "/jobs/7/tasks/1/x", "/metrics/x",
        "/index.html", "/jobs/%37"}) {
    EXPECT_EQ(parse_route(bad).kind, Route::Kind::kNotFound) << bad;
  }
}

TEST(StatusPage, NotFoundAndForbiddenAreShortPagesThatEscape) {
  net::HttpReply r = not_found_page(kScript);
  EXPECT_EQ(r.status, 404);
  ExpectNoInjectedMarkup(r.body);
  EXPECT_THAT(r.body, Not(HasSubstr("http-equiv")));
  r = forbidden_page("task logs are off");
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(header(r, "X-Content-Type-Options"), "nosniff");
}

sockaddr_storage v4(const char* ip) {
  sockaddr_storage s{};
  auto* in = reinterpret_cast<sockaddr_in*>(&s);
  in->sin_family = AF_INET;
  EXPECT_EQ(inet_pton(AF_INET, ip, &in->sin_addr), 1);
  return s;
}

sockaddr_storage v6(const char* ip) {
  sockaddr_storage s{};
  auto* in = reinterpret_cast<sockaddr_in6*>(&s);
  in->sin6_family = AF_INET6;
  EXPECT_EQ(inet_pton(AF_INET6, ip, &in->sin6_addr), 1);
  return s;
}

TEST(StatusPage, LogsAreShownOnLoopbackOrWhenTheOperatorSaysSo) {
  EXPECT_TRUE(logs_allowed(v4("127.0.0.1"), false));
  EXPECT_TRUE(logs_allowed(v4("127.1.2.3"), false));
  EXPECT_TRUE(logs_allowed(v6("::1"), false));
  EXPECT_TRUE(logs_allowed(v6("::ffff:127.0.0.1"), false));
  EXPECT_FALSE(logs_allowed(v4("0.0.0.0"), false));
  EXPECT_FALSE(logs_allowed(v4("192.168.1.10"), false));
  EXPECT_FALSE(logs_allowed(v6("::"), false));
  EXPECT_FALSE(logs_allowed(sockaddr_storage{}, false));
  EXPECT_TRUE(logs_allowed(v4("0.0.0.0"), true));
}

}  // namespace
}  // namespace cardnode::runtime::status

namespace cardnode::runtime::status {
namespace {

// The rule of logs_allowed applied to the job page: command and user only where logs are.
TEST(StatusPage, AJobsCommandAndUserAreHiddenOffLoopbackUnlessAllowed) {
  pb::JobDetail d;
  d.mutable_job()->set_id(7);
  d.mutable_job()->add_command("deploy");
  d.mutable_job()->add_command("--token=s3cret");
  pb::JobSpec spec;
  spec.set_user("alice-secret-user");
  spec.set_cpu_millis(500);
  const net::HttpReply shown_page = job_page(d, &spec, true);
  EXPECT_THAT(shown_page.body, HasSubstr("<code>deploy --token=s3cret</code>"));
  EXPECT_THAT(shown_page.body, HasSubstr("alice-secret-user"));
  EXPECT_THAT(shown_page.body, Not(HasSubstr("hidden:")));

  const net::HttpReply hidden_page = job_page(d, &spec, false);
  EXPECT_EQ(hidden_page.status, 200);
  EXPECT_THAT(hidden_page.body, Not(HasSubstr("s3cret")));
  EXPECT_THAT(hidden_page.body, Not(HasSubstr("deploy")));
  EXPECT_THAT(hidden_page.body, Not(HasSubstr("alice-secret-user")));
  EXPECT_THAT(hidden_page.body, HasSubstr("hidden: this listener is not loopback"));
  EXPECT_THAT(hidden_page.body, HasSubstr("--status-logs"));
  EXPECT_THAT(hidden_page.body, HasSubstr("0.5 cores"));  // the rest of the page is still there
  // Which of the two a server picks: as for logs.
  EXPECT_TRUE(logs_allowed(v4("127.0.0.1"), false));
  EXPECT_FALSE(logs_allowed(v4("0.0.0.0"), false));
}

TEST(StatusPage, OnlyIpLiteralsLocalhostAndOwnNamesPassTheHostCheck) {
  const std::vector<std::string> names = {"pi-1", "pi-1.local", "cluster.lan"};
  auto ok = [&](const char* h) { return host_allowed(std::string(h), names); };
  EXPECT_TRUE(host_allowed(std::nullopt, names));  // HTTP/1.0 without a Host
  EXPECT_TRUE(ok("127.0.0.1:9742"));
  EXPECT_TRUE(ok("192.168.1.10"));
  EXPECT_TRUE(ok("[::1]:9742"));
  EXPECT_TRUE(ok("[fe80::1]"));
  EXPECT_TRUE(ok("localhost:9742"));
  EXPECT_TRUE(ok("LocalHost"));
  EXPECT_TRUE(ok("localhost."));
  EXPECT_TRUE(ok("pi-1:9742"));
  EXPECT_TRUE(ok("PI-1.local"));
  EXPECT_TRUE(ok("cluster.lan"));  // --status-host
  EXPECT_FALSE(ok("evil.example"));
  EXPECT_FALSE(ok("evil.example:9742"));
  EXPECT_FALSE(ok("127.0.0.1.evil.example"));
  EXPECT_FALSE(ok("localhost.evil.example"));
  EXPECT_FALSE(ok("pi-1.evil.example"));
  EXPECT_FALSE(ok("pi-1x"));
  EXPECT_FALSE(ok(""));
  EXPECT_FALSE(ok(":9742"));
  EXPECT_FALSE(ok("::1"));     // IPv6 only in brackets
  EXPECT_FALSE(ok("[::1"));    // unclosed
  EXPECT_FALSE(ok("[::1]x"));  // junk after the bracket
  EXPECT_FALSE(ok("[evil.example]"));
  EXPECT_FALSE(ok("0x7f.1"));                           // not a dotted quad
  EXPECT_FALSE(host_allowed(std::string("pi-1"), {}));  // names only when given
}

}  // namespace
}  // namespace cardnode::runtime::status
