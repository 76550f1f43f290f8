// safetensors: round trips of every dtype, scalars, empty and non-contiguous tensors, the byte layout,
// corruption and malformed headers, and an independent standard-library Python reader as an oracle.
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/fs.h"
#include "common/hash.h"
#include "test_util.h"
#include "train/safetensors.h"

using slm::test::TempDir;

namespace {

// The message of the slm::Error that fn throws; fails the test if it throws nothing or something else.
std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const slm::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected slm::Error, got: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected slm::Error, nothing was thrown";
  return "";
}

// Expects read(path) to fail with a one-line message naming the file and containing `what`.
void expect_read_error(const std::string& path, const std::string& what) {
  std::string msg = error_of([&] { slm::st::read(path); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find(what), std::string::npos) << "wanted '" << what << "' in: " << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
}

// A hand-made file: length prefix, the header padded with spaces to a multiple of 8, then data.
std::string craft(std::string header, const std::string& data) {
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(static_cast<uint64_t>(header.size()) >> (8 * i));
  return out + header + data;
}

// The little-endian uint64 header length at the start of a file's bytes.
uint64_t header_len(const std::string& bytes) {
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  return n;
}

// One tensor of every supported dtype, with distinctive values.
slm::st::File all_dtypes() {
  slm::st::File f;
  f.tensors = {
      {"f32", torch::tensor({1.5f, -2.25f, 3.0e-8f, 65504.f, -0.0f, 1e30f}).reshape({2, 3})},
      {"f64", torch::tensor({3.141592653589793, -1e-300, 2.5}, torch::kDouble)},
      {"bf16", torch::tensor({1.0f, -3.5f, 0.1f, 1e20f}).to(torch::kBFloat16)},
      {"f16", torch::tensor({1.0f, -3.5f, 0.1f, 60000.f}).to(torch::kHalf).reshape({2, 2})},
      {"i64", torch::tensor({int64_t{1} << 62, int64_t{-7}, int64_t{0}}, torch::kLong)},
      {"i32", torch::tensor({2147483647, -2147483647 - 1, 5}, torch::kInt)},
      {"i16", torch::tensor({32767, -32768, 12}, torch::kShort)},
      {"i8", torch::tensor({127, -128, 3}, torch::kChar)},
      {"u8", torch::tensor({255, 0, 128}, torch::kByte)},
      {"bool", torch::tensor({true, false, true, true})},
  };
  return f;
}

// Looks up a tensor by name in a read file.
torch::Tensor find(const slm::st::File& f, const std::string& name) {
  for (const auto& [n, t] : f.tensors)
    if (n == name) return t;
  ADD_FAILURE() << "no tensor " << name;
  return {};
}

}  // namespace

TEST(Safetensors, RoundTripsEveryDtype) {
  TempDir t;
  auto in = all_dtypes();
  slm::st::write(t / "a.safetensors", in);
  auto out = slm::st::read(t / "a.safetensors");
  ASSERT_EQ(out.tensors.size(), in.tensors.size());
  for (size_t i = 1; i < out.tensors.size(); ++i) EXPECT_LT(out.tensors[i - 1].first, out.tensors[i].first);
  for (const auto& [name, x] : in.tensors) {
    auto y = find(out, name);
    ASSERT_TRUE(y.defined());
    EXPECT_EQ(y.scalar_type(), x.scalar_type()) << name;
    EXPECT_EQ(y.sizes(), x.sizes()) << name;
    EXPECT_TRUE(y.is_contiguous()) << name;
    EXPECT_TRUE(torch::equal(y, x)) << name;
  }
}

TEST(Safetensors, RoundTripsScalarsAndEmptyTensors) {
  TempDir t;
  slm::st::File in;
  in.tensors = {
      {"scalar_f32", torch::tensor(2.5f)},
      {"scalar_i64", torch::tensor(int64_t{-42})},
      {"empty_1d", torch::empty({0})},
      {"empty_3x0", torch::empty({3, 0}, torch::kLong)},
      {"empty_0x2x5", torch::empty({0, 2, 5}, torch::kBFloat16)},
      {"middle", torch::arange(4, torch::kFloat)},
  };
  slm::st::write(t / "s.safetensors", in);
  auto out = slm::st::read(t / "s.safetensors");
  ASSERT_EQ(out.tensors.size(), in.tensors.size());
  for (const auto& [name, x] : in.tensors) {
    auto y = find(out, name);
    EXPECT_EQ(y.dim(), x.dim()) << name;
    EXPECT_EQ(y.sizes(), x.sizes()) << name;
    EXPECT_EQ(y.scalar_type(), x.scalar_type()) << name;
    EXPECT_TRUE(torch::equal(y, x)) << name;
  }
  EXPECT_EQ(find(out, "scalar_i64").item<int64_t>(), -42);
  // A file of only empty tensors has an empty data buffer.
  slm::st::File only_empty;
  only_empty.tensors = {{"e", torch::empty({0, 4})}};
  slm::st::write(t / "e.safetensors", only_empty);
  auto bytes = slm::fs::read_file(t / "e.safetensors");
  EXPECT_EQ(bytes.size(), 8 + header_len(bytes));
  EXPECT_EQ(slm::st::read(t / "e.safetensors").tensors.at(0).second.sizes(), (std::vector<int64_t>{0, 4}));
}

