// Reading a WAL directory: segment by segment, batch by batch, and when something is not
// a batch or zeros to the end, deciding with rules (a)-(d) of wal_format.h whether it is
// the torn last write or corruption.
#include "storage/wal_scan.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

namespace cardnode::storage::wal_detail {
namespace {

constexpr size_t kSegmentDigits = 20;
constexpr std::string_view kSegmentSuffix = ".wal";
// The most one view() may hold: a whole batch, or a read chunk.
constexpr uint64_t kWindowBytesMax =
    std::max<uint64_t>(kBatchHeaderBytes + uint64_t{kBatchBytesMax}, kReadChunkBytes);

constexpr std::string_view kBatchMagicView(kBatchMagic, sizeof kBatchMagic);

void put_u32(char* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<char>(v >> (8 * i));
}
void put_u64(char* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<char>(v >> (8 * i));
}
uint32_t get_u32(std::string_view s, uint64_t at) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i)
    v |= static_cast<uint32_t>(static_cast<uint8_t>(s[at + i])) << (8 * i);
  return v;
}
uint64_t get_u64(std::string_view s, uint64_t at) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i)
    v |= static_cast<uint64_t>(static_cast<uint8_t>(s[at + i])) << (8 * i);
  return v;
}

uLong crc_update(uLong crc, std::string_view s) {
  // crc32() with a null buffer returns the initial value, not `crc`: an empty view may
  // have a null data().
  if (s.empty()) return crc;
  return crc32(crc, reinterpret_cast<const Bytef*>(s.data()), static_cast<uInt>(s.size()));
}

uint32_t crc_of(std::string_view a, std::string_view b = {}) {
  return static_cast<uint32_t>(crc_update(crc_update(crc32(0L, Z_NULL, 0), a), b));
}

// Word at a time: a replay reads every preallocated zero of the newest segment.
std::optional<size_t> first_nonzero_in(std::string_view s) {
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t w = 0;
    std::memcpy(&w, s.data() + i, 8);
    if (w != 0) break;
  }
  for (; i < s.size(); ++i) {
    if (s[i] != 0) return i;
  }
  return std::nullopt;
}

std::optional<size_t> last_nonzero_in(std::string_view s) {
  size_t end = s.size();
  for (; end >= 8; end -= 8) {
    uint64_t w = 0;
    std::memcpy(&w, s.data() + end - 8, 8);
    if (w != 0) break;
  }
  for (; end > 0; --end) {
    if (s[end - 1] != 0) return end - 1;
  }
  return std::nullopt;
}

std::string at_offset(const std::string& path, uint64_t offset) {
  return path + " at offset " + std::to_string(offset);
}

std::optional<uint64_t> parse_segment_name(std::string_view name) {
  if (name.size() != kSegmentDigits + kSegmentSuffix.size()) return std::nullopt;
  uint64_t seq = 0;
  for (size_t i = 0; i < kSegmentDigits; ++i) {
    if (name[i] < '0' || name[i] > '9') return std::nullopt;
    auto digit = static_cast<uint64_t>(name[i] - '0');
    if (seq > (UINT64_MAX - digit) / 10) return std::nullopt;
    seq = seq * 10 + digit;
  }
  if (seq == 0) return std::nullopt;  // records are numbered from 1
  return seq;
}

// --- segment header ----------------------------------------------------------------------

enum class HeaderState : uint8_t { kValid, kTorn, kOtherVersion };

struct SegmentHeader {
  HeaderState state = HeaderState::kTorn;
  uint64_t first_seq = 0;
  uint32_t version = 0;
};

SegmentHeader parse_segment_header(std::string_view b) {
  SegmentHeader h;
  if (b.size() < kSegmentHeaderBytes) return h;
  if (b.substr(0, sizeof kSegmentMagic) != std::string_view(kSegmentMagic, sizeof kSegmentMagic))
    return h;
  if (get_u32(b, 28) != crc_of(b.substr(0, 28))) return h;
  h.version = get_u32(b, 8);
  h.first_seq = get_u64(b, 16);
  bool pads_zero = get_u32(b, 12) == 0 && get_u32(b, 24) == 0;
  h.state = h.version == kWalFormatVersion && pads_zero ? HeaderState::kValid
                                                        : HeaderState::kOtherVersion;
  return h;
}

// --- batches and records -----------------------------------------------------------------

