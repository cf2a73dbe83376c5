// safetensors files: round trips of every dtype, the documented byte layout (parsed here by hand
// and by Debian's Python with json/struct/numpy), refusal of truncated and bit-flipped files, and
// atomic writes.
//
// The layout (huggingface/safetensors README): 8 bytes little-endian u64 N, N bytes of UTF-8 JSON
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}},
// then the data buffer; offsets are relative to the buffer's start.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "testing.h"

using namespace forge;
using forge::testing::bitwise_identical;
using forge::testing::Contains;
using forge::testing::read_bytes;
using forge::testing::TempDir;
using forge::testing::write_bytes;
namespace fs = std::filesystem;

namespace {

Tensor f32(std::vector<float> v, Shape s = {}) {
  return from_vector(v, s);
}

// One tensor of each dtype, a 0-d one, zero-size ones and a non-contiguous one, with values that
// exercise signs, extremes and special floats.
NamedTensors every_dtype() {
  Generator g(5);
  const float inf = std::numeric_limits<float>::infinity();
  return {
      {"f32", randn({2, 3}, g)},
      {"f64", from_vector<double>({1.0 / 3.0, -0.0, 1e300, -2.5e-310})},
      {"bf16",
       from_vector<bf16>(
           {bf16(1.5f), bf16(-3.0f), bf16(1e-3f), bf16(inf), bf16(-0.0f), bf16(65504.0f)}, {3, 2})},
      {"f16", from_vector<f16>({f16(0.5f), f16(-65504.0f), f16(6e-8f), f16(-inf), f16(1.0f / 3)})},
      {"i8", from_vector<int8_t>({-128, -1, 0, 1, 127, 42}, {2, 3})},
      {"u8", from_vector<uint8_t>({0, 1, 128, 254, 255})},
      {"i32", from_vector<int32_t>(
                  {std::numeric_limits<int32_t>::min(), -7, 0, std::numeric_limits<int32_t>::max()},
                  {2, 1, 2})},
      {"i64", from_vector<int64_t>(
                  {std::numeric_limits<int64_t>::min(), -1, std::numeric_limits<int64_t>::max()})},
      {"scalar", scalar_tensor(2.75)},
      {"empty_f32", Tensor::empty({0, 3}, DType::f32)},
      {"empty_i64", Tensor::empty({4, 0}, DType::i64)},
      {"transposed", randn({3, 4}, g).transpose(0, 1)},
  };
}

const std::map<std::string, std::string> kMetadata = {
    {"config", R"({"n_layer": 4, "nested": {"a": [1, 2]}})"},
    {"empty", ""},
    {"unicode", "caf\xc3\xa9 \xe2\x98\x83"},
    {"quote\"key", "line1\nline2\ttab \\ backslash"},
};

void check_same_contents(const SafetensorsContents& got, const NamedTensors& want,
                         const std::map<std::string, std::string>& meta) {
  REQUIRE(got.tensors.size() == want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    INFO("tensor " << want[i].first);
    CHECK(got.tensors[i].first == want[i].first);
    CHECK(bitwise_identical(got.tensors[i].second, want[i].second));
  }
  CHECK(got.metadata == meta);
}

uint64_t le64(const std::string& b, size_t at) {
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t(uint8_t(b[at + size_t(i)])) << (8 * i);
  return n;
}

// A small file for the corruption sweeps: two tensors and some metadata.
NamedTensors small_tensors() {
  return {{"alpha", f32({1.0f, -2.0f, 3.5f, 0.25f}, {2, 2})},
          {"beta", from_vector<int32_t>({7, -9, 11})}};
}
const std::map<std::string, std::string> kSmallMeta = {{"k", "v1"}};

// What loading a damaged file did: refused with an Error naming the file (`refused` set), or loaded
// exactly the original contents. Anything else (another exception type, other contents) is
// returned as text.
std::string damaged_outcome(const std::string& path, bool& refused) {
  refused = false;
  try {
    SafetensorsContents c = load_safetensors(path);
    NamedTensors want = small_tensors();
    if (c.tensors.size() != want.size()) return "loaded a different number of tensors";
    for (size_t i = 0; i < want.size(); ++i) {
      if (c.tensors[i].first != want[i].first)
        return "loaded tensor '" + c.tensors[i].first + "' instead of '" + want[i].first + "'";
      if (!bitwise_identical(c.tensors[i].second, want[i].second))
        return "loaded different data for '" + want[i].first + "'";
    }
    if (c.metadata != kSmallMeta) return "loaded different metadata";
    return "";
  } catch (const Error& e) {
    refused = true;
    if (std::string(e.what()).find(path) == std::string::npos)
      return std::string("error without the path: ") + e.what();
    return "";
  } catch (const std::exception& e) {
    return std::string("a non-forge exception: ") + e.what();
  }
}

}  // namespace

