// favordynmods on the cgroup2 mount (see cgroup_mode.h).
#include "runtime/exec/cgroup_mode.h"

#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

namespace cardnode::runtime {
namespace {

// From <linux/mount.h>, spelled out: that header clashes with glibc's <sys/mount.h>,
// and older libcs have neither the constants nor wrappers (the raw syscall is used).
constexpr unsigned kFspickCloexec = 0x00000001;
constexpr unsigned kFspickNoAutomount = 0x00000004;
constexpr unsigned kFsconfigSetFlag = 0;
constexpr unsigned kFsconfigSetString = 1;
constexpr unsigned kFsconfigCmdReconfigure = 7;

constexpr size_t kMountinfoMax = size_t{1} << 20;  // bytes read; a host has ~100 lines

// Mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && s.size() - i >= 4) {
      auto octal = [](char c) { return c >= '0' && c <= '7'; };
      if (octal(s[i + 1]) && octal(s[i + 2]) && octal(s[i + 3])) {
        out.push_back(static_cast<char>(((s[i + 1] - '0') << 6) | ((s[i + 2] - '0') << 3) |
                                        (s[i + 3] - '0')));
        i += 3;
        continue;
      }
    }
    out.push_back(s[i]);
  }
  return out;
}

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find(sep, start);
    if (end == std::string_view::npos) end = s.size();
    if (end > start) out.push_back(s.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

long fspick_raw(const char* path) {
  return ::syscall(SYS_fspick, AT_FDCWD, path, kFspickCloexec | kFspickNoAutomount);
}

long fsconfig_raw(int fd, unsigned cmd, const char* key, const char* value) {
  return ::syscall(SYS_fsconfig, fd, cmd, key, value, 0);
}

DynmodsOutcome failed(DynmodsOutcome out, const std::string& step, int err) {
  out.result = err == EINVAL   ? DynmodsResult::kUnsupported
               : err == EPERM  ? DynmodsResult::kNotPermitted
               : err == ENOSYS ? DynmodsResult::kUnsupported
                               : DynmodsResult::kFailed;
  const char* text = ::strerrordesc_np(err);  // a static table: thread safe
  out.detail = step + ": " + (text != nullptr ? text : "error " + std::to_string(err));
  return out;
}

}  // namespace

std::vector<MountEntry> parse_mountinfo(std::string_view text, size_t max) {
  std::vector<MountEntry> out;
  for (std::string_view line : split(text, '\n')) {
    if (out.size() >= max) break;
    size_t sep = line.find(" - ");
    if (sep == std::string_view::npos) continue;
    auto head = split(line.substr(0, sep), ' ');
    auto tail = split(line.substr(sep + 3), ' ');
    if (head.size() < 6 || tail.size() < 3) continue;
    out.push_back(MountEntry{.mount_point = unescape(head[4]),
                             .fs_type = std::string(tail[0]),
                             .super_options = std::string(tail[2])});
  }
  return out;
}

bool has_mount_option(std::string_view options, std::string_view option) {
  for (std::string_view o : split(options, ',')) {
    if (o == option) return true;
  }
  return false;
}

const char* dynmods_result_name(DynmodsResult r) {
  switch (r) {
    case DynmodsResult::kAlreadyOn: return "already on";
    case DynmodsResult::kTurnedOn: return "turned on";
    case DynmodsResult::kNoCgroup2: return "no cgroup2 mount";
    case DynmodsResult::kUnsupported: return "not supported by this kernel";
    case DynmodsResult::kNotPermitted: return "not permitted";
    case DynmodsResult::kFailed: return "failed";
  }
  return "failed";
}

std::string describe(const DynmodsOutcome& o) {
  std::string s = std::string("favordynmods: ") + dynmods_result_name(o.result);
  if (!o.mount_point.empty()) s += " at " + o.mount_point;
  if (!o.detail.empty()) s += " (" + o.detail + ")";
  if (o.result != DynmodsResult::kAlreadyOn && o.result != DynmodsResult::kTurnedOn)
    s += "; a task start may wait ~5 ms for the kernel (RCU) when the board was idle";
  return s;
}

DynmodsOutcome favor_dynamic_moves(const std::string& mountinfo) {
  DynmodsOutcome out;
  std::ifstream in(mountinfo);
  if (!in) return failed(out, "read " + mountinfo, errno != 0 ? errno : ENOENT);
  std::string text(kMountinfoMax, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));

  const MountEntry* cg2 = nullptr;
  auto mounts = parse_mountinfo(text);
  for (const MountEntry& m : mounts) {
    if (m.fs_type == "cgroup2") {
      cg2 = &m;
      break;
    }
  }
  if (cg2 == nullptr) {
    out.result = DynmodsResult::kNoCgroup2;
    return out;
  }
  out.mount_point = cg2->mount_point;
  if (has_mount_option(cg2->super_options, "favordynmods")) {
    out.result = DynmodsResult::kAlreadyOn;
    return out;
  }

  long fd = fspick_raw(cg2->mount_point.c_str());
  if (fd < 0) return failed(out, "fspick " + cg2->mount_point, errno);
  int ifd = static_cast<int>(fd);
  // Every option the superblock has now, then the new one. "rw"/"ro" are the
  // superblock's read-only state, which a cgroup2 reconfigure leaves as it is.
  for (std::string_view o : split(cg2->super_options, ',')) {
    if (o == "rw" || o == "ro") continue;
    std::string key(o);
    std::string value;
    if (size_t eq = key.find('='); eq != std::string::npos) {
      value = key.substr(eq + 1);
      key.resize(eq);
    }
    long r = value.empty() ? fsconfig_raw(ifd, kFsconfigSetFlag, key.c_str(), nullptr)
                           : fsconfig_raw(ifd, kFsconfigSetString, key.c_str(), value.c_str());
    if (r != 0) {
      int err = errno;
      ::close(ifd);
      // An option we cannot hand back would be lost by the reconfigure: stop here.
      DynmodsOutcome o2 = failed(out, "keep option " + key, err);
      if (o2.result == DynmodsResult::kUnsupported) o2.result = DynmodsResult::kFailed;
      return o2;
    }
  }
  if (fsconfig_raw(ifd, kFsconfigSetFlag, "favordynmods", nullptr) != 0) {
    int err = errno;
    ::close(ifd);
    return failed(out, "favordynmods", err);
  }
  if (fsconfig_raw(ifd, kFsconfigCmdReconfigure, nullptr, nullptr) != 0) {
    int err = errno;
    ::close(ifd);
    return failed(out, "reconfigure " + cg2->mount_point, err);
  }
  ::close(ifd);
  out.result = DynmodsResult::kTurnedOn;
  return out;
}

}  // namespace cardnode::runtime
