// gem_pool on CUDA: x is read once in the forward pass and once in the backward pass.
//
// The row maximum is found in the same pass as the sum by an online rescaling in the log2
// domain (as online softmax does): each thread keeps (l = log2 max, s = sum 2^(p (log2 x - l))),
// rescales s when a larger element arrives, and threads merge their pairs the same way.
// Two layouts, no copies:
//  * rows (NCHW, (B, C, L)): G lanes per (b, c) row, G chosen from the row length so a 7x7
//    map packs several rows per warp instead of idling 3/4 of the lanes;
//  * channels_last: each thread owns VEC adjacent channels (one 16-byte load) and a slice of
//    the spatial positions, so a warp reads 512 contiguous bytes; slices merge in shared memory.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/vec.h"
#include "ops/gem_pool.h"

namespace fusedembed {
namespace {

constexpr int kThreads = 256;

// One MUFU instruction each. ftz is harmless here: inputs are clamped to eps (a normal number
// unless the user picks a denormal eps), and an exp2 result below 2^-126 adds nothing to a sum.
__device__ __forceinline__ float fast_log2(float v) {
  float r;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v));
  return r;
}
__device__ __forceinline__ double fast_log2(double v) { return log2(v); }
__device__ __forceinline__ float fast_exp2(float v) {
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v));
  return r;
}
__device__ __forceinline__ double fast_exp2(double v) { return exp2(v); }

template <typename acc_t>
__device__ __forceinline__ acc_t clamp_eps(acc_t v, acc_t eps) { return v < eps ? eps : v; }  // keeps NaN

template <typename acc_t>
__device__ __forceinline__ bool valid_p(acc_t p) { return p > acc_t(0) && p < acc_t(INFINITY); }

// Running (log2 max, scaled sum) of x^p over a set of elements.
template <typename acc_t>
struct PowSum {
  acc_t l = -INFINITY;
  acc_t s = 0;

  // lv == l counts 1 without the difference: for two +inf it would be NaN (a +inf row pools to +inf).
  __device__ __forceinline__ void add(acc_t v, acc_t p) {
    const acc_t lv = fast_log2(v);
    if (lv > l) {
      s = s * fast_exp2(p * (l - lv)) + acc_t(1);
      l = lv;
    } else {
      s += lv == l ? acc_t(1) : fast_exp2(p * (lv - l));  // a NaN lv lands here and poisons s, as it should
    }
    if (lv != lv) l = lv;
  }

  __device__ __forceinline__ void merge(acc_t lo, acc_t so, acc_t p) {
    if (so == acc_t(0)) return;
    if (s == acc_t(0)) {
      l = lo;
      s = so;
      return;
    }
    const acc_t m = l > lo ? l : lo;
    s = s * (l == m ? acc_t(1) : fast_exp2(p * (l - m))) + so * (lo == m ? acc_t(1) : fast_exp2(p * (lo - m)));
    l = (l != l || lo != lo) ? acc_t(NAN) : m;
  }

  // (mean x^p)^(1/p), from log2 y = l + log2(s / n) / p.
  __device__ __forceinline__ acc_t result(int64_t n, acc_t p) const {
    if (!valid_p(p)) return acc_t(NAN);
    return fast_exp2(l + fast_log2(s / acc_t(n)) / p);
  }
};

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

// Visits packs start, start + stride, ... < count, issuing kUnroll loads before using any, so
// each thread keeps several 16-byte requests in flight (the loops are latency-bound otherwise).
constexpr int kUnroll = 4;

template <typename scalar_t, int VEC, typename F>
__device__ __forceinline__ void for_each_pack(const scalar_t* base, int64_t pack_stride_elems, int64_t start,
                                              int64_t count, int64_t stride, F&& f) {
  using P = Pack<scalar_t, VEC>;
  int64_t i = start;
  for (; i + (kUnroll - 1) * stride < count; i += kUnroll * stride) {
    P pk[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) pk[u] = *reinterpret_cast<const P*>(base + (i + u * stride) * pack_stride_elems);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) f(pk[u], i + u * stride);
  }
  for (; i < count; i += stride) f(*reinterpret_cast<const P*>(base + i * pack_stride_elems), i);
}

