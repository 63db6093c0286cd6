// Picks the kernel table at import: the best ISA the CPU *and OS* support, or the one named
// by SEQCORE_ISA (an unknown or unsupported name is an error, reported as ImportError).
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/dispatch.h"
#include "runtime/kernels.h"

namespace seqcore {
namespace scalar { void fill_table(Kernels&); }
namespace avx2 { void fill_table(Kernels&); }
#if SEQCORE_BUILT_AVX512
namespace avx512 { void fill_table(Kernels&); }
#endif

namespace {
Kernels g_table{};

unsigned long long xgetbv0() {
  unsigned eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<unsigned long long>(edx) << 32) | eax;
}

bool os_saves(unsigned long long mask) {
  __builtin_cpu_init();
  unsigned eax, ebx, ecx, edx;
  __asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(1), "c"(0));
  if (!(ecx & (1u << 27))) return false;  // OSXSAVE
  return (xgetbv0() & mask) == mask;
}
}  // namespace

std::vector<std::string> built_isas() {
#if SEQCORE_BUILT_AVX512
  return {"scalar", "avx2", "avx512"};
#else
  return {"scalar", "avx2"};
#endif
}

std::vector<std::string> available_isas() {
  __builtin_cpu_init();
  std::vector<std::string> out{"scalar"};
  bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && os_saves(0x6);
  if (avx2) out.push_back("avx2");
  bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && os_saves(0xE6);
#if SEQCORE_BUILT_AVX512
  if (avx512) out.push_back("avx512");
#else
  (void)avx512;  // this build has no AVX-512 kernels (SEQCORE_ISAS)
#endif
  return out;
}

void init_dispatch(const char* forced) {
  std::vector<std::string> have = available_isas();
  std::string pick = have.back();
  if (forced && *forced) {
    std::string want(forced);
    if (want != "scalar" && want != "avx2" && want != "avx512")
      throw std::runtime_error("SEQCORE_ISA='" + want + "' is not one of scalar, avx2, avx512");
    bool ok = false;
    for (auto& h : have) ok = ok || h == want;
    if (!ok) {
      std::string list;
      for (auto& h : have) list += (list.empty() ? "" : ", ") + h;
#if !SEQCORE_BUILT_AVX512
      if (want == "avx512")
        throw std::runtime_error("SEQCORE_ISA='avx512' is not supported by this build of seqcore (no AVX-512 "
                                 "kernels were compiled; available: " + list + ")");
#endif
      throw std::runtime_error("SEQCORE_ISA='" + want + "' is not supported by this CPU (available: " + list + ")");
    }
    pick = want;
  }
#if SEQCORE_BUILT_AVX512
  if (pick == "avx512") avx512::fill_table(g_table);
  else
#endif
  if (pick == "avx2") avx2::fill_table(g_table);
  else scalar::fill_table(g_table);
}

const Kernels& kernels() { return g_table; }

}  // namespace seqcore
