// The extension's front door: build information for Python, and every op schema, once.
// Kernels register their implementations per device in csrc/cpu/ and csrc/cuda/.
#include <torch/extension.h>

#include "generated/build_info.h"

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["version"] = FUSEDEMBED_VERSION;
  info["torch_version"] = FUSEDEMBED_TORCH_VERSION;
  const std::string cuda = FUSEDEMBED_CUDA_VERSION;
  info["cuda_version"] = cuda.empty() ? pybind11::none() : pybind11::cast(cuda);
  pybind11::list archs;
  std::string all = FUSEDEMBED_CUDA_ARCHS;
  for (size_t start = 0; start < all.size();) {
    size_t end = all.find_first_of("; ", start);
    if (end == std::string::npos) end = all.size();
    if (end > start) archs.append(all.substr(start, end - start));
    start = end + 1;
  }
  info["cuda_archs"] = archs;
  pybind11::list devices;
  devices.append("cpu");
#ifdef FUSEDEMBED_WITH_CUDA
  devices.append("cuda");
#endif
  info["devices"] = devices;
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fusedembed compiled kernels (ops are reached through torch.ops.fusedembed)";
  m.def("build_info", &build_info, "What this extension was compiled with.");
}

TORCH_LIBRARY(fusedembed, m) {
  // Generalized-mean pooling over the spatial dims of (B, C, H, W) / (B, C, L): returns (B, C).
  m.def("gem_pool(Tensor x, Tensor p, float eps) -> Tensor");
  // Gradients of gem_pool from its saved output y; grad_p is per (b, c) row when p_grad is set
  // (reduced to p's shape by the caller), an empty tensor otherwise.
  m.def("gem_pool_backward(Tensor grad_y, Tensor x, Tensor p, Tensor y, float eps, bool x_grad, "
        "bool p_grad) -> (Tensor, Tensor)");
  // Sampled weighted sigmoid loss (Tencent ML-Images), see csrc/ops/sampled_sigmoid_loss.h.
  // Per-class counts of (B, C) targets: (2, C) int32, row 0 positives (y >= pos_threshold), row 1
  // negatives (the other entries that are not -1).
  m.def("sampled_sigmoid_loss_counts(Tensor targets, float pos_threshold) -> Tensor");
  // One pass given those counts: (loss, grad_logits or an empty tensor unless compute_grad,
  // kept (C,) bool columns). Keep decisions from Philox keyed by (seed, offset, class,
  // row_start + row). The autograd backward may rescale grad_logits in place.
  m.def("sampled_sigmoid_loss(Tensor logits, Tensor targets, Tensor counts, Tensor class_weight, "
        "Tensor pos_weight, float pos_threshold, float? neg_ratio, float empty_keep, int seed, int offset, "
        "int row_start, str reduction, bool compute_grad) -> (Tensor, Tensor, Tensor)");
  // Backward of a scalar loss: grad_logits *= grad_loss (1 element) in place, read nothing when it is 1.
  m.def("sampled_sigmoid_loss_scale_grad_(Tensor(a!) grad, Tensor grad_loss) -> ()");
  // Potts chain-MRF Viterbi over (B, N, M) unaries (word-to-region alignment): returns the int64
  // (B, N) assignment (-1 past each length) and the float32 (B,) best energy. beta: 1 or B values.
  m.def("mrf_viterbi(Tensor unary, Tensor beta, Tensor? lengths=None, Tensor? num_regions=None) "
        "-> (Tensor, Tensor)");
  // Linear-chain CRF Viterbi, transitions (M, M) or (B, M, M) [from, to]: returns (path, score).
  m.def("crf_viterbi(Tensor emissions, Tensor transitions, Tensor? lengths=None, Tensor? start=None, "
        "Tensor? end=None) -> (Tensor, Tensor)");
}
