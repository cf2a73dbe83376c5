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
#include <string_view>
#include <vector>

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

// A file opened for reading parts of it (a rank's slices of a checkpoint): the header parsed and
// checked against the file's size (shapes, offsets, tiling, the metadata's checksum), tensors
// read on demand with pread.
//
//   SafetensorsReader r("model-pp0-tp0.safetensors");
//   Tensor w = r.read("transformer.wte.weight");                       // whole, checksum checked
//   Tensor rows = r.read_slice("transformer.wte.weight", 0, 32, 33);   // rows [32, 65) only
//
// A slice reads only its own bytes, so its checksum (which covers the whole tensor) is not
// verified; a slice that is the whole tensor is read and verified as read() does.
class SafetensorsReader {
 public:
  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
    uint64_t begin, end;  // bytes of the data section
  };
  explicit SafetensorsReader(const std::string& path);
  ~SafetensorsReader();
  SafetensorsReader(const SafetensorsReader&) = delete;
  SafetensorsReader& operator=(const SafetensorsReader&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::vector<Entry>& entries() const { return entries_; }  // in file order
  const Entry* find(const std::string& name) const;               // nullptr if absent
  Tensor read(const std::string& name) const;  // throws naming the file and tensor
  // [begin, begin + count) of dim `dim`, contiguous.
  Tensor read_slice(const std::string& name, int dim, int64_t begin, int64_t count) const;
  int64_t bytes_read() const { return bytes_read_; }  // by this reader, header included

 private:
  const Entry& entry(const std::string& name) const;
  void pread_all(void* out, uint64_t n, uint64_t offset) const;
  std::string path_;
  int fd_ = -1;
  uint64_t data_start_ = 0;
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_, crcs_;
  mutable int64_t bytes_read_ = 0;
};

// Writes `bytes` (or `parts`, one after another) to `path` atomically: temporary file, fsync,
// rename, fsync of the directory.
void write_file_atomically(const std::string& path, const std::string& bytes);
void write_file_atomically(const std::string& path, const std::vector<std::string_view>& parts);
// Makes a directory's entries (files created or renamed in it) durable.
void fsync_directory(const std::string& dir);

// safetensors' dtype names: F32, F64, BF16, F16, I8, U8, I32, I64.
const char* safetensors_dtype(DType t);

}  // namespace forge
