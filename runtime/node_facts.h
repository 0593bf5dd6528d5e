// Facts about this board, read from /proc and /sys: what `nodes` shows and what the
// scheduler's capacity is built from. Blocking reads of virtual files (no disk I/O).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "proto/error.h"

namespace cardnode::runtime {

struct NodeFacts {
  std::string hostname;
  std::string arch;                                 // uname -m: aarch64, armv7l, x86_64
  uint32_t cpu_millis = 0;                          // online CPUs x 1000
  uint64_t mem_bytes = 0;                           // MemTotal
  std::optional<int32_t> temperature_millicelsius;  // thermal_zone0, when present
  std::string board_model;                          // /proc/device-tree/model, when present
};

NodeFacts read_node_facts();

// Resident set size of this process (VmRSS), in bytes; 0 if unreadable.
uint64_t resident_bytes();
// Field 22 of /proc/PID/stat (start time in clock ticks): tells a reused pid apart.
std::optional<uint64_t> process_start_ticks(int32_t pid);

}  // namespace cardnode::runtime
