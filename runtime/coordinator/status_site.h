// StatusSite: serves the status pages (status_page.h) on the server's /metrics listener.
// It reads what the RPCs read, through the same code — ClientApi's listings for `nodes` and
// `ps`, and the `logs` request itself (ReadLog with tail) for a task's output, so a task that
// ran on another board is read through its agent like `cardnode logs` — and answers, as the
// API does, only once everything applied so far is durable.
//
// Who gets what (status_page.h): a Host that is not an IP literal, localhost or one of
// options.hosts gets 403 (DNS rebinding); commands, users and log tails only if
// options.logs. Unauthenticated, so it holds at most options.in_flight_max requests in the
// coordinator's durability queue and the agents' log reads at once; past that, 503.
//
// Threading: loop thread only. The coordinator and the API must outlive it; an answer that
// comes after the HTTP request's deadline is dropped (net::HttpResponder).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "net/http_server.h"
#include "runtime/coordinator/api.h"
#include "runtime/coordinator/coordinator.h"

namespace cardnode::runtime {

struct StatusSiteOptions {
  // Task log tails, and jobs' commands and users, on the pages (status::logs_allowed): a
  // loopback listener or --status-logs.
  bool logs = false;
  // Host names the pages answer besides IP literals and localhost (status::host_allowed):
  // the server's hostname, it + ".local", and each --status-host.
  std::vector<std::string> hosts;
  // Page requests that wait on storage or an agent at once; past it a 503 at once, so
  // strangers cannot fill the queues the API's clients share.
  uint32_t in_flight_max = 16;
};

class StatusSite {
 public:
  StatusSite(Coordinator& coordinator, ClientApi& api, StatusSiteOptions options)
      : c_(coordinator), api_(api), options_(std::move(options)) {}

  void serve(const net::HttpRequest& request, const net::HttpResponder& responder);
  // Page requests waiting now (at most options.in_flight_max).
  uint32_t in_flight() const { return *in_flight_; }

 private:
  // Held by every callback of one page request; the count drops when the last is gone.
  struct InFlight;
  void task(uint64_t job_id, uint32_t index, net::HttpResponder responder,
            std::shared_ptr<InFlight> held);

  Coordinator& c_;
  ClientApi& api_;
  StatusSiteOptions options_;
  std::shared_ptr<uint32_t> in_flight_ = std::make_shared<uint32_t>(0);
};

}  // namespace cardnode::runtime
