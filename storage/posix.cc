#include "storage/posix.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <filesystem>

namespace cardnode::storage {

Result<UniqueFd> open_fd(const std::string& path, int flags, uint32_t mode) {
  int fd = retry_eintr([&] { return ::open(path.c_str(), flags | O_CLOEXEC, mode); });
  if (fd < 0) return fail_errno(errno, "open " + path);
  return UniqueFd(fd);
}

Status pwrite_all(int fd, const void* data, size_t len, uint64_t offset, const std::string& what) {
  const auto* p = static_cast<const uint8_t*>(data);
  size_t done = 0;
  while (done < len) {  // every pass writes something or returns
    ssize_t n = retry_eintr(
        [&] { return ::pwrite(fd, p + done, len - done, static_cast<off_t>(offset + done)); });
    if (n < 0) return fail_errno(errno, "write " + what);
    if (n == 0) return fail(Errc::kIo, "write " + what + ": no progress");
    done += static_cast<size_t>(n);
  }
  return {};
}

Status pread_all(int fd, void* buf, size_t len, uint64_t offset, const std::string& what) {
  auto* p = static_cast<uint8_t*>(buf);
  size_t done = 0;
  while (done < len) {  // every pass reads something or returns
    ssize_t n = retry_eintr(
        [&] { return ::pread(fd, p + done, len - done, static_cast<off_t>(offset + done)); });
    if (n < 0) return fail_errno(errno, "read " + what);
    if (n == 0) return fail(Errc::kIo, "read " + what + ": file shrank while reading");
    done += static_cast<size_t>(n);
  }
  return {};
}

Result<std::string> read_file_bounded(const std::string& path, uint64_t max_bytes) {
  auto fd = open_fd(path, O_RDONLY);
  if (!fd) return std::unexpected(fd.error());
  struct stat st {};
  if (::fstat(fd->get(), &st) != 0) return fail_errno(errno, "stat " + path);
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    return fail(Errc::kCorruption, path + ": " + std::to_string(st.st_size) +
                                       " bytes, more than the " + std::to_string(max_bytes) +
                                       " expected");
  }
  std::string out(static_cast<size_t>(st.st_size), '\0');
  if (auto rd = pread_all(fd->get(), out.data(), out.size(), 0, path); !rd) {
    return std::unexpected(rd.error());
  }
  return out;
}

Result<std::vector<std::string>> list_dir(const std::string& dir, uint32_t entries_max) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return fail_errno(errno, "opendir " + dir);
  std::vector<std::string> names;
  Status st;
  errno = 0;
  while (dirent* e = ::readdir(d)) {
    std::string_view name = e->d_name;
    if (name == "." || name == "..") continue;
    if (names.size() >= entries_max) {
      st = fail(Errc::kCorruption, dir + ": more than " + std::to_string(entries_max) + " entries");
      break;
    }
    names.emplace_back(name);
  }
  if (st && errno != 0) st = fail_errno(errno, "readdir " + dir);
  ::closedir(d);
  if (!st) return std::unexpected(st.error());
  return names;
}

Status make_dirs(const std::string& path, uint32_t mode) {
  std::error_code ec;
  std::filesystem::path p(path);
  // Walk down from the first missing ancestor so only new directories get `mode`.
  std::vector<std::filesystem::path> missing;
  for (auto at = p; !at.empty() && !std::filesystem::exists(at, ec); at = at.parent_path()) {
    missing.push_back(at);
    if (at == at.parent_path()) break;
  }
  for (auto it = missing.rbegin(); it != missing.rend(); ++it) {
    if (::mkdir(it->c_str(), mode) != 0 && errno != EEXIST) {
      return fail_errno(errno, "mkdir " + it->string());
    }
  }
  return {};
}

Result<uint64_t> free_bytes(const std::string& path) {
  struct statvfs s {};
  if (retry_eintr([&] { return ::statvfs(path.c_str(), &s); }) != 0) {
    return fail_errno(errno, "statvfs " + path);
  }
  return static_cast<uint64_t>(s.f_bavail) * s.f_frsize;
}

}  // namespace cardnode::storage
