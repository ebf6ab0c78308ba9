// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11): a
// counter-based generator, so any (key, counter) is drawn independently, in any order, on any
// device. The CPU kernels, the CUDA kernels and the PyTorch reference (fusedembed/ops/_reference.py)
// all implement exactly these rounds, which is what makes their random decisions bit-identical.
#pragma once

#include <cstdint>

#ifndef FUSEDEMBED_HD
#if defined(__CUDACC__)
#define FUSEDEMBED_HD __host__ __device__ __forceinline__
#else
#define FUSEDEMBED_HD inline
#endif
#endif

namespace fusedembed {

struct Philox4x32 {
  uint32_t v[4];
};

FUSEDEMBED_HD uint32_t philox_mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
#if defined(__CUDA_ARCH__)
  *hi = __umulhi(a, b);
  return a * b;
#else
  const uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  return static_cast<uint32_t>(p);
#endif
}

// The 10-round Philox4x32 bijection of counter c under key (k0, k1).
FUSEDEMBED_HD Philox4x32 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                       uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;  // round multipliers
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;  // Weyl key increments
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = philox_mulhilo(kM0, c0, &hi0);
    const uint32_t lo1 = philox_mulhilo(kM1, c2, &hi1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  return Philox4x32{{c0, c1, c2, c3}};
}

// A uniform draw in [0, 1) with 24 random bits: exact in float32, so comparing it with a float32
// probability gives the same decision on every device and in the PyTorch reference.
FUSEDEMBED_HD float philox_uniform24(uint32_t x) {
  return static_cast<float>(x >> 8) * (1.0f / 16777216.0f);
}

}  // namespace fusedembed
