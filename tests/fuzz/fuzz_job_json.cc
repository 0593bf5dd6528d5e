// fuzz_job_json: the JSON job spec reader of `cardnode submit FILE.json`
// (cli::job_spec_from_json, cli/job_json.h) on arbitrary bytes.
// Must hold: it returns a spec or an error with a message; it never
// crashes, hits UB or lets an exception out (an escaping one aborts the target).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "cli/job_json.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto spec = cardnode::cli::job_spec_from_json(
      std::string_view(reinterpret_cast<const char*>(data), size));
  if (!spec) {
    const std::string& m = spec.error().message;
    if (m.empty()) std::abort();
  }
  return 0;
}
