#include "io/gzip_file.h"

#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "tensor/error.h"

namespace forge {

std::string read_maybe_gzip(const std::string& path) {
  FORGE_CHECK(std::filesystem::exists(path), "{}: file not found", path);
  gzFile f = gzopen(path.c_str(), "rb");
  FORGE_CHECK(f != nullptr, "{}: cannot open: {}", path, std::strerror(errno));
  std::string out;
  char buf[1 << 16];
  while (true) {
    int n = gzread(f, buf, sizeof(buf));
    if (n < 0) {
      int code = 0;
      std::string msg = gzerror(f, &code);
      gzclose(f);
      throw_error(fmt::format("{}: corrupt gzip data: {}", path, msg));
    }
    if (n == 0) break;
    out.append(buf, size_t(n));
  }
  int code = 0;
  const char* msg = gzerror(f, &code);
  std::string err = code != Z_OK && code != Z_STREAM_END ? msg : "";
  int rc = gzclose(f);
  FORGE_CHECK(err.empty(), "{}: corrupt gzip data: {}", path, err);
  FORGE_CHECK(rc == Z_OK, "{}: truncated or corrupt gzip stream (zlib error {})", path, rc);
  return out;
}

}  // namespace forge
