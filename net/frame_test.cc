#include "net/frame.h"

#include <gtest/gtest.h>

#include <random>

#include "cardnode.pb.h"

namespace cardnode::net {
namespace {

std::vector<pb::Request> sample_requests() {
  std::vector<pb::Request> out;
  pb::Request a;
  a.set_id(1);
  a.mutable_list_jobs();
  out.push_back(a);
  pb::Request b;
  b.set_id(0xFFFFFFFFFFFFull);
  b.mutable_submit()->mutable_spec()->set_name("render");
  b.mutable_submit()->mutable_spec()->add_command("./render.sh");
  b.mutable_submit()->mutable_spec()->set_count(500);
  out.push_back(b);
  pb::Request c;
  c.set_id(3);
  c.mutable_read_log()->set_job_id(7);
  c.mutable_read_log()->set_max_bytes(1 << 20);
  out.push_back(c);
  pb::Request big;  // larger than a typical read chunk
  big.set_id(4);
  big.mutable_submit()->mutable_spec()->set_name(std::string(200000, 'x'));
  out.push_back(big);
  return out;
}

std::string encode_all(const std::vector<pb::Request>& reqs) {
  std::string wire;
  for (const pb::Request& r : reqs) EXPECT_TRUE(encode_frame(r, &wire).has_value());
  return wire;
}

std::vector<std::string> drain(FrameDecoder* d) {
  std::vector<std::string> out;
  while (std::optional<std::string_view> p = d->next()) out.emplace_back(*p);
  return out;
}

void expect_same(const std::vector<pb::Request>& want, const std::vector<std::string>& got) {
  ASSERT_EQ(want.size(), got.size());
  for (size_t i = 0; i < want.size(); ++i) {
    pb::Request r;
    ASSERT_TRUE(r.ParseFromString(got[i]));
    EXPECT_EQ(r.SerializeAsString(), want[i].SerializeAsString()) << "frame " << i;
  }
}

std::string header(uint32_t length) {
  std::string h(4, '\0');
  h[0] = static_cast<char>(length >> 24);
  h[1] = static_cast<char>(length >> 16);
  h[2] = static_cast<char>(length >> 8);
  h[3] = static_cast<char>(length);
  return h;
}

TEST(Frame, EncodeWritesBigEndianLengthThenPayload) {
  pb::Request r;
  r.set_id(300);
  std::string wire = "prefix";
  ASSERT_TRUE(encode_frame(r, &wire).has_value());
  const std::string payload = r.SerializeAsString();
  EXPECT_EQ(wire, "prefix" + header(static_cast<uint32_t>(payload.size())) + payload);
}

TEST(Frame, RoundTripInOneChunk) {
  const auto reqs = sample_requests();
  FrameDecoder d;
  ASSERT_TRUE(d.feed(encode_all(reqs)).has_value());
  expect_same(reqs, drain(&d));
  EXPECT_EQ(d.buffered_bytes(), 0u);
}

TEST(Frame, RoundTripByteByByte) {
  const auto reqs = sample_requests();
  const std::string wire = encode_all(reqs);
  FrameDecoder d;
  std::vector<std::string> got;
  for (char ch : wire) {
    ASSERT_TRUE(d.feed(std::string_view(&ch, 1)).has_value());
    for (std::string& p : drain(&d)) got.push_back(std::move(p));
    // Drained after every byte: never more than one partial frame is held.
    EXPECT_LE(d.buffered_bytes(), kFrameHeaderBytes + kFrameBytesMax);
  }
  expect_same(reqs, got);
  EXPECT_EQ(d.buffered_bytes(), 0u);
}

TEST(Frame, RoundTripRandomChunks) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const auto reqs = sample_requests();
  const std::string wire = encode_all(reqs);
  FrameDecoder d;
  std::vector<std::string> got;
  size_t pos = 0;
  while (pos < wire.size()) {
    const size_t n = std::min<size_t>(wire.size() - pos, 1 + rng() % 70000);
    ASSERT_TRUE(d.feed(std::string_view(wire).substr(pos, n)).has_value());
    pos += n;
    for (std::string& p : drain(&d)) got.push_back(std::move(p));
  }
  expect_same(reqs, got);
}

TEST(Frame, SplitHeaderWaitsForTheRest) {
  pb::Request r;
  r.set_id(9);
  std::string wire;
  ASSERT_TRUE(encode_frame(r, &wire).has_value());
  FrameDecoder d;
  ASSERT_TRUE(d.feed(wire.substr(0, 2)).has_value());
  EXPECT_FALSE(d.next().has_value());
  ASSERT_TRUE(d.feed(wire.substr(2, 2)).has_value());
  EXPECT_FALSE(d.next().has_value());
  ASSERT_TRUE(d.feed(wire.substr(4)).has_value());
  std::optional<std::string_view> p = d.next();
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(*p, r.SerializeAsString());
  EXPECT_FALSE(d.next().has_value());
}

TEST(Frame, ZeroLengthIsRejected) {
  FrameDecoder d;
  Status st = d.feed(header(0));
  ASSERT_FALSE(st.has_value());
  EXPECT_EQ(st.error().code, Errc::kInvalidArgument);
}

TEST(Frame, LengthAboveMaxIsRejectedWithoutBuffering) {
  FrameDecoder d;
  Status st = d.feed(header(kFrameBytesMax + 1));
  ASSERT_FALSE(st.has_value());
  EXPECT_EQ(st.error().code, Errc::kInvalidArgument);
  EXPECT_EQ(d.buffered_bytes(), 0u);

  FrameDecoder e;
  EXPECT_FALSE(e.feed(header(0xFFFFFFFFu)).has_value());
}

TEST(Frame, LengthAtMaxIsAccepted) {
  FrameDecoder d;
  ASSERT_TRUE(d.feed(header(kFrameBytesMax)).has_value());
  ASSERT_TRUE(d.feed(std::string(kFrameBytesMax, 'a')).has_value());
  std::optional<std::string_view> p = d.next();
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->size(), kFrameBytesMax);
}

TEST(Frame, BadLengthAfterGoodFrameFailsInFeed) {
  pb::Request r;
  r.set_id(1);
  std::string wire;
  ASSERT_TRUE(encode_frame(r, &wire).has_value());
  wire += header(kFrameBytesMax + 1);
  FrameDecoder d;
  EXPECT_FALSE(d.feed(wire).has_value());
  EXPECT_FALSE(d.next().has_value());  // nothing is handed out once broken
}

TEST(Frame, DecoderStaysBrokenAfterError) {
  FrameDecoder d;
  ASSERT_FALSE(d.feed(header(0)).has_value());
  pb::Request r;
  r.set_id(1);
  std::string good;
  ASSERT_TRUE(encode_frame(r, &good).has_value());
  EXPECT_FALSE(d.feed(good).has_value());
  EXPECT_FALSE(d.next().has_value());
}

TEST(Frame, EncodeRejectsOversizeAndEmpty) {
  pb::Request big;
  big.set_id(1);
  big.mutable_submit()->mutable_spec()->set_name(std::string(kFrameBytesMax, 'x'));
  std::string wire = "keep";
  Status st = encode_frame(big, &wire);
  ASSERT_FALSE(st.has_value());
  EXPECT_EQ(st.error().code, Errc::kInvalidArgument);
  EXPECT_EQ(wire, "keep");

  pb::Request empty;  // serializes to zero bytes, which no decoder would accept
  EXPECT_FALSE(encode_frame(empty, &wire).has_value());
  EXPECT_EQ(wire, "keep");
}

}  // namespace
}  // namespace cardnode::net
