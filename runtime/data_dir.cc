#include "runtime/data_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>

#include "net/handshake.h"
#include "storage/fs.h"

namespace cardnode::runtime {
namespace {

constexpr uint32_t kIdentityRandomBytes = 16;
constexpr uint64_t kIdentityFileBytesMax = 256;

Status make_dir(const std::string& path, uint32_t mode) {
  if (::mkdir(path.c_str(), mode) == 0) {
    // The umask must not widen or narrow what we asked for.
    if (::chmod(path.c_str(), mode) != 0) return fail_errno(errno, "chmod " + path);
    return {};
  }
  if (errno == EEXIST) return {};  // an operator's own permissions on it are kept
  if (errno == ENOENT) {
    if (auto st = storage::make_dirs(path, mode); !st) return st;
    return make_dir(path, mode);
  }
  return fail_errno(errno, "create directory " + path);
}

bool valid_identity(const std::string& s) {
  if (s.empty() || s.size() > 128) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || c == '-')) return false;
  }
  return true;
}

}  // namespace

Result<std::string> load_or_create_identity(const std::string& path) {
  auto existing = storage::read_file_bounded(path, kIdentityFileBytesMax);
  if (existing) {
    std::string id = *existing;
    while (!id.empty() && (id.back() == '\n' || id.back() == ' ')) id.pop_back();
    if (!valid_identity(id)) return fail(Errc::kCorruption, path + ": not a node identity");
    return id;
  }
  if (existing.error().code != Errc::kNotFound) return std::unexpected(existing.error());
  unsigned char raw[kIdentityRandomBytes];
  if (::getrandom(raw, sizeof raw, 0) != static_cast<ssize_t>(sizeof raw)) {
    return fail_errno(errno, "getrandom");
  }
  std::string id;
  for (unsigned char b : raw) {
    char hex[3];  // two hex digits of a byte: cannot fail or be cut
    (void)std::snprintf(hex, sizeof hex, "%02x", b);
    id += hex;
  }
  // Made once and relied on for the life of the board: durable before it is used.
  storage::Fs& fs = storage::Fs::real();
  const std::string tmp = path + ".tmp";
  auto fd = fs.open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (!fd) return std::unexpected(fd.error());
  if (auto st = fs.write_at(fd->get(), id + "\n", 0, tmp); !st) return std::unexpected(st.error());
  if (auto st = fs.sync(fd->get(), tmp); !st) return std::unexpected(st.error());
  if (auto st = fs.rename(tmp, path); !st) return std::unexpected(st.error());
  std::string dir = path.substr(0, path.find_last_of('/'));
  if (auto st = fs.sync_dir(dir.empty() ? "/" : dir); !st) return std::unexpected(st.error());
  return id;
}

Result<DataDir> DataDir::open(const std::string& path, const std::string& log_dir, bool make_token,
                              uint32_t lock_wait_ms) {
  DataDir d;
  d.path_ = path;
  if (auto st = make_dir(path, 0700); !st) return std::unexpected(st.error());
  auto lock = storage::open_fd(path + "/lock", O_RDWR | O_CREAT, 0600);
  if (!lock) return std::unexpected(lock.error());
  constexpr uint32_t kLockPollMs = 20;
  for (uint32_t waited = 0; ::flock(lock->get(), LOCK_EX | LOCK_NB) != 0; waited += kLockPollMs) {
    if (errno != EWOULDBLOCK && errno != EINTR) return fail_errno(errno, "lock " + path + "/lock");
    if (waited >= lock_wait_ms) {
      return fail(Errc::kUnavailable, "another cardnode process is using data dir " + path);
    }
    ::usleep(kLockPollMs * 1000);
  }
  d.lock_ = std::move(*lock);
  if (make_token) {
    auto token = net::create_token_if_missing(path + "/token");
    if (!token) return std::unexpected(token.error());
    d.token_ = std::move(*token);
  }
  auto identity = load_or_create_identity(path + "/node_id");
  if (!identity) return std::unexpected(identity.error());
  d.node_identity_ = std::move(*identity);
  d.log_dir_ = log_dir.empty() ? path + "/logs" : log_dir;
  d.work_dir_ = path + "/work";
  // 0700: task logs are read through the server (`cardnode logs`), never by tasks, which
  // run as another user and may belong to other people's jobs (--log-dir may be outside
  // the data dir, e.g. on a tmpfs).
  for (const std::string& dir : {d.log_dir_, d.work_dir_}) {
    if (auto st = make_dir(dir, 0700); !st) return std::unexpected(st.error());
  }
  return d;
}

Status DataDir::publish(const std::string& name, const std::string& content) const {
  const std::string target = path_ + "/" + name;
  const std::string tmp = target + ".tmp";
  auto fd = storage::open_fd(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (!fd) return std::unexpected(fd.error());
  if (auto st = storage::pwrite_all(fd->get(), content.data(), content.size(), 0, tmp); !st) {
    return st;
  }
  fd->reset();
  if (::rename(tmp.c_str(), target.c_str()) != 0) return fail_errno(errno, "rename " + tmp);
  return {};
}

}  // namespace cardnode::runtime
