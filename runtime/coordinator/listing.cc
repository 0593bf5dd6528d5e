#include "runtime/coordinator/listing.h"

#include <google/protobuf/io/coded_stream.h>

#include <algorithm>

#include "net/frame.h"
#include "proto/text.h"
#include "storage/wal_format.h"

namespace cardnode::runtime {
namespace {

// The largest reply: the bytes bound, plus the one entry a page takes even past it, plus
// the job's own entry in a job's page; an entry comes from records (a spec, a node name),
// each at most one WAL record. The rest of a Response is a few dozen bytes.
static_assert(kPageBytesMax + 2 * storage::kRecordBytesMax + 4096 <= net::kFrameBytesMax,
              "a page fits a frame");

// What an entry adds to a repeated message field: tag (1 byte), length, message.
uint64_t entry_bytes(size_t message_bytes) {
  return 1 + google::protobuf::io::CodedOutputStream::VarintSize64(message_bytes) + message_bytes;
}

void put_shortened(const google::protobuf::RepeatedPtrField<std::string>& command,
                   pb::JobSummary* out) {
  size_t bytes = 0;
  for (const std::string& arg : command) {
    const size_t room = kListedCommandBytesMax - bytes;
    if (static_cast<uint32_t>(out->command_size()) == kListedArgsMax || room == 0) {
      out->set_command_shortened(true);
      return;
    }
    // Not splitting a UTF-8 character, for display; other bytes are cut at the budget.
    std::string piece = arg.substr(0, prefix_bytes(arg, room));
    const bool cut = piece.size() < arg.size();
    bytes += piece.size();
    if (!piece.empty() || !cut) out->add_command(std::move(piece));
    if (cut) {
      out->set_command_shortened(true);
      return;
    }
  }
}

void put_task(const State& state, const sched::Job& job, uint32_t index, pb::TaskInfo* ti) {
  const sched::Task& t = job.tasks[index];
  ti->set_index(index);
  ti->set_state(to_pb(t.state));
  // The task's exit is its last attempt's, once that attempt has ended. Not while one runs
  // or waits to (the previous end is under `earlier`), nor when a retry was cancelled
  // before it started (the codes kept are that earlier attempt's).
  const auto earlier = job.earlier.find(index);
  const bool codes_are_earlier = earlier != job.earlier.end() && !earlier->second.empty() &&
                                 earlier->second.back().attempt == t.attempts;
  if (sched::is_final(t.state) && !codes_are_earlier) {
    ti->set_exit_code(t.exit_code);
    ti->set_signal(t.signal);
  }
  ti->set_attempts(t.attempts);
  if (t.attempts == 0) return;
  if (const sched::Node* node = state.cluster().node(t.node)) ti->set_node(node->spec.name);
  if (index < job.usage.size() && job.usage[index] != sched::TaskUsage{}) {
    const sched::TaskUsage& u = job.usage[index];
    pb::TaskUsage* pu = ti->mutable_usage();
    pu->set_cpu_user_ms(u.cpu_user_ms);
    pu->set_cpu_system_ms(u.cpu_system_ms);
    pu->set_mem_peak_kib(u.mem_peak_kib);
    pu->set_wall_ms(u.wall_ms);
  }
  if (auto started = job.started_ms.find(index); started != job.started_ms.end()) {
    ti->set_started_ms(started->second);
  }
  if (earlier == job.earlier.end()) return;
  for (const sched::EarlierAttempt& a : earlier->second) {
    pb::AttemptInfo* ai = ti->add_earlier();
    ai->set_attempt(a.attempt);
    ai->set_state(to_pb(a.state));
    ai->set_exit_code(a.exit_code);
    ai->set_signal(a.signal);
    if (const sched::Node* node = state.cluster().node(a.node)) ai->set_node(node->spec.name);
  }
}

uint32_t page_max(uint32_t asked, uint32_t bound) {
  return std::max(1u, asked == 0 ? bound : std::min(asked, bound));
}

}  // namespace

pb::JobSummary job_summary(const State& state, const sched::Job& job, Command command) {
  pb::JobSummary s;
  s.set_id(job.id);
  s.set_name(job.spec.name);
  s.set_state(to_pb(job.state));
  s.set_priority(job.spec.priority);
  s.set_count(job.spec.count);
  s.set_submitted_ms(job.submitted_ms);
  if (sched::is_final(job.state)) s.set_finished_ms(job.finished_ms);
  for (size_t i = 0; i < sched::kTaskStateCount; ++i) {
    if (job.state_counts[i] == 0) continue;
    (*s.mutable_states())[sched::task_state_name(static_cast<sched::TaskState>(i))] =
        job.state_counts[i];
  }
  const pb::JobSpec* spec = state.spec(job.id);
  if (spec == nullptr) return s;
  if (command == Command::kWhole) {
    *s.mutable_command() = spec->command();
  } else {
    put_shortened(spec->command(), &s);
  }
  return s;
}

pb::JobList list_jobs(const State& state, const pb::ListJobs& request, const PageBounds& bounds) {
  pb::JobList list;
  const auto& jobs = state.cluster().jobs();
  const uint32_t max = page_max(request.max_jobs(), bounds.jobs_max);
  uint64_t bytes = 0;
  auto it = jobs.upper_bound(request.after_job_id());
  for (; it != jobs.end() && static_cast<uint32_t>(list.jobs_size()) < max; ++it) {
    pb::JobSummary* s = list.add_jobs();
    *s = job_summary(state, it->second, Command::kShortened);
    bytes += entry_bytes(s->ByteSizeLong());
    if (bytes > bounds.bytes_max && list.jobs_size() > 1) {
      list.mutable_jobs()->RemoveLast();
      break;
    }
  }
  if (it != jobs.end()) list.set_next_after(list.jobs(list.jobs_size() - 1).id());
  return list;
}

pb::JobList newest_job_list(const State& state, uint32_t max_jobs) {
  pb::JobList list;
  const auto& jobs = state.cluster().jobs();
  for (auto it = jobs.rbegin();
       it != jobs.rend() && static_cast<uint32_t>(list.jobs_size()) < max_jobs; ++it) {
    *list.add_jobs() = job_summary(state, it->second, Command::kShortened);
  }
  return list;
}

pb::JobDetail job_page(const State& state, const sched::Job& job, uint32_t first_task,
                       uint32_t max_tasks, const PageBounds& bounds) {
  pb::JobDetail d;
  *d.mutable_job() = job_summary(state, job, Command::kWhole);
  uint64_t bytes = entry_bytes(d.job().ByteSizeLong());
  const auto count = static_cast<uint32_t>(job.tasks.size());
  const uint32_t max = page_max(max_tasks, bounds.tasks_max);
  uint32_t i = first_task;
  for (; i < count && static_cast<uint32_t>(d.tasks_size()) < max; ++i) {
    pb::TaskInfo* ti = d.add_tasks();
    put_task(state, job, i, ti);
    bytes += entry_bytes(ti->ByteSizeLong());
    if (bytes > bounds.bytes_max && d.tasks_size() > 1) {
      d.mutable_tasks()->RemoveLast();
      break;
    }
  }
  if (i < count) d.set_next_task(i);
  return d;
}

}  // namespace cardnode::runtime
