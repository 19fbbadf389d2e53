// Scaled dot-product attention for every request of a batched step, in one call.
//
// Each request attends over its own KV cache, so attention cannot share a matmul across requests
// without changing the reduction order. Run through MLX ops, a request costs ~9 ops per layer and
// each op's scheduling (~15 us) dwarfs its arithmetic. This routine performs, per request, exactly
// the arithmetic of MLX's CPU fallback for `mx.fast.scaled_dot_product_attention` (mlx/fast.cpp):
// the query times the scale; one `cblas_sgemm` per (kv head, repeat) for the scores, with MLX's
// arguments; the causal mask as `where(mask, scores, finfo.min)`; MLX's CPU softmax loop with its
// own SIMD `exp`; one `cblas_sgemm` per (kv head, repeat) for the output. `cblas_sgemm` resolves to
// the same BLAS MLX calls (the preloaded shim). The shard checks the result bitwise against MLX at
// load and falls back to MLX ops when it differs, so this file can never make a result inexact.
//
// Requests are independent, so several threads may each take whole requests (a request's arithmetic
// is the same on any thread): the shard passes the cores its BLAS may use, and the caller's thread
// works beside a small pool that sleeps between calls.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <limits>
#include <mutex>
#include <thread>
#include <vector>

#include "mlx/backend/cpu/simd/simd.h"

extern "C" void cblas_sgemm(int order, int transpose_a, int transpose_b, int m, int n, int k, float alpha,
                            const float* a, int lda, const float* b, int ldb, float beta, float* c, int ldc);

namespace {

constexpr int kRowMajor = 101;
constexpr int kNoTranspose = 111;
constexpr int kTranspose = 112;

using mlx::core::simd::Simd;

// MLX's CPU softmax over the last axis (mlx/backend/cpu/softmax.cpp, float in and float accumulate).
void softmax_rows(float* data, int rows, int length) {
  constexpr int N = mlx::core::simd::max_size<float>;
  for (int row = 0; row < rows; row++) {
    float* in = data + static_cast<int64_t>(row) * length;
    const float* current = in;
    Simd<float, N> vmaximum(-std::numeric_limits<float>::infinity());
    int remaining = length;
    while (remaining >= N) {
      Simd<float, N> values = mlx::core::simd::load<float, N>(current);
      vmaximum = mlx::core::simd::maximum(values, vmaximum);
      current += N;
      remaining -= N;
    }
    float maximum = mlx::core::simd::max(vmaximum);
    while (remaining-- > 0) {
      maximum = std::max(maximum, *current);
      current++;
    }
    Simd<float, N> vnormalizer(0.0);
    float* out = in;
    current = in;
    remaining = length;
    while (remaining >= N) {
      Simd<float, N> vexp = mlx::core::simd::load<float, N>(current);
      vexp = mlx::core::simd::exp(vexp - maximum);
      mlx::core::simd::store(out, vexp);
      vnormalizer = vnormalizer + vexp;
      current += N;
      out += N;
      remaining -= N;
    }
    float normalizer = mlx::core::simd::sum(vnormalizer);
    while (remaining-- > 0) {
      float value = std::exp(*current - maximum);
      *out = value;
      normalizer += value;
      current++;
      out++;
    }
    normalizer = 1 / normalizer;
    out = in;
    remaining = length;
    while (remaining >= N) {
      mlx::core::simd::store(out, Simd<float, N>(mlx::core::simd::load<float, N>(out) * normalizer));
      out += N;
      remaining -= N;
    }
    while (remaining-- > 0) {
      *out *= normalizer;
      out++;
    }
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
// The same softmax with every helper inlined and compiled for FMA and SSE4.1: MLX's `exp` calls
// `std::fma` and `std::floor`, which the x86-64 baseline makes library calls (most of a request's
// attention time); the instructions compute the same correctly rounded results.
__attribute__((target("fma,sse4.1"), flatten)) void softmax_rows_fma(float* data, int rows, int length) {
  softmax_rows(data, rows, length);
}

void softmax_rows_fastest(float* data, int rows, int length) {
  static const bool hardware = __builtin_cpu_supports("fma") && __builtin_cpu_supports("sse4.1");
  if (hardware) {
    softmax_rows_fma(data, rows, length);
  } else {
    softmax_rows(data, rows, length);
  }
}
#else
void softmax_rows_fastest(float* data, int rows, int length) { softmax_rows(data, rows, length); }
#endif

// Threads that take items of one job at a time; the calling thread takes items too. Created on
// first use and never destroyed (detached, asleep on a condition variable), so process exit never
// waits for them nor finds a joinable thread.
class WorkerPool {
 public:
  template <typename Work>
  void run(int threads, int items, Work& work) {
    std::lock_guard<std::mutex> one_job_at_a_time(run_mutex_);
    const int helpers = std::min(threads, items) - 1;
    if (helpers <= 0) {
      for (int item = 0; item < items; item++) {
        work(item);
      }
      return;
    }
    grow(helpers);
    std::atomic<int> next(0);
    auto take_items = [&]() {
      for (int item = next.fetch_add(1); item < items; item = next.fetch_add(1)) {
        work(item);
      }
    };
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = take_items;
      helpers_wanted_ = helpers;
      helpers_busy_ = helpers;
      generation_++;
    }
    wake_.notify_all();
    take_items();
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return helpers_busy_ == 0; });
    job_ = nullptr;
  }

