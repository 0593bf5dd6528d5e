// sqlite_commit: the SQLite peer of submit_bench. Durable commits per second with
// journal_mode=WAL and synchronous=FULL (every COMMIT syncs the WAL file), one INSERT of
// a --record-bytes blob per transaction, N threads each with its own connection to the
// same database file.
//
// SQLite lets one writer in at a time: a transaction is BEGIN IMMEDIATE, INSERT, COMMIT,
// and a connection that finds the write lock held waits in SQLite's busy handler (up to
// --busy-timeout-ms). A BEGIN that still gets SQLITE_BUSY is counted as refused and
// retried after a short backoff. Output: one `result` line on stdout
// (bench/durable_bench.h), a sentence on stderr.
//
//   sqlite_commit --db FILE [--threads N] [--seconds S] [--count C] [--record-bytes B]
#include <sqlite3.h>

#include <CLI/CLI.hpp>
#include <string>

#include "bench/durable_bench.h"

namespace {

using cardnode::bench::Attempt;
using cardnode::bench::AttemptResult;

constexpr uint32_t kThreadsMax = 1024;

std::string db_error(sqlite3* db, const std::string& what) {
  return what + ": " + (db ? sqlite3_errmsg(db) : "out of memory");
}

// Runs one statement that returns no rows we need.
std::expected<void, std::string> exec(sqlite3* db, const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &err) == SQLITE_OK) return {};
  std::string msg = std::string(sql) + ": " + (err ? err : sqlite3_errmsg(db));
  sqlite3_free(err);
  return std::unexpected(msg);
}

// One connection with its three prepared statements. Owns them; one thread at a time.
class Committer {
 public:
  static std::expected<std::unique_ptr<Committer>, std::string> open(const std::string& path,
                                                                     uint32_t busy_timeout_ms,
                                                                     uint32_t record_bytes) {
    std::unique_ptr<Committer> c(new Committer(record_bytes));
    // NOMUTEX: each connection is used by one thread, so SQLite's own locks would add nothing.
    if (sqlite3_open_v2(path.c_str(), &c->db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
                        nullptr) != SQLITE_OK)
      return std::unexpected(db_error(c->db_, "open"));
    sqlite3_busy_timeout(c->db_, static_cast<int>(busy_timeout_ms));
    // synchronous is per connection: every one of them must ask for FULL.
    if (auto st = exec(c->db_, "PRAGMA synchronous=FULL"); !st) return std::unexpected(st.error());
    if (auto st = c->prepare("BEGIN IMMEDIATE", &c->begin_); !st)
      return std::unexpected(st.error());
    if (auto st = c->prepare("INSERT INTO record(body) VALUES (?1)", &c->insert_); !st)
      return std::unexpected(st.error());
    if (auto st = c->prepare("COMMIT", &c->commit_); !st) return std::unexpected(st.error());
    return c;
  }

  ~Committer() {
    sqlite3_finalize(begin_);
    sqlite3_finalize(insert_);
    sqlite3_finalize(commit_);
    sqlite3_close(db_);
  }

  AttemptResult attempt() {
    int rc = step(begin_);
    if (rc == SQLITE_BUSY) {  // busy_timeout ran out
      last_refusal_ = db_error(db_, "BEGIN IMMEDIATE");
      return Attempt::kRefused;
    }
    if (rc != SQLITE_DONE) return std::unexpected(db_error(db_, "BEGIN IMMEDIATE"));
    sqlite3_bind_blob(insert_, 1, body_.data(), static_cast<int>(body_.size()), SQLITE_STATIC);
    rc = step(insert_);
    if (rc != SQLITE_DONE) {
      std::string msg = db_error(db_, "INSERT");
      (void)exec(db_, "ROLLBACK");
      return std::unexpected(msg);
    }
    // The write lock is ours since BEGIN IMMEDIATE, so COMMIT is not refused for a lock.
    if (step(commit_) != SQLITE_DONE) return std::unexpected(db_error(db_, "COMMIT"));
    return Attempt::kAcked;
  }
  const std::string& last_refusal() const { return last_refusal_; }

