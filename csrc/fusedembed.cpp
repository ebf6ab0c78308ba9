// The extension's front door: build information for Python. The op schemas are defined from
// Python (fusedembed/ops/_library.py, with or without this extension); the kernels here only
// register their implementations per device (TORCH_LIBRARY_IMPL in csrc/cpu/ and csrc/cuda/).
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
