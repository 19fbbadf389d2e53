// One product out = x * W^T (+ bias) as the float16/codes kernels see it (float16_linear.cpp).
#pragma once

#include <cstdint>

namespace {

struct Product {
  int rows, columns, k;
  const float *a;     // rows x k
  const uint16_t *w;  // float16 bits, columns x k (null when the weights are codes)
  const float *bias;  // columns values, or null
  float *c;           // rows x columns
  // Quantized weights (MLX's affine layout): codes of `bits` bits packed in uint32 words, one float16
  // scale and bias per `group` weights. Null `codes`: the weights are `w`.
  const uint32_t *codes = nullptr;
  const uint16_t *scales = nullptr, *biases = nullptr;
  int group = 0, bits = 0;
};

}  // namespace
