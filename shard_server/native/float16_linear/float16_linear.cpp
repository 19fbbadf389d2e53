// A linear layer whose weights are held as float16 and computed with in float32 (an MLX primitive).
//
// out = x * W^T (+ bias), x float32 (..., K), W float16 (N, K), out float32 (..., N). Each weight is
// widened to float32 in registers (`vcvtph2ps`, exact) and every output element then sees exactly the
// arithmetic of the BLAS shim's A * W^T kernel (services/platform/native/strata_blas.c): eight lanes
// accumulated with FMA over K in order, the K % 8 tail as lanes of zeros, the lanes summed in the
// same fixed tree, then `dot + bias` (the shim's `alpha * dot + beta * c` with alpha = beta = 1, as
// MLX's addmm calls it). So a layer whose float32 weights are all float16 values gives bitwise the
// float32 path's output from half the bytes; the shard checks that at load (float16_weights.py).
// With AVX-512 and 4 or more rows, a block of 8 columns is widened once: its first row tile stores the
// widened weights into a small per-thread panel as it computes, the block's other row tiles read them
// from there, so many rows cost no more than float32's (which reads W as float32 from memory). Codes
// go a group at a time: 4-bit ones picked from per-group tables by one vpermt2ps per two columns.
//
// The kernel needs x86-64 with AVX2, FMA and F16C (checked at run time); elsewhere `kernel_available()`
// is false and shards keep float32 weights. Output columns are shared among as many threads as the
// preloaded OpenBLAS is set to use (the shard's one thread control), on the preloaded shim's helper
// threads where it exports them (one pool for both libraries; STRATA_KERNEL_POOL=own keeps this
// library's own); which thread computes an element never changes it.
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>

#include <dlfcn.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <type_traits>
#include <vector>

#include "mlx/backend/cpu/encoder.h"
#include "mlx/mlx.h"
#include "mlx/primitives.h"

namespace nb = nanobind;
namespace mx = mlx::core;

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

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
}  // namespace
#include <immintrin.h>
namespace {
#define STRATA_KERNEL 1
#define KERNEL __attribute__((target("avx2,fma,f16c")))
#define KERNEL_INLINE __attribute__((target("avx2,fma,f16c"), always_inline)) inline

KERNEL_INLINE float lane_sum(__m256 v) {
  __m128 halves = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  __m128 pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
  return _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1)));
}

KERNEL_INLINE __m256 widen(const uint16_t *w) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(w)));
}

// The last K % 8 weights of a row, zeros in the lanes past K (what the shim's masked load reads).
KERNEL_INLINE __m256 widen_tail(const uint16_t *w, int lanes) {
  alignas(16) uint16_t padded[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::memcpy(padded, w, sizeof(uint16_t) * static_cast<size_t>(lanes));
  return _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i *>(padded)));
}

// Where a tile's weights come from: float16 rows widened as they are loaded (one or a few rows of x),
// or float32 rows widened once into a scratch block and then read as the shim reads W (many rows of x,
// where widening per row tile would cost more than the product). Both give every element the same
// float32 values in the same operations.
struct HalfRows {
  const uint16_t *w;
  int stride;
  KERNEL_INLINE __m256 load(int q, int k) const { return widen(w + static_cast<size_t>(q) * stride + k); }
  KERNEL_INLINE __m256 tail(int q, int k, int lanes, __m256i) const { return widen_tail(w + static_cast<size_t>(q) * stride + k, lanes); }
  KERNEL_INLINE void prefetch(int q, int k) const {
    _mm_prefetch(reinterpret_cast<const char *>(w + static_cast<size_t>(q) * stride + k), _MM_HINT_T0);
  }
};

struct WideRows {
  const float *w;
  int stride;
  KERNEL_INLINE __m256 load(int q, int k) const { return _mm256_loadu_ps(w + static_cast<size_t>(q) * stride + k); }
  KERNEL_INLINE __m256 tail(int q, int k, int, __m256i mask) const {
    return _mm256_maskload_ps(w + static_cast<size_t>(q) * stride + k, mask);
  }
  KERNEL_INLINE void prefetch(int, int) const {}  // the scratch block is in cache already
};