template <int G, typename acc_t>
__device__ __forceinline__ acc_t group_sum(acc_t v) {
#pragma unroll
  for (int o = G / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// ---------------------------------------------------------------- rows layout (NCHW, (B, C, L))

template <typename scalar_t, int G, int VEC>
__global__ void __launch_bounds__(kThreads) forward_rows_kernel(
    const scalar_t* __restrict__ x, const at::opmath_type<scalar_t>* __restrict__ p, bool per_channel,
    int64_t rows, int64_t C, int64_t N, at::opmath_type<scalar_t> eps, at::opmath_type<scalar_t>* __restrict__ y) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t row = tid / G;
  const int lane = threadIdx.x % G;
  const bool active = row < rows;  // inactive lanes still take part in the shuffles
  const acc_t pc = active ? p[per_channel ? row % C : 0] : acc_t(1);
  PowSum<acc_t> acc;
  if (active) {
    // VEC > 1 only when N % VEC == 0 and rows are 16-byte aligned.
    for_each_pack<scalar_t, VEC>(x + row * N, VEC, lane, N / VEC, G, [&](const Pack<scalar_t, VEC>& pk, int64_t) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) acc.add(clamp_eps(static_cast<acc_t>(pk.v[k]), eps), pc);
    });
  }
#pragma unroll
  for (int o = G / 2; o > 0; o /= 2) {
    const acc_t lo = __shfl_xor_sync(0xffffffffu, acc.l, o);
    const acc_t so = __shfl_xor_sync(0xffffffffu, acc.s, o);
    acc.merge(lo, so, pc);
  }
  if (active && lane == 0) y[row] = acc.result(N, pc);
}

// STAGE (short rows): dx goes to shared memory first and the block's rows, one contiguous span,
// are written out flat; direct stores from G-lane groups would hit half-filled sectors.
template <typename scalar_t, int G, int VEC, bool STAGE>
__global__ void __launch_bounds__(kThreads) backward_rows_kernel(
    const scalar_t* __restrict__ x, const at::opmath_type<scalar_t>* __restrict__ p, bool per_channel,
    int64_t rows, int64_t C, int64_t N, at::opmath_type<scalar_t> eps, const at::opmath_type<scalar_t>* __restrict__ gy,
    const at::opmath_type<scalar_t>* __restrict__ y, scalar_t* __restrict__ dx,
    at::opmath_type<scalar_t>* __restrict__ row_dp) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ unsigned char stage_mem[];
  scalar_t* stage = reinterpret_cast<scalar_t*>(stage_mem);
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t row = tid / G;
  const int64_t first_row = static_cast<int64_t>(blockIdx.x) * (kThreads / G);
  const int lane = threadIdx.x % G;
  const bool active = row < rows;
  acc_t dp_acc = 0;
  acc_t pc = 1, yr = 1, g = 0;
  if (active) {
    pc = p[per_channel ? row % C : 0];
    yr = y[row];
    g = gy[row];
    const acc_t ly = fast_log2(yr), scale = g / static_cast<acc_t>(N);
    for_each_pack<scalar_t, VEC>(x + row * N, VEC, lane, N / VEC, G, [&](const Pack<scalar_t, VEC>& pk, int64_t i) {
      Pack<scalar_t, VEC> out;
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const acc_t v = static_cast<acc_t>(pk.v[k]);
        const acc_t xc = clamp_eps(v, eps);
        const acc_t t = fast_log2(xc) - ly;                     // log2 q, q = xc / y
        const acc_t qpm1 = fast_exp2((pc - acc_t(1)) * t);      // q^(p-1)
        out.v[k] = static_cast<scalar_t>(v < eps ? acc_t(0) : scale * qpm1);
        dp_acc += fast_exp2(pc * t) * t;                        // q^p log2 q, q itself may underflow
      }
      if (!dx) return;
      scalar_t* dst_row = STAGE ? stage + (row - first_row) * N : dx + row * N;
      reinterpret_cast<Pack<scalar_t, VEC>*>(dst_row)[i] = out;
    });
  }
  if (STAGE && dx) {
    __syncthreads();
    const int64_t last_row = first_row + kThreads / G < rows ? first_row + kThreads / G : rows;
    const int64_t span = (last_row - first_row) * N;
    for (int64_t e = threadIdx.x; e < span; e += kThreads) dx[first_row * N + e] = stage[e];
  }
  if (row_dp) {
    dp_acc = group_sum<G>(dp_acc);
    // dy/dp = y / (N p) * sum q^p ln q; the ln 2 turns the log2 sum into ln.
    if (active && lane == 0) row_dp[row] = g * yr * acc_t(0.6931471805599453) / (static_cast<acc_t>(N) * pc) * dp_acc;
  }
}

