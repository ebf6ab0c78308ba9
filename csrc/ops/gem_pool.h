// gem_pool: declarations and input checks shared by the CPU and CUDA kernels.
//
// y[b, c] = (mean_s max(x[b, c, s], eps)^p)^(1/p), computed as m * (mean_s (x/m)^p)^(1/p) with m the
// row maximum, so no finite input overflows or underflows. The op returns y in the accumulation
// type (float32 for float16/bfloat16 x; the Python wrapper rounds it to x's dtype), so the backward
// pass reads the exact y and not a rounded one (a float16 y can be subnormal). It needs only x, y:
//   dy/dx_s = (1/N) (x_s / y)^(p-1)                (0 where x_s < eps)
//   dy/dp   = y / (N p) * sum_s q_s^p ln q_s,  q_s = max(x_s, eps) / y
// where q_s <= N^(1/p), so neither formula can overflow; q_s itself may underflow (x_s = 1e-30,
// y = 1e29), so the kernels take ln q_s = ln max(x_s, eps) - ln y where that can happen.
// A row holding +inf pools to +inf, a row holding NaN to NaN.
#pragma once

#include <ATen/ATen.h>

#include <cmath>

#include "ops/common.h"

namespace fusedembed {

// Two memory layouts run without a copy: each (b, c) row contiguous (NCHW, (B, C, L)), or the
// channels innermost (channels_last, (B, L, C) transposed). Anything else is made contiguous.
enum class GemLayout { kRows, kChannelsLast };

struct GemProblem {
  at::Tensor x;  // x itself, or a contiguous copy when its layout is neither of the above
  int64_t B, C, N;
  GemLayout layout;
  bool p_per_channel;
};

constexpr double kGemMinEps = 1.1754943508222875e-38;  // FLT_MIN

inline bool is_channels_last_gem(const at::Tensor& x) {
  if (x.dim() == 4) return x.is_contiguous(at::MemoryFormat::ChannelsLast);
  return x.transpose(1, 2).is_contiguous();
}

inline GemProblem gem_check(const at::Tensor& x, const at::Tensor& p, double eps) {
  TORCH_CHECK(x.dim() == 3 || x.dim() == 4,
              "gem_pool: x must be (B, C, H, W) or (B, C, L), got a ", x.dim(), "-d tensor of shape ",
              shape_str(x));
  auto st = x.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16 || st == at::kDouble,
              "gem_pool: x must be float32, float16, bfloat16 or float64, got ", dtype_str(x));
  const int64_t B = x.size(0), C = x.size(1);
  const int64_t N = x.numel() / std::max<int64_t>(B * C, 1);
  TORCH_CHECK(x.dim() == 3 ? x.size(2) > 0 : x.size(2) > 0 && x.size(3) > 0,
              "gem_pool: x has an empty spatial size, shape ", shape_str(x));
  TORCH_CHECK(at::isFloatingType(p.scalar_type()), "gem_pool: p must be a floating tensor, got ",
              dtype_str(p));
  TORCH_CHECK(p.device() == x.device(), "gem_pool: p is on ", p.device(), " but x is on ", x.device());
  const bool per_channel = p.dim() == 1 && p.size(0) == C && C != 1;
  TORCH_CHECK(per_channel || (p.numel() == 1 && p.dim() <= 1),
              "gem_pool: p must be a float, a 1-element tensor or have shape (C,) = (", C,
              ",), got shape ", shape_str(p));
  // Below the smallest normal float32 the clamped values lose precision and the fast log2 of the
  // kernels (CPU and CUDA, flush-to-zero) is no longer exact.
  TORCH_CHECK(std::isfinite(eps) && eps >= kGemMinEps,
              "gem_pool: eps must be finite and >= 1.175494e-38 (the smallest normal float32), got ", eps);
  if (p.device().is_cpu()) {
    // On the GPU this would cost a host sync every step; there an invalid p gives NaN rows.
    const at::Tensor bad = (~(at::isfinite(p) & (p > 0))).reshape(-1);
    TORCH_CHECK(!bad.any().item<bool>(), "gem_pool: p must be finite and > 0, got ",
                p.reshape(-1).masked_select(bad)[0].item<double>());
  }
  GemProblem prob{x, B, C, N, GemLayout::kRows, per_channel};
  if (x.is_contiguous()) {
    prob.layout = GemLayout::kRows;
  } else if (is_channels_last_gem(x)) {
    prob.layout = GemLayout::kChannelsLast;
  } else {
    prob.x = x.contiguous();
  }
  return prob;
}