 private:
  void grow(int helpers) {
    std::lock_guard<std::mutex> lock(mutex_);
    while (started_ < helpers) {
      const int index = started_++;
      std::thread([this, index] { serve(index); }).detach();
    }
  }

  void serve(int index) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (index >= helpers_wanted_) {
        continue;
      }
      std::function<void()> job = job_;
      lock.unlock();
      job();
      lock.lock();
      if (--helpers_busy_ == 0) {
        done_.notify_one();
      }
    }
  }

  std::mutex run_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  std::function<void()> job_;
  uint64_t generation_ = 0;
  int helpers_wanted_ = 0;
  int helpers_busy_ = 0;
  int started_ = 0;
};

WorkerPool& pool() {
  static WorkerPool* instance = new WorkerPool();  // never deleted: see WorkerPool
  return *instance;
}

struct Scratch {
  std::vector<float> scaled;
  std::vector<float> scores;
  std::vector<float> attended;
};

}  // namespace

extern "C" {

// queries: (rows, heads, head_dim) contiguous, after RoPE. output: the same shape.
// Request r owns rows [row_starts[r], row_starts[r] + row_counts[r]) and attends over key_counts[r]
// cached positions (its new rows included): keys[r] + head * key_head_strides[r] + position * head_dim.
// Where write_rows[r] is set, its new rows' keys and values (new_keys, new_values: (rows, kv_heads,
// head_dim) contiguous) are first copied into the last row_counts[r] of those positions: the KV cache
// update without an MLX op per request (the caller owns those buffers and the positions are unread).
// With group_heads, the query heads sharing a KV head go through one matmul of repeats * rows rows
// instead of one per head: equal only where the BLAS gives row results independent of the row count,
// which the shard checks at load before using it. `threads` threads (the caller's included) share the
// requests, each request wholly on one thread.
// Returns 0, or -1 when the arguments cannot be served (the caller then uses MLX ops).
int strata_request_attention(int request_count, const int32_t* row_starts, const int32_t* row_counts,
                             const int32_t* key_counts, float* const* keys, const int64_t* key_head_strides,
                             float* const* values, const int64_t* value_head_strides, const float* queries,
                             const float* new_keys, const float* new_values, const int32_t* write_rows,
                             float* output, int heads, int kv_heads, int head_dim, float scale, int group_heads,
                             int threads) {
  if (kv_heads <= 0 || heads % kv_heads != 0 || head_dim <= 0 || threads < 1) {
    return -1;
  }
  for (int request = 0; request < request_count; request++) {
    if (row_counts[request] <= 0 || key_counts[request] < row_counts[request]) {
      return -1;
    }
  }
  const int repeats = heads / kv_heads;
  auto attend = [&](int request) {
    thread_local Scratch scratch;
    std::vector<float>& scaled = scratch.scaled;
    std::vector<float>& scores = scratch.scores;
    std::vector<float>& attended = scratch.attended;
    const int length = row_counts[request];
    const int key_count = key_counts[request];
    const int start = row_starts[request];
    if (write_rows[request]) {
      for (int row = 0; row < length; row++) {
        const int64_t position = key_count - length + row;
        for (int kv_head = 0; kv_head < kv_heads; kv_head++) {
          const int64_t source = (static_cast<int64_t>(start + row) * kv_heads + kv_head) * head_dim;
          float* key_target = keys[request] + kv_head * key_head_strides[request] + position * head_dim;
          float* value_target = values[request] + kv_head * value_head_strides[request] + position * head_dim;
          std::copy(new_keys + source, new_keys + source + head_dim, key_target);
          std::copy(new_values + source, new_values + source + head_dim, value_target);
        }
      }
    }
    // q = scale * q, laid out (heads, length, head_dim) as the transposed query MLX multiplies.
    scaled.resize(static_cast<size_t>(heads) * length * head_dim);
    for (int head = 0; head < heads; head++) {
      for (int row = 0; row < length; row++) {
        const float* source = queries + (static_cast<int64_t>(start + row) * heads + head) * head_dim;
        float* target = scaled.data() + (static_cast<int64_t>(head) * length + row) * head_dim;
        for (int dim = 0; dim < head_dim; dim++) {
          target[dim] = scale * source[dim];
        }
      }
    }
    scores.resize(static_cast<size_t>(heads) * length * key_count);
    const int calls = group_heads ? kv_heads : heads;
    const int call_rows = group_heads ? repeats * length : length;
    for (int call = 0; call < calls; call++) {
      const int kv_head = group_heads ? call : call / repeats;
      cblas_sgemm(kRowMajor, kNoTranspose, kTranspose, call_rows, key_count, head_dim, 1.0f,
                  scaled.data() + static_cast<int64_t>(call) * call_rows * head_dim, head_dim,
                  keys[request] + kv_head * key_head_strides[request], head_dim, 0.0f,
                  scores.data() + static_cast<int64_t>(call) * call_rows * key_count, key_count);
    }
    if (length > 1) {
      // Causal: query row i sees positions [0, key_count - length + i].
      const float lowest = std::numeric_limits<float>::lowest();
      for (int head = 0; head < heads; head++) {
        for (int row = 0; row < length; row++) {
          float* line = scores.data() + (static_cast<int64_t>(head) * length + row) * key_count;
          for (int position = key_count - length + row + 1; position < key_count; position++) {
            line[position] = lowest;
          }
        }
      }
    }
    softmax_rows_fastest(scores.data(), heads * length, key_count);
    attended.resize(static_cast<size_t>(heads) * length * head_dim);
    for (int call = 0; call < calls; call++) {
      const int kv_head = group_heads ? call : call / repeats;
      cblas_sgemm(kRowMajor, kNoTranspose, kNoTranspose, call_rows, head_dim, key_count, 1.0f,
                  scores.data() + static_cast<int64_t>(call) * call_rows * key_count, key_count,
                  values[request] + kv_head * value_head_strides[request], head_dim, 0.0f,
                  attended.data() + static_cast<int64_t>(call) * call_rows * head_dim, head_dim);
    }
    for (int row = 0; row < length; row++) {
      for (int head = 0; head < heads; head++) {
        const float* source = attended.data() + (static_cast<int64_t>(head) * length + row) * head_dim;
        float* target = output + (static_cast<int64_t>(start + row) * heads + head) * head_dim;
        for (int dim = 0; dim < head_dim; dim++) {
          target[dim] = source[dim];
        }
      }
    }
  };
  pool().run(threads, request_count, attend);
  return 0;
}

}  // extern "C"
