// gem_pool on the CPU: parallel over (b, c) rows (NCHW) or over (b, channel block) tiles
// (channels_last), two passes over data that stays in cache: the row maximum, then the scaled sum.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

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

template <typename scalar_t>
void forward_rows(const GemProblem& prob, const at::opmath_type<scalar_t>* p, double eps_d, scalar_t* y) {
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
      const acc_t inv_m = acc_t(1) / m;
      acc_t sum = 0;
      for (int64_t i = 0; i < N; ++i) sum += std::exp(pc * std::log(clamp_eps(static_cast<acc_t>(row[i]), eps) * inv_m));
      y[r] = static_cast<scalar_t>(gem_from_sum(m, sum, N, pc));
    }
  });
}

template <typename scalar_t>
void forward_channels_last(const GemProblem& prob, const at::opmath_type<scalar_t>* p, double eps_d,
                           scalar_t* y) {
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
      for (int64_t c = 0; c < nc; ++c) y[b * C + c0 + c] = static_cast<scalar_t>(gem_from_sum(m[c], sum[c], N, pc[c]));
    }
  });
}

// One element of the backward pass: writes dx (when wanted) and returns q^p ln q for dp.
template <typename scalar_t, typename acc_t>
inline acc_t backward_element(scalar_t xv, acc_t eps, acc_t inv_y, acc_t pc, acc_t dx_scale, scalar_t* dx) {
  const acc_t v = static_cast<acc_t>(xv);
  const acc_t q = clamp_eps(v, eps) * inv_y;
  const acc_t lq = std::log(q);
  const acc_t qpm1 = std::exp((pc - acc_t(1)) * lq);
  if (dx) *dx = static_cast<scalar_t>(v < eps ? acc_t(0) : dx_scale * qpm1);
  return qpm1 * q * lq;
}

template <typename scalar_t>
void backward_rows(const GemProblem& prob, const at::opmath_type<scalar_t>* p, double eps_d, const scalar_t* gy,
                   const scalar_t* y, scalar_t* dx, at::opmath_type<scalar_t>* row_dp) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x = prob.x.const_data_ptr<scalar_t>();
  const int64_t N = prob.N, C = prob.C;
  const acc_t eps = static_cast<acc_t>(eps_d);
  const int64_t grain = std::max<int64_t>(1, 32768 / N);
  at::parallel_for(0, prob.B * C, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const acc_t pc = p[prob.p_per_channel ? r % C : 0];
      const acc_t yr = static_cast<acc_t>(y[r]), g = static_cast<acc_t>(gy[r]);
      const acc_t inv_y = acc_t(1) / yr, dx_scale = g / static_cast<acc_t>(N);
      acc_t acc = 0;
      for (int64_t i = 0; i < N; ++i)
        acc += backward_element(x[r * N + i], eps, inv_y, pc, dx_scale, dx ? dx + r * N + i : nullptr);
      if (row_dp) row_dp[r] = g * yr / (static_cast<acc_t>(N) * pc) * acc;
    }
  });
}