// ---- Round trips ----

TEST_CASE("safetensors round-trips every dtype, 0-d and zero-size tensors, and metadata") {
  TempDir dir;
  std::string path = dir.file("all.safetensors");
  NamedTensors tensors = every_dtype();
  save_safetensors(path, tensors, kMetadata);
  SafetensorsContents c = load_safetensors(path);
  check_same_contents(c, tensors, kMetadata);
  CHECK(c.find("scalar")->shape() == Shape{});
  CHECK(c.find("scalar")->item() == 2.75);
  CHECK(c.find("empty_i64")->shape() == Shape{4, 0});
  CHECK(c.find("transposed")->shape() == Shape{4, 3});
  CHECK(c.find("bf16")->dtype() == DType::bf16);
  CHECK(c.find("no_such_tensor") == nullptr);
  CHECK(std::isinf(testing::read_element(*c.find("f16"), {3})));
  CHECK(testing::read_element(*c.find("i64"), {0}) == -9223372036854775808.0);
}

TEST_CASE("safetensors round-trips NaN payloads and signed zeros bit for bit") {
  TempDir dir;
  std::string path = dir.file("nan.safetensors");
  Tensor t = Tensor::empty({4}, DType::f32);
  uint32_t bits[4] = {0x7fc00001u, 0xffa5a5a5u, 0x80000000u, 0x00000001u};
  std::memcpy(t.raw_data(), bits, sizeof bits);
  save_safetensors(path, {{"odd", t}});
  SafetensorsContents c = load_safetensors(path);
  CHECK(bitwise_identical(*c.find("odd"), t));
  CHECK(c.metadata.empty());
}

TEST_CASE("an empty tensor list saves and loads as an empty file body") {
  TempDir dir;
  std::string path = dir.file("none.safetensors");
  save_safetensors(path, {}, {{"only", "metadata"}});
  SafetensorsContents c = load_safetensors(path);
  CHECK(c.tensors.empty());
  CHECK(c.metadata == std::map<std::string, std::string>{{"only", "metadata"}});
  std::string b = read_bytes(path);
  CHECK(b.size() == 8 + le64(b, 0));  // no data bytes
}

// ---- The byte layout ----

TEST_CASE("the file is an 8-byte LE length, a padded JSON header and the tensors back to back") {
  TempDir dir;
  std::string path = dir.file("layout.safetensors");
  NamedTensors tensors = every_dtype();
  save_safetensors(path, tensors, kMetadata);
  std::string b = read_bytes(path);
  REQUIRE(b.size() >= 8);
  uint64_t n = le64(b, 0);
  CHECK(n % 8 == 0);
  REQUIRE(8 + n <= b.size());
  std::string header = b.substr(8, n);
  CHECK(header.front() == '{');
  size_t last = header.find_last_not_of(' ');
  CHECK(header[last] == '}');
  CHECK(n - (last + 1) < 8);  // at most 7 bytes of space padding
  nlohmann::json doc = nlohmann::json::parse(header);
  REQUIRE(doc.contains("__metadata__"));
  for (const auto& [k, v] : kMetadata) CHECK(doc["__metadata__"][k] == v);
  for (const auto& [k, v] : doc["__metadata__"].items()) CHECK(v.is_string());
  CHECK(doc.size() == tensors.size() + 1);

  const std::map<DType, std::string> names = {
      {DType::f32, "F32"}, {DType::f64, "F64"}, {DType::bf16, "BF16"}, {DType::f16, "F16"},
      {DType::i8, "I8"},   {DType::u8, "U8"},   {DType::i32, "I32"},   {DType::i64, "I64"}};
  uint64_t at = 0;  // the tensors come in the order given, back to back
  for (const auto& [name, t] : tensors) {
    INFO("tensor " << name);
    REQUIRE(doc.contains(name));
    const auto& e = doc[name];
    CHECK(e["dtype"] == names.at(t.dtype()));
    CHECK(e["shape"].get<std::vector<int64_t>>() == t.shape().vec());
    CHECK(e["data_offsets"][0].get<uint64_t>() == at);
    CHECK(e["data_offsets"][1].get<uint64_t>() == at + t.nbytes());
    Tensor c = t.contiguous();
    CHECK(std::memcmp(b.data() + 8 + n + at, c.raw_data(), c.nbytes()) == 0);
    at += t.nbytes();
  }
  CHECK(b.size() == 8 + n + at);
  CHECK(safetensors_dtype(DType::bf16) == std::string("BF16"));
}

