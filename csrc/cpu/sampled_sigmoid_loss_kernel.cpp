// sampled_sigmoid_loss on the CPU. Counts: parallel over column blocks, each walking all rows.
// Main pass: class decisions once, then parallel over groups of four rows (one Philox call serves
// the four rows of a column), per-row loss sums added in a fixed order so the result does not
// depend on the number of threads. Invalid targets are an error here (checking is free on the CPU).
//
// Float32 math (float32/float16/bfloat16 logits) runs on chunks of a row with branch-free code
// that GCC vectorizes: the chunk's Philox draws first, then every entry computed and the keep
// mask applied by selects (std::exp/log1p calls and per-entry branches kept it scalar, ~38 ns an
// entry). Float64 logits take the scalar ssl_element path, the one CUDA shares.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "cpu/vec_convert.h"
#include "cpu/vec_math.h"
#include "ops/sampled_sigmoid_loss.h"

namespace fusedembed {
namespace {

namespace vm = vec_math;

constexpr int64_t kColumnBlock = 256;
constexpr int64_t kChunk = 512;  // columns per vectorized step: its buffers stay in L1

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
        // Branch-free, so it vectorizes; a row with an invalid target is searched again.
        uint32_t row_bad = 0;
        for (int64_t j = j0; j < j1; ++j) {
          const acc_t v = static_cast<acc_t>(y[i * C + j]);
          const bool pos = ssl_is_positive(v, thr), ignored = v == acc_t(-1);
          row_bad |= !ssl_target_valid(v);
          npos[j] += pos;
          nneg[j] += !pos & !ignored;
        }
        if (row_bad)
          for (int64_t j = j0; j < j1; ++j) {
            const acc_t v = static_cast<acc_t>(y[i * C + j]);
            if (!ssl_target_valid(v)) keep_first(bad[blk], i * C + j, static_cast<double>(v));
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
  return ssl_counts(targets, pos_threshold, [](const at::Tensor& t, float thr, at::Tensor& counts) {
    AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kByte, t.scalar_type(),
                                    "sampled_sigmoid_loss_counts", [&] { counts_cpu_impl<scalar_t>(t, thr, counts); });
  });
}

// --- float32 path ---------------------------------------------------------------------------

// The class decisions as arrays. An entry is kept when (pos_kept[j] and y >= pos_threshold) or
// its draw u < keep_p[j]: keep_p is the negative keep probability of a class with a positive
// and 1 or 0 (kept column or not) for a class without one. u is in [0, 1), so 1 and 0 decide
// whatever the draw, and columns that need no draw may read any: only draw_cols (ascending)
// get Philox calls.
struct FloatClasses {
  std::vector<float> weight, eta, keep_p;
  std::vector<uint32_t> pos_kept;
  std::vector<int64_t> draw_cols;
};

FloatClasses float_classes(const std::vector<SslClass<float>>& cls) {
  const size_t C = cls.size();
  FloatClasses f{std::vector<float>(C), std::vector<float>(C), std::vector<float>(C), std::vector<uint32_t>(C)};
  for (size_t j = 0; j < C; ++j) {
    const SslClass<float>& c = cls[j];
    f.weight[j] = c.weight;
    f.eta[j] = c.eta;
    f.keep_p[j] = c.has_pos ? c.keep_neg : (c.keep_column ? 1.0f : 0.0f);
    f.pos_kept[j] = c.has_pos;
    if (c.needs_draw) f.draw_cols.push_back(static_cast<int64_t>(j));
  }
  return f;
}

// The four Philox words of row group g for columns cols[0 .. n).
FUSEDEMBED_HOT void column_draws(int64_t g, const int64_t* __restrict cols, int64_t n, const SslParams prm,
                                 uint32_t* __restrict d0, uint32_t* __restrict d1, uint32_t* __restrict d2,
                                 uint32_t* __restrict d3) {
  for (int64_t k = 0; k < n; ++k) {
    const Philox4x32 r = ssl_entry_draws(g, cols[k], prm);
    d0[k] = r.v[0];
    d1[k] = r.v[1];
    d2[k] = r.v[2];
    d3[k] = r.v[3];
  }
}

// log(1 + e) for e in [0, 1]: log(u) * e / (u - 1) with u = 1 + e cancels the rounding of u
// (Goldberg), so small e keep their relative accuracy; NaN stays NaN.
FUSEDEMBED_VEC_INLINE float log1p_unit(float e) {
  const float u = 1.0f + e;
  return vm::select(u == 1.0f, e, vm::log2f_normal(u) * vm::kLn2 * e / (u - 1.0f));
}

// One row chunk: weighted loss terms into loss and, with kGrad, gradient terms (times gscale)
// into grad. Returns a nonzero word when some target is invalid (its entries get NaN, as in
// ssl_element). Each entry follows ssl_element: a term with coefficient 0 is left out, dropped
// entries and zero-weight columns give 0 whatever their logit; selects instead of branches.
template <bool kGrad>
FUSEDEMBED_VEC_INLINE uint32_t row_chunk_impl(const float* __restrict z, const float* __restrict y,
                                              const uint32_t* __restrict draw, const float* __restrict weight,
                                              const float* __restrict eta, const float* __restrict keep_p,
                                              const uint32_t* __restrict pos_kept, float pos_threshold, float gscale,
                                              int64_t n, float* __restrict grad, float* __restrict loss) {
  constexpr float kLog2e = 1.44269504088896f;
  using vm::kNaN;
  uint32_t bad = 0;
  for (int64_t k = 0; k < n; ++k) {
    const float zk = z[k], yk = y[k], w = weight[k];
    const bool valid = ssl_target_valid(yk);
    const bool keep = ((pos_kept[k] != 0u) & (yk >= pos_threshold)) | (philox_uniform24(draw[k]) < keep_p[k]);
    const bool active = keep & (yk != -1.0f) & (w != 0.0f);
    const float az = vm::select(zk < 0.0f, -zk, zk);
    const float e = vm::exp2f_full(-az * kLog2e);  // exp(-|z|)
    const float l = log1p_unit(e);
    const float sp_pos = vm::select(zk > 0.0f, zk, 0.0f) + l;
    const float sp_neg = vm::select(zk < 0.0f, -zk, 0.0f) + l;
    const float a = eta[k] * yk, b = 1.0f - yk;
    const float ce = vm::select(a != 0.0f, a * sp_neg, 0.0f) + vm::select(b != 0.0f, b * sp_pos, 0.0f);
    loss[k] = vm::select(valid, vm::select(active, w * ce, 0.0f), kNaN);
    if constexpr (kGrad) {
      const float inv = 1.0f / (1.0f + e);
      const bool nonneg = zk >= 0.0f;
      const float sig_pos = vm::select(nonneg, inv, e * inv);
      const float sig_neg = vm::select(nonneg, e * inv, inv);
      const float gk = vm::select(active, w * (b * sig_pos - a * sig_neg) * gscale, 0.0f);
      grad[k] = vm::select(valid, gk, kNaN);
    }
    bad |= !valid;
  }
  return bad;
}

FUSEDEMBED_HOT uint32_t row_chunk(const float* z, const float* y, const uint32_t* draw, const float* weight,
                                  const float* eta, const float* keep_p, const uint32_t* pos_kept,
                                  float pos_threshold, float gscale, int64_t n, float* grad, float* loss) {
  if (grad) return row_chunk_impl<true>(z, y, draw, weight, eta, keep_p, pos_kept, pos_threshold, gscale, n, grad, loss);
  return row_chunk_impl<false>(z, y, draw, weight, eta, keep_p, pos_kept, pos_threshold, gscale, n, nullptr, loss);
}

// Sum of v[0 .. n) in float lanes, then double: a fixed order, so the same on every ISA.
FUSEDEMBED_HOT double chunk_sum(const float* __restrict v, int64_t n) {
  constexpr int kLanes = 16;
  float part[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes)
    for (int l = 0; l < kLanes; ++l) part[l] += v[k + l];
  double s = 0;
  for (; k < n; ++k) s += v[k];
  for (int l = 0; l < kLanes; ++l) s += part[l];
  return s;
}

template <typename T>
const float* as_float_chunk(const T* src, int64_t n, float* buf) {
  if constexpr (std::is_same_v<T, float>) {
    return src;
  } else if constexpr (std::is_same_v<T, uint8_t>) {
    for (int64_t k = 0; k < n; ++k) buf[k] = static_cast<float>(src[k]);
    return buf;
  } else {
    load_block(src, n, 1, n, buf);
    return buf;
  }
}

// Pointers and scalars every row group reads, for either path.
template <typename scalar_t, typename target_t>
struct RowGroupArgs {
  const scalar_t* z;
  const target_t* y;
  scalar_t* grad;       // nullptr unless compute_grad
  scalar_t* loss_elem;  // nullptr unless reduction "none"
  SslParams prm;
  at::opmath_type<scalar_t> gscale;

