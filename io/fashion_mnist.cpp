#include "io/fashion_mnist.h"

#include <cstring>

#include "io/gzip_file.h"
#include "tensor/ops.h"

namespace forge {

namespace {

uint32_t be32(const std::string& b, size_t at) {
  auto u = [&](size_t i) { return uint32_t(uint8_t(b[at + i])); };
  return u(0) << 24 | u(1) << 16 | u(2) << 8 | u(3);
}

// Checks the header of an IDX file and returns its dims.
std::vector<int64_t> idx_dims(const std::string& bytes, const std::string& path, uint32_t magic,
                              int ndims) {
  size_t header = 4 + 4 * size_t(ndims);
  FORGE_CHECK(bytes.size() >= 4, "{}: truncated: {} bytes is shorter than an IDX magic number",
              path, bytes.size());
  uint32_t got = be32(bytes, 0);
  FORGE_CHECK(got == magic, "{}: wrong magic 0x{:08x} (expected 0x{:08x}, {})", path, got, magic,
              magic == 0x803 ? "IDX images" : "IDX labels");
  FORGE_CHECK(bytes.size() >= header, "{}: truncated: {} bytes is shorter than an IDX header", path,
              bytes.size());
  std::vector<int64_t> dims;
  int64_t total = 1;
  for (int i = 0; i < ndims; ++i) {
    dims.push_back(int64_t(be32(bytes, 4 + 4 * size_t(i))));
    total *= dims.back();
  }
  FORGE_CHECK(bytes.size() == header + size_t(total),
              "{}: truncated or padded: header says {} bytes of data, file has {}", path, total,
              bytes.size() - header);
  return dims;
}

}  // namespace

Tensor read_idx_images(const std::string& path, int64_t& rows, int64_t& cols) {
  std::string bytes = read_maybe_gzip(path);
  std::vector<int64_t> d = idx_dims(bytes, path, 0x803, 3);
  rows = d[1];
  cols = d[2];
  Tensor t = Tensor::empty({d[0], d[1] * d[2]}, DType::u8);
  if (t.numel()) std::memcpy(t.raw_data(), bytes.data() + 16, size_t(t.numel()));
  return t;
}

Tensor read_idx_labels(const std::string& path) {
  std::string bytes = read_maybe_gzip(path);
  std::vector<int64_t> d = idx_dims(bytes, path, 0x801, 1);
  Tensor t = Tensor::empty({d[0]}, DType::u8);
  if (t.numel()) std::memcpy(t.raw_data(), bytes.data() + 8, size_t(t.numel()));
  return t;
}

ImageDataset load_fashion_mnist(const std::string& dir, Split split) {
  std::string prefix = dir + (split == Split::train ? "/train" : "/t10k");
  ImageDataset ds;
  Tensor images = read_idx_images(prefix + "-images-idx3-ubyte.gz", ds.rows, ds.cols);
  Tensor labels = read_idx_labels(prefix + "-labels-idx1-ubyte.gz");
  FORGE_CHECK(images.size(0) == labels.size(0), "{}: {} images but {} labels", prefix,
              images.size(0), labels.size(0));
  ds.images = mul(images.to(DType::f32), 1.0 / 255.0);
  ds.labels = labels.to(DType::i64);
  return ds;
}

}  // namespace forge
