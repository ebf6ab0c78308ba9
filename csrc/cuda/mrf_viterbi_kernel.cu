// mrf_viterbi / crf_viterbi on CUDA: a group of W lanes (a warp, or a fraction of one when there
// are few states) decodes one sentence: forward pass, backpointers and backtrace in one kernel,
// one launch per batch, no host sync.
//
// Lane l of a group owns states t = l, l + W, l + 2W, ...
// * mrf: the step needs only the best and second-best previous states, found by a warp-shuffle
//   butterfly; each state then either stays or comes from the best other state, so a step's
//   backpointers are one "stayed" bit per state (a ballot word per W states) plus the two indices.
// * crf: every lane reads all previous scores from a double buffer and its column of the
//   transition matrix, kept in shared memory when it fits; backpointers are uint8 (uint16 past
//   255 states).
// Backpointers, scores and transitions go to shared memory when they fit the per-block budget
// (with fewer groups per block if needed), otherwise to a global scratch buffer allocated here.
#include <ATen/Dispatch_v2.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <type_traits>
#include <vector>

#include "ops/mrf_viterbi.h"

namespace fusedembed {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kBlockThreads = 128;
constexpr int64_t kSharedBudget = 48 * 1024;  // dynamic shared memory without an opt-in
constexpr int kNoState = 0x7fffffff;          // an empty top-2 slot: loses every tie

// The decoding type: double for double scores, float otherwise.
template <typename scalar_t>
using vacc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

template <typename T>
__device__ __forceinline__ T inf_v() { return T(INFINITY); }
template <typename T>
__device__ __forceinline__ bool usable(T v) { return v < inf_v<T>(); }  // false for NaN and +inf

// The tie rule as an order: higher value first, then lower index.
template <typename T>
__device__ __forceinline__ bool better(T a, int ia, T b, int ib) { return a > b || (a == b && ia < ib); }

template <typename T>
struct Top2 {
  T v1, v2;
  int i1, i2;
};

template <typename T>
__device__ __forceinline__ void top2_push(Top2<T>& s, T v, int i) {
  if (better(v, i, s.v1, s.i1)) {
    s.v2 = s.v1, s.i2 = s.i1, s.v1 = v, s.i1 = i;
  } else if (better(v, i, s.v2, s.i2)) {
    s.v2 = v, s.i2 = i;
  }
}

// Top two of the group's states. Lanes hold disjoint states and `better` is a strict total order,
// so both partners of every exchange compute the same merge.
template <int W, typename T>
__device__ __forceinline__ Top2<T> group_top2(Top2<T> s) {
#pragma unroll
  for (int off = W / 2; off > 0; off >>= 1) {
    const T ov1 = __shfl_xor_sync(kFullMask, s.v1, off, W), ov2 = __shfl_xor_sync(kFullMask, s.v2, off, W);
    const int oi1 = __shfl_xor_sync(kFullMask, s.i1, off, W), oi2 = __shfl_xor_sync(kFullMask, s.i2, off, W);
    if (better(ov1, oi1, s.v1, s.i1)) {
      if (!better(s.v1, s.i1, ov2, oi2)) s.v1 = ov2, s.i1 = oi2;  // s.v1 becomes the second
      s.v2 = s.v1, s.i2 = s.i1, s.v1 = ov1, s.i1 = oi1;
    } else if (better(ov1, oi1, s.v2, s.i2)) {
      s.v2 = ov1, s.i2 = oi1;
    }
  }
  return s;
}

template <int W, typename T>
__device__ __forceinline__ void group_best(T& v, int& i) {
#pragma unroll
  for (int off = W / 2; off > 0; off >>= 1) {
    const T ov = __shfl_xor_sync(kFullMask, v, off, W);
    const int oi = __shfl_xor_sync(kFullMask, i, off, W);
    if (better(ov, oi, v, i)) v = ov, i = oi;
  }
}

// This group's W bits of a warp-wide ballot.
template <int W>
__device__ __forceinline__ uint32_t group_bits(uint32_t ballot) {
  if constexpr (W == 32) {
    return ballot;
  } else {
    return (ballot >> ((threadIdx.x & 31) / W * W)) & ((1u << W) - 1u);
  }
}

template <int W>
__device__ __forceinline__ bool group_any(bool v) {
  return group_bits<W>(__ballot_sync(kFullMask, v)) != 0;
}

// Groups sharing a warp run the same number of steps (the longest of them) so that every lane
// takes part in every shuffle; the shorter ones idle through the extra steps.
template <int W>
__device__ __forceinline__ int warp_steps(int L) {
  if constexpr (W < 32) {
#pragma unroll
    for (int off = 16; off >= W; off >>= 1) L = max(L, __shfl_xor_sync(kFullMask, L, off));
  }
  return L;
}

// Where a group keeps its scratch: shared memory (per block, then per group) or global memory.
struct Layout {
  int64_t block_shared = 0;   // bytes of shared memory for the whole block, at its start
  int64_t group_shared = 0;   // bytes of shared memory per group, after the block part
  int64_t group_global = 0;   // bytes of global scratch per group
  int groups = 1;             // groups (sentences) per block
};

// ------------------------------------------------------------------------------------ mrf

// Per group: K == 0 keeps the scores in scratch (M values); then per step j, `chunks` ballot
// words of "stayed" bits and one word packing the two best previous states (i1 | i2 << 16).
template <typename scalar_t>
struct MrfArgs {
  using acc_t = vacc_t<scalar_t>;
  const scalar_t* unary;
  const acc_t* beta;
  int64_t beta_stride;
  const int64_t* lengths;
  const int64_t* regions;
  int64_t B;
  int N, M, chunks;
  int64_t* path;
  acc_t* score;
  Layout lay;
  bool in_shared;
  int64_t delta_bytes;  // offset of the step words inside the group's scratch
  unsigned char* scratch;
};

// K > 0: each lane holds its K scores in registers and prefetches the next step's unaries while
// the current step reduces; K == 0 (more than 256 states): scores in scratch, no prefetch.
template <typename scalar_t, int W, int K>
__global__ void __launch_bounds__(kBlockThreads) mrf_viterbi_kernel(const MrfArgs<scalar_t> a) {
  using acc_t = vacc_t<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr int KR = K > 0 ? K : 1;
  const int lane = threadIdx.x % W, sub = threadIdx.x / W;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * a.lay.groups + sub;
  const int N = a.N, M = a.M, nk = K > 0 ? K : a.chunks;
  unsigned char* base = a.in_shared ? smem + static_cast<int64_t>(sub) * a.lay.group_shared
                                    : a.scratch + b * a.lay.group_global;
  acc_t* dmem = reinterpret_cast<acc_t*>(base);
  uint32_t* words = reinterpret_cast<uint32_t*>(base + a.delta_bytes);

  int L = 0, R = 1;
  acc_t beta = acc_t(0);
  bool bad = false;
  if (b < a.B) {
    const int64_t l = a.lengths ? a.lengths[b] : N, r = a.regions ? a.regions[b] : M;
    beta = a.beta[b * a.beta_stride];
    bad = l < 0 || l > N || r < 1 || r > M || !usable(beta);
    if (!bad) L = static_cast<int>(l), R = static_cast<int>(r);
  }
  const int steps = warp_steps<W>(L);
  const scalar_t* u = a.unary + (b < a.B ? b : 0) * static_cast<int64_t>(N) * M;

  acc_t dreg[KR];
  acc_t unext[KR];
  auto D = [&](int k) -> acc_t& {
    if constexpr (K > 0) return dreg[k];
    else return dmem[lane + k * W];
  };
  auto load = [&](int j, int t) -> acc_t {
    const acc_t v = static_cast<acc_t>(u[static_cast<int64_t>(j) * M + t]);
    bad |= !usable(v);
    return v;
  };

#pragma unroll
  for (int k = 0; k < nk; ++k) {
    const int t = lane + k * W;
    if (L > 0 && t < R) D(k) = load(0, t);
  }
  if constexpr (K > 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int t = lane + k * W;
      unext[k] = 1 < L && t < R ? load(1, t) : acc_t(0);
    }
  }
  for (int j = 1; j < steps; ++j) {
    const bool active = j < L;
    acc_t ucur[KR];
    if constexpr (K > 0) {
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int t = lane + k * W;
        ucur[k] = unext[k];
        unext[k] = j + 1 < L && t < R ? load(j + 1, t) : acc_t(0);
      }
    }
    Top2<acc_t> s{-inf_v<acc_t>(), -inf_v<acc_t>(), kNoState, kNoState};
#pragma unroll
    for (int k = 0; k < nk; ++k)
      if (lane + k * W < R) top2_push(s, D(k), lane + k * W);
    s = group_top2<W>(s);
    uint32_t* wj = words + static_cast<int64_t>(j) * (nk + 1);
#pragma unroll
    for (int k = 0; k < nk; ++k) {
      const int t = lane + k * W;
      bool stay = false;
      if (active && t < R) {
        acc_t uj;
        if constexpr (K > 0) uj = ucur[k];
        else uj = load(j, t);
        const acc_t stay_val = D(k) + beta;
        const bool is1 = t == s.i1;
        const acc_t sw = is1 ? s.v2 : s.v1;  // best previous state other than t
        stay = stay_val >= sw;
        D(k) = uj + (stay ? stay_val : sw);
      }
      const uint32_t bits = group_bits<W>(__ballot_sync(kFullMask, stay));
      if (active && lane == 0) wj[k] = bits;
    }
    if (active && lane == 0) wj[nk] = static_cast<uint32_t>(s.i1) | (static_cast<uint32_t>(s.i2 & 0xffff) << 16);
  }

  acc_t best = -inf_v<acc_t>();
  int last = kNoState;
