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

}  // namespace fusedembed
