// ClientApi: the client requests of docs/CLI.md, one handler each. A handler checks the
// request, asks the coordinator, and turns its answer into a reply. Every answer is sent
// only once every record applied before it is durable (Coordinator::when_durable), so a
// client never sees a state that a crash could take back. Listings come in pages that fit
// a frame (runtime/listing.h).
//
// Threading: loop thread only. The coordinator and the log store must outlive it.
#pragma once

#include <functional>
#include <optional>

#include "cardnode.pb.h"
#include "net/rpc_server.h"
#include "runtime/coordinator/coordinator.h"
#include "storage/log_store.h"

namespace cardnode::runtime {

inline constexpr uint32_t kLogChunkBytesMax = 1u << 20;
inline constexpr uint32_t kLogWaitMsMax = 30'000;  // a `logs -f` read held at most this long

// Fills what only the board itself knows (arch, isolation, io backend) into a node's entry.
using DescribeNode = std::function<void(const sched::Node& node, pb::NodeInfo* info)>;

class AgentHub;

class ClientApi {
 public:
  // local_node: the server's own board (its task logs are here); hub: remote boards.
  ClientApi(Coordinator& coordinator, storage::LogStore& logs, AgentHub& hub,
            std::optional<sched::NodeId> local_node, DescribeNode describe)
      : c_(coordinator),
        logs_(logs),
        hub_(hub),
        local_node_(local_node),
        describe_(std::move(describe)) {}

  void handle(pb::Request&& request, const net::Responder& responder);

  // What the listings answer, for in-process readers (the status page). Unlike handle(),
  // they do not wait for durability: callers wrap them in Coordinator::when_durable.
  pb::NodeList nodes() const;  // `nodes`: every node, with why it takes no new task
  // `ps JOB`: a page of the job's tasks, with now_ms, and the wait reason on the first page.
  pb::JobDetail job_detail(const sched::Job& job, uint32_t first_task, uint32_t max_tasks) const;
  pb::JobList newest_jobs(uint32_t max_jobs) const;  // newest first (listing.h), with now_ms

 private:
  void on_submit(const pb::SubmitJob& m, const net::Responder& r);
  void on_cancel(const pb::CancelJob& m, const net::Responder& r);
  void on_wait(const pb::WaitJob& m, const net::Responder& r);
  void on_get_job(const pb::GetJob& m, const net::Responder& r);
  void on_list_jobs(const pb::ListJobs& m, const net::Responder& r);
  void on_list_nodes(const net::Responder& r);
  void on_read_log(const pb::ReadLog& m, const net::Responder& r);
  void on_drain(const pb::DrainNode& m, const net::Responder& r);
  // Answers with make() once everything applied so far is durable.
  void after_durable(const net::Responder& r, std::function<pb::Response()> make);

  Coordinator& c_;
  void mark_empty_logs(const sched::Job& job, pb::TaskInfo* info) const;
  storage::LogStore& logs_;
  AgentHub& hub_;
  std::optional<sched::NodeId> local_node_;
  DescribeNode describe_;
};

pb::Response error_response(const Error& e);

}  // namespace cardnode::runtime
