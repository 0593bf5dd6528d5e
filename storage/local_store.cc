#include "storage/local_store.h"

#include "storage/snapshot.h"

namespace cardnode::storage {

// Wraps a SnapshotWriter; on success tells the store, which compacts.
class LocalStore::Sink final : public SnapshotSink {
 public:
  Sink(LocalStore& store, std::unique_ptr<SnapshotWriter> writer, uint64_t covers_seq,
       uint64_t wal_bytes_at_cut)
      : store_(store),
        writer_(std::move(writer)),
        covers_seq_(covers_seq),
        wal_bytes_at_cut_(wal_bytes_at_cut) {}
  ~Sink() override {
    writer_.reset();  // abandons an unfinished snapshot
    store_.snapshot_in_progress_ = false;
  }

  Status add(std::string_view chunk) override { return writer_->add(chunk); }
  bool busy() const override { return writer_->busy(); }
  void finish(std::function<void(Status)> done) override {
    writer_->finish([this, done = std::move(done)](Status st) {
      if (st) {
        store_.installed(covers_seq_, writer_->bytes_written(), wal_bytes_at_cut_);
      } else {
        ++store_.stats_.snapshot_failures;
      }
      done(st);
    });
  }

 private:
  LocalStore& store_;
  std::unique_ptr<SnapshotWriter> writer_;
  uint64_t covers_seq_;
  uint64_t wal_bytes_at_cut_;
};

LocalStore::LocalStore(IoEngine& engine, LocalStoreOptions options)
    : engine_(engine),
      options_(std::move(options)),
      fs_(options_.fs != nullptr ? *options_.fs : Fs::real()) {
  options_.wal.dir = wal_dir();
  options_.wal.fs = &fs_;
}

LocalStore::~LocalStore() = default;

Result<RecoveryReport> LocalStore::recover(const ChunkFn& on_snapshot_chunk,
                                           const ReplayFn& on_record) {
  CARDNODE_CHECK(wal_ == nullptr);
  RecoveryReport report;
  if (auto st = make_dirs(snapshot_dir()); !st) return std::unexpected(st.error());
  auto snapshots = list_snapshots(snapshot_dir());
  if (!snapshots) return std::unexpected(snapshots.error());
  for (const SnapshotInfo& info : *snapshots) {
    bool consumer_failed = false;
    auto read = read_snapshot(info.path, [&](std::string_view chunk) -> Status {
      auto st = on_snapshot_chunk(chunk);
      consumer_failed = !st.has_value();
      return st;
    });
    if (read) {
      report.snapshot_seq = read->covers_seq;
      report.snapshot_path = read->path;
      report.snapshot_bytes = read->file_bytes;
      break;
    }
    // The file is checked whole before any chunk is delivered, so a damaged one handed
    // nothing over and an older one can take its place. A chunk the consumer refused
    // came from a file that passed its checks: not damage we can step around.
    if (consumer_failed || read.error().code != Errc::kCorruption) {
      return std::unexpected(read.error());
    }
    report.snapshots_skipped.push_back(read.error().describe());
  }
  snapshot_seq_ = report.snapshot_seq;
  snapshot_bytes_ = report.snapshot_bytes;
  auto counting = [&](uint64_t seq, std::string_view payload) -> Status {
    replayed_bytes_ += payload.size() + kRecordHeaderBytes;
    return on_record(seq, payload);
  };
  auto wal = Wal::open(engine_, options_.wal, snapshot_seq_, counting, &report.wal);
  if (!wal) return std::unexpected(wal.error());
  wal_ = std::move(*wal);
  return report;
}

Status LocalStore::reserve(size_t payload_bytes) {
  return wal_->reserve(payload_bytes);
}

Status LocalStore::append(std::string_view payload, DurableCallback on_durable) {
  return wal_->append(payload, std::move(on_durable));
}

uint64_t LocalStore::next_sequence() const {
  return wal_->next_sequence();
}

uint64_t LocalStore::durable_sequence() const {
  return wal_->durable_sequence();
}

uint64_t LocalStore::pending_records() const {
  return wal_->pending_records();
}

bool LocalStore::failed() const {
  return wal_->failed();
}

uint64_t LocalStore::bytes_since_snapshot() const {
  return replayed_bytes_ + wal_->stats().bytes_appended - wal_bytes_at_cut_;
}

Result<std::unique_ptr<SnapshotSink>> LocalStore::begin_snapshot(uint64_t covers_seq) {
  CARDNODE_CHECK(!snapshot_in_progress_);
  if (covers_seq <= snapshot_seq_ || covers_seq >= wal_->next_sequence()) {
    return fail(Errc::kInvalidArgument, "snapshot at " + std::to_string(covers_seq) +
                                            " does not move past " + std::to_string(snapshot_seq_));
  }
  auto writer = SnapshotWriter::begin(engine_, fs_, snapshot_dir(), covers_seq,
                                      options_.snapshot_buffer_bytes);
  if (!writer) {
    ++stats_.snapshot_failures;
    return std::unexpected(writer.error());
  }
  snapshot_in_progress_ = true;
  // Records after the cut go into a segment of their own: the segments this snapshot covers
  // are then never read again, so damage in them cannot stop a start.
  if (covers_seq + 1 == wal_->next_sequence()) wal_->start_segment_at_next_record();
  return std::unique_ptr<SnapshotSink>(
      new Sink(*this, std::move(*writer), covers_seq, wal_->stats().bytes_appended));
}

// Called once the new snapshot is durable and renamed into place.
void LocalStore::installed(uint64_t covers_seq, uint64_t file_bytes, uint64_t wal_bytes_at_cut) {
  const uint64_t previous = snapshot_seq_;
  snapshot_seq_ = covers_seq;
  snapshot_bytes_ = file_bytes;
  // Records appended before the cut are in the snapshot; those after it count anew.
  replayed_bytes_ = 0;
  wal_bytes_at_cut_ = wal_bytes_at_cut;
  ++stats_.snapshots_written;
  if (previous == 0) return;  // nothing older to drop yet: the WAL is the fallback
  auto removed = wal_->remove_segments_through(previous);
  auto dropped = remove_snapshots_before(fs_, snapshot_dir(), previous);
  if (!removed || !dropped) ++stats_.compaction_failures;  // retried at the next snapshot
}

void LocalStore::drain() {
  if (wal_) wal_->drain();
}

}  // namespace cardnode::storage
