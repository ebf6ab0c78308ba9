// sampled_sigmoid_loss on the CPU. Counts: parallel over column blocks, each walking all rows.
// Main pass: class decisions once, then parallel over groups of four rows (one Philox call serves
// the four rows of a column), per-row loss sums added in row order so the result does not depend
// on the number of threads. Invalid targets are an error here (checking is free on the CPU).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "ops/sampled_sigmoid_loss.h"

namespace fusedembed {
namespace {

constexpr int64_t kColumnBlock = 256;

// The first invalid target in row-major order, if any, found by a parallel pass.
struct BadTarget {
  int64_t index = -1;
  double value = 0;
};

inline void keep_first(BadTarget& into, int64_t index, double value) {
  if (into.index < 0 || index < into.index) into = {index, value};
}

[[noreturn]] void raise_bad_target(double value) {
  TORCH_CHECK(false, "sampled_sigmoid_loss: targets must be in [0, 1] or -1, got ", value);
}

template <typename target_t>
void counts_cpu_impl(const at::Tensor& t, float thr, at::Tensor& counts) {
  using acc_t = std::conditional_t<std::is_same_v<target_t, double>, double, float>;
  const int64_t B = t.size(0), C = t.size(1);
  const target_t* y = t.const_data_ptr<target_t>();
  int32_t* npos = counts.mutable_data_ptr<int32_t>();
  int32_t* nneg = npos + C;
  const int64_t blocks = (C + kColumnBlock - 1) / kColumnBlock;
  std::vector<BadTarget> bad(blocks);
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t j0 = blk * kColumnBlock, j1 = std::min(C, j0 + kColumnBlock);
      for (int64_t i = 0; i < B; ++i) {
        for (int64_t j = j0; j < j1; ++j) {
          const acc_t v = static_cast<acc_t>(y[i * C + j]);
          if (!ssl_target_valid(v)) keep_first(bad[blk], i * C + j, static_cast<double>(v));
          if (v == acc_t(-1)) continue;
          if (ssl_is_positive(v, thr)) ++npos[j];
          else ++nneg[j];
        }
      }
    }
  });
  BadTarget first;
  for (const auto& b : bad)
    if (b.index >= 0) keep_first(first, b.index, b.value);
  if (first.index >= 0) raise_bad_target(first.value);
}

at::Tensor counts_cpu(const at::Tensor& targets, double pos_threshold) {
  ssl_check_targets(targets);
  ssl_check_pos_threshold(pos_threshold);
  at::Tensor t = targets.contiguous();
  if (t.scalar_type() == at::kBool) t = t.view(at::kByte);
  at::Tensor counts = at::zeros({2, t.size(1)}, targets.options().dtype(at::kInt));
  if (t.numel() == 0) return counts;
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kByte, t.scalar_type(), "sampled_sigmoid_loss_counts",
                                  [&] { counts_cpu_impl<scalar_t>(t, static_cast<float>(pos_threshold), counts); });
  return counts;
}

template <typename scalar_t, typename target_t>
void forward_cpu_impl(const SslProblem& prob, SslOutputs& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const SslParams& prm = prob.prm;
  const int64_t B = prm.B, C = prm.C;
  const scalar_t* z = prob.logits.const_data_ptr<scalar_t>();
  const target_t* y = prob.targets.const_data_ptr<target_t>();
  const int32_t* counts = prob.counts.const_data_ptr<int32_t>();
  const acc_t* cw = prob.class_weight.const_data_ptr<acc_t>();
  const acc_t* pw = prob.pos_weight.const_data_ptr<acc_t>();
  const bool none = prm.reduction == SslReduction::kNone;
  scalar_t* grad = prob.compute_grad ? out.grad.mutable_data_ptr<scalar_t>() : nullptr;
  scalar_t* loss_elem = none ? out.loss.mutable_data_ptr<scalar_t>() : nullptr;
  const acc_t gscale = static_cast<acc_t>(ssl_scale(prm));

  std::vector<SslClass<acc_t>> cls(C);
  bool* kept = out.kept.mutable_data_ptr<bool>();
  at::parallel_for(0, C, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      cls[j] = ssl_class<acc_t>(j, counts[j], counts[C + j], cw, pw, prm);
      kept[j] = cls[j].keep_column;
    }
  });

  // Groups of four global rows: the unit a Philox call serves (see the header).
  const int64_t g_begin = prm.row_start >> 2, g_end = (prm.row_start + B + 3) >> 2;
  std::vector<double> row_sum(none ? 0 : B, 0.0);
  std::vector<BadTarget> bad(g_end - g_begin);
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(4 * C, 1));
  at::parallel_for(g_begin, g_end, grain, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      const int64_t r0 = std::max<int64_t>(4 * g, prm.row_start) - prm.row_start;
      const int64_t r1 = std::min<int64_t>(4 * g + 4, prm.row_start + B) - prm.row_start;
      double sums[4] = {0, 0, 0, 0};
      for (int64_t j = 0; j < C; ++j) {
        const SslClass<acc_t>& c = cls[j];
        const Philox4x32 draws = c.needs_draw ? ssl_entry_draws(g, j, prm) : Philox4x32{{0, 0, 0, 0}};
        for (int64_t i = r0; i < r1; ++i) {
          const int64_t k = i * C + j;
          const acc_t yv = static_cast<acc_t>(y[k]);
          if (!ssl_target_valid(yv)) keep_first(bad[g - g_begin], k, static_cast<double>(yv));
          const SslElement<acc_t> e =
              ssl_element(static_cast<acc_t>(z[k]), yv, draws.v[(i + prm.row_start) & 3], c, prm.pos_threshold);
          if (grad) grad[k] = static_cast<scalar_t>(e.grad * gscale);
          if (none) loss_elem[k] = static_cast<scalar_t>(e.loss);
          else sums[i - r0] += static_cast<double>(e.loss);
        }
      }
      if (!none)
        for (int64_t i = r0; i < r1; ++i) row_sum[i] = sums[i - r0];
    }
  });
  BadTarget first;
  for (const auto& b : bad)
    if (b.index >= 0) keep_first(first, b.index, b.value);
  if (first.index >= 0) raise_bad_target(first.value);
  if (!none) {
    double total = 0;
    for (double s : row_sum) total += s;
    out.loss.fill_(total * ssl_scale(prm));
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cpu(const at::Tensor& logits, const at::Tensor& targets,
                                                           const at::Tensor& counts, const at::Tensor& class_weight,
                                                           const at::Tensor& pos_weight, double pos_threshold,
                                                           std::optional<double> neg_ratio, double empty_keep,
                                                           int64_t seed, int64_t offset, int64_t row_start,
                                                           std::string_view reduction, bool compute_grad) {
  SslProblem prob = ssl_check(logits, targets, counts, class_weight, pos_weight, pos_threshold, neg_ratio, empty_keep,
                              seed, offset, row_start, reduction, compute_grad);
  SslOutputs out = ssl_allocate(prob);
  if (prob.prm.C == 0) {
    if (prob.prm.reduction != SslReduction::kNone) out.loss.zero_();
  } else {
    ssl_dispatch(prob.logits.scalar_type(), prob.targets.scalar_type(), [&](auto ztag, auto ytag) {
      forward_cpu_impl<typename decltype(ztag)::type, typename decltype(ytag)::type>(prob, out);
    });
  }
  return {out.loss, out.grad, out.kept};
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedembed, CPU, m) {
  m.impl("sampled_sigmoid_loss_counts", &counts_cpu);
  m.impl("sampled_sigmoid_loss", &forward_cpu);
}

}  // namespace fusedembed
