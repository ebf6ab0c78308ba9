// mrf_viterbi / crf_viterbi on the CPU: at::parallel_for over sentences; each sentence runs the
// forward pass with int32 backpointers in a buffer reused by its thread, then backtraces.
#include <ATen/Dispatch_v2.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "ops/mrf_viterbi.h"

namespace fusedembed {
namespace {

// The decoding type: double for double scores, float otherwise.
template <typename scalar_t>
using viterbi_acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// Sentences per parallel task: enough work per task to amortize scheduling.
int64_t viterbi_grain(int64_t work_per_sentence) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_sentence));
}

template <typename acc_t, typename scalar_t>
bool rows_usable(const scalar_t* x, int64_t rows, int64_t cols, int64_t stride) {
  for (int64_t j = 0; j < rows; ++j)
    for (int64_t t = 0; t < cols; ++t)
      if (!viterbi_usable(static_cast<acc_t>(x[j * stride + t]))) return false;
  return true;
}

// Lowest index of the maximum of d[0..n): the tie rule for the last state.
template <typename acc_t>
int64_t first_argmax(const acc_t* d, int64_t n) {
  int64_t best = 0;
  for (int64_t t = 1; t < n; ++t)
    if (d[t] > d[best]) best = t;
  return best;
}

void backtrace(const int32_t* bp, int64_t M, int64_t L, int64_t last, int64_t* out) {
  int64_t cur = last;
  for (int64_t j = L - 1; j >= 1; --j) {
    out[j] = cur;
    cur = bp[j * M + cur];
  }
  out[0] = cur;
}

template <typename scalar_t>
void mrf_cpu_impl(const MrfProblem& p, int64_t* path, viterbi_acc_t<scalar_t>* score) {
  using acc_t = viterbi_acc_t<scalar_t>;
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  constexpr acc_t kNaN = std::numeric_limits<acc_t>::quiet_NaN();
  const scalar_t* unary = p.scores.const_data_ptr<scalar_t>();
  const acc_t* beta = p.beta.const_data_ptr<acc_t>();
  const int64_t beta_stride = p.beta.numel() == 1 ? 0 : 1;
  const int64_t* lengths = p.lengths.defined() ? p.lengths.const_data_ptr<int64_t>() : nullptr;
  const int64_t* regions = p.num_regions.defined() ? p.num_regions.const_data_ptr<int64_t>() : nullptr;
  const int64_t N = p.N, M = p.M;
  at::parallel_for(0, p.B, viterbi_grain(N * M), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> d(M);
    std::vector<int32_t> bp;
    for (int64_t b = begin; b < end; ++b) {
      const int64_t L = lengths ? lengths[b] : N, R = regions ? regions[b] : M;
      const acc_t be = beta[b * beta_stride];
      const scalar_t* u = unary + b * N * M;
      int64_t* out = path + b * N;
      std::fill(out, out + N, int64_t(-1));
      if (!viterbi_usable(be) || !rows_usable<acc_t>(u, L, R, M)) {
        score[b] = kNaN;
        continue;
      }
      if (L == 0) {
        score[b] = acc_t(0);
        continue;
      }
      if (static_cast<int64_t>(bp.size()) < L * M) bp.resize(L * M);
      for (int64_t t = 0; t < R; ++t) d[t] = static_cast<acc_t>(u[t]);
      for (int64_t j = 1; j < L; ++j) {
        // Best and second best of the previous step, lowest index first among equals.
        acc_t v1 = d[0], v2 = -kInf;
        int32_t i1 = 0, i2 = -1;
        for (int64_t t = 1; t < R; ++t) {
          if (d[t] > v1) {
            v2 = v1, i2 = i1, v1 = d[t], i1 = static_cast<int32_t>(t);
          } else if (i2 < 0 || d[t] > v2) {
            v2 = d[t], i2 = static_cast<int32_t>(t);
          }
        }
        const scalar_t* __restrict__ uj = u + j * M;
        int32_t* __restrict__ bj = bp.data() + j * M;
        acc_t* __restrict__ dd = d.data();
        // Selects, not branches ("stay" is unpredictable on real scores); the integer mask lets
        // GCC vectorize the index select under its default -ftrapping-math.
        for (int32_t t = 0; t < static_cast<int32_t>(R); ++t) {
          const acc_t sw = t == i1 ? v2 : v1;  // best previous state other than t
          const int32_t src = t == i1 ? i2 : i1;
          const acc_t stay_val = dd[t] + be;
          const int32_t stay = -static_cast<int32_t>(stay_val >= sw);
          dd[t] = static_cast<acc_t>(uj[t]) + (stay_val >= sw ? stay_val : sw);
          bj[t] = (stay & t) | (~stay & src);
        }
      }
      const int64_t last = first_argmax(d.data(), R);
      score[b] = d[last];
      backtrace(bp.data(), M, L, last, out);
    }
  });
}

