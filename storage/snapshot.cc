// Snapshots (format and crash rules: storage/snapshot.h). The writer frames chunks into
// a buffer and streams it through the IoEngine in large writes, at most two in flight;
// finish() adds the end marker, fdatasyncs, and publishes the file with a rename and a
// directory fsync. The reader verifies a whole file in memory before it hands out a
// single chunk, so what it delivers is exactly what it checked.
#include "storage/snapshot.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace cardnode::storage {
namespace {

constexpr char kSnapshotMagic[8] = {'C', 'N', 'S', 'N', 'A', 'P', '0', '1'};
constexpr uint32_t kHeaderBytes = 24;
constexpr uint32_t kChunkHeaderBytes = 8;
constexpr uint32_t kEndBytes = 24;
constexpr size_t kSeqDigits = 20;
constexpr std::string_view kSnapSuffix = ".snap";
constexpr std::string_view kTmpSuffix = ".snap.tmp";

// A write goes out once this much is buffered (less with a small buffer_bytes_max, so
// that a busy() writer always has bytes to send): long sequential writes for SD cards.
constexpr uint64_t kFlushBytesMax = 1ull << 20;
// Two: one buffer on its way to the media while the next one fills.
constexpr uint32_t kWritesInFlightMax = 2;
// One engine write carries at most a whole buffer, and its length is a uint32_t.
constexpr uint64_t kBufferBytesLimit = 1ull << 30;
static_assert(kBufferBytesLimit + kChunkHeaderBytes + kSnapshotChunkBytesMax + kEndBytes <
                  std::numeric_limits<uint32_t>::max(),
              "a full buffer must fit in one engine write");
// A snapshot directory holds a few files; this many is not one we keep.
constexpr uint32_t kDirEntriesMax = 1u << 16;
// The destructor waits for the writer's own ops, at most two writes or one fdatasync;
// each wait() completes at least one op of the engine.
constexpr uint32_t kWaitsMax = 1u << 20;

void put_u32le(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>(v >> (8 * i)));
}

void put_u64le(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>(v >> (8 * i)));
}

uint32_t get_u32le(std::string_view data, uint64_t at) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i)
    v |= static_cast<uint32_t>(static_cast<uint8_t>(data[at + i])) << (8 * i);
  return v;
}

uint64_t get_u64le(std::string_view data, uint64_t at) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i)
    v |= static_cast<uint64_t>(static_cast<uint8_t>(data[at + i])) << (8 * i);
  return v;
}

// zlib's crc32 takes a uInt length: fine for our pieces (a chunk is at most 4 MiB).
uint32_t crc_of(uint32_t crc, std::string_view bytes) {
  return static_cast<uint32_t>(
      crc32(crc, reinterpret_cast<const Bytef*>(bytes.data()), static_cast<uInt>(bytes.size())));
}

std::string encode_header(uint64_t covers_seq) {
  std::string out(kSnapshotMagic, sizeof kSnapshotMagic);
  put_u64le(out, covers_seq);
  put_u32le(out, crc_of(0, out));
  put_u32le(out, 0);
  return out;
}

void append_chunk(std::string& out, std::string_view payload) {
  size_t at = out.size();
  put_u32le(out, static_cast<uint32_t>(payload.size()));
  uint32_t crc = crc_of(crc_of(0, std::string_view(out).substr(at, 4)), payload);
  put_u32le(out, crc);
  out.append(payload);
}

uint32_t end_crc(uint64_t covers_seq, uint64_t chunks, uint64_t payload_bytes) {
  std::string covered;
  put_u64le(covered, covers_seq);
  put_u64le(covered, chunks);
  put_u64le(covered, payload_bytes);
  return crc_of(0, covered);
}

void append_end(std::string& out, uint64_t covers_seq, uint64_t chunks, uint64_t payload_bytes) {
  put_u32le(out, 0);
  put_u64le(out, chunks);
  put_u64le(out, payload_bytes);
  put_u32le(out, end_crc(covers_seq, chunks, payload_bytes));
}

