// Compile-rate evaluation: function prompts, brace cutting, the Wilson interval, and the sandboxed
// compile check against planted hostile samples.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <thread>

#include "common/error.h"
#include "common/fs.h"
#include "eval/extract.h"
#include "eval/sandbox.h"
#include "test_util.h"

namespace {

using namespace slm;
using namespace slm::eval;

// --- cut_at_matching_brace ----------------------------------------------------------------------

std::string cut(const std::string& s, int depth = 1) {
  std::optional<std::string> c = cut_at_matching_brace(s, depth);
  return c ? *c : "<open>";
}

TEST(CutAtMatchingBrace, StopsAtTheBraceThatClosesTheFunction) {
  EXPECT_EQ(cut("return 1; }\nint g() { return 2; }\n"), "return 1; }");
  EXPECT_EQ(cut("if (x) { y(); } else { z(); } return 2; } tail"), "if (x) { y(); } else { z(); } return 2; }");
  EXPECT_EQ(cut("}"), "}");
  EXPECT_EQ(cut("a(); } } }", 2), "a(); } }");
}

TEST(CutAtMatchingBrace, IgnoresBracesInLiteralsAndComments) {
  EXPECT_EQ(cut("auto s = \"}\"; return s; } x"), "auto s = \"}\"; return s; }");
  EXPECT_EQ(cut("auto s = \"\\\"}\"; } x"), "auto s = \"\\\"}\"; }");
  EXPECT_EQ(cut("char c = '}'; char d = '{'; char e = '\\''; } x"), "char c = '}'; char d = '{'; char e = '\\''; }");
  EXPECT_EQ(cut("// } not this one\n  return; } x"), "// } not this one\n  return; }");
  EXPECT_EQ(cut("/* } { } */ f(); } x"), "/* } { } */ f(); }");
  EXPECT_EQ(cut("auto r = R\"(})\"; } x"), "auto r = R\"(})\"; }");
  EXPECT_EQ(cut("auto r = R\"d( )\" } )d\"; } x"), "auto r = R\"d( )\" } )d\"; }");
  EXPECT_EQ(cut("auto w = u8R\"x({{{)x\"; } x"), "auto w = u8R\"x({{{)x\"; }");
  EXPECT_EQ(cut("int n = 1'000'000; } x"), "int n = 1'000'000; }") << "a digit separator is not a char literal";
  EXPECT_EQ(cut("#define OPEN {\n  x(); } y"), "#define OPEN {\n  x(); }") << "preprocessor lines do not count";
  EXPECT_EQ(cut("struct S { int a{1}; } s; return s.a; } tail"), "struct S { int a{1}; } s; return s.a; }");
}

TEST(CutAtMatchingBrace, NeverClosedIsNullopt) {
  EXPECT_FALSE(cut_at_matching_brace("if (x) { y(); "));
  EXPECT_FALSE(cut_at_matching_brace("return \"}\"; // }\n"));
  EXPECT_FALSE(cut_at_matching_brace(""));
  EXPECT_FALSE(cut_at_matching_brace("}", 2));
  EXPECT_THROW(cut_at_matching_brace("}", 0), Error);
}

// --- find_function_prompts ----------------------------------------------------------------------

// Free functions, a leading macro with arguments, a template with a comment, methods in a class
// (constructor with member brace-inits, destructor, operators), a nested struct, an out-of-class
// method, namespaces, a linkage block, and things that are not function definitions (lambdas,
// initializers, enums, a brace macro).
const char* kDemo = R"cpp(// File header comment.
#include <functional>
#include <string>
#define OPEN_BRACE {

struct Base {};

namespace demo {

/// @brief Adds two numbers.
int add(int a, int b) {
  return a + b;  // } in a comment
}

#define DEPRECATED(msg) [[deprecated(msg)]]
DEPRECATED("use add") int old_add(int a) noexcept { return a; }

// Runs the thing twice.
// Second line of the comment.
template <typename T, typename = std::enable_if_t<(sizeof(T) > 1)>>
T twice(const T& x) {
  const char* s = "}{";
  (void)s;
  return x + x;
}

class Widget : public Base {
 public:
  /** Makes a widget. */
  Widget() : size_{0}, name_("w") {
    init();
  }
  ~Widget() {}
  int size() const noexcept { return size_; }
  bool operator==(const Widget& o) const { return size_ == o.size_; }
  void operator()(int x) { size_ = x; }
  std::function<void(int)> callback{[](int) {}};
  int declared_only();

