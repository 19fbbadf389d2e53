// Elementwise work of a layer in one MLX primitive each, vectorized, bitwise what MLX's ops compute.
//
// On the CPU wheel each small MLX op costs a graph node, an allocation and a dispatch (~45 of them a
// layer); these primitives do the same arithmetic in one. `swiglu(gate, up)` is mlx-lm's compiled
// `silu(gate) * up` = (gate * sigmoid(gate)) * up, with MLX's sigmoid (unary_ops.h:
// y = 1 / (1 + exp(|x|)), then y for x < 0, else 1 - y) and MLX's own exp polynomial
// (simd/math.h), lane for lane: floor(x + 0.5) taken in double as MLX's scalar build does, FMA
// exactly where MLX calls fma, no contraction anywhere else (-ffp-contract=off). The load check
// (fused_ops.py) compares each swapped module bitwise with MLX's before keeping it.
#include <nanobind/nanobind.h>
#include <nanobind/stl/vector.h>

#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "fused_common.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/backend/cpu/simd/simd.h"
#include "mlx/mlx.h"
#include "mlx/primitives.h"

namespace nb = nanobind;

void register_fused_rope(nb::module_ &module);  // fused_rope.cpp

namespace {


// MLX's simd::exp<float, N> (simd/math.h) on eight lanes.
__attribute__((target("avx2,fma"))) __m256 mlx_exp(__m256 x_init) {
  const __m256 x = _mm256_mul_ps(x_init, _mm256_set1_ps(1.442695f));
  // ipart = floor(x + 0.5): `x + 0.5` is a double in MLX's scalar Simd<float, 1>.
  const __m256d half = _mm256_set1_pd(0.5);
  const __m256d low = _mm256_floor_pd(_mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(x)), half));
  const __m256d high = _mm256_floor_pd(_mm256_add_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(x, 1)), half));
  const __m256 ipart = _mm256_set_m128(_mm256_cvtpd_ps(high), _mm256_cvtpd_ps(low));
  const __m256 fpart = _mm256_sub_ps(x, ipart);
  __m256 p = _mm256_set1_ps(1.535336188319500e-4f);
  p = _mm256_fmadd_ps(p, fpart, _mm256_set1_ps(1.339887440266574e-3f));
  p = _mm256_fmadd_ps(p, fpart, _mm256_set1_ps(9.618437357674640e-3f));
  p = _mm256_fmadd_ps(p, fpart, _mm256_set1_ps(5.550332471162809e-2f));
  p = _mm256_fmadd_ps(p, fpart, _mm256_set1_ps(2.402264791363012e-1f));
  p = _mm256_fmadd_ps(p, fpart, _mm256_set1_ps(6.931472028550421e-1f));
  p = _mm256_fmadd_ps(p, fpart, _mm256_set1_ps(1.000000000000000f));
  // 2^ipart from the bits: a C cast (truncation; out of range gives 0x80000000 as cvttps does), then wraps.
  const __m256i epart = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(ipart), _mm256_set1_epi32(127)), 23);
  __m256 result = _mm256_mul_ps(_mm256_castsi256_ps(epart), p);
  result = _mm256_blendv_ps(result, x_init, _mm256_cmp_ps(x_init, x_init, _CMP_UNORD_Q));
  result = _mm256_blendv_ps(result, _mm256_set1_ps(__builtin_inff()),
                            _mm256_cmp_ps(x_init, _mm256_set1_ps(88.0f), _CMP_GT_OQ));
  result = _mm256_blendv_ps(result, _mm256_setzero_ps(), _mm256_cmp_ps(x_init, _mm256_set1_ps(-88.0f), _CMP_LT_OQ));
  return result;
}

// (gate * sigmoid(gate)) * up on eight lanes.
__attribute__((target("avx2,fma"))) __m256 swiglu_lanes(__m256 gate, __m256 up) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 magnitude = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), gate);
  const __m256 y = _mm256_div_ps(one, _mm256_add_ps(one, mlx_exp(magnitude)));
  const __m256 sigmoid = _mm256_blendv_ps(_mm256_sub_ps(one, y), y, _mm256_cmp_ps(gate, _mm256_setzero_ps(), _CMP_LT_OQ));
  // Which NaN a product of two NaNs keeps depends on operand order, which the compiler may swap: a NaN
  // operand's own NaN is chosen explicitly, as MLX's build computes it (the left one's).
  __m256 silu = _mm256_mul_ps(gate, sigmoid);
  silu = _mm256_blendv_ps(silu, sigmoid, _mm256_cmp_ps(sigmoid, sigmoid, _CMP_UNORD_Q));
  const __m256 product = _mm256_mul_ps(silu, up);
  return _mm256_blendv_ps(product, silu, _mm256_cmp_ps(silu, silu, _CMP_UNORD_Q));
}

