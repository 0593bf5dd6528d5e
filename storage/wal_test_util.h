// Shared by the WAL tests (wal_test.cc, wal_damage_test.cc, wal_crash_test.cc): the
// on-disk format written again from wal_format.h, independently of wal_scan.cc, so the
// tests can craft any shape of damage; a walker that finds every batch and record of a
// healthy segment; file surgery; a counting Fs; and the backend-parameterized fixture.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "storage/fault.h"
#include "storage/fs.h"
#include "storage/test_util.h"
#include "storage/wal.h"

namespace cardnode::storage::waltest {

using testing::TempDir;

// --- the format -------------------------------------------------------------------------

inline void put_le(std::string& s, size_t at, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) s[at + i] = static_cast<char>(v >> (8 * i));
}

inline uint64_t get_le(std::string_view s, size_t at, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i)
    v |= static_cast<uint64_t>(static_cast<uint8_t>(s[at + i])) << (8 * i);
  return v;
}

// zlib's crc32 of a then b (crc32() given a null buffer would reset, so empty parts are
// skipped).
inline uint32_t crc(std::string_view a, std::string_view b = {}) {
  uLong c = crc32(0L, Z_NULL, 0);
  for (std::string_view s : {a, b}) {
    if (!s.empty())
      c = crc32(c, reinterpret_cast<const Bytef*>(s.data()), static_cast<uInt>(s.size()));
  }
  return static_cast<uint32_t>(c);
}

inline std::string frame(std::string_view payload) {
  std::string out(8, '\0');
  put_le(out, 0, payload.size(), 4);
  put_le(out, 4, crc(std::string_view(out).substr(0, 4), payload), 4);
  out += payload;
  return out;
}

inline std::string batch_header(uint32_t count, uint64_t first_seq, uint32_t body_bytes) {
  std::string h(24, '\0');
  h.replace(0, 4, "CNWB");
  put_le(h, 4, count, 4);
  put_le(h, 8, first_seq, 8);
  put_le(h, 16, body_bytes, 4);
  put_le(h, 20, crc(std::string_view(h).substr(0, 20)), 4);
  return h;
}

inline std::string batch(uint64_t first_seq, const std::vector<std::string>& payloads) {
  std::string body;
  for (const auto& p : payloads) body += frame(p);
  return batch_header(static_cast<uint32_t>(payloads.size()), first_seq,
                      static_cast<uint32_t>(body.size())) +
         body;
}

inline std::string segment_header(uint64_t first_seq) {
  std::string h(32, '\0');
  h.replace(0, 8, "CNODEWAL");
  put_le(h, 8, 2, 4);
  put_le(h, 16, first_seq, 8);
  put_le(h, 28, crc(std::string_view(h).substr(0, 28)), 4);
  return h;
}

inline std::string seal_bytes(uint64_t seq) {
  std::string s(24, '\0');
  s.replace(0, 8, "CNWSEAL1");
  put_le(s, 8, seq, 8);
  put_le(s, 16, crc(std::string_view(s).substr(0, 16)), 4);
  return s;
}

inline std::string segment_name(uint64_t first_seq) {
  char name[32];
  std::snprintf(name, sizeof name, "%020llu.wal", static_cast<unsigned long long>(first_seq));
  return name;
}

// --- files ------------------------------------------------------------------------------

inline std::vector<std::string> segment_files(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return out;
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name.ends_with(".wal")) out.push_back(dir + "/" + name);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

inline std::string read_file(const std::string& path) {
  return testing::read_file(path);
}

inline uint64_t file_size(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

inline void pwrite_file(const std::string& path, std::string_view bytes, uint64_t offset) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0) << path;
  ASSERT_EQ(::pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(offset)),
            static_cast<ssize_t>(bytes.size()));
  ::close(fd);
}

inline void copy_dir(const std::string& from, const std::string& to) {
  std::filesystem::remove_all(to);
  std::filesystem::copy(from, to, std::filesystem::copy_options::recursive);
}