struct BatchHeader {
  uint32_t count = 0;
  uint64_t first_seq = 0;
  uint32_t body_bytes = 0;
};

// Magic and crc: a header written whole (by us, or copied from one of ours).
std::optional<BatchHeader> parse_batch_header(std::string_view b) {
  if (b.size() < kBatchHeaderBytes || b.substr(0, 4) != kBatchMagicView) return std::nullopt;
  if (get_u32(b, 20) != crc_of(b.substr(0, 20))) return std::nullopt;
  return BatchHeader{get_u32(b, 4), get_u64(b, 8), get_u32(b, 16)};
}

// What the writer could have produced: at least one record of at least one byte each.
bool batch_fields_ok(const BatchHeader& h) {
  return h.count >= 1 && h.body_bytes <= kBatchBytesMax &&
         uint64_t{h.count} * (kRecordHeaderBytes + 1) <= h.body_bytes;
}

enum class RecordCheck : uint8_t { kOk, kLength, kPastBatch, kPastFile, kCrc };

// The record at `at` of a batch body that has `body_bytes` (of which `body` holds what
// the file has). *len is the payload length when the header part was readable.
RecordCheck check_record(std::string_view body, uint64_t at, uint64_t body_bytes, uint32_t* len) {
  if (at + kRecordHeaderBytes > body_bytes) return RecordCheck::kPastBatch;
  if (at + kRecordHeaderBytes > body.size()) return RecordCheck::kPastFile;
  *len = get_u32(body, at);
  if (*len == 0 || *len > kRecordBytesMax) return RecordCheck::kLength;
  if (at + kRecordHeaderBytes + *len > body_bytes) return RecordCheck::kPastBatch;
  if (at + kRecordHeaderBytes + *len > body.size()) return RecordCheck::kPastFile;
  std::string_view payload = body.substr(at + kRecordHeaderBytes, *len);
  if (get_u32(body, at + 4) != crc_of(body.substr(at, 4), payload)) return RecordCheck::kCrc;
  return RecordCheck::kOk;
}

std::string record_problem(RecordCheck c, uint64_t seq, uint32_t len) {
  std::string rec = "record " + std::to_string(seq);
  switch (c) {
    case RecordCheck::kOk: break;
    case RecordCheck::kLength: return rec + ": length " + std::to_string(len) + " out of range";
    case RecordCheck::kPastBatch: return rec + " runs past the end of its batch";
    case RecordCheck::kPastFile: return rec + " cut off by the end of the file";
    case RecordCheck::kCrc: return "crc mismatch in " + rec;
  }
  return rec;
}

struct BodyCheck {
  uint32_t intact = 0;        // leading records that check out
  uint64_t intact_bytes = 0;  // their framed size
  std::string problem;        // empty: all `count` records check out and fill body_bytes
  uint64_t problem_at = 0;    // offset in the body of what does not
};

BodyCheck check_body(std::string_view body, const BatchHeader& h) {
  BodyCheck c;
  for (uint32_t i = 0; i < h.count; ++i) {
    uint32_t len = 0;
    RecordCheck rc = check_record(body, c.intact_bytes, h.body_bytes, &len);
    if (rc != RecordCheck::kOk) {
      c.problem_at = c.intact_bytes;
      c.problem = record_problem(rc, h.first_seq + i, len);
      return c;
    }
    ++c.intact;
    c.intact_bytes += kRecordHeaderBytes + len;
  }
  if (c.intact_bytes != h.body_bytes) {
    c.problem_at = c.intact_bytes;
    c.problem = "batch of " + std::to_string(h.count) + " records ends at byte " +
                std::to_string(c.intact_bytes) + " of its " + std::to_string(h.body_bytes);
  }
  return c;
}

// A checked body: each record to on_record (seq > after_seq) or counted as skipped.
Status deliver(std::string_view body, const BatchHeader& h, uint64_t after_seq,
               const ReplayFn* on_record, ReplayStats& stats) {
  uint64_t at = 0;
  for (uint32_t i = 0; i < h.count; ++i) {
    uint32_t len = get_u32(body, at);
    uint64_t seq = h.first_seq + i;
    if (seq <= after_seq) {
      ++stats.skipped;
    } else {
      if (on_record != nullptr && *on_record) {
        auto st = (*on_record)(seq, body.substr(at + kRecordHeaderBytes, len));
        if (!st) return st;
      }
      ++stats.records;
    }
    stats.last_seq = seq;
    at += kRecordHeaderBytes + len;
  }
  return {};
}

