// sampled_sigmoid_loss on CUDA.
//
// Counts: a column reduction. Threads own VEC adjacent columns and walk a strided set of rows,
// counting in registers, then add into the (2, C) int32 output with one atomic per column and
// counter (integer atomics: the result does not depend on their order).
//
// Main pass: threads own VEC adjacent columns (x) and walk groups of four rows (y), the unit one
// Philox call serves. Each thread takes its columns' class decisions once, then per row group
// loads 4 x VEC logits and targets (vector loads when C % VEC == 0 and the pointers allow),
// writes the gradient (and the "none" loss terms) once, and keeps its loss partial sum in a
// register. A warp-shuffle block reduction writes one partial per block; a one-block kernel adds
// those in a fixed order, in double. Nothing depends on timing: results are deterministic.
// Invalid targets are not an error here (that would cost a host sync): they give NaN.
//
// Backward of a scalar loss: one in-place pass over the gradient, skipped on the device when
// grad_output is 1.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cuda/vec.h"
#include "ops/sampled_sigmoid_loss.h"

namespace fusedembed {
namespace {

constexpr int kThreads = 128;      // per block: kThreads / block_x row-group lanes
constexpr int kBlocksPerSm = 16;   // enough resident warps to keep loads in flight
constexpr int kFinishThreads = 256;

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <int VEC, typename T>
__device__ __forceinline__ Vec<T, VEC> load_vec(const T* p) {
  return *reinterpret_cast<const Vec<T, VEC>*>(p);
}

template <int VEC, typename T>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, VEC>& v) {
  *reinterpret_cast<Vec<T, VEC>*>(p) = v;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

// Sum over the block; the result is valid in thread 0. blockDim a multiple of 32.
template <typename T>
__device__ T block_sum(T v) {
  __shared__ T warp_sums[32];
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  const int nwarps = (blockDim.x * blockDim.y) / 32;
  v = warp_sum(v);
  if ((tid & 31) == 0) warp_sums[tid >> 5] = v;
  __syncthreads();
  if (tid < 32) {
    v = tid < nwarps ? warp_sums[tid] : T(0);
    v = warp_sum(v);
  }
  return v;
}

template <typename target_t, int VEC>
__global__ void __launch_bounds__(kThreads) counts_kernel(const target_t* __restrict__ y, int32_t* __restrict__ counts,
                                                          int64_t B, int64_t C, float thr) {
  using acc_t = std::conditional_t<std::is_same_v<target_t, double>, double, float>;
  const int64_t j0 = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
  if (j0 >= C) return;
  int32_t npos[VEC], nneg[VEC];
#pragma unroll
  for (int v = 0; v < VEC; ++v) npos[v] = nneg[v] = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.y) * blockDim.y;
  for (int64_t i = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; i < B; i += stride) {
    const Vec<target_t, VEC> t = load_vec<VEC>(y + i * C + j0);
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      const acc_t yv = static_cast<acc_t>(t.v[v]);
      if (yv == acc_t(-1)) continue;
      if (ssl_is_positive(yv, thr)) ++npos[v];
      else ++nneg[v];
    }
  }
#pragma unroll
  for (int v = 0; v < VEC; ++v) {
    if (npos[v]) atomicAdd(counts + j0 + v, npos[v]);
    if (nneg[v]) atomicAdd(counts + C + j0 + v, nneg[v]);
  }
}

