// Status pages: the server's read-only HTML view of the pool (docs/ARCHITECTURE.md, "Status
// page"), served next to /metrics by StatusSite (status_site.h). Rendering is a pure function
// here — the listings the RPCs answer with (ClientApi::nodes, newest_jobs, job_detail) and
// log bytes in, a whole reply out — so every page is tested without a socket.
//
// What a browser gets: HTML5 with no script, no external asset (inline CSS only), a
// Content-Security-Policy that forbids anything else, nosniff, and a meta refresh. Every
// byte that came from a user or a task (names, commands, labels, reasons, log text) goes
// through shown() (proto/text.h: control bytes and non-UTF-8 as \xHH) and then HTML
// escaping, in text and attributes alike; links are built from integers only.
//
// Bounded: at most kJobsShownMax jobs, kNodesShownMax nodes, kTasksShownMax tasks and
// kLogTailBytesMax / kLogTailLinesMax of each log stream, each field cut to a display length,
// and what is left out is counted on the page ("N more not shown"). The largest page stays
// a few MiB, well under net::HttpServerOptions::reply_bytes_max.
//
// Threading: none shared; callers' (the server's loop thread).
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cardnode.pb.h"
#include "net/http_server.h"

namespace cardnode::runtime::status {

inline constexpr uint32_t kJobsShownMax = 200;
// The RPC port takes about 4,000 agents (server.cc kConnectionsMax): all of a real pool.
inline constexpr uint32_t kNodesShownMax = 4096;
inline constexpr uint32_t kTasksShownMax = 500;
inline constexpr uint32_t kLogTailBytesMax = 16u << 10;  // per stream
inline constexpr uint32_t kLogTailLinesMax = 200;        // per stream
inline constexpr uint32_t kFieldBytesMax = 256;          // a name, label or reason in a table
inline constexpr uint32_t kCommandBytesMax = 4096;       // a job's command on its own page
inline constexpr uint32_t kRefreshSeconds = 5;

// Which page a path names. Ids and indexes are decimal without leading zeros (so one page
// has one path) and fit their types; anything else is kNotFound.
struct Route {
  enum class Kind : uint8_t { kOverview, kJob, kTask, kNotFound };
  Kind kind = Kind::kNotFound;
  uint64_t job_id = 0;
  uint32_t index = 0;
};
Route parse_route(std::string_view path);  // "/", "/jobs/7", "/jobs/7/tasks/3"

// Task logs and job command lines may carry secrets (a token printed by a script, passed as
// an argument): the log page, and a job's command and user on its page, are shown only on a
// loopback listener, where only this machine's users can ask, or when the operator said so
// (`server --status-logs`). Elsewhere the job page says in one line that they are hidden.
bool logs_allowed(const sockaddr_storage& listener, bool status_logs_flag);

// DNS rebinding: a web page on evil.example can point that name at 127.0.0.1 and read this
// listener through the operator's browser, which sends "Host: evil.example". So the status
// pages (not /metrics) answer only a Host (port stripped, IPv6 in brackets) that is an IP
// literal, `localhost`, or one of `names` (the server's hostname, it + ".local", and
// --status-host), compared case-insensitively, a trailing dot ignored; or no Host at all
// (HTTP/1.0: browsers always send one).
bool host_allowed(const std::optional<std::string>& host, const std::vector<std::string>& names);
bool is_loopback(const sockaddr_storage& address);

// HTML-escapes & < > " ' (safe in text and in quoted attributes).
std::string html_escape(std::string_view text);
// User bytes for a page: shown(), cut to max_bytes (marked with "…"), HTML-escaped.
std::string html_text(std::string_view bytes, uint32_t max_bytes);
// A log tail for a <pre>: of the last kLogTailBytesMax bytes (more says earlier output
// exists; the line the bound cuts into is dropped), at most the last kLogTailLinesMax lines,
// each shown() and escaped. *earlier_dropped: output before what is shown exists.
std::string html_log(std::string_view tail, bool* earlier_dropped);

// GET / : nodes, then the newest jobs. jobs_total counts every job the server keeps.
net::HttpReply overview_page(const pb::NodeList& nodes, const pb::JobList& newest,
                             uint64_t jobs_total);
// GET /jobs/ID : the job (the first page of its tasks), its spec's limits if kept (nullptr:
// none), and links to each task's log. Its command and user only if `commands`
// (logs_allowed); else one line says they are hidden and how to show them.
net::HttpReply job_page(const pb::JobDetail& detail, const pb::JobSpec* spec, bool commands);
// The one line shown instead of commands and log tails off loopback.
inline constexpr std::string_view kHiddenNote =
    "hidden: this listener is not loopback (commands and logs may hold secrets); "
    "`cardnode server --status-logs` or a loopback --metrics-listen shows them";

// One stream's tail as the logs RPC answered: the bytes (up to kLogTailBytesMax + 1: one more
// says that earlier output exists), or why there are none.
struct LogTail {
  std::string bytes;
  std::string error;  // non-empty: the read failed (the board is down, ...)
};
// GET /jobs/ID/tasks/INDEX : detail holds the job and the one task.
net::HttpReply task_page(const pb::JobDetail& detail, const LogTail& out, const LogTail& err);

net::HttpReply not_found_page(std::string_view why);
net::HttpReply forbidden_page(std::string_view why);
net::HttpReply unavailable_page(std::string_view why);

}  // namespace cardnode::runtime::status
