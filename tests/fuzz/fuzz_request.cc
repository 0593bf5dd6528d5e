// fuzz_request: a pb::Request parsed from arbitrary bytes (what a client frame carries), and
// when it is a submit, its JobSpec through the server's checks: job_spec_bytes_error()
// (proto/text.h) and State::normalize() (runtime/coordinator/state.h, default limits), then
// the JobSubmitted record the server would write, applied to that State. The command,
// name, cwd and env values also go through shown() and json_quoted().
// Must hold: no crash or UB; a spec with a byte error is refused; a spec normalize()
// accepts has a command, count >= 1, priority <= 100, a name, fits kSpecBytesMax, passes
// the byte check and applies to the State; shown() is one line of UTF-8; json_quoted()
// parses with nlohmann::json and gives back valid UTF-8 input unchanged.
#include <google/protobuf/stubs/logging.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "cardnode.pb.h"
#include "proto/text.h"
#include "runtime/coordinator/state.h"

namespace {

void require(bool ok) {
  if (!ok) std::abort();
}

void check_text(std::string_view bytes) {
  const std::string s = cardnode::shown(bytes);
  require(cardnode::is_utf8(s));
  for (unsigned char c : s) require(c >= 0x20 && c != 0x7F);
  const std::string q = cardnode::json_quoted(bytes);
  const auto parsed = nlohmann::json::parse(q, nullptr, /*allow_exceptions=*/false);
  require(parsed.is_string());
  if (cardnode::is_utf8(bytes)) require(parsed.get<std::string>() == bytes);
}

}  // namespace

// Parsing logs every string field that is not UTF-8 to stderr: noise that slows the run.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace cardnode;
  pb::Request req;
  if (!req.ParseFromArray(data, static_cast<int>(size))) return 0;
  if (!req.has_submit()) return 0;
  pb::JobSpec spec = req.submit().spec();
  for (const std::string& arg : spec.command()) check_text(arg);
  check_text(spec.name());
  check_text(spec.cwd());
  for (const auto& [k, v] : spec.env()) {
    check_text(k);
    check_text(v);
  }

  const bool bytes_bad = job_spec_bytes_error(spec).has_value();
  runtime::State state{sched::Limits{}};
  const Status st = state.normalize(&spec);
  if (bytes_bad) require(!st);
  if (!st) return 0;
  require(spec.command_size() > 0 && !spec.command(0).empty());
  require(spec.count() >= 1 && spec.priority() <= 100 && !spec.name().empty());
  require(spec.ByteSizeLong() <= runtime::kSpecBytesMax);
  require(!job_spec_bytes_error(spec).has_value());

  pb::WalRecord rec;
  pb::JobSubmitted* s = rec.mutable_job_submitted();
  s->set_job_id(state.cluster().last_job_id() + 1);
  *s->mutable_spec() = spec;
  s->set_submitted_ms(1);
  require(state.apply(rec, 1).has_value());
  return 0;
}