// A whole, intact batch at `at` (every record checks out); nullopt otherwise.
Result<std::optional<BatchHeader>> intact_batch_at(FileWindow& w, uint64_t at) {
  auto hv = w.get(at, kBatchHeaderBytes);
  if (!hv) return std::unexpected(hv.error());
  auto h = parse_batch_header(*hv);
  if (!h || !batch_fields_ok(*h)) return std::nullopt;
  auto body = w.get(at + kBatchHeaderBytes, h->body_bytes);
  if (!body) return std::unexpected(body.error());
  if (!check_body(*body, *h).problem.empty()) return std::nullopt;
  return h;
}

// Rule (c)'s evidence: a header that checks out, first_seq above `seq`, and a first record
// that checks out. A crc-valid header alone could be bytes of some payload.
Result<bool> later_batch_at(FileWindow& w, uint64_t at, uint64_t seq) {
  auto hv = w.get(at, kBatchHeaderBytes);
  if (!hv) return std::unexpected(hv.error());
  auto h = parse_batch_header(*hv);
  if (!h || !batch_fields_ok(*h) || h->first_seq <= seq) return false;
  uint64_t first_bytes = std::min<uint64_t>(h->body_bytes, kRecordHeaderBytes + kRecordBytesMax);
  auto body = w.get(at + kBatchHeaderBytes, first_bytes);
  if (!body) return std::unexpected(body.error());
  uint32_t len = 0;
  return check_record(*body, 0, h->body_bytes, &len) == RecordCheck::kOk;
}

// Calls found(at) for each offset in [from, end of file) where the batch magic begins,
// in order, until it returns true (then that offset) or the file ends (nullopt).
template <class Found>
Result<std::optional<uint64_t>> find_magic(FileWindow& w, uint64_t from, Found found) {
  uint64_t p = from;
  // Each pass moves p forward (by a buffer, less the 3 bytes a magic could straddle).
  while (p + kBatchHeaderBytes <= w.size()) {
    auto v = w.view(p, kBatchHeaderBytes);
    if (!v) return std::unexpected(v.error());
    size_t hit = v->find(kBatchMagicView);
    if (hit == std::string_view::npos) {
      p += v->size() - (kBatchMagicView.size() - 1);
      continue;
    }
    uint64_t at = p + hit;
    auto yes = found(at);
    if (!yes) return std::unexpected(yes.error());
    if (*yes) return at;
    p = at + 1;
  }
  return std::nullopt;
}

// --- one segment ---------------------------------------------------------------------------

// The first offset D of a segment that is neither an intact batch in sequence nor zeros to
// the end of the file.
struct Damage {
  uint64_t at = 0;         // D
  uint64_t report_at = 0;  // the offset the message names (the bad record, when known)
  uint64_t seq = 0;        // the first record lost at D
  std::string what;
  bool header_intact = false;  // the batch header at D is whole and in sequence
  // A whole header out of sequence or out of range: no crash writes that.
  bool never_torn = false;
  uint32_t records_intact = 0;
  uint64_t records_end = 0;
  uint64_t batch_end = 0;  // E of rule (d)
  uint64_t dirty_end = 0;  // just past the segment's last nonzero byte
};

struct SegmentRead {
  uint64_t end = 0;  // just past the last intact batch
  uint64_t next_seq = 0;
  std::optional<Damage> damage;
};

Damage headerless_damage(uint64_t at, uint64_t report_at, uint64_t seq, std::string what) {
  Damage d;
  d.at = at;
  d.report_at = report_at;
  d.seq = seq;
  d.what = std::move(what);
  d.batch_end = at + kBatchHeaderBytes + kBatchBytesMax;
  return d;
}

// What begins at a batch boundary of a segment.
struct Boundary {
  enum class Kind : uint8_t { kEnd, kBatch, kDamage };
  Kind kind = Kind::kEnd;  // kEnd: zeros from here to the end of the file
  BatchHeader header;      // kBatch: an intact header in sequence (the body is not checked)
  Damage damage;           // kDamage
};

Boundary damaged(Damage d) {
  return Boundary{.kind = Boundary::Kind::kDamage, .damage = std::move(d)};
}

