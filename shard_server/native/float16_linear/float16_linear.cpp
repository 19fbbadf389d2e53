// A linear layer whose weights are held as float16 and computed with in float32 (an MLX primitive).
//
// out = x * W^T (+ bias), x float32 (..., K), W float16 (N, K), out float32 (..., N). Each weight is
// widened to float32 in registers (`vcvtph2ps`, exact) and every output element then sees exactly the
// arithmetic of the BLAS shim's A * W^T kernel (services/platform/native/strata_blas.c): eight lanes
// accumulated with FMA over K in order, the K % 8 tail as lanes of zeros, the lanes summed in the
// same fixed tree, then `dot + bias` (the shim's `alpha * dot + beta * c` with alpha = beta = 1, as
// MLX's addmm calls it). So a layer whose float32 weights are all float16 values gives bitwise the
// float32 path's output from half the bytes; the shard checks that at load (float16_weights.py).
//
// The kernel needs x86-64 with AVX2, FMA and F16C (checked at run time); elsewhere `kernel_available()`
// is false and shards keep float32 weights. Output columns are shared among as many threads as the
// preloaded OpenBLAS is set to use (the shard's one thread control); which thread computes an element
// never changes it.
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
#include <system_error>
#include <thread>
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
  const uint16_t *w;  // float16 bits, columns x k
  const float *bias;  // columns values, or null
  float *c;           // rows x columns
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

KERNEL void widen_block(const uint16_t *w, int k_size, int columns, float *scratch) {
  for (int q = 0; q < columns; q++) {
    const uint16_t *row = w + static_cast<size_t>(q) * k_size;
    float *into = scratch + static_cast<size_t>(q) * k_size;
    int k = 0;
    for (; k + 8 <= k_size; k += 8) _mm256_storeu_ps(into + k, widen(row + k));
    for (; k < k_size; k++) into[k] = _cvtsh_ss(row[k]);
  }
}

KERNEL void columns_of(const Product &p, int first, int last) {
  const int lanes = p.k % 8;
  const __m256i tail = _mm256_setr_epi32(lanes > 0 ? -1 : 0, lanes > 1 ? -1 : 0, lanes > 2 ? -1 : 0,
                                         lanes > 3 ? -1 : 0, lanes > 4 ? -1 : 0, lanes > 5 ? -1 : 0,
                                         lanes > 6 ? -1 : 0, 0);
  thread_local std::vector<float> scratch;
  for (int row_start = 0; row_start < p.rows; row_start += kRowBlock) {
    const int row_end = row_start + kRowBlock < p.rows ? row_start + kRowBlock : p.rows;
    const bool widen_once = row_end - row_start >= kWideningRows;
    for (int j = first; j < last;) {
      const int columns = last - j >= 4 ? 4 : 1;
      const uint16_t *w = p.w + static_cast<size_t>(j) * p.k;
      if (widen_once) {
        scratch.resize(static_cast<size_t>(4) * p.k);
        widen_block(w, p.k, columns, scratch.data());
        const WideRows wide{scratch.data(), p.k};
        // 3 x 4 as the shim: weights come from memory operands, 12 accumulators fit the registers.
        if (columns == 4) row_tiles<4, 3>(p, wide, row_start, row_end, j, tail);
        else row_tiles<1, 4>(p, wide, row_start, row_end, j, tail);
      } else {
        const HalfRows half{w, p.k};
        // Widened weights live in registers: 4 columns x 2 rows keep accumulators and weights in 16.
        if (columns == 4) row_tiles<4, 2>(p, half, row_start, row_end, j, tail);
        else row_tiles<1, 4>(p, half, row_start, row_end, j, tail);
      }
      j += columns;
    }
  }
}

bool cpu_supports_kernel() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
#else
void columns_of(const Product &, int, int) { throw std::runtime_error("the float16 linear kernel needs x86-64"); }
bool cpu_supports_kernel() { return false; }
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

