#include "runtime/coordinator/status_page.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdio>
#include <ctime>
#include <limits>
#include <vector>

#include "proto/text.h"
#include "runtime/coordinator/listing_text.h"
#include "runtime/coordinator/state.h"
#include "scheduler/cluster.h"

namespace cardnode::runtime::status {
namespace {

// Inline styles only: the policy below lets nothing else load or run.
constexpr std::string_view kStyle =
    "body{font:14px/1.4 system-ui,sans-serif;margin:1em 2em;color:#222;background:#fafafa}"
    "h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.5em}"
    "table{border-collapse:collapse;margin:.5em 0}"
    "th,td{border:1px solid #ccc;padding:2px 8px;text-align:left;vertical-align:top}"
    "th{background:#eee}td.n{text-align:right}"
    "pre{background:#fff;border:1px solid #ccc;padding:.5em;overflow:auto;max-height:40em;"
    "white-space:pre-wrap;word-break:break-all}"
    ".note{color:#666}.bad{color:#a00}.ok{color:#070}.run{color:#05a}"
    "header a{font-weight:bold;text-decoration:none}footer{margin-top:2em;color:#666}";

// Set on every page: no script, no plugin, no frame, no load from anywhere; styles only
// inline. A page that somehow carried markup from a job still could not run or fetch it.
const std::vector<std::pair<std::string, std::string>> kHeaders = {
    {"Content-Security-Policy",
     "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
     "frame-ancestors 'none'"},
    {"X-Content-Type-Options", "nosniff"},
    {"Referrer-Policy", "no-referrer"},
    {"Cache-Control", "no-store"},  // log tails may hold secrets: never kept on disk
};

constexpr std::string_view kContentType = "text/html; charset=utf-8";

net::HttpReply page(int status, std::string_view title, const std::string& body, bool refresh) {
  std::string html = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">";
  if (refresh) {
    html += "<meta http-equiv=\"refresh\" content=\"" + std::to_string(kRefreshSeconds) + "\">";
  }
  html += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>";
  html += html_escape(title);
  html += " - cardnode</title><style>";
  html += kStyle;
  html += "</style></head><body>\n<header><a href=\"/\">cardnode</a> status</header>\n";
  html += body;
  html += "\n<footer>";
  if (refresh) html += "Refreshes every " + std::to_string(kRefreshSeconds) + " s. ";
  html += "Read-only. <a href=\"/metrics\">/metrics</a></footer>\n</body></html>\n";
  return net::HttpReply{status, std::string(kContentType), std::move(html), kHeaders};
}

const char* task_state(pb::TaskState s) {
  if (s < 0 || static_cast<size_t>(s) >= sched::kTaskStateCount) return "unknown";
  return sched::task_state_name(from_pb(s));
}

const char* job_state(pb::JobState s) {
  if (s < pb::JOB_QUEUED || s > pb::JOB_CANCELLED) return "unknown";
  return sched::job_state_name(static_cast<sched::JobState>(s));
}

// A CSS class from a fixed set, never from the text it colours.
const char* state_class(std::string_view state) {
  if (state == "succeeded" || state == "ready") return "ok";
  if (state == "running" || state == "draining") return "run";
  if (state == "queued" || state == "drained") return "";
  return "bad";
}

std::string td(const std::string& html, bool number = false) {
  return std::string(number ? "<td class=\"n\">" : "<td>") + html + "</td>";
}

std::string state_td(std::string_view state) {
  return "<td class=\"" + std::string(state_class(state)) + "\">" +
         html_text(state, kFieldBytesMax) + "</td>";
}

std::string utc(uint64_t ms) {
  if (ms == 0) return "-";
  const auto secs = static_cast<time_t>(ms / 1000);
  std::tm tm{};
  if (gmtime_r(&secs, &tm) == nullptr) return "-";
  char buf[32];
  if (std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%SZ", &tm) == 0) return "-";
  return buf;
}

std::string cores(uint32_t millis) {
  char buf[24];  // at most 4294967.3: snprintf cannot fail or cut here
  (void)std::snprintf(buf, sizeof buf, "%.1f", millis / 1000.0);
  return buf;
}

std::string more_note(uint64_t shown_count, uint64_t total, std::string_view what) {
  if (total <= shown_count) return "";
  return "<p class=\"note\">" + std::to_string(total - shown_count) + " more " + std::string(what) +
         " not shown.</p>\n";
}

std::string node_rows(const pb::NodeList& nodes) {
  std::string out =
      "<table id=\"nodes\"><tr><th>node</th><th>state</th><th>arch</th><th>cpu used/total "
      "(cores)</th><th>memory used/total</th><th>tasks</th><th>temperature</th><th>takes no "
      "new task because</th></tr>\n";
  const auto shown_count = std::min<uint64_t>(nodes.nodes_size(), kNodesShownMax);
  for (uint64_t i = 0; i < shown_count; ++i) {
    const pb::NodeInfo& n = nodes.nodes(static_cast<int>(i));
    std::string temp = "-";
    if (n.has_temperature_millicelsius()) {
      char buf[24];
      (void)std::snprintf(buf, sizeof buf, "%.1f&nbsp;&deg;C", n.temperature_millicelsius() / 1e3);
      temp = buf;
    }
    out += "<tr>" + td(html_text(n.name(), kFieldBytesMax)) + state_td(n.state()) +
           td(html_text(n.arch(), kFieldBytesMax)) +
           td(cores(n.cpu_millis_used()) + " / " + cores(n.cpu_millis()), true) +
           td(human_bytes(n.mem_bytes_used()) + " / " + human_bytes(n.mem_bytes()), true) +
           td(std::to_string(n.running_tasks()) + " / " + std::to_string(n.tasks_max()), true) +
           td(temp, true) +
           td(n.skip_reason().empty() ? "-" : html_text(n.skip_reason(), kFieldBytesMax)) +
           "</tr>\n";
  }
  out += "</table>\n";
  return out + more_note(shown_count, static_cast<uint64_t>(nodes.nodes_size()), "nodes");
}

std::string job_link(uint64_t id) {
  const std::string s = std::to_string(id);
  return "<a href=\"/jobs/" + s + "\">" + s + "</a>";
}

std::string job_rows(const pb::JobList& newest, uint64_t jobs_total) {
  std::string out =
      "<table id=\"jobs\"><tr><th>job</th><th>name</th><th>state</th><th>tasks</th><th>by "
      "state</th><th>submitted (UTC)</th><th>elapsed</th></tr>\n";
  const auto shown_count = std::min<uint64_t>(newest.jobs_size(), kJobsShownMax);
  for (uint64_t i = 0; i < shown_count; ++i) {
    const pb::JobSummary& j = newest.jobs(static_cast<int>(i));
    const auto elapsed = job_elapsed_ms(j, newest.now_ms());
    out += "<tr>" + td(job_link(j.id()), true) + td(html_text(j.name(), kFieldBytesMax)) +
           state_td(job_state(j.state())) + td(std::to_string(j.count()), true) +
           td(html_escape(states_text(j))) + td(utc(j.submitted_ms())) +
           td(elapsed ? human_duration(*elapsed) : "-", true) + "</tr>\n";
  }
  out += "</table>\n";
  return out + more_note(shown_count, std::max<uint64_t>(jobs_total, shown_count), "jobs");
}

std::string command_text(const pb::JobSummary& j, uint32_t max_bytes) {
  std::string joined;
  for (const std::string& arg : j.command()) {
    if (!joined.empty()) joined += ' ';
    joined += arg;
    if (joined.size() > max_bytes) break;  // html_text cuts it; no need to join the rest
  }
  std::string out = html_text(joined, max_bytes);
  if (j.command_shortened()) out += " &hellip;";
  return out;
}

std::string hidden() {
  return "<span class=\"note\">" + html_escape(kHiddenNote) + "</span>";
}

std::string job_head(const pb::JobSummary& j, uint64_t now_ms, bool commands) {
  const auto elapsed = job_elapsed_ms(j, now_ms);
  std::string out = "<table id=\"job\">";
  auto row = [&out](std::string_view k, const std::string& v) {
    out += "<tr><th>" + std::string(k) + "</th><td>" + v + "</td></tr>\n";
  };
  row("name", html_text(j.name(), kFieldBytesMax));
  row("state", html_escape(job_state(j.state())));
  row("command", commands ? "<code>" + command_text(j, kCommandBytesMax) + "</code>" : hidden());
  row("tasks", std::to_string(j.count()) +
                   (j.states().empty() ? "" : " (" + html_escape(states_text(j)) + ")"));
  row("priority", std::to_string(j.priority()));
  row("submitted (UTC)", utc(j.submitted_ms()));
  row("elapsed", elapsed ? human_duration(*elapsed) : "-");
  if (!j.wait_reason().empty()) row("waiting", html_text(j.wait_reason(), kCommandBytesMax));
  return out;
}

std::string spec_rows(const pb::JobSpec& spec, bool commands) {
  std::string out;
  auto row = [&out](std::string_view k, const std::string& v) {
    out += "<tr><th>" + std::string(k) + "</th><td>" + v + "</td></tr>\n";
  };
  row("per task",
      (spec.cpu_millis() == 0 ? std::string("default") : cores(spec.cpu_millis())) + " cores, " +
          (spec.mem_bytes() == 0 ? std::string("default") : human_bytes(spec.mem_bytes())) +
          " memory");
  row("retries", std::to_string(spec.retries()));
  row("timeout", spec.timeout_ms() == 0 ? std::string("none") : human_duration(spec.timeout_ms()));
  if (spec.after() != 0) row("after job", job_link(spec.after()));
  if (!spec.constraints().empty()) {
    std::vector<std::string> cs;  // sorted: a map's order is not stable between replies
    for (const auto& [k, v] : spec.constraints()) cs.push_back(k + "=" + v);
    std::sort(cs.begin(), cs.end());
    std::string joined;
    for (size_t i = 0; i < cs.size() && joined.size() <= kCommandBytesMax; ++i)
      joined += (i ? " " : "") + cs[i];
    row("constraints", html_text(joined, kCommandBytesMax));
  }
  if (spec.spread()) row("placement", "spread");
  // Hidden with the command: one "hidden" line on the page is enough.
  if (!spec.user().empty() && commands) row("user", html_text(spec.user(), kFieldBytesMax));
  return out;
}

// As `ps JOB`'s DURATION: the running attempt so far, else the latest finished one's.
std::string duration(const pb::TaskInfo& t, uint64_t now_ms) {
  const auto ms = task_duration_ms(t, now_ms);
  return ms ? human_duration(*ms) : "-";
}

std::string task_link(uint64_t job, uint32_t index) {
  return "<a href=\"/jobs/" + std::to_string(job) + "/tasks/" + std::to_string(index) + "\">" +
         std::to_string(job) + "." + std::to_string(index) + "</a>";
}

}  // namespace

Route parse_route(std::string_view path) {
  auto number = [](std::string_view s, uint64_t max, uint64_t* out) {
    if (s.empty() || s.size() > 20 || (s.size() > 1 && s[0] == '0')) return false;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
    return ec == std::errc() && end == s.data() + s.size() && *out <= max;
  };
  Route r;
  if (path == "/") {
    r.kind = Route::Kind::kOverview;
    return r;
  }
  constexpr std::string_view kJobs = "/jobs/";
  if (!path.starts_with(kJobs)) return r;
  path.remove_prefix(kJobs.size());
  const size_t slash = path.find('/');
  if (!number(path.substr(0, slash), std::numeric_limits<uint64_t>::max(), &r.job_id)) return r;
  if (slash == std::string_view::npos) {
    r.kind = Route::Kind::kJob;
    return r;
  }
  constexpr std::string_view kTasks = "/tasks/";
  std::string_view rest = path.substr(slash);
  if (!rest.starts_with(kTasks)) return r;
  uint64_t index = 0;
  if (!number(rest.substr(kTasks.size()), std::numeric_limits<uint32_t>::max(), &index)) return r;
  r.index = static_cast<uint32_t>(index);
  r.kind = Route::Kind::kTask;
  return r;
}

bool is_loopback(const sockaddr_storage& a) {
  if (a.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&a);
    return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
  }
  if (a.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&a);
    if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr)) return true;
    return IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) && in6->sin6_addr.s6_addr[12] == 127;
  }
  return false;
}