TEST_CASE("the header is padded to a multiple of 8 for every header length") {
  TempDir dir;
  std::string path = dir.file("pad.safetensors");
  std::set<uint64_t> pads;
  // A name appears twice in the header (its entry and its checksum), so lengths step by 2; an
  // optional one-character metadata value makes the odd lengths.
  for (int len = 1; len <= 8; ++len) {
    for (int odd = 0; odd <= 1; ++odd) {
      std::string name(size_t(len), 'w');
      save_safetensors(path, {{name, f32({1, 2, 3})}}, {{"m", std::string(size_t(odd), 'x')}});
      std::string b = read_bytes(path);
      uint64_t n = le64(b, 0);
      INFO("name length " << len << ", odd " << odd << ", header " << n);
      CHECK(n % 8 == 0);
      std::string header = b.substr(8, n);
      size_t end = header.find_last_of('}') + 1;
      CHECK(header.find_first_not_of(' ', end) == std::string::npos);
      pads.insert(n - end);
      CHECK(nlohmann::json::parse(header)[name]["data_offsets"][1] == 12);
      CHECK(b.size() == 8 + n + 12);
    }
  }
  CHECK(pads.size() == 8);  // every padding 0..7 occurred
}

TEST_CASE("Debian's Python reads forge's files and forge reads Python's (json, struct, numpy)") {
  testing::Command probe = testing::run_command("/usr/bin/python3 -c 'import numpy, json, struct'");
  if (probe.status != 0)
    return testing::skip_optional("/usr/bin/python3 with numpy is not available: " + probe.err);
  TempDir dir;
  std::string ours = dir.file("ours.safetensors"), theirs = dir.file("theirs.safetensors");
  NamedTensors tensors = every_dtype();
  save_safetensors(ours, tensors, kMetadata);
  std::string script = dir.file("check.py");
  write_bytes(script, R"(import json, struct, sys, numpy as np
ours, theirs = sys.argv[1], sys.argv[2]
b = open(ours, "rb").read()
(n,) = struct.unpack("<Q", b[:8])
hdr = json.loads(b[8:8 + n])
data = b[8 + n:]
kinds = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "I8": "i1", "U8": "u1", "I32": "<i4", "I64": "<i8"}
out = {"header_len": n, "metadata": hdr.pop("__metadata__"), "tensors": {}}
for name, e in hdr.items():
    lo, hi = e["data_offsets"]
    raw = data[lo:hi]
    if e["dtype"] == "BF16":
        a = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        a = np.frombuffer(raw, kinds[e["dtype"]])
    a = a.reshape(e["shape"])
    vals = [repr(x) for x in a.reshape(-1).tolist()]
    out["tensors"][name] = {"dtype": e["dtype"], "shape": list(a.shape), "values": vals}
print(json.dumps(out))
# A file written the way the safetensors library writes one, for forge to read.
arrays = {"w": np.arange(6, dtype="<f4").reshape(2, 3) / 4, "ids": np.array([5, -6], "<i8")}
hdr, off, body = {"__metadata__": {"format": "np"}}, 0, b""
for name, a in arrays.items():
    hdr[name] = {"dtype": {"<f4": "F32", "<i8": "I64"}[a.dtype.str], "shape": list(a.shape),
                 "data_offsets": [off, off + a.nbytes]}
    off += a.nbytes
    body += a.tobytes()
h = json.dumps(hdr).encode()
h += b" " * (-len(h) % 8)
open(theirs, "wb").write(struct.pack("<Q", len(h)) + h + body)
)");
  testing::Command r =
      testing::run_command("/usr/bin/python3 " + script + " " + ours + " " + theirs);
  INFO("the script's stderr:\n" << r.err);
  REQUIRE(r.status == 0);
  nlohmann::json py = nlohmann::json::parse(r.out);
  CHECK(py["header_len"].get<uint64_t>() % 8 == 0);
  for (const auto& [k, v] : kMetadata) CHECK(py["metadata"][k] == v);
  for (const auto& [name, t] : tensors) {
    INFO("tensor " << name);
    const auto& e = py["tensors"][name];
    CHECK(e["dtype"] == safetensors_dtype(t.dtype()));
    CHECK(e["shape"].get<std::vector<int64_t>>() == t.shape().vec());
    REQUIRE(int64_t(e["values"].size()) == t.numel());
    for (int64_t i = 0; i < t.numel(); ++i) {
      std::string v = e["values"][size_t(i)];
      double want = testing::read_element(t, testing::unravel(i, t.shape()));
      if (t.dtype() == DType::i64)  // exact, as text: doubles lose int64's low bits
        CHECK(v == std::to_string(*reinterpret_cast<const int64_t*>(
                       static_cast<const char*>(t.contiguous().raw_data()) + 8 * i)));
      else if (std::isnan(want))
        CHECK(v == "nan");
      else
        // repr() is exact for the f32/f64 values it prints; strtod (unlike stod) takes subnormals.
        CHECK(std::strtod(v.c_str(), nullptr) == want);
    }
  }
  SafetensorsContents c = load_safetensors(theirs);
  REQUIRE(c.tensors.size() == 2);
  CHECK(c.find("w")->shape() == Shape{2, 3});
  CHECK(c.find("w")->to_vector<float>() == std::vector<float>{0, 0.25f, 0.5f, 0.75f, 1, 1.25f});
  CHECK(c.find("ids")->to_vector<int64_t>() == std::vector<int64_t>{5, -6});
  CHECK(c.metadata == std::map<std::string, std::string>{{"format", "np"}});
}

