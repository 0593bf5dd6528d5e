// Write-ahead log (format and crash rules: storage/wal_format.h). open() replays with
// plain reads (storage/wal_scan.h), drops a torn tail and seals the intact end; then group
// commit through the IoEngine: one batch in flight, written and made durable as one
// operation (IoEngine::write_durably: a write with RWF_DSYNC), then the seal write
// naming the batch's last record, then the batch's callbacks. Records accepted meanwhile
// form the next batch.
//
// Room on disk is made when a record is accepted (reserve): the segment is preallocated
// for every accepted, unwritten record as if each went out in a batch of its own, so a
// batch write never meets ENOSPC in preallocated space. A record that would not fit in
// the current segment rolls to a new one, synchronously, there and then.
//
// Ownership: Impl owns every fd (segments in OpenSegment, the seal); a record owns its
// framed bytes and callback until it is acknowledged or failed. Every metadata call and
// every sync outside the batch/seal data path goes through Fs (options.fs).
#include "storage/wal.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <deque>
#include <optional>

#include "storage/fault.h"
#include "storage/wal_scan.h"

namespace cardnode::storage {
namespace {

using wal_detail::WalScan;

// Zeroing a torn tail: at most kBatchHeaderBytes + kBatchBytesMax bytes, in these steps.
constexpr uint32_t kZeroChunkBytes = 64u << 10;

// Disk a record may take: its framing, and a batch header in case it goes out alone.
uint64_t worst_bytes(uint64_t payload_bytes) {
  return kBatchHeaderBytes + kRecordHeaderBytes + payload_bytes;
}

enum class Stage : uint8_t {
  kIdle,         // nothing in flight
  kWriting,      // batch write, durable when it completes (IoEngine::write_durably)
  kSealing,      // seal write naming the batch's last record
  kAcking,       // running the batch's callbacks
  kRetiring,     // seal fdatasync before a finished segment's fd closes
  kSealSyncing,  // seal fdatasync asked for by drain()
  kFailed,
};

// The segment appends go to, or an older one whose last batch is not yet durable.
struct OpenSegment {
  uint64_t first_seq = 0;
  std::string path;
  UniqueFd fd;
  uint64_t batch_end = 0;           // where the next batch goes
  uint64_t queued_worst_bytes = 0;  // records queued for it, each counted with a batch header
  uint64_t alloc_end = 0;           // preallocated up to here (or the file's size)

  uint64_t reserved_end() const { return batch_end + queued_worst_bytes; }
};

struct PendingRecord {
  uint64_t seq = 0;
  OpenSegment* segment = nullptr;  // owned by Impl::segments until the record is durable
  std::string framed;
  DurableCallback on_durable;
};

Status zero_range(Fs& fs, int fd, uint64_t from, uint64_t to, const std::string& path) {
  const std::string zeros(kZeroChunkBytes, '\0');
  for (uint64_t at = from; at < to;) {  // at grows by a chunk per pass
    auto n = static_cast<size_t>(std::min<uint64_t>(kZeroChunkBytes, to - at));
    if (auto st = fs.write_at(fd, std::string_view(zeros).substr(0, n), at, path); !st) return st;
    at += n;
  }
  return {};
}

Status check_options(const WalOptions& o) {
  if (o.dir.empty()) return fail(Errc::kInvalidArgument, "wal dir is empty");
  if (o.segment_bytes < kSegmentHeaderBytes + worst_bytes(1)) {
    return fail(Errc::kInvalidArgument, "wal segment_bytes too small for one record");
  }
  if (o.pending_bytes_max == 0) return fail(Errc::kInvalidArgument, "wal pending_bytes_max is 0");
  return {};
}

}  // namespace

struct Wal::Impl {
  Impl(IoEngine& e, WalOptions o)
      : engine(e), options(std::move(o)), fs(options.fs != nullptr ? *options.fs : Fs::real()) {}

  // open()
  Status make_dir();
  Status finish_open(const WalScan& scan);
  Result<std::unique_ptr<OpenSegment>> open_segment(const wal_detail::SegmentFile& file,
                                                    uint64_t batch_end);
  Status sync_newest_batch(const WalScan& scan, OpenSegment* seg);
  Status open_seal(const WalScan& scan);
  Status drop_leftovers(const WalScan& scan);

