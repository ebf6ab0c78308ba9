// gem_pool on the CPU: parallel over (b, c) rows (NCHW) or over (b, channel block) tiles
// (channels_last), two passes over data that stays in cache: the row maximum, then the scaled sum.
//
// float32, float16 and bfloat16 run plain float loops with the branch-free log2/exp2 of
// vec_math.h, which GCC vectorizes; float16/bfloat16 rows and tiles are first converted to float
// in a per-thread buffer. On x86-64 the hot loops are also built for x86-64-v3 (AVX2 + FMA) and
// picked at load time (GCC function multiversioning), so the generic x86-64 binary runs 8-wide
// where the CPU can. float64 (gradcheck, opcheck) keeps a scalar loop with std::log/std::exp.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/vec_convert.h"
#include "cpu/vec_math.h"
#include "ops/gem_pool.h"

namespace fusedembed {
namespace {

constexpr int64_t kChannelBlock = 64;  // channels per channels_last tile: one cache-friendly stripe

// NaN-propagating clamp and max (std::max would drop a NaN that comes second).
template <typename T>
inline T clamp_eps(T v, T eps) { return v < eps ? eps : v; }
template <typename T>
inline T nan_max(T a, T b) { return (b > a || std::isnan(b)) ? b : a; }

template <typename acc_t>
inline acc_t gem_from_sum(acc_t m, acc_t sum, int64_t n, acc_t p) {
  return m * std::pow(sum / static_cast<acc_t>(n), acc_t(1) / p);
}

// ---------------------------------------------------------------------------------------------
// float64: scalar loops with std::log/std::exp.

template <typename scalar_t>
void forward_rows(const GemProblem& prob, const at::opmath_type<scalar_t>* p, double eps_d,
                  at::opmath_type<scalar_t>* y) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x = prob.x.const_data_ptr<scalar_t>();
  const int64_t N = prob.N, C = prob.C;
  const acc_t eps = static_cast<acc_t>(eps_d);
  const int64_t grain = std::max<int64_t>(1, 32768 / N);
  at::parallel_for(0, prob.B * C, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* row = x + r * N;
      const acc_t pc = p[prob.p_per_channel ? r % C : 0];
      acc_t m = eps;
      for (int64_t i = 0; i < N; ++i) m = nan_max(m, clamp_eps(static_cast<acc_t>(row[i]), eps));
      if (!std::isfinite(m)) {  // +inf pools to +inf, NaN to NaN
        y[r] = m;
        continue;
      }
      const acc_t inv_m = acc_t(1) / m;
      acc_t sum = 0;
      for (int64_t i = 0; i < N; ++i) sum += std::exp(pc * std::log(clamp_eps(static_cast<acc_t>(row[i]), eps) * inv_m));
      y[r] = gem_from_sum(m, sum, N, pc);
    }
  });
}

template <typename scalar_t>
void forward_channels_last(const GemProblem& prob, const at::opmath_type<scalar_t>* p, double eps_d,
                           at::opmath_type<scalar_t>* y) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x = prob.x.const_data_ptr<scalar_t>();
  const int64_t N = prob.N, C = prob.C;
  const acc_t eps = static_cast<acc_t>(eps_d);
  const int64_t blocks = (C + kChannelBlock - 1) / kChannelBlock;
  at::parallel_for(0, prob.B * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> m(kChannelBlock), sum(kChannelBlock), inv_m(kChannelBlock), pc(kChannelBlock);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / blocks, c0 = (t % blocks) * kChannelBlock;
      const int64_t nc = std::min(kChannelBlock, C - c0);
      const scalar_t* base = x + b * N * C + c0;
      for (int64_t c = 0; c < nc; ++c) {
        m[c] = eps;
        sum[c] = 0;
        pc[c] = p[prob.p_per_channel ? c0 + c : 0];
      }
      for (int64_t s = 0; s < N; ++s)
        for (int64_t c = 0; c < nc; ++c) m[c] = nan_max(m[c], clamp_eps(static_cast<acc_t>(base[s * C + c]), eps));
      for (int64_t c = 0; c < nc; ++c) inv_m[c] = acc_t(1) / m[c];
      for (int64_t s = 0; s < N; ++s)
        for (int64_t c = 0; c < nc; ++c)
          sum[c] += std::exp(pc[c] * std::log(clamp_eps(static_cast<acc_t>(base[s * C + c]), eps) * inv_m[c]));
      for (int64_t c = 0; c < nc; ++c)
        y[b * C + c0 + c] = std::isfinite(m[c]) ? gem_from_sum(m[c], sum[c], N, pc[c]) : m[c];
    }
  });
}