// ---------------------------------------------------------------- channels_last layout

// Block: kLanes channel groups (VEC channels each) x (kThreads / kLanes) spatial slices.
constexpr int kLanes = 32;
constexpr int kSlices = kThreads / kLanes;

template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads) forward_cl_kernel(
    const scalar_t* __restrict__ x, const at::opmath_type<scalar_t>* __restrict__ p, bool per_channel, int64_t C,
    int64_t N, at::opmath_type<scalar_t> eps, at::opmath_type<scalar_t>* __restrict__ y) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t sh_l[kSlices][kLanes * VEC];
  __shared__ acc_t sh_s[kSlices][kLanes * VEC];
  const int lane = threadIdx.x % kLanes, slice = threadIdx.x / kLanes;
  const int64_t cblocks = (C / VEC + kLanes - 1) / kLanes;  // grid.x = B * cblocks: B may exceed grid.y's 65535
  const int64_t b = blockIdx.x / cblocks;
  const int64_t c0 = ((blockIdx.x % cblocks) * kLanes + lane) * VEC;
  const bool active = c0 < C;  // C % VEC == 0 whenever VEC > 1
  PowSum<acc_t> acc[VEC];
  acc_t pc[VEC];
#pragma unroll
  for (int k = 0; k < VEC; ++k) pc[k] = active ? p[per_channel ? c0 + k : 0] : acc_t(1);
  if (active) {
    for_each_pack<scalar_t, VEC>(x + b * N * C + c0, C, slice, N, kSlices, [&](const Pack<scalar_t, VEC>& pk, int64_t) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) acc[k].add(clamp_eps(static_cast<acc_t>(pk.v[k]), eps), pc[k]);
    });
  }
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    sh_l[slice][lane * VEC + k] = acc[k].l;
    sh_s[slice][lane * VEC + k] = acc[k].s;
  }
  __syncthreads();
  if (slice == 0 && active) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      for (int j = 1; j < kSlices; ++j) acc[k].merge(sh_l[j][lane * VEC + k], sh_s[j][lane * VEC + k], pc[k]);
      y[b * C + c0 + k] = acc[k].result(N, pc[k]);
    }
  }
}

