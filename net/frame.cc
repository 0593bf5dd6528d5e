#include "net/frame.h"

#include <google/protobuf/message_lite.h>

namespace cardnode::net {
namespace {

// Above this, an emptied buffer gives its memory back: one 4 MiB frame must not pin
// 4 MiB per connection for the connection's lifetime.
constexpr size_t kIdleCapacityBytesMax = 64u << 10;

uint32_t load_be32(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  return (uint32_t{u[0]} << 24) | (uint32_t{u[1]} << 16) | (uint32_t{u[2]} << 8) | uint32_t{u[3]};
}

void store_be32(uint32_t v, char* p) {
  p[0] = static_cast<char>(v >> 24);
  p[1] = static_cast<char>(v >> 16);
  p[2] = static_cast<char>(v >> 8);
  p[3] = static_cast<char>(v);
}

bool length_ok(uint32_t length) {
  return length != 0 && length <= kFrameBytesMax;
}

}  // namespace

Status encode_frame(const google::protobuf::MessageLite& msg, std::string* out) {
  const size_t size = msg.ByteSizeLong();
  // 0 is refused too: the decoder treats a zero length as a protocol error.
  if (size == 0 || size > kFrameBytesMax) {
    return fail(Errc::kInvalidArgument, "cannot frame a " + std::to_string(size) +
                                            "-byte message (limit " +
                                            std::to_string(kFrameBytesMax) + ", minimum 1)");
  }
  const size_t start = out->size();
  out->resize(start + kFrameHeaderBytes + size);
  store_be32(static_cast<uint32_t>(size), out->data() + start);
  if (!msg.SerializeWithCachedSizesToArray(
          reinterpret_cast<uint8_t*>(out->data() + start + kFrameHeaderBytes))) {
    out->resize(start);
    return fail(Errc::kInternal, "cannot serialize " + msg.GetTypeName());
  }
  return {};
}

Status FrameDecoder::feed(std::string_view bytes) {
  if (broken_) return fail(Errc::kInvalidArgument, "frame decoder used after a protocol error");
  if (consumed_ > 0) {  // compact: views handed out by next() die here, as documented
    buffer_.erase(0, consumed_);
    consumed_ = 0;
    if (buffer_.empty() && buffer_.capacity() > kIdleCapacityBytesMax) buffer_.shrink_to_fit();
  }
  buffer_.append(bytes);
  // Check every length prefix that is now complete, so a bad one fails here, before
  // anything after it is buffered or handed out.
  size_t pos = 0;
  while (buffer_.size() - pos >= kFrameHeaderBytes) {
    const uint32_t length = load_be32(buffer_.data() + pos);
    if (!length_ok(length)) {
      broken_ = true;
      buffer_.clear();
      buffer_.shrink_to_fit();
      return fail(Errc::kInvalidArgument, "bad frame length " + std::to_string(length) +
                                              " (limit " + std::to_string(kFrameBytesMax) + ")");
    }
    if (buffer_.size() - pos - kFrameHeaderBytes < length) break;
    pos += kFrameHeaderBytes + length;
  }
  return {};
}

std::optional<std::string_view> FrameDecoder::next() {
  if (broken_) return std::nullopt;
  const size_t available = buffer_.size() - consumed_;
  if (available < kFrameHeaderBytes) return std::nullopt;
  const uint32_t length = load_be32(buffer_.data() + consumed_);
  CARDNODE_CHECK(length_ok(length));  // feed() validated every complete header
  if (available - kFrameHeaderBytes < length) return std::nullopt;
  std::string_view payload(buffer_.data() + consumed_ + kFrameHeaderBytes, length);
  consumed_ += kFrameHeaderBytes + length;
  return payload;
}

}  // namespace cardnode::net
