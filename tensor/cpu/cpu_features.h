// What the processor can do, and which kernel family runs.
//
//   cpu_isa()                 // the family in use: Isa::avx512, Isa::avx2 or Isa::portable
//   set_cpu_isa(Isa::avx2)    // force one (tests reach every path this machine supports)
//   FORGE_CPU_ISA=portable build/apps/train ...   // the same from the environment
//
// The build targets the machine that built it (-march); the wide-vector kernels are compiled for
// their instruction sets separately and chosen here at run time, so a binary built with AVX-512
// kernels still runs (on the AVX2 or portable kernels) on a processor without AVX-512.
#pragma once

namespace forge::cpu {

enum class Isa { portable, avx2, avx512 };

const char* isa_name(Isa isa);
bool isa_supported(Isa isa);  // by this processor (and compiled into this build)
Isa best_isa();               // the widest supported
Isa cpu_isa();                // in use: FORGE_CPU_ISA if set, else best_isa()
// Forces a family; throws naming it when this processor or build cannot run it.
void set_cpu_isa(Isa isa);
Isa parse_isa(const char* name);
// AVX512_BF16 (vdpbf16ps), with the OS's zmm state: the native bf16 products (cpu/gemm.h).
bool cpu_has_avx512_bf16();

}  // namespace forge::cpu
