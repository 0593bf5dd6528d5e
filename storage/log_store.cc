// Task logs: per stream one file, written at its end through the IoEngine. Per file at
// most one write is in flight; bytes appended meanwhile coalesce into the next one.
#include "storage/log_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <deque>
#include <map>
#include <optional>
#include <string_view>
#include <tuple>
#include <vector>

namespace cardnode::storage {
namespace {

constexpr uint32_t kReadBytesMax = 1u << 20;
constexpr uint32_t kWriteBytesMax = 1u << 20;  // one engine write at most
// Log writes and reads leave the rest of the engine queue (64 by default) to the WAL.
constexpr uint32_t kWritesInFlightMax = 16;
constexpr uint32_t kReadsInFlightMax = 8;
// Room kept under log_bytes_max for the truncation marker, so a file never exceeds it.
constexpr uint64_t kMarkerBytesMax = 64;

std::string truncation_marker(uint64_t kept_bytes) {
  return "\n[cardnode: log truncated at " + std::to_string(kept_bytes) + " bytes]\n";
}

using KeyId = std::tuple<uint64_t, uint32_t, uint8_t>;

KeyId key_id(const LogKey& key) {
  return {key.job_id, key.index, static_cast<uint8_t>(key.stream)};
}

struct LogFile {
  LogKey key;
  int fd = -1;
  uint64_t write_offset = 0;  // bytes written to the file so far
  uint64_t kept_bytes = 0;    // task bytes accepted, counted against log_bytes_max
  bool marked = false;        // truncation marker queued
  std::string pending;        // accepted, not yet handed to the engine
  std::string in_flight;      // the write in flight; stable until it completes
  bool writing = false;
  bool waiting = false;  // in Impl::waiting for a write slot
  bool closing = false;
  bool retired = false;  // replaced by a new attempt; finishes its write, then goes
  std::function<void(Status)> close_done;
  std::optional<Error> error;
};

struct ReadOp {
  int fd = -1;
  std::string buf;
  std::function<void(Result<std::string>)> done;
};

}  // namespace

struct LogStore::Impl {
  Impl(IoEngine& e, LogStoreOptions o) : engine(e), options(std::move(o)) {}

  LogFile* find(const LogKey& key);
  void accept(LogFile& f, std::string_view bytes);
  void start_write(LogFile& f);
  void on_written(LogFile& f, Result<uint32_t> r);
  void set_error(LogFile& f, Error error);
  void drop_pending(LogFile& f);
  void pump();
  void retire(LogFile& f);
  void finish(LogFile& f);
  bool busy() const { return writes_in_flight > 0 || reads_in_flight > 0; }