TEST(Safetensors, WritesNonContiguousInputsAsTheirValues) {
  TempDir t;
  auto base = torch::arange(12, torch::kFloat).reshape({3, 4});
  slm::st::File in;
  in.tensors = {
      {"transposed", base.t()},
      {"strided", base.index({torch::indexing::Slice(), torch::indexing::Slice(0, torch::indexing::None, 2)})},
      {"expanded", torch::tensor({1, 2, 3}, torch::kLong).unsqueeze(0).expand({2, 3})},
      {"offset_view", base.index({2})},
  };
  ASSERT_FALSE(in.tensors[0].second.is_contiguous());
  slm::st::write(t / "v.safetensors", in);
  auto out = slm::st::read(t / "v.safetensors");
  for (const auto& [name, x] : in.tensors) EXPECT_TRUE(torch::equal(find(out, name), x)) << name;
  auto tr = find(out, "transposed");
  EXPECT_EQ(tr.sizes(), (std::vector<int64_t>{4, 3}));
  EXPECT_EQ(tr.index({0, 1}).item<float>(), 4.f);  // row-major values of the transpose, not of the base
  // The bytes on disk are the transpose's row-major values: "transposed" is the last tensor by name.
  auto bytes = slm::fs::read_file(t / "v.safetensors");
  std::vector<float> tail(12);
  std::memcpy(tail.data(), bytes.data() + bytes.size() - 48, 48);
  EXPECT_EQ(tail, (std::vector<float>{0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11}));
}

TEST(Safetensors, RoundTripsMetadataAndAddsTheChecksum) {
  TempDir t;
  slm::st::File in;
  in.metadata = {{"step", "1200"}, {"config", "{\"depth\": 4}"}, {"unicode", "h\xc3\xa9llo \xe2\x9c\x93"},
                 {"empty", ""}, {"file_xxh64", "caller value is replaced"}};
  in.tensors = {{"w", torch::ones({2, 2})}};
  slm::st::write(t / "m.safetensors", in);
  auto out = slm::st::read(t / "m.safetensors");
  auto bytes = slm::fs::read_file(t / "m.safetensors");
  // The checksum covers the whole file, metadata included, as written with its own digits zeroed.
  const std::string sum = out.metadata.at("file_xxh64");
  std::string zeroed = bytes;
  const size_t at = zeroed.find(sum);
  ASSERT_NE(at, std::string::npos);
  zeroed.replace(at, 16, std::string(16, '0'));
  EXPECT_EQ(sum, slm::hex64(slm::hash64(zeroed)));
  for (const auto& [k, v] : in.metadata) {
    if (k != "file_xxh64") {
      EXPECT_EQ(out.metadata.at(k), v) << k;
    }
  }
  EXPECT_EQ(out.metadata.size(), in.metadata.size());
  // No temporary files are left next to the output.
  int n_files = 0;
  for (const auto& e : std::filesystem::directory_iterator(t.path)) n_files += e.is_regular_file();
  EXPECT_EQ(n_files, 1);
}

