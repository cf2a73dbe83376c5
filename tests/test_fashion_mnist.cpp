// Fashion-MNIST loading: the real Debian files, and errors on small synthetic IDX files.
//
// The reference facts about the real files were read independently with Debian's Python:
//   gzip.open(".../train-labels-idx1-ubyte.gz").read()[8]  -> 9  (first train label)
//   gzip.open(".../t10k-labels-idx1-ubyte.gz").read()[8]   -> 9  (first test label)
//   sum(gzip.open(".../train-images-idx3-ubyte.gz").read()[16:16+784]) -> 76247, max 255
//   every class has 6000 train and 1000 test labels
#include <unistd.h>
#include <zlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "io/fashion_mnist.h"
#include "io/gzip_file.h"
#include "testing.h"

using namespace forge;
using forge::testing::Contains;
using forge::testing::TempDir;
namespace fs = std::filesystem;

namespace {

const ImageDataset& real(Split split) {
  static ImageDataset train = load_fashion_mnist(testing::fashion_mnist_dir(), Split::train);
  static ImageDataset test = load_fashion_mnist(testing::fashion_mnist_dir(), Split::test);
  return split == Split::train ? train : test;
}

void put_be32(std::string& s, uint32_t v) {
  for (int shift : {24, 16, 8, 0}) s.push_back(char(uint8_t(v >> shift)));
}

std::string idx_bytes(uint32_t magic, const std::vector<uint32_t>& dims,
                      const std::vector<uint8_t>& data) {
  std::string s;
  put_be32(s, magic);
  for (uint32_t d : dims) put_be32(s, d);
  s.append(data.begin(), data.end());
  return s;
}

void write_gzip(const std::string& path, const std::string& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  REQUIRE(f != nullptr);
  REQUIRE(gzwrite(f, bytes.data(), unsigned(bytes.size())) == int(bytes.size()));
  REQUIRE(gzclose(f) == Z_OK);
}

void write_plain(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
}

std::string read_plain(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

std::vector<uint8_t> iota_bytes(size_t n, uint8_t start) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = uint8_t(start + i);
  return v;
}

}  // namespace

// ---- The real files ----

TEST_CASE("Fashion-MNIST train split is 60000 images of 28x28 as f32 in [0, 1]") {
  const ImageDataset& d = real(Split::train);
  CHECK(d.size() == 60000);
  CHECK(d.rows == 28);
  CHECK(d.cols == 28);
  CHECK(d.images.shape() == Shape{60000, 784});
  CHECK(d.images.dtype() == DType::f32);
  CHECK(d.labels.shape() == Shape{60000});
  CHECK(d.labels.dtype() == DType::i64);
  CHECK(max(d.images).item() == 1.0);  // a pixel of 255 maps to exactly 1
  CHECK(-max(neg(d.images)).item() == 0.0);
  // First image: pixel sum 76247 / 255.
  CHECK(sum(d.images.narrow(0, 0, 1)).item() == Approx(76247.0 / 255.0).epsilon(1e-6));
}

TEST_CASE("Fashion-MNIST test split is 10000 images of 28x28") {
  const ImageDataset& d = real(Split::test);
  CHECK(d.size() == 10000);
  CHECK(d.images.shape() == Shape{10000, 784});
  CHECK(d.rows == 28);
  CHECK(d.cols == 28);
  CHECK(-max(neg(d.images)).item() >= 0.0);
  CHECK(max(d.images).item() <= 1.0);
}

TEST_CASE("Fashion-MNIST labels are 0..9 with 6000 per class in train and 1000 in test") {
  for (auto [split, per_class] : {std::pair{Split::train, 6000}, {Split::test, 1000}}) {
    std::vector<int64_t> labels = real(split).labels.to_vector<int64_t>();
    std::vector<int64_t> counts(10, 0);
    int64_t out_of_range = 0;
    for (int64_t l : labels) {
      if (l < 0 || l > 9)
        ++out_of_range;
      else
        ++counts[size_t(l)];
    }
    CHECK(out_of_range == 0);
    for (int c = 0; c < 10; ++c) {
      INFO("class " << c);
      CHECK(counts[size_t(c)] == per_class);
    }
  }
}

TEST_CASE("Fashion-MNIST first train and first test labels are 9 (ankle boot)") {
  CHECK(real(Split::train).labels.narrow(0, 0, 1).item() == 9);
  CHECK(real(Split::test).labels.narrow(0, 0, 1).item() == 9);
  // The next two of each, to pin the order (train: 9 0 0, test: 9 2 1).
  CHECK(real(Split::train).labels.narrow(0, 0, 3).to_vector<int64_t>() ==
        std::vector<int64_t>{9, 0, 0});
  CHECK(real(Split::test).labels.narrow(0, 0, 3).to_vector<int64_t>() ==
        std::vector<int64_t>{9, 2, 1});
}

// ---- Synthetic files ----

TEST_CASE("read_idx_images and read_idx_labels read a small gzip'd IDX pair byte for byte") {
  TempDir dir;
  std::vector<uint8_t> pixels = iota_bytes(3 * 2 * 4, 250);  // wraps past 255
  write_gzip(dir.file("img.gz"), idx_bytes(0x803, {3, 2, 4}, pixels));
  write_gzip(dir.file("lab.gz"), idx_bytes(0x801, {3}, {7, 0, 9}));
  int64_t rows = 0, cols = 0;
  Tensor img = read_idx_images(dir.file("img.gz"), rows, cols);
  CHECK(rows == 2);
  CHECK(cols == 4);
  CHECK(img.shape() == Shape{3, 8});
  CHECK(img.dtype() == DType::u8);
  CHECK(img.to_vector<uint8_t>() == pixels);
  Tensor lab = read_idx_labels(dir.file("lab.gz"));
  CHECK(lab.to_vector<uint8_t>() == std::vector<uint8_t>{7, 0, 9});
}