  RowGroupArgs(const SslProblem& prob, SslOutputs& out)
      : z(prob.logits.const_data_ptr<scalar_t>()),
        y(prob.targets.const_data_ptr<target_t>()),
        grad(prob.compute_grad ? out.grad.mutable_data_ptr<scalar_t>() : nullptr),
        loss_elem(prob.prm.reduction == SslReduction::kNone ? out.loss.mutable_data_ptr<scalar_t>() : nullptr),
        prm(prob.prm),
        gscale(static_cast<at::opmath_type<scalar_t>>(ssl_scale(prob.prm))) {}
};

// Local rows r0 .. r1 of row group g (float32 math): chunk by chunk, the draws, then each row.
// sums[r - r0] gets row r's loss sum unless the reduction is "none"; bad the first invalid target.
template <typename scalar_t, typename target_t>
void float_row_group(const RowGroupArgs<scalar_t, target_t>& a, const FloatClasses& fc, int64_t g, int64_t r0,
                     int64_t r1, double* sums, BadTarget& bad) {
  constexpr bool kFloat = std::is_same_v<scalar_t, float>;
  const int64_t C = a.prm.C;
  // Draw words of columns that need none are read but do not matter (see FloatClasses): zeroed
  // once so that they are defined, then left as they are.
  alignas(64) uint32_t draws[4][kChunk], sparse[4][kChunk];
  for (auto& d : draws) std::fill(d, d + std::min(C, kChunk), 0u);
  alignas(64) float zbuf[kChunk], ybuf[kChunk], gbuf[kChunk], lbuf[kChunk];
  const int64_t* next = fc.draw_cols.data();
  const int64_t* const last = next + fc.draw_cols.size();
  for (int64_t j0 = 0; j0 < C; j0 += kChunk) {
    const int64_t n = std::min(kChunk, C - j0);
    // This chunk's columns that need draws: all of them (computed in place) or some (computed
    // packed, then spread to their columns).
    const int64_t* end = std::lower_bound(next, last, j0 + n);
    const int64_t m = end - next;
    if (m == n) {
      column_draws(g, next, n, a.prm, draws[0], draws[1], draws[2], draws[3]);
    } else if (m > 0) {
      column_draws(g, next, m, a.prm, sparse[0], sparse[1], sparse[2], sparse[3]);
      for (int64_t k = 0; k < m; ++k)
        for (int w = 0; w < 4; ++w) draws[w][next[k] - j0] = sparse[w][k];
    }
    next = end;
    for (int64_t i = r0; i < r1; ++i) {
      const int64_t off = i * C + j0;
      const float* zf = as_float_chunk(a.z + off, n, zbuf);
      const float* yf = as_float_chunk(a.y + off, n, ybuf);
      // float32 outputs are written in place; others go through the buffers.
      float* gf = !a.grad ? nullptr : kFloat ? reinterpret_cast<float*>(a.grad + off) : gbuf;
      float* lf = kFloat && a.loss_elem ? reinterpret_cast<float*>(a.loss_elem + off) : lbuf;
      const uint32_t any_bad = row_chunk(zf, yf, draws[(i + a.prm.row_start) & 3], fc.weight.data() + j0,
                                         fc.eta.data() + j0, fc.keep_p.data() + j0, fc.pos_kept.data() + j0,
                                         a.prm.pos_threshold, a.gscale, n, gf, lf);
      if (any_bad)
        for (int64_t k = 0; k < n; ++k)
          if (!ssl_target_valid(yf[k])) {
            keep_first(bad, off + k, static_cast<double>(yf[k]));
            break;
          }
      if constexpr (!kFloat) {
        if (a.grad) store_block(gf, 1, n, a.grad + off, n);
        if (a.loss_elem) store_block(lf, 1, n, a.loss_elem + off, n);
      }
      if (!a.loss_elem) sums[i - r0] += chunk_sum(lf, n);
    }
  }
}

// --- float64 path ---------------------------------------------------------------------------

// The same for float64 logits, entry by entry through ssl_element.
template <typename target_t>
void double_row_group(const RowGroupArgs<double, target_t>& a, const std::vector<SslClass<double>>& cls, int64_t g,
                      int64_t r0, int64_t r1, double* sums, BadTarget& bad) {
  const int64_t C = a.prm.C;
  for (int64_t j = 0; j < C; ++j) {
    const SslClass<double>& c = cls[j];
    const Philox4x32 draws = c.needs_draw ? ssl_entry_draws(g, j, a.prm) : Philox4x32{{0, 0, 0, 0}};
    for (int64_t i = r0; i < r1; ++i) {
      const int64_t k = i * C + j;
      const double yv = static_cast<double>(a.y[k]);
      if (!ssl_target_valid(yv)) keep_first(bad, k, yv);
      const SslElement<double> e = ssl_element(a.z[k], yv, draws.v[(i + a.prm.row_start) & 3], c, a.prm.pos_threshold);
      if (a.grad) a.grad[k] = e.grad * a.gscale;
      if (a.loss_elem) a.loss_elem[k] = e.loss;
      else sums[i - r0] += e.loss;
    }
  }
}

// Runs group(g, r0, r1, sums, bad) over the groups of four global rows (the unit a Philox call
// serves, see the header) in parallel, then adds the row sums in row order, so the result does
// not depend on the number of threads. Raises on the first invalid target.
template <typename F>
double for_row_groups(const SslParams& prm, F&& group) {
  const int64_t B = prm.B, C = prm.C;
  const int64_t g_begin = prm.row_start >> 2, g_end = (prm.row_start + B + 3) >> 2;
  std::vector<double> row_sum(B, 0.0);
  std::vector<BadTarget> bad(g_end - g_begin);
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(4 * C, 1));
  at::parallel_for(g_begin, g_end, grain, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      const int64_t r0 = std::max<int64_t>(4 * g, prm.row_start) - prm.row_start;
      const int64_t r1 = std::min<int64_t>(4 * g + 4, prm.row_start + B) - prm.row_start;
      group(g, r0, r1, row_sum.data() + r0, bad[g - g_begin]);
    }
  });
  BadTarget first;
  for (const auto& b : bad)
    if (b.index >= 0) keep_first(first, b.index, b.value);
  if (first.index >= 0) raise_bad_target(first.value);
  double total = 0;
  for (double s : row_sum) total += s;
  return total;
}

