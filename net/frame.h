// Frame format on every cardnode TCP connection, after the handshake (net/handshake.h):
//
//   frame := length (4 bytes, big-endian) | payload (length bytes)
//
// payload is one serialized pb::Request or pb::Response. A length of 0 or above
// kFrameBytesMax is a protocol error: the connection is closed and counted, never
// buffered. Pure code, no I/O; safe from any thread (no shared state).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "proto/error.h"

namespace google::protobuf {
class MessageLite;
}

namespace cardnode::net {

inline constexpr uint32_t kFrameHeaderBytes = 4;
inline constexpr uint32_t kFrameBytesMax = 4u << 20;  // 4 MiB

// Appends header + serialized message to *out. Fails if the message is too big.
[[nodiscard]] Status encode_frame(const google::protobuf::MessageLite& msg, std::string* out);

// Incremental decoder: feed() bytes as they arrive, then take frames with next().
// Holds the complete frames not yet taken plus at most one partial frame; a caller
// that drains next() after every feed() of N bytes buffers at most
// kFrameHeaderBytes + kFrameBytesMax + N. Every complete length prefix is checked in
// feed(), so a bad one fails there.
class FrameDecoder {
 public:
  // Fails (kInvalidArgument) on a bad length prefix; the decoder then stays broken
  // (every later feed() fails, next() returns nothing).
  [[nodiscard]] Status feed(std::string_view bytes);
  // The next complete payload, if any. The view is valid until the next feed()/next().
  std::optional<std::string_view> next();
  size_t buffered_bytes() const { return buffer_.size() - consumed_; }

 private:
  std::string buffer_;
  size_t consumed_ = 0;
  bool broken_ = false;
};

}  // namespace cardnode::net