std::string snapshot_name(uint64_t covers_seq) {
  char name[32];
  (void)std::snprintf(name, sizeof name, "%020llu", static_cast<unsigned long long>(covers_seq));
  return std::string(name) + std::string(kSnapSuffix);
}

// Exactly 20 digits and ".snap"; anything else is not a name we gave.
std::optional<uint64_t> parse_snapshot_name(std::string_view name) {
  if (name.size() != kSeqDigits + kSnapSuffix.size() || !name.ends_with(kSnapSuffix)) {
    return std::nullopt;
  }
  uint64_t seq = 0;
  for (size_t i = 0; i < kSeqDigits; ++i) {
    if (name[i] < '0' || name[i] > '9') return std::nullopt;
    auto digit = static_cast<uint64_t>(name[i] - '0');
    if (seq > (std::numeric_limits<uint64_t>::max() - digit) / 10) return std::nullopt;
    seq = seq * 10 + digit;
  }
  return seq;
}

std::string_view base_name(std::string_view path) {
  size_t slash = path.rfind('/');
  return slash == std::string_view::npos ? path : path.substr(slash + 1);
}

// The engine refusing a submit because its queue is full: load, not damage.
bool queue_full(const Error& e) {
  return e.code == Errc::kResourceExhausted && e.sys_errno == 0;
}

enum class Stage : uint8_t {
  kOpen,      // taking chunks
  kFlushing,  // finish(): the rest and the end marker going out
  kSyncing,   // every byte written, fdatasync in flight
  kDone,      // published, done(ok) delivered
  kFailed,    // error kept; cleanup and done(error) once the writer's ops are back
};

// Where a failure was noticed: done may only run directly from inside a reap.
enum class From : uint8_t { kCaller, kReap };

// One engine write; `bytes` stays put until its callback ran.
struct Write {
  std::string bytes;
  uint64_t offset = 0;
};

}  // namespace

struct SnapshotWriter::Impl {
  Impl(IoEngine& e, Fs& f, const std::string& d, uint64_t seq, uint64_t buffer_max)
      : engine(e),
        fs(f),
        dir(d),
        final_path(d + "/" + snapshot_name(seq)),
        tmp_path(final_path + ".tmp"),
        covers_seq(seq),
        buffer_bytes_max(buffer_max),
        flush_bytes(std::clamp<uint64_t>(buffer_max / kWritesInFlightMax, 1, kFlushBytesMax)) {}

  Status create();
  Status add(std::string_view chunk);
  void finish(std::function<void(Status)> cb);
  void abandon();

  enum class Submitted : uint8_t { kSent, kRefused, kFailed };

  void pump(From from);
  Submitted submit_write(From from);
  void stall(From from);
  void on_written(Write* write, Result<uint32_t> r);
  void submit_sync(From from);
  void on_synced(Result<uint32_t> r);
  void publish();
  void fail_with(Error error, From from);
  void settle(From from);
  void deliver_later();
  void deliver();
  void remove_tmp();
  Error with_path(const Error& e) const;

  IoEngine& engine;
  Fs& fs;
  const std::string dir;
  const std::string final_path;
  const std::string tmp_path;
  const uint64_t covers_seq;
  const uint64_t buffer_bytes_max;
  const uint64_t flush_bytes;

  UniqueFd fd;  // open until the writer goes: the engine may still hold it in an op
  bool tmp_exists = false;
  Stage stage = Stage::kOpen;
  std::optional<Error> failure;
  std::function<void(Status)> done;  // set by finish(), cleared when it runs
  bool abandoned = false;            // destructor running: callbacks only count