// Weights rebuilt from their codes in registers, exactly as MLX's float16 dequantization computes
// them (float16(float16(scale * code) + bias): each product is exact in float32, then rounded to
// float16 as MLX rounds it; float32 holds a sum of two float16 values closely enough that rounding it
// to float16 gives float16 addition's result), then widened: the float32 weights the float32 path reads.
// K is a multiple of the group, and the group of 8, so there is no tail.
template <int BITS>
struct CodeRows {
  const uint32_t *codes;
  const uint16_t *scales, *biases;
  int words_per_row, groups_per_row, group;
  KERNEL_INLINE __m256 load(int q, int k) const {
    const uint32_t *row = codes + static_cast<size_t>(q) * words_per_row;
    __m256i values;
    if constexpr (BITS == 4) {
      const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
      values = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(row[k / 8])), shifts),
                                _mm256_set1_epi32(15));
    } else {
      values = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(row + k / 4)));
    }
    const size_t at = static_cast<size_t>(q) * groups_per_row + static_cast<size_t>(k / group);
    const __m256 scale = _mm256_set1_ps(_cvtsh_ss(scales[at]));
    const __m256 bias = _mm256_set1_ps(_cvtsh_ss(biases[at]));
    const __m256 scaled = _mm256_mul_ps(_mm256_cvtepi32_ps(values), scale);
    const __m256 rounded = _mm256_cvtph_ps(_mm256_cvtps_ph(scaled, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    return _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_add_ps(rounded, bias), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  KERNEL_INLINE __m256 tail(int, int, int, __m256i) const { return _mm256_setzero_ps(); }
  KERNEL_INLINE void prefetch(int q, int k) const {
    _mm_prefetch(reinterpret_cast<const char *>(codes + static_cast<size_t>(q) * words_per_row + k * BITS / 32),
                 _MM_HINT_T0);
  }
};

// A ROWS x COLUMNS tile of the output. Every element sees the same operations whatever the tile's
// shape: eight lanes of FMA over K in order, the tail as lanes of zeros, one fixed sum tree.
template <int ROWS, int COLUMNS, class Weights>
KERNEL void tile(const Product &p, const Weights &weights_of, int row, int column, __m256i tail) {
  const int k_size = p.k;
  const float *a = p.a + static_cast<size_t>(row) * k_size;
  __m256 sums[ROWS][COLUMNS];
  for (int r = 0; r < ROWS; r++)
    for (int q = 0; q < COLUMNS; q++) sums[r][q] = _mm256_setzero_ps();
  int k = 0;
  for (; k + 8 <= k_size; k += 8) {
    __m256 weights[COLUMNS];
    for (int q = 0; q < COLUMNS; q++) {
      weights[q] = weights_of.load(q, k);
      weights_of.prefetch(q + COLUMNS, k);
    }
    for (int r = 0; r < ROWS; r++) {
      __m256 values = _mm256_loadu_ps(a + static_cast<size_t>(r) * k_size + k);
      for (int q = 0; q < COLUMNS; q++) sums[r][q] = _mm256_fmadd_ps(values, weights[q], sums[r][q]);
    }
  }
  if (k < k_size) {
    __m256 weights[COLUMNS];
    for (int q = 0; q < COLUMNS; q++) weights[q] = weights_of.tail(q, k, k_size - k, tail);
    for (int r = 0; r < ROWS; r++) {
      __m256 values = _mm256_maskload_ps(a + static_cast<size_t>(r) * k_size + k, tail);
      for (int q = 0; q < COLUMNS; q++) sums[r][q] = _mm256_fmadd_ps(values, weights[q], sums[r][q]);
    }
  }
  for (int r = 0; r < ROWS; r++) {
    float *out = p.c + static_cast<size_t>(row + r) * p.columns + column;
    for (int q = 0; q < COLUMNS; q++) {
      float dot = lane_sum(sums[r][q]);
      out[q] = p.bias != nullptr ? dot + p.bias[column + q] : dot;
    }
  }
}

constexpr int kRowBlock = 48;   // rows of x kept in cache while a block of W streams past (as the shim)
constexpr int kWideningRows = 4;  // from this many rows on, a column block is widened once into scratch

// Rows [first_row, last_row) x columns [column, column + COLUMNS), tiles of up to TILE_ROWS rows.
template <int COLUMNS, int TILE_ROWS, class Weights>
KERNEL void row_tiles(const Product &p, const Weights &weights, int first_row, int last_row, int column, __m256i tail) {
  for (int i = first_row; i < last_row;) {
    const int rows = last_row - i >= TILE_ROWS ? TILE_ROWS : last_row - i;
    switch (rows) {
      case 4: tile<4, COLUMNS>(p, weights, i, column, tail); break;
      case 3: tile<3, COLUMNS>(p, weights, i, column, tail); break;
      case 2: tile<2, COLUMNS>(p, weights, i, column, tail); break;
      default: tile<1, COLUMNS>(p, weights, i, column, tail); break;
    }
    i += rows;
  }
}

// `columns` weight rows widened to float32 into scratch (the lanes past K as the tail loads them).
template <class Weights>
KERNEL void widen_block(const Weights &weights, int k_size, int columns, float *scratch, __m256i tail) {
  for (int q = 0; q < columns; q++) {
    float *into = scratch + static_cast<size_t>(q) * k_size;
    int k = 0;
    for (; k + 8 <= k_size; k += 8) _mm256_storeu_ps(into + k, weights.load(q, k));
    if (k < k_size) {
      alignas(32) float last[8];
      _mm256_store_ps(last, weights.tail(q, k, k_size - k, tail));
      std::memcpy(into + k, last, sizeof(float) * static_cast<size_t>(k_size - k));
    }
  }
}

// Columns [column, column + columns) of a row block.
template <class Weights>
KERNEL void column_block(const Product &p, const Weights &weights, int columns, int row_start, int row_end, int column,
                         __m256i tail) {
  if (row_end - row_start >= kWideningRows) {
    thread_local std::vector<float> scratch;
    scratch.resize(static_cast<size_t>(4) * p.k);
    widen_block(weights, p.k, columns, scratch.data(), tail);
    const WideRows wide{scratch.data(), p.k};
    // 3 x 4 as the shim: weights come from memory operands, 12 accumulators fit the registers.
    if (columns == 4) row_tiles<4, 3>(p, wide, row_start, row_end, column, tail);
    else row_tiles<1, 4>(p, wide, row_start, row_end, column, tail);
  } else {
    // Widened weights live in registers: 4 columns x 2 rows keep accumulators and weights in 16.
    if (columns == 4) row_tiles<4, 2>(p, weights, row_start, row_end, column, tail);
    else row_tiles<1, 4>(p, weights, row_start, row_end, column, tail);
  }
}

// --- the same arithmetic with AVX-512 ---
// One zmm holds the eight lanes of two output columns (low half column j, high half column j + 1) and
// the row of x is broadcast to both halves, so one 512-bit FMA does the 8-lane step of two outputs;
// each half is then summed by the same lane_sum. Every element sees exactly the AVX2 tile's
// operations on the same float32 weights, so both paths give the same bits (tested).
#define WIDE_KERNEL __attribute__((target("avx2,fma,f16c,avx512f,avx512dq,avx512vl,avx512bw")))
#define WIDE_KERNEL_INLINE __attribute__((target("avx2,fma,f16c,avx512f,avx512dq,avx512vl,avx512bw"), always_inline)) inline

WIDE_KERNEL_INLINE __m512 pair_of(__m256 low, __m256 high) {
  return _mm512_insertf32x8(_mm512_castps256_ps512(low), high, 1);
}

// Two float16 weight rows widened by one vcvtph2ps: what two 256-bit widenings give.
WIDE_KERNEL_INLINE __m512 pair_load(const HalfRows &weights, int q, int k) {
  const uint16_t *low = weights.w + static_cast<size_t>(q) * weights.stride + k;
  const __m128i first = _mm_loadu_si128(reinterpret_cast<const __m128i *>(low));
  const __m128i second = _mm_loadu_si128(reinterpret_cast<const __m128i *>(low + weights.stride));
  return _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(first), second, 1));
}

