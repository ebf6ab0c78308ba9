// sampled_sigmoid_loss: the rules shared by the CPU and CUDA kernels (host-device functions, so
// both devices take the same decisions), and the input checks.
//
// Two ops. sampled_sigmoid_loss_counts(targets, pos_threshold) -> (2, C) int32: positives
// (y >= pos_threshold) and negatives (every other non-ignored entry) per class: the column
// reduction, separate so a distributed caller can all-reduce it before the class decisions.
// sampled_sigmoid_loss(logits, targets, counts, ...) -> (loss, grad_logits, kept): one pass over
// logits and targets that applies, for entry (i, j), class weight w_j and keep mask m_ij:
//   CE_ij = eta_j y softplus(-z) + (1 - y) softplus(z)          (log-sigmoid form, stable)
//   loss  = scale * sum_ij w_j m_ij CE_ij                          (or elementwise for "none")
//   grad  = scale * w_j m_ij ((1 - y) sigmoid(z) - eta_j y sigmoid(-z))
// m_ij: 0 for ignored entries (y = -1); for a class with a positive, 1 for its positives and,
// for a negative, a Bernoulli(min(1, neg_ratio npos_j / nneg_j)) draw; for a class without one,
// the column's Bernoulli(empty_keep) draw. `kept` (C,) says which columns took part.
//
// Random draws come from Philox4x32-10 under key (seed_lo, seed_hi):
//   entry (row, j):  counter (row / 4, j, offset_lo, offset_hi), output word row % 4
//   column j:        counter (0xFFFFFFFF, j / 4, offset_lo, offset_hi), output word j % 4
// with row the global row (row_start + i), so a batch split over ranks draws what one process
// drawing the whole batch would. Rows are < 2^32, so row / 4 never reaches 0xFFFFFFFF and the
// two kinds of counters never meet. One Philox call serves four rows of one column, which is
// also the unit of work of both kernels.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>

#include "ops/philox.h"

#include <ATen/ATen.h>

#include "ops/common.h"