// One element of the backward pass: writes dx (when wanted) and returns q^p ln q for dp. ln q is
// ln max(x, eps) - ln y: q itself may underflow where its powers do not.
template <typename scalar_t, typename acc_t>
inline acc_t backward_element(scalar_t xv, acc_t eps, acc_t ly, acc_t pc, acc_t dx_scale, scalar_t* dx) {
  const acc_t v = static_cast<acc_t>(xv);
  const acc_t lq = std::log(clamp_eps(v, eps)) - ly;
  if (dx) *dx = static_cast<scalar_t>(v < eps ? acc_t(0) : dx_scale * std::exp((pc - acc_t(1)) * lq));
  return std::exp(pc * lq) * lq;
}

template <typename scalar_t>
void backward_rows(const GemProblem& prob, const at::opmath_type<scalar_t>* p, double eps_d,
                   const at::opmath_type<scalar_t>* gy, const at::opmath_type<scalar_t>* y, scalar_t* dx,
                   at::opmath_type<scalar_t>* row_dp) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x = prob.x.const_data_ptr<scalar_t>();
  const int64_t N = prob.N, C = prob.C;
  const acc_t eps = static_cast<acc_t>(eps_d);
  const int64_t grain = std::max<int64_t>(1, 32768 / N);
  at::parallel_for(0, prob.B * C, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const acc_t pc = p[prob.p_per_channel ? r % C : 0];
      const acc_t yr = y[r], g = gy[r];
      const acc_t ly = std::log(yr), dx_scale = g / static_cast<acc_t>(N);
      acc_t acc = 0;
      for (int64_t i = 0; i < N; ++i)
        acc += backward_element(x[r * N + i], eps, ly, pc, dx_scale, dx ? dx + r * N + i : nullptr);
      if (row_dp) row_dp[r] = g * yr / (static_cast<acc_t>(N) * pc) * acc;
    }
  });
}

template <typename scalar_t>
void backward_channels_last(const GemProblem& prob, const at::opmath_type<scalar_t>* p, double eps_d,
                            const at::opmath_type<scalar_t>* gy, const at::opmath_type<scalar_t>* y, scalar_t* dx,
                            at::opmath_type<scalar_t>* row_dp) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x = prob.x.const_data_ptr<scalar_t>();
  const int64_t N = prob.N, C = prob.C;
  const acc_t eps = static_cast<acc_t>(eps_d);
  const int64_t blocks = (C + kChannelBlock - 1) / kChannelBlock;
  at::parallel_for(0, prob.B * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> yc(kChannelBlock), ly(kChannelBlock), scale(kChannelBlock), pc(kChannelBlock),
        acc(kChannelBlock);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / blocks, c0 = (t % blocks) * kChannelBlock;
      const int64_t nc = std::min(kChannelBlock, C - c0);
      for (int64_t c = 0; c < nc; ++c) {
        yc[c] = y[b * C + c0 + c];
        ly[c] = std::log(yc[c]);
        scale[c] = gy[b * C + c0 + c] / static_cast<acc_t>(N);
        pc[c] = p[prob.p_per_channel ? c0 + c : 0];
        acc[c] = 0;
      }
      for (int64_t s = 0; s < N; ++s) {
        const int64_t off = (b * N + s) * C + c0;
        for (int64_t c = 0; c < nc; ++c)
          acc[c] += backward_element(x[off + c], eps, ly[c], pc[c], scale[c], dx ? dx + off + c : nullptr);
      }
      if (row_dp)
        for (int64_t c = 0; c < nc; ++c)
          row_dp[b * C + c0 + c] = scale[c] * yc[c] / pc[c] * acc[c];
    }
  });
}

