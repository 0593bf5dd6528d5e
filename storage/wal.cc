// Write-ahead log: replay at open with plain reads, then group commit through the
// IoEngine — one write + fdatasync in flight at a time, covering every record queued
// while the previous one ran.
#include "storage/wal.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <optional>

#include "storage/fault.h"

namespace cardnode::storage {
namespace {

constexpr size_t kSegmentDigits = 20;
constexpr std::string_view kSegmentSuffix = ".wal";
// A directory holding more entries than this is not one we wrote.
constexpr uint32_t kDirEntriesMax = 1u << 20;
// Replay reads a whole segment into memory; anything this large is not ours.
constexpr uint64_t kSegmentFileBytesMax = 1ull << 30;
// One group-commit write at most; a larger backlog goes out in several batches.
constexpr uint64_t kBatchBytesMax = 8ull << 20;
constexpr uint32_t kZeroChunkBytes = 64u << 10;
constexpr uint32_t kEintrRetriesMax = 100;

void put_u32le(uint8_t* p, uint32_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
  p[2] = static_cast<uint8_t>(v >> 16);
  p[3] = static_cast<uint8_t>(v >> 24);
}

uint32_t get_u32le(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
         static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24;
}

uint32_t record_crc(const uint8_t* length_bytes, const uint8_t* payload, uint32_t len) {
  uLong crc = crc32(0L, length_bytes, 4);
  crc = crc32(crc, payload, len);
  return static_cast<uint32_t>(crc);
}

std::string encode_record(std::string_view payload) {
  auto len = static_cast<uint32_t>(payload.size());
  std::string out(kWalHeaderBytes + payload.size(), '\0');
  auto* p = reinterpret_cast<uint8_t*>(out.data());
  put_u32le(p, len);
  std::copy(payload.begin(), payload.end(), out.begin() + kWalHeaderBytes);
  put_u32le(p + 4, record_crc(p, p + kWalHeaderBytes, len));
  return out;
}

std::string segment_name(uint64_t first_seq) {
  char name[32];
  std::snprintf(name, sizeof name, "%020llu.wal", static_cast<unsigned long long>(first_seq));
  return name;
}

std::optional<uint64_t> parse_segment_name(std::string_view name) {
  if (name.size() != kSegmentDigits + kSegmentSuffix.size()) return std::nullopt;
  if (!name.ends_with(kSegmentSuffix)) return std::nullopt;
  uint64_t seq = 0;
  for (size_t i = 0; i < kSegmentDigits; ++i) {
    if (name[i] < '0' || name[i] > '9') return std::nullopt;
    uint64_t digit = static_cast<uint64_t>(name[i] - '0');
    if (seq > (UINT64_MAX - digit) / 10) return std::nullopt;
    seq = seq * 10 + digit;
  }
  return seq;
}

struct Segment {
  uint64_t first_seq = 0;
  std::string path;
};

Result<std::vector<Segment>> list_segments(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return fail_errno(errno, "opendir " + dir);
  std::vector<Segment> segments;
  uint32_t entries = 0;
  Status status;
  while (dirent* e = ::readdir(d)) {
    if (++entries > kDirEntriesMax) {
      status = fail(Errc::kCorruption,
                    dir + ": more than " + std::to_string(kDirEntriesMax) + " entries");
      break;
    }
    std::string_view name = e->d_name;
    if (!name.ends_with(kSegmentSuffix)) continue;
    auto seq = parse_segment_name(name);
    if (!seq) {
      status = fail(Errc::kCorruption, dir + "/" + std::string(name) + ": not a segment name");
      break;
    }
    segments.push_back(Segment{*seq, dir + "/" + std::string(name)});
  }
  ::closedir(d);
  if (!status) return std::unexpected(status.error());
  std::sort(segments.begin(), segments.end(),
            [](const Segment& a, const Segment& b) { return a.first_seq < b.first_seq; });
  return segments;
}

Status pread_all(int fd, uint8_t* buf, size_t len, uint64_t offset, const std::string& path) {
  size_t done = 0;
  uint32_t eintr = 0;
  while (done < len) {  // every pass reads something or returns
    ssize_t n = ::pread(fd, buf + done, len - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR && ++eintr < kEintrRetriesMax) continue;
    if (n < 0) return fail_errno(errno, "read " + path);
    if (n == 0) return fail(Errc::kIo, "read " + path + ": file shrank while reading");
    done += static_cast<size_t>(n);
  }
  return {};
}

Status pwrite_all(int fd, const uint8_t* buf, size_t len, uint64_t offset,
                  const std::string& path) {
  size_t done = 0;
  uint32_t eintr = 0;
  while (done < len) {  // every pass writes something or returns
    ssize_t n = ::pwrite(fd, buf + done, len - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR && ++eintr < kEintrRetriesMax) continue;
    if (n < 0) return fail_errno(errno, "write " + path);
    if (n == 0) return fail(Errc::kIo, "write " + path + ": no progress");
    done += static_cast<size_t>(n);
  }
  return {};
}

Result<std::string> read_segment(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail_errno(errno, "open " + path);
  struct stat st {};
  Result<std::string> out;
  if (::fstat(fd, &st) != 0) {
    out = fail_errno(errno, "stat " + path);
  } else if (static_cast<uint64_t>(st.st_size) > kSegmentFileBytesMax) {
    out = fail(Errc::kCorruption,
               path + ": segment larger than " + std::to_string(kSegmentFileBytesMax) + " bytes");
  } else {
    out = std::string(static_cast<size_t>(st.st_size), '\0');
    if (auto rs = pread_all(fd, reinterpret_cast<uint8_t*>(out->data()), out->size(), 0, path);
        !rs) {
      out = std::unexpected(rs.error());
    }
  }
  ::close(fd);
  return out;
}

// Where the intact records of one segment end, and what follows them.
struct SegmentScan {
  uint64_t records = 0;
  uint64_t end_offset = 0;  // just past the last intact record
  uint64_t dirty_end = 0;   // just past the last nonzero byte at or after end_offset
  std::string problem;      // why the records stopped, when not at a zero length
};

Result<SegmentScan> scan_segment(const std::string& data, const ReplayFn* on_record) {
  SegmentScan scan;
  const auto* base = reinterpret_cast<const uint8_t*>(data.data());
  uint64_t size = data.size();
  uint64_t pos = 0;
  while (pos + kWalHeaderBytes <= size) {  // pos grows by at least a header per pass
    uint32_t len = get_u32le(base + pos);
    if (len == 0) break;
    if (len > kRecordBytesMax) {
      scan.problem = "record length " + std::to_string(len) + " over the maximum";
      break;
    }
    if (pos + kWalHeaderBytes + len > size) {
      scan.problem = "record runs past the end of the file";
      break;
    }
    const uint8_t* payload = base + pos + kWalHeaderBytes;
    if (get_u32le(base + pos + 4) != record_crc(base + pos, payload, len)) {
      scan.problem = "crc mismatch";
      break;
    }
    if (on_record != nullptr && *on_record) {
      std::string_view view(reinterpret_cast<const char*>(payload), len);
      if (auto st = (*on_record)(view); !st) return std::unexpected(st.error());
    }
    ++scan.records;
    pos += kWalHeaderBytes + len;
  }
  scan.end_offset = pos;
  uint64_t last = size;
  while (last > pos && base[last - 1] == 0) --last;
  scan.dirty_end = last;
  if (scan.problem.empty() && last > pos) scan.problem = "nonzero bytes after the last record";
  return scan;
}

// A whole directory: every intact record replayed in order, the newest segment's torn
// tail located, everything else that is wrong reported as corruption.
struct DirScan {
  std::vector<Segment> segments;
  uint64_t next_seq = 1;
  uint64_t tail_offset = 0;     // newest segment: where appends continue
  uint64_t tail_dirty_end = 0;  // newest segment: end of the bytes to zero
};

Result<DirScan> scan_dir(const std::string& dir, const ReplayFn* on_record, ReplayStats* stats) {
  auto segments = list_segments(dir);
  if (!segments) return std::unexpected(segments.error());
  DirScan out;
  out.segments = std::move(*segments);
  ReplayStats counted;
  for (size_t i = 0; i < out.segments.size(); ++i) {
    const Segment& seg = out.segments[i];
    bool newest = i + 1 == out.segments.size();
    if (i == 0) out.next_seq = seg.first_seq;
    if (seg.first_seq != out.next_seq) {
      return fail(Errc::kCorruption, seg.path + ": starts at sequence " +
                                         std::to_string(seg.first_seq) + ", expected " +
                                         std::to_string(out.next_seq));
    }
    auto data = read_segment(seg.path);
    if (!data) return std::unexpected(data.error());
    auto scan = scan_segment(*data, on_record);
    if (!scan) return std::unexpected(scan.error());
    if (!scan->problem.empty() && !newest) {
      return fail(Errc::kCorruption, seg.path + ": " + scan->problem + " at offset " +
                                         std::to_string(scan->end_offset));
    }
    counted.records += scan->records;
    ++counted.segments;
    out.next_seq += scan->records;
    if (newest) {
      out.tail_offset = scan->end_offset;
      out.tail_dirty_end = scan->dirty_end;
      counted.torn_tail_bytes = scan->dirty_end - scan->end_offset;
    }
  }
  if (stats != nullptr) *stats = counted;
  return out;
}

Status make_dirs(const std::string& dir) {
  // Each prefix ending before a '/' (and the whole path) must exist.
  for (size_t at = 1; at <= dir.size(); ++at) {
    if (at < dir.size() && dir[at] != '/') continue;
    std::string prefix = dir.substr(0, at);
    if (::mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) {
      return fail_errno(errno, "mkdir " + prefix);
    }
  }
  return {};
}

Status fsync_fd(int fd, const std::string& what) {
  if (::fsync(fd) != 0) return fail_errno(errno, "fsync " + what);
  return {};
}

enum class Stage : uint8_t {
  kIdle,         // nothing in flight
  kWriting,      // batch write submitted
  kSyncing,      // batch fdatasync submitted
  kSyncStalled,  // batch written, fdatasync refused by a full engine queue
  kAcking,       // running the batch's callbacks
  kFailed,
};

struct PendingRecord {
  uint64_t seq = 0;
  std::string encoded;
  DurableCallback on_durable;
};

}  // namespace

struct Wal::Impl {
  Impl(IoEngine& e, WalOptions o) : engine(e), options(std::move(o)) {}
  ~Impl();

