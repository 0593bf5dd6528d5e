#include "proto/text.h"

#include <gtest/gtest.h>

#include <string>

namespace cardnode {
namespace {

TEST(Text, Utf8Validation) {
  EXPECT_TRUE(is_utf8("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));
  EXPECT_FALSE(is_utf8("caf\xe9"));
  EXPECT_FALSE(is_utf8("\xc0\xaf"));          // overlong '/'
  EXPECT_FALSE(is_utf8("\xed\xa0\x80"));      // a surrogate
  EXPECT_FALSE(is_utf8("\xf4\x90\x80\x80"));  // past U+10FFFF
  EXPECT_FALSE(is_utf8("\xe2\x82"));          // cut short
  EXPECT_FALSE(is_utf8("\x80"));
}

TEST(Text, ShownEscapesWhatIsNotPrintableUtf8) {
  EXPECT_EQ(shown("echo hi"), "echo hi");
  EXPECT_EQ(shown("caf\xc3\xa9"), "caf\xc3\xa9");  // UTF-8 as it is
  EXPECT_EQ(shown("caf\xe9"), "caf\\xe9");
  EXPECT_EQ(shown("a\nb\tc\x7f"), "a\\x0ab\\x09c\\x7f");
  EXPECT_EQ(shown("a\\xe9"), "a\\\\xe9");      // a literal backslash is not an escape
  EXPECT_EQ(shown("\xc2\x85"), "\\xc2\\x85");  // C1 control
  EXPECT_EQ(shown(std::string("\0", 1)), "\\x00");
  EXPECT_TRUE(is_utf8(shown("\xff\xfe\xc3")));
}

TEST(Text, JsonQuotedAlwaysUtf8) {
  EXPECT_EQ(json_quoted("say \"hi\"\n"), "\"say \\\"hi\\\"\\n\"");
  EXPECT_EQ(json_quoted("caf\xc3\xa9"), "\"caf\xc3\xa9\"");
  EXPECT_EQ(json_quoted("caf\xe9"), "\"caf\xef\xbf\xbd\"");  // U+FFFD per byte
  EXPECT_EQ(json_quoted("\xe2\x82"), "\"\xef\xbf\xbd\xef\xbf\xbd\"");
  EXPECT_EQ(json_quoted("a\x01"), "\"a\\u0001\"");
}

TEST(Text, PrefixNeverSplitsACharacterAndStaysInBudget) {
  EXPECT_EQ(prefix_bytes("abc", 5), 3u);
  EXPECT_EQ(prefix_bytes("ab\xc3\xa9", 3), 2u);        // é would be split
  EXPECT_EQ(prefix_bytes("\xf0\x9f\x98\x80", 3), 0u);  // so would the emoji
  EXPECT_EQ(prefix_bytes("\xf0\x9f\x98\x80x", 4), 4u);
  // Not UTF-8: continuation bytes with no lead are cut at the budget, not backed over.
  const std::string stray(100, '\x80');
  EXPECT_EQ(prefix_bytes(stray, 50), 50u);
  EXPECT_EQ(prefix_bytes("ab\xff\x80\x80", 4), 4u);
  EXPECT_EQ(prefix_bytes("ab\xe9\x80\x80\x80", 4), 2u);  // U+9000, then a stray byte
  for (size_t max = 0; max < 8; ++max)
    EXPECT_LE(prefix_bytes("\xff\x80\xc3\xa9\xe9\x80", max), max);
}

TEST(Text, ShownPrefixNeverSplitsAnEscape) {
  const std::string t = shown("ab\xe9\\\xc3\xa9");  // "ab\\xe9\\\\é"
  EXPECT_EQ(t, "ab\\xe9\\\\\xc3\xa9");
  EXPECT_EQ(shown_prefix_bytes(t, 2), 2u);
  EXPECT_EQ(shown_prefix_bytes(t, 5), 2u);  // not into \xe9
  EXPECT_EQ(shown_prefix_bytes(t, 6), 6u);
  EXPECT_EQ(shown_prefix_bytes(t, 7), 6u);  // not into the escaped backslash
  EXPECT_EQ(shown_prefix_bytes(t, 9), 8u);  // nor into é
  EXPECT_EQ(shown_prefix_bytes(t, 100), t.size());
}

TEST(Text, EnvNames) {
  EXPECT_FALSE(env_name_error("PATH").has_value());
  EXPECT_FALSE(env_name_error("caf\xc3\xa9").has_value());
  EXPECT_TRUE(env_name_error("").has_value());
  EXPECT_TRUE(env_name_error("A=B").has_value());
  EXPECT_TRUE(env_name_error(std::string("A\0B", 3)).has_value());
  EXPECT_EQ(*env_name_error("caf\xe9"), "environment variable name 'caf\\xe9' is not UTF-8");
}

}  // namespace
}  // namespace cardnode
