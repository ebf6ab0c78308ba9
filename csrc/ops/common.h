// Helpers shared by every op: readable argument checks and shape formatting.
#pragma once

#include <ATen/ATen.h>

#include <sstream>
#include <string>

namespace fusedembed {

inline std::string shape_str(const at::Tensor& t) {
  std::ostringstream out;
  out << "[";
  for (int64_t d = 0; d < t.dim(); ++d) out << (d ? ", " : "") << t.size(d);
  out << "]";
  return out.str();
}

inline std::string dtype_str(const at::Tensor& t) {
  return std::string(c10::toString(t.scalar_type()));
}

// Accumulation type of the kernels: float for float/half/bfloat16, double for double.
inline at::ScalarType acc_type_for(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Values of a CPU tensor: finite and >= 0, else an error naming the first value that is not (a
// minimum would hide an inf).
inline void check_finite_nonnegative(const char* op, const char* name, const at::Tensor& t) {
  const at::Tensor bad = (~(at::isfinite(t) & (t >= 0))).reshape(-1);
  TORCH_CHECK(!bad.any().item<bool>(), op, ": ", name, " must be finite and >= 0, got ",
              t.reshape(-1).masked_select(bad)[0].item<double>());
}

}  // namespace fusedembed
