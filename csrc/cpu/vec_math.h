// Branch-free float log2/exp2 for hot CPU loops.
//
// std::log/std::exp are opaque library calls that keep a loop scalar. These are plain arithmetic,
// bit casts and selects, always inlined, so GCC vectorizes a loop that calls them (SSE2 on generic
// x86-64; 8-wide AVX2/FMA code inside functions built for that target). No -ffast-math is needed
// or wanted: the range reductions rely on IEEE rounding.
//
// Two flavours:
//  - log2f_full / exp2f_full follow the C library on the whole float range: log2(0) = -inf,
//    log2(+inf) = +inf, log2(x < 0) = NaN, subnormal x correct; exp2 overflows to +inf and
//    underflows through subnormals to 0, exp2(-inf) = 0; NaN in, NaN out.
//  - log2f_normal / exp2f_flush, about half the instructions, for loops whose caller has checked
//    the range: log2f_normal needs a positive normal finite x; exp2f_flush returns 0 below
//    2^-126.5 (where exp2f_full gives a subnormal) and +inf from 2^127.5 on (exp2f_full: above
//    2^128), and equals exp2f_full in between.
// Accuracy (checked against double over the float range): log2 within 1e-7 relative for
// |log2 x| >= 1 and 1.2e-7 absolute below; exp2 within 1.1e-7 relative (normal results).
#pragma once

#include <bit>
#include <cstdint>
#include <limits>

#define FUSEDEMBED_VEC_INLINE inline __attribute__((always_inline))

// Hot loops are also built for x86-64-v3 (AVX2 + FMA) and picked at load time (GCC function
// multiversioning), so the generic x86-64 binary runs 8-wide where the CPU can.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__ELF__)
#define FUSEDEMBED_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FUSEDEMBED_HOT
#endif