TEST(Safetensors, FileLayoutFollowsTheSpec) {
  TempDir t;
  slm::st::write(t / "l.safetensors", all_dtypes());
  auto bytes = slm::fs::read_file(t / "l.safetensors");
  uint64_t n = header_len(bytes);
  ASSERT_LE(8 + n, bytes.size());
  EXPECT_EQ((8 + n) % 8, 0u);
  std::string header = bytes.substr(8, n);
  EXPECT_EQ(header.front(), '{');
  size_t last = header.find_last_not_of(' ');
  EXPECT_EQ(header[last], '}');
  EXPECT_LT(header.size() - last - 1, 8u);  // at most 7 padding spaces
  auto h = nlohmann::json::parse(header);
  auto read_back = slm::st::read(t / "l.safetensors");
  ASSERT_TRUE(h.contains("__metadata__"));
  uint64_t offset = 0;
  std::string prev;
  std::vector<std::string> names;
  for (const auto& [k, v] : h.items())
    if (k != "__metadata__") names.push_back(k);
  std::vector<std::pair<uint64_t, std::string>> by_offset;
  for (const auto& k : names) by_offset.emplace_back(h[k]["data_offsets"][0].get<uint64_t>(), k);
  std::sort(by_offset.begin(), by_offset.end());
  for (const auto& [begin, k] : by_offset) {
    EXPECT_LT(prev, k) << "tensors laid out in name order";
    EXPECT_EQ(begin, offset) << k;
    auto end = h[k]["data_offsets"][1].get<uint64_t>();
    EXPECT_EQ(end - begin, find(read_back, k).nbytes()) << k;
    offset = end;
    prev = k;
  }
  EXPECT_EQ(offset, bytes.size() - 8 - n);
  EXPECT_EQ(h["f32"]["dtype"], "F32");
  EXPECT_EQ(h["bf16"]["dtype"], "BF16");
  EXPECT_EQ(h["bool"]["dtype"], "BOOL");
  EXPECT_EQ(h["f32"]["shape"], nlohmann::json::parse("[2, 3]"));
  // Little-endian data: i64's first element is 1 << 62.
  uint64_t i64_begin = h["i64"]["data_offsets"][0].get<uint64_t>();
  EXPECT_EQ(static_cast<unsigned char>(bytes[8 + n + i64_begin + 7]), 0x40);
  EXPECT_EQ(bytes[8 + n + i64_begin], 0);
}

TEST(Safetensors, FlippedDataByteIsCorrupt) {
  TempDir t;
  std::string p = t / "c.safetensors";
  slm::st::write(p, all_dtypes());
  auto bytes = slm::fs::read_file(p);
  bytes[bytes.size() - 5] ^= 0x10;
  slm::test::write(p, bytes);
  expect_read_error(p, "corrupt");
}

TEST(Safetensors, TruncatedOrExtendedFilesAreRejected) {
  TempDir t;
  std::string p = t / "t.safetensors";
  slm::st::write(p, all_dtypes());
  auto bytes = slm::fs::read_file(p);
  uint64_t n = header_len(bytes);
  slm::test::write(p, bytes.substr(0, bytes.size() - 1));
  expect_read_error(p, "outside the data buffer");
  slm::test::write(p, bytes + "x");
  expect_read_error(p, "tensors cover");
  slm::test::write(p, bytes.substr(0, 8 + n));
  expect_read_error(p, "outside the data buffer");
  slm::test::write(p, bytes.substr(0, 8 + n / 2));
  expect_read_error(p, "exceeds");
  slm::test::write(p, bytes.substr(0, 5));
  expect_read_error(p, "truncated");
  slm::test::write(p, "");
  expect_read_error(p, "truncated");
}

TEST(Safetensors, HeaderLengthBeyondTheFileIsRejected) {
  TempDir t;
  std::string p = t / "h.safetensors";
  std::string bytes = craft("{}", "");
  bytes[0] = '\xff';
  bytes[7] = '\x7f';
  slm::test::write(p, bytes);
  expect_read_error(p, "exceeds");
  slm::test::write(p, std::string(8, '\xff'));
  expect_read_error(p, "exceeds");
}

