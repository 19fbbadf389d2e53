// The same arithmetic with AVX-512: two output columns per zmm, panels at batch, codes by group.
// Part of float16_linear.cpp (its only includer, inside its `#if` for x86-64 GCC/clang): the tiles
// every product element goes through. Split out by responsibility; the arithmetic is documented there.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "tiles_avx2.h"

namespace {

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

// A tile's sums into the output: each half of a pair summed by lane_sum, then `+ bias` where there is one.
template <int ROWS, int PAIRS>
WIDE_KERNEL_INLINE void store_pairs(const Product &p, const __m512 (&sums)[ROWS][PAIRS], int row, int column) {
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
  store_pairs<ROWS, PAIRS>(p, sums, row, column);
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
  store_pairs<ROWS, PAIRS>(p, sums, row, column);
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

}  // namespace
