#include "cli/json_out.h"

#include <cstdio>
#include <map>

#include "cli/format.h"
#include "proto/text.h"
#include "scheduler/cluster.h"

namespace cardnode::cli {
namespace {

void field(std::string* out, const char* name, const std::string& json_value, bool* first) {
  if (!*first) out->push_back(',');
  *first = false;
  out->append("\"").append(name).append("\":").append(json_value);
}

std::string num(uint64_t v) {
  return std::to_string(v);
}
std::string num(int64_t v) {
  return std::to_string(v);
}

std::string summary_fields(const pb::JobSummary& j, uint64_t server_now_ms) {
  std::string out;
  bool first = true;
  field(&out, "id", num(j.id()), &first);
  field(&out, "name", json_escape(j.name()), &first);
  field(&out, "state", json_escape(job_state_text(j.state())), &first);
  field(&out, "priority", num(uint64_t{j.priority()}), &first);
  field(&out, "count", num(uint64_t{j.count()}), &first);
  // Sorted for stable output; protobuf maps have no order.
  std::map<std::string, uint32_t> states(j.states().begin(), j.states().end());
  std::string st = "{";
  bool sfirst = true;
  for (const auto& [k, v] : states) field(&st, k.c_str(), num(uint64_t{v}), &sfirst);
  st.push_back('}');
  field(&out, "states", st, &first);
  std::string cmd = "[";
  for (int i = 0; i < j.command_size(); ++i) {
    if (i > 0) cmd.push_back(',');
    cmd += json_escape(j.command(i));
  }
  cmd.push_back(']');
  field(&out, "command", cmd, &first);
  // Only when the server cut it (job lists): the shape stays as it was for the rest.
  if (j.command_shortened()) field(&out, "command_shortened", "true", &first);
  // `ps JOB` while tasks are queued: why they wait.
  if (!j.wait_reason().empty()) field(&out, "wait_reason", json_escape(j.wait_reason()), &first);
  // The server's wall clock, ms since the epoch; finished_ms once final; elapsed_ms to then
  // or to the server's now. Absent from an older server.
  if (j.submitted_ms() != 0) field(&out, "submitted_ms", num(j.submitted_ms()), &first);
  if (j.finished_ms() != 0) field(&out, "finished_ms", num(j.finished_ms()), &first);
  if (auto e = job_elapsed_ms(j, server_now_ms)) field(&out, "elapsed_ms", num(*e), &first);
  return out;
}

}  // namespace

std::string json_escape(const std::string& s) {
  return json_quoted(s);
}

// pb::TaskState / pb::JobState values equal the scheduler's (proto/cardnode.proto); a
// value from a newer server that this client does not know prints as "unknown".
const char* task_state_text(pb::TaskState s) {
  if (s < 0 || static_cast<size_t>(s) >= sched::kTaskStateCount) return "unknown";
  return sched::task_state_name(static_cast<sched::TaskState>(s));
}

const char* job_state_text(pb::JobState s) {
  if (s < pb::JOB_QUEUED || s > pb::JOB_CANCELLED) return "unknown";
  return sched::job_state_name(static_cast<sched::JobState>(s));
}

std::string jobs_json(const pb::JobList& list) {
  std::string out = "{\"jobs\":[";
  for (int i = 0; i < list.jobs_size(); ++i) {
    if (i > 0) out.push_back(',');
    out += "{" + summary_fields(list.jobs(i), list.now_ms()) + "}";
  }
  return out + "]}";
}

std::string job_json(const pb::JobDetail& d) {
  std::string out = "{" + summary_fields(d.job(), d.now_ms()) + ",\"tasks\":[";
  for (int i = 0; i < d.tasks_size(); ++i) {
    const pb::TaskInfo& t = d.tasks(i);
    if (i > 0) out.push_back(',');
    std::string obj;
    bool first = true;
    field(&obj, "index", num(uint64_t{t.index()}), &first);
    field(&obj, "state", json_escape(task_state_text(t.state())), &first);
    field(&obj, "exit_code", num(int64_t{t.exit_code()}), &first);
    field(&obj, "signal", num(int64_t{t.signal()}), &first);
    field(&obj, "attempts", num(uint64_t{t.attempts()}), &first);
    field(&obj, "node", json_escape(t.node()), &first);
    if (t.has_usage()) {  // of the latest finished attempt
      char secs[32];
      (void)std::snprintf(secs, sizeof secs, "%.3f", t.usage().cpu_user_ms() / 1e3);
      field(&obj, "cpu_user_seconds", secs, &first);
      (void)std::snprintf(secs, sizeof secs, "%.3f", t.usage().cpu_system_ms() / 1e3);
      field(&obj, "cpu_system_seconds", secs, &first);
      field(&obj, "mem_peak_bytes", num(uint64_t{t.usage().mem_peak_kib()} * 1024), &first);
    }
    // The running attempt's so far, else the latest finished one's; absent when unknown.
    if (const auto ms = task_duration_ms(t, d.now_ms())) {
      char secs[32];
      (void)std::snprintf(secs, sizeof secs, "%.3f", static_cast<double>(*ms) / 1e3);
      field(&obj, "duration_seconds", secs, &first);
    }
    if (t.earlier_size() > 0) {
      std::string earlier = "[";
      for (int e = 0; e < t.earlier_size(); ++e) {
        const pb::AttemptInfo& a = t.earlier(e);
        std::string att;
        bool afirst = true;
        field(&att, "attempt", num(uint64_t{a.attempt()}), &afirst);
        field(&att, "state", json_escape(task_state_text(a.state())), &afirst);
        field(&att, "exit_code", num(int64_t{a.exit_code()}), &afirst);
        field(&att, "signal", num(int64_t{a.signal()}), &afirst);
        field(&att, "node", json_escape(a.node()), &afirst);
        earlier += (e > 0 ? ",{" : "{") + att + "}";
      }
      field(&obj, "earlier", earlier + "]", &first);
    }
    out += "{" + obj + "}";
  }
  return out + "]}";
}

std::string nodes_json(const pb::NodeList& list) {
  std::string out = "{\"nodes\":[";
  for (int i = 0; i < list.nodes_size(); ++i) {
    const pb::NodeInfo& n = list.nodes(i);
    if (i > 0) out.push_back(',');
    std::string obj;
    bool first = true;
    field(&obj, "name", json_escape(n.name()), &first);
    field(&obj, "state", json_escape(n.state()), &first);
    field(&obj, "arch", json_escape(n.arch()), &first);
    field(&obj, "cpu_millis", num(uint64_t{n.cpu_millis()}), &first);
    field(&obj, "mem_bytes", num(n.mem_bytes()), &first);
    field(&obj, "cpu_millis_used", num(uint64_t{n.cpu_millis_used()}), &first);
    field(&obj, "mem_bytes_used", num(n.mem_bytes_used()), &first);
    field(&obj, "running_tasks", num(uint64_t{n.running_tasks()}), &first);
    field(&obj, "isolation", json_escape(n.isolation()), &first);
    std::string enforced = "[";
    for (int e = 0; e < n.enforced_size(); ++e)
      enforced += (e > 0 ? "," : "") + json_escape(n.enforced(e));
    field(&obj, "enforced", enforced + "]", &first);
    field(&obj, "io_backend", json_escape(n.io_backend()), &first);
    field(&obj, "transport", json_escape(n.transport()), &first);
    // Said plainly too, for scripts that only ask "is this pool sealed?"
    field(&obj, "insecure", n.transport() == "plaintext" ? "true" : "false", &first);
    field(&obj, "task_user", json_escape(n.task_user()), &first);
    field(&obj, "root_tasks", n.root_tasks() ? "true" : "false", &first);
    field(&obj, "tasks_max", num(uint64_t{n.tasks_max()}), &first);
    field(&obj, "board_model", json_escape(n.board_model()), &first);
    if (n.has_temperature_millicelsius()) {
      field(&obj, "temperature_millicelsius", std::to_string(n.temperature_millicelsius()), &first);
    }
    if (n.has_load1_milli()) {  // the 1-minute load average, e.g. 0.52
      char load[16];            // a uint32 / 1000 with three decimals: fits
      (void)std::snprintf(load, sizeof load, "%.3f", n.load1_milli() / 1000.0);
      field(&obj, "load1", load, &first);
    }
    field(&obj, "throttled", n.throttled() ? "true" : "false", &first);
    field(&obj, "under_voltage", n.under_voltage() ? "true" : "false", &first);
    // Why it gets no new tasks ("hot 83.0C", "throttled", "draining", ...); "" when it does.
    field(&obj, "skip_reason", json_escape(n.skip_reason()), &first);
    field(&obj, "last_seen_ms_ago", num(n.last_seen_ms_ago()), &first);
    std::map<std::string, std::string> labels(n.labels().begin(), n.labels().end());
    std::string lab = "{";
    bool lfirst = true;
    for (const auto& [k, v] : labels) {
      lab += (lfirst ? "" : ",") + json_escape(k) + ":" + json_escape(v);
      lfirst = false;
    }
    field(&obj, "labels", lab + "}", &first);
    out += "{" + obj + "}";
  }
  return out + "]}";
}

}  // namespace cardnode::cli