Result<Boundary> boundary_at(FileWindow& w, uint64_t pos, uint64_t seq) {
  auto hv = w.get(pos, kBatchHeaderBytes);
  if (!hv) return std::unexpected(hv.error());
  if (!first_nonzero_in(*hv)) {
    auto nz = w.first_nonzero(pos);
    if (!nz) return std::unexpected(nz.error());
    if (!*nz) return Boundary{};
    return damaged(headerless_damage(pos, **nz, seq, "nonzero bytes after the end of the log"));
  }
  if (hv->size() < kBatchHeaderBytes) {
    return damaged(headerless_damage(pos, pos, seq, "batch header cut off by the end of the file"));
  }
  auto h = parse_batch_header(*hv);
  if (!h) return damaged(headerless_damage(pos, pos, seq, "damaged batch header"));
  if (batch_fields_ok(*h) && h->first_seq == seq) {
    return Boundary{.kind = Boundary::Kind::kBatch, .header = *h};
  }
  Damage d = headerless_damage(pos, pos, seq, "");
  d.never_torn = true;
  d.what = !batch_fields_ok(*h) ? "batch header out of range (count " + std::to_string(h->count) +
                                      ", body_bytes " + std::to_string(h->body_bytes) + ")"
                                : "batch starts at sequence " + std::to_string(h->first_seq) +
                                      ", expected " + std::to_string(seq);
  return damaged(std::move(d));
}

Damage body_damage(uint64_t pos, uint64_t seq, const BatchHeader& h, BodyCheck c) {
  Damage d;
  d.at = pos;
  d.report_at = pos + kBatchHeaderBytes + c.problem_at;
  d.seq = seq;
  d.what = std::move(c.problem);
  d.header_intact = true;
  d.records_intact = c.intact;
  d.records_end = pos + kBatchHeaderBytes + c.intact_bytes;
  d.batch_end = pos + kBatchHeaderBytes + h.body_bytes;
  return d;
}

// Reads the batches of one segment from just after its header, delivering each intact
// one, up to the end of the log in it or the first damage.
Result<SegmentRead> read_batches(FileWindow& w, uint64_t seq, uint64_t after_seq,
                                 const ReplayFn* on_record, ReplayStats& stats) {
  SegmentRead out;
  uint64_t pos = kSegmentHeaderBytes;
  // Each pass moves pos past one whole batch, or returns.
  for (;;) {
    out.end = pos;
    out.next_seq = seq;
    auto b = boundary_at(w, pos, seq);
    if (!b) return std::unexpected(b.error());
    if (b->kind == Boundary::Kind::kEnd) return out;
    if (b->kind == Boundary::Kind::kDamage) {
      out.damage = std::move(b->damage);
      return out;
    }
    const BatchHeader& h = b->header;
    auto body = w.get(pos + kBatchHeaderBytes, h.body_bytes);
    if (!body) return std::unexpected(body.error());
    BodyCheck c = check_body(*body, h);
    if (!c.problem.empty()) {
      out.damage = body_damage(pos, seq, h, std::move(c));
      return out;
    }
    if (auto st = deliver(*body, h, after_seq, on_record, stats); !st) {
      return std::unexpected(st.error());
    }
    seq += h.count;
    pos += kBatchHeaderBytes + h.body_bytes;
  }
}

// Rules (b), (c) and (d) for damage in a segment: why it is not the torn last write, or
// "" when it may be (rule (a) is the caller's: it needs the later segments).
Result<std::string> not_torn_because(FileWindow& w, const Damage& d, uint64_t sealed_seq) {
  if (d.never_torn) return std::string("a whole batch header out of place");
  if (d.seq <= sealed_seq) return "sealed through " + std::to_string(sealed_seq);
  // (c), from E when the header at D is intact: the bytes before it are that batch's own
  // payload, which a client could have filled with something that looks like a batch.
  uint64_t from = d.header_intact ? d.batch_end : d.at + 1;
  auto later = find_magic(w, from, [&](uint64_t at) { return later_batch_at(w, at, d.seq); });
  if (!later) return std::unexpected(later.error());
  if (*later) return "an intact later batch begins at offset " + std::to_string(**later);
  if (d.dirty_end > d.batch_end) {  // (d)
    return "nonzero byte at offset " + std::to_string(d.dirty_end - 1) +
           ", past where that batch could end (" + std::to_string(d.batch_end) + ")";
  }
  return std::string();
}