// ---------------------------------------------------------------------------------------------
// float32, float16 and bfloat16: float loops with vec_math.h.

namespace vm = vec_math;
using vm::kLn2;
using vm::kNaN;

// The hot loops: plain functions of float pointers, so that they can be multiversioned. Each
// takes `full`: false for the fast log2f_normal/exp2f_flush, which the callers pick only when
// every q = max(x, eps) / m they will see is a positive normal float (m finite, eps / m >= 2^-126),
// true for the full-range functions and a true division by m (m may be subnormal).

template <bool kFull>
FUSEDEMBED_VEC_INLINE float log2_q(float q) {
  if constexpr (kFull) return vm::log2f_full(q);
  else return vm::log2f_normal(q);
}

template <bool kFull>
FUSEDEMBED_VEC_INLINE float exp2_t(float t) {
  // exp2f_flush: results below 2^-126.5, negligible in every sum here, are 0; its +inf from 2^127.5
  // on is never reached (with 2^-126 <= q <= N^(1/p), fast-path exponents stay below 126).
  if constexpr (kFull) return vm::exp2f_full(t);
  else return vm::exp2f_flush(t);
}

// q = max(v, eps) / m, as a product with 1/m on the fast path.
template <bool kFull>
FUSEDEMBED_VEC_INLINE float ratio(float v, float eps, float m, float inv_m) {
  const float c = v < eps ? eps : v;
  if constexpr (kFull) return c / m;
  else return c * inv_m;
}

// log2 q, q = max(v, eps) / y. The full-range path takes it as a difference of logarithms: q may
// underflow (x = 1e-30, y = 1e29) where its powers q^(p-1) do not.
template <bool kFull>
FUSEDEMBED_VEC_INLINE float log2_ratio(float v, float eps, float y, float inv_y) {
  if constexpr (kFull) return vm::log2f_full(v < eps ? eps : v) - vm::log2f_full(y);
  else return vm::log2f_normal(ratio<false>(v, eps, y, inv_y));
}

// q^p log2 q from log2 q (and q^(p-1) on the fast path, where q is a normal float).
template <bool kFull>
FUSEDEMBED_VEC_INLINE float qp_log2q(float lq, float qpm1, float v, float eps, float y, float inv_y, float p) {
  if constexpr (kFull) return vm::exp2f_full(p * lq) * lq;
  else return qpm1 * ratio<false>(v, eps, y, inv_y) * lq;
}

// Whether the fast path holds for every q = max(x, eps) / m with finite x <= m (forward) or
// x / m <= N^(1/p) (backward).
inline bool fast_ok(float m, float inv_m, float eps) {
  return std::isfinite(m) && m > 0.0f && std::isfinite(inv_m) && eps * inv_m >= 0x1p-126f;
}

// max(eps, x[0..n)), NaN when any x is NaN.
FUSEDEMBED_HOT float row_max(const float* __restrict x, int64_t n, float eps) {
  float m = eps;
  int nan = 0;
#pragma omp simd reduction(max : m) reduction(| : nan)
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    m = v > m ? v : m;
    nan |= v != v;
  }
  return nan ? kNaN : m;
}

// sum_i q_i^p, q_i = max(x_i, eps) / m.
template <bool kFull>
FUSEDEMBED_VEC_INLINE float row_pow_sum_impl(const float* __restrict x, int64_t n, float eps, float m, float inv_m,
                                             float p) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += exp2_t<kFull>(p * log2_q<kFull>(ratio<kFull>(x[i], eps, m, inv_m)));
  return sum;
}

