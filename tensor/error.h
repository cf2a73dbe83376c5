// Errors and checks.
//
//   FORGE_CHECK(a.dim() == 2, "matmul: expected 2-D tensors, got {} and {}", a.shape(), b.shape());
//   FORGE_ASSERT(offset >= 0);   // an internal invariant: prints file and line
//
// FORGE_CHECK is for what a caller can get wrong (shapes, dtypes, files, configs): it throws
// forge::Error (a std::invalid_argument) whose message says what was wrong. FORGE_ASSERT is for
// our own invariants: it throws std::logic_error naming the file and line.
#pragma once

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <stdexcept>
#include <string>

namespace forge {

class Error : public std::invalid_argument {
 public:
  explicit Error(const std::string& what) : std::invalid_argument(what) {}
};

[[noreturn]] void throw_error(std::string message);
[[noreturn]] void throw_assert(const char* expr, const char* file, int line);

}  // namespace forge

#define FORGE_CHECK(cond, ...)                          \
  do {                                                  \
    if (!(cond)) [[unlikely]]                           \
      ::forge::throw_error(::fmt::format(__VA_ARGS__)); \
  } while (0)

#define FORGE_ASSERT(cond)                              \
  do {                                                  \
    if (!(cond)) [[unlikely]]                           \
      ::forge::throw_assert(#cond, __FILE__, __LINE__); \
  } while (0)