bool logs_allowed(const sockaddr_storage& listener, bool status_logs_flag) {
  return status_logs_flag || is_loopback(listener);
}

bool host_allowed(const std::optional<std::string>& host, const std::vector<std::string>& names) {
  if (!host) return true;
  std::string_view h = *host;
  if (h.starts_with('[')) {  // [v6]:port
    const size_t close = h.find(']');
    if (close == std::string_view::npos) return false;
    const std::string_view rest = h.substr(close + 1);
    if (!rest.empty() && !rest.starts_with(':')) return false;
    const std::string v6(h.substr(1, close - 1));
    in6_addr a6{};
    return inet_pton(AF_INET6, v6.c_str(), &a6) == 1;
  }
  const size_t colon = h.find(':');
  if (colon != std::string_view::npos) {
    if (h.find(':', colon + 1) != std::string_view::npos) return false;  // v6 without brackets
    h = h.substr(0, colon);
  }
  if (h.ends_with('.')) h.remove_suffix(1);
  if (h.empty()) return false;
  const std::string name(h);
  in_addr a4{};
  if (inet_pton(AF_INET, name.c_str(), &a4) == 1) return true;
  auto same = [&h](std::string_view n) {
    if (n.ends_with('.')) n.remove_suffix(1);
    return n.size() == h.size() && std::equal(n.begin(), n.end(), h.begin(), [](char a, char b) {
             return std::tolower(static_cast<unsigned char>(a)) ==
                    std::tolower(static_cast<unsigned char>(b));
           });
  };
  if (same("localhost")) return true;
  return std::any_of(names.begin(), names.end(), [&](const std::string& n) { return same(n); });
}