__attribute__((target("avx2,fma"))) void swiglu_values(const float *gate, const float *up, float *out, size_t count) {
  size_t index = 0;
  for (; index + 8 <= count; index += 8)
    _mm256_storeu_ps(out + index, swiglu_lanes(_mm256_loadu_ps(gate + index), _mm256_loadu_ps(up + index)));
  if (index == count) return;
  // The tail as lanes of a padded block: each lane's arithmetic is independent of the others.
  float gate_tail[8] = {}, up_tail[8] = {}, out_tail[8];
  std::memcpy(gate_tail, gate + index, (count - index) * sizeof(float));
  std::memcpy(up_tail, up + index, (count - index) * sizeof(float));
  _mm256_storeu_ps(out_tail, swiglu_lanes(_mm256_loadu_ps(gate_tail), _mm256_loadu_ps(up_tail)));
  std::memcpy(out + index, out_tail, (count - index) * sizeof(float));
}


class Swiglu : public mx::UnaryPrimitive {
 public:
  explicit Swiglu(mx::Stream stream) : mx::UnaryPrimitive(stream) {}

  void eval_cpu(const std::vector<mx::array> &inputs, mx::array &out) override {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto &encoder = mx::cpu::get_command_encoder(stream());
    for (const auto &input : inputs) encoder.set_input_array(input);
    encoder.set_output_array(out);
    const mx::array gate = inputs[0], up = inputs[1];
    float *result = out.data<float>();
    encoder.dispatch([gate, up, result]() {
      std::vector<float> gate_copy, up_copy;
      swiglu_values(row_major_floats(gate, gate_copy), row_major_floats(up, up_copy), result, gate.size());
    });
  }

  void eval_gpu(const std::vector<mx::array> &, mx::array &) override {
    throw std::runtime_error("strata's fused swiglu runs on the CPU only");
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array> &inputs) override { return {inputs[0].shape()}; }
  const char *name() const override { return "StrataSwiglu"; }
  bool is_equivalent(const mx::Primitive &) const override { return true; }
};

mx::array swiglu(const mx::array &gate, const mx::array &up) {
  if (gate.dtype() != mx::float32 || up.dtype() != mx::float32)
    throw std::invalid_argument("swiglu: gate and up must be float32");
  if (gate.shape() != up.shape()) throw std::invalid_argument("swiglu: gate and up must have the same shape");
  if (!cpu_runs_fused_ops()) throw std::invalid_argument("swiglu: this CPU lacks AVX2 or FMA");
  return mx::array(gate.shape(), mx::float32, std::make_shared<Swiglu>(mx::default_stream(mx::Device::cpu)),
                   {gate, up});
}

// swiglu(both[..., :n], both[..., n:]) for the output of one product of gate's and up's concatenated
// weights: each row's halves, the same lanes as `swiglu` on separate arrays.
class SwigluHalves : public mx::UnaryPrimitive {
 public:
  explicit SwigluHalves(mx::Stream stream) : mx::UnaryPrimitive(stream) {}

  void eval_cpu(const std::vector<mx::array> &inputs, mx::array &out) override {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto &encoder = mx::cpu::get_command_encoder(stream());
    encoder.set_input_array(inputs[0]);
    encoder.set_output_array(out);
    const mx::array both = inputs[0];
    float *result = out.data<float>();
    encoder.dispatch([both, result]() {
      std::vector<float> copy;
      const float *values = row_major_floats(both, copy);
      const size_t width = static_cast<size_t>(both.shape(-1)) / 2;
      if (width == 0) return;
      const size_t rows = both.size() / (2 * width);
      for (size_t row = 0; row < rows; row++)
        swiglu_values(values + 2 * row * width, values + (2 * row + 1) * width, result + row * width, width);
    });
  }

  void eval_gpu(const std::vector<mx::array> &, mx::array &) override {
    throw std::runtime_error("strata's fused swiglu runs on the CPU only");
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array> &inputs) override {
    mx::Shape shape = inputs[0].shape();
    shape.back() /= 2;
    return {shape};
  }
  const char *name() const override { return "StrataSwigluHalves"; }
  bool is_equivalent(const mx::Primitive &) const override { return true; }
};

mx::array swiglu_halves(const mx::array &both) {
  if (both.dtype() != mx::float32) throw std::invalid_argument("swiglu_halves: the input must be float32");
  if (both.ndim() < 1 || both.shape(-1) % 2 != 0)
    throw std::invalid_argument("swiglu_halves: the input's last axis must have an even size");
  if (!cpu_runs_fused_ops()) throw std::invalid_argument("swiglu_halves: this CPU lacks AVX2 or FMA");
  mx::Shape shape = both.shape();
  shape.back() /= 2;
  return mx::array(shape, mx::float32, std::make_shared<SwigluHalves>(mx::default_stream(mx::Device::cpu)), {both});
}