// Every file under `dir` with its bytes, to show that something did not change.
inline std::map<std::string, std::string> dir_bytes(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) out[e.path().string()] = read_file(e.path().string());
  }
  return out;
}

inline uint64_t seal_of(const std::string& dir) {
  std::string s = read_file(dir + "/seal");
  return s.size() == 24 ? get_le(s, 8, 8) : UINT64_MAX;
}

// A healthy segment's batches, found by following the format.
struct BatchInfo {
  uint64_t offset = 0;
  uint32_t count = 0;
  uint64_t first_seq = 0;
  uint32_t body_bytes = 0;
  std::vector<uint64_t> record_offsets;
  std::vector<uint32_t> record_lengths;
  uint64_t end() const { return offset + 24 + body_bytes; }
};

inline std::vector<BatchInfo> batches_of(const std::string& path) {
  std::string data = read_file(path);
  std::vector<BatchInfo> out;
  uint64_t pos = 32;
  while (pos + 24 <= data.size() && data.compare(pos, 4, "CNWB") == 0) {
    BatchInfo b;
    b.offset = pos;
    b.count = static_cast<uint32_t>(get_le(data, pos + 4, 4));
    b.first_seq = get_le(data, pos + 8, 8);
    b.body_bytes = static_cast<uint32_t>(get_le(data, pos + 16, 4));
    uint64_t at = pos + 24;
    for (uint32_t i = 0; i < b.count && at + 8 <= data.size(); ++i) {
      b.record_offsets.push_back(at);
      b.record_lengths.push_back(static_cast<uint32_t>(get_le(data, at, 4)));
      at += 8 + b.record_lengths.back();
    }
    out.push_back(b);
    pos = b.end();
  }
  return out;
}

// Just past the last batch of a healthy segment.
inline uint64_t log_end(const std::string& path) {
  auto batches = batches_of(path);
  return batches.empty() ? 32 : batches.back().end();
}

// --- payloads and seeds --------------------------------------------------------------------

inline std::string payload_for(uint64_t i, size_t size) {
  std::string p = "rec-" + std::to_string(i) + "-";
  while (p.size() < size) p += static_cast<char>('a' + (p.size() + i) % 26);
  p.resize(std::max<size_t>(size, 1));
  return p;
}

// CARDNODE_TEST_SEED=N reruns a randomized test with the seed it printed.
inline uint32_t test_seed() {
  const char* env = std::getenv("CARDNODE_TEST_SEED");
  uint32_t seed = env != nullptr && *env != '\0'
                      ? static_cast<uint32_t>(std::strtoul(env, nullptr, 10))
                      : std::random_device{}();
  std::printf("seed %u (rerun with CARDNODE_TEST_SEED=%u)\n", seed, seed);
  return seed;
}

// --- a counting Fs -------------------------------------------------------------------------

// Counts calls per op; `full` makes allocate and O_CREAT opens fail with ENOSPC, as a full
// disk does; `allocate_errno` makes every allocate fail with it.
class TestFs final : public Fs {
 public:
  explicit TestFs(Fs& inner = Fs::real()) : inner_(inner) {}
  bool full = false;
  int allocate_errno = 0;
  std::map<std::string, uint32_t> calls;
  uint32_t total() const {
    uint32_t n = 0;
    for (const auto& [op, c] : calls) n += c;
    return n;
  }