std::string html_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string html_text(std::string_view bytes, uint32_t max_bytes) {
  // Only what can be shown is converted: a 256 KiB name costs no more than a short one.
  const bool long_input = bytes.size() > max_bytes;
  std::string s = shown(bytes.substr(0, long_input ? max_bytes : bytes.size()));
  bool cut = long_input;
  if (s.size() > max_bytes) {
    s.resize(shown_prefix_bytes(s, max_bytes));
    cut = true;
  }
  return html_escape(s) + (cut ? "&hellip;" : "");
}

std::string html_log(std::string_view tail, bool* earlier_dropped) {
  *earlier_dropped = false;
  if (tail.size() > kLogTailBytesMax) {
    tail.remove_prefix(tail.size() - kLogTailBytesMax);
    *earlier_dropped = true;
    // The line the byte bound cut into is dropped, unless it is the only one.
    const size_t nl = tail.find('\n');
    if (nl != std::string_view::npos && nl + 1 < tail.size()) tail.remove_prefix(nl + 1);
  }
  if (tail.ends_with('\n')) tail.remove_suffix(1);
  if (tail.empty()) return "";
  // The last kLogTailLinesMax lines, found from the end: the scan is bounded by them.
  std::vector<std::string_view> lines;
  size_t end = tail.size();
  while (true) {
    const size_t nl = end == 0 ? std::string_view::npos : tail.rfind('\n', end - 1);
    const size_t begin = nl == std::string_view::npos ? 0 : nl + 1;
    lines.push_back(tail.substr(begin, end - begin));
    if (nl == std::string_view::npos) break;
    if (lines.size() == kLogTailLinesMax) {
      *earlier_dropped = true;
      break;
    }
    end = nl;
  }
  std::string out;
  for (auto it = lines.rbegin(); it != lines.rend(); ++it) {
    out += html_escape(shown(*it));
    out += '\n';
  }
  return out;
}

