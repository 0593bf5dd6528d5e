// The open-files limit of a long-running role (server, agent): raised at start from the
// usual soft 1,024 towards the hard limit, because each agent holds a connection on the
// server and each running task holds pipes and cgroup files on its board.
//
// Threading: call once at start, before other threads exist.
#pragma once

#include <cstdint>

namespace cardnode::runtime {

// Sets the soft RLIMIT_NOFILE to min(hard, want) if it is lower; returns the soft limit in
// force afterwards (unchanged when raising fails).
uint64_t raise_open_files_limit(uint64_t want = 65'536);

}  // namespace cardnode::runtime
