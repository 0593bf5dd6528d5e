#include "runtime/coordinator/api.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <optional>

#include "runtime/coordinator/agent_hub.h"
#include "runtime/coordinator/listing.h"
#include "scheduler/heat.h"

namespace cardnode::runtime {
namespace {

static_assert(static_cast<int>(Errc::kBusy) == pb::BUSY &&
                  static_cast<int>(Errc::kBusy) + 1 == pb::ErrorCode_ARRAYSIZE &&
                  static_cast<int>(Errc::kNotFound) == pb::NOT_FOUND,
              "pb::ErrorCode mirrors cardnode::Errc");

}  // namespace

pb::Response error_response(const Error& e) {
  pb::Response r;
  r.set_error(static_cast<pb::ErrorCode>(e.code));
  r.set_error_message(e.describe());
  return r;
}

void ClientApi::handle(pb::Request&& req, const net::Responder& r) {
  if (c_.stopping()) return r.reply(error_response({Errc::kUnavailable, "server is stopping", 0}));
  switch (req.body_case()) {
    case pb::Request::kSubmit: return on_submit(req.submit(), r);
    case pb::Request::kCancel: return on_cancel(req.cancel(), r);
    case pb::Request::kWaitJob: return on_wait(req.wait_job(), r);
    case pb::Request::kReadLog: return on_read_log(req.read_log(), r);
    case pb::Request::kListJobs: return on_list_jobs(req.list_jobs(), r);
    case pb::Request::kGetJob: return on_get_job(req.get_job(), r);
    case pb::Request::kListNodes: return on_list_nodes(r);
    case pb::Request::kAgentHello: return hub_.on_hello(req.agent_hello(), r);
    case pb::Request::kAgentHeartbeat: return hub_.on_heartbeat(req.agent_heartbeat(), r);
    case pb::Request::kAgentPoll: return hub_.on_poll(req.agent_poll(), r);
    case pb::Request::kAgentReport: return hub_.on_report(req.agent_report(), r);
    case pb::Request::kAgentLog: return hub_.on_log(req.agent_log(), r);
    case pb::Request::kDrain: return on_drain(req.drain(), r);
    case pb::Request::BODY_NOT_SET: break;
  }
  r.reply(error_response({Errc::kInvalidArgument, "request has no body", 0}));
}

void ClientApi::after_durable(const net::Responder& r, std::function<pb::Response()> make) {
  bool queued = c_.when_durable([r, make = std::move(make)] { r.reply(make()); });
  if (!queued) r.reply(error_response({Errc::kBusy, "server busy; try again", 0}));
}

void ClientApi::on_submit(const pb::SubmitJob& m, const net::Responder& r) {
  c_.submit(
      m.spec(),
      [r](Result<sched::JobId> id) {
        if (!id) return r.reply(error_response(id.error()));
        pb::Response resp;
        resp.mutable_submitted()->set_job_id(*id);
        r.reply(std::move(resp));
      },
      m.then_wait());
}

void ClientApi::on_cancel(const pb::CancelJob& m, const net::Responder& r) {
  c_.cancel(m.job_id(), [r](Result<uint32_t> n) {
    if (!n) return r.reply(error_response(n.error()));
    pb::Response resp;
    resp.mutable_cancelled()->set_tasks_cancelled(*n);
    r.reply(std::move(resp));
  });
}

void ClientApi::on_wait(const pb::WaitJob& m, const net::Responder& r) {
  const sched::JobId id = m.job_id();
  c_.wait_job(id, [this, r, id](Status st) {
    if (!st) return r.reply(error_response(st.error()));
    const sched::Job* job = c_.state().cluster().job(id);
    if (job == nullptr) return r.reply(error_response(c_.missing_job(id)));
    pb::Response resp;  // the first page: the client reads the rest with GetJob
    *resp.mutable_job() = job_page(c_.state(), *job, 0, 0);
    resp.mutable_job()->set_now_ms(c_.now_ms());
    if (job->tasks.size() == 1 && resp.job().tasks_size() == 1) {
      mark_empty_logs(*job, resp.mutable_job()->mutable_tasks(0));
    }
    r.reply(std::move(resp));
  });
}

// A final task's logs are complete once its end is reported (the executor closes them
// first), and a log file is made by the first byte of output (storage/log_store.h): no
// file, no output. Two stat calls, for WaitJob's one-task answers only.
void ClientApi::mark_empty_logs(const sched::Job& job, pb::TaskInfo* info) const {
  const sched::Task& task = job.tasks[0];
  if (!sched::is_final(task.state) || task.attempts == 0) return;
  if (!local_node_ || task.node != *local_node_) return;
  auto absent = [&](storage::Stream stream) {
    struct stat st {};
    const std::string path = logs_.path(storage::LogKey{job.id, 0, stream});
    return ::stat(path.c_str(), &st) != 0 && errno == ENOENT;
  };
  info->set_stdout_empty(absent(storage::Stream::kStdout));
  info->set_stderr_empty(absent(storage::Stream::kStderr));
}

void ClientApi::on_get_job(const pb::GetJob& m, const net::Responder& r) {
  after_durable(r, [this, m] {
    const sched::Job* job = c_.state().cluster().job(m.job_id());
    if (job == nullptr) return error_response(c_.missing_job(m.job_id()));
    pb::Response resp;
    *resp.mutable_job() = job_detail(*job, m.first_task(), m.max_tasks());
    return resp;
  });
}

pb::JobDetail ClientApi::job_detail(const sched::Job& job, uint32_t first_task,
                                    uint32_t max_tasks) const {
  pb::JobDetail d = job_page(c_.state(), job, first_task, max_tasks);
  d.set_now_ms(c_.now_ms());
  if (first_task == 0) d.mutable_job()->set_wait_reason(c_.wait_reason(job.id));
  return d;
}

pb::JobList ClientApi::newest_jobs(uint32_t max_jobs) const {
  pb::JobList list = newest_job_list(c_.state(), max_jobs);
  list.set_now_ms(c_.now_ms());
  return list;
}

void ClientApi::on_list_jobs(const pb::ListJobs& m, const net::Responder& r) {
  after_durable(r, [this, m] {
    pb::Response resp;
    *resp.mutable_jobs() = list_jobs(c_.state(), m);
    resp.mutable_jobs()->set_now_ms(c_.now_ms());
    return resp;
  });
}

void ClientApi::on_list_nodes(const net::Responder& r) {
  after_durable(r, [this] {
    pb::Response resp;
    *resp.mutable_nodes() = nodes();
    return resp;
  });
}

pb::NodeList ClientApi::nodes() const {
  pb::NodeList list;
  for (const sched::Node& n : c_.state().cluster().nodes()) {
    if (n.removed) continue;
    pb::NodeInfo* ni = list.add_nodes();
    ni->set_name(n.spec.name);
    const char* state = n.state == sched::NodeState::kDown ? "down"
                        : !n.draining                      ? "ready"
                        : n.running > 0                    ? "draining"
                                                           : "drained";
    ni->set_state(state);
    ni->set_tasks_max(n.spec.tasks_max);
    ni->set_cpu_millis(n.spec.capacity.cpu_millis);
    ni->set_mem_bytes(n.spec.capacity.mem_bytes);
    ni->set_cpu_millis_used(n.used.cpu_millis);
    ni->set_mem_bytes_used(n.used.mem_bytes);
    ni->set_running_tasks(n.running);
    for (const auto& [k, v] : n.spec.labels) (*ni->mutable_labels())[k] = v;
    if (describe_) describe_(n, ni);
    // Why it takes no new task: the scheduler's answer (Cluster::why_skipped), in words.
    switch (c_.state().cluster().why_skipped(n.id)) {
      case sched::NodeSkip::kNone:
      case sched::NodeSkip::kRemoved: break;
      case sched::NodeSkip::kDown:
      case sched::NodeSkip::kDraining: ni->set_skip_reason(state); break;
      case sched::NodeSkip::kHot:
      case sched::NodeSkip::kThrottled:
      case sched::NodeSkip::kUnderVoltage: {
        // A held board stays "ready": it is up, and runs what it has.
        std::optional<int32_t> milli;
        if (ni->has_temperature_millicelsius()) milli = ni->temperature_millicelsius();
        ni->set_skip_reason(sched::describe_hold(n.hold, milli, c_.heat_bounds()));
        break;
      }
      case sched::NodeSkip::kTaskLimit:
        ni->set_skip_reason("at its task limit (" + std::to_string(n.spec.tasks_max) + ")");
        break;
      case sched::NodeSkip::kFull: ni->set_skip_reason("full"); break;
    }
  }
  return list;
}

void ClientApi::on_read_log(const pb::ReadLog& m, const net::Responder& r) {
  const sched::Job* job = c_.state().cluster().job(m.job_id());
  if (job == nullptr) return r.reply(error_response(c_.missing_job(m.job_id())));
  if (m.index() >= job->tasks.size()) {
    return r.reply(error_response(
        {Errc::kNotFound, "no task " + std::to_string(m.job_id()) + "." + std::to_string(m.index()),
         0}));
  }
  const sched::Task& task = job->tasks[m.index()];
  // "final" is state: it is said only once the record that made the task final is durable
  // (until then the client reads on and asks again). The bytes are output, not state, and
  // go at once: no read holds a chunk while it waits for the disk.
  const bool final = sched::is_final(task.state) && c_.all_durable();
  if (task.attempts == 0) {
    pb::Response resp;
    resp.mutable_log()->set_next_offset(m.offset());
    resp.mutable_log()->set_final(final);
    return r.reply(std::move(resp));
  }
  const uint64_t offset = m.offset();
  // Logs stay on the board that ran the task: another board's are fetched through its agent.
  if (!local_node_ || task.node != *local_node_) {
    const uint32_t wait_ms = final || m.tail() ? 0 : std::min<uint32_t>(m.wait_ms(), kLogWaitMsMax);
    return hub_.fetch_log(task.node, m, wait_ms, [r, offset](pb::Response resp) {
      if (resp.has_log()) {
        resp.mutable_log()->set_next_offset(offset + resp.log().data().size());
      }
      r.reply(std::move(resp));
    });
  }
  storage::LogKey key{
      m.job_id(), m.index(),
      m.stream() == pb::STDERR ? storage::Stream::kStderr : storage::Stream::kStdout};
  uint32_t max =
      m.max_bytes() == 0 ? kLogChunkBytesMax : std::min(m.max_bytes(), kLogChunkBytesMax);
  auto done = [r, final, offset](Result<std::string> data) {
    if (!data && data.error().code != Errc::kNotFound) return r.reply(error_response(data.error()));
    std::string bytes = data ? std::move(*data) : std::string();
    pb::Response resp;
    pb::LogChunk* chunk = resp.mutable_log();
    chunk->set_next_offset(offset + bytes.size());
    chunk->set_final(final && bytes.empty());
    chunk->set_data(std::move(bytes));
    r.reply(std::move(resp));
  };
  if (m.tail()) return logs_.read_tail(key, max, std::move(done));
  logs_.read(key, offset, max, std::move(done));
}

void ClientApi::on_drain(const pb::DrainNode& m, const net::Responder& r) {
  c_.drain(m.node(), m.undrain(), m.deadline_ms(), [r](Status st) {
    if (!st) return r.reply(error_response(st.error()));
    r.reply(pb::Response{});
  });
}

}  // namespace cardnode::runtime