template <typename scalar_t, typename target_t>
void forward_cpu_impl(const SslProblem& prob, SslOutputs& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const SslParams& prm = prob.prm;
  const int64_t C = prm.C;
  const int32_t* counts = prob.counts.const_data_ptr<int32_t>();
  const acc_t* cw = prob.class_weight.const_data_ptr<acc_t>();
  const acc_t* pw = prob.pos_weight.const_data_ptr<acc_t>();

  std::vector<SslClass<acc_t>> cls(C);
  bool* kept = out.kept.mutable_data_ptr<bool>();
  at::parallel_for(0, C, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      cls[j] = ssl_class<acc_t>(j, counts[j], counts[C + j], cw, pw, prm);
      kept[j] = cls[j].keep_column;
    }
  });

  const RowGroupArgs<scalar_t, target_t> args(prob, out);
  double total;
  if constexpr (std::is_same_v<acc_t, float>) {
    const FloatClasses fc = float_classes(cls);
    total = for_row_groups(prm, [&](int64_t g, int64_t r0, int64_t r1, double* sums, BadTarget& bad) {
      float_row_group(args, fc, g, r0, r1, sums, bad);
    });
  } else {
    total = for_row_groups(prm, [&](int64_t g, int64_t r0, int64_t r1, double* sums, BadTarget& bad) {
      double_row_group(args, cls, g, r0, r1, sums, bad);
    });
  }
  if (prm.reduction != SslReduction::kNone) out.loss.fill_(total * ssl_scale(prm));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cpu(const at::Tensor& logits, const at::Tensor& targets,
                                                           const at::Tensor& counts, const at::Tensor& class_weight,
                                                           const at::Tensor& pos_weight, double pos_threshold,
                                                           std::optional<double> neg_ratio, double empty_keep,
                                                           int64_t seed, int64_t offset, int64_t row_start,
                                                           std::string_view reduction, bool compute_grad) {
  return ssl_forward(logits, targets, counts, class_weight, pos_weight, pos_threshold, neg_ratio, empty_keep, seed,
                     offset, row_start, reduction, compute_grad,
                     [](auto ztag, auto ytag, const SslProblem& prob, SslOutputs& out) {
                       forward_cpu_impl<typename decltype(ztag)::type, typename decltype(ytag)::type>(prob, out);
                     });
}

void scale_grad_cpu(const at::Tensor& grad, const at::Tensor& grad_loss) {
  const at::Tensor g = ssl_check_scale_grad(grad, grad_loss);
  if (g.item<double>() == 1.0) return;  // the usual case: loss.backward()
  grad.mul_(g);                         // in the accumulation type, rounded once
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedembed, CPU, m) {
  m.impl("sampled_sigmoid_loss_counts", &counts_cpu);
  m.impl("sampled_sigmoid_loss", &forward_cpu);
  m.impl("sampled_sigmoid_loss_scale_grad_", &scale_grad_cpu);
}

}  // namespace fusedembed