// nn.RMSNorm as MLX's fallback of mx.fast.rms_norm computes it for float32 x and weight: the squares'
// sum as the scalar build's sequential loop, times MLX's normalizer float(1.0 / n), plus eps,
// rsqrt = 1 / sqrt, then (x * rsqrt) * weight, the last two vectorized (elementwise, same roundings).
__attribute__((target("avx2,fma"))) void rms_norm_row(const float *x, const float *weight, float eps, float normalizer,
                                                      int size, float *out) {
  float accumulator = 0.0f;
  for (int index = 0; index < size; index++) {
    const float square = x[index] * x[index];
    // Bitwise MLX's, NaN payloads included, except which of several NaNs in a row the sum keeps
    // (MLX's build keeps neither the first nor the last): not yet swapped in for nn.RMSNorm.
    accumulator = accumulator + square;
  }
  const float sum = 0.0f + accumulator;  // reduce.cpp adds the vector accumulator to the initial value
  const float scale = 1.0f / std::sqrt(sum * normalizer + eps);
  const __m256 scale_lanes = _mm256_set1_ps(scale);
  int index = 0;
  for (; index + 8 <= size; index += 8) {
    const __m256 normalized = _mm256_mul_ps(_mm256_loadu_ps(x + index), scale_lanes);
    _mm256_storeu_ps(out + index, _mm256_mul_ps(normalized, _mm256_loadu_ps(weight + index)));
  }
  for (; index < size; index++) {
    const float normalized = x[index] * scale;
    out[index] = normalized * weight[index];
  }
}

class RmsNorm : public mx::UnaryPrimitive {
 public:
  RmsNorm(mx::Stream stream, float eps) : mx::UnaryPrimitive(stream), eps_(eps) {}

  void eval_cpu(const std::vector<mx::array> &inputs, mx::array &out) override {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto &encoder = mx::cpu::get_command_encoder(stream());
    for (const auto &input : inputs) encoder.set_input_array(input);
    encoder.set_output_array(out);
    const mx::array x = inputs[0], weight = inputs[1];
    float *result = out.data<float>();
    const float eps = eps_;
    encoder.dispatch([x, weight, eps, result]() {
      std::vector<float> x_copy, weight_copy;
      const float *values = row_major_floats(x, x_copy);
      const float *scales = row_major_floats(weight, weight_copy);
      const int size = x.shape(-1);
      if (size == 0) return;
      const float normalizer = static_cast<float>(1.0 / static_cast<double>(size));
      const size_t rows = x.size() / static_cast<size_t>(size);
      for (size_t row = 0; row < rows; row++)
        rms_norm_row(values + row * size, scales, eps, normalizer, size, result + row * size);
    });
  }

  void eval_gpu(const std::vector<mx::array> &, mx::array &) override {
    throw std::runtime_error("strata's fused rms_norm runs on the CPU only");
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array> &inputs) override { return {inputs[0].shape()}; }
  const char *name() const override { return "StrataRmsNorm"; }
  bool is_equivalent(const mx::Primitive &other) const override {
    return static_cast<const RmsNorm &>(other).eps_ == eps_;
  }

 private:
  float eps_;
};

mx::array rms_norm(const mx::array &x, const mx::array &weight, float eps) {
  if (x.dtype() != mx::float32 || weight.dtype() != mx::float32)
    throw std::invalid_argument("rms_norm: x and the weight must be float32");
  if (x.ndim() < 1 || weight.ndim() != 1 || weight.shape(0) != x.shape(-1))
    throw std::invalid_argument("rms_norm: the weight must be a vector of x's last axis size");
  if (!cpu_runs_fused_ops()) throw std::invalid_argument("rms_norm: this CPU lacks AVX2 or FMA");
  return mx::array(x.shape(), mx::float32, std::make_shared<RmsNorm>(mx::default_stream(mx::Device::cpu), eps),
                   {x, weight});
}


// `x + branch` as MLX's CPU add computes it for float32 (one rounding a lane; of two NaN operands the
// result carries the branch's, quieted, as MLX's build gives; the compiler may order an add's operands
// either way, so that choice is explicit), then that sum's RMSNorm exactly as `rms_norm` above.
__attribute__((target("avx2,fma"))) void add_values(const float *x, const float *branch, float *out, size_t count) {
  const __m256i quiet_bit = _mm256_set1_epi32(0x00400000);
  size_t index = 0;
  for (; index + 8 <= count; index += 8) {
    const __m256 left = _mm256_loadu_ps(x + index), right = _mm256_loadu_ps(branch + index);
    const __m256 quiet_right = _mm256_castsi256_ps(_mm256_or_si256(_mm256_castps_si256(right), quiet_bit));
    const __m256 sum = _mm256_add_ps(left, right);
    _mm256_storeu_ps(out + index, _mm256_blendv_ps(sum, quiet_right, _mm256_cmp_ps(right, right, _CMP_UNORD_Q)));
  }
  for (; index < count; index++) {
    const float right = branch[index];
    if (std::isnan(right)) {
      uint32_t bits;
      std::memcpy(&bits, &right, sizeof(bits));
      bits |= 0x00400000u;
      std::memcpy(out + index, &bits, sizeof(bits));
    } else {
      out[index] = x[index] + right;
    }
  }
}

