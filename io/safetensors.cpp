#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "io/text_data.h"

namespace forge {

const char* safetensors_dtype(DType t) {
  switch (t) {
    case DType::f32:
      return "F32";
    case DType::f64:
      return "F64";
    case DType::bf16:
      return "BF16";
    case DType::f16:
      return "F16";
    case DType::i8:
      return "I8";
    case DType::u8:
      return "U8";
    case DType::i32:
      return "I32";
    case DType::i64:
      return "I64";
  }
  return "?";
}

namespace {

constexpr const char* kCrcPrefix = "crc32:";
constexpr uint64_t kMaxHeader = 100u << 20;

bool parse_safetensors_dtype(const std::string& s, DType& out) {
  for (DType t : {DType::f32, DType::f64, DType::bf16, DType::f16, DType::i8, DType::u8, DType::i32,
                  DType::i64})
    if (s == safetensors_dtype(t)) {
      out = t;
      return true;
    }
  return false;
}

uint32_t crc_of(const void* p, size_t n) {
  uLong c = crc32(0L, Z_NULL, 0);
  const auto* b = static_cast<const Bytef*>(p);
  while (n > 0) {  // zlib takes 32-bit lengths
    uInt chunk = uInt(std::min<size_t>(n, size_t(1) << 30));
    c = crc32(c, b, chunk);
    b += chunk;
    n -= chunk;
  }
  return uint32_t(c);
}

// A checksum of the user metadata, so a flipped bit in, say, the stored config is caught too.
uint32_t metadata_crc(const std::map<std::string, std::string>& metadata) {
  std::string all;
  for (const auto& [k, v] : metadata) {
    all += k;
    all += '\0';
    all += v;
    all += '\0';
  }
  return crc_of(all.data(), all.size());
}
constexpr const char* kMetadataCrc = "__metadata__";

void sys_check(bool ok, const std::string& what) {
  FORGE_CHECK(ok, "{}: {}", what, std::strerror(errno));
}

}  // namespace

const Tensor* SafetensorsContents::find(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return &t;
  return nullptr;
}

void write_file_atomically(const std::string& path, const std::string& bytes) {
  write_file_atomically(path, std::vector<std::string_view>{bytes});
}

void write_file_atomically(const std::string& path, const std::vector<std::string_view>& parts) {
  std::filesystem::path target(path);
  std::filesystem::path dir = target.has_parent_path() ? target.parent_path() : ".";
  std::string tmp =
      (dir / fmt::format(".{}.tmp.{}", target.filename().string(), getpid())).string();
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  sys_check(fd >= 0, fmt::format("{}: cannot create", tmp));
  for (std::string_view bytes : parts) {
    size_t done = 0;
    while (done < bytes.size()) {
      ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        int e = errno;
        ::close(fd);
        ::unlink(tmp.c_str());
        errno = e;
        sys_check(false, fmt::format("{}: write failed", tmp));
      }
      done += size_t(n);
    }
  }
  bool synced = ::fsync(fd) == 0;
  int e = errno;
  ::close(fd);
  if (!synced) {
    ::unlink(tmp.c_str());
    errno = e;
    sys_check(false, fmt::format("{}: fsync failed", tmp));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    e = errno;
    ::unlink(tmp.c_str());
    errno = e;
    sys_check(false, fmt::format("{}: cannot rename into place", path));
  }
  fsync_directory(dir.string());
}

void fsync_directory(const std::string& dir) {
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header;
  nlohmann::ordered_json meta = nlohmann::ordered_json::object();
  for (const auto& [k, v] : metadata) {
    FORGE_CHECK(k.rfind(kCrcPrefix, 0) != 0, "{}: metadata key '{}' is reserved", path, k);
    meta[k] = v;
  }
  meta[std::string(kCrcPrefix) + kMetadataCrc] = fmt::format("{:08x}", metadata_crc(metadata));
  std::vector<Tensor> data;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    FORGE_CHECK(!name.empty() && name != "__metadata__", "{}: invalid tensor name '{}'", path,
                name);
    FORGE_CHECK(!header.contains(name), "{}: tensor '{}' given twice", path, name);
    FORGE_CHECK(t.defined(), "{}: tensor '{}' is undefined", path, name);
    Tensor c = t.device().is_cpu() ? t.contiguous() : t.to(Device::cpu());  // device: a host copy
    header[name] = {{"dtype", safetensors_dtype(c.dtype())},
                    {"shape", c.shape().vec()},
                    {"data_offsets", {offset, offset + c.nbytes()}}};
    meta[kCrcPrefix + name] = fmt::format("{:08x}", crc_of(c.raw_data(), c.nbytes()));
    offset += c.nbytes();
    data.push_back(c);
  }
  nlohmann::ordered_json doc;
  doc["__metadata__"] = meta;
  for (auto& [k, v] : header.items()) doc[k] = v;
  std::string json = doc.dump();
  json.resize((json.size() + 7) / 8 * 8, ' ');
  std::string head(8, '\0');
  uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) head[size_t(i)] = char((n >> (8 * i)) & 0xff);
  head += json;
  // Written from the tensors' own memory: a save takes no second copy of what it writes.
  std::vector<std::string_view> parts{head};
  for (const Tensor& c : data)
    parts.emplace_back(static_cast<const char*>(c.raw_data()), size_t(c.nbytes()));
  write_file_atomically(path, parts);
}