net::HttpReply overview_page(const pb::NodeList& nodes, const pb::JobList& newest,
                             uint64_t jobs_total) {
  std::string body = "<h1>Pool</h1>\n<h2>Nodes (" + std::to_string(nodes.nodes_size()) +
                     ")</h2>\n" + node_rows(nodes) + "<h2>Jobs (" + std::to_string(jobs_total) +
                     ", newest first)</h2>\n" + job_rows(newest, jobs_total);
  return page(200, "pool", body, true);
}

net::HttpReply job_page(const pb::JobDetail& d, const pb::JobSpec* spec, bool commands) {
  const pb::JobSummary& j = d.job();
  std::string body =
      "<h1>Job " + std::to_string(j.id()) + "</h1>\n" + job_head(j, d.now_ms(), commands);
  if (spec != nullptr) body += spec_rows(*spec, commands);
  body += "</table>\n<h2>Tasks</h2>\n";
  body +=
      "<table id=\"tasks\"><tr><th>task (log)</th><th>state</th><th>exit code</th><th>signal</th>"
      "<th>attempts</th><th>node</th><th>duration</th></tr>\n";
  const auto shown_count = std::min<uint64_t>(d.tasks_size(), kTasksShownMax);
  for (uint64_t i = 0; i < shown_count; ++i) {
    const pb::TaskInfo& t = d.tasks(static_cast<int>(i));
    body += "<tr>" + td(task_link(j.id(), t.index())) + state_td(task_state(t.state())) +
            td(std::to_string(t.exit_code()), true) + td(std::to_string(t.signal()), true) +
            td(std::to_string(t.attempts()), true) +
            td(t.node().empty() ? "-" : html_text(t.node(), kFieldBytesMax)) +
            td(duration(t, d.now_ms()), true) + "</tr>\n";
  }
  body += "</table>\n" + more_note(shown_count, j.count(), "tasks");
  return page(200, "job " + std::to_string(j.id()), body, true);
}