TEST(Safetensors, MalformedHeadersAreRejected) {
  TempDir t;
  std::string p = t / "bad.safetensors";
  const std::string f32x2 = R"("dtype":"F32","shape":[2],"data_offsets":[0,8])";
  const std::string data(8, '\0');
  struct Case {
    std::string header, data, error;
  };
  const std::vector<Case> cases = {
      {"this is not json", data, "not valid JSON"},
      {"{\"a\": {" + f32x2, data, "not valid JSON"},
      {"", data, "not valid JSON"},
      {"[1, 2]", data, "not a JSON object"},
      {R"({"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", data, "tensor \"a\" has unsupported dtype \"F33\""},
      {R"({"a":{"dtype":"U16","shape":[4],"data_offsets":[0,8]}})", data, "unsupported dtype"},
      {R"({"a":{"dtype":7,"shape":[2],"data_offsets":[0,8]}})", data, "unsupported dtype"},
      {R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data, "shape entry -2 is negative"},
      {R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", data, "shape entry 2.0 is not an integer"},
      {R"({"a":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", data, "shape is not an array"},
      {R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", data, "need"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})", data, "outside the data buffer"},
      {R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", data, "outside the data buffer"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", data, "not [begin, end]"},
      {R"({"a":{"dtype":"F32","shape":[2]}})", data, "has no data_offsets"},
      {"{\"a\":{" + f32x2 + ",\"extra\":1}}", data, "unknown field \"extra\""},
      {R"({"a":[1]})", data, "is not an object"},
      {R"({"a\nb":5})", data, R"(tensor "a\nb" is not an object)"},
      {"{\"a\":{" + f32x2 + "},\"a\":{" + f32x2 + "}}", data, "duplicate header key \"a\""},
      {R"({"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}})", data, "duplicate header key"},
      {R"({"__metadata__":{"k":"v","k":"w"}})", "", "duplicate header key \"k\""},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", data, "tensors cover 4 bytes"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", data, "starts at data offset 4"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
       data, "previous tensor ends at 8"},
      {R"({"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}})", data, "overflows"},
      {R"({"a":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,8]}})", data, "too large"},
      {R"({"__metadata__":{"step":12}})", "", "metadata \"step\" is a number, not a string"},
      {R"({"__metadata__":["x"]})", "", "__metadata__ is not an object"},
      {R"({"__metadata__":{"data_xxh64":"0000000000000000"}})", "", "corrupt"},
      {R"({"__metadata__":{"file_xxh64":"0000000000000000"}})", "", "corrupt: file checksum"},
      {R"({"__metadata__":{"file_xxh64":"00"}})", "", "file_xxh64 field is damaged"},
      {R"({"a":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}})", "\x01\x02", "other than 0 or 1"},
      {"{\"__metadata__\":{\"k\":\"\xff\"}}", "", "not valid JSON"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.header);
    slm::test::write(p, craft(c.header, c.data));
    expect_read_error(p, c.error);
  }
}

TEST(Safetensors, ReadsForeignFilesInOffsetOrderWithoutChecksum) {
  TempDir t;
  std::string p = t / "foreign.safetensors";
  // Written the way other tools may: unpadded header, no metadata, offsets not in name order.
  std::string data(12, '\0');
  float b = 7.5f;
  int64_t a = -3;
  std::memcpy(data.data(), &b, 4);
  std::memcpy(data.data() + 4, &a, 8);
  std::string header =
      R"({"a":{"dtype":"I64","shape":[],"data_offsets":[4,12]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  std::string bytes(8, '\0');
  bytes[0] = static_cast<char>(header.size());
  slm::test::write(p, bytes + header + data);
  auto f = slm::st::read(p);
  EXPECT_TRUE(f.metadata.empty());
  ASSERT_EQ(f.tensors.size(), 2u);
  EXPECT_EQ(f.tensors[0].first, "b");
  EXPECT_EQ(f.tensors[0].second.item<float>(), 7.5f);
  EXPECT_EQ(f.tensors[1].first, "a");
  EXPECT_EQ(f.tensors[1].second.dim(), 0);
  EXPECT_EQ(f.tensors[1].second.item<int64_t>(), -3);
}

TEST(Safetensors, WriteRejectsWhatTheFormatCannotHold) {
  TempDir t;
  std::string p = t / "w.safetensors";
  auto write_error = [&](slm::st::File f) { return error_of([&] { slm::st::write(p, f); }); };
  slm::st::File dup;
  dup.tensors = {{"x", torch::ones(2)}, {"x", torch::zeros(2)}};
  EXPECT_NE(write_error(dup).find("duplicate tensor name \"x\""), std::string::npos);
  slm::st::File complex;
  complex.tensors = {{"c", torch::ones(2, torch::kComplexFloat)}};
  EXPECT_NE(write_error(complex).find("tensor \"c\" has dtype"), std::string::npos);
  slm::st::File reserved;
  reserved.tensors = {{"__metadata__", torch::ones(2)}};
  EXPECT_NE(write_error(reserved).find("reserved, not a tensor name"), std::string::npos);
  slm::st::File undefined;
  undefined.tensors = {{"u", torch::Tensor()}};
  EXPECT_NE(write_error(undefined).find("undefined"), std::string::npos);
  slm::st::File bad_utf8;
  bad_utf8.tensors = {{"bad\xff", torch::ones(1)}};
  EXPECT_NE(write_error(bad_utf8).find("not valid UTF-8"), std::string::npos);
  EXPECT_FALSE(slm::fs::exists(p));
}