 private:
  void init() { char c = '{'; (void)c; }
  struct Inner {
    int get() { return R"(})"[0]; }
  };
  int size_ = 0;
  std::string name_;
};

int Widget::declared_only() {
  auto lambda = [](int v) { return v; };
  return lambda(3);
}

auto make_lambda = [](int x) { return x; };
int table[] = {1, 2, 3};
enum class Color { Red, Green };

namespace inner {
inline auto trailing(int x) -> int { return x; }
}  // namespace inner

}  // namespace demo

extern "C" {
int c_func(void) { return 0; }
}
)cpp";

TEST(FindFunctionPrompts, FindsEveryDefinitionAtNamespaceAndClassScope) {
  std::string text = kDemo;
  std::vector<FunctionPrompt> fs = find_function_prompts(text);
  std::vector<std::string> names;
  for (const FunctionPrompt& f : fs) names.push_back(f.name);
  EXPECT_EQ(names, (std::vector<std::string>{"add", "old_add", "twice", "Widget", "~Widget", "size", "operator==", "operator()",
                                             "init", "get", "Widget::declared_only", "trailing", "c_func"}));
  std::map<std::string, FunctionPrompt> by;
  for (const FunctionPrompt& f : fs) by[f.name] = f;

  EXPECT_EQ(by["add"].prompt, "/// @brief Adds two numbers.\nint add(int a, int b) {");
  EXPECT_EQ(by["add"].body, "\n  return a + b;  // } in a comment\n");
  EXPECT_EQ(by["twice"].prompt,
            "// Runs the thing twice.\n// Second line of the comment.\n"
            "template <typename T, typename = std::enable_if_t<(sizeof(T) > 1)>>\nT twice(const T& x) {");
  EXPECT_EQ(by["Widget"].prompt, "/** Makes a widget. */\n  Widget() : size_{0}, name_(\"w\") {");
  EXPECT_EQ(by["Widget"].body, "\n    init();\n  ");
  EXPECT_EQ(by["~Widget"].prompt, "~Widget() {") << "no comment above: the prompt is the declaration";
  EXPECT_EQ(by["~Widget"].body, "");
  EXPECT_EQ(by["get"].body, " return R\"(})\"[0]; ");
  EXPECT_EQ(by["Widget::declared_only"].body, "\n  auto lambda = [](int v) { return v; };\n  return lambda(3);\n");
  EXPECT_EQ(by["trailing"].prompt, "inline auto trailing(int x) -> int {");
  for (const FunctionPrompt& f : fs) {
    // Offsets agree with the texts, and the reference body spliced back is the original file.
    EXPECT_EQ(text.substr(f.begin, f.body_begin - f.begin), f.prompt) << f.name;
    EXPECT_EQ(text[f.body_begin - 1], '{') << f.name;
    EXPECT_EQ(text[f.body_end], '}') << f.name;
    EXPECT_LE(f.begin, f.decl_begin);
    EXPECT_EQ(splice_completion(text, f, f.body + "}"), text) << f.name;
    // The reference body passes the brace cutter unchanged.
    EXPECT_EQ(cut_at_matching_brace(f.body + "}\n\nint next() {}\n"), f.body + "}") << f.name;
  }
}

TEST(FindFunctionPrompts, SurvivesUnbalancedAndEmptyInput) {
  EXPECT_TRUE(find_function_prompts("").empty());
  EXPECT_TRUE(find_function_prompts("int x;\n").empty());
  std::vector<FunctionPrompt> fs = find_function_prompts("int ok() { return 1; }\nint broken() { if (x) {\n");
  ASSERT_EQ(fs.size(), 1u);
  EXPECT_EQ(fs[0].name, "ok");
}

// --- wilson_interval ---------------------------------------------------------------------------

