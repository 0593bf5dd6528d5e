// SCHED_CHECK: crash on a broken invariant of the scheduler's own state (never on input:
// inputs are checked and refused as SchedError values). Not proto/error.h's CARDNODE_CHECK:
// the scheduler links nothing but the standard library. Internal to scheduler/.
#pragma once

#include <cstdio>
#include <cstdlib>

#define SCHED_CHECK(cond)                                                                  \
  do {                                                                                     \
    if (!(cond)) [[unlikely]] {                                                            \
      (void)std::fputs("scheduler invariant failed: " #cond " at " __FILE__ "\n", stderr); \
      std::abort();                                                                        \
    }                                                                                      \
  } while (0)