FUSEDEMBED_HOT float row_pow_sum(const float* __restrict x, int64_t n, float eps, float m, float inv_m, float p,
                                 bool full) {
  return full ? row_pow_sum_impl<true>(x, n, eps, m, inv_m, p) : row_pow_sum_impl<false>(x, n, eps, m, inv_m, p);
}

// With q_i = max(x_i, eps) / y: dx_i = scale q_i^(p-1) (0 where x_i < eps) when dx is given;
// returns sum_i q_i^p log2 q_i (log2, not ln: the caller multiplies by ln 2). A NaN x_i gets a NaN
// dx_i, like the rest of its row and like the CUDA kernel (the reference's clamp gives it 0).
template <bool kFull>
FUSEDEMBED_VEC_INLINE float row_backward_impl(const float* __restrict x, int64_t n, float eps, float y, float inv_y,
                                              float p, float scale, float* __restrict dx) {
  float acc = 0.0f;
  if (dx) {
    const float pm1 = p - 1.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; ++i) {
      const float v = x[i];
      const float lq = log2_ratio<kFull>(v, eps, y, inv_y);
      const float qpm1 = exp2_t<kFull>(pm1 * lq);
      dx[i] = vm::select(v < eps, 0.0f, scale * qpm1);
      acc += qp_log2q<kFull>(lq, qpm1, v, eps, y, inv_y, p);
    }
  } else {
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; ++i) {
      const float lq = log2_ratio<kFull>(x[i], eps, y, inv_y);
      acc += exp2_t<kFull>(p * lq) * lq;
    }
  }
  return acc;
}

FUSEDEMBED_HOT float row_backward(const float* __restrict x, int64_t n, float eps, float y, float inv_y, float p,
                                  float scale, float* __restrict dx, bool full) {
  return full ? row_backward_impl<true>(x, n, eps, y, inv_y, p, scale, dx)
              : row_backward_impl<false>(x, n, eps, y, inv_y, p, scale, dx);
}

// Channels-last tiles: ns spatial positions of nc (<= kChannelBlock) channels, x[s * ld + c],
// one accumulator per channel.
FUSEDEMBED_HOT void tile_max(const float* __restrict x, int64_t ld, int64_t ns, int64_t nc, float* __restrict m) {
  for (int64_t s = 0; s < ns; ++s) {
    const float* xs = x + s * ld;
#pragma omp simd
    for (int64_t c = 0; c < nc; ++c) {
      const float v = xs[c];
      m[c] = (v > m[c] || v != v) ? v : m[c];  // NaN sticks
    }
  }
}

template <bool kFull>
FUSEDEMBED_VEC_INLINE void tile_pow_sum_impl(const float* __restrict x, int64_t ld, int64_t ns, int64_t nc, float eps,
                                             const float* __restrict m, const float* __restrict inv_m,
                                             const float* __restrict p, float* __restrict sum) {
  for (int64_t s = 0; s < ns; ++s) {
    const float* xs = x + s * ld;
#pragma omp simd
    for (int64_t c = 0; c < nc; ++c)
      sum[c] += exp2_t<kFull>(p[c] * log2_q<kFull>(ratio<kFull>(xs[c], eps, m[c], inv_m[c])));
  }
}

FUSEDEMBED_HOT void tile_pow_sum(const float* __restrict x, int64_t ld, int64_t ns, int64_t nc, float eps,
                                 const float* __restrict m, const float* __restrict inv_m, const float* __restrict p,
                                 float* __restrict sum, bool full) {
  if (full) tile_pow_sum_impl<true>(x, ld, ns, nc, eps, m, inv_m, p, sum);
  else tile_pow_sum_impl<false>(x, ld, ns, nc, eps, m, inv_m, p, sum);
}