TEST_CASE("a hand-written file without metadata or checksums loads") {
  TempDir dir;
  std::string path = dir.file("plain.safetensors");
  std::string header = R"({"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},)"
                       R"("a":{"dtype":"I32","shape":[],"data_offsets":[0,4]}})";
  header.resize((header.size() + 7) / 8 * 8, ' ');
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[size_t(i)] = char((header.size() >> (8 * i)) & 0xff);
  int32_t a = -123456;
  bytes += header + std::string(reinterpret_cast<const char*>(&a), 4) + "\x07\xf0";
  write_bytes(path, bytes);
  SafetensorsContents c = load_safetensors(path);
  REQUIRE(c.tensors.size() == 2);
  CHECK(c.tensors[0].first == "a");  // file (data) order
  CHECK(c.find("a")->shape() == Shape{});
  CHECK(c.find("a")->item() == -123456);
  CHECK(c.find("b")->to_vector<uint8_t>() == std::vector<uint8_t>{7, 240});
  CHECK(c.metadata.empty());
}

// ---- Damaged files ----

TEST_CASE("a file truncated at every length is refused with an error naming it") {
  TempDir dir;
  std::string good = dir.file("good.safetensors"), cut = dir.file("cut.safetensors");
  save_safetensors(good, small_tensors(), kSmallMeta);
  std::string b = read_bytes(good);
  for (size_t len = 0; len < b.size(); ++len) {
    INFO("truncated to " << len << " of " << b.size() << " bytes");
    write_bytes(cut, b.substr(0, len));
    CHECK_THROWS_WITH(load_safetensors(cut), Contains(cut));
  }
  // Data after the last tensor is refused too.
  write_bytes(cut, b + "X");
  CHECK_THROWS_WITH(load_safetensors(cut), Contains(cut) && Contains("after the last tensor"));
}

TEST_CASE("every single-bit flip is refused or loads exactly the original contents") {
  TempDir dir;
  std::string good = dir.file("good.safetensors"), bad = dir.file("flipped.safetensors");
  save_safetensors(good, small_tensors(), kSmallMeta);
  std::string b = read_bytes(good);
  int refused = 0, harmless = 0;
  for (size_t pos = 0; pos < b.size(); ++pos) {
    for (int bit = 0; bit < 8; ++bit) {
      std::string f = b;
      f[pos] = char(uint8_t(f[pos]) ^ (1u << bit));
      write_bytes(bad, f);
      bool threw = false;
      std::string outcome = damaged_outcome(bad, threw);
      INFO("byte " << pos << " of " << b.size() << " (value " << int(uint8_t(b[pos])) << " '"
                   << (b[pos] >= 0x20 && b[pos] < 0x7f ? b[pos] : '?') << "') bit " << bit);
      CHECK(outcome == "");
      (threw ? refused : harmless)++;
    }
  }
  // Nearly all flips must be caught: the checksums cover data and metadata.
  CHECK(refused > int(b.size()) * 8 * 9 / 10);
  WARN("bit flips: " << refused << " refused, " << harmless << " loaded unchanged");
}

