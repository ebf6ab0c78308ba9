// mrf_viterbi / crf_viterbi: declarations and input checks shared by the CPU and CUDA kernels.
//
// Both decode a chain of N positions over M states, in float64 for float64 scores and in float32
// for float32/float16/bfloat16 ones (the score has that type):
//   mrf (Potts):  d_0(t) = u[0,t];  d_j(t) = u[j,t] + max(d_{j-1}(t) + beta, max_{t'!=t} d_{j-1}(t'))
//                 O(M) per step from the best and second-best previous states (exact for any beta).
//   crf:          d_0(t) = e[0,t] + start[t];  d_j(t) = e[j,t] + max_{t'} (d_{j-1}(t') + T[t',t])
//                 score = max_t d_{L-1}(t) + end[t].
// Ties, identical on every device and in the reference: a state keeps its own previous state when
// that is among the best (t' = t), else takes the lowest best index; the last state is the lowest
// best index. Every value is a plain sum in the decoding type, in the same order everywhere, so the
// paths agree bit for bit.
//
// Values: -inf marks a forbidden choice (a word-region pair, a transition). NaN or +inf in what a
// sentence uses (its first L rows, its first R regions, beta, transitions, start, end) makes that
// sentence's score NaN and its path all -1; other sentences are unaffected. Checking instead would
// cost a full pass and, on the GPU, a host sync. Out-of-range lengths / num_regions raise on the CPU;
// on the GPU (where checking them costs a host sync) they give that sentence the same NaN / -1 row.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <optional>

#include "ops/common.h"

namespace fusedembed {

// States are stored as uint16 (CUDA backpointers and top-2 indices).
constexpr int64_t kViterbiMaxStates = 65535;

// False for NaN and +inf; true for finite values and -inf (a forbidden choice).
template <typename T>
inline bool viterbi_usable(T v) { return v < std::numeric_limits<T>::infinity(); }

struct ViterbiProblem {
  at::Tensor scores;       // unary / emissions, contiguous (B, N, M)
  at::Tensor lengths;      // int64 (B,), contiguous; undefined when every sentence has N positions
  int64_t B = 0, N = 0, M = 0;
};

struct MrfProblem : ViterbiProblem {
  at::Tensor beta;         // decoding type, contiguous, 1 or B elements
  at::Tensor num_regions;  // int64 (B,), contiguous; undefined when every image has M regions
};

struct CrfProblem : ViterbiProblem {
  at::Tensor transitions;  // decoding type, contiguous (M, M) or (B, M, M)
  bool batched = false;    // transitions per sentence
  at::Tensor start, end;   // decoding type, contiguous (M,), or undefined
};

inline void viterbi_check_scores(const char* op, const char* name, const at::Tensor& x, ViterbiProblem& prob) {
  TORCH_CHECK(x.dim() == 3, op, ": ", name, " must be (B, N, M), got a ", x.dim(), "-d tensor of shape ",
              shape_str(x));
  const auto st = x.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16 || st == at::kDouble, op, ": ", name,
              " must be float32, float16, bfloat16 or float64, got ", dtype_str(x));
  TORCH_CHECK(x.size(2) >= 1 && x.size(2) <= kViterbiMaxStates, op, ": ", name, " must have 1 to ",
              kViterbiMaxStates, " states (M), got shape ", shape_str(x));
  prob.scores = x.contiguous();
  prob.B = x.size(0);
  prob.N = x.size(1);
  prob.M = x.size(2);
}

// An optional (B,) integer tensor on x's device, returned as contiguous int64. Its values are
// checked against [lo, hi] on the CPU only (see the header comment).
inline at::Tensor viterbi_check_counts(const char* op, const char* name, const char* x_name,
                                       const std::optional<at::Tensor>& t, const ViterbiProblem& prob,
                                       int64_t lo, int64_t hi, const char* range) {
  if (!t.has_value()) return at::Tensor();
  const at::Tensor& v = *t;
  TORCH_CHECK(!at::isFloatingType(v.scalar_type()) && !at::isComplexType(v.scalar_type()) &&
                  v.scalar_type() != at::kBool,
              op, ": ", name, " must be an integer tensor, got ", dtype_str(v));
  TORCH_CHECK(v.dim() == 1 && v.size(0) == prob.B, op, ": ", name, " must have shape (B,) = (", prob.B,
              ",), got shape ", shape_str(v));
  TORCH_CHECK(v.device() == prob.scores.device(), op, ": ", name, " is on ", v.device(), " but ", x_name,
              " is on ", prob.scores.device());
  at::Tensor out = v.to(at::kLong).contiguous();
  if (out.device().is_cpu() && prob.B > 0) {
    const int64_t mn = out.min().item<int64_t>(), mx = out.max().item<int64_t>();
    TORCH_CHECK(mn >= lo && mx <= hi, op, ": ", name, " must be in ", range, " = [", lo, ", ", hi, "], got ",
                mn < lo ? mn : mx);
  }
  return out;
}