 private:
  explicit Committer(uint32_t record_bytes) : body_(record_bytes, '\0') {
    for (size_t i = 0; i < body_.size(); ++i) body_[i] = static_cast<char>('a' + i % 26);
  }

  std::expected<void, std::string> prepare(const char* sql, sqlite3_stmt** out) {
    if (sqlite3_prepare_v2(db_, sql, -1, out, nullptr) == SQLITE_OK) return {};
    return std::unexpected(db_error(db_, sql));
  }

  static int step(sqlite3_stmt* s) {
    const int rc = sqlite3_step(s);
    sqlite3_reset(s);
    return rc;
  }

  sqlite3* db_ = nullptr;
  sqlite3_stmt* begin_ = nullptr;
  sqlite3_stmt* insert_ = nullptr;
  sqlite3_stmt* commit_ = nullptr;
  std::string body_;
  std::string last_refusal_;
};

// Creates the file and table in WAL mode (a property of the file, set once).
std::expected<void, std::string> create_db(const std::string& path) {
  sqlite3* db = nullptr;
  std::expected<void, std::string> st;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) !=
      SQLITE_OK) {
    st = std::unexpected(db_error(db, "open " + path));
  } else {
    sqlite3_stmt* s = nullptr;
    if (sqlite3_prepare_v2(db, "PRAGMA journal_mode=WAL", -1, &s, nullptr) != SQLITE_OK ||
        sqlite3_step(s) != SQLITE_ROW ||
        std::string(reinterpret_cast<const char*>(sqlite3_column_text(s, 0))) != "wal")
      st = std::unexpected("cannot switch " + path + " to journal_mode=WAL");
    sqlite3_finalize(s);
    if (st) st = exec(db, "CREATE TABLE IF NOT EXISTS record(id INTEGER PRIMARY KEY, body BLOB)");
  }
  sqlite3_close(db);
  return st;
}

int fail_line(const std::string& message) {
  std::fprintf(stderr, "sqlite_commit: %s\n", message.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"SQLite commits per second: WAL, synchronous=FULL, one INSERT per transaction",
               "sqlite_commit"};
  std::string path;
  uint32_t busy_timeout_ms = 10'000, record_bytes = 100;
  cardnode::bench::RunOptions o;
  app.add_option("--db", path, "Database file (created if missing)")->required();
  app.add_option("--threads", o.writers, "Concurrent writers, one connection each")
      ->check(CLI::Range(1u, kThreadsMax))
      ->capture_default_str();
  auto* secs = app.add_option("--seconds", o.seconds,
                              "Run this long (default 10; with --count alone: no limit)")
                   ->check(CLI::PositiveNumber);
  app.add_option("--count", o.count,
                 "Commit at most this many records in all (stops at whichever comes first)")
      ->check(CLI::PositiveNumber);
  app.add_option("--record-bytes", record_bytes, "Bytes of the blob in each record")
      ->check(CLI::Range(1u, 1u << 20))
      ->capture_default_str();
  app.add_option("--busy-timeout-ms", busy_timeout_ms, "SQLite busy_timeout per connection")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (o.count != 0 && secs->count() == 0) o.seconds = 0;
  // A BEGIN refused while the busy handler waited this long is not a stuck database yet.
  o.refused_for_max_ms = std::max<uint32_t>(o.refused_for_max_ms, 3 * busy_timeout_ms);

  if (auto st = create_db(path); !st) return fail_line(st.error());
  std::vector<std::unique_ptr<Committer>> committers;
  for (uint32_t i = 0; i < o.writers; ++i) {
    auto c = Committer::open(path, busy_timeout_ms, record_bytes);
    if (!c) return fail_line("connection " + std::to_string(i) + ": " + c.error());
    committers.push_back(std::move(*c));
  }
  auto result = cardnode::bench::run_writers("sqlite", o, committers);
  if (!result) return fail_line(result.error());
  cardnode::bench::print_result(*result, "commits");
  return 0;
}