TEST_CASE("corruption in the data region names the tensor") {
  TempDir dir;
  std::string good = dir.file("good.safetensors"), bad = dir.file("bad.safetensors");
  save_safetensors(good, small_tensors(), kSmallMeta);
  std::string b = read_bytes(good);
  uint64_t data_start = 8 + le64(b, 0);
  // alpha: bytes [0, 16) of the data; beta: [16, 28).
  for (auto [offset, name] : {std::pair{uint64_t(0), "'alpha'"},
                              {uint64_t(15), "'alpha'"},
                              {uint64_t(16), "'beta'"},
                              {uint64_t(27), "'beta'"}}) {
    INFO("data byte " << offset);
    std::string f = b;
    f[data_start + offset] = char(uint8_t(f[data_start + offset]) ^ 0x10);
    write_bytes(bad, f);
    CHECK_THROWS_WITH(load_safetensors(bad),
                      Contains(bad) && Contains(name) && Contains("checksum"));
  }
}

TEST_CASE("loading a missing file or a directory names the path") {
  TempDir dir;
  std::string missing = dir.file("nope.safetensors");
  CHECK_THROWS_WITH(load_safetensors(missing), Contains(missing) && Contains("not found"));
  CHECK_THROWS_WITH(load_safetensors(dir.path()), Contains(dir.path()));
}

// ---- Writing ----

TEST_CASE("save leaves only the target file in the directory, and overwrites in place") {
  TempDir dir;
  std::string path = dir.file("m.safetensors");
  save_safetensors(path, small_tensors(), kSmallMeta);
  CHECK(dir.entries() == std::vector<std::string>{"m.safetensors"});
  NamedTensors other = {{"gamma", f32({9, 8})}};
  save_safetensors(path, other);
  CHECK(dir.entries() == std::vector<std::string>{"m.safetensors"});
  check_same_contents(load_safetensors(path), other, {});
}

TEST_CASE("a save that fails leaves the old file intact and no temporary file") {
  TempDir dir;
  std::string path = dir.file("m.safetensors");
  save_safetensors(path, small_tensors(), kSmallMeta);
  const std::string before = read_bytes(path);
  NamedTensors reserved = {{"ok", f32({1})}, {"__metadata__", f32({2})}};
  CHECK_THROWS_WITH(save_safetensors(path, reserved), Contains(path) && Contains("'__metadata__'"));
  NamedTensors twice = {{"x", f32({1})}, {"x", f32({2})}};
  CHECK_THROWS_WITH(save_safetensors(path, twice), Contains(path) && Contains("'x'"));
  NamedTensors unnamed = {{"", f32({1})}};
  CHECK_THROWS_WITH(save_safetensors(path, unnamed), Contains(path));
  NamedTensors undefined = {{"u", Tensor()}};
  CHECK_THROWS_WITH(save_safetensors(path, undefined), Contains(path) && Contains("'u'"));
  CHECK_THROWS_WITH(save_safetensors(path, small_tensors(), {{"crc32:mine", "1"}}),
                    Contains(path) && Contains("reserved"));
  CHECK(read_bytes(path) == before);
  CHECK(dir.entries() == std::vector<std::string>{"m.safetensors"});
  check_same_contents(load_safetensors(path), small_tensors(), kSmallMeta);
}

TEST_CASE("a write that fails at the file system removes its temporary file") {
  TempDir dir;
  // The target is a non-empty directory, so the final rename fails.
  std::string target = dir.file("occupied");
  fs::create_directory(target);
  write_bytes(dir.file("occupied/keep.txt"), "keep");
  CHECK_THROWS_WITH(save_safetensors(target, small_tensors()), Contains(target));
  CHECK(dir.entries() == std::vector<std::string>{"occupied"});
  CHECK(read_bytes(dir.file("occupied/keep.txt")) == "keep");
  // A missing parent directory: nothing can be created.
  std::string orphan = dir.file("no/such/dir/m.safetensors");
  CHECK_THROWS_WITH(save_safetensors(orphan, small_tensors()), Contains("no/such/dir"));
  CHECK(dir.entries() == std::vector<std::string>{"occupied"});
}

TEST_CASE("write_file_atomically replaces the whole file and leaves nothing else") {
  TempDir dir;
  std::string path = dir.file("t.txt");
  write_file_atomically(path, std::string(1000, 'a'));
  write_file_atomically(path, "short");
  CHECK(read_bytes(path) == "short");
  CHECK(dir.entries() == std::vector<std::string>{"t.txt"});
}