inline MrfProblem mrf_check(const at::Tensor& unary, const at::Tensor& beta, const std::optional<at::Tensor>& lengths,
                            const std::optional<at::Tensor>& num_regions) {
  MrfProblem prob;
  viterbi_check_scores("mrf_viterbi", "unary", unary, prob);
  TORCH_CHECK(at::isFloatingType(beta.scalar_type()), "mrf_viterbi: beta must be a floating tensor, got ",
              dtype_str(beta));
  TORCH_CHECK((beta.numel() == 1 && beta.dim() <= 1) || (beta.dim() == 1 && beta.size(0) == prob.B),
              "mrf_viterbi: beta must be a float, a 1-element tensor or have shape (B,) = (", prob.B,
              ",), got shape ", shape_str(beta));
  TORCH_CHECK(beta.device() == unary.device(), "mrf_viterbi: beta is on ", beta.device(), " but unary is on ",
              unary.device());
  prob.beta = beta.to(acc_type_for(unary.scalar_type())).contiguous();
  prob.lengths = viterbi_check_counts("mrf_viterbi", "lengths", "unary", lengths, prob, 0, prob.N, "[0, N]");
  prob.num_regions =
      viterbi_check_counts("mrf_viterbi", "num_regions", "unary", num_regions, prob, 1, prob.M, "[1, M]");
  return prob;
}

inline at::Tensor crf_check_vector(const std::optional<at::Tensor>& v, const char* name, const CrfProblem& prob) {
  if (!v.has_value()) return at::Tensor();
  TORCH_CHECK(at::isFloatingType(v->scalar_type()), "crf_viterbi: ", name, " must be a floating tensor, got ",
              dtype_str(*v));
  TORCH_CHECK(v->dim() == 1 && v->size(0) == prob.M, "crf_viterbi: ", name, " must have shape (M,) = (", prob.M,
              ",), got shape ", shape_str(*v));
  TORCH_CHECK(v->device() == prob.scores.device(), "crf_viterbi: ", name, " is on ", v->device(),
              " but emissions is on ", prob.scores.device());
  return v->to(acc_type_for(prob.scores.scalar_type())).contiguous();
}

inline CrfProblem crf_check(const at::Tensor& emissions, const at::Tensor& transitions,
                            const std::optional<at::Tensor>& lengths, const std::optional<at::Tensor>& start,
                            const std::optional<at::Tensor>& end) {
  CrfProblem prob;
  viterbi_check_scores("crf_viterbi", "emissions", emissions, prob);
  const int64_t M = prob.M;
  TORCH_CHECK(at::isFloatingType(transitions.scalar_type()), "crf_viterbi: transitions must be a floating tensor, got ",
              dtype_str(transitions));
  const bool shared = transitions.dim() == 2 && transitions.size(0) == M && transitions.size(1) == M;
  const bool batched = transitions.dim() == 3 && transitions.size(0) == prob.B && transitions.size(1) == M &&
                       transitions.size(2) == M;
  TORCH_CHECK(shared || batched, "crf_viterbi: transitions must be (M, M) = (", M, ", ", M, ") or (B, M, M) = (",
              prob.B, ", ", M, ", ", M, "), got shape ", shape_str(transitions));
  TORCH_CHECK(transitions.device() == emissions.device(), "crf_viterbi: transitions is on ", transitions.device(),
              " but emissions is on ", emissions.device());
  prob.transitions = transitions.to(acc_type_for(emissions.scalar_type())).contiguous();
  prob.batched = batched && !shared;
  prob.start = crf_check_vector(start, "start", prob);
  prob.end = crf_check_vector(end, "end", prob);
  prob.lengths = viterbi_check_counts("crf_viterbi", "lengths", "emissions", lengths, prob, 0, prob.N, "[0, N]");
  return prob;
}

// Outputs: path int64 (B, N) (-1 past each length), score (B,) in the decoding type.
inline std::tuple<at::Tensor, at::Tensor> viterbi_outputs(const ViterbiProblem& prob) {
  auto opts = prob.scores.options();
  return {at::empty({prob.B, prob.N}, opts.dtype(at::kLong)),
          at::empty({prob.B}, opts.dtype(acc_type_for(prob.scores.scalar_type())))};
}

// The host side of both ops on every device: check, allocate, and call the device's
// launch(prob, path, score) when there is a sentence.
template <typename Launch>
std::tuple<at::Tensor, at::Tensor> mrf_forward(const at::Tensor& unary, const at::Tensor& beta,
                                               const std::optional<at::Tensor>& lengths,
                                               const std::optional<at::Tensor>& num_regions, Launch&& launch) {
  MrfProblem prob = mrf_check(unary, beta, lengths, num_regions);
  auto [path, score] = viterbi_outputs(prob);
  if (prob.B > 0) launch(prob, path, score);
  return {path, score};
}

template <typename Launch>
std::tuple<at::Tensor, at::Tensor> crf_forward(const at::Tensor& emissions, const at::Tensor& transitions,
                                               const std::optional<at::Tensor>& lengths,
                                               const std::optional<at::Tensor>& start,
                                               const std::optional<at::Tensor>& end, Launch&& launch) {
  CrfProblem prob = crf_check(emissions, transitions, lengths, start, end);
  auto [path, score] = viterbi_outputs(prob);
  if (prob.B > 0) launch(prob, path, score);
  return {path, score};
}

}  // namespace fusedembed