#pragma unroll
  for (int k = 0; k < nk; ++k)
    if (L > 0 && lane + k * W < R && better(D(k), lane + k * W, best, last)) best = D(k), last = lane + k * W;
  group_best<W>(best, last);
  bad = group_any<W>(bad);
  if (b >= a.B) return;
  int64_t* out = a.path + b * N;
  const int valid = bad ? 0 : L;
  for (int j = valid + lane; j < N; j += W) out[j] = -1;
  if (lane != 0) return;
  a.score[b] = bad ? acc_t(NAN) : (L == 0 ? acc_t(0) : best);
  if (valid == 0) return;
  // Lane 0 wrote every step word, so it reads them back without a barrier.
  int cur = last;
  for (int j = L - 1; j >= 1; --j) {
    out[j] = cur;
    const uint32_t* wj = words + static_cast<int64_t>(j) * (nk + 1);
    if (!((wj[cur / W] >> (cur % W)) & 1u)) {
      const uint32_t top = wj[nk];
      const int i1 = static_cast<int>(top & 0xffff), i2 = static_cast<int>(top >> 16);
      cur = cur == i1 ? i2 : i1;
    }
  }
  out[0] = cur;
}

// ------------------------------------------------------------------------------------ crf

template <typename scalar_t>
struct CrfArgs {
  using acc_t = vacc_t<scalar_t>;
  const scalar_t* emissions;
  const acc_t* trans;
  bool batched;
  const acc_t* start;
  const acc_t* end;
  const int64_t* lengths;
  int64_t B;
  int N, M;
  int64_t* path;
  acc_t* score;
  Layout lay;
  bool trans_shared, delta_shared, bp_shared;
  int64_t trans_off, delta_off, bp_off;  // inside the group's shared or global part (trans: if batched)
  unsigned char* scratch;
};