  Status open_dir(const DirScan& scan);
  Status create_segment(uint64_t first_seq);
  Status ensure_allocated(uint64_t end);
  Status zero_tail(uint64_t from, uint64_t to);

  void kick();
  void start_flush();
  void on_written(Result<uint32_t> r);
  void submit_sync();
  void on_synced(Result<uint32_t> r);
  void unbatch();
  void fail_wal(Error error);

  IoEngine& engine;
  WalOptions options;
  int dir_fd = -1;
  int fd = -1;
  std::string path;
  uint64_t offset = 0;     // end of the records in the current segment
  uint64_t alloc_end = 0;  // bytes the current segment holds (preallocated or written)
  bool fallocate_ok = true;
  uint64_t next_seq = 1;

  std::deque<PendingRecord> pending;  // not yet in a batch
  uint64_t pending_bytes = 0;
  std::deque<PendingRecord> batch;  // the write + fdatasync in flight
  std::string batch_bytes;          // what engine.write is writing; stable until it completes
  Stage stage = Stage::kIdle;
  std::optional<Error> failure;
};

Wal::Impl::~Impl() {
  if (fd >= 0) ::close(fd);
  if (dir_fd >= 0) ::close(dir_fd);
}

Status Wal::Impl::open_dir(const DirScan& scan) {
  dir_fd = ::open(options.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) return fail_errno(errno, "open " + options.dir);
  next_seq = scan.next_seq;
  if (scan.segments.empty()) return create_segment(next_seq);
  path = scan.segments.back().path;
  fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return fail_errno(errno, "open " + path);
  struct stat st {};
  if (::fstat(fd, &st) != 0) return fail_errno(errno, "stat " + path);
  alloc_end = static_cast<uint64_t>(st.st_size);
  offset = scan.tail_offset;
  return zero_tail(scan.tail_offset, scan.tail_dirty_end);
}

// New records go where the torn tail began. Stale bytes after them could line up as
// valid records at the next replay, so they are zeroed (and synced) once, here.
Status Wal::Impl::zero_tail(uint64_t from, uint64_t to) {
  if (from >= to) return {};
  const std::string zeros(kZeroChunkBytes, '\0');
  for (uint64_t at = from; at < to;) {  // at grows by a chunk per pass
    size_t n = static_cast<size_t>(std::min<uint64_t>(kZeroChunkBytes, to - at));
    if (auto st = pwrite_all(fd, reinterpret_cast<const uint8_t*>(zeros.data()), n, at, path);
        !st) {
      return st;
    }
    at += n;
  }
  if (::fdatasync(fd) != 0) return fail_errno(errno, "fdatasync " + path);
  return {};
}

Status Wal::Impl::create_segment(uint64_t first_seq) {
  if (fd >= 0) ::close(fd);  // already synced: a roll only happens between batches
  fd = -1;
  path = options.dir + "/" + segment_name(first_seq);
  fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return fail_errno(errno, "create " + path);
  offset = 0;
  alloc_end = 0;
  if (auto st = ensure_allocated(1); !st) return st;
  // The new name must survive a crash before any record in it is acknowledged.
  return fsync_fd(dir_fd, options.dir);
}

// Preallocating in large steps makes ENOSPC show up here rather than mid-batch, and
// keeps the bytes after the last record zero. It is a synchronous call on the loop
// thread, but it runs once per prealloc step (4 MiB by default), not per batch.
Status Wal::Impl::ensure_allocated(uint64_t end) {
  if (end <= alloc_end || !fallocate_ok || options.prealloc_bytes == 0) return {};
  uint64_t step = options.prealloc_bytes;
  uint64_t grow = (end - alloc_end + step - 1) / step * step;
  int rc = 0;
  for (uint32_t i = 0; i < kEintrRetriesMax; ++i) {
    rc = ::fallocate(fd, 0, static_cast<off_t>(alloc_end), static_cast<off_t>(grow));
    if (rc == 0 || errno != EINTR) break;
  }
  if (rc != 0 && errno == EOPNOTSUPP) {
    fallocate_ok = false;  // e.g. some FUSE file systems: writes extend the file instead
    return {};
  }
  if (rc != 0) return fail_errno(errno, "fallocate " + path);
  alloc_end += grow;
  return {};
}

void Wal::Impl::kick() {
  if (stage == Stage::kIdle) start_flush();
  if (stage == Stage::kSyncStalled) submit_sync();
}

void Wal::Impl::start_flush() {
  CARDNODE_CHECK(stage == Stage::kIdle && batch.empty());
  if (pending.empty()) return;
  uint64_t first_bytes = pending.front().encoded.size();
  if (offset > 0 && offset + first_bytes > options.segment_bytes) {
    if (auto st = create_segment(pending.front().seq); !st) return fail_wal(st.error());
  }
  uint64_t room = options.segment_bytes > offset ? options.segment_bytes - offset : 0;
  uint64_t limit = std::min(room, kBatchBytesMax);
  batch_bytes.clear();
  // At least one record per batch, so a record larger than a segment still goes out.
  while (!pending.empty()) {
    uint64_t bytes = pending.front().encoded.size();
    if (!batch.empty() && batch_bytes.size() + bytes > limit) break;
    batch_bytes += pending.front().encoded;
    pending_bytes -= bytes;
    batch.push_back(std::move(pending.front()));
    pending.pop_front();
  }
  if (auto st = ensure_allocated(offset + batch_bytes.size()); !st) return fail_wal(st.error());
  stage = Stage::kWriting;
  auto st = engine.write(fd, batch_bytes.data(), static_cast<uint32_t>(batch_bytes.size()), offset,
                         [this](Result<uint32_t> r) { on_written(std::move(r)); });
  if (st) return;
  stage = Stage::kIdle;
  // A full engine queue is load, not damage: the batch waits for the next kick().
  if (st.error().code == Errc::kResourceExhausted) return unbatch();
  fail_wal(st.error());
}

void Wal::Impl::unbatch() {
  while (!batch.empty()) {
    pending_bytes += batch.back().encoded.size();
    pending.push_front(std::move(batch.back()));
    batch.pop_back();
  }
  batch_bytes.clear();
}

void Wal::Impl::on_written(Result<uint32_t> r) {
  if (!r) return fail_wal(r.error());
  if (*r != batch_bytes.size()) {
    return fail_wal(Error{Errc::kIo, "write " + path + ": short write", 0});
  }
  offset += *r;
  if (CARDNODE_FAULT_POINT("wal.after_write_before_fsync")) {
    return fail_wal(Error{Errc::kIo, "fault point wal.after_write_before_fsync", EIO});
  }
  submit_sync();
}

void Wal::Impl::submit_sync() {
  stage = Stage::kSyncing;
  auto st = engine.fdatasync(fd, [this](Result<uint32_t> r) { on_synced(std::move(r)); });
  if (st) return;
  if (st.error().code == Errc::kResourceExhausted) {
    stage = Stage::kSyncStalled;
    return;
  }
  fail_wal(st.error());
}

void Wal::Impl::on_synced(Result<uint32_t> r) {
  // Never retried: after a failed fdatasync the kernel may have dropped the dirty pages
  // and a second fdatasync would report success for data that is gone.
  if (!r) return fail_wal(r.error());
  stage = Stage::kAcking;
  std::deque<PendingRecord> done;
  done.swap(batch);
  batch_bytes.clear();
  // Appends made by these callbacks only queue (stage is kAcking); they go out next.
  for (PendingRecord& rec : done) rec.on_durable({});
  stage = Stage::kIdle;
  start_flush();
}

void Wal::Impl::fail_wal(Error error) {
  failure = error;
  stage = Stage::kFailed;
  std::deque<PendingRecord> doomed;
  doomed.swap(batch);
  for (PendingRecord& rec : pending) doomed.push_back(std::move(rec));
  pending.clear();
  pending_bytes = 0;
  batch_bytes.clear();
  for (PendingRecord& rec : doomed) rec.on_durable(std::unexpected(error));
}

Result<std::unique_ptr<Wal>> Wal::open(IoEngine& engine, WalOptions options,
                                       const ReplayFn& on_record, ReplayStats* stats) {
  if (options.dir.empty()) return fail(Errc::kInvalidArgument, "wal dir is empty");
  if (options.segment_bytes <= kWalHeaderBytes) {
    return fail(Errc::kInvalidArgument, "wal segment_bytes too small");
  }
  if (auto st = make_dirs(options.dir); !st) return std::unexpected(st.error());
  auto scan = scan_dir(options.dir, &on_record, stats);
  if (!scan) return std::unexpected(scan.error());
  auto impl = std::make_unique<Impl>(engine, std::move(options));
  if (auto st = impl->open_dir(*scan); !st) return std::unexpected(st.error());
  return std::unique_ptr<Wal>(new Wal(std::move(impl)));
}

Wal::Wal(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

// Callbacks capture the Impl, so nothing may be in flight when it goes away.
Wal::~Wal() {
  drain();
}

Status Wal::append(std::string_view payload, DurableCallback on_durable) {
  Impl& w = *impl_;
  if (w.failure) return std::unexpected(*w.failure);
  if (payload.empty()) return fail(Errc::kInvalidArgument, "wal record is empty");
  if (payload.size() > kRecordBytesMax) {
    return fail(Errc::kInvalidArgument,
                "wal record of " + std::to_string(payload.size()) + " bytes over the maximum");
  }
  uint64_t bytes = kWalHeaderBytes + static_cast<uint64_t>(payload.size());
  if (w.pending_bytes + bytes > w.options.pending_bytes_max) {
    return fail(Errc::kResourceExhausted, "wal pending queue full");
  }
  w.pending.push_back(PendingRecord{w.next_seq++, encode_record(payload), std::move(on_durable)});
  w.pending_bytes += bytes;
  w.kick();
  return {};
}

uint64_t Wal::next_sequence() const {
  return impl_->next_seq;
}

uint64_t Wal::pending_records() const {
  return impl_->pending.size() + impl_->batch.size();
}

bool Wal::failed() const {
  return impl_->failure.has_value();
}

void Wal::drain() {
  Impl& w = *impl_;
  // Each pass completes at least one engine operation or ends the loop.
  while (pending_records() > 0 && !w.failure) {
    w.kick();
    if (pending_records() == 0 || w.failure) break;
    CARDNODE_CHECK(w.engine.in_flight() > 0);  // else nothing could ever finish the batch
    w.engine.wait();
  }
}

Result<ReplayStats> check_wal(const std::string& dir) {
  ReplayStats stats;
  auto scan = scan_dir(dir, nullptr, &stats);
  if (!scan) return std::unexpected(scan.error());
  return stats;
}

}  // namespace cardnode::storage