  IoEngine& engine;
  LogStoreOptions options;
  LogStats stats;
  std::map<KeyId, std::unique_ptr<LogFile>> files;
  std::vector<std::unique_ptr<LogFile>> retired;  // write in flight, key already reused
  std::deque<LogFile*> waiting;                   // pending bytes, no write slot yet
  uint64_t pending_bytes = 0;                     // pending + in flight, all files
  uint32_t writes_in_flight = 0;
  uint32_t reads_in_flight = 0;
  std::deque<uint64_t> forgotten;  // jobs whose files remove_some() deletes
};

LogFile* LogStore::Impl::find(const LogKey& key) {
  auto it = files.find(key_id(key));
  return it == files.end() ? nullptr : it->second.get();
}

void LogStore::Impl::accept(LogFile& f, std::string_view bytes) {
  uint64_t size = bytes.size();
  uint64_t reserve = std::min(options.log_bytes_max, kMarkerBytesMax);
  uint64_t data_max = options.log_bytes_max - reserve;
  uint64_t log_room = f.kept_bytes < data_max ? data_max - f.kept_bytes : 0;
  uint64_t queue_room =
      options.pending_bytes_max > pending_bytes ? options.pending_bytes_max - pending_bytes : 0;
  uint64_t keep = std::min({size, log_room, queue_room});
  f.pending.append(bytes.substr(0, static_cast<size_t>(keep)));
  f.kept_bytes += keep;
  pending_bytes += keep;
  stats.bytes_appended += keep;
  stats.bytes_dropped += size - keep;
  if (size > log_room && !f.marked) {
    // The marker is tiny and once per file, so it may pass a full queue; its bytes
    // come out of the reserve under log_bytes_max.
    f.marked = true;
    std::string marker = truncation_marker(f.kept_bytes);
    f.pending += marker;
    pending_bytes += marker.size();
  }
}

void LogStore::Impl::start_write(LogFile& f) {
  if (f.writing || f.pending.empty() || f.error || f.waiting) return;
  if (writes_in_flight >= kWritesInFlightMax) {
    f.waiting = true;
    waiting.push_back(&f);
    return;
  }
  size_t n = std::min<size_t>(f.pending.size(), kWriteBytesMax);
  f.in_flight.assign(f.pending, 0, n);
  f.pending.erase(0, n);
  f.writing = true;
  ++writes_in_flight;
  LogFile* fp = &f;
  auto st = engine.write(f.fd, f.in_flight.data(), static_cast<uint32_t>(n), f.write_offset,
                         [this, fp](Result<uint32_t> r) { on_written(*fp, std::move(r)); });
  if (st) return;
  --writes_in_flight;
  f.writing = false;
  f.pending.insert(0, f.in_flight);
  f.in_flight.clear();
  if (st.error().code == Errc::kResourceExhausted) {
    // Engine queue full: retried when one of our writes completes or at the next append.
    f.waiting = true;
    waiting.push_back(&f);
    return;
  }
  set_error(f, st.error());
}

void LogStore::Impl::on_written(LogFile& f, Result<uint32_t> r) {
  --writes_in_flight;
  f.writing = false;
  pending_bytes -= f.in_flight.size();
  if (!r) {
    stats.bytes_dropped += f.in_flight.size();
    set_error(f, r.error());
  } else {
    CARDNODE_CHECK(*r == f.in_flight.size());  // the engine completes short writes
    f.write_offset += *r;
  }
  f.in_flight.clear();
  if (f.retired || (f.closing && f.pending.empty())) {
    finish(f);  // f is gone after this
  } else {
    start_write(f);
  }
  pump();
}

void LogStore::Impl::drop_pending(LogFile& f) {
  stats.bytes_dropped += f.pending.size();
  pending_bytes -= f.pending.size();
  f.pending.clear();
  if (f.waiting) {
    std::erase(waiting, &f);
    f.waiting = false;
  }
}

void LogStore::Impl::set_error(LogFile& f, Error error) {
  if (!f.error) f.error = std::move(error);
  drop_pending(f);
}

void LogStore::Impl::pump() {
  // Only the files waiting now: each gets one chance, a refused one goes to the back.
  size_t rounds = waiting.size();
  for (size_t i = 0; i < rounds && !waiting.empty(); ++i) {
    LogFile* f = waiting.front();
    waiting.pop_front();
    f->waiting = false;
    start_write(*f);
    if (f->waiting) break;  // no slot: the rest would be refused too
  }
}

void LogStore::Impl::retire(LogFile& f) {
  drop_pending(f);
  auto it = files.find(key_id(f.key));
  CARDNODE_CHECK(it != files.end() && it->second.get() == &f);
  f.retired = true;
  if (!f.writing) return finish(f);
  retired.push_back(std::move(it->second));
  files.erase(it);
}

// Closes the file and forgets it. Runs close_done last: it may call back into us.
void LogStore::Impl::finish(LogFile& f) {
  CARDNODE_CHECK(!f.writing && !f.waiting);
  if (f.fd >= 0) ::close(f.fd);
  std::function<void(Status)> done = std::move(f.close_done);
  Status status;
  if (f.error) status = std::unexpected(*f.error);
  std::unique_ptr<LogFile> owned;
  if (f.retired) {
    auto it = std::find_if(retired.begin(), retired.end(), [&](auto& p) { return p.get() == &f; });
    if (it != retired.end()) {
      owned = std::move(*it);
      retired.erase(it);
    }
  }
  if (!owned) {
    auto it = files.find(key_id(f.key));
    if (it != files.end() && it->second.get() == &f) {
      owned = std::move(it->second);
      files.erase(it);
    }
  }
  owned.reset();
  if (done) done(status);
}

LogStore::LogStore(IoEngine& engine, LogStoreOptions options)
    : impl_(std::make_unique<Impl>(engine, std::move(options))) {}

// Callbacks capture the Impl: write out what is queued and wait for everything in flight.
LogStore::~LogStore() {
  Impl& s = *impl_;
  s.pump();
  while (s.busy() || !s.waiting.empty()) {  // each pass completes at least one operation
    CARDNODE_CHECK(s.engine.in_flight() > 0);
    s.engine.wait();
    s.pump();
  }
  for (auto& [id, f] : s.files) {
    if (f->fd >= 0) ::close(f->fd);
  }
}

Status LogStore::open(const LogKey& key) {
  Impl& s = *impl_;
  std::string job_dir = s.options.dir + "/" + std::to_string(key.job_id);
  for (const std::string& d : {s.options.dir, job_dir}) {
    if (::mkdir(d.c_str(), 0755) != 0 && errno != EEXIST) return fail_errno(errno, "mkdir " + d);
  }
  if (LogFile* old = s.find(key)) s.retire(*old);
  std::string file = path(key);
  // A fresh inode per attempt: a write of the previous attempt still in flight lands
  // in the unlinked file, not in the middle of the new one.
  if (::unlink(file.c_str()) != 0 && errno != ENOENT) return fail_errno(errno, "unlink " + file);
  int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return fail_errno(errno, "open " + file);
  auto f = std::make_unique<LogFile>();
  f->key = key;
  f->fd = fd;
  s.files[key_id(key)] = std::move(f);
  return {};
}

void LogStore::append(const LogKey& key, std::string_view bytes) {
  Impl& s = *impl_;
  LogFile* f = s.find(key);
  if (f == nullptr || f->closing || f->error) {
    s.stats.bytes_dropped += bytes.size();
    return;
  }
  s.accept(*f, bytes);
  s.pump();
  s.start_write(*f);
}

void LogStore::close(const LogKey& key, std::function<void(Status)> done) {
  Impl& s = *impl_;
  LogFile* f = s.find(key);
  if (f == nullptr) {
    if (done) done(fail(Errc::kNotFound, "log not open: " + path(key)));
    return;
  }
  if (f->closing) {
    if (done) done(fail(Errc::kInvalidArgument, "log already closing: " + path(key)));
    return;
  }
  f->closing = true;
  f->close_done = std::move(done);
  if (!f->writing && (f->pending.empty() || f->error)) {
    s.drop_pending(*f);
    s.finish(*f);
  }
}

void LogStore::read(const LogKey& key, uint64_t offset, uint32_t max_bytes,
                    std::function<void(Result<std::string>)> done) {
  Impl& s = *impl_;
  if (s.reads_in_flight >= kReadsInFlightMax) {
    return done(fail(Errc::kResourceExhausted, "too many log reads in flight"));
  }
  std::string file = path(key);
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return done(fail_errno(errno, "open " + file));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return done(fail_errno(err, "stat " + file));
  }
  // Only bytes that exist now: no buffer larger than the file, and end of file at once.
  auto size = static_cast<uint64_t>(st.st_size);
  uint64_t available = size > offset ? size - offset : 0;
  auto len = static_cast<uint32_t>(std::min<uint64_t>({max_bytes, kReadBytesMax, available}));
  if (len == 0) {
    ::close(fd);
    return done(std::string());
  }
  // Shared because std::function must be copyable; the engine callback is the only owner
  // once submitted.
  auto op = std::make_shared<ReadOp>();
  op->fd = fd;
  op->buf.resize(len);
  op->done = std::move(done);
  ++s.reads_in_flight;
  auto sub = s.engine.read(fd, op->buf.data(), len, offset, [&s, op](Result<uint32_t> r) {
    --s.reads_in_flight;
    ::close(op->fd);
    if (!r) return op->done(std::unexpected(r.error()));
    op->buf.resize(*r);
    op->done(std::move(op->buf));
  });
  if (sub) return;
  --s.reads_in_flight;
  ::close(fd);
  op->done(std::unexpected(sub.error()));
}