TEST(Wilson, MatchesKnownValues) {
  Interval a = wilson_interval(5, 10);
  EXPECT_NEAR(a.lo, 0.2366, 1e-4);
  EXPECT_NEAR(a.hi, 0.7634, 1e-4);
  Interval zero = wilson_interval(0, 10);
  EXPECT_DOUBLE_EQ(zero.lo, 0.0);
  EXPECT_NEAR(zero.hi, 0.2775, 1e-4);  // z^2 / (n + z^2)
  Interval all = wilson_interval(10, 10);
  EXPECT_NEAR(all.lo, 0.7225, 1e-4);
  EXPECT_DOUBLE_EQ(all.hi, 1.0);
  Interval article = wilson_interval(11, 100);  // the article's 11.0%
  EXPECT_NEAR(article.lo, 0.0625, 1e-4);
  EXPECT_NEAR(article.hi, 0.1863, 1e-4);
  Interval none = wilson_interval(0, 0);
  EXPECT_EQ(none.lo, 0.0);
  EXPECT_EQ(none.hi, 1.0);
  // Symmetry: the interval of failures mirrors the interval of successes.
  Interval s = wilson_interval(37, 120), f = wilson_interval(83, 120);
  EXPECT_NEAR(s.lo, 1 - f.hi, 1e-12);
  EXPECT_THROW(wilson_interval(11, 10), Error);
  EXPECT_THROW(wilson_interval(-1, 10), Error);
}

// --- sandbox -----------------------------------------------------------------------------------

// The sandbox is required: a machine without bwrap fails here with the install command.
class Sandbox : public testing::Test {
 protected:
  void SetUp() override {
    try {
      require_sandbox();
    } catch (const Error& e) {
      FAIL() << e.what();
    }
  }
  // Small limits keep the hostile samples fast.
  static SandboxOptions tight() {
    SandboxOptions o;
    o.cpu_seconds = 2;
    o.wall_seconds = 8;
    o.memory_bytes = 1ull << 30;
    return o;
  }
};

TEST_F(Sandbox, ValidCodeCompiles) {
  CompileResult r = check_compiles(
      "#include <vector>\n#include <string>\n#include <map>\n"
      "int main() { std::map<std::string, std::vector<int>> m{{\"a\", {1}}}; return (int)m.size(); }\n");
  EXPECT_TRUE(r.ok) << r.output;
  EXPECT_EQ(r.status, CompileStatus::Ok);
  EXPECT_EQ(r.exit_code, 0);
}

TEST_F(Sandbox, SyntaxErrorFailsWithTheErrorLine) {
  CompileResult r = check_compiles("int main() {\n  return 0\n}\n");
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.status, CompileStatus::CompileError) << compile_status_name(r.status);
  EXPECT_NE(r.first_error.find("main.cpp:2"), std::string::npos) << r.first_error;
  EXPECT_NE(r.first_error.find("error: expected ';'"), std::string::npos) << r.first_error;
}

TEST_F(Sandbox, FilesOutsideTheAllowedPathsAreInvisible) {
  ASSERT_TRUE(fs::exists("/etc/passwd")) << "the test needs a host file outside the sandbox";
  CompileResult r = check_compiles("#include \"/etc/passwd\"\nint main() {}\n");
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.status, CompileStatus::CompileError);
  EXPECT_NE(r.first_error.find("/etc/passwd: No such file or directory"), std::string::npos) << r.first_error;

  r = check_compiles("#include \"../../../../../../etc/passwd\"\nint main() {}\n");
  EXPECT_FALSE(r.ok) << "a relative path does not escape /src";

  // A host file under /tmp (the sandbox has its own empty /tmp), the project tree under /work or
  // /home, and /usr/share (not a compiler directory) are all absent; the standard headers are present.
  test::TempDir host;
  test::write(host / "secret.h", "#error the host's /tmp is visible\n");
  std::string src = "#if !__has_include(<vector>)\n#error the standard headers are not visible\n#endif\n";
  std::vector<std::string> hidden = {host / "secret.h", std::string(SLMLAB_SOURCE_DIR) + "/CMakeLists.txt", "/etc/passwd"};
  if (fs::exists("/usr/share/dpkg/cputable")) hidden.push_back("/usr/share/dpkg/cputable");
  for (const std::string& p : hidden) {
    ASSERT_TRUE(fs::exists(p)) << p << " should exist on the host for this check to mean anything";
    src += "#if __has_include(\"" + p + "\")\n#error " + p + " is visible\n#endif\n";
  }
  r = check_compiles(src);
  EXPECT_TRUE(r.ok) << r.output;
}

