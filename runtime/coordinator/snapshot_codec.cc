#include "runtime/coordinator/snapshot_codec.h"

#include <algorithm>
#include <limits>

namespace cardnode::runtime {
namespace {

void put_u32le(char* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<char>(v >> (8 * i));
}

uint32_t get_u32le(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(static_cast<uint8_t>(p[i])) << (8 * i);
  return v;
}

// The 12-byte task image of proto/cardnode.proto's TaskSlice.
void encode_task(const sched::Task& t, char* p) {
  p[0] = static_cast<char>(t.state);
  p[1] = static_cast<char>(t.attempts);
  p[2] = static_cast<char>(t.lost | t.lost_free << 4);
  p[3] = static_cast<char>(t.signal);
  put_u32le(p + 4, static_cast<uint32_t>(t.exit_code));
  put_u32le(p + 8, t.node);
}

sched::Task decode_task(const char* p) {
  sched::Task t;
  t.state = static_cast<sched::TaskState>(static_cast<uint8_t>(p[0]));
  t.attempts = static_cast<uint8_t>(p[1]);
  t.lost = static_cast<uint8_t>(p[2]) & 0x0f;
  t.lost_free = static_cast<uint8_t>(p[2]) >> 4;
  t.signal = static_cast<int8_t>(p[3]);
  t.exit_code = static_cast<int32_t>(get_u32le(p + 4));
  t.node = get_u32le(p + 8);
  return t;
}

// The 16-byte earlier-attempt image of proto/cardnode.proto's TaskSlice.
constexpr size_t kEarlierImageBytes = 16;
constexpr size_t kUsageImageBytes = 12;    // TaskSlice.usage, per task
constexpr size_t kWallImageBytes = 4;      // TaskSlice.wall, per task
constexpr size_t kStartedImageBytes = 12;  // TaskSlice.started, per running task

void put_u64le(char* p, uint64_t v) {
  put_u32le(p, static_cast<uint32_t>(v));
  put_u32le(p + 4, static_cast<uint32_t>(v >> 32));
}

uint64_t get_u64le(const char* p) {
  return uint64_t{get_u32le(p)} | uint64_t{get_u32le(p + 4)} << 32;
}

void encode_earlier(uint32_t index, const sched::EarlierAttempt& a, char* p) {
  put_u32le(p, index);
  p[4] = static_cast<char>(a.attempt);
  p[5] = static_cast<char>(a.state);
  p[6] = static_cast<char>(a.signal);
  p[7] = 0;
  put_u32le(p + 8, static_cast<uint32_t>(a.exit_code));
  put_u32le(p + 12, a.node);
}

sched::EarlierAttempt decode_earlier(const char* p, uint32_t* index) {
  *index = get_u32le(p);
  sched::EarlierAttempt a;
  a.attempt = static_cast<uint8_t>(p[4]);
  a.state = static_cast<sched::TaskState>(static_cast<uint8_t>(p[5]));
  a.signal = static_cast<int8_t>(p[6]);
  a.exit_code = static_cast<int32_t>(get_u32le(p + 8));
  a.node = get_u32le(p + 12);
  return a;
}

Status corrupt(const std::string& what) {
  return fail(Errc::kCorruption, "snapshot: " + what);
}

}  // namespace

// ------------------------------------------------------------------------ builder

SnapshotBuilder::SnapshotBuilder(State& state, uint32_t tasks_per_slice)
    : SnapshotBuilder(static_cast<const State&>(state), tasks_per_slice, /*observe=*/false) {
  observed_ = &state;
  observed_->set_snapshot_observer(this);
}

SnapshotBuilder::SnapshotBuilder(const State& state, uint32_t tasks_per_slice, bool observe)
    : state_(state),
      tasks_per_slice_(std::clamp<uint32_t>(tasks_per_slice, 1, kTasksPerSliceMax)),
      covers_seq_(state.applied_seq()) {
  const sched::Cluster& c = state.cluster();
  ids_.reserve(c.jobs().size());
  for (const auto& [id, job] : c.jobs()) ids_.push_back(id);

  pb::SnapshotChunk meta_chunk;
  pb::SnapshotMeta* meta = meta_chunk.mutable_meta();
  meta->set_format(kSnapshotFormat);
  meta->set_covers_seq(covers_seq_);
  meta->set_last_job_id(c.last_job_id());
  meta->set_jobs(ids_.size());
  meta->set_nodes(c.nodes().size());
  meta->set_jobs_submitted(state.jobs_submitted());
  meta->set_jobs_pruned(state.jobs_pruned());
  put(meta_chunk);
  // Nodes are few (sched::Limits::nodes_max live ones): written at the cut, all at once.
  for (const sched::Node& n : c.nodes()) {
    pb::SnapshotChunk chunk;
    pb::NodeImage* image = chunk.mutable_node();
    pb::NodeUpdated* node = image->mutable_node();
    node->set_node_id(n.id);
    node->set_name(n.spec.name);
    node->set_identity(state.node_identity(n.id));
    node->set_cpu_millis(n.spec.capacity.cpu_millis);
    node->set_mem_bytes(n.spec.capacity.mem_bytes);
    node->set_tasks_max(n.spec.tasks_max);
    for (const auto& [k, v] : n.spec.labels) (*node->mutable_labels())[k] = v;
    image->set_removed(n.removed);
    if (n.draining) {
      image->mutable_drain()->set_node_id(n.id);
      image->mutable_drain()->set_draining(true);
      image->mutable_drain()->set_deadline_ms(n.drain_deadline_ms);
    }
    put(chunk);
  }
  CARDNODE_CHECK(!observe);  // observing needs a mutable State: the other constructor
}

SnapshotBuilder::~SnapshotBuilder() {
  if (observed_ != nullptr) observed_->set_snapshot_observer(nullptr);
}

void SnapshotBuilder::put(const pb::SnapshotChunk& chunk) {
  std::string bytes = chunk.SerializeAsString();
  queued_bytes_ += bytes.size();
  chunks_.push_back(std::move(bytes));
}

std::string SnapshotBuilder::take_chunk() {
  CARDNODE_CHECK(!chunks_.empty());
  std::string out = std::move(chunks_.front());
  chunks_.pop_front();
  queued_bytes_ -= out.size();
  return out;
}

void SnapshotBuilder::write_image(const sched::Job& job) {
  pb::SnapshotChunk chunk;
  pb::JobImage* image = chunk.mutable_job();
  image->set_job_id(job.id);
  const pb::JobSpec* spec = state_.spec(job.id);
  CARDNODE_CHECK(spec != nullptr);
  *image->mutable_spec() = *spec;
  image->set_state(to_pb(job.state));
  image->set_submitted_ms(job.submitted_ms);
  image->set_finished_ms(job.finished_ms);
  image->set_cancelling(state_.cluster().cancelling(job.id));
  for (size_t i = job.requeued_head; i < job.requeued.size(); ++i) {
    image->add_requeued(job.requeued[i]);
  }
  for (uint32_t i : job.standby) image->add_standby(i);
  put(chunk);
}

// Slice `slice` of a job: tasks [slice * tasks_per_slice_, ...) as they are now.
void SnapshotBuilder::write_slice(const sched::Job& job, Progress& p, uint32_t slice) {
  CARDNODE_CHECK(!p.slices[slice]);
  const auto count = static_cast<uint32_t>(job.tasks.size());
  const uint32_t at = slice * tasks_per_slice_;
  const uint32_t n = std::min(tasks_per_slice_, count - at);
  pb::SnapshotChunk chunk;
  pb::TaskSlice* out = chunk.mutable_tasks();
  out->set_job_id(job.id);
  out->set_first_index(at);
  std::string* bytes = out->mutable_tasks();
  bytes->resize(static_cast<size_t>(n) * kTaskImageBytes);
  for (uint32_t i = 0; i < n; ++i) {
    encode_task(job.tasks[at + i], bytes->data() + static_cast<size_t>(i) * kTaskImageBytes);
  }
  // Usage goes with a slice whose own tasks have some, never because of other slices': a
  // slice written after the cut (not copied early: untouched since) must read as at the cut,
  // when the job may have had no usage at all.
  const bool any_usage =
      !job.usage.empty() &&
      std::any_of(job.usage.begin() + at, job.usage.begin() + at + n,
                  [](const sched::TaskUsage& u) { return u != sched::TaskUsage{}; });
  if (any_usage) {
    std::string* usage = out->mutable_usage();
    usage->resize(static_cast<size_t>(n) * kUsageImageBytes);
    for (uint32_t i = 0; i < n; ++i) {
      const sched::TaskUsage& u = job.usage[at + i];
      char* q = usage->data() + static_cast<size_t>(i) * kUsageImageBytes;
      put_u32le(q, u.cpu_user_ms);
      put_u32le(q + 4, u.cpu_system_ms);
      put_u32le(q + 8, u.mem_peak_kib);
    }
    std::string* wall = out->mutable_wall();
    wall->resize(static_cast<size_t>(n) * kWallImageBytes);
    for (uint32_t i = 0; i < n; ++i) {
      put_u32le(wall->data() + static_cast<size_t>(i) * kWallImageBytes, job.usage[at + i].wall_ms);
    }
  }
  std::string* started = out->mutable_started();
  for (auto it = job.started_ms.lower_bound(at); it != job.started_ms.end() && it->first < at + n;
       ++it) {
    started->resize(started->size() + kStartedImageBytes);
    char* q = started->data() + started->size() - kStartedImageBytes;
    put_u32le(q, it->first);
    put_u64le(q + 4, it->second);
  }
  std::string* earlier = out->mutable_earlier();
  for (auto it = job.earlier.lower_bound(at); it != job.earlier.end() && it->first < at + n; ++it) {
    for (const sched::EarlierAttempt& a : it->second) {
      earlier->resize(earlier->size() + kEarlierImageBytes);
      encode_earlier(it->first, a, earlier->data() + earlier->size() - kEarlierImageBytes);
    }
  }
  put(chunk);
  p.slices[slice] = true;
  --p.slices_left;
}

SnapshotBuilder::Progress& SnapshotBuilder::progress(const sched::Job& job) {
  auto [it, added] = progress_.try_emplace(job.id);
  if (added) {
    const auto count = static_cast<uint32_t>(job.tasks.size());
    const uint32_t slices = (count + tasks_per_slice_ - 1) / tasks_per_slice_;
    it->second.slices.assign(slices, false);
    it->second.slices_left = slices;
  }
  return it->second;
}

bool SnapshotBuilder::step(uint64_t tasks_budget) {
  const sched::Cluster& c = state_.cluster();
  while (cursor_ < ids_.size() && tasks_budget > 0) {  // each pass spends budget or moves on
    const sched::Job* job = c.job(ids_[cursor_]);
    if (job == nullptr) {  // dropped after the cut: written whole by before_change first
      CARDNODE_CHECK(progress_.contains(ids_[cursor_]));
      ++cursor_;
      continue;
    }
    Progress& p = progress(*job);
    if (!p.image) {
      write_image(*job);
      p.image = true;
      --tasks_budget;
    }
    for (uint32_t s = 0; s < p.slices.size() && p.slices_left > 0 && tasks_budget > 0; ++s) {
      if (p.slices[s]) continue;
      write_slice(*job, p, s);
      tasks_budget -= std::min<uint64_t>(tasks_budget, tasks_per_slice_);
    }
    if (p.slices_left > 0) break;  // the budget ran out inside this job
    progress_.erase(job->id);
    ++cursor_;
  }
  return encoded_all();
}

void SnapshotBuilder::before_change(const sched::Job& job, uint32_t first_task,
                                    uint32_t last_task) {
  if (!std::binary_search(ids_.begin(), ids_.end(), job.id)) return;  // submitted after the cut
  auto pos = static_cast<size_t>(std::lower_bound(ids_.begin(), ids_.end(), job.id) - ids_.begin());
  if (pos < cursor_) return;  // already written, as it was
  Progress& p = progress(job);
  if (!p.image) {
    write_image(job);
    p.image = true;
  }
  const auto count = static_cast<uint32_t>(job.tasks.size());
  if (first_task > last_task || first_task >= count) return;
  last_task = std::min(last_task, count - 1);
  for (uint32_t s = first_task / tasks_per_slice_; s <= last_task / tasks_per_slice_; ++s) {
    if (p.slices[s]) continue;
    write_slice(job, p, s);
    ++slices_copied_early_;
  }
}

std::vector<std::string> encode_snapshot(const State& state) {
  SnapshotBuilder b(state, kTasksPerSlice, /*observe=*/false);
  b.step(std::numeric_limits<uint64_t>::max());
  std::vector<std::string> out;
  while (b.has_chunk()) out.push_back(b.take_chunk());
  return out;
}

// ------------------------------------------------------------------------- loader

Status SnapshotLoader::feed(std::string_view bytes) {
  pb::SnapshotChunk chunk;
  if (!chunk.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return corrupt("a chunk does not parse");
  }
  if (!have_meta_) {
    if (chunk.body_case() != pb::SnapshotChunk::kMeta) return corrupt("does not start with meta");
    meta_ = chunk.meta();
    if (meta_.format() != kSnapshotFormat) {
      return corrupt("format " + std::to_string(meta_.format()) + ", this build reads " +
                     std::to_string(kSnapshotFormat));
    }
    have_meta_ = true;
    return {};
  }
  switch (chunk.body_case()) {
    case pb::SnapshotChunk::kNode: {
      if (jobs_done_ > 0 || !partial_.empty()) return corrupt("a node after the jobs");
      const pb::NodeImage& image = chunk.node();
      if (image.node().node_id() != nodes_) return corrupt("nodes out of order");
      State::NodeImage n{to_sched_node(image.node()), image.node().identity(), image.removed(),
                         image.has_drain() && image.drain().draining(),
                         image.has_drain() ? image.drain().deadline_ms() : 0};
      if (auto st = state_.restore_node(std::move(n)); !st) return st;
      ++nodes_;
      return {};
    }
    case pb::SnapshotChunk::kJob: return feed_job(chunk.job());
    case pb::SnapshotChunk::kTasks: return feed_tasks(chunk.tasks());
    case pb::SnapshotChunk::kMeta: return corrupt("a second meta");
    case pb::SnapshotChunk::BODY_NOT_SET: break;
  }
  return corrupt("an empty chunk");
}

Status SnapshotLoader::feed_job(const pb::JobImage& image) {
  if (partial_.contains(image.job_id()) || state_.cluster().job(image.job_id()) != nullptr) {
    return corrupt("job " + std::to_string(image.job_id()) + " twice");
  }
  if (jobs_done_ + partial_.size() >= meta_.jobs()) return corrupt("more jobs than the meta says");
  const pb::JobSpec& spec = image.spec();
  if (spec.count() == 0 || spec.count() > state_.cluster().limits().tasks_per_job_max) {
    return corrupt("job " + std::to_string(image.job_id()) + " has a bad task count");
  }
  if (image.state() < 0 || image.state() >= pb::JobState_ARRAYSIZE) {
    return corrupt("job " + std::to_string(image.job_id()) + " in an unknown state");
  }
  Partial p;
  p.job.id = image.job_id();
  p.job.spec = to_sched_spec(spec);
  p.job.state = static_cast<sched::JobState>(image.state());
  p.job.submitted_ms = image.submitted_ms();
  p.job.finished_ms = image.finished_ms();
  p.job.requeued.assign(image.requeued().begin(), image.requeued().end());
  p.job.standby.insert(image.standby().begin(), image.standby().end());
  p.job.tasks.resize(spec.count());
  p.spec = spec;
  p.cancelling = image.cancelling();
  partial_.emplace(image.job_id(), std::move(p));
  return {};
}

Status SnapshotLoader::feed_tasks(const pb::TaskSlice& slice) {
  auto it = partial_.find(slice.job_id());
  if (it == partial_.end()) {
    return corrupt("tasks of job " + std::to_string(slice.job_id()) + " before its image");
  }
  Partial& p = it->second;
  const std::string& bytes = slice.tasks();
  const uint64_t n = bytes.size() / kTaskImageBytes;
  const uint64_t first = slice.first_index();
  if (bytes.empty() || bytes.size() % kTaskImageBytes != 0 || n > kTasksPerSliceMax ||
      first + n > p.job.tasks.size()) {
    return corrupt("a task slice of job " + std::to_string(slice.job_id()) + " is malformed");
  }
  // Slices come in any order (a change may copy one early), but never overlap.
  auto next = p.covered.upper_bound(static_cast<uint32_t>(first));
  if (next != p.covered.end() && next->first < first + n) {
    return corrupt("task slices of job " + std::to_string(slice.job_id()) + " overlap");
  }
  if (next != p.covered.begin() && std::prev(next)->second > first) {
    return corrupt("task slices of job " + std::to_string(slice.job_id()) + " overlap");
  }
  p.covered.emplace(static_cast<uint32_t>(first), static_cast<uint32_t>(first + n));
  for (uint64_t i = 0; i < n; ++i) {
    p.job.tasks[first + i] = decode_task(bytes.data() + i * kTaskImageBytes);
  }
  const std::string& usage = slice.usage();
  if (!usage.empty()) {
    if (usage.size() != n * kUsageImageBytes) {
      return corrupt("task usage of job " + std::to_string(slice.job_id()) + " is malformed");
    }
    if (p.job.usage.empty()) p.job.usage.resize(p.job.tasks.size());
    for (uint64_t i = 0; i < n; ++i) {
      const char* q = usage.data() + i * kUsageImageBytes;
      p.job.usage[first + i] = {get_u32le(q), get_u32le(q + 4), get_u32le(q + 8)};
    }
  }
  // Absent from older snapshots: wall times unknown (0), start times of running tasks too.
  const std::string& wall = slice.wall();
  if (!wall.empty()) {
    if (usage.empty() || wall.size() != n * kWallImageBytes) {
      return corrupt("task wall times of job " + std::to_string(slice.job_id()) + " are malformed");
    }
    for (uint64_t i = 0; i < n; ++i) {
      p.job.usage[first + i].wall_ms = get_u32le(wall.data() + i * kWallImageBytes);
    }
  }
  // Cluster::restore_job checks that each names a running task.
  const std::string& started = slice.started();
  if (started.size() % kStartedImageBytes != 0 || started.size() / kStartedImageBytes > n) {
    return corrupt("start times of job " + std::to_string(slice.job_id()) + " are malformed");
  }
  for (size_t at = 0; at < started.size(); at += kStartedImageBytes) {
    const uint32_t index = get_u32le(started.data() + at);
    if (index < first || index >= first + n ||
        !p.job.started_ms.emplace(index, get_u64le(started.data() + at + 4)).second) {
      return corrupt("a start time of job " + std::to_string(slice.job_id()) +
                     " outside its slice or twice");
    }
  }
  // Earlier attempts of this slice's tasks; Cluster::restore_job checks what they say.
  const std::string& earlier = slice.earlier();
  if (earlier.size() % kEarlierImageBytes != 0 ||
      earlier.size() / kEarlierImageBytes > n * sched::kEarlierPerTaskMax) {
    return corrupt("earlier attempts of job " + std::to_string(slice.job_id()) + " are malformed");
  }
  for (size_t at = 0; at < earlier.size(); at += kEarlierImageBytes) {
    uint32_t index = 0;
    sched::EarlierAttempt a = decode_earlier(earlier.data() + at, &index);
    if (index < first || index >= first + n) {
      return corrupt("an earlier attempt of job " + std::to_string(slice.job_id()) +
                     " outside its slice");
    }
    p.job.earlier[index].push_back(a);
  }
  p.tasks_received += n;
  if (p.tasks_received < p.job.tasks.size()) return {};
  Partial done = std::move(p);
  partial_.erase(it);
  ++jobs_done_;
  return state_.restore_job(std::move(done.job), std::move(done.spec), done.cancelling);
}

Status SnapshotLoader::finish() {
  if (!have_meta_) return corrupt("empty");
  if (nodes_ != meta_.nodes()) return corrupt("fewer nodes than the meta says");
  if (!partial_.empty() || jobs_done_ != meta_.jobs())
    return corrupt("a job is incomplete or missing");
  return state_.finish_restore(meta_.covers_seq(), meta_.last_job_id(), meta_.jobs_submitted(),
                               meta_.jobs_pruned());
}

}  // namespace cardnode::runtime
