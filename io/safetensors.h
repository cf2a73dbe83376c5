// safetensors files: the format of Hugging Face's safetensors library, readable by any reader of
// it.
//
//   save_safetensors("model.safetensors", model.state_dict(), {{"config", cfg_json}});
//   SafetensorsContents c = load_safetensors("model.safetensors");
//   const Tensor* w = c.find("transformer.wte.weight");
//   c.metadata.at("config");
//
// Layout: an 8-byte little-endian header length N, N bytes of JSON ({"name": {"dtype": "F32",
// "shape": [...], "data_offsets": [begin, end]}, ..., "__metadata__": {"key": "value"}}, padded
// with spaces to a multiple of 8), then the tensors' raw little-endian bytes, back to back.
//
// Writes go to a temporary file beside the target, are fsynced and renamed into place, so a crash
// never leaves a half-written file under the real name. Each tensor's CRC-32 is stored in the
// metadata ("crc32:<name>"); loading checks every offset, size and checksum and refuses a truncated
// or corrupted file with an error naming the file and the tensor.
#pragma once

#include <map>
#include <string>

#include "tensor/tensor.h"

namespace forge {

struct SafetensorsContents {
  NamedTensors tensors;                         // in file order
  std::map<std::string, std::string> metadata;  // without the crc32 entries
  const Tensor* find(const std::string& name) const;
};

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});
SafetensorsContents load_safetensors(const std::string& path);

// Writes `bytes` to `path` atomically: temporary file, fsync, rename, fsync of the directory.
void write_file_atomically(const std::string& path, const std::string& bytes);
// Makes a directory's entries (files created or renamed in it) durable.
void fsync_directory(const std::string& dir);

// safetensors' dtype names: F32, F64, BF16, F16, I8, U8, I32, I64.
const char* safetensors_dtype(DType t);

}  // namespace forge
