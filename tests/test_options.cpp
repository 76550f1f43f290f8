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

// Issue 18 §3: every numeric option is range-checked at parse time. Nothing is cut to 32 bits (a
// caller stores counts in an int), nothing negative or non-finite runs as if it were a default.
TEST(Options, NumbersOutOfRangeAreRefusedNeverTruncated) {
  auto refused = [](std::vector<std::string> argv, const std::string& needle) {
    try {
      parse(argv);
      ADD_FAILURE() << "accepted: " << argv.back();
    } catch (const slm::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  refused({"data", "build", "--vocab", "4294969344"}, "outside [0, 2147483647]");
  refused({"demo", "--jobs", "4294967298"}, "outside [0, 2147483647]");
  refused({"ablate", "P", "--jobs", "99999999999999999999"}, "outside");
  refused({"eval", "bpb", "R", "--context", "-5"}, "--context -5 is outside");
  refused({"eval", "bpb", "R", "--tokens", "-1"}, "--tokens -1 is outside");
  refused({"generate", "R", "--top-k", "-5"}, "--top-k -5 is outside");
  refused({"generate", "R", "--seed", "-1"}, "--seed -1 is outside");
  refused({"generate", "R", "--max-tokens", "+5"}, "expects a whole number");
  refused({"generate", "R", "--max-tokens", " 5"}, "expects a whole number");
  refused({"eval", "compile", "R", "--temperature", "nan"}, "finite");
  refused({"eval", "compile", "R", "--temperature", "inf"}, "finite");
  refused({"eval", "compile", "R", "--temperature", "1e999"}, "finite");
  refused({"generate", "R", "--temperature", "-0.5"}, "must be >= 0");
  refused({"ablate", "P", "--poll", "-nan"}, "finite");
  // In range: the widest int, and seeds wider than 32 bits.
  EXPECT_EQ(parse({"data", "build", "--vocab", "2147483647"}).i64("vocab"), 2147483647);
  EXPECT_EQ(parse({"generate", "R", "--seed", "9223372036854775807"}).i64("seed"), 9223372036854775807LL);
  EXPECT_DOUBLE_EQ(parse({"generate", "R", "--temperature", "0.7"}).f64("temperature"), 0.7);
}

// Every number the table declares obeys the same rule, so a new option cannot forget it.
TEST(Options, EveryNumericDefaultIsInRange) {
  for (auto& o : option_table()) {
    if (o.type != OptType::Int && o.type != OptType::Seed && o.type != OptType::Float) continue;
    std::string cmd = o.commands;
    cmd = cmd.substr(0, cmd.find('|'));
    std::vector<std::string> argv;
    for (size_t p = 0, q; p <= cmd.size(); p = q + 1) {
      q = cmd.find(' ', p);
      if (q == std::string::npos) q = cmd.size();
      argv.push_back(cmd.substr(p, q - p));
    }
    const CommandSpec* spec = nullptr;
    for (auto& c : command_table())
      if (cmd == c.name) spec = &c;
    ASSERT_NE(spec, nullptr) << cmd;
    if (std::string(spec->positional).size() && spec->positional[0] != '[') argv.push_back("X");
    Args a = parse(argv);
    if (o.type == OptType::Float) EXPECT_GE(a.f64(o.name), 0) << o.name;
    else EXPECT_GE(a.i64(o.name), 0) << o.name;
    argv.push_back(std::string("--") + o.name);
    argv.push_back("-1");
    EXPECT_THROW(parse(argv), slm::Error) << o.name;
  }
}