  std::string filling;  // framed chunks not yet handed to the engine
  uint64_t filling_offset = kHeaderBytes;
  std::vector<std::unique_ptr<Write>> writes;  // in flight, at most kWritesInFlightMax
  uint64_t in_flight_bytes = 0;
  uint32_t ops_in_flight = 0;  // writes, the fdatasync, the zero-length read
  uint64_t chunks = 0;
  uint64_t payload_bytes = 0;
  uint64_t bytes_written = 0;  // header and completed writes
  char nop_byte = 0;
};

Status SnapshotWriter::Impl::create() {
  // O_TRUNC would reuse a stale file; removing it makes the create one FaultyFs can undo.
  if (::access(tmp_path.c_str(), F_OK) == 0) {
    if (auto st = fs.remove(tmp_path); !st) return st;
  }
  auto opened = fs.open(tmp_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (!opened) return std::unexpected(opened.error());
  fd = std::move(*opened);
  tmp_exists = true;
  std::string header = encode_header(covers_seq);
  if (auto st = fs.write_at(fd.get(), header, 0, tmp_path); !st) {
    remove_tmp();
    return st;
  }
  bytes_written = kHeaderBytes;
  filling.reserve(flush_bytes);
  return {};
}

Status SnapshotWriter::Impl::add(std::string_view chunk) {
  if (stage == Stage::kFailed) return std::unexpected(*failure);
  CARDNODE_CHECK(stage == Stage::kOpen);  // add() after finish() is a caller bug
  if (chunk.empty()) return fail(Errc::kInvalidArgument, "snapshot chunk is empty");
  if (chunk.size() > kSnapshotChunkBytesMax) {
    return fail(Errc::kInvalidArgument,
                "snapshot chunk of " + std::to_string(chunk.size()) + " bytes over the maximum");
  }
  uint64_t framed = kChunkHeaderBytes + chunk.size();
  if (filling_offset + filling.size() + framed + kEndBytes > kSnapshotFileBytesMax) {
    return fail(Errc::kInvalidArgument, tmp_path + ": snapshot would exceed " +
                                            std::to_string(kSnapshotFileBytesMax) + " bytes");
  }
  pump(From::kCaller);  // a write the full engine queue refused gets another chance
  if (stage == Stage::kFailed) return std::unexpected(*failure);
  if (filling.size() + in_flight_bytes >= buffer_bytes_max) {
    return fail(Errc::kResourceExhausted, "snapshot buffer full");
  }
  append_chunk(filling, chunk);
  ++chunks;
  payload_bytes += chunk.size();
  pump(From::kCaller);
  if (stage == Stage::kFailed) return std::unexpected(*failure);
  return {};
}

void SnapshotWriter::Impl::finish(std::function<void(Status)> cb) {
  CARDNODE_CHECK(cb != nullptr);
  CARDNODE_CHECK(done == nullptr && (stage == Stage::kOpen || stage == Stage::kFailed));
  done = std::move(cb);
  if (stage == Stage::kFailed) {
    // With ops in flight, the last one to come back delivers (settle).
    if (ops_in_flight == 0) deliver_later();
    return;
  }
  append_end(filling, covers_seq, chunks, payload_bytes);
  stage = Stage::kFlushing;
  pump(From::kCaller);
}

// Sends whole buffers while there is a free slot; while flushing, the tail too. Then,
// once every byte is written, the fdatasync. Returns right after a failure: done may
// have run and destroyed the writer.
void SnapshotWriter::Impl::pump(From from) {
  CARDNODE_CHECK(stage == Stage::kOpen || stage == Stage::kFlushing);
  for (uint32_t i = 0; i < kWritesInFlightMax; ++i) {
    bool ready = filling.size() >= flush_bytes || (stage == Stage::kFlushing && !filling.empty());
    if (!ready || writes.size() >= kWritesInFlightMax) break;
    switch (submit_write(from)) {
      case Submitted::kSent: break;
      case Submitted::kRefused: return stall(from);
      case Submitted::kFailed: return;
    }
  }
  if (stage == Stage::kFlushing && filling.empty() && writes.empty()) submit_sync(from);
}

SnapshotWriter::Impl::Submitted SnapshotWriter::Impl::submit_write(From from) {
  auto write = std::make_unique<Write>(Write{std::move(filling), filling_offset});
  filling = std::string();
  Write* raw = write.get();
  auto len = static_cast<uint32_t>(raw->bytes.size());
  auto st = engine.write(fd.get(), raw->bytes.data(), len, raw->offset,
                         [this, raw](Result<uint32_t> r) { on_written(raw, std::move(r)); });
  if (!st) {
    filling = std::move(raw->bytes);  // refused: its callback never runs
    if (queue_full(st.error())) return Submitted::kRefused;
    fail_with(with_path(st.error()), from);
    return Submitted::kFailed;
  }
  ++ops_in_flight;
  in_flight_bytes += len;
  filling_offset += len;
  writes.push_back(std::move(write));
  filling.reserve(flush_bytes);
  return Submitted::kSent;
}

// The engine queue is full of other users' ops. With one of ours in flight, its
// completion tries again; while taking chunks, the next add() does. A finishing writer
// with nothing in flight would never hear from the engine again, so it gives up with a
// retryable error rather than leave done uncalled for ever.
void SnapshotWriter::Impl::stall(From from) {
  if (ops_in_flight > 0 || stage == Stage::kOpen) return;
  fail_with(Error{Errc::kResourceExhausted,
                  "snapshot " + tmp_path + ": io queue full with none of its writes in flight", 0},
            from);
}

void SnapshotWriter::Impl::on_written(Write* write, Result<uint32_t> r) {
  auto it = std::find_if(writes.begin(), writes.end(),
                         [write](const std::unique_ptr<Write>& w) { return w.get() == write; });
  CARDNODE_CHECK(it != writes.end() && ops_in_flight > 0);
  uint64_t len = write->bytes.size();
  writes.erase(it);
  in_flight_bytes -= len;
  --ops_in_flight;
  if (abandoned) return;
  if (r && *r == len) bytes_written += len;
  if (stage == Stage::kFailed) return settle(From::kReap);
  if (!r) return fail_with(with_path(r.error()), From::kReap);
  if (*r != len) {
    return fail_with(Error{Errc::kIo, "write " + tmp_path + ": short write", 0}, From::kReap);
  }
  pump(From::kReap);
}

void SnapshotWriter::Impl::submit_sync(From from) {
  stage = Stage::kSyncing;
  auto st = engine.fdatasync(fd.get(), [this](Result<uint32_t> r) { on_synced(std::move(r)); });
  if (st) {
    ++ops_in_flight;
    return;
  }
  stage = Stage::kFlushing;
  if (queue_full(st.error())) return stall(from);
  fail_with(with_path(st.error()), from);
}

void SnapshotWriter::Impl::on_synced(Result<uint32_t> r) {
  CARDNODE_CHECK(ops_in_flight > 0);
  --ops_in_flight;
  if (abandoned) return;
  // Never retried: after a failed fdatasync the kernel may have dropped the dirty pages.
  if (!r) return fail_with(with_path(r.error()), From::kReap);
  publish();
}

// The bytes are durable; the rename makes them the snapshot, the directory fsync makes
// the rename durable. Blocking Fs calls, once per snapshot.
void SnapshotWriter::Impl::publish() {
  if (auto st = fs.rename(tmp_path, final_path); !st) return fail_with(st.error(), From::kReap);
  tmp_exists = false;
  // On failure the complete, valid NNN.snap stays: it may or may not survive a crash,
  // and either way readers see an intact snapshot or the older ones.
  if (auto st = fs.sync_dir(dir); !st) return fail_with(st.error(), From::kReap);
  stage = Stage::kDone;
  deliver();
}

void SnapshotWriter::Impl::fail_with(Error error, From from) {
  if (stage != Stage::kFailed) {  // the first error is the one reported
    stage = Stage::kFailed;
    failure = std::move(error);
    filling = std::string();
  }
  settle(from);
}

// A failed writer cleans up once none of its ops is in flight (they still write into
// the file), then tells finish()'s caller, if it asked already.
void SnapshotWriter::Impl::settle(From from) {
  if (ops_in_flight > 0) return;
  remove_tmp();
  if (done == nullptr) return;
  if (from == From::kReap) return deliver();
  deliver_later();
}

// done must not run inside the caller's finish() or add(): it goes through the engine
// as a zero-length read, the cheapest op that comes back from a reap. Only an engine
// that refuses even that (queue full, or a simulated crash) gets done called here.
void SnapshotWriter::Impl::deliver_later() {
  auto st = engine.read(fd.get(), &nop_byte, 0, 0, [this](Result<uint32_t>) {
    CARDNODE_CHECK(ops_in_flight > 0);
    --ops_in_flight;
    if (!abandoned) deliver();
  });
  if (st) {
    ++ops_in_flight;
    return;
  }
  deliver();
}

// The writer's last act: done may destroy it (nothing is in flight any more).
void SnapshotWriter::Impl::deliver() {
  CARDNODE_CHECK(done != nullptr && ops_in_flight == 0);
  auto cb = std::move(done);
  done = nullptr;
  if (stage == Stage::kDone) return cb({});
  cb(std::unexpected(*failure));
}

// Best effort: a .tmp left behind (the Fs failed too) is ignored by readers and removed
// by the next begin() of the same sequence or by remove_snapshots_before().
void SnapshotWriter::Impl::remove_tmp() {
  if (!tmp_exists) return;
  tmp_exists = false;
  [[maybe_unused]] auto st = fs.remove(tmp_path);
}

void SnapshotWriter::Impl::abandon() {
  abandoned = true;
  for (uint32_t i = 0; i < kWaitsMax && ops_in_flight > 0; ++i) engine.wait();
  // An op still in flight would write from, or call back into, freed memory.
  CARDNODE_CHECK(ops_in_flight == 0);
  if (stage != Stage::kDone) remove_tmp();
}

Error SnapshotWriter::Impl::with_path(const Error& e) const {
  return Error{e.code, "snapshot " + tmp_path + ": " + e.message, e.sys_errno};
}

Result<std::unique_ptr<SnapshotWriter>> SnapshotWriter::begin(IoEngine& engine, Fs& fs,
                                                              const std::string& dir,
                                                              uint64_t covers_seq,
                                                              uint64_t buffer_bytes_max) {
  if (buffer_bytes_max == 0 || buffer_bytes_max > kBufferBytesLimit) {
    return fail(Errc::kInvalidArgument,
                "snapshot buffer_bytes_max must be 1.." + std::to_string(kBufferBytesLimit));
  }
  auto impl = std::make_unique<Impl>(engine, fs, dir, covers_seq, buffer_bytes_max);
  if (auto st = impl->create(); !st) return std::unexpected(st.error());
  return std::unique_ptr<SnapshotWriter>(new SnapshotWriter(std::move(impl)));
}

SnapshotWriter::SnapshotWriter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

SnapshotWriter::~SnapshotWriter() {
  impl_->abandon();
}

Status SnapshotWriter::add(std::string_view chunk) {
  return impl_->add(chunk);
}

bool SnapshotWriter::busy() const {
  const Impl& w = *impl_;
  if (w.stage != Stage::kOpen) return false;  // add() answers for itself from here on
  return w.filling.size() + w.in_flight_bytes >= w.buffer_bytes_max;
}

void SnapshotWriter::finish(std::function<void(Status)> done) {
  impl_->finish(std::move(done));
}

uint64_t SnapshotWriter::covers_seq() const {
  return impl_->covers_seq;
}

uint64_t SnapshotWriter::bytes_written() const {
  return impl_->bytes_written;
}

// --- reading ---------------------------------------------------------------------

namespace {

// Checks a whole file image; on success every chunk in it is intact and bounded.
class Verifier {
 public:
  Verifier(const std::string& path, std::string_view data, uint64_t name_seq)
      : path_(path), data_(data), name_seq_(name_seq) {}

  Result<SnapshotInfo> run() {
    if (auto st = header(); !st) return std::unexpected(st.error());
    uint64_t pos = kHeaderBytes;
    // Every pass consumes one chunk, at least 9 bytes, or leaves the loop.
    while (left(pos) >= 4 && get_u32le(data_, pos) != 0) {
      auto next = chunk(pos);
      if (!next) return std::unexpected(next.error());
      pos = *next;
    }
    if (auto st = end(pos); !st) return std::unexpected(st.error());
    return SnapshotInfo{name_seq_, path_, data_.size(), chunks_};
  }

 private:
  std::unexpected<Error> damage(uint64_t at, const std::string& what) const {
    return fail(Errc::kCorruption, path_ + " at offset " + std::to_string(at) + ": " + what);
  }
  uint64_t left(uint64_t pos) const { return data_.size() - pos; }

  Status header() const {
    if (data_.size() < kHeaderBytes) return damage(data_.size(), "file ends inside the header");
    if (data_.substr(0, sizeof kSnapshotMagic) != std::string_view(kSnapshotMagic, 8)) {
      return damage(0, "not a snapshot (bad magic)");
    }
    if (get_u32le(data_, 16) != crc_of(0, data_.substr(0, 16))) {
      return damage(16, "header crc mismatch");
    }
    if (get_u32le(data_, 20) != 0) return damage(20, "reserved header field not zero");
    uint64_t seq = get_u64le(data_, 8);
    if (seq != name_seq_) {
      return damage(8, "covers sequence " + std::to_string(seq) + " but the name says " +
                           std::to_string(name_seq_));
    }
    return {};
  }

  // The offset of the next chunk.
  Result<uint64_t> chunk(uint64_t pos) {
    uint32_t len = get_u32le(data_, pos);
    if (len > kSnapshotChunkBytesMax) {
      return damage(pos, "chunk length " + std::to_string(len) + " over the maximum");
    }
    if (left(pos) < kChunkHeaderBytes + uint64_t{len}) {
      return damage(pos,
                    "chunk of " + std::to_string(len) + " bytes runs past the end of the file");
    }
    uint32_t crc =
        crc_of(crc_of(0, data_.substr(pos, 4)), data_.substr(pos + kChunkHeaderBytes, len));
    if (get_u32le(data_, pos + 4) != crc) return damage(pos, "chunk crc mismatch");
    ++chunks_;
    payload_bytes_ += len;
    return pos + kChunkHeaderBytes + len;
  }

  Status end(uint64_t pos) const {
    if (left(pos) < kEndBytes) return damage(pos, "file ends before the end marker");
    uint64_t chunks = get_u64le(data_, pos + 4);
    uint64_t payload_bytes = get_u64le(data_, pos + 12);
    if (get_u32le(data_, pos + 20) != end_crc(name_seq_, chunks, payload_bytes)) {
      return damage(pos, "end marker crc mismatch");
    }
    if (chunks != chunks_ || payload_bytes != payload_bytes_) {
      return damage(pos, "end marker counts " + std::to_string(chunks) + " chunks of " +
                             std::to_string(payload_bytes) + " bytes, the file holds " +
                             std::to_string(chunks_) + " of " + std::to_string(payload_bytes_));
    }
    if (left(pos) > kEndBytes) {
      return damage(pos + kEndBytes,
                    std::to_string(left(pos) - kEndBytes) + " bytes after the end marker");
    }
    return {};
  }

  const std::string& path_;
  std::string_view data_;
  uint64_t name_seq_;
  uint64_t chunks_ = 0;
  uint64_t payload_bytes_ = 0;
};

// The whole file, checked. `data` keeps the bytes the caller may then walk.
Result<SnapshotInfo> load_verified(const std::string& path, std::string* data) {
  auto seq = parse_snapshot_name(base_name(path));
  if (!seq) {
    return fail(Errc::kInvalidArgument, path + ": not a snapshot file name (20 digits and .snap)");
  }
  // On a 32-bit board a file this size could not be held in memory anyway.
  uint64_t bytes_max =
      std::min<uint64_t>(kSnapshotFileBytesMax, std::numeric_limits<size_t>::max() / 2);
  auto read = read_file_bounded(path, bytes_max);
  if (!read) return std::unexpected(read.error());
  *data = std::move(*read);
  return Verifier(path, *data, *seq).run();
}

}  // namespace

Result<SnapshotInfo> read_snapshot(const std::string& path,
                                   const std::function<Status(std::string_view chunk)>& on_chunk) {
  CARDNODE_CHECK(on_chunk != nullptr);
  std::string data;
  auto info = load_verified(path, &data);
  if (!info) return info;
  uint64_t pos = kHeaderBytes;
  for (uint64_t i = 0; i < info->chunks; ++i) {  // lengths were checked by the Verifier
    uint32_t len = get_u32le(data, pos);
    CARDNODE_CHECK(pos + kChunkHeaderBytes + len <= data.size());
    if (auto st = on_chunk(std::string_view(data).substr(pos + kChunkHeaderBytes, len)); !st) {
      return std::unexpected(st.error());
    }
    pos += kChunkHeaderBytes + len;
  }
  return info;
}

Result<SnapshotInfo> check_snapshot(const std::string& path) {
  std::string data;
  return load_verified(path, &data);
}

namespace {

struct DirListing {
  std::vector<SnapshotInfo> snapshots;  // newest first
  std::vector<std::string> tmp_paths;
};

Result<DirListing> scan_snapshot_dir(const std::string& dir) {
  DirListing out;
  auto names = list_dir(dir, kDirEntriesMax);
  if (!names && names.error().sys_errno == ENOENT) return out;
  if (!names) return std::unexpected(names.error());
  for (const std::string& name : *names) {
    if (name.ends_with(kTmpSuffix)) {
      out.tmp_paths.push_back(dir + "/" + name);
      continue;
    }
    auto seq = parse_snapshot_name(name);
    if (!seq) return fail(Errc::kCorruption, dir + "/" + name + ": not a snapshot file name");
    out.snapshots.push_back(SnapshotInfo{*seq, dir + "/" + name, 0, 0});
  }
  std::sort(
      out.snapshots.begin(), out.snapshots.end(),
      [](const SnapshotInfo& a, const SnapshotInfo& b) { return a.covers_seq > b.covers_seq; });
  return out;
}

}  // namespace

Result<std::vector<SnapshotInfo>> list_snapshots(const std::string& dir) {
  auto listing = scan_snapshot_dir(dir);
  if (!listing) return std::unexpected(listing.error());
  return std::move(listing->snapshots);
}

Result<uint32_t> remove_snapshots_before(Fs& fs, const std::string& dir, uint64_t keep_from_seq) {
  auto listing = scan_snapshot_dir(dir);
  if (!listing) return std::unexpected(listing.error());
  std::vector<std::string> doomed = listing->tmp_paths;
  uint32_t snapshots = 0;
  // Oldest first: stopping half-way still leaves the newest snapshots.
  for (auto it = listing->snapshots.rbegin(); it != listing->snapshots.rend(); ++it) {
    if (it->covers_seq >= keep_from_seq) break;
    doomed.push_back(it->path);
    ++snapshots;
  }
  for (const std::string& path : doomed) {
    if (auto st = fs.remove(path); !st) return std::unexpected(st.error());
  }
  if (doomed.empty()) return 0u;  // nothing changed: no fsync either
  if (auto st = fs.sync_dir(dir); !st) return std::unexpected(st.error());
  return snapshots;
}

}  // namespace cardnode::storage
