// Vector widths of the CUDA kernels: each kernel is instantiated per width, and the widest one
// that every access can take is picked at run time.
#pragma once

#include <cstdint>
#include <type_traits>

namespace fusedembed {

// The widest vec in {max_vec, max_vec / 2, ..., 2} (elements; a power of two) that divides inner
// (the contiguous length) and aligns every pointer to vec of its own elements; else 1.
template <typename... Ptrs>
int vec_width(int max_vec, int64_t inner, const Ptrs*... ptrs) {
  for (int vec = max_vec; vec > 1; vec /= 2) {
    const bool aligned = ((reinterpret_cast<uintptr_t>(ptrs) % (vec * sizeof(Ptrs)) == 0) && ...);
    if (inner % vec == 0 && aligned) return vec;
  }
  return 1;
}

// Calls f(std::integral_constant<int, VEC>) for the runtime width, VEC <= kMaxVec.
template <int kMaxVec, typename F>
void with_vec(int vec, F&& f) {
  if constexpr (kMaxVec >= 8) {
    if (vec == 8) return f(std::integral_constant<int, 8>{});
  }
  if constexpr (kMaxVec >= 4) {
    if (vec == 4) return f(std::integral_constant<int, 4>{});
  }
  if (vec == 2) return f(std::integral_constant<int, 2>{});
  f(std::integral_constant<int, 1>{});
}

}  // namespace fusedembed