namespace fusedembed {

enum class SslReduction : int { kNone = 0, kMean = 1, kMeanClasses = 2, kSum = 3 };

constexpr uint32_t kSslColumnCounter = 0xFFFFFFFFu;

// Scalars of one call, as the kernels use them (float32 probabilities: see philox_uniform24).
struct SslParams {
  int64_t B = 0, C = 0, row_start = 0;
  uint32_t key0 = 0, key1 = 0, off0 = 0, off1 = 0;
  float pos_threshold = 0.7f;
  float neg_ratio = -1.0f;  // < 0: keep every negative of a class with a positive
  float empty_keep = 0.0f;
  bool weight_two_rows = false;  // class_weight is (2, C): row 0 if the class has a positive
  bool pos_weight_per_class = false;
  SslReduction reduction = SslReduction::kMean;
};

// What one class decides for the whole batch.
template <typename acc_t>
struct SslClass {
  acc_t weight;     // w_j, already chosen by whether the class has a positive
  acc_t eta;        // positive weight
  float keep_neg;   // keep probability of a negative of a class with a positive (1: all)
  bool has_pos;
  bool keep_column; // the column takes part at all
  bool needs_draw;  // entries need their own Philox draw (has_pos and keep_neg < 1)
};

template <typename acc_t>
struct SslElement {
  acc_t loss, grad;  // weighted, not yet scaled by 1/B
};

FUSEDEMBED_HD float ssl_neg_keep_prob(int32_t npos, int32_t nneg, float neg_ratio) {
  if (neg_ratio < 0.0f) return 1.0f;
  // Two correctly rounded float32 operations, in this order, in every implementation.
  const float p = neg_ratio * static_cast<float>(npos) / static_cast<float>(nneg);
  return p < 1.0f ? p : 1.0f;
}

FUSEDEMBED_HD bool ssl_column_draw_keeps(int64_t j, const SslParams& prm) {
  const Philox4x32 r = philox4x32_10(kSslColumnCounter, static_cast<uint32_t>(j >> 2), prm.off0, prm.off1,
                                     prm.key0, prm.key1);
  return philox_uniform24(r.v[j & 3]) < prm.empty_keep;
}

// The four draws of rows 4*row_group .. 4*row_group+3 of column j.
FUSEDEMBED_HD Philox4x32 ssl_entry_draws(int64_t row_group, int64_t j, const SslParams& prm) {
  return philox4x32_10(static_cast<uint32_t>(row_group), static_cast<uint32_t>(j), prm.off0, prm.off1, prm.key0,
                       prm.key1);
}

template <typename acc_t>
FUSEDEMBED_HD SslClass<acc_t> ssl_class(int64_t j, int32_t npos, int32_t nneg, const acc_t* class_weight,
                                        const acc_t* pos_weight, const SslParams& prm) {
  SslClass<acc_t> c;
  c.has_pos = npos > 0;
  c.weight = class_weight[prm.weight_two_rows && !c.has_pos ? prm.C + j : j];
  c.eta = pos_weight[prm.pos_weight_per_class ? j : 0];
  c.keep_neg = c.has_pos ? ssl_neg_keep_prob(npos, nneg, prm.neg_ratio) : 1.0f;
  c.keep_column = c.has_pos || ssl_column_draw_keeps(j, prm);
  c.needs_draw = c.has_pos && c.keep_neg < 1.0f;
  return c;
}

template <typename acc_t>
FUSEDEMBED_HD bool ssl_is_positive(acc_t y, float pos_threshold) {
  return static_cast<float>(y) >= pos_threshold;
}

template <typename acc_t>
FUSEDEMBED_HD bool ssl_target_valid(acc_t y) {
  return ((y >= acc_t(0)) & (y <= acc_t(1))) | (y == acc_t(-1));  // no branches: CPU loops vectorize
}

FUSEDEMBED_HD float ssl_exp(float x) { return ::expf(x); }
FUSEDEMBED_HD double ssl_exp(double x) { return ::exp(x); }
FUSEDEMBED_HD float ssl_log1p(float x) { return ::log1pf(x); }
FUSEDEMBED_HD double ssl_log1p(double x) { return ::log1p(x); }

// Loss and gradient of one entry. `draw` is its Philox word (used only when c.needs_draw).
// An invalid target (outside [0, 1] and not -1, NaN included) gives NaN in both, kept or not,
// so bad labels can never pass unnoticed on a device where checking them would cost a sync.
template <typename acc_t>
FUSEDEMBED_HD SslElement<acc_t> ssl_element(acc_t z, acc_t y, uint32_t draw, const SslClass<acc_t>& c,
                                            float pos_threshold) {
  if (!ssl_target_valid(y)) {
    const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
    return {nan, nan};
  }
  if (y == acc_t(-1)) return {acc_t(0), acc_t(0)};
  bool keep;
  if (c.has_pos)
    keep = ssl_is_positive(y, pos_threshold) || !c.needs_draw || philox_uniform24(draw) < c.keep_neg;
  else
    keep = c.keep_column;
  // Dropped entries and zero-weight columns are skipped, not multiplied by 0: a NaN or inf logit
  // there cannot leak into the loss.
  if (!keep || c.weight == acc_t(0)) return {acc_t(0), acc_t(0)};
  const acc_t a = c.eta * y, b = acc_t(1) - y;
  const acc_t e = ssl_exp(-(z < acc_t(0) ? -z : z));  // exp(-|z|), NaN for NaN
  const acc_t l = ssl_log1p(e);
  const acc_t inv = acc_t(1) / (acc_t(1) + e);
  const bool nonneg = z >= acc_t(0);
  const acc_t sig_pos = nonneg ? inv : e * inv;  // sigmoid(z)
  const acc_t sig_neg = nonneg ? e * inv : inv;  // sigmoid(-z)
  const acc_t sp_pos = (z > acc_t(0) ? z : acc_t(0)) + l;   // softplus(z)  = -log(1 - sigmoid(z))
  const acc_t sp_neg = (z < acc_t(0) ? -z : acc_t(0)) + l;  // softplus(-z) = -log sigmoid(z)
  // A term whose coefficient is 0 is left out, so an infinite logit that agrees with its target
  // costs 0 instead of 0 * inf = NaN.
  const acc_t ce = (a != acc_t(0) ? a * sp_neg : acc_t(0)) + (b != acc_t(0) ? b * sp_pos : acc_t(0));
  return {c.weight * ce, c.weight * (b * sig_pos - a * sig_neg)};
}

// Targets as the kernels read them: bool as uint8 (same bytes); float64 targets of non-float64
// logits as float32, and float16/bfloat16/float32 targets of float64 logits as float64, so a
// kernel sees (logits, targets) in {f32, f16, bf16} x {f32, f16, bf16, u8} or f64 x {f64, u8}.
inline at::Tensor ssl_normalize_targets(const at::Tensor& logits, const at::Tensor& targets) {
  at::Tensor t = targets.contiguous();
  if (t.scalar_type() == at::kBool) return t.view(at::kByte);
  if (t.scalar_type() == at::kByte) return t;
  if (logits.scalar_type() == at::kDouble) return t.to(at::kDouble);
  if (t.scalar_type() == at::kDouble) return t.to(at::kFloat);
  return t;
}

inline void ssl_check_targets(const at::Tensor& targets) {
  const auto st = targets.scalar_type();
  TORCH_CHECK(at::isFloatingType(st) || st == at::kByte || st == at::kBool,
              "sampled_sigmoid_loss: targets must be floating, uint8 or bool, got ", dtype_str(targets));
  TORCH_CHECK(targets.dim() == 2, "sampled_sigmoid_loss: targets must be a 2-d (B, C) tensor, got a ",
              targets.dim(), "-d tensor of shape ", shape_str(targets));
}

inline void ssl_check_pos_threshold(double pos_threshold) {
  TORCH_CHECK(pos_threshold > 0 && pos_threshold <= 1,
              "sampled_sigmoid_loss: pos_threshold must be in (0, 1], got ", pos_threshold);
}

inline SslReduction ssl_parse_reduction(std::string_view reduction) {
  if (reduction == "mean") return SslReduction::kMean;
  if (reduction == "mean_classes") return SslReduction::kMeanClasses;
  if (reduction == "sum") return SslReduction::kSum;
  if (reduction == "none") return SslReduction::kNone;
  TORCH_CHECK(false, "sampled_sigmoid_loss: reduction must be 'mean', 'mean_classes', 'sum' or 'none', got '",
              std::string(reduction), "'");
}

struct SslProblem {
  at::Tensor logits, targets, counts;    // contiguous; targets normalized
  at::Tensor class_weight, pos_weight;   // contiguous, in the accumulation type
  SslParams prm;
  bool compute_grad;
};

// Checks every argument of the main op; CPU tensors' values are checked too (on the GPU that
// would cost a host sync: there, bad values give NaN or follow the formula, as documented).
inline SslProblem ssl_check(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& counts,
                            const at::Tensor& class_weight, const at::Tensor& pos_weight, double pos_threshold,
                            std::optional<double> neg_ratio, double empty_keep, int64_t seed, int64_t offset,
                            int64_t row_start, std::string_view reduction, bool compute_grad) {
  TORCH_CHECK(logits.dim() == 2, "sampled_sigmoid_loss: logits must be a 2-d (B, C) tensor, got a ", logits.dim(),
              "-d tensor of shape ", shape_str(logits));
  const auto st = logits.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16 || st == at::kDouble,
              "sampled_sigmoid_loss: logits must be float32, float16, bfloat16 or float64, got ", dtype_str(logits));
  ssl_check_targets(targets);
  TORCH_CHECK(targets.sizes() == logits.sizes(), "sampled_sigmoid_loss: targets must have the shape of logits ",
              shape_str(logits), ", got ", shape_str(targets));
  const int64_t B = logits.size(0), C = logits.size(1);
  TORCH_CHECK(B > 0, "sampled_sigmoid_loss: empty batch: logits has shape ", shape_str(logits));
  const auto dev = logits.device();
  TORCH_CHECK(targets.device() == dev, "sampled_sigmoid_loss: targets is on ", targets.device(), " but logits is on ",
              dev);
  TORCH_CHECK(counts.device() == dev, "sampled_sigmoid_loss: counts is on ", counts.device(), " but logits is on ",
              dev);
  TORCH_CHECK(class_weight.device() == dev, "sampled_sigmoid_loss: class_weight is on ", class_weight.device(),
              " but logits is on ", dev);
  TORCH_CHECK(pos_weight.device() == dev, "sampled_sigmoid_loss: pos_weight is on ", pos_weight.device(),
              " but logits is on ", dev);
  TORCH_CHECK(counts.scalar_type() == at::kInt && counts.dim() == 2 && counts.size(0) == 2 && counts.size(1) == C,
              "sampled_sigmoid_loss: counts must be an int32 tensor of shape (2, C) = (2, ", C, "), got ",
              dtype_str(counts), " ", shape_str(counts));
  TORCH_CHECK(at::isFloatingType(class_weight.scalar_type()),
              "sampled_sigmoid_loss: class_weight must be a floating tensor, got ", dtype_str(class_weight));
  const bool two_rows = class_weight.dim() == 2 && class_weight.size(0) == 2 && class_weight.size(1) == C;
  TORCH_CHECK(two_rows || (class_weight.dim() == 1 && class_weight.size(0) == C),
              "sampled_sigmoid_loss: class_weight must have shape (C,) = (", C, ",) or (2, C) = (2, ", C,
              "), got ", shape_str(class_weight));
  TORCH_CHECK(at::isFloatingType(pos_weight.scalar_type()),
              "sampled_sigmoid_loss: pos_weight must be a floating tensor, got ", dtype_str(pos_weight));
  const bool pw_per_class = pos_weight.dim() == 1 && pos_weight.size(0) == C && C != 1;
  TORCH_CHECK(pw_per_class || (pos_weight.numel() == 1 && pos_weight.dim() <= 1),
              "sampled_sigmoid_loss: pos_weight must be a float, a 1-element tensor or have shape (C,) = (", C,
              ",), got shape ", shape_str(pos_weight));
  ssl_check_pos_threshold(pos_threshold);
  if (neg_ratio.has_value())
    TORCH_CHECK(std::isfinite(*neg_ratio) && *neg_ratio > 0,
                "sampled_sigmoid_loss: neg_ratio must be finite and > 0 (or None to keep every negative), got ",
                *neg_ratio);
  TORCH_CHECK(empty_keep >= 0 && empty_keep <= 1,
              "sampled_sigmoid_loss: empty_keep must be a probability in [0, 1], got ", empty_keep);
  TORCH_CHECK(seed >= 0, "sampled_sigmoid_loss: seed must be in [0, 2^63), got ", seed);
  TORCH_CHECK(offset >= 0, "sampled_sigmoid_loss: offset must be in [0, 2^63), got ", offset);
  TORCH_CHECK(row_start >= 0 && row_start + B <= (int64_t(1) << 32),
              "sampled_sigmoid_loss: row_start must be >= 0 with row_start + B <= 2^32, got row_start = ", row_start,
              ", B = ", B);
  const SslReduction red = ssl_parse_reduction(reduction);