TEST_CASE("load_fashion_mnist scales pixels by 1/255 and widens labels to i64") {
  TempDir dir;
  write_gzip(dir.file("t10k-images-idx3-ubyte.gz"), idx_bytes(0x803, {2, 1, 2}, {0, 51, 255, 1}));
  write_gzip(dir.file("t10k-labels-idx1-ubyte.gz"), idx_bytes(0x801, {2}, {3, 8}));
  ImageDataset d = load_fashion_mnist(dir.file(""), Split::test);
  REQUIRE(d.images.shape() == Shape{2, 2});
  std::vector<double> px = d.images.to_vector<double>();
  std::vector<double> ref{0.0, 51.0 / 255, 1.0, 1.0 / 255};
  for (size_t i = 0; i < 4; ++i) CHECK(px[i] == Approx(ref[i]).epsilon(1e-6));
  CHECK(d.labels.to_vector<int64_t>() == std::vector<int64_t>{3, 8});
}

TEST_CASE("read_maybe_gzip reads a plain (not gzip'd) file as it is") {
  TempDir dir;
  std::string bytes = idx_bytes(0x801, {4}, {1, 2, 3, 4});
  write_plain(dir.file("plain"), bytes);
  CHECK(read_maybe_gzip(dir.file("plain")) == bytes);
  CHECK(read_idx_labels(dir.file("plain")).to_vector<uint8_t>() ==
        std::vector<uint8_t>{1, 2, 3, 4});
}

TEST_CASE("a missing file is an error naming the path") {
  TempDir dir;
  std::string path = dir.file("nope-labels-idx1-ubyte.gz");
  REQUIRE_THROWS_AS(read_idx_labels(path), Error);
  REQUIRE_THROWS_WITH(read_idx_labels(path), Contains(path));
  REQUIRE_THROWS_WITH(read_maybe_gzip(path), Contains(path));
  REQUIRE_THROWS_WITH(load_fashion_mnist("/nonexistent-forge-dir", Split::train),
                      Contains("/nonexistent-forge-dir"));
}

TEST_CASE("a file with the wrong magic is an error naming the path and the magic") {
  TempDir dir;
  // An images file where labels are expected, and the other way round.
  write_gzip(dir.file("labels.gz"), idx_bytes(0x803, {1, 1, 1}, {5}));
  write_gzip(dir.file("images.gz"), idx_bytes(0x801, {20}, iota_bytes(20, 0)));  // > a header
  std::string labels = dir.file("labels.gz"), images = dir.file("images.gz");
  REQUIRE_THROWS_AS(read_idx_labels(labels), Error);
  REQUIRE_THROWS_WITH(read_idx_labels(labels), Contains(labels) && Contains("magic"));
  int64_t r, c;
  REQUIRE_THROWS_WITH(read_idx_images(images, r, c), Contains(images) && Contains("magic"));
}

TEST_CASE("a file with less data than its header says is an error naming the path, truncated") {
  TempDir dir;
  std::string labels = dir.file("short-labels.gz"), images = dir.file("short-images.gz");
  write_gzip(labels, idx_bytes(0x801, {100}, iota_bytes(50, 0)));
  write_gzip(images, idx_bytes(0x803, {2, 28, 28}, iota_bytes(784 + 10, 0)));
  REQUIRE_THROWS_AS(read_idx_labels(labels), Error);
  REQUIRE_THROWS_WITH(read_idx_labels(labels), Contains(labels) && Contains("truncated"));
  int64_t r, c;
  REQUIRE_THROWS_WITH(read_idx_images(images, r, c), Contains(images) && Contains("truncated"));
  // Shorter than the header itself.
  std::string stub = dir.file("stub.gz");
  write_gzip(stub, std::string("\0\0\x08", 3));
  REQUIRE_THROWS_WITH(read_idx_labels(stub), Contains(stub) && Contains("truncated"));
}

TEST_CASE("a corrupt gzip stream is an error naming the path") {
  TempDir dir;
  std::string real_labels =
      std::string(testing::fashion_mnist_dir()) + "/t10k-labels-idx1-ubyte.gz";
  std::string bytes = read_plain(real_labels);
  REQUIRE(bytes.size() > 1000);
  REQUIRE(read_maybe_gzip(real_labels).size() == 10008);  // the intact copy reads
  for (size_t i = bytes.size() / 2; i < bytes.size() / 2 + 16; ++i) bytes[i] = char(~bytes[i]);
  std::string path = dir.file("corrupt-labels.gz");
  write_plain(path, bytes);
  REQUIRE_THROWS_AS(read_maybe_gzip(path), Error);
  REQUIRE_THROWS_WITH(read_maybe_gzip(path), Contains(path) && Contains("corrupt"));
  REQUIRE_THROWS_WITH(read_idx_labels(path), Contains(path) && Contains("corrupt"));
}

TEST_CASE("a gzip stream cut short is an error naming the path") {
  TempDir dir;
  std::string bytes =
      read_plain(std::string(testing::fashion_mnist_dir()) + "/t10k-labels-idx1-ubyte.gz");
  std::string path = dir.file("cut-labels.gz");
  write_plain(path, bytes.substr(0, bytes.size() / 2));
  REQUIRE_THROWS_AS(read_maybe_gzip(path), Error);
  REQUIRE_THROWS_WITH(read_maybe_gzip(path),
                      Contains(path) && (Contains("corrupt") || Contains("truncated")));
}