// --- the directory -------------------------------------------------------------------------

Status read_seal(const std::string& dir, WalScan& scan) {
  std::string path = dir + "/" + kSealFileName;
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return {};
    return fail_errno(errno, "stat " + path);
  }
  // Empty: created by a first open that died before writing it (no segment exists yet).
  if (st.st_size == 0) return {};
  Corruption bad{.kind = Corruption::Kind::kSeal};
  if (static_cast<uint64_t>(st.st_size) != kSealBytes) {
    bad.message = at_offset(path, 0) + ": " + std::to_string(st.st_size) + " bytes, a seal has " +
                  std::to_string(kSealBytes);
    scan.seal_problem = std::move(bad);
    return {};
  }
  auto bytes = read_file_bounded(path, kSealBytes);
  if (!bytes) return std::unexpected(bytes.error());
  std::string_view b = *bytes;
  if (b.substr(0, 8) != std::string_view(kSealMagic, 8) ||
      get_u32(b, 16) != crc_of(b.substr(0, 16)) || get_u32(b, 20) != 0) {
    bad.message = at_offset(path, 0) + ": damaged seal";
    scan.seal_problem = std::move(bad);
    return {};
  }
  scan.seal_present = true;
  scan.stats.sealed_seq = get_u64(b, 8);
  return {};
}

// Segment i of the log is wholly covered by the snapshot when the next one starts at or
// before after_seq + 1: it need not be read (and may already be gone).
size_t first_needed(const std::vector<SegmentFile>& segments, uint64_t after_seq) {
  size_t f = 0;
  while (f + 1 < segments.size() && segments[f + 1].first_seq <= after_seq + 1) ++f;
  return f;
}

// The walk over the segments that are read, in order.
class SegmentWalk {
 public:
  SegmentWalk(WalScan& scan, uint64_t after_seq, const ReplayFn* on_record)
      : scan_(scan), after_seq_(after_seq), on_record_(on_record) {}

  Status run();

 private:
  Status visit(size_t i);
  Status visit_tail(size_t i, FileWindow& w);
  Status visit_log(size_t i, FileWindow& w);
  void finish();
  void corrupt(Corruption::Kind kind, size_t i, std::string message) {
    scan_.log_problem =
        Corruption{.kind = kind, .message = std::move(message), .segment = i, .seq = expected_};
  }
  void corrupt_batch(size_t i, const Damage& d, const std::string& why);
  const SegmentFile& seg(size_t i) const { return scan_.dir.segments[i]; }

  WalScan& scan_;
  uint64_t after_seq_;
  const ReplayFn* on_record_;
  uint64_t expected_ = 0;  // the sequence number the log continues with
  // Past a possible torn tail or a roll leftover, only batchless segments may follow.
  std::optional<std::pair<size_t, Damage>> torn_;
  std::optional<std::pair<size_t, std::string>> leftover_;  // the first, and its problem
  std::optional<size_t> last_log_;                          // last segment of the log read
};

Status SegmentWalk::run() {
  const auto& segments = scan_.dir.segments;
  size_t f = first_needed(segments, after_seq_);
  expected_ = segments[f].first_seq;
  if (expected_ > after_seq_ + 1) {
    std::string needed = after_seq_ == 0
                             ? "records are numbered from 1"
                             : "the snapshot covers only through " + std::to_string(after_seq_);
    corrupt(Corruption::Kind::kSegment, f,
            at_offset(seg(f).path, 0) + ": the log starts at sequence " +
                std::to_string(expected_) + ", but " + needed);
    return {};
  }
  for (size_t i = f; i < segments.size() && !scan_.log_problem; ++i) {
    if (auto st = visit(i); !st) return st;
  }
  if (!scan_.log_problem) finish();
  return {};
}

