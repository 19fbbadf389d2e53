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

#include "mlx/backend/cpu/encoder.h"
#include "mlx/backend/cpu/simd/simd.h"
#include "mlx/mlx.h"
#include "mlx/primitives.h"

namespace nb = nanobind;
namespace mx = mlx::core;

namespace {

bool cpu_runs_fused_ops() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

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

const float *row_major_floats(const mx::array &a, std::vector<float> &into) { return row_major<float>(a, into); }

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

// mx.fast.rope (forward) as MLX's CPU fallback (fast.cpp) computes it for float32 x: each row's
// position (float(t) + float(offset)) * scale, theta = position * inverse frequency, MLX's cos and
// sin (simd/math.h as the CPU wheel builds them, one lane: Cephes polynomials, libm past 2^23; here
// eight lanes of the same operations, and MLX's own scalar code where a lane is past 2^23),
// then x1 * cos - x2 * sin and x1 * sin + x2 * cos, each product rounded (no contraction), the
// dimensions past `dims` copied. The inverse frequencies are an input, computed once by MLX's own ops
// (`rope_inverse_frequencies`, or the reciprocal of a model's frequencies) as the fallback computes them.
// MLX's sincos<Sine> (simd/math.h) on eight lanes, for |x| <= 2^23 (the caller sends larger ones to
// MLX's own scalar path, which takes libm's): the same float operations, FMA where MLX calls fma; the
// float-to-uint32 cast of a non-negative value below 2^31 is cvttps's.
template <bool Sine>
__attribute__((target("avx2,fma"))) __m256 mlx_sincos(__m256 in) {
  const __m256 sign_bit = _mm256_set1_ps(-0.0f);
  __m256i sign_sin = _mm256_castps_si256(_mm256_cmp_ps(in, _mm256_setzero_ps(), _CMP_LT_OQ));
  __m256 x = _mm256_andnot_ps(sign_bit, in);
  __m256 y = _mm256_mul_ps(x, _mm256_set1_ps(1.27323954473516f));
  __m256i emm2 = _mm256_cvttps_epi32(y);
  emm2 = _mm256_add_epi32(emm2, _mm256_set1_epi32(1));
  emm2 = _mm256_and_si256(emm2, _mm256_set1_epi32(~1));
  y = _mm256_cvtepi32_ps(emm2);
  const __m256i poly_mask = _mm256_cmpeq_epi32(_mm256_and_si256(emm2, _mm256_set1_epi32(2)), _mm256_set1_epi32(2));
  x = _mm256_fmadd_ps(y, _mm256_set1_ps(-0.78515625f), x);
  x = _mm256_fmadd_ps(y, _mm256_set1_ps(-2.4187564849853515625e-4f), x);
  x = _mm256_fmadd_ps(y, _mm256_set1_ps(-3.77489497744594108e-8f), x);
  const __m256i four = _mm256_set1_epi32(4);
  sign_sin = _mm256_xor_si256(sign_sin, _mm256_cmpeq_epi32(_mm256_and_si256(emm2, four), four));
  const __m256i sign_cos =
      _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_sub_epi32(emm2, _mm256_set1_epi32(2)), four), four);
  const __m256 z = _mm256_mul_ps(x, x);
  __m256 y1 = _mm256_fmadd_ps(z, _mm256_set1_ps(2.443315711809948e-5f), _mm256_set1_ps(-1.388731625493765e-3f));
  __m256 y2 = _mm256_fmadd_ps(z, _mm256_set1_ps(-1.9515295891e-4f), _mm256_set1_ps(8.3321608736e-3f));
  y1 = _mm256_fmadd_ps(y1, z, _mm256_set1_ps(4.166664568298827e-2f));
  y2 = _mm256_fmadd_ps(y2, z, _mm256_set1_ps(-1.6666654611e-1f));
  y1 = _mm256_mul_ps(y1, z);
  y2 = _mm256_mul_ps(y2, z);
  y1 = _mm256_mul_ps(y1, z);
  y2 = _mm256_fmadd_ps(x, y2, x);
  y1 = _mm256_fmadd_ps(z, _mm256_set1_ps(-0.5f), y1);
  y1 = _mm256_add_ps(y1, _mm256_set1_ps(1.0f));
  const __m256 poly = _mm256_castsi256_ps(poly_mask);
  if constexpr (Sine) {
    const __m256 ys = _mm256_blendv_ps(y2, y1, poly);
    return _mm256_blendv_ps(ys, _mm256_xor_ps(ys, sign_bit), _mm256_castsi256_ps(sign_sin));
  } else {
    const __m256 yc = _mm256_blendv_ps(y1, y2, poly);
    return _mm256_blendv_ps(_mm256_xor_ps(yc, sign_bit), yc, _mm256_castsi256_ps(sign_cos));
  }
}

