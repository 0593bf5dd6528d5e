// favordynmods on the cgroup2 mount (see cgroup_mode.h).
#include "runtime/exec/cgroup_mode.h"

#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <optional>

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
    case DynmodsResult::kAlreadyOff: return "already off";
    case DynmodsResult::kTurnedOff: return "turned off";
    case DynmodsResult::kIgnored: return "not taken by the kernel";
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
    s += "; a task start may wait for a kernel RCU grace period (~6 ms here) when idle";
  return s;
}

namespace {

// The first cgroup2 mount in `mountinfo` (any will do: the flag is the superblock's, and
// there is one cgroup2 superblock). nullopt with `out` set when there is none or the file
// cannot be read. Only whole lines count: a line cut by the size bound could lose options.
std::optional<MountEntry> find_cgroup2(const std::string& mountinfo, DynmodsOutcome* out) {
  std::ifstream in(mountinfo);
  if (!in) {
    *out = failed(*out, "read " + mountinfo, errno != 0 ? errno : ENOENT);
    return std::nullopt;
  }
  std::string text(kMountinfoMax, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  text.resize(text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1);
  for (MountEntry& m : parse_mountinfo(text)) {
    if (m.fs_type == "cgroup2") return std::move(m);
  }
  out->result = DynmodsResult::kNoCgroup2;
  return std::nullopt;
}

// The kernel lists the cgroup2 mount options it knows in /sys/kernel/cgroup/features
// (Linux 5.x+); an older kernel has no file, and then fsconfig's EINVAL says it.
bool kernel_lacks_favordynmods(const std::string& features) {
  std::ifstream in(features);
  if (!in) return false;
  for (std::string line; std::getline(in, line);) {
    if (line == "favordynmods") return false;
  }
  return true;
}

// Reconfigures the cgroup2 superblock with `options` (its current ones, edited): a
// cgroup2 reconfigure clears every flag it is not given. "rw"/"ro" are the superblock's
// read-only state, which this leaves as it is. Per-mount flags (nosuid...) are untouched.
DynmodsOutcome reconfigure(DynmodsOutcome out, const std::string& mount_point,
                           const std::vector<std::string>& options) {
  long fd = fspick_raw(mount_point.c_str());
  if (fd < 0) return failed(out, "fspick " + mount_point, errno);
  int ifd = static_cast<int>(fd);
  for (const std::string& o : options) {
    if (o == "rw" || o == "ro") continue;
    std::string key = o;
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
      DynmodsOutcome o2 = failed(out, "option " + key, err);
      if (key != "favordynmods" && o2.result == DynmodsResult::kUnsupported)
        o2.result = DynmodsResult::kFailed;
      return o2;
    }
  }
  if (fsconfig_raw(ifd, kFsconfigCmdReconfigure, nullptr, nullptr) != 0) {
    int err = errno;
    ::close(ifd);
    return failed(out, "reconfigure " + mount_point, err);
  }
  ::close(ifd);
  return out;
}

}  // namespace

DynmodsOutcome set_favor_dynamic_moves(bool on, const std::string& mountinfo,
                                       const std::string& features) {
  DynmodsOutcome out;
  std::optional<MountEntry> cg2 = find_cgroup2(mountinfo, &out);
  if (!cg2) return out;
  out.mount_point = cg2->mount_point;
  if (has_mount_option(cg2->super_options, "favordynmods") == on) {
    out.result = on ? DynmodsResult::kAlreadyOn : DynmodsResult::kAlreadyOff;
    return out;
  }
  if (on && kernel_lacks_favordynmods(features)) {
    out.result = DynmodsResult::kUnsupported;
    return out;
  }
  std::vector<std::string> options;
  for (std::string_view o : split(cg2->super_options, ',')) {
    if (o != "favordynmods") options.emplace_back(o);
  }
  if (on) options.emplace_back("favordynmods");
  out = reconfigure(out, cg2->mount_point, options);
  if (!out.detail.empty()) return out;
  // The kernel accepts a reconfigure outside the initial cgroup namespace and ignores it
  // (a container): only the options read back say what happened. Every option the mount
  // had must still be there.
  DynmodsOutcome again;
  std::optional<MountEntry> now = find_cgroup2(mountinfo, &again);
  bool all_there = now.has_value();
  for (const std::string& o : options)
    all_there = all_there && has_mount_option(now->super_options, o);
  if (!all_there || has_mount_option(now->super_options, "favordynmods") != on) {
    out.result = DynmodsResult::kIgnored;
    out.detail = "the mount reads \"" + (now ? now->super_options : std::string("?")) +
                 "\" after the change (not the initial cgroup namespace?)";
    return out;
  }
  out.result = on ? DynmodsResult::kTurnedOn : DynmodsResult::kTurnedOff;
  return out;
}

DynmodsOutcome favor_dynamic_moves(const std::string& mountinfo) {
  return set_favor_dynamic_moves(true, mountinfo);
}

}  // namespace cardnode::runtime
