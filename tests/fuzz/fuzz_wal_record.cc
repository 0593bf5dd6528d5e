// fuzz_wal_record: WAL replay's record step on arbitrary bytes. Replay
// (Coordinator::recover, runtime/coordinator/coordinator.cc) decodes each record payload
// with pb::WalRecord::ParseFromArray and hands it to State::apply(record, seq); this does
// the same. The input is a run of payloads, each as a 2-byte little-endian length and that
// many bytes (the last one takes what is left), applied in turn to one fresh State with
// seq 1, 2, ... so that later records meet the jobs and nodes earlier ones made.
// Must hold: apply() applies or refuses, never crashes or hits UB; a refused record
// changes nothing (all or nothing: applied_seq and the task totals stay); after every
// record the task totals equal the sum of the jobs' per-state counts.
#include <google/protobuf/stubs/logging.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "cardnode.pb.h"
#include "runtime/coordinator/state.h"

namespace {

void require(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

// Parsing logs every string field that is not UTF-8 to stderr: noise that slows the run.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace cardnode;
  runtime::State state{sched::Limits{}};
  uint64_t seq = 0;
  for (size_t pos = 0; pos < size && seq < 64;) {
    size_t n = size - pos;
    size_t at = pos;
    if (n >= 2) {
      const size_t len = data[pos] | (size_t{data[pos + 1]} << 8);
      at = pos + 2;
      n = std::min(len, size - at);
    }
    pos = at + n;
    pb::WalRecord rec;
    if (!rec.ParseFromArray(data + at, static_cast<int>(n))) continue;
    ++seq;
    const auto totals_before = state.task_totals();
    const uint64_t applied_before = state.applied_seq();
    auto applied = state.apply(rec, seq);
    if (!applied) {
      require(state.applied_seq() == applied_before);
      require(state.task_totals() == totals_before);
    } else {
      require(state.applied_seq() == seq);
    }
    std::array<uint64_t, sched::kTaskStateCount> sum{};
    for (const auto& [id, job] : state.cluster().jobs()) {
      for (size_t s = 0; s < sched::kTaskStateCount; ++s) sum[s] += job.state_counts[s];
    }
    require(sum == state.task_totals());
  }
  return 0;
}