  const auto acc = acc_type_for(st);
  SslProblem prob;
  prob.logits = logits.contiguous();
  prob.targets = ssl_normalize_targets(logits, targets);
  prob.counts = counts.contiguous();
  prob.class_weight = class_weight.to(acc).contiguous();
  prob.pos_weight = pos_weight.to(acc).contiguous();
  prob.compute_grad = compute_grad;
  if (dev.is_cpu()) {
    check_finite_nonnegative("sampled_sigmoid_loss", "class_weight", prob.class_weight);
    check_finite_nonnegative("sampled_sigmoid_loss", "pos_weight", prob.pos_weight);
    TORCH_CHECK(C == 0 || prob.counts.min().item<int>() >= 0, "sampled_sigmoid_loss: counts must be >= 0, got ",
                prob.counts.min().item<int>(), " (min of counts)");
  }
  SslParams& p = prob.prm;
  p.B = B;
  p.C = C;
  p.row_start = row_start;
  p.key0 = static_cast<uint32_t>(static_cast<uint64_t>(seed));
  p.key1 = static_cast<uint32_t>(static_cast<uint64_t>(seed) >> 32);
  p.off0 = static_cast<uint32_t>(static_cast<uint64_t>(offset));
  p.off1 = static_cast<uint32_t>(static_cast<uint64_t>(offset) >> 32);
  p.pos_threshold = static_cast<float>(pos_threshold);
  p.neg_ratio = neg_ratio.has_value() ? static_cast<float>(*neg_ratio) : -1.0f;
  p.empty_keep = static_cast<float>(empty_keep);
  p.weight_two_rows = two_rows;
  p.pos_weight_per_class = pw_per_class;
  p.reduction = red;
  return prob;
}