TEST(Safetensors, IndependentPythonReaderAgrees) {
  TempDir t;
  std::string p = t / "py.safetensors";
  auto in = all_dtypes();
  in.metadata = {{"step", "7"}, {"note", "h\xc3\xa9"}};
  in.tensors.push_back({"scalar", torch::tensor(0.375f)});
  in.tensors.push_back({"empty", torch::empty({2, 0}, torch::kLong)});
  in.tensors.push_back({"transposed", torch::arange(6, torch::kLong).reshape({2, 3}).t()});
  slm::st::write(p, in);
  auto r = slm::test::run("/usr/bin/python3 " SLMLAB_SOURCE_DIR "/tests/read_safetensors.py " + p);
  ASSERT_EQ(r.status, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["metadata"]["step"], "7");
  EXPECT_EQ(j["metadata"]["note"], "h\xc3\xa9");
  EXPECT_EQ(j["metadata"]["file_xxh64"], slm::st::read(p).metadata.at("file_xxh64"));
  ASSERT_EQ(j["tensors"].size(), in.tensors.size());
  const std::map<torch::ScalarType, std::string> names = {
      {torch::kFloat, "F32"}, {torch::kBFloat16, "BF16"}, {torch::kHalf, "F16"}, {torch::kDouble, "F64"},
      {torch::kLong, "I64"},  {torch::kInt, "I32"},       {torch::kShort, "I16"}, {torch::kChar, "I8"},
      {torch::kByte, "U8"},   {torch::kBool, "BOOL"}};
  for (const auto& [name, x0] : in.tensors) {
    SCOPED_TRACE(name);
    auto x = x0.contiguous();
    ASSERT_TRUE(j["tensors"].contains(name));
    const auto& e = j["tensors"][name];
    EXPECT_EQ(e["dtype"], names.at(x.scalar_type()));
    EXPECT_EQ(e["shape"].get<std::vector<int64_t>>(), x.sizes().vec());
    ASSERT_EQ(e["values"].size(), static_cast<size_t>(x.numel()));
    auto flat = x.reshape({-1});
    if (x.scalar_type() == torch::kFloat) {
      auto v = e["values"].get<std::vector<double>>();
      for (int64_t i = 0; i < x.numel(); ++i) EXPECT_EQ(static_cast<float>(v[i]), flat[i].item<float>()) << i;
    } else if (x.scalar_type() == torch::kLong) {
      auto v = e["values"].get<std::vector<int64_t>>();
      for (int64_t i = 0; i < x.numel(); ++i) EXPECT_EQ(v[i], flat[i].item<int64_t>()) << i;
    } else if (x.scalar_type() == torch::kDouble) {
      auto v = e["values"].get<std::vector<double>>();
      for (int64_t i = 0; i < x.numel(); ++i) EXPECT_EQ(v[i], flat[i].item<double>()) << i;
    } else if (x.scalar_type() == torch::kBFloat16) {
      auto v = e["values"].get<std::vector<uint16_t>>();
      for (int64_t i = 0; i < x.numel(); ++i) EXPECT_EQ(v[i], flat[i].item<c10::BFloat16>().x) << i;
    } else if (x.scalar_type() == torch::kInt) {
      auto v = e["values"].get<std::vector<int32_t>>();
      for (int64_t i = 0; i < x.numel(); ++i) EXPECT_EQ(v[i], flat[i].item<int32_t>()) << i;
    } else if (x.scalar_type() == torch::kBool) {
      auto v = e["values"].get<std::vector<bool>>();
      for (int64_t i = 0; i < x.numel(); ++i) EXPECT_EQ(v[i], flat[i].item<bool>()) << i;
    }
  }
  // BF16 bit patterns, spelled out: 1.0 = 0x3f80, -3.5 = 0xc060.
  EXPECT_EQ(j["tensors"]["bf16"]["values"][0], 0x3f80);
  EXPECT_EQ(j["tensors"]["bf16"]["values"][1], 0xc060);
  EXPECT_EQ(j["tensors"]["transposed"]["values"], nlohmann::json::parse("[0, 3, 1, 4, 2, 5]"));
}

TEST(Safetensors, PythonReaderRejectsLayoutViolations) {
  TempDir t;
  std::string p = t / "bad.safetensors";
  const std::vector<std::string> bad = {
      craft(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", std::string(8, '\0')),
      craft(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, '\0')),
      craft(R"({"a":{"dtype":"X9","shape":[2],"data_offsets":[0,8]}})", std::string(8, '\0')),
      craft(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
            R"("a":{"dtype":"F32","shape":[0],"data_offsets":[8,8]}})",
            std::string(8, '\0')),
      craft("garbage", ""),
      std::string(5, '\0'),
  };
  for (const auto& bytes : bad) {
    slm::test::write(p, bytes);
    auto r = slm::test::run("/usr/bin/python3 " SLMLAB_SOURCE_DIR "/tests/read_safetensors.py " + p);
    EXPECT_NE(r.status, 0) << r.out;
    EXPECT_NE(r.out.find(p), std::string::npos) << r.out;
  }
}
