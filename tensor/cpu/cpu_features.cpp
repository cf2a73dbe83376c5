#include "tensor/cpu/cpu_features.h"

#include <cstdlib>
#include <cstring>

#include "tensor/error.h"

namespace forge::cpu {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::portable:
      return "portable";
    case Isa::avx2:
      return "avx2";
    case Isa::avx512:
      return "avx512";
  }
  return "?";
}

Isa parse_isa(const char* name) {
  for (Isa i : {Isa::portable, Isa::avx2, Isa::avx512})
    if (std::strcmp(name, isa_name(i)) == 0) return i;
  throw_error(
      fmt::format("unknown CPU kernel family '{}' (expected portable, avx2 or avx512)", name));
}

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::portable:
      return true;
    case Isa::avx2:
#if defined(__x86_64__)
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
#else
      return false;
#endif
    case Isa::avx512:
#if defined(__x86_64__)
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
#else
      return false;
#endif
  }
  return false;
}

bool cpu_has_avx512_bf16() {
#if defined(__x86_64__)
  // libgcc's check includes the OS's support for the zmm and mask state.
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

Isa best_isa() {
  if (isa_supported(Isa::avx512)) return Isa::avx512;
  if (isa_supported(Isa::avx2)) return Isa::avx2;
  return Isa::portable;
}

namespace {
Isa initial_isa() {
  if (const char* env = std::getenv("FORGE_CPU_ISA")) {
    Isa want = parse_isa(env);
    FORGE_CHECK(isa_supported(want), "FORGE_CPU_ISA={}: this processor cannot run it", env);
    return want;
  }
  return best_isa();
}
Isa g_isa = initial_isa();
}  // namespace

Isa cpu_isa() {
  return g_isa;
}

void set_cpu_isa(Isa isa) {
  FORGE_CHECK(isa_supported(isa), "CPU kernel family {} is not supported by this processor",
              isa_name(isa));
  g_isa = isa;
}

}  // namespace forge::cpu