// cos and sin of `count` angles: eight lanes at a time where every lane is within MLX's polynomial
// range, else (and for the tail) MLX's own scalar functions.
__attribute__((target("avx2,fma"))) void cosines_and_sines(const float *theta, size_t count, float *cosines,
                                                           float *sines) {
  size_t index = 0;
  const __m256 limit = _mm256_set1_ps(8388608.0f);
  for (; index + 8 <= count; index += 8) {
    const __m256 angles = _mm256_loadu_ps(theta + index);
    const __m256 magnitude = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), angles);
    // NaN lanes (unordered) also go the scalar way.
    if (_mm256_movemask_ps(_mm256_cmp_ps(magnitude, limit, _CMP_NLE_UQ)) != 0) break;
    _mm256_storeu_ps(cosines + index, mlx_sincos<false>(angles));
    _mm256_storeu_ps(sines + index, mlx_sincos<true>(angles));
  }
  for (; index < count; index++) {
    const mx::simd::Simd<float, 1> angle(theta[index]);
    cosines[index] = mx::simd::cos(angle).value;
    sines[index] = mx::simd::sin(angle).value;
  }
}

// One row of a head: `x` read with `stride` between dimensions, `out` contiguous.
void rotate_row(const float *x, int64_t stride, const float *cosines, const float *sines, int dims, int size,
                bool traditional, float *out) {
  const int half = dims / 2;
  for (int index = 0; index < half; index++) {
    const int first = traditional ? 2 * index : index;
    const int second = traditional ? 2 * index + 1 : index + half;
    const float x1 = x[first * stride], x2 = x[second * stride], cosine = cosines[index], sine = sines[index];
    out[first] = x1 * cosine - x2 * sine;
    out[second] = x1 * sine + x2 * cosine;
  }
  for (int index = dims; index < size; index++) out[index] = x[index * stride];
}

class Rope : public mx::UnaryPrimitive {
 public:
  Rope(mx::Stream stream, int dims, bool traditional, float scale)
      : mx::UnaryPrimitive(stream), dims_(dims), traditional_(traditional), scale_(scale) {}

  void eval_cpu(const std::vector<mx::array> &inputs, mx::array &out) override {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto &encoder = mx::cpu::get_command_encoder(stream());
    for (const auto &input : inputs) encoder.set_input_array(input);
    encoder.set_output_array(out);
    const mx::array x = inputs[0], offset = inputs[1], inverse = inputs[2];
    float *result = out.data<float>();
    const int dims = dims_;
    const bool traditional = traditional_;
    const float scale = scale_;
    encoder.dispatch([x, offset, inverse, dims, traditional, scale, result]() {
      if (x.size() == 0) return;
      std::vector<float> x_copy, inverse_copy;
      std::vector<int32_t> offset_copy;
      const int32_t *offsets = row_major<int32_t>(offset, offset_copy);
      const float *inverse_frequencies = row_major_floats(inverse, inverse_copy);
      const int size = x.shape(-1);
      const size_t steps = static_cast<size_t>(x.shape(-2)), batch = static_cast<size_t>(x.shape(0));
      const size_t heads = x.size() / (batch * steps * static_cast<size_t>(size));
      // Four axes (what attention passes, often transposed) are read in place through their strides.
      const bool in_place = x.ndim() == 4;
      const float *values = in_place ? x.data<float>() : row_major_floats(x, x_copy);
      const int64_t entry_stride = in_place ? x.strides()[0] : static_cast<int64_t>(heads * steps) * size;
      const int64_t head_stride = in_place ? x.strides()[1] : static_cast<int64_t>(steps) * size;
      const int64_t step_stride = in_place ? x.strides()[2] : size;
      const int64_t dimension_stride = in_place ? x.strides()[3] : 1;
      const size_t half = static_cast<size_t>(dims / 2);
      std::vector<float> cosines(steps * half), sines(steps * half), angles(half);
      for (size_t entry = 0; entry < batch; entry++) {
        const float start = static_cast<float>(offsets[offset.size() == 1 ? 0 : entry]);
        for (size_t step = 0; step < steps; step++) {
          const float position = (static_cast<float>(step) + start) * scale;
          for (size_t index = 0; index < half; index++) angles[index] = position * inverse_frequencies[index];
          cosines_and_sines(angles.data(), half, cosines.data() + step * half, sines.data() + step * half);
        }
        for (size_t head = 0; head < heads; head++) {
          for (size_t step = 0; step < steps; step++) {
            const float *row = values + static_cast<int64_t>(entry) * entry_stride +
                               static_cast<int64_t>(head) * head_stride + static_cast<int64_t>(step) * step_stride;
            float *out_row = result + ((entry * heads + head) * steps + step) * static_cast<size_t>(size);
            rotate_row(row, dimension_stride, cosines.data() + step * half, sines.data() + step * half, dims, size,
                       traditional, out_row);
          }
        }
      }
    });
  }

