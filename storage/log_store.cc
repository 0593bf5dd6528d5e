// Task logs: per stream one file, written at its end through the IoEngine. Per file at
// most one write is in flight; bytes appended meanwhile coalesce into the next one.
#include "storage/log_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
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

// Why the bytes of a drop run were lost (bits: a run can have both).
constexpr uint8_t kLostQueueFull = 1;
constexpr uint8_t kLostWriteFailed = 2;

std::string drop_marker(uint64_t dropped_bytes, uint8_t causes, const std::string& failure) {
  std::string why;
  if (causes & kLostQueueFull) why = "log write queue full";
  if (causes & kLostWriteFailed) {
    why += why.empty() ? "" : ", ";
    why += "log write failed: " + failure;
  }
  return "\n[cardnode: " + std::to_string(dropped_bytes) + " bytes of output dropped: " + why +
         "]\n";
}

using KeyId = std::tuple<uint64_t, uint32_t, uint8_t>;

KeyId key_id(const LogKey& key) {
  return {key.job_id, key.index, static_cast<uint8_t>(key.stream)};
}

// A marker line among a file's unwritten bytes. Tracked so that a failed write knows
// which of its bytes were output (counted as dropped) and which a marker (whose loss is
// described again), and so that a write never splits a marker.
struct Mark {
  uint64_t at = 0;  // offset in in_flight + pending
  uint32_t len = 0;
  uint64_t dropped_bytes = 0;  // the drop run it describes; 0 for the truncation marker
  bool truncation = false;
};

struct LogFile {
  LogKey key;
  int fd = -1;
  uint64_t write_offset = 0;  // bytes written to the file so far
  // Bytes counted against log_bytes_max: output and drop markers, queued or written.
  uint64_t kept_bytes = 0;
  bool truncated = false;          // reached log_bytes_max: nothing more is kept
  bool truncation_marked = false;  // its marker is queued or written
  // Bytes it may take beyond pending_bytes_max (LogStore::kAppendGrantBytes when its
  // producer last saw room).
  uint64_t grant_bytes = 0;
  // The drop run: output lost since the last marker, marked before the next bytes kept.
  uint64_t run_dropped_bytes = 0;
  uint8_t run_causes = 0;
  std::string run_failure;  // strerror of the last failed write of the run
  std::deque<Mark> marks;   // in offset order
  std::string pending;      // accepted, not yet handed to the engine
  std::string in_flight;    // the write in flight; stable until it completes
  bool writing = false;
  bool waiting = false;  // in Impl::waiting for a write slot
  bool closing = false;
  bool close_marked = false;  // close's one attempt at the markers still owed was made
  bool retired = false;       // replaced by a new attempt; finishes its write, then goes
  std::function<void(Status)> close_done;
  std::function<void()> room_waiter;  // set while in Impl::room_waiting
  uint64_t room_epoch = 0;            // the drain it waits for
  std::optional<Error> error;         // the first write error, for close's status
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
  uint64_t data_max() const;
  bool has_room() const { return pending_bytes < options.pending_bytes_max; }
  void accept(LogFile& f, std::string_view bytes);
  bool owes_marks(const LogFile& f) const;
  void flush_marks(LogFile& f);
  void queue_mark(LogFile& f, const std::string& text, uint64_t dropped_bytes, bool truncation);
  size_t next_write_bytes(const LogFile& f) const;
  void start_write(LogFile& f);
  void on_written(LogFile& f, Result<uint32_t> r);
  void lose_queued(LogFile& f, const Error& error);
  std::string file_path(const LogKey& key) const {
    return options.dir + "/" + std::to_string(key.job_id) + "/" + std::to_string(key.index) +
           (key.stream == Stream::kStdout ? ".out" : ".err");
  }
  void discard_queued(LogFile& f);
  void drain_closing(LogFile& f);
  void pump();
  void drop_room_waiter(LogFile& f);
  void run_room_waiters();
  void settle();
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
  // when_room() waiters in registration order, at most one per open file. A drain runs
  // those registered before it (room_epoch below the drain's); ready() may register again.
  std::deque<LogFile*> room_waiting;
  uint64_t room_epoch = 0;
  bool running_room_waiters = false;
  // Closing files whose queue the engine refused outright: settle() finishes them.
  std::vector<LogFile*> closing_idle;
};

LogFile* LogStore::Impl::find(const LogKey& key) {
  auto it = files.find(key_id(key));
  return it == files.end() ? nullptr : it->second.get();
}

uint64_t LogStore::Impl::data_max() const {
  return options.log_bytes_max - std::min(options.log_bytes_max, kMarkerBytesMax);
}