  // reserve()
  Status check_accept(size_t payload_bytes) const;
  Status make_room(uint64_t worst);
  Status roll(uint64_t worst);
  Result<std::unique_ptr<OpenSegment>> create_segment(uint64_t first_seq, uint64_t worst);
  Status init_segment(OpenSegment& seg, uint64_t worst);
  Status ensure_allocated(OpenSegment& seg, uint64_t end);
  void accept(std::string_view payload, DurableCallback on_durable);

  // The group-commit pipeline: kick() starts whatever can go next.
  void kick();
  void start_next();
  bool retire_ready() const;
  void form_batch();
  void submit();
  Status submit_stage();
  void on_batch_durable(Result<uint32_t> r);
  void on_sealed(Result<uint32_t> r);
  void on_seal_synced(uint64_t seq, Result<uint32_t> r);
  void fail_wal(const Error& error);
  bool busy() const;
  void wait_idle();

  OpenSegment& current() { return *segments.back(); }

  IoEngine& engine;
  WalOptions options;
  Fs& fs;
  WalStats stats;
  uint64_t next_seq = 1;
  uint64_t durable_seq = 0;
  bool prealloc_supported = true;  // false after EOPNOTSUPP: writes extend the file
  // Set by a successful reserve(), used by the append() right after it.
  std::optional<size_t> reserved_payload_bytes;
  bool roll_requested = false;  // start_segment_at_next_record()

  // Segments on disk, oldest first (for remove_segments_through); the last is current().
  std::deque<wal_detail::SegmentFile> on_disk;
  // Open segments, oldest first; back() takes appends, the others retire once their last
  // batch is durable. At most one more than the segments with records pending.
  std::deque<std::unique_ptr<OpenSegment>> segments;

  std::string seal_path;
  UniqueFd seal_fd;
  std::array<char, kSealBytes> seal_buf{};  // what the seal write in flight writes
  uint64_t seal_written_seq = 0;
  uint64_t seal_synced_seq = 0;

