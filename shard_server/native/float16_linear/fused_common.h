// What the fused ops' files share (fused_ops.cpp, fused_rope.cpp): the CPU check and row-major reads.
#pragma once

#include <cstdint>
#include <vector>

#include "mlx/mlx.h"

namespace mx = mlx::core;

namespace {

inline bool cpu_runs_fused_ops() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

// An input's values in row-major order: its own memory when row-contiguous, else copied into `into`.
template <typename T>
const T *row_major(const mx::array &a, std::vector<T> &into) {
  if (a.flags().row_contiguous) return a.data<T>();
  const T *base = a.data<T>();
  into.resize(a.size());
  std::vector<int64_t> index(a.ndim(), 0);
  for (size_t element = 0; element < a.size(); element++) {
    int64_t offset = 0;
    for (size_t axis = 0; axis < a.ndim(); axis++) offset += index[axis] * a.strides()[axis];
    into[element] = base[offset];
    for (size_t axis = a.ndim(); axis-- > 0;) {
      if (++index[axis] < a.shape(static_cast<int>(axis))) break;
      index[axis] = 0;
    }
  }
  return into.data();
}

inline const float *row_major_floats(const mx::array &a, std::vector<float> &into) { return row_major<float>(a, into); }

}  // namespace