inline void gem_check_backward(const at::Tensor& grad_y, const at::Tensor& y, const GemProblem& prob) {
  TORCH_CHECK(grad_y.dim() == 2 && grad_y.size(0) == prob.B && grad_y.size(1) == prob.C,
              "gem_pool_backward: grad_y must have shape (B, C) = (", prob.B, ", ", prob.C, "), got ",
              shape_str(grad_y));
  TORCH_CHECK(y.sizes() == grad_y.sizes(), "gem_pool_backward: y must have shape ", shape_str(grad_y),
              ", got ", shape_str(y));
  TORCH_CHECK(y.scalar_type() == acc_type_for(prob.x.scalar_type()),
              "gem_pool_backward: y must be gem_pool's output (float32, float64 for float64 x), got ", dtype_str(y));
  TORCH_CHECK(grad_y.device() == prob.x.device() && y.device() == prob.x.device(),
              "gem_pool_backward: grad_y, y and x must be on one device");
}

// Output of the backward kernels before p's gradient is reduced to p's shape.
inline at::Tensor gem_reduce_grad_p(const at::Tensor& row_grad_p, const at::Tensor& p, bool per_channel) {
  at::Tensor g = per_channel ? row_grad_p.sum(0) : row_grad_p.sum();
  return g.reshape(p.sizes()).to(p.scalar_type());
}

// The host side of the op, shared by the CPU and CUDA entry points: check, allocate, and call the
// device's launch(prob, p_acc, y) when there is a row to pool. y is (B, C) in the accumulation type.
template <typename Launch>
at::Tensor gem_forward(const at::Tensor& x, const at::Tensor& p, double eps, Launch&& launch) {
  GemProblem prob = gem_check(x, p, eps);
  const auto acc = acc_type_for(x.scalar_type());
  at::Tensor y = at::empty({prob.B, prob.C}, x.options().dtype(acc));
  if (y.numel() > 0) launch(prob, p.to(acc).contiguous(), y);
  return y;
}

// The backward's host side: launch(prob, p_acc, gy, y, dx, row_dp) with gy and y contiguous in the
// accumulation type, dx laid out like prob.x (undefined unless x_grad) and row_dp (B, C) in the
// accumulation type (undefined unless p_grad); then dx back into x's strides and dp to p's shape.
template <typename Launch>
std::tuple<at::Tensor, at::Tensor> gem_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& p,
                                                const at::Tensor& y, double eps, bool x_grad, bool p_grad,
                                                Launch&& launch) {
  GemProblem prob = gem_check(x, p, eps);
  gem_check_backward(grad_y, y, prob);
  const auto acc = acc_type_for(x.scalar_type());
  // dx has x's strides (a channels_last network stays channels_last); odd layouts that ran on a
  // contiguous copy of x are copied back into them.
  at::Tensor dx = x_grad ? at::empty_like(x) : at::empty({0}, x.options());
  at::Tensor dx_work = x_grad && !prob.x.is_same(x) ? at::empty_like(prob.x) : dx;
  at::Tensor row_dp = p_grad ? at::empty({prob.B, prob.C}, x.options().dtype(acc)) : at::Tensor();
  if (prob.B * prob.C > 0 && (x_grad || p_grad)) {
    launch(prob, p.to(acc).contiguous(), grad_y.to(acc).contiguous(), y.contiguous(),
           x_grad ? dx_work : at::Tensor(), row_dp);
  }
  if (!dx_work.is_same(dx)) dx.copy_(dx_work);
  at::Tensor dp = p_grad ? gem_reduce_grad_p(row_dp, p, prob.p_per_channel) : at::empty({0}, p.options());
  return {dx, dp};
}

}  // namespace fusedembed