template <typename scalar_t>
void crf_cpu_impl(const CrfProblem& p, int64_t* path, viterbi_acc_t<scalar_t>* score) {
  using acc_t = viterbi_acc_t<scalar_t>;
  constexpr acc_t kNaN = std::numeric_limits<acc_t>::quiet_NaN();
  const scalar_t* em = p.scores.const_data_ptr<scalar_t>();
  const acc_t* trans = p.transitions.const_data_ptr<acc_t>();
  const acc_t* start = p.start.defined() ? p.start.const_data_ptr<acc_t>() : nullptr;
  const acc_t* stop = p.end.defined() ? p.end.const_data_ptr<acc_t>() : nullptr;
  const int64_t* lengths = p.lengths.defined() ? p.lengths.const_data_ptr<int64_t>() : nullptr;
  const int64_t N = p.N, M = p.M;
  // Shared parameters are checked once; per-sentence transitions with their sentence.
  const bool shared_ok = (p.batched || rows_usable<acc_t>(trans, M, M, M)) &&
                         (!start || rows_usable<acc_t>(start, 1, M, M)) && (!stop || rows_usable<acc_t>(stop, 1, M, M));
  at::parallel_for(0, p.B, viterbi_grain(N * M * M), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> d(M), best(M);
    std::vector<int32_t> arg(M), bp;
    for (int64_t b = begin; b < end; ++b) {
      const int64_t L = lengths ? lengths[b] : N;
      const scalar_t* e = em + b * N * M;
      const acc_t* T = p.batched ? trans + b * M * M : trans;
      int64_t* out = path + b * N;
      std::fill(out, out + N, int64_t(-1));
      if (!shared_ok || (p.batched && !rows_usable<acc_t>(T, M, M, M)) || !rows_usable<acc_t>(e, L, M, M)) {
        score[b] = kNaN;
        continue;
      }
      if (L == 0) {
        score[b] = acc_t(0);
        continue;
      }
      if (static_cast<int64_t>(bp.size()) < L * M) bp.resize(L * M);
      for (int64_t t = 0; t < M; ++t) d[t] = start ? static_cast<acc_t>(e[t]) + start[t] : static_cast<acc_t>(e[t]);
      for (int64_t j = 1; j < L; ++j) {
        // Staying is the incumbent, so only a strictly better t' replaces it, and the first
        // (lowest) t' reaching the maximum keeps its place: the tie rule.
        for (int64_t t = 0; t < M; ++t) {
          best[t] = d[t] + T[t * M + t];
          arg[t] = static_cast<int32_t>(t);
        }
        acc_t* __restrict__ bst = best.data();
        int32_t* __restrict__ ag = arg.data();
        for (int32_t tp = 0; tp < static_cast<int32_t>(M); ++tp) {
          const acc_t dv = d[tp];
          const acc_t* __restrict__ row = T + tp * M;
          for (int64_t t = 0; t < M; ++t) {  // selects with an integer mask: vectorizes (see mrf)
            const acc_t v = dv + row[t];
            const int32_t gt = -static_cast<int32_t>(v > bst[t]);
            bst[t] = v > bst[t] ? v : bst[t];
            ag[t] = (gt & tp) | (~gt & ag[t]);
          }
        }
        const scalar_t* ej = e + j * M;
        int32_t* bj = bp.data() + j * M;
        for (int64_t t = 0; t < M; ++t) {
          d[t] = static_cast<acc_t>(ej[t]) + best[t];
          bj[t] = arg[t];
        }
      }
      if (stop)
        for (int64_t t = 0; t < M; ++t) d[t] = d[t] + stop[t];
      const int64_t last = first_argmax(d.data(), M);
      score[b] = d[last];
      backtrace(bp.data(), M, L, last, out);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> mrf_viterbi_cpu(const at::Tensor& unary, const at::Tensor& beta,
                                                   const std::optional<at::Tensor>& lengths,
                                                   const std::optional<at::Tensor>& num_regions) {
  return mrf_forward(unary, beta, lengths, num_regions, [](const MrfProblem& prob, at::Tensor& path, at::Tensor& score) {
    AT_DISPATCH_V2(prob.scores.scalar_type(), "mrf_viterbi_cpu", AT_WRAP([&] {
      mrf_cpu_impl<scalar_t>(prob, path.mutable_data_ptr<int64_t>(),
                             score.mutable_data_ptr<viterbi_acc_t<scalar_t>>());
    }), at::kFloat, at::kHalf, at::kBFloat16, at::kDouble);
  });
}

std::tuple<at::Tensor, at::Tensor> crf_viterbi_cpu(const at::Tensor& emissions, const at::Tensor& transitions,
                                                   const std::optional<at::Tensor>& lengths,
                                                   const std::optional<at::Tensor>& start,
                                                   const std::optional<at::Tensor>& end) {
  return crf_forward(emissions, transitions, lengths, start, end,
                     [](const CrfProblem& prob, at::Tensor& path, at::Tensor& score) {
    AT_DISPATCH_V2(prob.scores.scalar_type(), "crf_viterbi_cpu", AT_WRAP([&] {
      crf_cpu_impl<scalar_t>(prob, path.mutable_data_ptr<int64_t>(),
                             score.mutable_data_ptr<viterbi_acc_t<scalar_t>>());
    }), at::kFloat, at::kHalf, at::kBFloat16, at::kDouble);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedembed, CPU, m) {
  m.impl("mrf_viterbi", &mrf_viterbi_cpu);
  m.impl("crf_viterbi", &crf_viterbi_cpu);
}

}  // namespace fusedembed
