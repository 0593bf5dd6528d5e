#include "runtime/coordinator/status_site.h"

#include <memory>
#include <utility>

#include "runtime/coordinator/status_page.h"

namespace cardnode::runtime {

struct StatusSite::InFlight {
  explicit InFlight(std::shared_ptr<uint32_t> c) : count(std::move(c)) { ++*count; }
  ~InFlight() { --*count; }
  InFlight(const InFlight&) = delete;
  InFlight& operator=(const InFlight&) = delete;
  std::shared_ptr<uint32_t> count;
};

void StatusSite::serve(const net::HttpRequest& request, const net::HttpResponder& r) {
  if (!status::host_allowed(request.host, options_.hosts)) {
    return r.reply(status::forbidden_page(
        "unknown Host name (a DNS-rebinding guard): use the server's IP address, its hostname, "
        "or add the name with `cardnode server --status-host NAME`"));
  }
  const status::Route route = status::parse_route(request.path);
  if (route.kind == status::Route::Kind::kNotFound)
    return r.reply(status::not_found_page("no such page"));
  if (route.kind == status::Route::Kind::kTask && !options_.logs) {
    return r.reply(status::forbidden_page(
        "task logs are shown only on a loopback listener or with `cardnode server "
        "--status-logs` (they may hold secrets)"));
  }
  if (*in_flight_ >= options_.in_flight_max)
    return r.reply(status::unavailable_page("too many status page requests; try again"));
  auto held = std::make_shared<InFlight>(in_flight_);
  // As the RPCs answer: only state that a crash cannot take back.
  const bool queued = c_.when_durable([this, route, r, held] {
    const auto& cluster = c_.state().cluster();
    if (route.kind == status::Route::Kind::kOverview) {
      return r.reply(status::overview_page(api_.nodes(), api_.newest_jobs(status::kJobsShownMax),
                                           cluster.jobs().size()));
    }
    const sched::Job* job = cluster.job(route.job_id);
    if (job == nullptr)
      return r.reply(status::not_found_page(c_.missing_job(route.job_id).describe()));
    if (route.kind == status::Route::Kind::kJob) {
      return r.reply(status::job_page(api_.job_detail(*job, 0, status::kTasksShownMax),
                                      c_.state().spec(job->id), options_.logs));
    }
    task(route.job_id, route.index, r, held);
  });
  if (!queued) r.reply(status::unavailable_page("server busy; try again"));
}

// Both streams' tails through the `logs` request, then one page.
void StatusSite::task(uint64_t job_id, uint32_t index, net::HttpResponder r,
                      std::shared_ptr<InFlight> held) {
  const sched::Job* job = c_.state().cluster().job(job_id);
  if (job == nullptr || index >= job->tasks.size()) {
    return r.reply(
        status::not_found_page("no task " + std::to_string(job_id) + "." + std::to_string(index)));
  }
  struct Pending {
    pb::JobDetail detail;
    status::LogTail tails[2];
    int left = 2;
    net::HttpResponder responder;
    std::shared_ptr<InFlight> held;
  };
  auto p = std::make_shared<Pending>();
  p->held = std::move(held);
  p->detail = api_.job_detail(*job, index, 1);
  p->responder = std::move(r);
  for (int s = 0; s < 2; ++s) {
    pb::Request req;
    pb::ReadLog* rl = req.mutable_read_log();
    rl->set_job_id(job_id);
    rl->set_index(index);
    rl->set_stream(s == 0 ? pb::STDOUT : pb::STDERR);
    rl->set_tail(true);
    rl->set_max_bytes(status::kLogTailBytesMax + 1);  // one more: earlier output exists
    api_.handle(std::move(req), net::Responder::to([p, s](pb::Response&& resp) {
                  if (resp.error() != pb::OK) {
                    p->tails[s].error =
                        resp.error_message().empty() ? "error" : resp.error_message();
                  } else {
                    p->tails[s].bytes = std::move(*resp.mutable_log()->mutable_data());
                  }
                  if (--p->left == 0) {
                    p->responder.reply(status::task_page(p->detail, p->tails[0], p->tails[1]));
                  }
                }));
  }
}

}  // namespace cardnode::runtime