// ---------------------------------------------------------------------------------------------
// Reading

SafetensorsReader::SafetensorsReader(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  FORGE_CHECK(fd_ >= 0, "{}: {}", path, errno == ENOENT ? "not found" : std::strerror(errno));
  struct stat st {};
  sys_check(::fstat(fd_, &st) == 0, path);
  const uint64_t file_size = uint64_t(st.st_size);
  FORGE_CHECK(file_size >= 8, "{}: truncated: {} bytes, shorter than the 8-byte header length",
              path, file_size);
  unsigned char len[8];
  pread_all(len, 8, 0);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t(len[i]) << (8 * i);
  FORGE_CHECK(n <= kMaxHeader && n <= file_size - 8,
              "{}: corrupt or truncated: header length {} but the file has {} bytes", path, n,
              file_size);
  std::string header(n, '\0');
  pread_all(header.data(), n, 8);
  data_start_ = 8 + n;
  const uint64_t data_size = file_size - 8 - n;
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(header);
  } catch (const std::exception& e) {
    throw_error(fmt::format("{}: corrupt header (not valid JSON): {}", path, e.what()));
  }
  FORGE_CHECK(doc.is_object(), "{}: corrupt header: not a JSON object", path);

  if (doc.contains("__metadata__")) {
    const auto& m = doc["__metadata__"];
    FORGE_CHECK(m.is_object(), "{}: corrupt header: __metadata__ is not an object", path);
    for (const auto& [k, v] : m.items()) {
      FORGE_CHECK(v.is_string(), "{}: corrupt header: metadata '{}' is not a string", path, k);
      if (k.rfind(kCrcPrefix, 0) == 0)
        crcs_[k.substr(std::strlen(kCrcPrefix))] = v.get<std::string>();
      else
        metadata_[k] = v.get<std::string>();
    }
  }
  for (const auto& [name, v] : doc.items()) {
    if (name == "__metadata__") continue;
    FORGE_CHECK(
        v.is_object() && v.contains("dtype") && v.contains("shape") && v.contains("data_offsets"),
        "{}: corrupt header: tensor '{}' lacks dtype, shape or data_offsets", path, name);
    Entry e{name, DType::f32, {}, 0, 0};
    FORGE_CHECK(
        v["dtype"].is_string() && parse_safetensors_dtype(v["dtype"].get<std::string>(), e.dtype),
        "{}: tensor '{}' has unsupported dtype {}", path, name, v["dtype"].dump());
    FORGE_CHECK(v["shape"].is_array() && v["shape"].size() <= size_t(kMaxDims),
                "{}: tensor '{}' has an invalid shape {}", path, name, v["shape"].dump());
    for (const auto& d : v["shape"]) {
      FORGE_CHECK(d.is_number_unsigned(), "{}: tensor '{}' has an invalid shape {}", path, name,
                  v["shape"].dump());
      e.shape.push_back(int64_t(d.get<uint64_t>()));
    }
    const auto& off = v["data_offsets"];
    FORGE_CHECK(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() &&
                    off[1].is_number_unsigned(),
                "{}: tensor '{}' has invalid data_offsets {}", path, name, off.dump());
    e.begin = off[0].get<uint64_t>();
    e.end = off[1].get<uint64_t>();
    FORGE_CHECK(
        e.begin <= e.end && e.end - e.begin == uint64_t(e.shape.numel()) * dtype_size(e.dtype),
        "{}: tensor '{}': data_offsets [{}, {}) do not hold {} {} of shape {}", path, name, e.begin,
        e.end, e.shape.numel(), dtype_name(e.dtype), e.shape);
    FORGE_CHECK(e.end <= data_size,
                "{}: truncated: tensor '{}' needs bytes [{}, {}) of data, the file has {}", path,
                name, e.begin, e.end, data_size);
    entries_.push_back(e);
  }
  // The tensors must tile the data exactly (no overlap, no hole, nothing after the last).
  std::sort(entries_.begin(), entries_.end(),
            [](const Entry& a, const Entry& b) { return a.begin < b.begin; });
  uint64_t at = 0;
  for (const Entry& e : entries_) {
    FORGE_CHECK(e.begin == at, "{}: corrupt: tensor '{}' starts at byte {}, expected {}", path,
                e.name, e.begin, at);
    at = e.end;
  }
  FORGE_CHECK(at == data_size, "{}: corrupt: {} bytes of data after the last tensor", path,
              data_size - at);
  // A file with checksums (one forge wrote) must have all of them: a bit flipped in a checksum's
  // key would otherwise silently turn the check off, or turn the checksum into user metadata.
  if (!crcs_.empty()) {
    FORGE_CHECK(crcs_.count(kMetadataCrc), "{}: corrupt: the metadata checksum is missing", path);
    for (const Entry& e : entries_)
      FORGE_CHECK(crcs_.count(e.name), "{}: corrupt: tensor '{}' has no checksum", path, e.name);
    for (const auto& [name, crc] : crcs_)
      FORGE_CHECK(name == kMetadataCrc || find(name) != nullptr,
                  "{}: corrupt: a checksum for '{}', which is not in the file", path, name);
  }
  if (auto it = crcs_.find(kMetadataCrc); it != crcs_.end()) {
    std::string got = fmt::format("{:08x}", metadata_crc(metadata_));
    FORGE_CHECK(got == it->second, "{}: corrupt: the metadata fails its checksum ({} != {})", path,
                got, it->second);
  }
}