template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads) backward_cl_kernel(
    const scalar_t* __restrict__ x, const at::opmath_type<scalar_t>* __restrict__ p, bool per_channel, int64_t C,
    int64_t N, at::opmath_type<scalar_t> eps, const at::opmath_type<scalar_t>* __restrict__ gy,
    const at::opmath_type<scalar_t>* __restrict__ y, scalar_t* __restrict__ dx,
    at::opmath_type<scalar_t>* __restrict__ row_dp) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t sh[kSlices][kLanes * VEC];
  const int lane = threadIdx.x % kLanes, slice = threadIdx.x / kLanes;
  const int64_t cblocks = (C / VEC + kLanes - 1) / kLanes;  // grid.x = B * cblocks: B may exceed grid.y's 65535
  const int64_t b = blockIdx.x / cblocks;
  const int64_t c0 = ((blockIdx.x % cblocks) * kLanes + lane) * VEC;
  const bool active = c0 < C;
  acc_t pc[VEC], ly[VEC], inv_y[VEC], scale[VEC], dp_acc[VEC];
  if (active) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      pc[k] = p[per_channel ? c0 + k : 0];
      const acc_t yr = y[b * C + c0 + k];
      ly[k] = fast_log2(yr);
      inv_y[k] = acc_t(1) / yr;
      scale[k] = gy[b * C + c0 + k] / static_cast<acc_t>(N);
      dp_acc[k] = 0;
    }
    for_each_pack<scalar_t, VEC>(x + b * N * C + c0, C, slice, N, kSlices, [&](const Pack<scalar_t, VEC>& pk, int64_t s) {
      const int64_t off = (b * N + s) * C + c0;
      Pack<scalar_t, VEC> out;
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const acc_t v = static_cast<acc_t>(pk.v[k]);
        const acc_t xc = clamp_eps(v, eps);
        const acc_t t = fast_log2(xc) - ly[k];
        const acc_t qpm1 = fast_exp2((pc[k] - acc_t(1)) * t);
        out.v[k] = static_cast<scalar_t>(v < eps ? acc_t(0) : scale[k] * qpm1);
        dp_acc[k] += fast_exp2(pc[k] * t) * t;
      }
      if (dx) *reinterpret_cast<Pack<scalar_t, VEC>*>(dx + off) = out;
    });
  }
  if (!row_dp) return;
#pragma unroll
  for (int k = 0; k < VEC; ++k) sh[slice][lane * VEC + k] = active ? dp_acc[k] : acc_t(0);
  __syncthreads();
  if (slice == 0 && active) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      acc_t total = 0;
      for (int j = 0; j < kSlices; ++j) total += sh[j][lane * VEC + k];
      // scale = g / N and 1 / inv_y = y: g y ln2 / (N p) * sum q^p log2 q.
      row_dp[b * C + c0 + k] = scale[k] / (inv_y[k] * pc[k]) * acc_t(0.6931471805599453) * total;
    }
  }
}

// ---------------------------------------------------------------- launch

// Widest vector (<= 16 bytes) that every access of this layout can use.
template <typename scalar_t>
int gem_vec_width(const GemProblem& prob, const scalar_t* x, const scalar_t* dx) {
  return vec_width(16 / static_cast<int>(sizeof(scalar_t)),
                   prob.layout == GemLayout::kRows ? prob.N : prob.C, x, dx);
}

// Lanes per row, a power of two up to a warp: about 16 vector loads per lane, so short rows
// (7x7) pack many rows per warp and are not dominated by the cross-lane merge.
inline int group_size(int64_t N, int vec) {
  const int64_t per_lane = (N / vec + 15) / 16;
  int g = 1;
  while (g < 32 && g < per_lane) g *= 2;
  return g;
}