void LogStore::Impl::accept(LogFile& f, std::string_view bytes) {
  uint64_t size = bytes.size();
  if (has_room()) f.grant_bytes = kAppendGrantBytes;
  uint64_t under_bound =
      options.pending_bytes_max > pending_bytes ? options.pending_bytes_max - pending_bytes : 0;
  uint64_t queue_room = under_bound + f.grant_bytes;
  // Bytes are kept now: the run before them ends, its marker goes first. A marker lost
  // with a failed write is owed too. Markers are tiny and may pass a full queue.
  if (owes_marks(f) && size > 0 && (queue_room > 0 || f.truncated)) flush_marks(f);
  uint64_t log_room = f.truncated ? 0 : data_max() - f.kept_bytes;
  uint64_t take = std::min(size, log_room);  // what log_bytes_max allows
  uint64_t keep = std::min(take, queue_room);
  f.pending.append(bytes.substr(0, static_cast<size_t>(keep)));
  f.kept_bytes += keep;
  pending_bytes += keep;
  if (keep > under_bound) f.grant_bytes -= keep - under_bound;
  stats.bytes_appended += keep;
  stats.bytes_dropped += size - keep;
  if (take > keep) {
    f.run_dropped_bytes += take - keep;
    f.run_causes |= kLostQueueFull;
  }
  if (size > take && !f.truncated) {
    // The truncation marker comes out of the reserve under log_bytes_max; a run just
    // before it is marked first if its marker fits.
    f.truncated = true;
    flush_marks(f);
  }
  if (has_room()) f.grant_bytes = kAppendGrantBytes;
}

bool LogStore::Impl::owes_marks(const LogFile& f) const {
  return f.run_dropped_bytes > 0 || (f.truncated && !f.truncation_marked);
}

// Queues the markers owed at the end of f's queue: the drop run's, and the truncation
// marker if it is due (or was lost with a failed write).
void LogStore::Impl::flush_marks(LogFile& f) {
  if (f.run_dropped_bytes > 0) {
    std::string text = drop_marker(f.run_dropped_bytes, f.run_causes, f.run_failure);
    if (!f.truncation_marked && f.kept_bytes + text.size() <= data_max()) {
      f.kept_bytes += text.size();
      queue_mark(f, text, f.run_dropped_bytes, false);
    } else {
      f.truncated = true;  // no room for the line: the log ends here, and says so
    }
    f.run_dropped_bytes = 0;
    f.run_causes = 0;
    f.run_failure.clear();
  }
  if (f.truncated && !f.truncation_marked) {
    f.truncation_marked = true;
    queue_mark(f, truncation_marker(f.kept_bytes), 0, true);
  }
}

void LogStore::Impl::queue_mark(LogFile& f, const std::string& text, uint64_t dropped_bytes,
                                bool truncation) {
  f.marks.push_back(Mark{f.in_flight.size() + f.pending.size(), static_cast<uint32_t>(text.size()),
                         dropped_bytes, truncation});
  f.pending += text;
  pending_bytes += text.size();
}

// Up to kWriteBytesMax of pending, cut before a marker it would split.
size_t LogStore::Impl::next_write_bytes(const LogFile& f) const {
  size_t n = std::min<size_t>(f.pending.size(), kWriteBytesMax);
  for (const Mark& m : f.marks) {
    if (m.at >= n) break;
    if (m.at + m.len > n) return m.at > 0 ? m.at : m.len;
  }
  return n;
}

void LogStore::Impl::start_write(LogFile& f) {
  if (f.writing || f.pending.empty() || f.waiting) return;
  if (writes_in_flight >= kWritesInFlightMax) {
    f.waiting = true;
    waiting.push_back(&f);
    return;
  }
  if (f.fd < 0) {
    const std::string file = file_path(f.key);
    f.fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (f.fd < 0 && (errno == ENOENT || errno == ENOTDIR)) {
      // The job's first output makes its directory (and the logs directory, should it be
      // gone: 0700, as runtime/data_dir.cc makes it, since tasks must not read other
      // tasks' logs): a job whose tasks print nothing costs no directory either.
      const std::string job_dir = options.dir + "/" + std::to_string(f.key.job_id);
      for (const auto& [d, mode] : {std::pair{options.dir, 0700}, std::pair{job_dir, 0755}}) {
        if (::mkdir(d.c_str(), static_cast<mode_t>(mode)) != 0 && errno != EEXIST) {
          lose_queued(f, Error{Errc::kIo, "mkdir " + d, errno});
          return;
        }
      }
      f.fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    }
    if (f.fd < 0) {
      lose_queued(f, Error{Errc::kIo, "open " + file, errno});
      return;
    }
  }
  size_t n = next_write_bytes(f);
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
    // Engine queue full: retried when one of our operations completes or at the next
    // append, open, close or when_room.
    f.waiting = true;
    waiting.push_back(&f);
    return;
  }
  // The engine cannot take writes: the queue goes (marked once one goes through), so a
  // full queue cannot stall producers waiting for room.
  lose_queued(f, st.error());
  // Not finished here: the caller may hold f, or be append(), which calls nothing back.
  if (f.closing) closing_idle.push_back(&f);
}

