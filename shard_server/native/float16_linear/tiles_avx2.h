// The float16/codes product's AVX2 tiles (eight FMA lanes over K, the shim's sum tree).
// Part of float16_linear.cpp (its only includer, inside its `#if` for x86-64 GCC/clang): the tiles
// every product element goes through. Split out by responsibility; the arithmetic is documented there.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "product.h"

namespace {

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

}  // namespace
