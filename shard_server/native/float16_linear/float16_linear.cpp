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

#include "product.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define STRATA_KERNEL 1
#include "tiles_avx2.h"
#include "tiles_avx512.h"
#endif

namespace {

#ifdef STRATA_KERNEL
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