template <typename scalar_t, typename bp_t, int W>
__global__ void __launch_bounds__(kBlockThreads) crf_viterbi_kernel(const CrfArgs<scalar_t> a) {
  using acc_t = vacc_t<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem[];
  const int lane = threadIdx.x % W, sub = threadIdx.x / W;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * a.lay.groups + sub;
  const bool live = b < a.B;
  const int N = a.N, M = a.M;
  const int64_t MM = static_cast<int64_t>(M) * M;
  unsigned char* gsh = smem + a.lay.block_shared + static_cast<int64_t>(sub) * a.lay.group_shared;
  unsigned char* ggl = a.scratch ? a.scratch + b * a.lay.group_global : nullptr;

  bool bad = false;
  const acc_t* T;
  if (a.trans_shared && !a.batched) {
    // One copy for the block; its check is shared through the barrier.
    acc_t* Ts = reinterpret_cast<acc_t*>(smem);
    int tbad = 0;
    for (int64_t i = threadIdx.x; i < MM; i += blockDim.x) {
      const acc_t v = a.trans[i];
      tbad |= !usable(v);
      Ts[i] = v;
    }
    bad = __syncthreads_or(tbad);
    T = Ts;
  } else {
    const acc_t* Tg = a.trans + (a.batched && live ? b * MM : 0);
    acc_t* Ts = a.trans_shared ? reinterpret_cast<acc_t*>(gsh + a.trans_off) : nullptr;
    for (int64_t i = lane; i < MM && live; i += W) {
      const acc_t v = Tg[i];
      bad |= !usable(v);
      if (Ts) Ts[i] = v;
    }
    __syncwarp();
    T = Ts ? Ts : Tg;
  }
  for (int t = lane; t < M; t += W) {
    if (a.start) bad |= !usable(a.start[t]);
    if (a.end) bad |= !usable(a.end[t]);
  }

  int L = 0;
  if (live) {
    const int64_t l = a.lengths ? a.lengths[b] : N;
    if (l < 0 || l > N) bad = true;
    else L = static_cast<int>(l);
  }
  L = group_any<W>(bad) ? 0 : L;
  const int steps = warp_steps<W>(L);
  const scalar_t* e = a.emissions + (live ? b : 0) * static_cast<int64_t>(N) * M;
  acc_t* d0 = reinterpret_cast<acc_t*>((a.delta_shared ? gsh : ggl) + a.delta_off);
  acc_t* d1 = d0 + M;
  bp_t* bp = reinterpret_cast<bp_t*>((a.bp_shared ? gsh : ggl) + a.bp_off);

  for (int t = lane; t < M && L > 0; t += W) {
    acc_t v = static_cast<acc_t>(e[t]);
    bad |= !usable(v);
    if (a.start) v = v + a.start[t];
    d0[t] = v;
  }
  __syncwarp();
  acc_t* cur = d0;
  acc_t* nxt = d1;
  for (int j = 1; j < steps; ++j) {
    if (j < L) {
      const scalar_t* ej = e + static_cast<int64_t>(j) * M;
      bp_t* bj = bp + static_cast<int64_t>(j) * M;
      for (int t = lane; t < M; t += W) {
        const acc_t ev = static_cast<acc_t>(ej[t]);  // issued early, used after the loop
        // Staying is the incumbent; only a strictly better t' replaces it, and the lowest t'
        // reaching the maximum keeps its place: the tie rule.
        acc_t best = cur[t] + T[static_cast<int64_t>(t) * M + t];
        int arg = t;
#pragma unroll 4
        for (int tp = 0; tp < M; ++tp) {
          const acc_t v = cur[tp] + T[static_cast<int64_t>(tp) * M + t];
          if (v > best) best = v, arg = tp;
        }
        bad |= !usable(ev);
        nxt[t] = ev + best;
        bj[t] = static_cast<bp_t>(arg);
      }
    }
    __syncwarp();  // next step reads all of nxt and overwrites cur
    if (j < L) {   // a finished group keeps its last scores in cur
      acc_t* tmp = cur;
      cur = nxt;
      nxt = tmp;
    }
  }

  acc_t best = -inf_v<acc_t>();
  int last = kNoState;
  for (int t = lane; t < M && L > 0; t += W) {
    const acc_t v = a.end ? cur[t] + a.end[t] : cur[t];
    if (better(v, t, best, last)) best = v, last = t;
  }
  group_best<W>(best, last);
  bad = group_any<W>(bad);
  if (!live) return;
  int64_t* out = a.path + b * N;
  const int valid = bad ? 0 : L;
  for (int j = valid + lane; j < N; j += W) out[j] = -1;
  if (lane != 0) return;
  a.score[b] = bad ? acc_t(NAN) : (L == 0 ? acc_t(0) : best);
  if (valid == 0) return;
  // Backpointers were written by every lane before the last __syncwarp.
  int c = last;
  for (int j = L - 1; j >= 1; --j) {
    out[j] = c;
    c = static_cast<int>(bp[static_cast<int64_t>(j) * M + c]);
  }
  out[0] = c;
}