class ColumnPool {
 public:
  void run(const Product &p) {
    const long work = static_cast<long>(p.rows) * p.columns * p.k;
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

class Float16Linear : public mx::UnaryPrimitive {
 public:
  explicit Float16Linear(mx::Stream stream) : mx::UnaryPrimitive(stream) {}

  void eval_cpu(const std::vector<mx::array> &inputs, mx::array &out) override {
    const mx::array &x = inputs[0];
    const mx::array &w = inputs[1];
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto &encoder = mx::cpu::get_command_encoder(stream());
    for (const auto &input : inputs) encoder.set_input_array(input);
    encoder.set_output_array(out);
    struct Operand {
      const void *base;
      bool contiguous;
      mx::Shape shape;
      mx::Strides strides;
    };
    auto operand = [](const mx::array &a) {
      return Operand{a.data<void>(), static_cast<bool>(a.flags().row_contiguous), a.shape(), a.strides()};
    };
    const bool has_bias = inputs.size() > 2;
    Operand values = operand(x), weight = operand(w), bias = has_bias ? operand(inputs[2]) : Operand{};
    const int k = static_cast<int>(w.shape(1));
    const int columns = static_cast<int>(w.shape(0));
    const int rows = static_cast<int>(x.size() / static_cast<size_t>(k));
    float *result = out.data<float>();
    encoder.dispatch([=]() {
      if (rows <= 0 || columns <= 0) return;
      std::vector<float> values_copy, bias_copy;
      std::vector<uint16_t> weight_copy;
      Product product{
          rows,
          columns,
          k,
          row_major(static_cast<const float *>(values.base), values.contiguous, values.shape, values.strides,
                    values_copy),
          row_major(static_cast<const uint16_t *>(weight.base), weight.contiguous, weight.shape, weight.strides,
                    weight_copy),
          has_bias ? row_major(static_cast<const float *>(bias.base), bias.contiguous, bias.shape, bias.strides,
                               bias_copy)
                   : nullptr,
          result};
      pool().run(product);
    });
  }

  void eval_gpu(const std::vector<mx::array> &, mx::array &) override {
    throw std::runtime_error("float16_linear runs on the CPU only");
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array> &inputs) override {
    mx::Shape shape = inputs[0].shape();
    shape.back() = inputs[1].shape(0);
    return {shape};
  }

  const char *name() const override { return "Float16Linear"; }
  bool is_equivalent(const mx::Primitive &) const override { return true; }
};

mx::array float16_linear(const mx::array &x, const mx::array &weight, const std::optional<mx::array> &bias) {
  if (x.dtype() != mx::float32) throw std::invalid_argument("float16_linear: x must be float32");
  if (weight.dtype() != mx::float16 || weight.ndim() != 2)
    throw std::invalid_argument("float16_linear: the weight must be a float16 (out, in) matrix");
  if (x.ndim() < 1 || x.shape(-1) != weight.shape(1))
    throw std::invalid_argument("float16_linear: x's last axis must match the weight's input size");
  if (bias.has_value() && (bias->dtype() != mx::float32 || bias->ndim() != 1 || bias->shape(0) != weight.shape(0)))
    throw std::invalid_argument("float16_linear: the bias must be float32 with one value per output");
  mx::Stream stream = mx::default_stream(mx::Device::cpu);
  mx::Shape shape = x.shape();
  shape.back() = weight.shape(0);
  // One graph node: no contiguous() nodes around it (an op costs ~8 us, a decode row's product ~30 us);
  // an input that is not row-contiguous is copied inside the task.
  std::vector<mx::array> inputs = {x, weight};
  if (bias.has_value()) inputs.push_back(*bias);
  return mx::array(shape, mx::float32, std::make_shared<Float16Linear>(stream), std::move(inputs));
}

}  // namespace

NB_MODULE(strata_float16_linear, module) {
  module.doc() = "x * W^T with float16 weights, computed as strata's float32 BLAS kernel computes it";
  nb::module_::import_("mlx.core");
  module.def("float16_linear", &float16_linear, nb::arg("x"), nb::arg("weight"), nb::arg("bias") = nb::none(),
             "float32 x (..., K) times float16 weight (N, K) transposed, plus an optional float32 bias (N)");
  module.def("kernel_available", &cpu_supports_kernel, "whether this CPU runs the kernel (AVX2, FMA, F16C)");
}