template <typename scalar_t>
void backward_channels_last(const GemProblem& prob, const at::opmath_type<scalar_t>* p, double eps_d,
                            const scalar_t* gy, const scalar_t* y, scalar_t* dx,
                            at::opmath_type<scalar_t>* row_dp) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x = prob.x.const_data_ptr<scalar_t>();
  const int64_t N = prob.N, C = prob.C;
  const acc_t eps = static_cast<acc_t>(eps_d);
  const int64_t blocks = (C + kChannelBlock - 1) / kChannelBlock;
  at::parallel_for(0, prob.B * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> inv_y(kChannelBlock), scale(kChannelBlock), pc(kChannelBlock), acc(kChannelBlock);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / blocks, c0 = (t % blocks) * kChannelBlock;
      const int64_t nc = std::min(kChannelBlock, C - c0);
      for (int64_t c = 0; c < nc; ++c) {
        inv_y[c] = acc_t(1) / static_cast<acc_t>(y[b * C + c0 + c]);
        scale[c] = static_cast<acc_t>(gy[b * C + c0 + c]) / static_cast<acc_t>(N);
        pc[c] = p[prob.p_per_channel ? c0 + c : 0];
        acc[c] = 0;
      }
      for (int64_t s = 0; s < N; ++s) {
        const int64_t off = (b * N + s) * C + c0;
        for (int64_t c = 0; c < nc; ++c)
          acc[c] += backward_element(x[off + c], eps, inv_y[c], pc[c], scale[c], dx ? dx + off + c : nullptr);
      }
      if (row_dp)
        for (int64_t c = 0; c < nc; ++c)
          row_dp[b * C + c0 + c] = scale[c] / (inv_y[c] * pc[c]) * acc[c];
    }
  });
}

at::Tensor gem_pool_cpu(const at::Tensor& x, const at::Tensor& p, double eps) {
  GemProblem prob = gem_check(x, p, eps);
  at::Tensor y = at::empty({prob.B, prob.C}, x.options());
  if (y.numel() == 0) return y;
  at::Tensor p_acc = p.to(acc_type_for(x.scalar_type())).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gem_pool_cpu", [&] {
    const auto* pp = p_acc.const_data_ptr<at::opmath_type<scalar_t>>();
    if (prob.layout == GemLayout::kRows) forward_rows<scalar_t>(prob, pp, eps, y.mutable_data_ptr<scalar_t>());
    else forward_channels_last<scalar_t>(prob, pp, eps, y.mutable_data_ptr<scalar_t>());
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> gem_pool_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                         const at::Tensor& p, const at::Tensor& y, double eps,
                                                         bool x_grad, bool p_grad) {
  GemProblem prob = gem_check(x, p, eps);
  gem_check_backward(grad_y, y, prob);
  const auto acc = acc_type_for(x.scalar_type());
  // dx has x's strides (a channels_last network stays channels_last); odd layouts that ran on a
  // contiguous copy of x are copied back into them.
  at::Tensor dx = x_grad ? at::empty_like(x) : at::empty({0}, x.options());
  at::Tensor dx_work = x_grad && !prob.x.is_same(x) ? at::empty_like(prob.x) : dx;
  at::Tensor row_dp = p_grad ? at::zeros({prob.B, prob.C}, x.options().dtype(acc)) : at::Tensor();
  if (prob.B * prob.C > 0 && (x_grad || p_grad)) {
    at::Tensor p_acc = p.to(acc).contiguous();
    at::Tensor gy = grad_y.to(x.scalar_type()).contiguous(), yc = y.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gem_pool_backward_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto* pp = p_acc.const_data_ptr<acc_t>();
      scalar_t* dxp = x_grad ? dx_work.mutable_data_ptr<scalar_t>() : nullptr;
      acc_t* dpp = p_grad ? row_dp.mutable_data_ptr<acc_t>() : nullptr;
      if (prob.layout == GemLayout::kRows)
        backward_rows<scalar_t>(prob, pp, eps, gy.const_data_ptr<scalar_t>(), yc.const_data_ptr<scalar_t>(), dxp, dpp);
      else
        backward_channels_last<scalar_t>(prob, pp, eps, gy.const_data_ptr<scalar_t>(), yc.const_data_ptr<scalar_t>(),
                                         dxp, dpp);
    });
  }
  if (!dx_work.is_same(dx)) dx.copy_(dx_work);
  at::Tensor dp = p_grad ? gem_reduce_grad_p(row_dp, p, prob.p_per_channel) : at::empty({0}, p.options());
  return {dx, dp};
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedembed, CPU, m) {
  m.impl("gem_pool", &gem_pool_cpu);
  m.impl("gem_pool_backward", &gem_pool_backward_cpu);
}

}  // namespace fusedembed
