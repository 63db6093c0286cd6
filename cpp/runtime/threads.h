#pragma once
namespace seqcore {
// The OpenMP pool size for kernels called from this thread (honours OMP_NUM_THREADS and
// threadpoolctl, which set the same OpenMP ICV).
int get_num_threads();
void set_num_threads(int n);  // n >= 1
// At least as many threads as the OpenMP pool can hold workers that ran seqcore kernels (the
// largest size ever set, the current one, the CPU count): a team this large reaches them all.
int largest_pool();
}  // namespace seqcore