// Calls f(SslTag<logits type>{}, SslTag<targets type>{}) for the pairs ssl_normalize_targets
// leaves, so each kernel is instantiated 14 times rather than for every pair of dtypes.
template <typename T>
struct SslTag {
  using type = T;
};

template <typename F>
void ssl_dispatch(at::ScalarType logits_type, at::ScalarType targets_type, F&& f) {
  auto with_targets = [&](auto ztag) {
    using scalar_t = typename decltype(ztag)::type;
    switch (targets_type) {
      case at::kByte: return f(ztag, SslTag<uint8_t>{});
      case at::kFloat:
        if constexpr (!std::is_same_v<scalar_t, double>) return f(ztag, SslTag<float>{});
        break;
      case at::kHalf:
        if constexpr (!std::is_same_v<scalar_t, double>) return f(ztag, SslTag<at::Half>{});
        break;
      case at::kBFloat16:
        if constexpr (!std::is_same_v<scalar_t, double>) return f(ztag, SslTag<at::BFloat16>{});
        break;
      case at::kDouble:
        if constexpr (std::is_same_v<scalar_t, double>) return f(ztag, SslTag<double>{});
        break;
      default: break;
    }
    TORCH_CHECK(false, "sampled_sigmoid_loss: internal error: no kernel for logits ", logits_type, " and targets ",
                targets_type);
  };
  switch (logits_type) {
    case at::kFloat: return with_targets(SslTag<float>{});
    case at::kHalf: return with_targets(SslTag<at::Half>{});
    case at::kBFloat16: return with_targets(SslTag<at::BFloat16>{});
    case at::kDouble: return with_targets(SslTag<double>{});
    default: TORCH_CHECK(false, "sampled_sigmoid_loss: internal error: no kernel for logits ", logits_type);
  }
}

