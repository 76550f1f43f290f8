// The CLI option table: parsing, defaults, typos, positionals, help.
#include <gtest/gtest.h>

#include "common/error.h"
#include "common/options.h"

using namespace slm::cli;

TEST(Options, ParsesLongFlagsBothForms) {
  Args a = parse({"data", "build", "--out", "/tmp/x", "--vocab=4096", "--src", "a", "--src", "b", "--force"});
  ASSERT_NE(a.command, nullptr);
  EXPECT_STREQ(a.command->name, "data build");
  EXPECT_EQ(a.str("out"), "/tmp/x");
  EXPECT_EQ(a.i64("vocab"), 4096);
  EXPECT_EQ(a.list("src"), (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(a.flag("force"));
}

TEST(Options, DefaultsComeFromTheTable) {
  Args a = parse({"data", "build", "--out", "x"});
  EXPECT_EQ(a.i64("vocab"), 8192);
  EXPECT_DOUBLE_EQ(a.f64("val-frac"), 0.01);
  EXPECT_FALSE(a.flag("force"));
  EXPECT_TRUE(a.list("src").empty());
}

TEST(Options, UnknownFlagSuggestsNearest) {
  try {
    parse({"data", "build", "--vocb", "10"});
    FAIL() << "expected an error";
  } catch (const slm::Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("unknown flag --vocb"), std::string::npos) << m;
    EXPECT_NE(m.find("did you mean --vocab?"), std::string::npos) << m;
  }
}

TEST(Options, FlagOfAnotherCommandIsUnknown) {
  EXPECT_THROW(parse({"data", "stats", "D", "--vocab", "10"}), slm::Error);
}

TEST(Options, UnknownCommandSuggestsNearest) {
  try {
    parse({"data", "biuld"});
    FAIL();
  } catch (const slm::Error& e) {
    EXPECT_NE(std::string(e.what()).find("did you mean 'data build'?"), std::string::npos) << e.what();
  }
}

TEST(Options, BadNumbersFailBeforeWork) {
  EXPECT_THROW(parse({"data", "build", "--vocab", "12k"}), slm::Error);
  EXPECT_THROW(parse({"data", "build", "--val-frac", "x"}), slm::Error);
  EXPECT_THROW(parse({"data", "build", "--vocab"}), slm::Error);
  EXPECT_THROW(parse({"data", "build", "--force=1"}), slm::Error);
  EXPECT_THROW(parse({"data", "build", "--out", "a", "--out", "b"}), slm::Error);
}

TEST(Options, Positionals) {
  Args a = parse({"data", "verify", "DIR"});
  ASSERT_EQ(a.positional.size(), 1u);
  EXPECT_EQ(a.positional[0], "DIR");
  EXPECT_THROW(parse({"data", "verify"}), slm::Error);
  EXPECT_THROW(parse({"data", "verify", "a", "b"}), slm::Error);
  EXPECT_THROW(parse({"data", "build", "stray"}), slm::Error);
  EXPECT_THROW(parse({"data", "build", "-v"}), slm::Error);
}

TEST(Options, HelpEverywhereShowsDefaults) {
  for (auto& c : command_table()) {
    Args a = parse([&] {
      std::vector<std::string> v;
      std::string s = c.name;
      size_t p;
      while ((p = s.find(' ')) != std::string::npos) v.push_back(s.substr(0, p)), s = s.substr(p + 1);
      v.push_back(s);
      v.push_back("--help");
      return v;
    }());
    ASSERT_EQ(a.command, &c);
    EXPECT_TRUE(a.has("help"));
    EXPECT_NE(help(&c).find(std::string("usage: slmlab ") + c.name), std::string::npos);
  }
  EXPECT_NE(help(&command_table()[0]).find("(default: 8192)"), std::string::npos);
  EXPECT_EQ(parse({"--help"}).command, nullptr);
}

TEST(Options, FlagNamesAreLongKebabCase) {
  for (auto& o : option_table()) {
    std::string n = o.name;
    EXPECT_TRUE(n.size() >= 2u || n == "n") << n;  // `eval compile --n N`: the issue's own spelling
    for (char c : n) EXPECT_TRUE((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-') << n;
  }
}

TEST(Options, EditDistance) {
  EXPECT_EQ(edit_distance("kitten", "sitting"), 3u);
  EXPECT_EQ(edit_distance("", "abc"), 3u);
  EXPECT_EQ(nearest("--vocabb", {"--vocab", "--out"}), "--vocab");
  EXPECT_EQ(nearest("--zzzzzzzz", {"--vocab", "--out"}), "");
}