Status SegmentWalk::visit(size_t i) {
  auto w = FileWindow::open(seg(i).path);
  if (!w) return std::unexpected(w.error());
  if (torn_ || leftover_) return visit_tail(i, *w);
  auto hv = w->get(0, kSegmentHeaderBytes);
  if (!hv) return std::unexpected(hv.error());
  SegmentHeader h = parse_segment_header(*hv);
  std::string where = at_offset(seg(i).path, 0) + ": ";
  if (h.state == HeaderState::kOtherVersion) {
    corrupt(Corruption::Kind::kSegment, i,
            where + "segment format version " + std::to_string(h.version) + ", expected " +
                std::to_string(kWalFormatVersion));
    return {};
  }
  if (h.state == HeaderState::kValid && h.first_seq != seg(i).first_seq) {
    corrupt(Corruption::Kind::kSegment, i,
            where + "header names sequence " + std::to_string(h.first_seq));
    return {};
  }
  std::string problem;
  bool may_be_leftover = false;  // a roll for a record not written yet names the file so
  if (h.state == HeaderState::kTorn) {
    problem = where + "damaged segment header";
    may_be_leftover = seg(i).first_seq >= expected_;
  } else if (h.first_seq != expected_) {
    problem = where + "starts at sequence " + std::to_string(h.first_seq) + ", expected " +
              std::to_string(expected_);
    may_be_leftover = h.first_seq > expected_;
  }
  if (problem.empty()) return visit_log(i, *w);
  auto nz = w->first_nonzero(kSegmentHeaderBytes);
  if (!nz) return std::unexpected(nz.error());
  if (*nz || !may_be_leftover) {
    corrupt(Corruption::Kind::kSegment, i, problem);
    return {};
  }
  leftover_.emplace(i, problem);
  scan_.leftovers.push_back(i);
  return {};
}

// After a torn tail or a leftover: a roll that never got a batch leaves only a header (or
// part of one) and zeros; anything more means the damage before was not the end.
Status SegmentWalk::visit_tail(size_t i, FileWindow& w) {
  auto nz = w.first_nonzero(kSegmentHeaderBytes);
  if (!nz) return std::unexpected(nz.error());
  if (!*nz) {
    scan_.leftovers.push_back(i);
    return {};
  }
  std::string why = "segment " + seg(i).name + " after it holds records";
  if (torn_) {
    corrupt_batch(torn_->first, torn_->second, why);
  } else {
    corrupt(Corruption::Kind::kSegment, leftover_->first, leftover_->second + " (" + why + ")");
  }
  return {};
}

Status SegmentWalk::visit_log(size_t i, FileWindow& w) {
  auto r = read_batches(w, expected_, after_seq_, on_record_, scan_.stats);
  if (!r) return std::unexpected(r.error());
  ++scan_.stats.segments;
  last_log_ = i;
  expected_ = r->next_seq;
  scan_.append_offset = r->end;
  if (!r->damage) return {};
  Damage& d = *r->damage;
  auto last = w.last_nonzero(d.at);
  if (!last) return std::unexpected(last.error());
  d.dirty_end = *last ? **last + 1 : d.at;
  auto why = not_torn_because(w, d, scan_.stats.sealed_seq);
  if (!why) return std::unexpected(why.error());
  if (!why->empty() || d.never_torn) {
    corrupt_batch(i, d, *why);
    return {};
  }
  torn_.emplace(i, std::move(d));
  return {};
}

void SegmentWalk::corrupt_batch(size_t i, const Damage& d, const std::string& why) {
  std::string message = at_offset(seg(i).path, d.report_at) + ": " + d.what;
  if (!d.never_torn && !why.empty()) message += " (" + why + ")";
  scan_.log_problem = Corruption{.kind = Corruption::Kind::kBatch,
                                 .message = std::move(message),
                                 .segment = i,
                                 .at = d.at,
                                 .seq = d.seq,
                                 .header_intact = d.header_intact,
                                 .records_intact = d.records_intact,
                                 .records_end = d.records_end,
                                 .dirty_end = d.dirty_end};
}

void SegmentWalk::finish() {
  ReplayStats& stats = scan_.stats;
  if (torn_) {
    const auto& [i, d] = *torn_;
    scan_.torn = TornTail{i, d.at, d.dirty_end};
    stats.torn_tail_bytes = d.dirty_end - d.at;
    stats.torn_tail_at = at_offset(seg(i).path, d.at);
  }
  stats.segments_dropped = scan_.leftovers.size();
  scan_.next_seq = expected_;
  scan_.append_segment = last_log_;
  uint64_t last = expected_ - 1;
  std::string ends = "the log ends at sequence " + std::to_string(last);
  if (last < stats.sealed_seq && leftover_) {
    // What looked like a roll leftover is where the acknowledged records were.
    corrupt(Corruption::Kind::kSegment, leftover_->first,
            leftover_->second + " (" + ends + " before it, but the seal names " +
                std::to_string(stats.sealed_seq) + ")");
    return;
  }
  std::string where = last_log_ ? at_offset(seg(*last_log_).path, scan_.append_offset)
                                : at_offset(seg(scan_.leftovers.front()).path, 0);
  ends = where + ": " + ends;
  if (last < stats.sealed_seq) {
    corrupt(Corruption::Kind::kLogEnd, last_log_.value_or(0),
            ends + ", but the seal names " + std::to_string(stats.sealed_seq) +
                " (acknowledged records are missing)");
  } else if (last < after_seq_) {
    corrupt(Corruption::Kind::kLogEnd, last_log_.value_or(0),
            ends + ", before the snapshot's " + std::to_string(after_seq_));
  }
}

}  // namespace