// Loss factor of the reduction: the gradient carries it too, so backward only multiplies by
// grad_output.
inline double ssl_scale(const SslParams& p) {
  switch (p.reduction) {
    case SslReduction::kMean: return 1.0 / static_cast<double>(p.B);
    case SslReduction::kMeanClasses: return 1.0 / (static_cast<double>(p.B) * static_cast<double>(p.C));
    default: return 1.0;
  }
}

// Outputs of the main op, allocated alike on every device.
struct SslOutputs {
  at::Tensor loss, grad, kept;
};

inline SslOutputs ssl_allocate(const SslProblem& prob) {
  const auto& z = prob.logits;
  SslOutputs out;
  // A reduced loss is float32 (float64 for float64 logits) whatever the logits' dtype: a float16 sum
  // overflows at 65504. The "none" terms and the gradient keep the logits' dtype.
  out.loss = prob.prm.reduction == SslReduction::kNone
                 ? at::empty({prob.prm.B, prob.prm.C}, z.options())
                 : at::empty({}, z.options().dtype(acc_type_for(z.scalar_type())));
  out.grad = prob.compute_grad ? at::empty({prob.prm.B, prob.prm.C}, z.options()) : at::empty({0}, z.options());
  out.kept = at::empty({prob.prm.C}, z.options().dtype(at::kBool));
  return out;
}