// Two outputs, [x + branch, rms_norm(x + branch)]: the residual stream and the next norm's rows in one op.
class AddRmsNorm : public mx::Primitive {
 public:
  AddRmsNorm(mx::Stream stream, float eps) : mx::Primitive(stream), eps_(eps) {}

  void eval_cpu(const std::vector<mx::array> &inputs, std::vector<mx::array> &outputs) override {
    for (auto &output : outputs) output.set_data(mx::allocator::malloc(output.nbytes()));
    auto &encoder = mx::cpu::get_command_encoder(stream());
    for (const auto &input : inputs) encoder.set_input_array(input);
    for (auto &output : outputs) encoder.set_output_array(output);
    const mx::array x = inputs[0], branch = inputs[1], weight = inputs[2];
    float *sums = outputs[0].data<float>();
    float *normed = outputs[1].data<float>();
    const float eps = eps_;
    encoder.dispatch([x, branch, weight, eps, sums, normed]() {
      std::vector<float> x_copy, branch_copy, weight_copy;
      const int size = x.shape(-1);
      if (size == 0 || x.size() == 0) return;
      add_values(row_major_floats(x, x_copy), row_major_floats(branch, branch_copy), sums, x.size());
      const float *scales = row_major_floats(weight, weight_copy);
      const float normalizer = static_cast<float>(1.0 / static_cast<double>(size));
      const size_t rows = x.size() / static_cast<size_t>(size);
      for (size_t row = 0; row < rows; row++)
        rms_norm_row(sums + row * size, scales, eps, normalizer, size, normed + row * size);
    });
  }

  void eval_gpu(const std::vector<mx::array> &, std::vector<mx::array> &) override {
    throw std::runtime_error("strata's fused add_rms_norm runs on the CPU only");
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array> &inputs) override {
    return {inputs[0].shape(), inputs[0].shape()};
  }
  const char *name() const override { return "StrataAddRmsNorm"; }
  bool is_equivalent(const mx::Primitive &other) const override {
    return static_cast<const AddRmsNorm &>(other).eps_ == eps_;
  }

 private:
  float eps_;
};

std::vector<mx::array> add_rms_norm(const mx::array &x, const mx::array &branch, const mx::array &weight, float eps) {
  if (x.dtype() != mx::float32 || branch.dtype() != mx::float32 || weight.dtype() != mx::float32)
    throw std::invalid_argument("add_rms_norm: x, the branch and the weight must be float32");
  if (x.shape() != branch.shape()) throw std::invalid_argument("add_rms_norm: x and the branch must have the same shape");
  if (x.ndim() < 1 || weight.ndim() != 1 || weight.shape(0) != x.shape(-1))
    throw std::invalid_argument("add_rms_norm: the weight must be a vector of x's last axis size");
  if (!cpu_runs_fused_ops()) throw std::invalid_argument("add_rms_norm: this CPU lacks AVX2 or FMA");
  return mx::array::make_arrays({x.shape(), x.shape()}, {mx::float32, mx::float32},
                                std::make_shared<AddRmsNorm>(mx::default_stream(mx::Device::cpu), eps), {x, branch, weight});
}

}  // namespace

void register_fused_ops(nb::module_ &module) {
  module.def("swiglu", &swiglu, nb::arg("gate"), nb::arg("up"),
             "mlx-lm's compiled silu(gate) * up for float32 arrays of one shape, bitwise, in one op");
  module.def("swiglu_halves", &swiglu_halves, nb::arg("both"),
             "swiglu(both[..., :n], both[..., n:]) for float32 both (..., 2n), bitwise, in one op");
  module.def("rms_norm", &rms_norm, nb::arg("x"), nb::arg("weight"), nb::arg("eps"),
             "mx.fast.rms_norm(x, weight, eps) as MLX's CPU fallback computes it, float32, bitwise, in one op");
  module.def("add_rms_norm", &add_rms_norm, nb::arg("x"), nb::arg("branch"), nb::arg("weight"), nb::arg("eps"),
             "[x + branch, rms_norm(x + branch, weight, eps)] for float32 arrays, bitwise MLX's add then rms_norm, in one op");
  register_fused_rope(module);  // fused_rope.cpp
  module.def("fused_ops_available", &cpu_runs_fused_ops, "whether this CPU runs the fused ops (AVX2, FMA)");
}
