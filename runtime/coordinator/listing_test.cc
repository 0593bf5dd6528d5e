// Pages of `ps`: every boundary with small bounds (cheap), and the real bounds against the
// frame with what a user can submit at most.
#include "runtime/coordinator/listing.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "net/frame.h"
#include "runtime/coordinator/test_records.h"

namespace cardnode::runtime {
namespace {

using namespace testing;  // NOLINT: record builders

constexpr size_t kNextFieldBytesMax = 11;  // next_after / next_task: not counted in the bound

struct Fixture {
  State s;
  Applier apply{s};
  Fixture() { EXPECT_TRUE(apply(node_updated(0, "pi-1", "board-1")).has_value()); }

  void submit(uint64_t id, uint32_t count, const std::vector<std::string>& command = {"true"}) {
    pb::WalRecord r = submitted(id, count);
    auto* spec = r.mutable_job_submitted()->mutable_spec();
    spec->clear_command();
    for (const auto& a : command) spec->add_command(a);
    ASSERT_TRUE(apply(r).has_value());
  }
};

// All pages of ListJobs, as a client reads them; checks that each page fits `bytes_max`
// unless it holds a single job.
std::vector<pb::JobList> all_job_pages(const State& s, const PageBounds& b, uint32_t max_jobs = 0) {
  std::vector<pb::JobList> pages;
  pb::ListJobs req;
  req.set_max_jobs(max_jobs);
  for (int guard = 0; guard < 10'000; ++guard) {
    pages.push_back(list_jobs(s, req, b));
    const pb::JobList& p = pages.back();
    if (p.jobs_size() > 1) {
      EXPECT_LE(p.ByteSizeLong(), b.bytes_max + kNextFieldBytesMax);
    }
    if (p.next_after() == 0) break;
    EXPECT_EQ(p.next_after(), p.jobs(p.jobs_size() - 1).id());
    req.set_after_job_id(p.next_after());
  }
  return pages;
}

std::vector<uint64_t> ids_of(const std::vector<pb::JobList>& pages) {
  std::vector<uint64_t> ids;
  for (const auto& p : pages) {
    for (const auto& j : p.jobs()) ids.push_back(j.id());
  }
  return ids;
}

std::vector<uint64_t> range(uint64_t first, uint64_t last) {
  std::vector<uint64_t> v;
  for (uint64_t i = first; i <= last; ++i) v.push_back(i);
  return v;
}

TEST(Listing, JobPagesComeInIdOrderAndEndWithZero) {
  Fixture f;
  for (uint64_t id = 1; id <= 25; ++id) f.submit(id, 1);
  auto pages = all_job_pages(f.s, PageBounds{.jobs_max = 10});
  ASSERT_EQ(pages.size(), 3u);
  EXPECT_EQ(pages[0].next_after(), 10u);
  EXPECT_EQ(pages[1].next_after(), 20u);
  EXPECT_EQ(pages[2].next_after(), 0u);
  EXPECT_EQ(ids_of(pages), range(1, 25));
  // The client's own bound, under the server's.
  EXPECT_EQ(all_job_pages(f.s, PageBounds{.jobs_max = 10}, 3).size(), 9u);
  EXPECT_EQ(all_job_pages(f.s, PageBounds{.jobs_max = 10}, 50).size(), 3u);
  // Exactly a page's worth: the last page says so, no empty page follows.
  EXPECT_EQ(all_job_pages(f.s, PageBounds{.jobs_max = 25}).size(), 1u);
  // From past the end, and from nothing.
  pb::ListJobs past;
  past.set_after_job_id(25);
  EXPECT_EQ(list_jobs(f.s, past).jobs_size(), 0);
  EXPECT_EQ(list_jobs(f.s, past).next_after(), 0u);
  Fixture empty;
  EXPECT_EQ(list_jobs(empty.s, pb::ListJobs()).ByteSizeLong(), 0u);
}

TEST(Listing, TheNewestJobsComeNewestFirstAsJobListsSayThem) {
  Fixture f;
  for (uint64_t id = 1; id <= 5; ++id) f.submit(id, 2, {"sh", "-c", std::string(2000, 'x')});
  const pb::JobList newest = newest_job_list(f.s, 3);
  ASSERT_EQ(newest.jobs_size(), 3);
  EXPECT_EQ(newest.jobs(0).id(), 5u);
  EXPECT_EQ(newest.jobs(2).id(), 3u);
  EXPECT_EQ(newest.next_after(), 0u);
  // Each entry is the one `ps` lists: the same summary, command shortened.
  pb::ListJobs req;
  req.set_after_job_id(4);
  EXPECT_EQ(newest.jobs(0).SerializeAsString(), list_jobs(f.s, req).jobs(0).SerializeAsString());
  EXPECT_TRUE(newest.jobs(0).command_shortened());
  EXPECT_EQ(newest_job_list(f.s, 100).jobs_size(), 5);
  EXPECT_EQ(newest_job_list(f.s, 0).jobs_size(), 0);
}

TEST(Listing, PrunedJobsLeaveGapsThatPagingSkips) {
  Fixture f;
  for (uint64_t id = 1; id <= 6; ++id) f.submit(id, 1);
  for (uint64_t id : {2, 3, 5}) {
    ASSERT_TRUE(f.apply(started(id, 0)).has_value());
    ASSERT_TRUE(f.apply(finished(id, 0, pb::TASK_SUCCEEDED)).has_value());
  }
  ASSERT_TRUE(f.apply(pruned({2, 3})).has_value());
  pb::ListJobs req;
  req.set_after_job_id(2);  // a page ended at a job pruned since
  pb::JobList p = list_jobs(f.s, req, PageBounds{.jobs_max = 2});
  ASSERT_EQ(p.jobs_size(), 2);
  EXPECT_EQ(p.jobs(0).id(), 4u);
  EXPECT_EQ(p.next_after(), 5u);
  EXPECT_EQ(ids_of(all_job_pages(f.s, PageBounds{.jobs_max = 2})),
            (std::vector<uint64_t>{1, 4, 5, 6}));
}

TEST(Listing, TheByteBoundCutsJobPagesButEveryPageHoldsOne) {
  Fixture f;
  for (uint64_t id = 1; id <= 40; ++id) f.submit(id, 1, {"sh", "-c", std::string(100, 'x')});
  const uint32_t one = static_cast<uint32_t>(list_jobs(f.s, pb::ListJobs()).jobs(0).ByteSizeLong());
  auto pages = all_job_pages(f.s, PageBounds{.bytes_max = 5 * one});
  EXPECT_EQ(ids_of(pages), range(1, 40));
  EXPECT_GE(pages.size(), 10u);  // about 4 a page, with the framing of each entry
  // A bound smaller than one job: one job a page, never an empty one.
  pages = all_job_pages(f.s, PageBounds{.bytes_max = 10});
  EXPECT_EQ(pages.size(), 40u);
  EXPECT_EQ(ids_of(pages), range(1, 40));
}

TEST(Listing, ListsShortenCommandsAndAJobsPageHasItWhole) {
  Fixture f;
  std::vector<std::string> many;
  for (int i = 0; i < 20; ++i) many.push_back("arg" + std::to_string(i));
  f.submit(1, 1, many);
  f.submit(2, 1, {"sh", std::string(400, 'a'), std::string(400, 'b')});
  std::string accents;
  for (int i = 0; i < 300; ++i) accents += "\xc3\xa9";  // é, two bytes each
  f.submit(3, 1, {"echo", accents});
  f.submit(4, 1, {"echo", "short"});
  std::vector<std::string> exact = {std::string(500, 'e'), std::string(12, 'f')};
  f.submit(5, 1, exact);  // 512 bytes exactly: nothing cut

  pb::JobList list = list_jobs(f.s, pb::ListJobs());
  ASSERT_EQ(list.jobs_size(), 5);
  const pb::JobSummary& j1 = list.jobs(0);
  EXPECT_EQ(j1.command_size(), static_cast<int>(kListedArgsMax));
  EXPECT_EQ(j1.command(15), "arg15");
  EXPECT_TRUE(j1.command_shortened());

  const pb::JobSummary& j2 = list.jobs(1);
  ASSERT_EQ(j2.command_size(), 3);
  EXPECT_EQ(j2.command(1), std::string(400, 'a'));
  EXPECT_EQ(j2.command(2), std::string(kListedCommandBytesMax - 2 - 400, 'b'));
  EXPECT_TRUE(j2.command_shortened());

  const pb::JobSummary& j3 = list.jobs(2);
  ASSERT_EQ(j3.command_size(), 2);
  EXPECT_EQ(j3.command(1).size() % 2, 0u);  // never half a character
  EXPECT_EQ(j3.command(1), accents.substr(0, j3.command(1).size()));
  EXPECT_TRUE(j3.command_shortened());

  EXPECT_FALSE(list.jobs(3).command_shortened());
  EXPECT_EQ(list.jobs(3).command(1), "short");
  EXPECT_FALSE(list.jobs(4).command_shortened());
  EXPECT_EQ(std::vector<std::string>(list.jobs(4).command().begin(), list.jobs(4).command().end()),
            exact);

  // The reply parses, as the client reads it.
  pb::JobList parsed;
  ASSERT_TRUE(parsed.ParseFromString(list.SerializeAsString()));
  EXPECT_EQ(parsed.jobs(2).command(1), j3.command(1));

  for (uint64_t id : {1, 2, 3}) {
    pb::JobDetail d = job_page(f.s, *f.s.cluster().job(id), 0, 0);
    EXPECT_FALSE(d.job().command_shortened());
    EXPECT_EQ(d.job().command().size(), f.s.spec(id)->command().size());
  }
  EXPECT_EQ(job_page(f.s, *f.s.cluster().job(3), 0, 0).job().command(1), accents);
}

// Commands are bytes: an argument that is not UTF-8 is cut at the budget (never backed
// over, never past it), and the list still parses.
TEST(Listing, CommandsThatAreNotUtf8AreCutWithinTheBudget) {
  Fixture f;
  f.submit(1, 1, {"echo", std::string(600, '\x80')});  // continuation bytes, no lead
  std::string latin1;
  for (int i = 0; i < 300; ++i) latin1 += "caf\xe9";
  f.submit(2, 1, {"echo", latin1});
  f.submit(3, 1, {"printf", "caf\xe9"});
  pb::JobList list = list_jobs(f.s, pb::ListJobs());
  ASSERT_EQ(list.jobs_size(), 3);
  for (int j = 0; j < 2; ++j) {
    ASSERT_EQ(list.jobs(j).command_size(), 2);
    EXPECT_EQ(list.jobs(j).command(1).size(), kListedCommandBytesMax - 4);
    EXPECT_TRUE(list.jobs(j).command_shortened());
  }
  EXPECT_EQ(list.jobs(1).command(1), latin1.substr(0, kListedCommandBytesMax - 4));
  EXPECT_EQ(list.jobs(2).command(1), "caf\xe9");
  EXPECT_FALSE(list.jobs(2).command_shortened());
  pb::JobList parsed;
  ASSERT_TRUE(parsed.ParseFromString(list.SerializeAsString()));
  EXPECT_EQ(parsed.jobs(2).command(1), "caf\xe9");
  EXPECT_EQ(parsed.jobs(2).name(), "job-3");
}

// The tasks of one job through every page, as a client reads them.
std::vector<pb::TaskInfo> all_tasks(const State& s, uint64_t id, const PageBounds& b,
                                    uint32_t max_tasks = 0, size_t* pages = nullptr) {
  std::vector<pb::TaskInfo> tasks;
  uint32_t first = 0;
  size_t n = 0;
  for (int guard = 0; guard < 100'000; ++guard) {
    pb::JobDetail d = job_page(s, *s.cluster().job(id), first, max_tasks, b);
    ++n;
    EXPECT_EQ(d.job().id(), id);
    if (d.tasks_size() > 1) {
      EXPECT_LE(d.ByteSizeLong(), b.bytes_max + kNextFieldBytesMax);
    }
    for (const auto& t : d.tasks()) tasks.push_back(t);
    if (d.next_task() == 0) break;
    EXPECT_EQ(d.next_task(), d.tasks(d.tasks_size() - 1).index() + 1);
    first = d.next_task();
  }
  if (pages != nullptr) *pages = n;
  return tasks;
}

void expect_every_task_once(const std::vector<pb::TaskInfo>& tasks, uint32_t count) {
  ASSERT_EQ(tasks.size(), count);
  for (uint32_t i = 0; i < count; ++i) ASSERT_EQ(tasks[i].index(), i);
}

TEST(Listing, TaskPagesCoverEveryTaskOnce) {
  Fixture f;
  f.submit(1, 1000);
  ASSERT_TRUE(f.apply(started(1, 0)).has_value());
  ASSERT_TRUE(f.apply(finished(1, 0, pb::TASK_FAILED, 3)).has_value());
  ASSERT_TRUE(f.apply(started(1, 999)).has_value());

  size_t pages = 0;
  auto tasks = all_tasks(f.s, 1, PageBounds{.tasks_max = 100}, 0, &pages);
  expect_every_task_once(tasks, 1000);
  EXPECT_EQ(pages, 10u);
  EXPECT_EQ(tasks[0].state(), pb::TASK_FAILED);
  EXPECT_EQ(tasks[0].exit_code(), 3);
  EXPECT_EQ(tasks[0].node(), "pi-1");
  EXPECT_EQ(tasks[999].state(), pb::TASK_RUNNING);
  EXPECT_EQ(tasks[500].node(), "");  // never started: no node

  expect_every_task_once(all_tasks(f.s, 1, PageBounds{.tasks_max = 100}, 7, &pages), 1000);
  EXPECT_EQ(pages, 143u);
  expect_every_task_once(all_tasks(f.s, 1, PageBounds{.bytes_max = 500}, 0, &pages), 1000);
  EXPECT_GE(pages, 10u);
  // A bound smaller than the job's own entry still takes one task a page.
  expect_every_task_once(all_tasks(f.s, 1, PageBounds{.bytes_max = 1}, 0, &pages), 1000);
  EXPECT_EQ(pages, 1000u);
  // Past the last task: no tasks, and nothing more to ask for.
  pb::JobDetail past = job_page(f.s, *f.s.cluster().job(1), 1000, 0);
  EXPECT_EQ(past.tasks_size(), 0);
  EXPECT_EQ(past.next_task(), 0u);
  EXPECT_EQ(past.job().count(), 1000u);
}

// `ps JOB`'s DURATION: a running task says when its attempt started, a finished one how
// long its attempt ran; neither says anything it does not know.
TEST(Listing, TasksSayWhenTheirAttemptStartedOrHowLongItRan) {
  Fixture f;
  f.submit(1, 3);
  pb::WalRecord start = started(1, 0);
  start.mutable_task_started()->set_started_ms(5'000);
  ASSERT_TRUE(f.apply(start).has_value());
  pb::WalRecord end = finished(1, 0, pb::TASK_SUCCEEDED, 0, 6'000);
  end.mutable_task_finished()->mutable_usage()->set_wall_ms(980);
  ASSERT_TRUE(f.apply(end).has_value());
  start = started(1, 1);
  start.mutable_task_started()->set_started_ms(7'000);
  ASSERT_TRUE(f.apply(start).has_value());

  auto tasks = all_tasks(f.s, 1, PageBounds{});
  ASSERT_EQ(tasks.size(), 3u);
  EXPECT_EQ(tasks[0].usage().wall_ms(), 980u);
  EXPECT_EQ(tasks[0].started_ms(), 0u);  // ended: no running attempt
  EXPECT_EQ(tasks[1].state(), pb::TASK_RUNNING);
  EXPECT_EQ(tasks[1].started_ms(), 7'000u);
  EXPECT_EQ(tasks[1].usage().wall_ms(), 0u);
  EXPECT_EQ(tasks[2].started_ms(), 0u);  // queued
  EXPECT_FALSE(tasks[2].has_usage());
}

// Job 1, one task, whose first attempt was lost by a server ending with `signal` and
// `exit_code` (a lost attempt is retried).
void submit_and_lose_first_attempt(Fixture& f, int32_t signal, int32_t exit_code) {
  f.submit(1, 1);
  ASSERT_TRUE(f.apply(started(1, 0)).has_value());
  pb::WalRecord end = finished(1, 0, pb::TASK_LOST, 0, 6'000);
  end.mutable_task_finished()->set_signal(signal);
  end.mutable_task_finished()->set_exit_code(exit_code);
  ASSERT_TRUE(f.apply(end).has_value());
}

// A retried task's line is its running attempt: the end of the attempt before it is under
// `earlier`, not on the task (ps printed "running ... SIGNAL 15" after a server restart).
TEST(Listing, ARunningRetryShowsNoEarlierAttemptsEnd) {
  Fixture f;
  ASSERT_NO_FATAL_FAILURE(submit_and_lose_first_attempt(f, 15, 3));
  ASSERT_TRUE(f.apply(started(1, 0, 2)).has_value());

  auto tasks = all_tasks(f.s, 1, PageBounds{});
  ASSERT_EQ(tasks.size(), 1u);
  EXPECT_EQ(tasks[0].state(), pb::TASK_RUNNING);
  EXPECT_EQ(tasks[0].attempts(), 2u);
  EXPECT_EQ(tasks[0].signal(), 0);
  EXPECT_EQ(tasks[0].exit_code(), 0);
  ASSERT_EQ(tasks[0].earlier_size(), 1);
  EXPECT_EQ(tasks[0].earlier(0).state(), pb::TASK_LOST);
  EXPECT_EQ(tasks[0].earlier(0).signal(), 15);
  EXPECT_EQ(tasks[0].earlier(0).exit_code(), 3);
}

// A retry cancelled before it started ends the task with no exit of its own: the codes
// are the earlier attempt's, shown under `earlier` only (and `run --wait` exits 1).
TEST(Listing, ARetryCancelledBeforeItStartedHasNoExitOfItsOwn) {
  Fixture f;
  ASSERT_NO_FATAL_FAILURE(submit_and_lose_first_attempt(f, 9, 0));
  ASSERT_TRUE(f.apply(cancelled(1)).has_value());

  auto tasks = all_tasks(f.s, 1, PageBounds{});
  ASSERT_EQ(tasks.size(), 1u);
  EXPECT_EQ(tasks[0].state(), pb::TASK_CANCELLED);
  EXPECT_EQ(tasks[0].attempts(), 1u);
  EXPECT_EQ(tasks[0].signal(), 0);
  ASSERT_EQ(tasks[0].earlier_size(), 1);
  EXPECT_EQ(tasks[0].earlier(0).signal(), 9);
  // A task whose last attempt ran and ended keeps its own codes.
  f.submit(2, 1);
  ASSERT_TRUE(f.apply(started(2, 0)).has_value());
  ASSERT_TRUE(f.apply(finished(2, 0, pb::TASK_FAILED, 3, 7'000)).has_value());
  auto two = all_tasks(f.s, 2, PageBounds{});
  ASSERT_EQ(two.size(), 1u);
  EXPECT_EQ(two[0].exit_code(), 3);
}

// What a user can submit at most still lists: 18 jobs of 250 KB commands (the issue's
// 4.5 MB), and a page of a large array, each within a frame.
TEST(Listing, TheLargestRepliesFitAFrame) {
  Fixture f;
  std::vector<std::string> big = {"true"};
  for (int i = 0; i < 25; ++i) big.push_back(std::string(10'000, 'a' + i % 26));
  for (uint64_t id = 1; id <= 18; ++id) f.submit(id, 1, big);
  pb::JobList list = list_jobs(f.s, pb::ListJobs());
  EXPECT_EQ(list.jobs_size(), 18);
  EXPECT_EQ(list.next_after(), 0u);
  EXPECT_LT(list.ByteSizeLong(), 18u * 1024);
  for (const auto& j : list.jobs()) EXPECT_TRUE(j.command_shortened());
  pb::JobDetail d = job_page(f.s, *f.s.cluster().job(18), 0, 0);
  EXPECT_EQ(d.job().command_size(), 26);
  EXPECT_LT(d.ByteSizeLong(), net::kFrameBytesMax);

  f.submit(19, 300'000);
  for (uint32_t i = 0; i < 300; ++i) ASSERT_TRUE(f.apply(started(19, i)).has_value());
  pb::JobDetail first = job_page(f.s, *f.s.cluster().job(19), 0, 0);
  EXPECT_EQ(first.tasks_size(), static_cast<int>(kTasksPageMax));
  EXPECT_EQ(first.next_task(), kTasksPageMax);
  EXPECT_LE(first.ByteSizeLong(), kPageBytesMax);
  size_t pages = 0;
  expect_every_task_once(all_tasks(f.s, 19, PageBounds{}, 0, &pages), 300'000);
  EXPECT_EQ(pages, 3u);
}

}  // namespace
}  // namespace cardnode::runtime
