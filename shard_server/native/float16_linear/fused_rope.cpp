// RoPE in one MLX primitive, bitwise what MLX's CPU fallback of mx.fast.rope computes (fused_rope.py).
#include <nanobind/nanobind.h>

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

namespace {

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

void register_fused_rope(nb::module_ &module) {
  module.def("rope", &rope, nb::arg("x"), nb::arg("offset"), nb::arg("inverse_frequencies"), nb::arg("dims"),
             nb::arg("traditional"), nb::arg("scale"),
             "mx.fast.rope(x, dims, ...) forward as MLX's CPU fallback computes it, float32, bitwise, in one op");
  module.def("rope_inverse_frequencies", &rope_inverse_frequencies, nb::arg("dims"), nb::arg("base"),
             "the inverse frequencies mx.fast.rope's CPU fallback computes from base, by MLX's ops");
}
