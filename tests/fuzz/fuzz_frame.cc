// fuzz_frame: net::FrameDecoder (net/frame.h) fed arbitrary bytes in arbitrary chunks.
// Input: byte 0 = how many chunk sizes follow (1-8) and whether next() is drained after
// every feed(); then the chunk sizes (1-256 bytes each, used in turn); the rest is the
// stream. Must hold: the decoder yields exactly the frames a plain front-to-back reading of
// the stream finds (each 1..kFrameBytesMax bytes), fails in the very feed() that completes
// the first bad length prefix and stays broken after it, and buffers no more than the
// bytes it was given (kFrameHeaderBytes + kFrameBytesMax + one chunk when drained).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string_view>
#include <vector>

#include "net/frame.h"

namespace {

void require(bool ok) {
  if (!ok) std::abort();
}

uint32_t be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace cardnode::net;
  if (size < 1) return 0;
  const size_t n_sizes = (data[0] & 7) + 1;
  const bool drain_each = (data[0] & 8) == 0;
  if (size < 1 + n_sizes) return 0;
  std::vector<size_t> sizes;
  for (size_t i = 0; i < n_sizes; ++i) sizes.push_back(size_t{data[1 + i]} + 1);
  const uint8_t* stream = data + 1 + n_sizes;
  const size_t len = size - 1 - n_sizes;

  // The reference reading: the frames in order, and where the first bad prefix completes.
  std::vector<std::string_view> frames;
  std::optional<size_t> bad_at;  // stream bytes needed to see the bad prefix
  for (size_t pos = 0; len - pos >= kFrameHeaderBytes;) {
    const uint32_t n = be32(stream + pos);
    if (n == 0 || n > kFrameBytesMax) {
      bad_at = pos + kFrameHeaderBytes;
      break;
    }
    if (len - pos - kFrameHeaderBytes < n) break;
    frames.emplace_back(reinterpret_cast<const char*>(stream) + pos + kFrameHeaderBytes, n);
    pos += kFrameHeaderBytes + n;
  }

  FrameDecoder dec;
  size_t fed = 0, taken = 0, taken_bytes = 0, chunk_no = 0;
  bool broken = false;
  auto drain = [&] {
    while (auto p = dec.next()) {
      require(!broken);
      require(taken < frames.size());
      require(!p->empty() && p->size() <= kFrameBytesMax);
      require(*p == frames[taken]);
      taken_bytes += kFrameHeaderBytes + p->size();
      ++taken;
    }
  };
  while (fed < len) {
    const size_t n = std::min(sizes[chunk_no++ % sizes.size()], len - fed);
    auto st = dec.feed(std::string_view(reinterpret_cast<const char*>(stream) + fed, n));
    fed += n;
    if (broken) {
      require(!st);  // stays broken
    } else {
      // Fails exactly when this chunk completed the first bad prefix.
      const bool should_fail = bad_at && fed >= *bad_at;
      require(static_cast<bool>(st) == !should_fail);
      broken = !st;
    }
    if (broken) {
      require(!dec.next());
      require(dec.buffered_bytes() == 0);
      continue;
    }
    require(dec.buffered_bytes() == fed - taken_bytes);
    if (drain_each) {
      drain();
      require(dec.buffered_bytes() <= kFrameHeaderBytes + kFrameBytesMax + n);
    }
  }
  if (!broken) {
    drain();
    require(taken == frames.size());  // every complete frame came out, in order
    require(dec.buffered_bytes() == len - taken_bytes);
  }
  return 0;
}
