#pragma once
#include <string>
#include <vector>

namespace seqcore {
// ISAs this CPU and OS can run, best last ("scalar" always first).
std::vector<std::string> available_isas();
// Chooses the kernel table; `forced` (may be null/empty) names an ISA. Throws
// std::runtime_error when the name is unknown or the CPU lacks it.
void init_dispatch(const char* forced);
}  // namespace seqcore
