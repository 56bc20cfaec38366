// Marks functions shared verbatim by the CPU backend and CUDA kernels: one definition of the math.
#pragma once

#if defined(__CUDACC__)
#define MIXTRAIN_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Always inlined on the host too: the CPU kernels' loops only vectorise once the shared math is
// inlined and its switch on a constant (activation, optimizer kind) folded away.
#define MIXTRAIN_HD inline __attribute__((always_inline))
#else
#define MIXTRAIN_HD inline
#endif
