// Reads a whole file, gunzipping it when it is gzip'd (zlib reads plain files as they are).
//
//   std::string bytes =
//   read_maybe_gzip("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz");
#pragma once

#include <string>

namespace forge {

// Throws forge::Error naming the file when it is missing or its gzip stream is corrupt/truncated.
std::string read_maybe_gzip(const std::string& path);

}  // namespace forge