// ------------------------------------------------------------------------------------ host

int64_t round16(int64_t bytes) { return (bytes + 15) / 16 * 16; }

struct Part {
  int64_t bytes;
  bool per_block;  // one copy per block rather than per group
  bool in_place;   // outside shared memory it is read where it lies, so it needs no scratch
};

// Picks which parts live in shared memory: the first subset in `prefs` (bit i = parts[i]) that
// fits the budget, with as many groups per block as fit (down to one warp's worth). Parts left
// out go to the global scratch. The last preference should be 0 (always fits).
struct Plan {
  Layout lay;
  unsigned shared_mask = 0;
  std::vector<int64_t> offset;  // of each part inside its area (block shared, group shared or global)
};

Plan plan_layout(const std::vector<Part>& parts, const std::vector<unsigned>& prefs, int W) {
  const int max_groups = kBlockThreads / W, min_groups = 32 / W;
  for (unsigned mask : prefs) {
    int64_t block = 0, group = 0;
    for (size_t i = 0; i < parts.size(); ++i)
      if (mask >> i & 1u) (parts[i].per_block ? block : group) += round16(parts[i].bytes);
    for (int g = max_groups; g >= min_groups; g /= 2) {
      if (block + g * group > kSharedBudget) continue;
      Plan plan;
      plan.shared_mask = mask;
      plan.lay.groups = g;
      plan.lay.block_shared = block;
      plan.lay.group_shared = group;
      int64_t off_group = 0, off_global = 0, off_block = 0;
      for (size_t i = 0; i < parts.size(); ++i) {
        const int64_t sz = round16(parts[i].bytes);
        if (mask >> i & 1u) {
          plan.offset.push_back(parts[i].per_block ? off_block : off_group);
          (parts[i].per_block ? off_block : off_group) += sz;
        } else {
          plan.offset.push_back(off_global);
          if (!parts[i].in_place) off_global += sz;
        }
      }
      plan.lay.group_global = off_global;
      return plan;
    }
  }
  TORCH_CHECK(false, "viterbi: no shared-memory layout fits (internal error)");
}

