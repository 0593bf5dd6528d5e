// The stable JSON of `ps --json` and `nodes --json` (docs/CLI.md): snake_case names,
// numbers as numbers, states as the names the brief fixes. Fields may be added, never
// renamed. Hand-written rather than protobuf's JSON mapping, which would print
// camelCase names, 64-bit numbers as strings and enum names like TASK_QUEUED.
// Commands and names are bytes: valid UTF-8 as it is, other bytes as U+FFFD.
#pragma once

#include <string>

#include "cardnode.pb.h"

namespace cardnode::cli {

// With the surrounding quotes; bytes that are not UTF-8 become U+FFFD (proto/text.h).
std::string json_escape(const std::string& s);
const char* task_state_text(pb::TaskState s);  // "queued", "timed_out", ...
const char* job_state_text(pb::JobState s);

std::string jobs_json(const pb::JobList& list);     // {"jobs":[...]}
std::string job_json(const pb::JobDetail& detail);  // the job's object plus "tasks"
std::string nodes_json(const pb::NodeList& list);   // {"nodes":[...]}

}  // namespace cardnode::cli