void LogStore::Impl::on_written(LogFile& f, Result<uint32_t> r) {
  --writes_in_flight;
  f.writing = false;
  if (!r) {
    lose_queued(f, r.error());
  } else {
    CARDNODE_CHECK(*r == f.in_flight.size());  // the engine completes short writes
    f.write_offset += *r;
    pending_bytes -= f.in_flight.size();
    while (!f.marks.empty() && f.marks.front().at < f.in_flight.size()) {
      if (!f.marks.front().truncation) ++stats.drop_marks;
      f.marks.pop_front();
    }
    for (Mark& m : f.marks) m.at -= f.in_flight.size();
    f.in_flight.clear();
  }
  if (f.retired) {
    finish(f);  // f is gone after this
  } else if (f.closing) {
    drain_closing(f);  // f may be gone after this
  } else {
    start_write(f);
  }
  settle();
}

// A write failed (or could not be submitted): it and everything queued behind it are
// lost, and become the drop run, marked before the next bytes kept. The file stays
// writable: the next write may succeed (a disk that was full).
void LogStore::Impl::lose_queued(LogFile& f, const Error& error) {
  if (!f.error) f.error = error;
  uint64_t lost_bytes = f.in_flight.size() + f.pending.size();
  uint64_t output_bytes = lost_bytes;
  for (const Mark& m : f.marks) {
    output_bytes -= m.len;
    if (m.truncation) {
      f.truncation_marked = false;  // owed again
    } else {
      f.kept_bytes -= m.len;
      f.run_dropped_bytes += m.dropped_bytes;  // what it described is unmarked again
    }
  }
  f.marks.clear();
  f.kept_bytes -= output_bytes;  // not in the file: room for the marker that replaces them
  f.run_dropped_bytes += output_bytes;
  if (f.run_dropped_bytes > 0) {
    f.run_causes |= kLostWriteFailed;
    // NOLINTNEXTLINE(concurrency-mt-unsafe): glibc >= 2.32 keeps strerror's text per thread
    f.run_failure = error.sys_errno != 0 ? std::strerror(error.sys_errno) : error.message;
  }
  stats.bytes_dropped += output_bytes;
  pending_bytes -= lost_bytes;
  f.in_flight.clear();
  f.pending.clear();
  if (f.waiting) {
    std::erase(waiting, &f);
    f.waiting = false;
  }
}

// The attempt is replaced: its queue goes with its (unlinked) file; counted, not marked.
void LogStore::Impl::discard_queued(LogFile& f) {
  uint64_t marker_bytes = 0;  // of the markers in pending; those in flight stay tracked
  while (!f.marks.empty() && f.marks.back().at >= f.in_flight.size()) {
    marker_bytes += f.marks.back().len;
    f.marks.pop_back();
  }
  stats.bytes_dropped += f.pending.size() - marker_bytes;
  pending_bytes -= f.pending.size();
  f.pending.clear();
  f.run_dropped_bytes = 0;
  if (f.waiting) {
    std::erase(waiting, &f);
    f.waiting = false;
  }
}

