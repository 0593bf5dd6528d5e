// StatusSite: serves the status pages (status_page.h) on the server's /metrics listener.
// It reads what the RPCs read, through the same code — ClientApi's listings for `nodes` and
// `ps`, and the `logs` request itself (ReadLog with tail) for a task's output, so a task that
// ran on another board is read through its agent like `cardnode logs` — and answers, as the
// API does, only once everything applied so far is durable.
//
// Threading: loop thread only. The coordinator and the API must outlive it; an answer that
// comes after the HTTP request's deadline is dropped (net::HttpResponder).
#pragma once

#include <string>

#include "net/http_server.h"
#include "runtime/coordinator/api.h"
#include "runtime/coordinator/coordinator.h"

namespace cardnode::runtime {

struct StatusSiteOptions {
  // Task log tails on the page (status::logs_allowed): a loopback listener or --status-logs.
  bool logs = false;
};

class StatusSite {
 public:
  StatusSite(Coordinator& coordinator, ClientApi& api, StatusSiteOptions options)
      : c_(coordinator), api_(api), options_(options) {}

  void serve(const std::string& path, const net::HttpResponder& responder);

 private:
  void task(uint64_t job_id, uint32_t index, net::HttpResponder responder);

  Coordinator& c_;
  ClientApi& api_;
  StatusSiteOptions options_;
};

}  // namespace cardnode::runtime