// row_backward per channel, adding into acc[c]; dx (when given) has x's leading dimension.
template <bool kFull>
FUSEDEMBED_VEC_INLINE void tile_backward_impl(const float* __restrict x, float* __restrict dx, int64_t ld,
                                              int64_t ns, int64_t nc, float eps, const float* __restrict y,
                                              const float* __restrict inv_y,
                                              const float* __restrict p, const float* __restrict scale,
                                              float* __restrict acc) {
  for (int64_t s = 0; s < ns; ++s) {
    const float* xs = x + s * ld;
    if (dx) {
      float* dxs = dx + s * ld;
#pragma omp simd
      for (int64_t c = 0; c < nc; ++c) {
        const float v = xs[c];
        const float lq = log2_ratio<kFull>(v, eps, y[c], inv_y[c]);
        const float qpm1 = exp2_t<kFull>((p[c] - 1.0f) * lq);
        dxs[c] = vm::select(v < eps, 0.0f, scale[c] * qpm1);
        acc[c] += qp_log2q<kFull>(lq, qpm1, v, eps, y[c], inv_y[c], p[c]);
      }
    } else {
#pragma omp simd
      for (int64_t c = 0; c < nc; ++c) {
        const float lq = log2_ratio<kFull>(xs[c], eps, y[c], inv_y[c]);
        acc[c] += exp2_t<kFull>(p[c] * lq) * lq;
      }
    }
  }
}

FUSEDEMBED_HOT void tile_backward(const float* __restrict x, float* __restrict dx, int64_t ld, int64_t ns,
                                  int64_t nc, float eps, const float* __restrict y, const float* __restrict inv_y,
                                  const float* __restrict p, const float* __restrict scale, float* __restrict acc,
                                  bool full) {
  if (full) tile_backward_impl<true>(x, dx, ld, ns, nc, eps, y, inv_y, p, scale, acc);
  else tile_backward_impl<false>(x, dx, ld, ns, nc, eps, y, inv_y, p, scale, acc);
}


// The ns x nc block at x (leading dimension ld) as floats: float data where it is, float16 and
// bfloat16 converted once into buf (leading dimension nc), so that both passes read floats.
template <typename scalar_t>
const float* as_float(const scalar_t* x, int64_t ld, int64_t ns, int64_t nc, std::vector<float>& buf) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return x;
  } else {
    buf.resize(ns * nc);
    load_block(x, ld, ns, nc, buf.data());
    return buf.data();
  }
}

// Where the float loops write dx: in place for float, else into buf, which store_dx converts.
template <typename scalar_t>
float* dx_float(scalar_t* dx, int64_t n, std::vector<float>& buf) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return dx;
  } else {
    buf.resize(n);
    return buf.data();
  }
}

template <typename scalar_t>
void store_dx(const float* src, int64_t ns, int64_t nc, scalar_t* dx, int64_t ld) {
  if constexpr (!std::is_same_v<scalar_t, float>) store_block(src, ns, nc, dx, ld);
}

template <typename scalar_t>
void forward_rows_f(const GemProblem& prob, const float* p, double eps_d, float* y) {
  const scalar_t* x = prob.x.const_data_ptr<scalar_t>();
  const int64_t N = prob.N, C = prob.C;
  const float eps = static_cast<float>(eps_d);
  const int64_t grain = std::max<int64_t>(1, 32768 / N);
  at::parallel_for(0, prob.B * C, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> buf;
    for (int64_t r = begin; r < end; ++r) {
      const float* row = as_float(x + r * N, N, 1, N, buf);
      const float pc = p[prob.p_per_channel ? r % C : 0];
      const float m = row_max(row, N, eps);
      if (!std::isfinite(m)) {  // +inf pools to +inf, NaN to NaN
        y[r] = m;
        continue;
      }
      const float inv_m = 1.0f / m;
      const float sum = row_pow_sum(row, N, eps, m, inv_m, pc, !fast_ok(m, inv_m, eps));
      y[r] = gem_from_sum(m, sum, N, pc);
    }
  });
}