TEST_F(Sandbox, RunawayTemplateRecursionIsStopped) {
  // Unbounded depth: the compiler's own depth limit ends it, quickly.
  CompileResult depth = check_compiles(
      "template <int N> struct R { static const int v = R<N + 1>::v; };\nint x = R<0>::v;\n", tight());
  EXPECT_FALSE(depth.ok);
  EXPECT_EQ(depth.status, CompileStatus::CompileError);
  EXPECT_NE(depth.output.find("instantiation depth exceeds"), std::string::npos) << depth.first_error;

  // Bounded depth, 2^28 distinct instantiations: only the memory or the CPU limit stops it.
  const std::string wide =
      "template <int N, int K> struct T { static constexpr long v = T<N - 1, 2 * K>::v + T<N - 1, 2 * K + 1>::v; };\n"
      "template <int K> struct T<0, K> { static constexpr long v = 1; };\n"
      "long x = T<28, 0>::v;\n";
  SandboxOptions small_memory = tight();
  small_memory.memory_bytes = 256ull << 20;
  small_memory.cpu_seconds = 20;
  small_memory.wall_seconds = 30;  // generous: a loaded machine must still reach the memory limit first
  CompileResult mem = check_compiles(wide, small_memory);
  EXPECT_EQ(mem.status, CompileStatus::MemoryLimit) << compile_status_name(mem.status) << ": " << mem.output;
  EXPECT_LT(mem.wall_seconds, small_memory.wall_seconds);

  SandboxOptions short_cpu = tight();
  short_cpu.cpu_seconds = 1;
  short_cpu.wall_seconds = 30;  // CPU seconds, not wall seconds, must end it
  CompileResult cpu = check_compiles(wide, short_cpu);
  EXPECT_EQ(cpu.status, CompileStatus::CpuLimit) << compile_status_name(cpu.status) << ": " << cpu.output;
  EXPECT_LT(cpu.wall_seconds, short_cpu.wall_seconds);
  EXPECT_FALSE(mem.ok || cpu.ok);
}

TEST_F(Sandbox, WallClockLimitKillsTheCompiler) {
  SandboxOptions o = tight();
  o.cpu_seconds = 60;  // so the wall clock, not RLIMIT_CPU, ends it
  o.wall_seconds = 1.5;
  auto t0 = std::chrono::steady_clock::now();
  CompileResult r = check_compiles(
      "constexpr long spin() { long s = 0; for (long i = 0; i < 200000; ++i) for (long j = 0; j < 200000; ++j) s += j;"
      " return s; }\nconstexpr long x = spin();\n",
      o);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(r.status, CompileStatus::Timeout) << compile_status_name(r.status) << ": " << r.output;
  EXPECT_FALSE(r.ok);
  EXPECT_LT(secs, 4.0);
}

TEST_F(Sandbox, HugeOutputIsCut) {
  SandboxOptions o = tight();
  o.max_output_bytes = 4096;
  std::string src;
  for (int i = 0; i < 5000; ++i) src += "#warning this line makes the compiler print a lot of text\n";
  CompileResult r = check_compiles(src, o);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.status, CompileStatus::OutputLimit) << compile_status_name(r.status);
  EXPECT_LE(r.output.size(), o.max_output_bytes);
}

TEST(SandboxMissing, RefusesWithTheInstallCommandInsteadOfRunningUnsandboxed) {
  SandboxOptions o;
  o.bwrap = "/nonexistent/bwrap";
  CompileResult r = check_compiles("int main() {}\n", o);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.status, CompileStatus::SandboxUnavailable);
  EXPECT_NE(r.first_error.find("apt-get install bubblewrap"), std::string::npos) << r.first_error;
  try {
    require_sandbox(o);
    FAIL() << "require_sandbox accepted a missing bwrap";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[sandbox]"), std::string::npos) << e.what();
  }
}

TEST_F(Sandbox, ExtractedFunctionsCompileInTheirFileContext) {
  std::string text = kDemo;
  std::vector<FunctionPrompt> fs = find_function_prompts(text);
  ASSERT_FALSE(fs.empty());
  const FunctionPrompt& add = fs[0];
  ASSERT_EQ(add.name, "add");
  // A generation that runs past the function: cut, spliced back, compiled.
  std::optional<std::string> good = cut_at_matching_brace("\n  return b + a;\n}\n\nint extra() { return 0; }\n");
  ASSERT_TRUE(good);
  CompileResult ok = check_compiles(splice_completion(text, add, *good));
  EXPECT_TRUE(ok.ok) << ok.output;
  std::optional<std::string> bad = cut_at_matching_brace("\n  return a + ;\n}\n");
  ASSERT_TRUE(bad);
  CompileResult fail = check_compiles(splice_completion(text, add, *bad));
  EXPECT_EQ(fail.status, CompileStatus::CompileError);
  EXPECT_NE(fail.first_error.find("main.cpp:12"), std::string::npos) << fail.first_error;
}

