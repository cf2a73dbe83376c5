// Fashion-MNIST (and MNIST) from gzip'd IDX files, as Debian's dataset-fashion-mnist ships them.
//
//   ImageDataset train = load_fashion_mnist("/usr/share/datasets/fashion-mnist", Split::train);
//   train.images   // (60000, 784) f32, pixel / 255
//   train.labels   // (60000) i64 in 0..9
//
// A missing, truncated or wrong-magic file throws forge::Error naming the file and the problem.
#pragma once

#include <string>

#include "tensor/tensor.h"

namespace forge {

inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

enum class Split { train, test };

struct ImageDataset {
  Tensor images;  // (N, rows * cols) f32 in [0, 1]
  Tensor labels;  // (N) i64
  int64_t rows = 0, cols = 0;
  int64_t size() const { return labels.numel(); }
};

ImageDataset load_fashion_mnist(const std::string& dir, Split split);

// The pieces, for tests: an IDX file's contents after gunzip (images: magic 0x803, labels 0x801).
Tensor read_idx_images(const std::string& path, int64_t& rows, int64_t& cols);  // (N, r*c) u8
Tensor read_idx_labels(const std::string& path);                                // (N) u8

}  // namespace forge