WIDE_KERNEL_INLINE __m512 pair_load(const WideRows &weights, int q, int k) {
  const float *low = weights.w + static_cast<size_t>(q) * weights.stride + k;
  return pair_of(_mm256_loadu_ps(low), _mm256_loadu_ps(low + weights.stride));
}

// The last K % 8 weights of two columns, zeros past K.
template <class Weights>
WIDE_KERNEL_INLINE __m512 pair_tail(const Weights &weights, int q, int k, int lanes, __m256i tail) {
  return pair_of(weights.tail(q, k, lanes, tail), weights.tail(q + 1, k, lanes, tail));
}

// A panel: a block's columns widened (or rebuilt) once to float32 for many rows of x, laid out as the
// tiles read them: per pair of columns and per step of 8 along K, the 16 values of one zmm (zeros past
// K). The first row tile of a block fills it as it computes (PanelFill: the weights' memory traffic
// overlaps that tile's FMAs), the block's other row tiles read it (Panel: one aligned load per pair).
struct Panel {
  const float *values;
  int steps;  // (K + 7) / 8
  WIDE_KERNEL_INLINE const float *at(int q, int k) const {
    return values + (static_cast<size_t>(q / 2) * steps + static_cast<size_t>(k / 8)) * 16;
  }
  KERNEL_INLINE void prefetch(int, int) const {}  // in L1 or L2 already
};

WIDE_KERNEL_INLINE __m512 pair_load(const Panel &panel, int q, int k) { return _mm512_load_ps(panel.at(q, k)); }
WIDE_KERNEL_INLINE __m512 pair_tail(const Panel &panel, int q, int k, int, __m256i) {
  return _mm512_load_ps(panel.at(q, k));
}

template <class Weights>
struct PanelFill {
  const Weights &source;
  float *values;
  int steps;
  WIDE_KERNEL_INLINE float *at(int q, int k) const {
    return values + (static_cast<size_t>(q / 2) * steps + static_cast<size_t>(k / 8)) * 16;
  }
  KERNEL_INLINE void prefetch(int q, int k) const { source.prefetch(q, k); }
};

template <class Weights>
WIDE_KERNEL_INLINE __m512 pair_load(const PanelFill<Weights> &fill, int q, int k) {
  const __m512 pair = pair_load(fill.source, q, k);
  _mm512_store_ps(fill.at(q, k), pair);
  return pair;
}

template <class Weights>
WIDE_KERNEL_INLINE __m512 pair_tail(const PanelFill<Weights> &fill, int q, int k, int lanes, __m256i tail) {
  const __m512 pair = pair_tail(fill.source, q, k, lanes, tail);
  _mm512_store_ps(fill.at(q, k), pair);
  return pair;
}

// Codes, two columns per zmm, one group at a time. 4-bit codes are picked from tables: for each group,
// the 16 weights each code of a column can stand for (float16(float16(scale * code) + bias) for code
// 0..15: CodeRows::load's operations on each value), one zmm per column; each step of 8 then picks a
// pair's 16 weights with one vpermt2ps (low half from the low column's table, high half from the
// other's), in place of two roundings per weight. 8-bit codes are rebuilt as pair_load rebuilds them,
// with each pair's scales and biases widened once per group. The same float32 weights as pair_load, so
// the same bits. A filling tile also stores each pair into the panel. K is a multiple of the group, so
// there is no tail.
template <class Weights>
struct CodeBits {
  static constexpr int value = 0;  // not codes
};
template <int BITS>
struct CodeBits<CodeRows<BITS>> {
  static constexpr int value = BITS;
};
template <int BITS>
struct CodeBits<PanelFill<CodeRows<BITS>>> {
  static constexpr int value = BITS;
};
template <class Weights>
constexpr bool kGroupedCodes = CodeBits<Weights>::value != 0;

template <int BITS>
WIDE_KERNEL_INLINE const CodeRows<BITS> &code_source(const CodeRows<BITS> &weights) { return weights; }
template <int BITS>
WIDE_KERNEL_INLINE const CodeRows<BITS> &code_source(const PanelFill<CodeRows<BITS>> &fill) { return fill.source; }
template <int BITS>
WIDE_KERNEL_INLINE void fill_panel(const CodeRows<BITS> &, int, int, __m512) {}
template <int BITS>
WIDE_KERNEL_INLINE void fill_panel(const PanelFill<CodeRows<BITS>> &fill, int q, int k, __m512 pair) {
  _mm512_store_ps(fill.at(q, k), pair);
}

// A float16 value widened into every lane (a broadcast load and one vcvtph2ps; widening is exact).
WIDE_KERNEL_INLINE __m512 widened_everywhere(const uint16_t *half) {
  return _mm512_cvtph_ps(_mm256_set1_epi16(static_cast<short>(*half)));
}

