// float16/bfloat16 <-> float blocks for the vectorized CPU loops (gem_pool, sampled_sigmoid_loss).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>

#include "cpu/vec_math.h"

namespace fusedembed {
namespace {

namespace vm = vec_math;

// float16/bfloat16 bits <-> float, branch-free so that the block loops vectorize; the same results
// as c10's conversions (round to nearest even, NaN stays NaN, float16 overflows to inf).
template <typename scalar_t>
FUSEDEMBED_VEC_INLINE float bits_to_float(uint16_t h) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    return vm::as_float(static_cast<uint32_t>(h) << 16);
  } else {
    // Exponent and mantissa shifted into float's fields and rebiased by a multiply by 2^(127-15),
    // which also gives subnormal halves exactly; inf and NaN get float's all-ones exponent instead.
    const uint32_t em = h & 0x7fffu;
    const float mag = vm::select(em >= 0x7c00u, vm::as_float((em << 13) | 0x7f800000u),
                                 vm::as_float(em << 13) * 0x1p112f);
    return vm::as_float(vm::as_uint(mag) | (static_cast<uint32_t>(h & 0x8000u) << 16));
  }
}

template <typename scalar_t>
FUSEDEMBED_VEC_INLINE uint16_t float_to_bits(float v) {
  const uint32_t u = vm::as_uint(v);
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return static_cast<uint16_t>(v != v ? 0x7fc0u : rounded);
  } else {
    // |v| >= 2^-14: rebias the exponent and round the mantissa to 10 bits (a carry into exponent 31
    // gives inf). Below: adding 0.5 makes the float adder round |v| to a multiple of 2^-24, the
    // subnormal step, which lands in the low mantissa bits.
    const uint32_t a = u & 0x7fffffffu;
    const uint32_t normal = (a - ((127u - 15u) << 23) + 0xfffu + ((a >> 13) & 1u)) >> 13;
    const uint32_t subnormal = vm::as_uint(vm::as_float(a) + 0.5f) - 0x3f000000u;
    uint32_t h = vm::select(a < 0x38800000u, subnormal, normal);
    h = vm::select(a >= 0x47800000u, vm::select(a > 0x7f800000u, 0x7e00u, 0x7c00u), h);  // inf, or NaN
    return static_cast<uint16_t>(h | ((u >> 16) & 0x8000u));
  }
}

// dst[s * nc + c] = src[s * ld + c] and back, for s < ns, c < nc.
template <typename scalar_t>
FUSEDEMBED_VEC_INLINE void load_block_impl(const scalar_t* __restrict src, int64_t ld, int64_t ns, int64_t nc,
                                           float* __restrict dst) {
  for (int64_t s = 0; s < ns; ++s)
#pragma omp simd
    for (int64_t c = 0; c < nc; ++c) dst[s * nc + c] = bits_to_float<scalar_t>(src[s * ld + c].x);
}

template <typename scalar_t>
FUSEDEMBED_VEC_INLINE void store_block_impl(const float* __restrict src, int64_t ns, int64_t nc,
                                            scalar_t* __restrict dst, int64_t ld) {
  for (int64_t s = 0; s < ns; ++s)
#pragma omp simd
    for (int64_t c = 0; c < nc; ++c) dst[s * ld + c].x = float_to_bits<scalar_t>(src[s * nc + c]);
}

FUSEDEMBED_HOT void load_block(const c10::BFloat16* src, int64_t ld, int64_t ns, int64_t nc, float* dst) {
  load_block_impl(src, ld, ns, nc, dst);
}
FUSEDEMBED_HOT void load_block(const c10::Half* src, int64_t ld, int64_t ns, int64_t nc, float* dst) {
  load_block_impl(src, ld, ns, nc, dst);
}
FUSEDEMBED_HOT void store_block(const float* src, int64_t ns, int64_t nc, c10::BFloat16* dst, int64_t ld) {
  store_block_impl(src, ns, nc, dst, ld);
}
FUSEDEMBED_HOT void store_block(const float* src, int64_t ns, int64_t nc, c10::Half* dst, int64_t ld) {
  store_block_impl(src, ns, nc, dst, ld);
}

}  // namespace
}  // namespace fusedembed