// Closing and nothing in flight: writes the rest, then the markers still owed (once:
// if that write fails too, the loss is counted and close reports the error), then
// finishes.
void LogStore::Impl::drain_closing(LogFile& f) {
  if (f.writing || f.waiting) return;
  if (f.pending.empty() && !f.close_marked && owes_marks(f)) {
    f.close_marked = true;
    flush_marks(f);
  }
  start_write(f);
  // Idle now means nothing is left: start_write took it, or the engine refused it outright.
  if (!f.writing && !f.waiting) finish(f);  // f is gone after this
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

void LogStore::Impl::drop_room_waiter(LogFile& f) {
  if (!f.room_waiter) return;
  f.room_waiter = nullptr;
  std::erase(room_waiting, &f);
}

// Runs the waiters registered before now once the queue is down to half its bound (the
// gap keeps a producer from waking for every write). Not re-entered: a ready() that
// drives the engine leaves the rest to this loop.
void LogStore::Impl::run_room_waiters() {
  if (running_room_waiters || room_waiting.empty()) return;
  if (pending_bytes > options.pending_bytes_max / 2) return;
  running_room_waiters = true;
  uint64_t epoch = room_epoch++;
  while (!room_waiting.empty() && room_waiting.front()->room_epoch <= epoch) {
    LogFile* f = room_waiting.front();
    room_waiting.pop_front();
    std::function<void()> ready = std::move(f->room_waiter);
    f->room_waiter = nullptr;
    f->grant_bytes = kAppendGrantBytes;  // its producer sees room now
    ready();                             // may close or reopen f, or register again
  }
  running_room_waiters = false;
}

// End of a completion or of a public call other than append(): retries writes the
// engine refused, and wakes waiters if the queue drained.
void LogStore::Impl::settle() {
  pump();
  while (!closing_idle.empty()) {
    LogFile* f = closing_idle.back();
    closing_idle.pop_back();
    drain_closing(*f);  // f may be gone after this
  }
  run_room_waiters();
}

void LogStore::Impl::retire(LogFile& f) {
  drop_room_waiter(f);
  discard_queued(f);
  auto it = files.find(key_id(f.key));
  CARDNODE_CHECK(it != files.end() && it->second.get() == &f);
  f.retired = true;
  if (!f.writing) return finish(f);
  retired.push_back(std::move(it->second));
  files.erase(it);
}

// Closes the file and forgets it. Runs close_done last: it may call back into us.
void LogStore::Impl::finish(LogFile& f) {
  CARDNODE_CHECK(!f.writing && !f.waiting && !f.room_waiter);
  std::erase(closing_idle, &f);
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
// Waiters are dropped first: their producers may be gone already.
LogStore::~LogStore() {
  Impl& s = *impl_;
  for (LogFile* f : s.room_waiting) f->room_waiter = nullptr;
  s.room_waiting.clear();
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
  if (LogFile* old = s.find(key)) s.retire(*old);
  std::string file = path(key);
  // A fresh inode per attempt: a write of the previous attempt still in flight lands
  // in the unlinked file, not in the middle of the new one. The new file is made by the
  // first write (start_write): a task that prints nothing costs no inode (two per task
  // were most of a burst's loop time on ext4, and SD-card writes), and reads as empty.
  // ENOTDIR: a directory on the path is missing or not one; the first write says which.
  if (::unlink(file.c_str()) != 0 && errno != ENOENT && errno != ENOTDIR) {
    return fail_errno(errno, "unlink " + file);
  }
  auto f = std::make_unique<LogFile>();
  f->key = key;
  f->grant_bytes = kAppendGrantBytes;  // its producer starts reading without asking
  s.files[key_id(key)] = std::move(f);
  s.settle();
  return {};
}

void LogStore::append(const LogKey& key, std::string_view bytes) {
  Impl& s = *impl_;
  LogFile* f = s.find(key);
  if (f == nullptr || f->closing) {
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
  s.drop_room_waiter(*f);
  s.drain_closing(*f);  // f may be gone after this
  s.settle();
}

bool LogStore::has_room() const {
  return impl_->has_room();
}

Status LogStore::when_room(const LogKey& key, std::function<void()> ready) {
  Impl& s = *impl_;
  if (!ready) return fail(Errc::kInvalidArgument, "when_room without a callback");
  LogFile* f = s.find(key);
  if (f == nullptr) return fail(Errc::kNotFound, "log not open: " + path(key));
  if (f->closing) return fail(Errc::kInvalidArgument, "log closing: " + path(key));
  if (f->room_waiter) {
    return fail(Errc::kInvalidArgument, "log waits for room already: " + path(key));
  }
  s.pump();  // calls nothing back
  if (s.has_room()) {
    f->grant_bytes = kAppendGrantBytes;
    ready();
  } else {
    f->room_waiter = std::move(ready);
    f->room_epoch = s.room_epoch;
    s.room_waiting.push_back(f);
  }
  s.run_room_waiters();
  return {};
}

void LogStore::read(const LogKey& key, uint64_t offset, uint32_t max_bytes,
                    std::function<void(Result<std::string>)> done) {
  read_at(key, offset, /*tail=*/false, max_bytes, std::move(done));
}

void LogStore::read_tail(const LogKey& key, uint32_t max_bytes,
                         std::function<void(Result<std::string>)> done) {
  read_at(key, 0, /*tail=*/true, max_bytes, std::move(done));
}

void LogStore::read_at(const LogKey& key, uint64_t offset, bool tail, uint32_t max_bytes,
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
  if (tail) offset = size - std::min<uint64_t>(size, std::min(max_bytes, kReadBytesMax));
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
    s.settle();  // a slot is free for a write the engine refused
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
  return impl_->file_path(key);
}

}  // namespace cardnode::storage