  Result<UniqueFd> open(const std::string& path, int flags, uint32_t mode) override {
    ++calls["open"];
    if (full && (flags & O_CREAT) != 0 && ::access(path.c_str(), F_OK) != 0) {
      return fail_errno(ENOSPC, "open " + path + " (full)");
    }
    return inner_.open(path, flags, mode);
  }
  Status allocate(int fd, uint64_t offset, uint64_t len, const std::string& path) override {
    ++calls["allocate"];
    if (full) return fail_errno(ENOSPC, "fallocate " + path + " (full)");
    if (allocate_errno != 0) return fail_errno(allocate_errno, "fallocate " + path + " (injected)");
    return inner_.allocate(fd, offset, len, path);
  }
  Status write_at(int fd, std::string_view data, uint64_t offset,
                  const std::string& path) override {
    ++calls["write_at"];
    return inner_.write_at(fd, data, offset, path);
  }
  Status truncate(int fd, uint64_t len, const std::string& path) override {
    ++calls["truncate"];
    return inner_.truncate(fd, len, path);
  }
  Status sync(int fd, const std::string& path) override {
    ++calls["sync"];
    return inner_.sync(fd, path);
  }
  Status sync_dir(const std::string& dir) override {
    ++calls["sync_dir"];
    return inner_.sync_dir(dir);
  }
  Status rename(const std::string& from, const std::string& to) override {
    ++calls["rename"];
    return inner_.rename(from, to);
  }
  Status remove(const std::string& path) override {
    ++calls["remove"];
    return inner_.remove(path);
  }

 private:
  Fs& inner_;
};

// --- the fixture ---------------------------------------------------------------------------

class WalFixture : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    CARDNODE_SETUP_ENGINE(64);
    ASSERT_FALSE(tmp.path().empty());
    options.dir = tmp.path() + "/wal";
  }
  void TearDown() override {
#ifdef CARDNODE_FAULT_POINTS
    fault::disarm_all();
#endif
  }

  // Opens options.dir; what it replays lands in `replayed` / `replayed_seqs`.
  Result<std::unique_ptr<Wal>> open(IoEngine& e, uint64_t after_seq = 0,
                                    ReplayStats* stats = nullptr) {
    replayed.clear();
    replayed_seqs.clear();
    return Wal::open(
        e, options, after_seq,
        [this](uint64_t seq, std::string_view p) -> Status {
          replayed_seqs.push_back(seq);
          replayed.emplace_back(p);
          return {};
        },
        stats);
  }
  Result<std::unique_ptr<Wal>> open(uint64_t after_seq = 0, ReplayStats* stats = nullptr) {
    return open(*engine, after_seq, stats);
  }

  // Appends and waits until every record is durable; returns the payloads.
  std::vector<std::string> append_durably(Wal& wal, uint64_t count, size_t size,
                                          uint64_t first_id = 0) {
    std::vector<std::string> payloads;
    uint64_t acked = 0;
    for (uint64_t i = 0; i < count; ++i) {
      payloads.push_back(payload_for(first_id + i, size));
      auto st = wal.append(payloads.back(), [&acked](Status s) {
        EXPECT_TRUE(s) << s.error().describe();
        ++acked;
      });
      EXPECT_TRUE(st) << st.error().describe();
    }
    wal.drain();
    EXPECT_EQ(acked, count);
    return payloads;
  }

  // A WAL of `rounds` drained rounds of `per_round` records with sizes that vary (the
  // first append of a round goes out alone, the rest form a second batch), all acknowledged
  // and sealed; returns the payloads, seq i at index i - 1. The WAL is closed again.
  std::vector<std::string> build_acked(uint32_t rounds, uint32_t per_round) {
    std::vector<std::string> all;
    auto wal = open();
    EXPECT_TRUE(wal) << wal.error().describe();
    if (!wal) return all;
    for (uint32_t r = 0; r < rounds; ++r) {
      for (uint32_t i = 0; i < per_round; ++i) {
        uint64_t id = all.size();
        all.push_back(payload_for(id, 37 + (id * 53) % 211));
        EXPECT_TRUE((*wal)->append(all.back(), [](Status s) { EXPECT_TRUE(s); }));
      }
      (*wal)->drain();
    }
    return all;
  }

  TempDir tmp;
  std::unique_ptr<IoEngine> engine;
  WalOptions options;
  std::vector<std::string> replayed;
  std::vector<uint64_t> replayed_seqs;
};

inline std::vector<uint64_t> seq_range(uint64_t first, uint64_t last) {
  std::vector<uint64_t> out;
  for (uint64_t s = first; s <= last; ++s) out.push_back(s);
  return out;
}

}  // namespace cardnode::storage::waltest