SafetensorsReader::~SafetensorsReader() {
  if (fd_ >= 0) ::close(fd_);
}

void SafetensorsReader::pread_all(void* out, uint64_t n, uint64_t offset) const {
  char* p = static_cast<char*>(out);
  while (n > 0) {
    const ssize_t got = ::pread(fd_, p, n, off_t(offset));
    if (got < 0 && errno == EINTR) continue;
    FORGE_CHECK(got > 0, "{}: read of {} bytes at {} failed: {}", path_, n, offset,
                got < 0 ? std::strerror(errno) : "end of file");
    p += got;
    n -= uint64_t(got);
    offset += uint64_t(got);
    bytes_read_ += got;
  }
}

const SafetensorsReader::Entry* SafetensorsReader::find(const std::string& name) const {
  for (const Entry& e : entries_)
    if (e.name == name) return &e;
  return nullptr;
}

const SafetensorsReader::Entry& SafetensorsReader::entry(const std::string& name) const {
  const Entry* e = find(name);
  FORGE_CHECK(e != nullptr, "{}: no tensor '{}'", path_, name);
  return *e;
}

Tensor SafetensorsReader::read(const std::string& name) const {
  const Entry& e = entry(name);
  Tensor t = Tensor::empty(e.shape, e.dtype);
  if (t.nbytes()) pread_all(t.raw_data(), t.nbytes(), data_start_ + e.begin);
  if (auto it = crcs_.find(e.name); it != crcs_.end()) {
    std::string got = fmt::format("{:08x}", crc_of(t.raw_data(), t.nbytes()));
    FORGE_CHECK(got == it->second, "{}: corrupt: tensor '{}' fails its checksum ({} != {})", path_,
                e.name, got, it->second);
  }
  return t;
}

Tensor SafetensorsReader::read_slice(const std::string& name, int dim, int64_t begin,
                                     int64_t count) const {
  const Entry& e = entry(name);
  FORGE_CHECK(dim >= 0 && dim < int(e.shape.size()) && begin >= 0 && count >= 0 &&
                  begin + count <= e.shape[size_t(dim)],
              "{}: tensor '{}' {} has no slice [{}, {}) of dim {}", path_, name, e.shape, begin,
              begin + count, dim);
  if (begin == 0 && count == e.shape[size_t(dim)]) return read(name);  // whole: verified
  Shape shape = e.shape;
  shape[size_t(dim)] = count;
  Tensor t = Tensor::empty(shape, e.dtype);
  // (outer, D, inner) around dim: one run of count * inner elements per outer index.
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < dim; ++i) outer *= e.shape[size_t(i)];
  for (size_t i = size_t(dim) + 1; i < size_t(e.shape.size()); ++i) inner *= e.shape[i];
  const uint64_t es = dtype_size(e.dtype), run = uint64_t(count * inner) * es;
  char* out = static_cast<char*>(t.raw_data());
  for (int64_t o = 0; o < outer && run > 0; ++o)
    pread_all(out + uint64_t(o) * run, run,
              data_start_ + e.begin + uint64_t((o * e.shape[size_t(dim)] + begin) * inner) * es);
  return t;
}

SafetensorsContents load_safetensors(const std::string& path) {
  SafetensorsReader r(path);
  SafetensorsContents out;
  out.metadata = r.metadata();
  for (const SafetensorsReader::Entry& e : r.entries())
    out.tensors.emplace_back(e.name, r.read(e.name));
  return out;
}

}  // namespace forge