// --- encoders ------------------------------------------------------------------------------

std::string parent_dir(const std::string& path) {
  std::filesystem::path p = std::filesystem::path(path).lexically_normal();
  if (!p.has_filename()) p = p.parent_path();  // "a/wal/" names "a/wal"
  std::filesystem::path parent = p.parent_path();
  return parent.empty() ? "." : parent.string();
}

std::string segment_name(uint64_t first_seq) {
  char name[32];  // 20 digits and ".wal": cannot fail or be cut
  (void)std::snprintf(name, sizeof name, "%020llu.wal", static_cast<unsigned long long>(first_seq));
  return name;
}

std::string encode_segment_header(uint64_t first_seq) {
  std::string h(kSegmentHeaderBytes, '\0');
  std::memcpy(h.data(), kSegmentMagic, sizeof kSegmentMagic);
  put_u32(h.data() + 8, kWalFormatVersion);
  put_u64(h.data() + 16, first_seq);
  put_u32(h.data() + 28, crc_of(std::string_view(h).substr(0, 28)));
  return h;
}

std::array<char, kBatchHeaderBytes> encode_batch_header(uint32_t count, uint64_t first_seq,
                                                        uint32_t body_bytes) {
  std::array<char, kBatchHeaderBytes> h{};
  std::memcpy(h.data(), kBatchMagic, sizeof kBatchMagic);
  put_u32(h.data() + 4, count);
  put_u64(h.data() + 8, first_seq);
  put_u32(h.data() + 16, body_bytes);
  put_u32(h.data() + 20, crc_of(std::string_view(h.data(), 20)));
  return h;
}

void append_record(std::string& out, std::string_view payload) {
  char head[kRecordHeaderBytes];
  put_u32(head, static_cast<uint32_t>(payload.size()));
  put_u32(head + 4, crc_of(std::string_view(head, 4), payload));
  out.append(head, sizeof head);
  out.append(payload);
}

std::array<char, kSealBytes> encode_seal(uint64_t sealed_seq) {
  std::array<char, kSealBytes> s{};
  std::memcpy(s.data(), kSealMagic, sizeof kSealMagic);
  put_u64(s.data() + 8, sealed_seq);
  put_u32(s.data() + 16, crc_of(std::string_view(s.data(), 16)));
  return s;
}

// --- FileWindow ----------------------------------------------------------------------------

Result<FileWindow> FileWindow::open(const std::string& path) {
  auto fd = open_fd(path, O_RDONLY);
  if (!fd) return std::unexpected(fd.error());
  struct stat st {};
  if (::fstat(fd->get(), &st) != 0) return fail_errno(errno, "stat " + path);
  FileWindow w;
  w.fd_ = std::move(*fd);
  w.path_ = path;
  w.size_ = static_cast<uint64_t>(st.st_size);
  return w;
}

Result<std::string_view> FileWindow::view(uint64_t offset, uint64_t len) {
  if (offset >= size_) return std::string_view();
  uint64_t want = std::min(len, size_ - offset);
  CARDNODE_CHECK(want <= kWindowBytesMax);
  if (offset < buf_offset_ || offset + want > buf_offset_ + buf_.size()) {
    uint64_t n = std::min<uint64_t>(std::max<uint64_t>(want, kReadChunkBytes), size_ - offset);
    buf_.resize(static_cast<size_t>(n));
    if (auto st = pread_all(fd_.get(), buf_.data(), buf_.size(), offset, path_); !st) {
      buf_.clear();
      return std::unexpected(st.error());
    }
    buf_offset_ = offset;
  }
  return std::string_view(buf_).substr(static_cast<size_t>(offset - buf_offset_));
}