void LogStore::forget_job(uint64_t job_id) {
  impl_->forgotten.push_back(job_id);
}

bool LogStore::remove_some(uint32_t max_files) {
  Impl& s = *impl_;
  uint32_t removed = 0;
  while (!s.forgotten.empty() && removed < max_files) {  // each pass removes or finishes a job
    const std::string dir = s.options.dir + "/" + std::to_string(s.forgotten.front());
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) {  // never had output here, or gone already
      s.forgotten.pop_front();
      continue;
    }
    bool emptied = true;
    while (dirent* e = ::readdir(d)) {
      std::string_view name = e->d_name;
      if (name == "." || name == "..") continue;
      if (removed >= max_files) {
        emptied = false;
        break;
      }
      if (::unlinkat(::dirfd(d), e->d_name, 0) == 0) ++s.stats.files_removed;
      ++removed;  // counted even when it failed: bounded work per call either way
    }
    ::closedir(d);
    if (!emptied) break;
    ::rmdir(dir.c_str());
    s.forgotten.pop_front();
  }
  return !s.forgotten.empty();
}

const LogStats& LogStore::stats() const {
  return impl_->stats;
}

std::string LogStore::path(const LogKey& key) const {
  return impl_->options.dir + "/" + std::to_string(key.job_id) + "/" + std::to_string(key.index) +
         (key.stream == Stream::kStdout ? ".out" : ".err");
}

}  // namespace cardnode::storage