  std::deque<PendingRecord> queued;  // accepted, not yet in a batch
  uint64_t pending_bytes = 0;        // framed bytes accepted, not yet durable
  std::deque<PendingRecord> batch;   // the batch in the pipeline
  std::string batch_bytes;           // what engine.write writes; stable until it completes
  OpenSegment* batch_segment = nullptr;
  uint64_t batch_offset = 0;
  Stage stage = Stage::kIdle;
  bool stalled = false;  // the current stage's op was refused by a full engine queue
  std::optional<Error> failure;
};

// --- open ----------------------------------------------------------------------------------

Status Wal::Impl::make_dir() {
  struct stat st {};
  if (::stat(options.dir.c_str(), &st) == 0) return {};
  if (errno != ENOENT) return fail_errno(errno, "stat " + options.dir);
  if (auto made = make_dirs(options.dir); !made) return made;
  // The directory's own name must survive a crash like the files in it.
  return fs.sync_dir(wal_detail::parent_dir(options.dir));
}

// Repairs what the scan found, in an order that a crash at any step leaves for the next
// open to finish: torn tail zeroed, then the seal naming the last record, then leftovers
// removed, then (if none is left) a segment to append to.
Status Wal::Impl::finish_open(const WalScan& scan) {
  next_seq = scan.next_seq;
  durable_seq = next_seq - 1;
  std::unique_ptr<OpenSegment> seg;
  if (scan.append_segment) {
    auto opened = open_segment(scan.dir.segments[*scan.append_segment], scan.append_offset);
    if (!opened) return std::unexpected(opened.error());
    seg = std::move(*opened);
  }
  if (scan.torn) {
    // New batches go where the torn write began; stale bytes after them could otherwise
    // line up as records at a later replay.
    CARDNODE_CHECK(seg != nullptr && scan.torn->segment == *scan.append_segment);
    auto zeroed = zero_range(fs, seg->fd.get(), scan.torn->at, scan.torn->dirty_end, seg->path);
    if (!zeroed) return zeroed;
    if (auto synced = fs.sync(seg->fd.get(), seg->path); !synced) return synced;
    ++stats.fdatasyncs;
  }
  if (auto st = sync_newest_batch(scan, seg.get()); !st) return st;
  if (auto st = open_seal(scan); !st) return st;
  if (auto st = drop_leftovers(scan); !st) return st;
  for (size_t i = 0; i < scan.dir.segments.size(); ++i) {
    if (std::find(scan.leftovers.begin(), scan.leftovers.end(), i) == scan.leftovers.end()) {
      on_disk.push_back(scan.dir.segments[i]);
    }
  }
  if (seg == nullptr) {
    auto created = create_segment(next_seq, 0);
    if (!created) return std::unexpected(created.error());
    seg = std::move(*created);
    on_disk.push_back({seg->first_seq, wal_detail::segment_name(seg->first_seq), seg->path});
  }
  segments.push_back(std::move(seg));
  return {};
}

Result<std::unique_ptr<OpenSegment>> Wal::Impl::open_segment(const wal_detail::SegmentFile& file,
                                                             uint64_t batch_end) {
  auto fd = fs.open(file.path, O_RDWR);
  if (!fd) return std::unexpected(fd.error());
  struct stat st {};
  if (::fstat(fd->get(), &st) != 0) return fail_errno(errno, "stat " + file.path);
  auto seg = std::make_unique<OpenSegment>();
  seg->first_seq = file.first_seq;
  seg->path = file.path;
  seg->fd = std::move(*fd);
  seg->batch_end = batch_end;
  seg->alloc_end = std::max<uint64_t>(static_cast<uint64_t>(st.st_size), batch_end);
  return seg;
}

// The seal is about to name every record replayed. Only the newest batch can be in the
// page cache and not on disk (a previous process killed between its write and its sync:
// one batch is in flight at a time), and a later batch's RWF_DSYNC covers only its own
// bytes, never an older batch's: so that batch is synced here. It is in the append
// segment, or in the one before when a roll left the append segment without a batch. A
// torn tail's repair synced the append segment already.
Status Wal::Impl::sync_newest_batch(const WalScan& scan, OpenSegment* seg) {
  if (!scan.append_segment) return {};
  size_t newest = *scan.append_segment;
  if (scan.append_offset <= kSegmentHeaderBytes) {
    if (newest == 0) return {};  // no batch at all
    --newest;
  } else if (scan.torn) {
    return {};
  }
  if (newest == *scan.append_segment && seg != nullptr) {
    if (auto st = fs.sync(seg->fd.get(), seg->path); !st) return st;
  } else {
    const wal_detail::SegmentFile& file = scan.dir.segments[newest];
    auto fd = fs.open(file.path, O_RDONLY);
    if (!fd) return std::unexpected(fd.error());
    if (auto st = fs.sync(fd->get(), file.path); !st) return st;
  }
  ++stats.fdatasyncs;
  return {};
}

// After open the seal names the last record: every record replayed counts as
// acknowledged from now on, so damage to it later is corruption, not a torn tail.
Status Wal::Impl::open_seal(const WalScan& scan) {
  seal_path = options.dir + "/" + kSealFileName;
  uint64_t last = next_seq - 1;
  bool fresh = !scan.seal_present;  // absent, or empty: a first open that died early
  auto fd = fs.open(seal_path, O_RDWR | (fresh ? O_CREAT : 0));
  if (!fd) return std::unexpected(fd.error());
  seal_fd = std::move(*fd);
  seal_written_seq = seal_synced_seq = last;
  if (!fresh && scan.stats.sealed_seq == last) return {};
  auto seal = wal_detail::encode_seal(last);
  if (auto st = fs.write_at(seal_fd.get(), {seal.data(), seal.size()}, 0, seal_path); !st)
    return st;
  if (auto st = fs.sync(seal_fd.get(), seal_path); !st) return st;
  ++stats.fdatasyncs;
  // A new seal is durable before any segment can exist without it.
  return fresh ? fs.sync_dir(options.dir) : Status{};
}

Status Wal::Impl::drop_leftovers(const WalScan& scan) {
  if (scan.leftovers.empty()) return {};
  // Newest first: whatever a crash leaves, the segments form a run without holes.
  for (auto it = scan.leftovers.rbegin(); it != scan.leftovers.rend(); ++it) {
    if (auto st = fs.remove(scan.dir.segments[*it].path); !st) return st;
  }
  return fs.sync_dir(options.dir);
}

// --- reserve -------------------------------------------------------------------------------

Status Wal::Impl::check_accept(size_t payload_bytes) const {
  if (failure) return std::unexpected(*failure);
  if (payload_bytes == 0) return fail(Errc::kInvalidArgument, "wal record is empty");
  if (payload_bytes > kRecordBytesMax) {
    return fail(Errc::kInvalidArgument,
                "wal record of " + std::to_string(payload_bytes) + " bytes over the maximum");
  }
  if (pending_bytes + kRecordHeaderBytes + payload_bytes > options.pending_bytes_max) {
    return fail(Errc::kResourceExhausted, "wal pending queue full (" +
                                              std::to_string(pending_bytes) +
                                              " bytes accepted, not yet durable)");
  }
  return {};
}

Status Wal::Impl::make_room(uint64_t worst) {
  OpenSegment& seg = current();
  bool has_records = seg.first_seq < next_seq;
  // A record larger than a segment still goes into one of its own.
  bool full = seg.reserved_end() + worst > options.segment_bytes;
  if (has_records && (full || roll_requested)) {
    if (auto st = roll(worst); !st) return st;
    roll_requested = false;
    return {};
  }
  return ensure_allocated(seg, seg.reserved_end() + worst);
}

Status Wal::Impl::roll(uint64_t worst) {
  auto seg = create_segment(next_seq, worst);
  if (!seg) return std::unexpected(seg.error());
  on_disk.push_back({next_seq, wal_detail::segment_name(next_seq), (*seg)->path});
  // The old segment stays open until its last batch is durable (start_next retires it).
  segments.push_back(std::move(*seg));
  return {};
}

Result<std::unique_ptr<OpenSegment>> Wal::Impl::create_segment(uint64_t first_seq, uint64_t worst) {
  auto seg = std::make_unique<OpenSegment>();
  seg->first_seq = first_seq;
  seg->path = options.dir + "/" + wal_detail::segment_name(first_seq);
  // O_TRUNC: a file of this name can only be what a failed roll here left behind.
  auto fd = fs.open(seg->path, O_RDWR | O_CREAT | O_TRUNC);
  if (!fd) return std::unexpected(fd.error());
  seg->fd = std::move(*fd);
  seg->batch_end = seg->alloc_end = kSegmentHeaderBytes;
  if (auto st = init_segment(*seg, worst); !st) {
    seg->fd.reset();
    // Best effort: a segment without a batch that is left behind is dropped at the next
    // open, and the next roll truncates it.
    [[maybe_unused]] auto removed = fs.remove(seg->path);
    return std::unexpected(st.error());
  }
  ++stats.segments_created;
  return seg;
}

Status Wal::Impl::init_segment(OpenSegment& seg, uint64_t worst) {
  std::string header = wal_detail::encode_segment_header(seg.first_seq);
  if (auto st = fs.write_at(seg.fd.get(), header, 0, seg.path); !st) return st;
  // Header and name durable before any batch goes in: a crash must never leave batches in
  // a segment that could vanish or lose its header.
  if (auto st = fs.sync(seg.fd.get(), seg.path); !st) return st;
  ++stats.fdatasyncs;
  if (auto st = fs.sync_dir(options.dir); !st) return st;
  return ensure_allocated(seg, kSegmentHeaderBytes + worst);
}

// Preallocating in prealloc_bytes steps makes ENOSPC show up here, when a record is
// accepted, rather than in the middle of a batch. It is a synchronous call on the loop
// thread, but once per step (4 MiB by default), not per record.
Status Wal::Impl::ensure_allocated(OpenSegment& seg, uint64_t end) {
  if (!prealloc_supported || end <= seg.alloc_end) return {};
  uint64_t step = std::max<uint64_t>(options.prealloc_bytes, 1);
  uint64_t stepped = seg.alloc_end + (end - seg.alloc_end + step - 1) / step * step;
  uint64_t target = std::max(end, std::min(stepped, options.segment_bytes));
  Status st = fs.allocate(seg.fd.get(), seg.alloc_end, target - seg.alloc_end, seg.path);
  if (!st && st.error().sys_errno == ENOSPC && target > end) {
    target = end;  // a nearly full disk may still hold this record
    st = fs.allocate(seg.fd.get(), seg.alloc_end, target - seg.alloc_end, seg.path);
  }
  if (!st && st.error().sys_errno == EOPNOTSUPP) {
    // The file system cannot preallocate (some FUSE and network ones): writes extend the
    // file, and a full disk then shows up as a failed write.
    prealloc_supported = false;
    return {};
  }
  if (!st) return st;
  seg.alloc_end = target;
  return {};
}

void Wal::Impl::accept(std::string_view payload, DurableCallback on_durable) {
  OpenSegment& seg = current();
  PendingRecord rec{next_seq++, &seg, {}, std::move(on_durable)};
  rec.framed.reserve(kRecordHeaderBytes + payload.size());
  wal_detail::append_record(rec.framed, payload);
  seg.queued_worst_bytes += kBatchHeaderBytes + rec.framed.size();
  pending_bytes += rec.framed.size();
  queued.push_back(std::move(rec));
}

// --- the pipeline --------------------------------------------------------------------------

void Wal::Impl::kick() {
  if (stalled) return submit();
  if (stage == Stage::kIdle) start_next();
}

// The oldest open segment is finished when appends go elsewhere and none of its records
// is still queued (the pipeline is idle, so none is in flight either).
bool Wal::Impl::retire_ready() const {
  if (segments.size() < 2) return false;
  return queued.empty() || queued.front().segment != segments.front().get();
}

void Wal::Impl::start_next() {
  CARDNODE_CHECK(stage == Stage::kIdle && batch.empty() && !stalled);
  // Each pass closes one finished segment, or returns.
  while (retire_ready()) {
    if (seal_synced_seq != seal_written_seq) {
      stage = Stage::kRetiring;
      return submit();
    }
    segments.pop_front();  // closes its fd
  }
  if (queued.empty()) return;
  form_batch();
  stage = Stage::kWriting;
  submit();
}

void Wal::Impl::form_batch() {
  OpenSegment& seg = *queued.front().segment;
  batch_bytes.assign(kBatchHeaderBytes, '\0');
  // A batch never spans segments and holds at most kBatchBytesMax of records (one at least).
  while (!queued.empty() && queued.front().segment == &seg) {
    PendingRecord& rec = queued.front();
    uint64_t body = batch_bytes.size() - kBatchHeaderBytes;
    if (!batch.empty() && body + rec.framed.size() > kBatchBytesMax) break;
    batch_bytes += rec.framed;
    seg.queued_worst_bytes -= kBatchHeaderBytes + rec.framed.size();
    batch.push_back(std::move(rec));
    queued.pop_front();
  }
  auto body_bytes = static_cast<uint32_t>(batch_bytes.size() - kBatchHeaderBytes);
  auto header = wal_detail::encode_batch_header(static_cast<uint32_t>(batch.size()),
                                                batch.front().seq, body_bytes);
  std::copy(header.begin(), header.end(), batch_bytes.begin());
  batch_segment = &seg;
  batch_offset = seg.batch_end;
  seg.batch_end += batch_bytes.size();
  // reserve() preallocated for every accepted record, each with a batch header.
  CARDNODE_CHECK(!prealloc_supported || seg.batch_end <= seg.alloc_end);
  ++stats.batches;
  stats.records_appended += batch.size();
  stats.bytes_appended += batch_bytes.size();
}

void Wal::Impl::submit() {
  stalled = false;
  Status st = submit_stage();
  if (st) return;
  // A full engine queue is load, not damage: the op waits for the next kick().
  if (st.error().code == Errc::kResourceExhausted) {
    stalled = true;
    return;
  }
  fail_wal(st.error());
}

Status Wal::Impl::submit_stage() {
  switch (stage) {
    case Stage::kWriting:
      return engine.write_durably(batch_segment->fd.get(), batch_bytes.data(),
                                  static_cast<uint32_t>(batch_bytes.size()), batch_offset,
                                  [this](Result<uint32_t> r) { on_batch_durable(std::move(r)); });
    case Stage::kSealing:
      return engine.write(seal_fd.get(), seal_buf.data(), kSealBytes, 0,
                          [this](Result<uint32_t> r) { on_sealed(std::move(r)); });
    case Stage::kRetiring:
    case Stage::kSealSyncing:
      return engine.fdatasync(seal_fd.get(), [this, seq = seal_written_seq](Result<uint32_t> r) {
        on_seal_synced(seq, std::move(r));
      });
    case Stage::kIdle:
    case Stage::kAcking:
    case Stage::kFailed: break;
  }
  CARDNODE_CHECK(!"no I/O belongs to this stage");
  return {};
}

// The batch's write and its fdatasync were one operation (IoEngine::write_durably).
// Never retried: after a failed fdatasync the kernel may have dropped the dirty pages and a
// second one would report success for data that is gone.
void Wal::Impl::on_batch_durable(Result<uint32_t> r) {
  if (!r) return fail_wal(r.error());
  if (*r != batch_bytes.size()) {
    return fail_wal(Error{Errc::kIo, "write " + batch_segment->path + ": short write", EIO});
  }
  ++stats.fdatasyncs;
  if (CARDNODE_FAULT_POINT("wal.after_sync_before_seal")) {
    return fail_wal(Error{Errc::kIo, "fault point wal.after_sync_before_seal", EIO});
  }
  seal_buf = wal_detail::encode_seal(batch.back().seq);
  stage = Stage::kSealing;
  submit();
}

// The seal is not fdatasynced per batch (drain() and a segment's retirement do that):
// after a power loss it may name an older record, never one that is not durable, since it
// is written only after the batch's fdatasync completed.
void Wal::Impl::on_sealed(Result<uint32_t> r) {
  if (!r) return fail_wal(r.error());
  if (*r != kSealBytes)
    return fail_wal(Error{Errc::kIo, "write " + seal_path + ": short write", EIO});
  seal_written_seq = durable_seq = batch.back().seq;
  stage = Stage::kAcking;
  std::deque<PendingRecord> done;
  done.swap(batch);
  batch_bytes.clear();
  batch_segment = nullptr;
  for (const PendingRecord& rec : done) pending_bytes -= rec.framed.size();
  // Appends made by these callbacks only queue (stage is kAcking); they go out next.
  for (PendingRecord& rec : done) rec.on_durable({});
  stage = Stage::kIdle;
  start_next();
}

void Wal::Impl::on_seal_synced(uint64_t seq, Result<uint32_t> r) {
  if (!r) return fail_wal(r.error());  // not retried either
  ++stats.fdatasyncs;
  seal_synced_seq = std::max(seal_synced_seq, seq);
  if (stage == Stage::kRetiring) segments.pop_front();
  stage = Stage::kIdle;
  start_next();
}

void Wal::Impl::fail_wal(const Error& error) {
  failure = error;
  stage = Stage::kFailed;
  stalled = false;
  reserved_payload_bytes.reset();
  std::deque<PendingRecord> doomed;
  doomed.swap(batch);
  for (PendingRecord& rec : queued) doomed.push_back(std::move(rec));
  queued.clear();
  pending_bytes = 0;
  batch_bytes.clear();
  for (PendingRecord& rec : doomed) rec.on_durable(std::unexpected(error));
}

bool Wal::Impl::busy() const {
  if (failure) return false;
  return stage != Stage::kIdle || !queued.empty() || retire_ready();
}

void Wal::Impl::wait_idle() {
  // Each pass completes at least one engine operation, or ends the loop.
  while (busy()) {
    kick();
    if (!busy()) break;
    CARDNODE_CHECK(engine.in_flight() > 0);  // else nothing could ever finish the work
    engine.wait();
  }
}

// --- Wal -----------------------------------------------------------------------------------

Result<std::unique_ptr<Wal>> Wal::open(IoEngine& engine, WalOptions options, uint64_t after_seq,
                                       const ReplayFn& on_record, ReplayStats* stats) {
  if (auto st = check_options(options); !st) return std::unexpected(st.error());
  auto impl = std::make_unique<Impl>(engine, std::move(options));
  if (auto st = impl->make_dir(); !st) return std::unexpected(st.error());
  auto scan = wal_detail::scan_wal(impl->options.dir, after_seq, &on_record);
  if (!scan) return std::unexpected(scan.error());
  if (const auto& problem = scan->first_problem()) return fail(Errc::kCorruption, problem->message);
  if (auto st = impl->finish_open(*scan); !st) return std::unexpected(st.error());
  if (stats != nullptr) *stats = scan->stats;
  return std::unique_ptr<Wal>(new Wal(std::move(impl)));
}

Wal::Wal(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

// Callbacks capture the Impl, so nothing may be in flight when it goes away.
Wal::~Wal() {
  drain();
}

Status Wal::reserve(size_t payload_bytes) {
  Impl& w = *impl_;
  w.reserved_payload_bytes.reset();
  if (auto st = w.check_accept(payload_bytes); !st) return st;
  if (auto st = w.make_room(worst_bytes(payload_bytes)); !st) return st;
  w.reserved_payload_bytes = payload_bytes;
  return {};
}

Status Wal::append(std::string_view payload, DurableCallback on_durable) {
  Impl& w = *impl_;
  if (w.failure) return std::unexpected(*w.failure);
  bool covered =
      w.reserved_payload_bytes && !payload.empty() && payload.size() <= *w.reserved_payload_bytes;
  if (!covered) {
    if (auto st = reserve(payload.size()); !st) return st;
  }
  w.reserved_payload_bytes.reset();
  w.accept(payload, std::move(on_durable));
  if (!w.options.hold_appends) w.kick();
  return {};
}

void Wal::flush() {
  Impl& w = *impl_;
  if (!w.failure) w.kick();
}

uint64_t Wal::next_sequence() const {
  return impl_->next_seq;
}

uint64_t Wal::durable_sequence() const {
  return impl_->durable_seq;
}

uint64_t Wal::pending_records() const {
  return impl_->queued.size() + impl_->batch.size();
}

bool Wal::failed() const {
  return impl_->failure.has_value();
}

const WalStats& Wal::stats() const {
  return impl_->stats;
}

void Wal::drain() {
  Impl& w = *impl_;
  CARDNODE_CHECK(w.stage != Stage::kAcking);  // not from inside a DurableCallback
  w.wait_idle();
  if (w.failure || w.seal_synced_seq == w.seal_written_seq) return;
  w.stage = Stage::kSealSyncing;
  w.submit();
  w.wait_idle();
}

void Wal::start_segment_at_next_record() {
  impl_->roll_requested = true;
}

Result<uint32_t> Wal::remove_segments_through(uint64_t seq) {
  Impl& w = *impl_;
  if (w.failure) return std::unexpected(*w.failure);
  if (seq > w.durable_seq) {
    return fail(Errc::kInvalidArgument, "remove wal segments through " + std::to_string(seq) +
                                            ": only " + std::to_string(w.durable_seq) +
                                            " is durable");
  }
  uint32_t removed = 0;
  Status st;
  // Oldest first, so a crash leaves a run of segments without holes; never the last one,
  // which takes appends. A segment ends where the next one begins.
  while (w.on_disk.size() > 1 && w.on_disk[1].first_seq - 1 <= seq) {
    st = w.fs.remove(w.on_disk.front().path);
    if (!st) break;
    w.on_disk.pop_front();
    ++removed;
  }
  if (removed > 0) {
    auto synced = w.fs.sync_dir(w.options.dir);
    if (st) st = synced;
  }
  w.stats.segments_removed += removed;
  if (!st) return std::unexpected(st.error());
  return removed;
}

Result<ReplayStats> check_wal(const std::string& dir, uint64_t after_seq) {
  auto scan = wal_detail::scan_wal(dir, after_seq, nullptr);
  if (!scan) return std::unexpected(scan.error());
  if (const auto& problem = scan->first_problem()) return fail(Errc::kCorruption, problem->message);
  return scan->stats;
}

}  // namespace cardnode::storage