template <typename scalar_t, typename target_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* __restrict__ z, const target_t* __restrict__ y, const int32_t* __restrict__ counts,
                   const at::opmath_type<scalar_t>* __restrict__ class_weight,
                   const at::opmath_type<scalar_t>* __restrict__ pos_weight, const SslParams prm,
                   const at::opmath_type<scalar_t> gscale, scalar_t* __restrict__ grad, scalar_t* __restrict__ loss_elem,
                   bool* __restrict__ kept, at::opmath_type<scalar_t>* __restrict__ partials) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = prm.B, C = prm.C;
  const int64_t j0 = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
  const bool none = prm.reduction == SslReduction::kNone;
  acc_t local = 0;
  if (j0 < C) {
    // C % VEC == 0, so all VEC columns exist.
    SslClass<acc_t> cls[VEC];
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      const int64_t j = j0 + v;
      cls[v] = ssl_class<acc_t>(j, counts[j], counts[C + j], class_weight, pos_weight, prm);
      if (blockIdx.y == 0 && threadIdx.y == 0) kept[j] = cls[v].keep_column;
    }
    const int64_t g_begin = prm.row_start >> 2, g_end = (prm.row_start + B + 3) >> 2;
    const int64_t stride = static_cast<int64_t>(gridDim.y) * blockDim.y;
    for (int64_t g = g_begin + static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; g < g_end; g += stride) {
      // All loads of the group first, so eight (or 8 VEC-wide) requests are in flight at once.
      Vec<scalar_t, VEC> zr[4];
      Vec<target_t, VEC> yr[4];
      bool in[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int64_t i = 4 * g + r - prm.row_start;
        in[r] = i >= 0 && i < B;
        if (in[r]) {
          zr[r] = load_vec<VEC>(z + i * C + j0);
          yr[r] = load_vec<VEC>(y + i * C + j0);
        }
      }
      Philox4x32 draws[VEC];
#pragma unroll
      for (int v = 0; v < VEC; ++v)
        draws[v] = cls[v].needs_draw ? ssl_entry_draws(g, j0 + v, prm) : Philox4x32{{0u, 0u, 0u, 0u}};
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        if (!in[r]) continue;
        const int64_t off = (4 * g + r - prm.row_start) * C + j0;
        Vec<scalar_t, VEC> gout, lout;
#pragma unroll
        for (int v = 0; v < VEC; ++v) {
          const SslElement<acc_t> e = ssl_element(static_cast<acc_t>(zr[r].v[v]), static_cast<acc_t>(yr[r].v[v]),
                                                  draws[v].v[r], cls[v], prm.pos_threshold);
          gout.v[v] = static_cast<scalar_t>(e.grad * gscale);
          lout.v[v] = static_cast<scalar_t>(e.loss);
          local += e.loss;
        }
        if (grad) store_vec<VEC>(grad + off, gout);
        if (none) store_vec<VEC>(loss_elem + off, lout);
      }
    }
  }
  if (!none) {
    const acc_t total = block_sum(local);
    if (threadIdx.x == 0 && threadIdx.y == 0) partials[static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x] = total;
  }
}

// grad *= *g, VEC elements per step; nothing is read or written when *g == 1 (loss.backward()),
// which the kernel finds out itself so the host never waits for the value.
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    scale_kernel(scalar_t* __restrict__ grad, const at::opmath_type<scalar_t>* __restrict__ g, int64_t n_vec) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t s = *g;
  if (s == acc_t(1)) return;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n_vec; k += stride) {
    Vec<scalar_t, VEC> v = load_vec<VEC>(grad + k * VEC);
#pragma unroll
    for (int e = 0; e < VEC; ++e) v.v[e] = static_cast<scalar_t>(static_cast<acc_t>(v.v[e]) * s);
    store_vec<VEC>(grad + k * VEC, v);
  }
}

template <typename acc_t>
__global__ void __launch_bounds__(kFinishThreads)
    finish_kernel(const acc_t* __restrict__ partials, int64_t n, double scale, acc_t* __restrict__ loss) {
  double s = 0;
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) s += static_cast<double>(partials[k]);
  s = block_sum(s);
  if (threadIdx.x == 0) *loss = static_cast<acc_t>(s * scale);
}

struct Launch {
  dim3 grid, block;
};

// x: column groups of VEC; y: row groups (counts: rows) spread so the device is full.
Launch plan(int64_t C, int vec, int64_t rows) {
  const int64_t groups = (C + vec - 1) / vec;
  const int bx = groups > 64 ? 128 : groups > 32 ? 64 : 32;
  const int by = kThreads / bx;
  const int64_t gx = (groups + bx - 1) / bx;
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t want_y = std::max<int64_t>(1, (static_cast<int64_t>(sms) * kBlocksPerSm + gx - 1) / gx);
  const int64_t gy = std::min<int64_t>({want_y, (rows + by - 1) / by, 65535});
  return {dim3(static_cast<unsigned>(gx), static_cast<unsigned>(std::max<int64_t>(gy, 1))), dim3(bx, by)};
}

at::Tensor counts_cuda(const at::Tensor& targets, double pos_threshold) {
  const c10::cuda::CUDAGuard guard(targets.device());
  return ssl_counts(targets, pos_threshold, [](const at::Tensor& t, float thr, at::Tensor& counts) {
    const int64_t B = t.size(0), C = t.size(1);
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kByte, t.scalar_type(),
                                    "sampled_sigmoid_loss_counts", [&] {
                                      const scalar_t* yp = t.const_data_ptr<scalar_t>();
                                      const int vec = vec_width(4, C, yp);
                                      const Launch l = plan(C, vec, B);
                                      with_vec<4>(vec, [&](auto v) {
                                        counts_kernel<scalar_t, decltype(v)::value><<<l.grid, l.block, 0, stream>>>(
                                            yp, counts.mutable_data_ptr<int32_t>(), B, C, thr);
                                      });
                                      C10_CUDA_KERNEL_LAUNCH_CHECK();
                                    });
  });
}