namespace fusedembed {
namespace vec_math {

constexpr float kLn2 = 0.693147180559945309f;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Bit manipulation is done in uint32_t, where wrap-around is defined.
FUSEDEMBED_VEC_INLINE float as_float(uint32_t i) { return std::bit_cast<float>(i); }
FUSEDEMBED_VEC_INLINE uint32_t as_uint(float f) { return std::bit_cast<uint32_t>(f); }

// c ? a : b as bit operations, so that a and b are both computed whatever c is.
//
// Why: GCC keeps a loop scalar when a branch arm holds floating-point arithmetic (under the
// default -ftrapping-math it may not execute an operation that could raise an FP exception
// speculatively), and `c ? f(x) : g(x)` on floats is a branch to it. Worse, it sinks arithmetic
// that feeds only one arm into that arm, and threads branches whose outcome makes later code
// constant. Plain ?: is fine where both arms are already-computed values and the result feeds
// arithmetic on every path (a clamp); everything else below uses select().
FUSEDEMBED_VEC_INLINE float select(bool c, float a, float b) {
  const uint32_t mask = 0u - static_cast<uint32_t>(c);
  return as_float((as_uint(a) & mask) | (as_uint(b) & ~mask));
}
FUSEDEMBED_VEC_INLINE uint32_t select(bool c, uint32_t a, uint32_t b) {
  const uint32_t mask = 0u - static_cast<uint32_t>(c);
  return (a & mask) | (b & ~mask);
}

// log2(m) for m in [sqrt(1/2), sqrt(2)]: 2/ln2 * atanh(s), s = (m-1)/(m+1), |s| <= 0.1716, odd
// series up to s^9 (truncation error < 3e-9 relative). m - 1 is exact (Sterbenz).
FUSEDEMBED_VEC_INLINE float log2_reduced(float m) {
  const float s = (m - 1.0f) / (m + 1.0f);
  const float s2 = s * s;
  float poly = 0.32059376f;        // 2/(9 ln2)
  poly = poly * s2 + 0.41219197f;  // 2/(7 ln2)
  poly = poly * s2 + 0.57706874f;  // 2/(5 ln2)
  poly = poly * s2 + 0.96179669f;  // 2/(3 ln2)
  poly = poly * s2 + 2.88539008f;  // 2/ln2
  return s * poly;
}

// Splits the bits of a positive normal float into 2^k * m with m in [sqrt(1/2), sqrt(2)) and
// returns k + log2(m): k from the exponent field, rounded so that mantissas above sqrt(2) count
// as the next power of two.
FUSEDEMBED_VEC_INLINE float log2_bits(uint32_t ix, int32_t k_offset) {
  const uint32_t t = ix - 0x3f3504f3u;  // bits of sqrt(1/2)
  // Arithmetic shift of t as signed: the exponent relative to that of sqrt(1/2).
  const int32_t k = (static_cast<int32_t>(t) >> 23) - k_offset;
  const float m = as_float(ix - (t & 0xff800000u));
  return static_cast<float>(k) + log2_reduced(m);
}

// 2^f for f in [-0.5, 0.5]: near-minimax degree 6, relative error < 1.6e-8.
FUSEDEMBED_VEC_INLINE float exp2_reduced(float f) {
  float poly = 1.5370721e-4f;
  poly = poly * f + 1.3399844e-3f;
  poly = poly * f + 9.6183736e-3f;
  poly = poly * f + 5.5503290e-2f;
  poly = poly * f + 2.4022648e-1f;
  poly = poly * f + 6.9314718e-1f;
  return poly * f + 1.0f;
}

// Rounds x (|x| < 2^22) to the nearest integer n: adding 1.5 * 2^23 leaves n in the low mantissa
// bits. Returns x + 1.5 * 2^23; n = that - 1.5 * 2^23 exactly, and its bits - 0x4b400000 = n.
constexpr float kRoundShift = 12582912.0f;
constexpr uint32_t kRoundShiftBits = 0x4b400000u;

// log2(x) for a positive normal finite float x.
FUSEDEMBED_VEC_INLINE float log2f_normal(float x) { return log2_bits(as_uint(x), 0); }

// 2^x for any float x, but 0 for x < -126.5 (2^x there is subnormal) and +inf for x >= 127.5.
FUSEDEMBED_VEC_INLINE float exp2f_flush(float x) {
  // n = -127 gives the scale 2^-127 as 0 bits, so 0; n = 128 gives +inf bits. NaN passes.
  float xc = select(x < -127.0f, -127.0f, x);
  xc = select(xc > 128.0f, 128.0f, xc);
  const float shifted = xc + kRoundShift;
  const float f = xc - (shifted - kRoundShift);  // in [-0.5, 0.5], exact
  const uint32_t n = as_uint(shifted) - kRoundShiftBits;
  return exp2_reduced(f) * as_float((n + 127u) << 23);
}

// log2(x) for any float x.
FUSEDEMBED_VEC_INLINE float log2f_full(float x) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  // Subnormals: scale into the normal range first (exactly, by 2^23) and take the 23 back.
  const uint32_t sub = x < 0x1p-126f;
  const float xs = x * as_float(0x3f800000u + sub * (23u << 23));
  const float r = log2_bits(as_uint(xs), 23 * static_cast<int32_t>(sub));
  // Special values: 0 -> -inf, negative -> NaN, +inf and NaN -> themselves.
  const bool finite_pos = (x > 0.0f) & (x < kInf);
  const bool zero = x == 0.0f, neg = x < 0.0f;
  float special = select(neg, std::numeric_limits<float>::quiet_NaN(), x);
  special = select(zero, -kInf, special);
  return select(finite_pos, r, special);
}

// 2^x for any float x.
FUSEDEMBED_VEC_INLINE float exp2f_full(float x) {
  // Valid for |x| < 2^22; outside [-160, 160] the result is replaced at the end. A NaN makes f
  // and the polynomial NaN.
  const float shifted = x + kRoundShift;
  const float f = x - (shifted - kRoundShift);
  const float poly = exp2_reduced(f);
  // Scale by 2^n in two halves so every n in [-160, 160] is a normal power of two on each side
  // and the product rounds once: correct subnormal results, +inf on overflow.
  const uint32_t n = as_uint(shifted) - kRoundShiftBits;  // n mod 2^32 (garbage if |x| >= 2^22)
  const uint32_t n1 = static_cast<uint32_t>(static_cast<int32_t>(n) >> 1), n2 = n - n1;
  const float r = poly * as_float((n1 + 127u) << 23) * as_float((n2 + 127u) << 23);
  const bool under = x < -160.0f, over = x > 160.0f;
  const float out = select(under, 0.0f, r);
  return select(over, std::numeric_limits<float>::infinity(), out);
}

}  // namespace vec_math
}  // namespace fusedembed