at::Tensor global_scratch(const at::Tensor& like, int64_t blocks, const Layout& lay) {
  return at::empty({std::max<int64_t>(1, blocks * lay.groups * lay.group_global)}, like.options().dtype(at::kByte));
}

template <typename scalar_t, int W, int K>
void launch_mrf(const MrfProblem& p, const at::Tensor& path, const at::Tensor& score) {
  using acc_t = vacc_t<scalar_t>;
  const int chunks = static_cast<int>((p.M + W - 1) / W);
  const int64_t delta_bytes = K == 0 ? round16(p.M * static_cast<int64_t>(sizeof(acc_t))) : 0;
  const int64_t bytes = delta_bytes + p.N * static_cast<int64_t>(chunks + 1) * 4;
  const Plan plan = plan_layout({{bytes, false, false}}, {1u, 0u}, W);
  MrfArgs<scalar_t> a;
  a.unary = p.scores.const_data_ptr<scalar_t>();
  a.beta = p.beta.const_data_ptr<acc_t>();
  a.beta_stride = p.beta.numel() == 1 ? 0 : 1;
  a.lengths = p.lengths.defined() ? p.lengths.const_data_ptr<int64_t>() : nullptr;
  a.regions = p.num_regions.defined() ? p.num_regions.const_data_ptr<int64_t>() : nullptr;
  a.B = p.B;
  a.N = static_cast<int>(p.N);
  a.M = static_cast<int>(p.M);
  a.chunks = chunks;
  a.path = path.mutable_data_ptr<int64_t>();
  a.score = score.mutable_data_ptr<acc_t>();
  a.lay = plan.lay;
  a.in_shared = plan.shared_mask == 1u;
  a.delta_bytes = delta_bytes;
  const int64_t blocks = (p.B + plan.lay.groups - 1) / plan.lay.groups;
  at::Tensor scratch;
  if (!a.in_shared) scratch = global_scratch(p.scores, blocks, a.lay);
  a.scratch = scratch.defined() ? scratch.mutable_data_ptr<unsigned char>() : nullptr;
  const int64_t smem = a.in_shared ? plan.lay.groups * plan.lay.group_shared : 0;
  mrf_viterbi_kernel<scalar_t, W, K><<<static_cast<unsigned>(blocks), plan.lay.groups * W, smem,
                                       at::cuda::getCurrentCUDAStream()>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename bp_t, int W>
void launch_crf(const CrfProblem& p, const at::Tensor& path, const at::Tensor& score) {
  using acc_t = vacc_t<scalar_t>;
  constexpr int64_t kValue = sizeof(acc_t);
  const int64_t M = p.M;
  // Preference: everything in shared; then backpointers out (rarely touched); then the
  // transitions (read in place from global, L1/L2-cached); the scores double buffer last.
  constexpr unsigned kT = 1u, kD = 2u, kBP = 4u;
  const std::vector<Part> parts = {{M * M * kValue, !p.batched, true},
                                   {2 * M * kValue, false, false},
                                   {p.N * M * static_cast<int64_t>(sizeof(bp_t)), false, false}};
  const Plan plan = plan_layout(parts, {kT | kD | kBP, kT | kD, kD | kBP, kD, 0u}, W);
  CrfArgs<scalar_t> a;
  a.emissions = p.scores.const_data_ptr<scalar_t>();
  a.trans = p.transitions.const_data_ptr<acc_t>();
  a.batched = p.batched;
  a.start = p.start.defined() ? p.start.const_data_ptr<acc_t>() : nullptr;
  a.end = p.end.defined() ? p.end.const_data_ptr<acc_t>() : nullptr;
  a.lengths = p.lengths.defined() ? p.lengths.const_data_ptr<int64_t>() : nullptr;
  a.B = p.B;
  a.N = static_cast<int>(p.N);
  a.M = static_cast<int>(M);
  a.path = path.mutable_data_ptr<int64_t>();
  a.score = score.mutable_data_ptr<acc_t>();
  a.lay = plan.lay;
  a.trans_shared = plan.shared_mask & kT;
  a.delta_shared = plan.shared_mask & kD;
  a.bp_shared = plan.shared_mask & kBP;
  a.trans_off = plan.offset[0];
  a.delta_off = plan.offset[1];
  a.bp_off = plan.offset[2];
  const int64_t blocks = (p.B + plan.lay.groups - 1) / plan.lay.groups;
  at::Tensor scratch;
  if (plan.lay.group_global > 0) scratch = global_scratch(p.scores, blocks, plan.lay);
  a.scratch = scratch.defined() ? scratch.mutable_data_ptr<unsigned char>() : nullptr;
  const int64_t smem = plan.lay.block_shared + plan.lay.groups * plan.lay.group_shared;
  crf_viterbi_kernel<scalar_t, bp_t, W><<<static_cast<unsigned>(blocks), plan.lay.groups * W, smem,
                                          at::cuda::getCurrentCUDAStream()>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> mrf_viterbi_cuda(const at::Tensor& unary, const at::Tensor& beta,
                                                    const std::optional<at::Tensor>& lengths,
                                                    const std::optional<at::Tensor>& num_regions) {
  const c10::cuda::CUDAGuard guard(unary.device());
  return mrf_forward(unary, beta, lengths, num_regions, [](const MrfProblem& prob, at::Tensor& path, at::Tensor& score) {
    AT_DISPATCH_V2(prob.scores.scalar_type(), "mrf_viterbi_cuda", AT_WRAP([&] {
      const int64_t M = prob.M;
      if (M <= 8) launch_mrf<scalar_t, 8, 1>(prob, path, score);
      else if (M <= 16) launch_mrf<scalar_t, 16, 1>(prob, path, score);
      else if (M <= 32) launch_mrf<scalar_t, 32, 1>(prob, path, score);
      else if (M <= 64) launch_mrf<scalar_t, 32, 2>(prob, path, score);
      else if (M <= 128) launch_mrf<scalar_t, 32, 4>(prob, path, score);
      else if (M <= 256) launch_mrf<scalar_t, 32, 8>(prob, path, score);
      else launch_mrf<scalar_t, 32, 0>(prob, path, score);
    }), at::kFloat, at::kHalf, at::kBFloat16, at::kDouble);
  });
}

std::tuple<at::Tensor, at::Tensor> crf_viterbi_cuda(const at::Tensor& emissions, const at::Tensor& transitions,
                                                    const std::optional<at::Tensor>& lengths,
                                                    const std::optional<at::Tensor>& start,
                                                    const std::optional<at::Tensor>& end) {
  const c10::cuda::CUDAGuard guard(emissions.device());
  return crf_forward(emissions, transitions, lengths, start, end,
                     [](const CrfProblem& prob, at::Tensor& path, at::Tensor& score) {
    AT_DISPATCH_V2(prob.scores.scalar_type(), "crf_viterbi_cuda", AT_WRAP([&] {
      const int64_t M = prob.M;
      if (M <= 8) launch_crf<scalar_t, uint8_t, 8>(prob, path, score);
      else if (M <= 16) launch_crf<scalar_t, uint8_t, 16>(prob, path, score);
      else if (M <= 255) launch_crf<scalar_t, uint8_t, 32>(prob, path, score);
      else launch_crf<scalar_t, uint16_t, 32>(prob, path, score);
    }), at::kFloat, at::kHalf, at::kBFloat16, at::kDouble);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedembed, CUDA, m) {
  m.impl("mrf_viterbi", &mrf_viterbi_cuda);
  m.impl("crf_viterbi", &crf_viterbi_cuda);
}

}  // namespace fusedembed