Result<std::string_view> FileWindow::get(uint64_t offset, uint64_t len) {
  auto v = view(offset, len);
  if (!v) return v;
  return v->substr(0, static_cast<size_t>(std::min<uint64_t>(len, v->size())));
}

Result<std::optional<uint64_t>> FileWindow::first_nonzero(uint64_t from) {
  // Each pass moves p past one nonempty buffer, or returns.
  for (uint64_t p = from; p < size_;) {
    auto v = view(p, kReadChunkBytes);
    if (!v) return std::unexpected(v.error());
    if (auto at = first_nonzero_in(*v)) return p + *at;
    p += v->size();
  }
  return std::nullopt;
}

Result<std::optional<uint64_t>> FileWindow::last_nonzero(uint64_t from) {
  std::optional<uint64_t> last;
  // Each pass moves p past one nonempty buffer, or returns.
  for (uint64_t p = from; p < size_;) {
    auto v = view(p, kReadChunkBytes);
    if (!v) return std::unexpected(v.error());
    if (auto at = last_nonzero_in(*v)) last = p + *at;
    p += v->size();
  }
  return last;
}

// --- directory -----------------------------------------------------------------------------

Result<WalDir> list_wal_dir(const std::string& dir) {
  auto names = list_dir(dir, kDirEntriesMax);
  if (!names) return std::unexpected(names.error());
  WalDir out;
  for (const std::string& name : *names) {
    if (!name.ends_with(kSegmentSuffix)) continue;
    if (auto seq = parse_segment_name(name)) {
      out.segments.push_back(SegmentFile{*seq, name, dir + "/" + name});
    } else {
      out.foreign.push_back(dir + "/" + name);
    }
  }
  std::sort(out.segments.begin(), out.segments.end(),
            [](const SegmentFile& a, const SegmentFile& b) { return a.first_seq < b.first_seq; });
  std::sort(out.foreign.begin(), out.foreign.end());
  return out;
}

Result<WalScan> scan_wal(const std::string& dir, uint64_t after_seq, const ReplayFn* on_record) {
  WalScan scan;
  auto listed = list_wal_dir(dir);
  if (!listed) return std::unexpected(listed.error());
  scan.dir = std::move(*listed);
  scan.next_seq = after_seq + 1;
  if (!scan.dir.foreign.empty()) {
    scan.log_problem =
        Corruption{.kind = Corruption::Kind::kForeignName,
                   .message = at_offset(scan.dir.foreign.front(), 0) + ": not a segment name (" +
                              std::to_string(kSegmentDigits) + " digits, then .wal)"};
    return scan;
  }
  if (auto st = read_seal(dir, scan); !st) return std::unexpected(st.error());
  if (!scan.seal_present && !scan.seal_problem && !scan.dir.segments.empty()) {
    scan.seal_problem = Corruption{
        .kind = Corruption::Kind::kSeal,
        .message = at_offset(dir + "/" + kSealFileName, 0) + ": missing, but segments exist"};
  }
  if (scan.dir.segments.empty()) {
    if (scan.stats.sealed_seq > after_seq) {
      scan.log_problem = Corruption{
          .kind = Corruption::Kind::kLogEnd,
          .message = at_offset(dir + "/" + kSealFileName, 0) + ": names sequence " +
                     std::to_string(scan.stats.sealed_seq) + ", but the log has no segments"};
    }
    return scan;
  }
  SegmentWalk walk(scan, after_seq, on_record);
  if (auto st = walk.run(); !st) return std::unexpected(st.error());
  return scan;
}

Result<uint64_t> count_intact_records(const std::string& path, uint64_t from) {
  auto w = FileWindow::open(path);
  if (!w) return std::unexpected(w.error());
  uint64_t records = 0;
  uint64_t skip_to = from;  // past the last batch counted: a batch is not searched inside
  auto found = find_magic(*w, from, [&](uint64_t at) -> Result<bool> {
    if (at < skip_to) return false;
    auto h = intact_batch_at(*w, at);
    if (!h) return std::unexpected(h.error());
    if (*h) {
      records += (*h)->count;
      skip_to = at + kBatchHeaderBytes + (*h)->body_bytes;
    }
    return false;  // keep searching to the end
  });
  if (!found) return std::unexpected(found.error());
  return records;
}

}  // namespace cardnode::storage::wal_detail
