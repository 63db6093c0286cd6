#pragma once
#include <string>
#include <vector>

namespace seqcore {
// ISAs this CPU and OS can run and this build has kernels for, best last ("scalar" first).
std::vector<std::string> available_isas();
// ISAs this build has kernels for (CMake's SEQCORE_ISAS), whatever the CPU.
std::vector<std::string> built_isas();
// Chooses the kernel table; `forced` (may be null/empty) names an ISA. Throws
// std::runtime_error when the name is unknown or the CPU lacks it.
void init_dispatch(const char* forced);
}  // namespace seqcore