WIDE_KERNEL_INLINE __m512 code_table(__m512 codes, const uint16_t *scale, const uint16_t *bias) {
  const __m512 scaled = _mm512_mul_ps(codes, widened_everywhere(scale));
  const __m512 rounded = _mm512_cvtph_ps(_mm512_cvtps_ph(scaled, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  return _mm512_cvtph_ps(_mm512_cvtps_ph(_mm512_add_ps(rounded, widened_everywhere(bias)),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// Two float16 values widened, the first into the low half's lanes, the second into the high half's.
WIDE_KERNEL_INLINE __m512 widened_pair(const uint16_t *low, const uint16_t *high) {
  return _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi16(static_cast<short>(*low))),
                                                 _mm_set1_epi16(static_cast<short>(*high)), 1));
}

template <int ROWS, int PAIRS, class Weights>
WIDE_KERNEL void wide_code_tile(const Product &p, const Weights &weights_of, int row, int column) {
  constexpr int BITS = CodeBits<Weights>::value;
  const CodeRows<BITS> &codes = code_source(weights_of);
  const int k_size = p.k;
  const float *a = p.a + static_cast<size_t>(row) * k_size;
  const __m512 every_code = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i shifts = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
  const __m512i second_table = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 16, 16, 16, 16, 16, 16, 16, 16);
  const __m512i fifteen = _mm512_set1_epi32(15);
  __m512 sums[ROWS][PAIRS];
  for (int r = 0; r < ROWS; r++)
    for (int q = 0; q < PAIRS; q++) sums[r][q] = _mm512_setzero_ps();
  for (int start = 0; start < k_size; start += codes.group) {
    const size_t group = static_cast<size_t>(start / codes.group);
    // 4 bits: each column's table; 8 bits: each pair's scales and biases.
    __m512 low_tables[PAIRS], high_tables[PAIRS], pair_scales[PAIRS], pair_biases[PAIRS];
    for (int q = 0; q < PAIRS; q++) {
      const size_t at = static_cast<size_t>(2 * q) * codes.groups_per_row + group;
      const size_t next = at + static_cast<size_t>(codes.groups_per_row);
      if constexpr (BITS == 4) {
        low_tables[q] = code_table(every_code, codes.scales + at, codes.biases + at);
        high_tables[q] = code_table(every_code, codes.scales + next, codes.biases + next);
      } else {
        pair_scales[q] = widened_pair(codes.scales + at, codes.scales + next);
        pair_biases[q] = widened_pair(codes.biases + at, codes.biases + next);
      }
    }
    for (int k = start; k < start + codes.group; k += 8) {
      __m512 weights[PAIRS];
      for (int q = 0; q < PAIRS; q++) {
        const uint32_t *low = codes.codes + static_cast<size_t>(2 * q) * codes.words_per_row + k * BITS / 32;
        if constexpr (BITS == 4) {
          // The low column's word in the low half, the other's in the high half (two broadcast loads);
          // then (word >> 4 * lane) & 15, with 16 added in the high half (one ternary-logic op).
          const __m512i words = _mm512_mask_set1_epi32(_mm512_set1_epi32(static_cast<int>(*low)), 0xff00,
                                                       static_cast<int>(low[codes.words_per_row]));
          const __m512i picks =
              _mm512_ternarylogic_epi32(_mm512_srlv_epi32(words, shifts), fifteen, second_table, 0xea);
          weights[q] = _mm512_permutex2var_ps(low_tables[q], picks, high_tables[q]);
        } else {
          const __m512i values = _mm512_cvtepu8_epi32(
              _mm_unpacklo_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(low)),
                                 _mm_loadl_epi64(reinterpret_cast<const __m128i *>(low + codes.words_per_row))));
          const __m512 scaled = _mm512_mul_ps(_mm512_cvtepi32_ps(values), pair_scales[q]);
          const __m512 rounded =
              _mm512_cvtph_ps(_mm512_cvtps_ph(scaled, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
          weights[q] = _mm512_cvtph_ps(
              _mm512_cvtps_ph(_mm512_add_ps(rounded, pair_biases[q]), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        }
        fill_panel(weights_of, 2 * q, k, weights[q]);
        if ((k & (512 / BITS - 1)) == 0) {  // one prefetch per 64-byte line of the next block's codes
          codes.prefetch(2 * q + 2 * PAIRS, k);
          codes.prefetch(2 * q + 2 * PAIRS + 1, k);
        }
      }
      for (int r = 0; r < ROWS; r++) {
        const __m512 values = _mm512_broadcast_f32x8(_mm256_loadu_ps(a + static_cast<size_t>(r) * k_size + k));
        for (int q = 0; q < PAIRS; q++) sums[r][q] = _mm512_fmadd_ps(values, weights[q], sums[r][q]);
      }
    }
  }
  for (int r = 0; r < ROWS; r++) {
    float *out = p.c + static_cast<size_t>(row + r) * p.columns + column;
    for (int q = 0; q < PAIRS; q++) {
      const float low = lane_sum(_mm512_castps512_ps256(sums[r][q]));
      const float high = lane_sum(_mm512_extractf32x8_ps(sums[r][q], 1));
      out[2 * q] = p.bias != nullptr ? low + p.bias[column + 2 * q] : low;
      out[2 * q + 1] = p.bias != nullptr ? high + p.bias[column + 2 * q + 1] : high;
    }
  }
}

// A ROWS x (2 * PAIRS) tile of the output.
template <int ROWS, int PAIRS, class Weights>
WIDE_KERNEL void wide_tile(const Product &p, const Weights &weights_of, int row, int column, __m256i tail) {
  const int k_size = p.k;
  const float *a = p.a + static_cast<size_t>(row) * k_size;
  __m512 sums[ROWS][PAIRS];
  for (int r = 0; r < ROWS; r++)
    for (int q = 0; q < PAIRS; q++) sums[r][q] = _mm512_setzero_ps();
  int k = 0;
  for (; k + 8 <= k_size; k += 8) {
    __m512 weights[PAIRS];
    for (int q = 0; q < PAIRS; q++) {
      weights[q] = pair_load(weights_of, 2 * q, k);
      weights_of.prefetch(2 * q + 2 * PAIRS, k);
      weights_of.prefetch(2 * q + 2 * PAIRS + 1, k);
    }
    for (int r = 0; r < ROWS; r++) {
      const __m512 values = _mm512_broadcast_f32x8(_mm256_loadu_ps(a + static_cast<size_t>(r) * k_size + k));
      for (int q = 0; q < PAIRS; q++) sums[r][q] = _mm512_fmadd_ps(values, weights[q], sums[r][q]);
    }
  }
  if (k < k_size) {
    __m512 weights[PAIRS];
    for (int q = 0; q < PAIRS; q++) weights[q] = pair_tail(weights_of, 2 * q, k, k_size - k, tail);
    for (int r = 0; r < ROWS; r++) {
      const __m512 values = _mm512_broadcast_f32x8(_mm256_maskload_ps(a + static_cast<size_t>(r) * k_size + k, tail));
      for (int q = 0; q < PAIRS; q++) sums[r][q] = _mm512_fmadd_ps(values, weights[q], sums[r][q]);
    }
  }
  for (int r = 0; r < ROWS; r++) {
    float *out = p.c + static_cast<size_t>(row + r) * p.columns + column;
    for (int q = 0; q < PAIRS; q++) {
      const float low = lane_sum(_mm512_castps512_ps256(sums[r][q]));
      const float high = lane_sum(_mm512_extractf32x8_ps(sums[r][q], 1));
      out[2 * q] = p.bias != nullptr ? low + p.bias[column + 2 * q] : low;
      out[2 * q + 1] = p.bias != nullptr ? high + p.bias[column + 2 * q + 1] : high;
    }
  }
}

// Codes take the group tile, float16 weights and panels the step tile.
template <int ROWS, int PAIRS, class Weights>
WIDE_KERNEL_INLINE void wide_tile_of(const Product &p, const Weights &weights, int row, int column, __m256i tail) {
  if constexpr (kGroupedCodes<Weights>) wide_code_tile<ROWS, PAIRS>(p, weights, row, column);
  else wide_tile<ROWS, PAIRS>(p, weights, row, column, tail);
}

template <int PAIRS, int TILE_ROWS, class Weights>
WIDE_KERNEL void wide_row_tiles(const Product &p, const Weights &weights, int first_row, int last_row, int column,
                                __m256i tail) {
  for (int i = first_row; i < last_row;) {
    const int rows = last_row - i >= TILE_ROWS ? TILE_ROWS : last_row - i;
    switch (rows) {
      case 6: if constexpr (TILE_ROWS >= 6) wide_tile_of<6, PAIRS>(p, weights, i, column, tail); break;
      case 5: if constexpr (TILE_ROWS >= 5) wide_tile_of<5, PAIRS>(p, weights, i, column, tail); break;
      case 4: if constexpr (TILE_ROWS >= 4) wide_tile_of<4, PAIRS>(p, weights, i, column, tail); break;
      case 3: wide_tile_of<3, PAIRS>(p, weights, i, column, tail); break;
      case 2: wide_tile_of<2, PAIRS>(p, weights, i, column, tail); break;
      default: wide_tile_of<1, PAIRS>(p, weights, i, column, tail); break;
    }
    i += rows;
  }
}

// Columns [column, column + columns) of a row block: 8 columns (four pairs), 2, or a last odd one
// (the AVX2 tile).
template <class Weights>
WIDE_KERNEL void wide_column_block(const Product &p, const Weights &weights, int columns, int row_start, int row_end,
                                   int column, __m256i tail) {
  if (row_end - row_start >= kWideningRows && columns != 1) {
    // The first tile (6 rows) widens the block's weights from memory into the panel as it computes;
    // the other tiles (6 x 8: 24 accumulators, 4 weight pairs and the row in 32 registers) read it.
    thread_local std::vector<float> storage;
    const int steps = (p.k + 7) / 8;
    storage.resize(static_cast<size_t>(columns / 2) * steps * 16 + 16);
    float *values = reinterpret_cast<float *>((reinterpret_cast<uintptr_t>(storage.data()) + 63) & ~uintptr_t{63});
    // A codes tile fills with 4 rows: 6 rows' accumulators and the tables (or scales) exceed 32
    // registers (4 rows measured 0.89-0.98x the time of 3 at 4-32 rows).
    const int fill_rows = kGroupedCodes<Weights> ? 4 : 6;
    const int filled = row_end - row_start < fill_rows ? row_end - row_start : fill_rows;
    const PanelFill<Weights> fill{weights, values, steps};
    const Panel panel{values, steps};
    if (columns == 8) {
      wide_row_tiles<4, 6>(p, fill, row_start, row_start + filled, column, tail);
      wide_row_tiles<4, 6>(p, panel, row_start + filled, row_end, column, tail);
    } else {
      wide_row_tiles<1, 6>(p, fill, row_start, row_start + filled, column, tail);
      wide_row_tiles<1, 6>(p, panel, row_start + filled, row_end, column, tail);
    }
  } else if (row_end - row_start >= kWideningRows) {
    thread_local std::vector<float> scratch;
    scratch.resize(static_cast<size_t>(p.k));
    widen_block(weights, p.k, 1, scratch.data(), tail);
    row_tiles<1, 4>(p, WideRows{scratch.data(), p.k}, row_start, row_end, column, tail);
  } else {
    if (columns == 8) wide_row_tiles<4, 3>(p, weights, row_start, row_end, column, tail);
    else if (columns == 2) wide_row_tiles<1, 3>(p, weights, row_start, row_end, column, tail);
    else row_tiles<1, 4>(p, weights, row_start, row_end, column, tail);
  }
}

template <bool WIDE, class Weights>
KERNEL void block_of(const Product &p, const Weights &weights, int columns, int row_start, int row_end, int column,
                     __m256i tail) {
  if constexpr (WIDE) wide_column_block(p, weights, columns, row_start, row_end, column, tail);
  else column_block(p, weights, columns, row_start, row_end, column, tail);
}

// Columns [first, last) over every row block: in blocks of 8 columns with AVX-512 (WIDE; then 2, then
// a last odd one), of 4 with AVX2 (then 1). The AVX-512 blocks are calls to functions of their own
// target, so nothing of this function is compiled for AVX-512.
template <bool WIDE>
KERNEL void columns_with(const Product &p, int first, int last) {
  const int lanes = p.k % 8;
  const __m256i tail = _mm256_setr_epi32(lanes > 0 ? -1 : 0, lanes > 1 ? -1 : 0, lanes > 2 ? -1 : 0,
                                         lanes > 3 ? -1 : 0, lanes > 4 ? -1 : 0, lanes > 5 ? -1 : 0,
                                         lanes > 6 ? -1 : 0, 0);
  const int words_per_row = p.codes != nullptr ? p.k * p.bits / 32 : 0;
  const int groups_per_row = p.codes != nullptr ? p.k / p.group : 0;
  for (int row_start = 0; row_start < p.rows; row_start += kRowBlock) {
    const int row_end = row_start + kRowBlock < p.rows ? row_start + kRowBlock : p.rows;
    for (int j = first; j < last;) {
      int columns = last - j >= 4 ? 4 : 1;
      if constexpr (WIDE) columns = last - j >= 8 ? 8 : last - j >= 2 ? 2 : 1;
      if (p.codes == nullptr) {
        block_of<WIDE>(p, HalfRows{p.w + static_cast<size_t>(j) * p.k, p.k}, columns, row_start, row_end, j, tail);
      } else {
        const uint32_t *codes = p.codes + static_cast<size_t>(j) * words_per_row;
        const uint16_t *scales = p.scales + static_cast<size_t>(j) * groups_per_row;
        const uint16_t *biases = p.biases + static_cast<size_t>(j) * groups_per_row;
        if (p.bits == 4)
          block_of<WIDE>(p, CodeRows<4>{codes, scales, biases, words_per_row, groups_per_row, p.group}, columns,
                         row_start, row_end, j, tail);
        else
          block_of<WIDE>(p, CodeRows<8>{codes, scales, biases, words_per_row, groups_per_row, p.group}, columns,
                         row_start, row_end, j, tail);
      }
      j += columns;
    }
  }
}

// AVX-512 where the CPU has it, unless STRATA_KERNEL_ISA=avx2 (read as the shim reads it; the tests
// compare both); decided once per process. Both give the same bits.
bool wide_kernel_chosen() {
  static const bool chosen = [] {
    const char *choice = std::getenv("STRATA_KERNEL_ISA");
    __builtin_cpu_init();
    return !(choice != nullptr && std::strcmp(choice, "avx2") == 0) && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw");
  }();
  return chosen;
}

void columns_of(const Product &p, int first, int last) {
  if (wide_kernel_chosen()) columns_with<true>(p, first, last);
  else columns_with<false>(p, first, last);
}

bool cpu_supports_kernel() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
#else
void columns_of(const Product &, int, int) { throw std::runtime_error("the float16 linear kernel needs x86-64"); }
bool cpu_supports_kernel() { return false; }
bool wide_kernel_chosen() { return false; }
#endif

// --- helper threads ---
// A call is cut into chunks of output columns (on four-column boundaries). The caller and any awake
// helper claim chunks from one counter, so a helper that wakes late costs nothing: the caller
// computes what nobody claimed.

constexpr int kChunksPerThread = 4;
constexpr long kMinWorkPerThread = 1L << 18;  // multiply-adds: below this a split costs more than it brings

int blas_threads() {
  // The OpenBLAS behind the preloaded shim: the shard sets its thread count for every batch.
  using Getter = int (*)();
  static Getter getter = reinterpret_cast<Getter>(dlsym(RTLD_DEFAULT, "scipy_openblas_get_num_threads"));
  int threads = getter != nullptr ? getter() : 1;
  return threads < 1 ? 1 : threads > 64 ? 64 : threads;
}

std::chrono::nanoseconds spin_time() {
  // OPENBLAS_THREAD_TIMEOUT (2^N cycles), read as the shim reads it: shards sharing a host shorten it.
  const char *timeout = std::getenv("OPENBLAS_THREAD_TIMEOUT");
  int exponent = timeout != nullptr ? std::atoi(timeout) : 0;
  if (exponent < 4 || exponent > 30) return std::chrono::microseconds(200);
  return std::chrono::nanoseconds((1L << exponent) / 3);
}

// The preloaded shim's pool (strata_blas.c), when it has one: the products of both libraries then share
// one set of helper threads, not two pools spinning against each other between the calls of a step.
using SharedColumns = void (*)(void (*)(const void *, int, int), const void *, int, long);

SharedColumns shared_columns() {
  static const SharedColumns found = [] {
    const char *choice = std::getenv("STRATA_KERNEL_POOL");
    if (choice != nullptr && std::strcmp(choice, "own") == 0) return SharedColumns{nullptr};
    return reinterpret_cast<SharedColumns>(dlsym(RTLD_DEFAULT, "strata_parallel_columns"));
  }();
  return found;
}

class ColumnPool {
 public:
  void run(const Product &p) {
    const long work = static_cast<long>(p.rows) * p.columns * p.k;
    if (SharedColumns shared = shared_columns(); shared != nullptr) {
      // The same split: chunks on four-column boundaries, the same thread count and minimum work.
      shared([](const void *product, int first, int last) { columns_of(*static_cast<const Product *>(product), first, last); },
             &p, p.columns, work);
      return;
    }
    int parts = blas_threads();
    while (parts > 1 && work / parts < kMinWorkPerThread) parts--;
    const int groups = (p.columns + 3) / 4;
    std::unique_lock<std::mutex> caller(caller_lock_, std::try_to_lock);
    if (parts <= 1 || groups < 2 || !caller.owns_lock()) {
      columns_of(p, 0, p.columns);
      return;
    }
    grow(parts - 1);
    // Nobody reads these now: the claim's low half says the previous call has ended.
    current_ = p;
    groups_ = groups;
    chunks_ = parts * kChunksPerThread < groups ? parts * kChunksPerThread : groups;
    done_.store(0, std::memory_order_relaxed);
    const uint64_t call = ++calls_;
    claim_.store(call << 32, std::memory_order_release);
    {
      std::lock_guard<std::mutex> guard(lock_);
      if (sleepers_ > 0) wake_.notify_all();
    }
    compute_chunks(call);
    while (done_.load(std::memory_order_acquire) < chunks_) sched_yield();
    claim_.store((call << 32) | kNoChunk, std::memory_order_release);
  }

 private:
  static constexpr uint64_t kNoChunk = 0xffffffffULL;  // the claim's low half once a call has ended

  // Claims and computes chunks of call `call` until none is left (the shim's scheme).
  void compute_chunks(uint64_t call) {
    for (;;) {
      uint64_t seen = claim_.load(std::memory_order_acquire);
      const uint64_t chunk = seen & kNoChunk;
      if (seen >> 32 != call || chunk >= static_cast<uint64_t>(chunks_)) return;
      if (!claim_.compare_exchange_weak(seen, seen + 1, std::memory_order_acq_rel, std::memory_order_acquire))
        continue;
      const int first = static_cast<int>(static_cast<long>(groups_) * static_cast<long>(chunk) / chunks_) * 4;
      int last = static_cast<int>(static_cast<long>(groups_) * static_cast<long>(chunk + 1) / chunks_) * 4;
      if (last > current_.columns) last = current_.columns;
      if (first < last) columns_of(current_, first, last);
      done_.fetch_add(1, std::memory_order_acq_rel);
    }
  }

  void helper() {
    const auto spin = spin_time();
    uint64_t served = claim_.load(std::memory_order_acquire) >> 32;
    for (;;) {
      const auto until = std::chrono::steady_clock::now() + spin;
      uint64_t call = claim_.load(std::memory_order_acquire) >> 32;
      while (call == served && std::chrono::steady_clock::now() < until) {
        sched_yield();  // spins, but lets the process's other threads have the core first
        call = claim_.load(std::memory_order_acquire) >> 32;
      }
      if (call == served) {
        std::unique_lock<std::mutex> guard(lock_);
        sleepers_++;
        wake_.wait(guard, [&] { return (call = claim_.load(std::memory_order_acquire) >> 32) != served; });
        sleepers_--;
      }
      served = call;
      compute_chunks(call);
    }
  }

  void grow(int helpers) {
    while (started_ < helpers) {
      try {
        std::thread([this] { helper(); }).detach();
      } catch (const std::system_error &) {
        return;  // fewer helpers: the caller computes what they would have
      }
      started_++;
    }
  }

  std::mutex caller_lock_;  // MLX computes on one thread per stream; two callers never share the pool
  std::mutex lock_;         // guards sleepers_ and the wake-up
  std::condition_variable wake_;
  int sleepers_{0};
  int started_{0};
  std::atomic<uint64_t> claim_{kNoChunk};  // (call << 32) | next chunk
  std::atomic<int> done_{0};
  uint64_t calls_{0};
  Product current_{};
  int chunks_{0};
  int groups_{0};
};

ColumnPool &pool() {
  static ColumnPool *instance = new ColumnPool();  // never destroyed: detached helpers outlive exit
  return *instance;
}

// An input as row-major values: its own memory when row-contiguous, else a copy into `into`.
// Runs inside the dispatched task, when the input's values exist.
template <typename T>
const T *row_major(const T *base, bool contiguous, const mx::Shape &shape, const mx::Strides &strides,
                   std::vector<T> &into) {
  if (contiguous) return base;
  size_t count = 1;
  for (auto size : shape) count *= static_cast<size_t>(size);
  into.resize(count);
  std::vector<int64_t> index(shape.size(), 0);
  for (size_t element = 0; element < count; element++) {
    int64_t offset = 0;
    for (size_t axis = 0; axis < shape.size(); axis++) offset += index[axis] * strides[axis];
    into[element] = base[offset];
    for (size_t axis = shape.size(); axis-- > 0;) {
      if (++index[axis] < shape[axis]) break;
      index[axis] = 0;
    }
  }
  return into.data();
}

// Inputs: x, then the float16 weight (bits 0) or the codes, scales and biases (bits 4 or 8), then an
// optional float32 bias.
class CompactLinear : public mx::UnaryPrimitive {
 public:
  CompactLinear(mx::Stream stream, int group, int bits) : mx::UnaryPrimitive(stream), group_(group), bits_(bits) {}

  void eval_cpu(const std::vector<mx::array> &inputs, mx::array &out) override {
    const mx::array &x = inputs[0];
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto &encoder = mx::cpu::get_command_encoder(stream());
    for (const auto &input : inputs) encoder.set_input_array(input);
    encoder.set_output_array(out);
    struct Operand {
      const void *base = nullptr;
      bool contiguous = true;
      mx::Shape shape;
      mx::Strides strides;
    };
    auto operand = [](const mx::array &a) {
      return Operand{a.data<void>(), static_cast<bool>(a.flags().row_contiguous), a.shape(), a.strides()};
    };
    const size_t weight_inputs = bits_ == 0 ? 1 : 3;
    const bool has_bias = inputs.size() > 1 + weight_inputs;
    const Operand values = operand(x), first = operand(inputs[1]);
    const Operand scales = bits_ == 0 ? Operand{} : operand(inputs[2]);
    const Operand biases = bits_ == 0 ? Operand{} : operand(inputs[3]);
    const Operand bias = has_bias ? operand(inputs.back()) : Operand{};
    const int k = static_cast<int>(x.shape(-1));
    const int columns = static_cast<int>(inputs[1].shape(0));
    const int rows = static_cast<int>(x.size() / static_cast<size_t>(k));
    const int group = group_, bits = bits_;
    float *result = out.data<float>();
    encoder.dispatch([=]() {
      if (rows <= 0 || columns <= 0) return;
      std::vector<float> values_copy, bias_copy;
      std::vector<uint16_t> weight_copy, scales_copy, biases_copy;
      std::vector<uint32_t> codes_copy;
      auto floats = [](const Operand &o, std::vector<float> &into) {
        return row_major(static_cast<const float *>(o.base), o.contiguous, o.shape, o.strides, into);
      };
      auto halves = [](const Operand &o, std::vector<uint16_t> &into) {
        return row_major(static_cast<const uint16_t *>(o.base), o.contiguous, o.shape, o.strides, into);
      };
      Product product{rows, columns, k, floats(values, values_copy), nullptr,
                      has_bias ? floats(bias, bias_copy) : nullptr, result};
      if (bits == 0) {
        product.w = halves(first, weight_copy);
      } else {
        product.codes =
            row_major(static_cast<const uint32_t *>(first.base), first.contiguous, first.shape, first.strides, codes_copy);
        product.scales = halves(scales, scales_copy);
        product.biases = halves(biases, biases_copy);
        product.group = group;
        product.bits = bits;
      }
      pool().run(product);
    });
  }

  void eval_gpu(const std::vector<mx::array> &, mx::array &) override {
    throw std::runtime_error("strata's compact linear layers run on the CPU only");
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array> &inputs) override {
    mx::Shape shape = inputs[0].shape();
    shape.back() = inputs[1].shape(0);
    return {shape};
  }

  const char *name() const override { return bits_ == 0 ? "Float16Linear" : "QuantizedCodesLinear"; }
  bool is_equivalent(const mx::Primitive &other) const override {
    const auto &same = static_cast<const CompactLinear &>(other);
    return same.group_ == group_ && same.bits_ == bits_;
  }

 private:
  int group_, bits_;
};

void check_x_and_bias(const char *function, const mx::array &x, int inputs, int outputs,
                      const std::optional<mx::array> &bias) {
  const std::string name(function);
  if (x.dtype() != mx::float32) throw std::invalid_argument(name + ": x must be float32");
  if (x.ndim() < 1 || x.shape(-1) != inputs)
    throw std::invalid_argument(name + ": x's last axis must match the weight's input size");
  if (bias.has_value() && (bias->dtype() != mx::float32 || bias->ndim() != 1 || bias->shape(0) != outputs))
    throw std::invalid_argument(name + ": the bias must be float32 with one value per output");
}

mx::array compact_linear(const mx::array &x, std::vector<mx::array> inputs, int outputs, int group, int bits,
                         const std::optional<mx::array> &bias) {
  mx::Stream stream = mx::default_stream(mx::Device::cpu);
  mx::Shape shape = x.shape();
  shape.back() = outputs;
  // One graph node: no contiguous() nodes around it (an op costs ~8 us, a decode row's product ~30 us);
  // an input that is not row-contiguous is copied inside the task.
  inputs.insert(inputs.begin(), x);
  if (bias.has_value()) inputs.push_back(*bias);
  return mx::array(shape, mx::float32, std::make_shared<CompactLinear>(stream, group, bits), std::move(inputs));
}

mx::array float16_linear(const mx::array &x, const mx::array &weight, const std::optional<mx::array> &bias) {
  if (weight.dtype() != mx::float16 || weight.ndim() != 2)
    throw std::invalid_argument("float16_linear: the weight must be a float16 (out, in) matrix");
  check_x_and_bias("float16_linear", x, weight.shape(1), weight.shape(0), bias);
  return compact_linear(x, {weight}, weight.shape(0), 0, 0, bias);
}

mx::array quantized_codes_linear(const mx::array &x, const mx::array &codes, const mx::array &scales,
                                 const mx::array &biases, int group_size, int bits,
                                 const std::optional<mx::array> &bias) {
  if (bits != 4 && bits != 8) throw std::invalid_argument("quantized_codes_linear: bits must be 4 or 8");
  if (group_size <= 0 || group_size % 8 != 0)
    throw std::invalid_argument("quantized_codes_linear: the group size must be a positive multiple of 8");
  if (codes.dtype() != mx::uint32 || codes.ndim() != 2)
    throw std::invalid_argument("quantized_codes_linear: the codes must be a uint32 (out, in * bits / 32) matrix");
  const int outputs = codes.shape(0);
  const int inputs = codes.shape(1) * 32 / bits;
  for (const mx::array *part : {&scales, &biases})
    if (part->dtype() != mx::float16 || part->ndim() != 2 || part->shape(0) != outputs ||
        part->shape(1) * group_size != inputs)
      throw std::invalid_argument("quantized_codes_linear: scales and biases must be float16, one per group");
  check_x_and_bias("quantized_codes_linear", x, inputs, outputs, bias);
  return compact_linear(x, {codes, scales, biases}, outputs, group_size, bits, bias);
}

}  // namespace

void register_fused_ops(nb::module_ &module);  // fused_ops.cpp

NB_MODULE(strata_float16_linear, module) {
  module.doc() = "x * W^T with float16 weights, computed as strata's float32 BLAS kernel computes it";
  nb::module_::import_("mlx.core");
  module.def("float16_linear", &float16_linear, nb::arg("x"), nb::arg("weight"), nb::arg("bias") = nb::none(),
             "float32 x (..., K) times float16 weight (N, K) transposed, plus an optional float32 bias (N)");
  module.def("quantized_codes_linear", &quantized_codes_linear, nb::arg("x"), nb::arg("codes"), nb::arg("scales"),
             nb::arg("biases"), nb::arg("group_size"), nb::arg("bits"), nb::arg("bias") = nb::none(),
             "float32 x times the float32 weights MLX's float16 dequantization of these codes gives, transposed");
  module.def("kernel_available", &cpu_supports_kernel, "whether this CPU runs the kernel (AVX2, FMA, F16C)");
  module.def(
      "kernel_width", [] { return !cpu_supports_kernel() ? 0 : wide_kernel_chosen() ? 512 : 256; },
      "the vector width the kernel computes with: 512 (AVX-512), 256 (AVX2, or STRATA_KERNEL_ISA=avx2), 0 (none)");
  register_fused_ops(module);
}