template <typename scalar_t>
void forward_channels_last_f(const GemProblem& prob, const float* p, double eps_d, float* y) {
  const scalar_t* x = prob.x.const_data_ptr<scalar_t>();
  const int64_t N = prob.N, C = prob.C;
  const float eps = static_cast<float>(eps_d);
  const int64_t blocks = (C + kChannelBlock - 1) / kChannelBlock;
  at::parallel_for(0, prob.B * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buf;
    alignas(64) float m[kChannelBlock], sum[kChannelBlock], inv_m[kChannelBlock], pc[kChannelBlock];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / blocks, c0 = (t % blocks) * kChannelBlock;
      const int64_t nc = std::min(kChannelBlock, C - c0);
      const float* tile = as_float(x + b * N * C + c0, C, N, nc, buf);
      const int64_t ld = std::is_same_v<scalar_t, float> ? C : nc;
      bool full = false;
      for (int64_t c = 0; c < nc; ++c) m[c] = eps;
      tile_max(tile, ld, N, nc, m);
      for (int64_t c = 0; c < nc; ++c) {
        sum[c] = 0.0f;
        pc[c] = p[prob.p_per_channel ? c0 + c : 0];
        inv_m[c] = 1.0f / m[c];
        full |= !fast_ok(m[c], inv_m[c], eps);
      }
      tile_pow_sum(tile, ld, N, nc, eps, m, inv_m, pc, sum, full);
      for (int64_t c = 0; c < nc; ++c)
        y[b * C + c0 + c] = std::isfinite(m[c]) ? gem_from_sum(m[c], sum[c], N, pc[c]) : m[c];
    }
  });
}

// The backward pass takes its fast path where y is finite and eps / y a normal float: then, y
// being the forward's output, x is finite and every q = max(x, eps) / y lies in [eps / y, N^(1/p)].
template <typename scalar_t>
void backward_rows_f(const GemProblem& prob, const float* p, double eps_d, const float* gy, const float* y,
                     scalar_t* dx, float* row_dp) {
  const scalar_t* x = prob.x.const_data_ptr<scalar_t>();
  const int64_t N = prob.N, C = prob.C;
  const float eps = static_cast<float>(eps_d);
  const int64_t grain = std::max<int64_t>(1, 32768 / N);
  at::parallel_for(0, prob.B * C, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> buf, dx_buf;
    for (int64_t r = begin; r < end; ++r) {
      const float pc = p[prob.p_per_channel ? r % C : 0];
      const float yr = y[r], g = gy[r];
      const float inv_y = 1.0f / yr, scale = g / static_cast<float>(N);
      const float* row = as_float(x + r * N, N, 1, N, buf);
      float* dx_row = dx ? dx_float(dx + r * N, N, dx_buf) : nullptr;
      const float acc = row_backward(row, N, eps, yr, inv_y, pc, scale, dx_row, !fast_ok(yr, inv_y, eps));
      if (dx) store_dx(dx_row, 1, N, dx + r * N, N);
      if (row_dp) row_dp[r] = g * yr / (static_cast<float>(N) * pc) * (acc * kLn2);  // acc is in log2 units
    }
  });
}

template <typename scalar_t>
void backward_channels_last_f(const GemProblem& prob, const float* p, double eps_d, const float* gy,
                              const float* y, scalar_t* dx, float* row_dp) {
  constexpr bool kFloat = std::is_same_v<scalar_t, float>;
  const scalar_t* x = prob.x.const_data_ptr<scalar_t>();
  const int64_t N = prob.N, C = prob.C;
  const float eps = static_cast<float>(eps_d);
  const int64_t blocks = (C + kChannelBlock - 1) / kChannelBlock;
  at::parallel_for(0, prob.B * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buf, dx_buf;
    alignas(64) float yc[kChannelBlock], inv_y[kChannelBlock], scale[kChannelBlock], pc[kChannelBlock],
        acc[kChannelBlock];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / blocks, c0 = (t % blocks) * kChannelBlock;
      const int64_t nc = std::min(kChannelBlock, C - c0);
      bool full = false;
      for (int64_t c = 0; c < nc; ++c) {
        yc[c] = y[b * C + c0 + c];
        inv_y[c] = 1.0f / yc[c];
        scale[c] = gy[b * C + c0 + c] / static_cast<float>(N);
        pc[c] = p[prob.p_per_channel ? c0 + c : 0];
        acc[c] = 0.0f;
        full |= !fast_ok(yc[c], inv_y[c], eps);
      }
      const int64_t off = b * N * C + c0, ld = kFloat ? C : nc;
      const float* tile = as_float(x + off, C, N, nc, buf);
      float* dx_tile = dx ? dx_float(dx + off, N * nc, dx_buf) : nullptr;
      tile_backward(tile, dx_tile, ld, N, nc, eps, yc, inv_y, pc, scale, acc, full);
      if (dx) store_dx(dx_tile, N, nc, dx + off, C);
      if (row_dp)
        for (int64_t c = 0; c < nc; ++c)
          row_dp[b * C + c0 + c] = scale[c] * yc[c] / pc[c] * (acc[c] * kLn2);  // acc is in log2 units
    }
  });
}