net::HttpReply task_page(const pb::JobDetail& d, const LogTail& out, const LogTail& err) {
  const pb::JobSummary& j = d.job();
  if (d.tasks_size() == 0) return not_found_page("no such task");
  const pb::TaskInfo& t = d.tasks(0);
  const std::string id = std::to_string(j.id()) + "." + std::to_string(t.index());
  std::string body = "<h1>Task " + id + "</h1>\n<table id=\"task\">";
  auto row = [&body](std::string_view k, const std::string& v) {
    body += "<tr><th>" + std::string(k) + "</th><td>" + v + "</td></tr>\n";
  };
  row("job", job_link(j.id()) + " " + html_text(j.name(), kFieldBytesMax));
  row("state", html_escape(task_state(t.state())));
  row("exit code", std::to_string(t.exit_code()));
  row("signal", std::to_string(t.signal()));
  row("attempts", std::to_string(t.attempts()));
  row("node", t.node().empty() ? "-" : html_text(t.node(), kFieldBytesMax));
  row("duration", duration(t, d.now_ms()));
  body += "</table>\n";
  for (const auto& [name, tail] : {std::pair{"stdout", &out}, std::pair{"stderr", &err}}) {
    body += "<h2>" + std::string(name) + "</h2>\n";
    if (!tail->error.empty()) {
      body +=
          "<p class=\"bad\">cannot read it: " + html_text(tail->error, kCommandBytesMax) + "</p>\n";
      continue;
    }
    bool dropped = false;
    const std::string text = html_log(tail->bytes, &dropped);
    if (dropped) {
      body += "<p class=\"note\">Earlier output not shown: the last " +
              std::to_string(kLogTailBytesMax / 1024) + " KiB, at most " +
              std::to_string(kLogTailLinesMax) + " lines (<code>cardnode logs " + id +
              "</code> has it all).</p>\n";
    }
    body += "<pre id=\"" + std::string(name) + "\">" + text + "</pre>\n";
  }
  return page(200, "task " + id, body, true);
}

net::HttpReply not_found_page(std::string_view why) {
  return page(404, "not found", "<h1>Not found</h1>\n<p>" + html_escape(why) + "</p>", false);
}

net::HttpReply forbidden_page(std::string_view why) {
  return page(403, "forbidden", "<h1>Forbidden</h1>\n<p>" + html_escape(why) + "</p>", false);
}

net::HttpReply unavailable_page(std::string_view why) {
  return page(503, "unavailable", "<h1>Unavailable</h1>\n<p>" + html_escape(why) + "</p>", true);
}

}  // namespace cardnode::runtime::status
