// A job spec from JSON (`cardnode submit FILE.json`): the protobuf JSON mapping of
// pb::JobSpec, read with nlohmann-json because the lite protobuf runtime has no JSON
// (proto/cardnode.proto says why the lite one). Field names are accepted as in the schema
// ("cpu_millis") and in lowerCamelCase ("cpuMillis"); 64-bit numbers as JSON numbers or
// decimal strings; null means the default. Anything else is refused with one line naming
// the field: an unknown field, a wrong type, a negative or fractional or too large number.
//
// Threading: none; a pure function.
#pragma once

#include <string_view>

#include "cardnode.pb.h"
#include "proto/error.h"

namespace cardnode::cli {

[[nodiscard]] Result<pb::JobSpec> job_spec_from_json(std::string_view text);

}  // namespace cardnode::cli
