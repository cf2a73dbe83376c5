#include "tensor/error.h"

namespace forge {

void throw_error(std::string message) {
  throw Error(message);
}

void throw_assert(const char* expr, const char* file, int line) {
  throw std::logic_error(
      fmt::format("internal error: assertion '{}' failed at {}:{}", expr, file, line));
}

}  // namespace forge