// Issue 18 §6: RLIMIT_NPROC does not bind root, so as root the sandbox runs as nobody. A sandboxed
// command that starts many processes must hit the limit, whoever runs slmlab (root here).
TEST_F(Sandbox, ProcessLimitHoldsEvenForRoot) {
  SandboxOptions o = tight();
  o.compiler = "/bin/sh";  // stands in for a compiler that forks: sh -c SCRIPT sh -x c++ main.cpp
  o.max_processes = 16;
  o.flags = {"-c",
             "echo uid=$(id -u); i=0; while [ $i -lt 200 ]; do sleep 5 & i=$((i+1)); done; echo started=$i", "sh"};
  CompileResult r = check_compiles("", o);
  if (::geteuid() == 0) {
    EXPECT_NE(r.output.find("uid=65534"), std::string::npos) << r.output;
  }
  EXPECT_EQ(r.output.find("started=200"), std::string::npos) << "200 processes started under a limit of 16: " << r.output;
  EXPECT_NE(r.output.find("fork"), std::string::npos) << r.output;
  EXPECT_FALSE(r.ok);
}

// A status comes from the kernel's account (exit code, signal, CPU time, peak memory), never from
// the text the compiler prints, which the source can write.
TEST_F(Sandbox, StatusIsNotTakenFromTheCompilersText) {
  for (const char* text : {"CPU time limit exceeded", "Killed signal terminated program cc1plus",
                           "virtual memory exhausted: Cannot allocate memory", "std::bad_alloc", "out of memory"}) {
    CompileResult r = check_compiles(std::string("#error ") + text + "\nint main() {}\n", tight());
    EXPECT_EQ(r.status, CompileStatus::CompileError) << text << ": " << compile_status_name(r.status);
  }
  // Output that begins like bwrap's own complaint is still the compiler's (a sandbox that did come up).
  SandboxOptions o = tight();
  o.compiler = "/bin/sh";
  o.flags = {"-c", "echo 'bwrap: Can not mount'; exit 1", "sh"};
  EXPECT_EQ(check_compiles("", o).status, CompileStatus::CompileError);
}

// An empty body of a function that returns a value does not compile (-Werror=return-type), and a
// body that does nothing is trivial: counted apart by compile_rate, not as a success.
TEST_F(Sandbox, EmptyBodiesDoNotCountAsCompiling) {
  CompileResult r = check_compiles("int f(int a) { }\n");
  EXPECT_EQ(r.status, CompileStatus::CompileError) << r.output;
  EXPECT_NE(r.first_error.find("return"), std::string::npos) << r.first_error;
  EXPECT_TRUE(check_compiles("int f(int a) { return a; }\n").ok);
}

TEST(TrivialBody, NothingOrALoneLiteralIsTrivial) {
  for (const char* b : {"}", "\n}", "  // TODO\n}", "/* nothing */ }", "return;}", "\n  return 0;\n}", "return -1; }",
                        "return true;}", "return nullptr; }", "return {};}", "return \"\";}", "return 'x';}", "return 1.5f;}"})
    EXPECT_TRUE(trivial_body(b)) << b;
  for (const char* b : {"return a;}", "return a + b;}", "++count_;}", "return f(0);}", "x = 0; return 0;}",
                        "throw std::runtime_error(\"no\");}", "return 0 + a;}"})
    EXPECT_FALSE(trivial_body(b)) << b;
}

// eval compile stops at its time limit or its cap on held-out files, and says which.
TEST(EvalBudget, StopsAtTheTimeLimitOrTheFileCap) {
  EvalBudget b;
  b.max_seconds = 60;
  b.max_files = 3;
  EXPECT_EQ(b.exhausted(2), "");
  EXPECT_NE(b.exhausted(3).find("cap of 3 held-out files"), std::string::npos);
  b.max_seconds = 0.05;
  std::this_thread::sleep_for(std::chrono::milliseconds(80));
  EXPECT_NE(b.exhausted(0).find("time limit of 0.05 s"), std::string::npos) << b.exhausted(0);
}

}  // namespace