template <typename scalar_t, typename target_t>
void forward_cuda_impl(const SslProblem& prob, SslOutputs& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const SslParams& prm = prob.prm;
  const bool none = prm.reduction == SslReduction::kNone;
  const scalar_t* zp = prob.logits.const_data_ptr<scalar_t>();
  const target_t* yp = prob.targets.const_data_ptr<target_t>();
  scalar_t* gp = prob.compute_grad ? out.grad.mutable_data_ptr<scalar_t>() : nullptr;
  scalar_t* lp = none ? out.loss.mutable_data_ptr<scalar_t>() : nullptr;
  // Output pointers join the alignment test only when they are written.
  // Columns per thread: the widest of 4, 2 and 1 that divides C and for which every pointer is
  // aligned, so each row starts on a vector boundary (C = 11166 takes 2). With 1 the warp still
  // reads consecutive addresses, so loads stay coalesced.
  const int vec = vec_width(4, prm.C, zp, yp, gp ? gp : zp, lp ? lp : zp);
  const int64_t row_groups = ((prm.row_start + prm.B + 3) >> 2) - (prm.row_start >> 2);
  const Launch l = plan(prm.C, vec, row_groups);
  at::Tensor partials = at::empty({none ? 0 : static_cast<int64_t>(l.grid.x) * l.grid.y},
                                  prob.logits.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  acc_t* pp = none ? nullptr : partials.mutable_data_ptr<acc_t>();
  const acc_t gscale = static_cast<acc_t>(ssl_scale(prm));
  auto stream = at::cuda::getCurrentCUDAStream();
  const int32_t* cp = prob.counts.const_data_ptr<int32_t>();
  const acc_t* cw = prob.class_weight.const_data_ptr<acc_t>();
  const acc_t* pw = prob.pos_weight.const_data_ptr<acc_t>();
  bool* kp = out.kept.mutable_data_ptr<bool>();
  with_vec<4>(vec, [&](auto v) {
    forward_kernel<scalar_t, target_t, decltype(v)::value>
        <<<l.grid, l.block, 0, stream>>>(zp, yp, cp, cw, pw, prm, gscale, gp, lp, kp, pp);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!none) {
    finish_kernel<acc_t><<<1, kFinishThreads, 0, stream>>>(pp, partials.numel(), ssl_scale(prm),
                                                           out.loss.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cuda(const at::Tensor& logits, const at::Tensor& targets,
                                                            const at::Tensor& counts, const at::Tensor& class_weight,
                                                            const at::Tensor& pos_weight, double pos_threshold,
                                                            std::optional<double> neg_ratio, double empty_keep,
                                                            int64_t seed, int64_t offset, int64_t row_start,
                                                            std::string_view reduction, bool compute_grad) {
  const c10::cuda::CUDAGuard guard(logits.device());
  return ssl_forward(logits, targets, counts, class_weight, pos_weight, pos_threshold, neg_ratio, empty_keep, seed,
                     offset, row_start, reduction, compute_grad,
                     [](auto ztag, auto ytag, const SslProblem& prob, SslOutputs& out) {
                       forward_cuda_impl<typename decltype(ztag)::type, typename decltype(ytag)::type>(prob, out);
                     });
}

void scale_grad_cuda(const at::Tensor& grad, const at::Tensor& grad_loss) {
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor g = ssl_check_scale_grad(grad, grad_loss);
  const int64_t n = grad.numel();
  if (n == 0) return;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "sampled_sigmoid_loss_scale_grad_",
                                  [&] {
                                    scalar_t* p = grad.mutable_data_ptr<scalar_t>();
                                    const auto* gp = g.const_data_ptr<at::opmath_type<scalar_t>>();
                                    const int vec = vec_width(4, n, static_cast<const scalar_t*>(p));
                                    const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
                                    const int64_t n_vec = n / vec;
                                    const int64_t blocks = std::min<int64_t>(
                                        (n_vec + kThreads - 1) / kThreads, static_cast<int64_t>(sms) * kBlocksPerSm);
                                    with_vec<4>(vec, [&](auto v) {
                                      scale_kernel<scalar_t, decltype(v)::value>
                                          <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p, gp, n_vec);
                                    });
                                    C10_CUDA_KERNEL_LAUNCH_CHECK();
                                  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedembed, CUDA, m) {
  m.impl("sampled_sigmoid_loss_counts", &counts_cuda);
  m.impl("sampled_sigmoid_loss", &forward_cuda);
  m.impl("sampled_sigmoid_loss_scale_grad_", &scale_grad_cuda);
}

}  // namespace fusedembed
