// Marks functions shared verbatim by the CPU backend and CUDA kernels: one definition of the math.
#pragma once

#if defined(__CUDACC__)
#define MIXTRAIN_HD __host__ __device__ __forceinline__
#else
#define MIXTRAIN_HD inline
#endif
