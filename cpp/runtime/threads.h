#pragma once
namespace seqcore {
// The OpenMP pool size for kernels called from this thread (honours OMP_NUM_THREADS and
// threadpoolctl, which set the same OpenMP ICV).
int get_num_threads();
void set_num_threads(int n);  // n >= 1
}  // namespace seqcore