  void eval_gpu(const std::vector<mx::array> &, mx::array &) override {
    throw std::runtime_error("strata's fused rope runs on the CPU only");
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array> &inputs) override { return {inputs[0].shape()}; }
  const char *name() const override { return "StrataRope"; }
  bool is_equivalent(const mx::Primitive &other) const override {
    const auto &rope = static_cast<const Rope &>(other);
    return rope.dims_ == dims_ && rope.traditional_ == traditional_ && rope.scale_ == scale_;
  }

 private:
  int dims_;
  bool traditional_;
  float scale_;
};

mx::array rope(const mx::array &x, const mx::array &offset, const mx::array &inverse_frequencies, int dims,
               bool traditional, float scale) {
  if (x.dtype() != mx::float32 || inverse_frequencies.dtype() != mx::float32)
    throw std::invalid_argument("rope: x and the inverse frequencies must be float32");
  if (x.ndim() < 3) throw std::invalid_argument("rope: x must have at least 3 dimensions");
  if (dims <= 0 || dims % 2 != 0 || dims > x.shape(-1))
    throw std::invalid_argument("rope: dims must be positive, even and at most x's last axis size");
  if (inverse_frequencies.ndim() != 1 || inverse_frequencies.shape(0) != dims / 2)
    throw std::invalid_argument("rope: the inverse frequencies must be a vector of dims / 2 values");
  if (offset.dtype() != mx::int32 || offset.ndim() > 1 || (offset.size() != 1 && offset.size() != static_cast<size_t>(x.shape(0))))
    throw std::invalid_argument("rope: the offset must be an int32 scalar or a vector of one per entry of x's first axis");
  return mx::array(x.shape(), mx::float32,
                   std::make_shared<Rope>(mx::default_stream(mx::Device::cpu), dims, traditional, scale),
                   {x, offset, inverse_frequencies});
}

// The fallback's default inverse frequencies, exp(arange(0, -dims / 2, -1) * (log(base) / (dims / 2))),
// with the same float arithmetic and MLX's own ops.
mx::array rope_inverse_frequencies(int dims, float base) {
  if (dims <= 0 || dims % 2 != 0) throw std::invalid_argument("rope_inverse_frequencies: dims must be positive and even");
  const int half = dims / 2;
  const mx::Stream stream = mx::default_stream(mx::Device::cpu);
  return mx::exp(mx::multiply(mx::arange(0.0, static_cast<double>(-half), -1.0, mx::float32, stream),
                              mx::array(std::log(base) / half, mx::float32), stream),
                 stream);
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
  module.def("rope", &rope, nb::arg("x"), nb::arg("offset"), nb::arg("inverse_frequencies"), nb::arg("dims"),
             nb::arg("traditional"), nb::arg("scale"),
             "mx.fast.rope(x, dims, ...) forward as MLX's CPU fallback computes it, float32, bitwise, in one op");
  module.def("rope_inverse_frequencies", &rope_inverse_frequencies, nb::arg("dims"), nb::arg("base"),
             "the inverse frequencies mx.fast.rope's CPU fallback computes from base, by MLX's ops");
  module.def("fused_ops_available", &cpu_runs_fused_ops, "whether this CPU runs the fused ops (AVX2, FMA)");
}
