// recovery_bench: the durable state at scale, through the real coordinator and store.
//
//   1. Builds a history of TASKS finished tasks (ARRAY-task jobs, every record through the
//      coordinator and the WAL of a temp data dir), then measures:
//        - WAL bytes and records per task;
//        - writing a snapshot of that state while the loop keeps taking turns: the longest
//          single turn (what a request waiting behind it would feel), and the cost of the
//          copy-before-write when a record touches a job the snapshot has not reached;
//   2. Restarts: snapshot load + WAL replay into a fresh coordinator (the start-up time).
//
// Usage: recovery_bench [TASKS=1000000] [ARRAY=10000] [--backend fallback|io_uring] [DIR]
// Prints one line of key=value pairs per measure. Times are wall clock on this machine.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "runtime/coordinator/coordinator.h"
#include "storage/local_store.h"

namespace {

using namespace cardnode;
using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

uint64_t dir_bytes(const std::string& dir) {
  uint64_t total = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) total += e.file_size();
  }
  return total;
}

class NullRunner final : public runtime::TaskRunner {
 public:
  Status start(const runtime::TaskLaunch& l, ExitCallback cb) override {
    started.emplace_back(l.job_id, l.index, std::move(cb));
    return {};
  }
  void kill(uint64_t, uint32_t, runtime::KillReason) override {}
  std::vector<std::tuple<uint64_t, uint32_t, ExitCallback>> started;
};

struct Process {
  std::unique_ptr<storage::IoEngine> engine;
  std::unique_ptr<storage::LocalStore> store;
  std::unique_ptr<runtime::Coordinator> c;
  bool turn = false;
  uint64_t now = 1'700'000'000'000;

  Process(const std::string& dir, bool fallback, uint64_t snapshot_bytes) {
    storage::IoOptions io;
    io.force_fallback = fallback;
    engine = std::move(*storage::IoEngine::create(io, nullptr));
    storage::LocalStoreOptions so;
    so.dir = dir;
    store = std::make_unique<storage::LocalStore>(*engine, so);
    runtime::CoordinatorOptions co;
    co.snapshot_wal_bytes_min = snapshot_bytes;
    co.keep_finished = 1'000'000;
    co.limits.queued_tasks_max = 100'000'000;
    runtime::CoordinatorHooks h;
    h.now_ms = [this] { return now; };
    h.request_turn = [this] { turn = true; };
    h.fatal = [](const Error& e) {
      std::fprintf(stderr, "fatal: %s\n", e.describe().c_str());
      std::exit(1);
    };
    c = std::make_unique<runtime::Coordinator>(*store, co, h);
  }
  // Runs turns and completions until both are quiet; returns the longest turn in ms.
  double settle() {
    double longest = 0;
    for (;;) {
      bool busy = false;
      if (turn) {
        turn = false;
        auto t0 = Clock::now();
        c->turn();
        longest = std::max(longest, ms_since(t0));
        busy = true;
      }
      if (engine->in_flight() > 0) {
        engine->wait();
        turn = turn || c->snapshot_in_progress();  // as the server: a turn after completions
        busy = true;
      }
      if (!busy) return longest;
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  uint64_t tasks = 1'000'000;
  uint32_t array = 10'000;
  bool fallback = false;
  std::string dir;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--backend" && i + 1 < argc) {
      fallback = std::string(argv[++i]) == "fallback";
    } else {
      positional.push_back(a);
    }
  }
  if (positional.size() > 0) tasks = std::stoull(positional[0]);
  if (positional.size() > 1) array = static_cast<uint32_t>(std::stoul(positional[1]));
  if (positional.size() > 2) dir = positional[2];
  if (dir.empty()) {
    char tmpl[] = "/tmp/cardnode-recovery-XXXXXX";
    dir = ::mkdtemp(tmpl);
  }
  const uint64_t jobs = (tasks + array - 1) / array;