// The host side of the counts op on every device: check, allocate, and call launch(t, pos_threshold,
// counts) with t the contiguous targets (bool viewed as uint8) when there is an entry to count.
template <typename Launch>
at::Tensor ssl_counts(const at::Tensor& targets, double pos_threshold, Launch&& launch) {
  ssl_check_targets(targets);
  ssl_check_pos_threshold(pos_threshold);
  at::Tensor t = targets.contiguous();
  if (t.scalar_type() == at::kBool) t = t.view(at::kByte);
  at::Tensor counts = at::zeros({2, t.size(1)}, targets.options().dtype(at::kInt));
  if (t.numel() > 0) launch(t, static_cast<float>(pos_threshold), counts);
  return counts;
}

// The host side of the main op on every device: check, allocate, and call
// launch(SslTag<logits type>, SslTag<targets type>, prob, out) when there is a column.
template <typename Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor> ssl_forward(
    const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& counts, const at::Tensor& class_weight,
    const at::Tensor& pos_weight, double pos_threshold, std::optional<double> neg_ratio, double empty_keep,
    int64_t seed, int64_t offset, int64_t row_start, std::string_view reduction, bool compute_grad, Launch&& launch) {
  SslProblem prob = ssl_check(logits, targets, counts, class_weight, pos_weight, pos_threshold, neg_ratio, empty_keep,
                              seed, offset, row_start, reduction, compute_grad);
  SslOutputs out = ssl_allocate(prob);
  if (prob.prm.C == 0) {
    if (prob.prm.reduction != SslReduction::kNone) out.loss.zero_();
  } else {
    ssl_dispatch(prob.logits.scalar_type(), prob.targets.scalar_type(),
                 [&](auto ztag, auto ytag) { launch(ztag, ytag, prob, out); });
  }
  return {out.loss, out.grad, out.kept};
}

// Arguments of sampled_sigmoid_loss_scale_grad_: the gradient the main op wrote and the scalar
// grad_output of the loss, both on one device. Returns grad_output in grad's accumulation type.
inline at::Tensor ssl_check_scale_grad(const at::Tensor& grad, const at::Tensor& grad_loss) {
  const auto st = grad.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16 || st == at::kDouble,
              "sampled_sigmoid_loss_scale_grad_: grad must be float32, float16, bfloat16 or float64, got ",
              dtype_str(grad));
  TORCH_CHECK(grad.is_contiguous(), "sampled_sigmoid_loss_scale_grad_: grad must be contiguous");
  TORCH_CHECK(grad_loss.numel() == 1 && at::isFloatingType(grad_loss.scalar_type()),
              "sampled_sigmoid_loss_scale_grad_: grad_loss must be a floating tensor of 1 element, got ",
              dtype_str(grad_loss), " ", shape_str(grad_loss));
  TORCH_CHECK(grad_loss.device() == grad.device(), "sampled_sigmoid_loss_scale_grad_: grad_loss is on ",
              grad_loss.device(), " but grad is on ", grad.device());
  return grad_loss.reshape({}).to(acc_type_for(st));
}

}  // namespace fusedembed