template <typename F>
void with_group(int g, F&& f) {
  switch (g) {
    case 32: f(std::integral_constant<int, 32>{}); break;
    case 16: f(std::integral_constant<int, 16>{}); break;
    case 8: f(std::integral_constant<int, 8>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    default: f(std::integral_constant<int, 1>{});
  }
}

at::Tensor gem_pool_cuda(const at::Tensor& x, const at::Tensor& p, double eps) {
  c10::cuda::CUDAGuard guard(x.device());
  return gem_forward(x, p, eps, [&](const GemProblem& prob, const at::Tensor& p_acc, const at::Tensor& y) {
    const int64_t rows = prob.B * prob.C;
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gem_pool_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* xp = prob.x.const_data_ptr<scalar_t>();
      const acc_t* pp = p_acc.const_data_ptr<acc_t>();
      acc_t* yp = y.mutable_data_ptr<acc_t>();
      with_vec<8>(gem_vec_width<scalar_t>(prob, xp, xp), [&](auto V) {
        if (prob.layout == GemLayout::kRows) {
          with_group(group_size(prob.N, V), [&](auto G) {
            const int64_t blocks = (rows * G + kThreads - 1) / kThreads;
            forward_rows_kernel<scalar_t, G, V><<<blocks, kThreads, 0, stream>>>(
                xp, pp, prob.p_per_channel, rows, prob.C, prob.N, static_cast<acc_t>(eps), yp);
          });
        } else {
          const int64_t blocks = prob.B * ((prob.C / V + kLanes - 1) / kLanes);
          forward_cl_kernel<scalar_t, V><<<blocks, kThreads, 0, stream>>>(
              xp, pp, prob.p_per_channel, prob.C, prob.N, static_cast<acc_t>(eps), yp);
        }
      });
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

std::tuple<at::Tensor, at::Tensor> gem_pool_backward_cuda(const at::Tensor& grad_y, const at::Tensor& x,
                                                          const at::Tensor& p, const at::Tensor& y, double eps,
                                                          bool x_grad, bool p_grad) {
  c10::cuda::CUDAGuard guard(x.device());
  return gem_backward(grad_y, x, p, y, eps, x_grad, p_grad,
                      [&](const GemProblem& prob, const at::Tensor& p_acc, const at::Tensor& gy, const at::Tensor& yc,
                          const at::Tensor& dx, const at::Tensor& row_dp) {
    const int64_t rows = prob.B * prob.C;
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gem_pool_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* xp = prob.x.const_data_ptr<scalar_t>();
      scalar_t* dxp = dx.defined() ? dx.mutable_data_ptr<scalar_t>() : nullptr;
      acc_t* dpp = row_dp.defined() ? row_dp.mutable_data_ptr<acc_t>() : nullptr;
      const acc_t* pp = p_acc.const_data_ptr<acc_t>();
      const acc_t* gyp = gy.const_data_ptr<acc_t>();
      const acc_t* yp = yc.const_data_ptr<acc_t>();
      with_vec<8>(gem_vec_width<scalar_t>(prob, xp, dxp ? dxp : xp), [&](auto V) {
        if (prob.layout == GemLayout::kRows) {
          with_group(group_size(prob.N, V), [&](auto G) {
            const int64_t blocks = (rows * G + kThreads - 1) / kThreads;
            const int64_t stage_bytes = (kThreads / G) * prob.N * static_cast<int64_t>(sizeof(scalar_t));
            auto launch = [&](auto kernel, int64_t smem) {
              kernel<<<blocks, kThreads, smem, stream>>>(xp, pp, prob.p_per_channel, rows, prob.C, prob.N,
                                                         static_cast<acc_t>(eps), gyp, yp, dxp, dpp);
            };
            // Rows that are not whole 16-byte vectors and fit the default 48 KB are staged.
            if (V == 1 && dxp && stage_bytes <= 48 * 1024)
              launch(backward_rows_kernel<scalar_t, G, V, true>, stage_bytes);
            else
              launch(backward_rows_kernel<scalar_t, G, V, false>, 0);
          });
        } else {
          const int64_t blocks = prob.B * ((prob.C / V + kLanes - 1) / kLanes);
          backward_cl_kernel<scalar_t, V><<<blocks, kThreads, 0, stream>>>(
              xp, pp, prob.p_per_channel, prob.C, prob.N, static_cast<acc_t>(eps), gyp, yp, dxp, dpp);
        }
      });
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedembed, CUDA, m) {
  m.impl("gem_pool", &gem_pool_cuda);
  m.impl("gem_pool_backward", &gem_pool_backward_cuda);
}

}  // namespace fusedembed