  // ---- 1. a history of `tasks` finished tasks, through the real path ---------------
  {
    Process p(dir, fallback, /*snapshot_bytes=*/uint64_t(1) << 62);  // no snapshot yet
    if (!p.c->recover()) return 1;
    sched::NodeSpec node;
    node.name = "bench";
    node.capacity = {1'000'000'000, 1ull << 50};
    auto id = p.c->register_node("bench-node", node);
    NullRunner runner;
    p.c->attach_runner(*id, &runner);
    auto t0 = Clock::now();
    for (uint64_t j = 0; j < jobs; ++j) {
      pb::JobSpec spec;
      spec.add_command("true");
      spec.set_count(static_cast<uint32_t>(std::min<uint64_t>(array, tasks - j * array)));
      spec.set_cpu_millis(1);
      spec.set_mem_bytes(1 << 20);  // the least a job may ask for
      p.c->submit(spec, [](Result<sched::JobId>) {});
      p.settle();
      while (!runner.started.empty()) {  // finish what started, place more, until done
        auto started = std::move(runner.started);
        runner.started.clear();
        for (auto& [job, index, cb] : started) cb(runtime::TaskExit{pb::TASK_SUCCEEDED, 0, 0});
        p.settle();
      }
    }
    const double build_ms = ms_since(t0);
    const auto& ws = p.store->wal().stats();
    std::printf(
        "history tasks=%llu jobs=%llu records=%llu wal_bytes=%llu bytes_per_task=%.1f "
        "records_per_task=%.2f build_s=%.1f\n",
        static_cast<unsigned long long>(tasks), static_cast<unsigned long long>(jobs),
        static_cast<unsigned long long>(ws.records_appended),
        static_cast<unsigned long long>(ws.bytes_appended),
        static_cast<double>(ws.bytes_appended) / static_cast<double>(tasks),
        static_cast<double>(ws.records_appended) / static_cast<double>(tasks), build_ms / 1000);
  }

  // ---- 2. a snapshot of that state while the loop runs --------------------------------
  {
    Process p(dir, fallback, /*snapshot_bytes=*/1);
    auto t0 = Clock::now();
    if (!p.c->recover()) return 1;
    std::printf("replay_without_snapshot_ms=%.0f\n", ms_since(t0));
    // A queued job of ARRAY tasks (no node runs it), so there is a job to change while
    // the snapshot is being written.
    pb::JobSpec spec;
    spec.add_command("true");
    spec.set_count(array);
    p.c->submit(spec, [](Result<sched::JobId>) {});
    while (p.engine->in_flight() > 0) p.engine->wait();  // durable, but no turn taken yet
    p.turn = false;
    auto t1 = Clock::now();
    p.c->turn();  // the cut: the snapshot begins
    // The cancel touches the newest job before the snapshot has reached it: the job is
    // copied whole, at once, inside this call (copy-before-write).
    auto t2 = Clock::now();
    p.c->cancel(p.c->state().cluster().last_job_id(), [](Result<uint32_t>) {});
    const double cbw_ms = ms_since(t2);
    double longest = p.settle();
    std::printf(
        "snapshot_ms=%.0f longest_turn_ms=%.2f cancel_during_snapshot_ms=%.2f (one %u-task job) "
        "snapshots=%llu started=%llu failures=%llu slices_copied_early=%llu snapshot_bytes=%llu\n",
        ms_since(t1), longest, cbw_ms, array,
        static_cast<unsigned long long>(p.c->stats().snapshots_written),
        static_cast<unsigned long long>(p.c->stats().snapshots_started),
        static_cast<unsigned long long>(p.c->stats().snapshot_failures),
        static_cast<unsigned long long>(p.c->stats().snapshot_slices_copied_early),
        static_cast<unsigned long long>(p.store->snapshot_bytes()));
  }

  // ---- 3. start-up: snapshot load + replay -----------------------------------------------
  {
    Process p(dir, fallback, uint64_t(1) << 62);
    auto t0 = Clock::now();
    auto r = p.c->recover();
    if (!r) {
      std::fprintf(stderr, "recover: %s\n", r.error().describe().c_str());
      return 1;
    }
    std::printf("startup_ms=%.0f snapshot_seq=%llu wal_records_replayed=%llu data_dir_bytes=%llu\n",
                ms_since(t0), static_cast<unsigned long long>(r->snapshot_seq),
                static_cast<unsigned long long>(r->wal.records),
                static_cast<unsigned long long>(dir_bytes(dir)));
  }
  if (positional.size() <= 2) std::filesystem::remove_all(dir);
  return 0;
}
