// Named fault points (RocksDB TEST_SYNC_POINT / Redpanda style). Production code marks
// a spot with CARDNODE_FAULT_POINT("wal.after_sync_before_seal"); a test arms the
// name and the code takes its failure path there. Without CARDNODE_FAULT_POINTS (builds
// without tests, -DCARDNODE_BUILD_TESTS=OFF) the macro is the constant false and the
// registry does not exist.
//
// Threading: loop thread only, like the code it instruments.
#pragma once

#include <cstdint>

#ifdef CARDNODE_FAULT_POINTS

#include <functional>
#include <map>
#include <string>
#include <string_view>

namespace cardnode::storage::fault {

// Points armed right now: name -> hits still to pass before it fires. Tests arm a
// handful of points, so the map stays tiny.
inline std::map<std::string, uint32_t, std::less<>>& armed_points() {
  static std::map<std::string, uint32_t, std::less<>> points;
  return points;
}

// Fires once, at the (skip_hits + 1)-th hit from now.
inline void arm(std::string_view name, uint32_t skip_hits = 0) {
  armed_points()[std::string(name)] = skip_hits;
}
inline void disarm_all() {
  armed_points().clear();
}

inline bool hit(std::string_view name) {
  auto& points = armed_points();
  auto it = points.find(name);
  if (it == points.end()) return false;
  if (it->second > 0) {
    --it->second;
    return false;
  }
  points.erase(it);
  return true;
}

}  // namespace cardnode::storage::fault

#define CARDNODE_FAULT_POINT(name) (::cardnode::storage::fault::hit(name))

#else

#define CARDNODE_FAULT_POINT(name) (false)

#endif