template <typename scalar_t>
void forward_impl(const GemProblem& prob, const at::opmath_type<scalar_t>* p, double eps,
                  at::opmath_type<scalar_t>* y) {
  if constexpr (std::is_same_v<scalar_t, double>) {
    if (prob.layout == GemLayout::kRows) forward_rows<scalar_t>(prob, p, eps, y);
    else forward_channels_last<scalar_t>(prob, p, eps, y);
  } else {
    if (prob.layout == GemLayout::kRows) forward_rows_f<scalar_t>(prob, p, eps, y);
    else forward_channels_last_f<scalar_t>(prob, p, eps, y);
  }
}

template <typename scalar_t>
void backward_impl(const GemProblem& prob, const at::opmath_type<scalar_t>* p, double eps,
                   const at::opmath_type<scalar_t>* gy, const at::opmath_type<scalar_t>* y, scalar_t* dx,
                   at::opmath_type<scalar_t>* row_dp) {
  if constexpr (std::is_same_v<scalar_t, double>) {
    if (prob.layout == GemLayout::kRows) backward_rows<scalar_t>(prob, p, eps, gy, y, dx, row_dp);
    else backward_channels_last<scalar_t>(prob, p, eps, gy, y, dx, row_dp);
  } else {
    if (prob.layout == GemLayout::kRows) backward_rows_f<scalar_t>(prob, p, eps, gy, y, dx, row_dp);
    else backward_channels_last_f<scalar_t>(prob, p, eps, gy, y, dx, row_dp);
  }
}

at::Tensor gem_pool_cpu(const at::Tensor& x, const at::Tensor& p, double eps) {
  return gem_forward(x, p, eps, [&](const GemProblem& prob, const at::Tensor& p_acc, const at::Tensor& y) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gem_pool_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      forward_impl<scalar_t>(prob, p_acc.const_data_ptr<acc_t>(), eps, y.mutable_data_ptr<acc_t>());
    });
  });
}

std::tuple<at::Tensor, at::Tensor> gem_pool_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                         const at::Tensor& p, const at::Tensor& y, double eps,
                                                         bool x_grad, bool p_grad) {
  return gem_backward(grad_y, x, p, y, eps, x_grad, p_grad,
                      [&](const GemProblem& prob, const at::Tensor& p_acc, const at::Tensor& gy, const at::Tensor& yc,
                          const at::Tensor& dx, const at::Tensor& row_dp) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gem_pool_backward_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      backward_impl<scalar_t>(prob, p_acc.const_data_ptr<acc_t>(), eps, gy.const_data_ptr<acc_t>(),
                              yc.const_data_ptr<acc_t>(), dx.defined() ? dx.mutable_data_ptr<scalar_t>() : nullptr,
                              row_dp.defined() ? row_dp.mutable_data_ptr<acc_t>() : nullptr);
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedembed, CPU, m) {
  m.impl("gem_pool", &gem_pool_cpu);
  m.impl("gem_pool_backward", &gem_pool_backward_cpu);
}

}  // namespace fusedembed
