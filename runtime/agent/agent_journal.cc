#include "runtime/agent/agent_journal.h"

namespace cardnode::runtime {
namespace {

// A snapshot once the WAL since the last one passes this (and the last one's size).
constexpr uint64_t kCompactBytesMin = 64u << 10;

}  // namespace

AgentJournal::AgentJournal(std::unique_ptr<storage::LocalStore> store) : store_(std::move(store)) {}

AgentJournal::~AgentJournal() {
  sink_.reset();
  retired_.reset();
  if (store_) store_->drain();
}

Result<std::unique_ptr<AgentJournal>> AgentJournal::open(storage::IoEngine& engine,
                                                         const std::string& dir) {
  if (auto st = storage::make_dirs(dir, 0700); !st) return std::unexpected(st.error());
  auto store =
      std::make_unique<storage::LocalStore>(engine, storage::LocalStoreOptions{.dir = dir});
  std::unique_ptr<AgentJournal> j(new AgentJournal(std::move(store)));
  auto report = j->store_->recover(
      [&](std::string_view chunk) -> Status {
        pb::JournalImage image;
        if (!image.ParseFromArray(chunk.data(), static_cast<int>(chunk.size()))) {
          return fail(Errc::kCorruption, "agent journal: a snapshot chunk does not parse");
        }
        for (const auto& a : image.running()) j->entries_[key_of(a)] = Entry{a, std::nullopt};
        for (const auto& o : image.ended()) j->entries_[key_of(o.task())] = Entry{o.task(), o};
        return {};
      },
      [&](uint64_t, std::string_view payload) -> Status {
        pb::JournalRecord rec;
        if (!rec.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) {
          return fail(Errc::kCorruption, "agent journal: a record does not parse");
        }
        j->apply(rec);
        return {};
      });
  if (!report) return std::unexpected(report.error());
  return j;
}

void AgentJournal::apply(const pb::JournalRecord& rec) {
  switch (rec.event_case()) {
    case pb::JournalRecord::kStarted:
      entries_[key_of(rec.started())] = Entry{rec.started(), std::nullopt};
      return;
    case pb::JournalRecord::kEnded:
      entries_[key_of(rec.ended().task())] = Entry{rec.ended().task(), rec.ended()};
      return;
    case pb::JournalRecord::kForgotten: entries_.erase(key_of(rec.forgotten())); return;
    case pb::JournalRecord::EVENT_NOT_SET: return;
  }
}

Status AgentJournal::append(const pb::JournalRecord& rec, std::function<void()> durable) {
  std::string bytes = rec.SerializeAsString();
  if (auto st = store_->reserve(bytes.size()); !st) return st;
  apply(rec);
  auto st = store_->append(bytes, [this, durable = std::move(durable)](Status s) {
    if (!s) {
      if (on_failure_) on_failure_(s.error());
      return;
    }
    if (durable) durable();
  });
  CARDNODE_CHECK(st.has_value());  // reserve() made room
  return {};
}

Status AgentJournal::started(const pb::TaskAttempt& attempt, std::function<void()> durable) {
  pb::JournalRecord rec;
  *rec.mutable_started() = attempt;
  return append(rec, std::move(durable));
}

Status AgentJournal::ended(const pb::TaskOutcome& outcome, std::function<void()> durable) {
  pb::JournalRecord rec;
  *rec.mutable_ended() = outcome;
  return append(rec, std::move(durable));
}

Status AgentJournal::forget(const pb::TaskAttempt& attempt) {
  if (!knows(attempt)) return {};
  pb::JournalRecord rec;
  *rec.mutable_forgotten() = attempt;
  return append(rec, nullptr);
}

std::vector<pb::TaskAttempt> AgentJournal::running() const {
  std::vector<pb::TaskAttempt> out;
  for (const auto& [k, e] : entries_) {
    if (!e.outcome) out.push_back(e.attempt);
  }
  return out;
}

std::vector<pb::TaskOutcome> AgentJournal::ended() const {
  std::vector<pb::TaskOutcome> out;
  for (const auto& [k, e] : entries_) {
    if (e.outcome) out.push_back(*e.outcome);
  }
  return out;
}

// The live entries are few (what runs, what waits for an acknowledgement): one chunk, made
// at once; the write itself goes through the engine.
void AgentJournal::turn() {
  if (snapshot_done_) {
    retired_ = std::move(sink_);
    snapshot_done_ = false;
  }
  if (sink_ != nullptr || store_->failed()) return;
  retired_.reset();
  const uint64_t since = store_->bytes_since_snapshot();
  if (since < std::max(kCompactBytesMin, store_->snapshot_bytes())) return;
  const uint64_t covers = store_->next_sequence() - 1;
  if (covers == 0 || store_->durable_sequence() < covers) return;  // the cut must be durable
  auto sink = store_->begin_snapshot(covers);
  if (!sink) return;
  pb::JournalImage image;
  image.set_format(1);
  for (const auto& [k, e] : entries_) {
    if (e.outcome) {
      *image.add_ended() = *e.outcome;
    } else {
      *image.add_running() = e.attempt;
    }
  }
  sink_ = std::move(*sink);
  if (auto st = sink_->add(image.SerializeAsString()); !st) {
    retired_ = std::move(sink_);
    return;
  }
  sink_->finish([this](Status) { snapshot_done_ = true; });  // freed on the next turn
}

void AgentJournal::drain() {
  store_->drain();
}

}  // namespace cardnode::runtime
