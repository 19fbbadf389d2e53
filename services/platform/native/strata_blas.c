/* The BLAS that strata preloads under MLX (see services/fast_blas.py).
 *
 * MLX's CPU backend calls three CBLAS functions. Each is forwarded to OpenBLAS (PyPI's
 * scipy-openblas32, whose symbols carry a scipy_ prefix), except the one product that dominates a
 * transformer step: row-major C = alpha * A * W^T + beta * C, a linear layer (and the LM head, and
 * attention scores). For it, on x86-64 with AVX2 and FMA, strata computes each output element as one
 * dot product of a row of A with a row of W: eight lanes accumulated over K in order, then summed in
 * a fixed tree. That order depends on K only, never on how many rows share the call, how the call
 * is split over threads, or where the element falls in a tile: row results are batch-invariant by
 * construction, and W is read once per call straight from the model's weights. OpenBLAS instead
 * packs W into a buffer on every call, which costs as much as the product itself for the few rows
 * of a decode step.
 *
 * The output columns are shared among the threads OpenBLAS is set to use (openblas_set_num_threads
 * stays the one control); helper threads spin briefly between calls (yielding the core), then sleep.
 * The float16 linear extension computes its products on these same helpers (strata_parallel_columns),
 * so a step's products share one pool instead of two spinning against each other.
 * STRATA_SGEMM=openblas sends every call to OpenBLAS.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int blas_int;
void scipy_cblas_sgemm(int, int, int, blas_int, blas_int, blas_int, float, const float *, blas_int,
                       const float *, blas_int, float, float *, blas_int);
void scipy_cblas_dgemm(int, int, int, blas_int, blas_int, blas_int, double, const double *, blas_int,
                       const double *, blas_int, double, double *, blas_int);
void scipy_cblas_cgemm(int, int, int, blas_int, blas_int, blas_int, const void *, const void *, blas_int,
                       const void *, blas_int, const void *, void *, blas_int);
int scipy_openblas_get_num_threads(void);

enum { kRowMajor = 101, kNoTranspose = 111, kTranspose = 112 };

void cblas_dgemm(int order, int transa, int transb, blas_int m, blas_int n, blas_int k, double alpha,
                 const double *a, blas_int lda, const double *b, blas_int ldb, double beta, double *c, blas_int ldc) {
  scipy_cblas_dgemm(order, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void cblas_cgemm(int order, int transa, int transb, blas_int m, blas_int n, blas_int k, const void *alpha,
                 const void *a, blas_int lda, const void *b, blas_int ldb, const void *beta, void *c, blas_int ldc) {
  scipy_cblas_cgemm(order, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define STRATA_KERNEL 1
#define KERNEL __attribute__((target("avx2,fma")))

KERNEL static inline float lane_sum(__m256 v) {
  __m128 halves = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  __m128 pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
  return _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1)));
}

/* BLAS semantics: with beta == 0, C is written without being read (it may hold NaN). */
static inline void put(float *c, float alpha, float beta, float dot) {
  *c = beta == 0.0f ? alpha * dot : alpha * dot + beta * *c;
}

/* A ROWS x COLUMNS tile of C. Every element sees the same operations whatever the tile's shape. The
 * prefetch brings in the next tile's rows of W while this one computes. */
#define TILE(ROWS, COLUMNS)                                                                              \
  KERNEL static void tile_##ROWS##x##COLUMNS(int k_size, const float *a, int lda, const float *w, int ldw, \
                                             float *c, int ldc, float alpha, float beta, __m256i tail) {  \
    __m256 sums[ROWS][COLUMNS];                                                                          \
    for (int r = 0; r < ROWS; r++)                                                                       \
      for (int q = 0; q < COLUMNS; q++) sums[r][q] = _mm256_setzero_ps();                                \
    int k = 0;                                                                                           \
    for (; k + 8 <= k_size; k += 8) {                                                                    \
      __m256 weights[COLUMNS];                                                                           \
      for (int q = 0; q < COLUMNS; q++) {                                                                \
        weights[q] = _mm256_loadu_ps(w + (size_t)q * ldw + k);                                           \
        _mm_prefetch((const char *)(w + (size_t)(q + COLUMNS) * ldw + k), _MM_HINT_T0);                   \
      }                                                                                                  \
      for (int r = 0; r < ROWS; r++) {                                                                   \
        __m256 row = _mm256_loadu_ps(a + (size_t)r * lda + k);                                           \
        for (int q = 0; q < COLUMNS; q++) sums[r][q] = _mm256_fmadd_ps(row, weights[q], sums[r][q]);     \
      }                                                                                                  \
    }                                                                                                    \
    if (k < k_size) { /* masked loads read zeros past K: adding 0 * 0 leaves every lane as it was */     \
      __m256 weights[COLUMNS];                                                                           \
      for (int q = 0; q < COLUMNS; q++) weights[q] = _mm256_maskload_ps(w + (size_t)q * ldw + k, tail);  \
      for (int r = 0; r < ROWS; r++) {                                                                   \
        __m256 row = _mm256_maskload_ps(a + (size_t)r * lda + k, tail);                                  \
        for (int q = 0; q < COLUMNS; q++) sums[r][q] = _mm256_fmadd_ps(row, weights[q], sums[r][q]);     \
      }                                                                                                  \
    }                                                                                                    \
    for (int r = 0; r < ROWS; r++)                                                                       \
      for (int q = 0; q < COLUMNS; q++) put(c + (size_t)r * ldc + q, alpha, beta, lane_sum(sums[r][q]));  \
  }

TILE(3, 4)
TILE(2, 4)
TILE(1, 4)
TILE(3, 1)
TILE(2, 1)
TILE(1, 1)

typedef void (*tile_function)(int, const float *, int, const float *, int, float *, int, float, float, __m256i);

/* The same arithmetic with AVX-512: one zmm holds the eight lanes of two output columns (low half
 * column j, high half column j + 1) and the row of A is broadcast to both halves, so one 512-bit FMA
 * does the 8-lane step of two outputs; each half is then summed by the same lane_sum. An element's
 * operations are exactly the AVX2 tile's, so both paths give the same bits (tested). */
#define WIDE_KERNEL __attribute__((target("avx2,fma,avx512f,avx512dq,avx512vl")))

WIDE_KERNEL static inline __m512 column_pair(const float *w, size_t ldw, int k) {
  return _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(w + k)), _mm256_loadu_ps(w + ldw + k), 1);
}

WIDE_KERNEL static inline __m512 column_pair_tail(const float *w, size_t ldw, int k, __mmask8 tail) {
  return _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_maskz_loadu_ps(tail, w + k)),
                            _mm256_maskz_loadu_ps(tail, w + ldw + k), 1);
}

/* A ROWS x (2 * PAIRS) tile of C. */
#define WIDE_TILE(ROWS, PAIRS)                                                                             \
  WIDE_KERNEL static void wide_tile_##ROWS##x##PAIRS(int k_size, const float *a, int lda, const float *w,    \
                                                     int ldw, float *c, int ldc, float alpha, float beta,   \
                                                     __mmask8 tail) {                                       \
    __m512 sums[ROWS][PAIRS];                                                                              \
    for (int r = 0; r < ROWS; r++)                                                                         \
      for (int q = 0; q < PAIRS; q++) sums[r][q] = _mm512_setzero_ps();                                    \
    int k = 0;                                                                                             \
    for (; k + 8 <= k_size; k += 8) {                                                                      \
      __m512 weights[PAIRS];                                                                               \
      for (int q = 0; q < PAIRS; q++) {                                                                    \
        weights[q] = column_pair(w + (size_t)(2 * q) * ldw, (size_t)ldw, k);                               \
        _mm_prefetch((const char *)(w + (size_t)(2 * q + 2 * PAIRS) * ldw + k), _MM_HINT_T0);              \
        _mm_prefetch((const char *)(w + (size_t)(2 * q + 2 * PAIRS + 1) * ldw + k), _MM_HINT_T0);          \
      }                                                                                                    \
      for (int r = 0; r < ROWS; r++) {                                                                     \
        __m512 row = _mm512_broadcast_f32x8(_mm256_loadu_ps(a + (size_t)r * lda + k));                     \
        for (int q = 0; q < PAIRS; q++) sums[r][q] = _mm512_fmadd_ps(row, weights[q], sums[r][q]);         \
      }                                                                                                    \
    }                                                                                                      \
    if (k < k_size) { /* zeros past K, as the AVX2 tile's masked loads */                                  \
      __m512 weights[PAIRS];                                                                               \
      for (int q = 0; q < PAIRS; q++) weights[q] = column_pair_tail(w + (size_t)(2 * q) * ldw, (size_t)ldw, k, tail); \
      for (int r = 0; r < ROWS; r++) {                                                                     \
        __m512 row = _mm512_broadcast_f32x8(_mm256_maskz_loadu_ps(tail, a + (size_t)r * lda + k));         \
        for (int q = 0; q < PAIRS; q++) sums[r][q] = _mm512_fmadd_ps(row, weights[q], sums[r][q]);         \
      }                                                                                                    \
    }                                                                                                      \
    for (int r = 0; r < ROWS; r++)                                                                         \
      for (int q = 0; q < PAIRS; q++) {                                                                    \
        put(c + (size_t)r * ldc + 2 * q, alpha, beta, lane_sum(_mm512_castps512_ps256(sums[r][q])));       \
        put(c + (size_t)r * ldc + 2 * q + 1, alpha, beta, lane_sum(_mm512_extractf32x8_ps(sums[r][q], 1))); \
      }                                                                                                    \
  }

WIDE_TILE(6, 4)
WIDE_TILE(5, 4)
WIDE_TILE(4, 4)
WIDE_TILE(3, 4)
WIDE_TILE(2, 4)
WIDE_TILE(1, 4)
WIDE_TILE(6, 1)
WIDE_TILE(5, 1)
WIDE_TILE(4, 1)
WIDE_TILE(3, 1)
WIDE_TILE(2, 1)
WIDE_TILE(1, 1)

typedef void (*wide_tile_function)(int, const float *, int, const float *, int, float *, int, float, float, __mmask8);

#define ROW_BLOCK 48 /* rows of A kept in cache while a block of W streams past */

typedef struct {
  int m, k;
  float alpha, beta;
  const float *a, *w;
  int lda, ldw, ldc;
  float *c;
} product;

/* Columns in tiles of 8 (four pairs), then 2, then a last odd column with the AVX2 tile. */
WIDE_KERNEL static void wide_columns_of(const product *p, int first, int last) {
  int lanes = p->k % 8;
  __mmask8 wide_tail = (__mmask8)((1u << lanes) - 1u);
  __m256i tail = _mm256_setr_epi32(lanes > 0 ? -1 : 0, lanes > 1 ? -1 : 0, lanes > 2 ? -1 : 0, lanes > 3 ? -1 : 0,
                                   lanes > 4 ? -1 : 0, lanes > 5 ? -1 : 0, lanes > 6 ? -1 : 0, 0);
  static const wide_tile_function four[7] = {0, wide_tile_1x4, wide_tile_2x4, wide_tile_3x4,
                                             wide_tile_4x4, wide_tile_5x4, wide_tile_6x4};
  static const wide_tile_function one[7] = {0, wide_tile_1x1, wide_tile_2x1, wide_tile_3x1,
                                            wide_tile_4x1, wide_tile_5x1, wide_tile_6x1};
  static const tile_function single[4] = {0, tile_1x1, tile_2x1, tile_3x1};
  for (int row_start = 0; row_start < p->m; row_start += ROW_BLOCK) {
    int row_end = row_start + ROW_BLOCK < p->m ? row_start + ROW_BLOCK : p->m;
    for (int j = first; j < last;) {
      int columns = last - j >= 8 ? 8 : last - j >= 2 ? 2 : 1;
      int most_rows = columns == 1 ? 3 : 6;
      for (int i = row_start; i < row_end;) {
        int rows = row_end - i >= most_rows ? most_rows : row_end - i;
        const float *a = p->a + (size_t)i * p->lda, *w = p->w + (size_t)j * p->ldw;
        float *c = p->c + (size_t)i * p->ldc + j;
        if (columns == 1) single[rows](p->k, a, p->lda, w, p->ldw, c, p->ldc, p->alpha, p->beta, tail);
        else (columns == 8 ? four : one)[rows](p->k, a, p->lda, w, p->ldw, c, p->ldc, p->alpha, p->beta, wide_tail);
        i += rows;
      }
      j += columns;
    }
  }
}

KERNEL static void narrow_columns_of(const product *p, int first, int last) {
  int lanes = p->k % 8;
  __m256i tail = _mm256_setr_epi32(lanes > 0 ? -1 : 0, lanes > 1 ? -1 : 0, lanes > 2 ? -1 : 0, lanes > 3 ? -1 : 0,
                                   lanes > 4 ? -1 : 0, lanes > 5 ? -1 : 0, lanes > 6 ? -1 : 0, 0);
  static const tile_function wide[4] = {0, tile_1x4, tile_2x4, tile_3x4};
  static const tile_function narrow[4] = {0, tile_1x1, tile_2x1, tile_3x1};
  for (int row_start = 0; row_start < p->m; row_start += ROW_BLOCK) {
    int row_end = row_start + ROW_BLOCK < p->m ? row_start + ROW_BLOCK : p->m;
    for (int j = first; j < last;) {
      int columns = last - j >= 4 ? 4 : 1;
      const tile_function *tiles = columns == 4 ? wide : narrow;
      for (int i = row_start; i < row_end;) {
        int rows = row_end - i >= 3 ? 3 : row_end - i;
        tiles[rows](p->k, p->a + (size_t)i * p->lda, p->lda, p->w + (size_t)j * p->ldw, p->ldw,
                    p->c + (size_t)i * p->ldc + j, p->ldc, p->alpha, p->beta, tail);
        i += rows;
      }
      j += columns;
    }
  }
}

/* Which instructions compute: AVX-512 where the CPU has it, unless STRATA_KERNEL_ISA=avx2 (the
 * tests compare both); decided once per process. Both give the same bits. */
static int wide_kernel_chosen(void) {
  static int decided = -1;
  if (decided < 0) {
    const char *choice = getenv("STRATA_KERNEL_ISA");
    int forced_narrow = choice != NULL && strcmp(choice, "avx2") == 0;
    __builtin_cpu_init();
    decided = !forced_narrow && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
              __builtin_cpu_supports("avx512vl");
  }
  return decided;
}

static void columns_of(const product *p, int first, int last) {
  if (wide_kernel_chosen()) wide_columns_of(p, first, last);
  else narrow_columns_of(p, first, last);
}

/* --- the helper threads ---
 * A call is cut into chunks of output columns. The caller and any awake helper claim chunks one at
 * a time from `claim` (the call's number in the high half, the next chunk in the low half), so a
 * helper that wakes late costs nothing: the caller computes what nobody claimed. Which thread
 * computes a chunk never changes its results. */

#define MAX_THREADS 64
#define CHUNKS_PER_THREAD 4
#define SPIN_NANOSECONDS 200000 /* how long an idle helper spins (yielding) before it sleeps */
#define MIN_WORK_PER_THREAD (1 << 18) /* multiply-adds: below this a split costs more than it brings */
#define NO_CHUNK 0xffffffffULL     /* the low half once a call has ended */

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_wake = PTHREAD_COND_INITIALIZER;
static int pool_size;                        /* helpers started */
static int sleepers;                         /* guarded by pool_lock */
static _Atomic unsigned long long claim;     /* (call << 32) | next chunk */
static atomic_int chunks_done;
static unsigned long long calls;             /* the caller's count */
/* The open call: which columns function computes, on what (stable while the call is open). */
typedef void (*columns_function)(const void *context, int first, int last);
static columns_function current_columns_of;
static const void *current_context;
static int current_chunks;
static int current_columns;

static long nanoseconds(void) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return now.tv_sec * 1000000000L + now.tv_nsec;
}

/* Claims and computes chunks of call `call` until none is left. */
KERNEL static void compute_chunks(unsigned long long call) {
  for (;;) {
    unsigned long long seen = atomic_load_explicit(&claim, memory_order_acquire);
    unsigned long long chunk = seen & NO_CHUNK;
    if (seen >> 32 != call || chunk >= (unsigned long long)current_chunks) return;
    if (!atomic_compare_exchange_weak_explicit(&claim, &seen, seen + 1, memory_order_acq_rel, memory_order_acquire))
      continue;
    int groups = (current_columns + 3) / 4; /* chunks split on four-column boundaries */
    int first = (int)((long)groups * (long)chunk / current_chunks) * 4;
    int last = (int)((long)groups * (long)(chunk + 1) / current_chunks) * 4;
    if (last > current_columns) last = current_columns;
    if (first < last) current_columns_of(current_context, first, last);
    atomic_fetch_add_explicit(&chunks_done, 1, memory_order_acq_rel);
  }
}

/* OPENBLAS_THREAD_TIMEOUT (2^N cycles, as OpenBLAS reads it) shortens the spin the same way for both:
 * shards sharing a host set it so that idle threads leave the cores to the next shard at once. */
static long spin_nanoseconds(void) {
  const char *timeout = getenv("OPENBLAS_THREAD_TIMEOUT");
  int exponent = timeout != NULL ? atoi(timeout) : 0;
  if (exponent < 4 || exponent > 30) return SPIN_NANOSECONDS;
  return (1L << exponent) / 3; /* cycles at about 3 GHz */
}

static void *helper(void *argument) {
  (void)argument;
  long spin = spin_nanoseconds();
  unsigned long long served = atomic_load_explicit(&claim, memory_order_acquire) >> 32;
  for (;;) {
    unsigned long long call = atomic_load_explicit(&claim, memory_order_acquire) >> 32;
    long spin_until = nanoseconds() + spin;
    while (call == served && nanoseconds() < spin_until) {
      sched_yield(); /* spins, but lets the process's other threads have the core first */
      call = atomic_load_explicit(&claim, memory_order_acquire) >> 32;
    }
    if (call == served) {
      pthread_mutex_lock(&pool_lock);
      sleepers++;
      while ((call = atomic_load_explicit(&claim, memory_order_acquire) >> 32) == served)
        pthread_cond_wait(&pool_wake, &pool_lock);
      sleepers--;
      pthread_mutex_unlock(&pool_lock);
    }
    served = call;
    compute_chunks(call);
  }
  return NULL;
}

/* MLX runs its CPU work on one thread per stream; the lock keeps two callers from sharing the pool. */
static pthread_mutex_t caller_lock = PTHREAD_MUTEX_INITIALIZER;

static void forget_pool_after_fork(void) {
  /* A forked child has none of the helpers: it starts its own when it needs them. */
  pool_size = 0;
  sleepers = 0;
  pthread_mutex_init(&pool_lock, NULL);
  pthread_cond_init(&pool_wake, NULL);
  pthread_mutex_init(&caller_lock, NULL);
}

static void grow_pool(int helpers) {
  static int fork_handler_set;
  if (!fork_handler_set) {
    pthread_atfork(NULL, NULL, forget_pool_after_fork);
    fork_handler_set = 1;
  }
  while (pool_size < helpers) {
    pthread_t thread;
    pthread_attr_t attributes;
    pthread_attr_init(&attributes);
    pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED);
    int failed = pthread_create(&thread, &attributes, helper, NULL);
    pthread_attr_destroy(&attributes);
    if (failed) return; /* fewer helpers: the caller computes what they would have */
    pool_size++;
  }
}

/* Computes columns [0, n) of a call doing `work` multiply-adds, `columns_of(context, first, last)`
 * for chunks on four-column boundaries, shared among the threads OpenBLAS is set to use. Exported:
 * the float16 linear extension computes its products on these same helper threads, so one pool
 * (not one per library) spins between the calls of a step. */
void strata_parallel_columns(columns_function columns_of, const void *context, int n, long work) {
  int threads = scipy_openblas_get_num_threads();
  int parts = threads < 1 ? 1 : threads > MAX_THREADS ? MAX_THREADS : threads;
  while (parts > 1 && work / parts < MIN_WORK_PER_THREAD) parts--;
  int groups = (n + 3) / 4;
  if (parts <= 1 || groups < 2 || pthread_mutex_trylock(&caller_lock) != 0) {
    columns_of(context, 0, n);
    return;
  }
  grow_pool(parts - 1);
  current_columns_of = columns_of;
  current_context = context;
  current_columns = n;
  current_chunks = parts * CHUNKS_PER_THREAD < groups ? parts * CHUNKS_PER_THREAD : groups;
  atomic_store_explicit(&chunks_done, 0, memory_order_relaxed);
  unsigned long long call = ++calls;
  atomic_store_explicit(&claim, call << 32, memory_order_release);
  pthread_mutex_lock(&pool_lock);
  if (sleepers > 0) pthread_cond_broadcast(&pool_wake);
  pthread_mutex_unlock(&pool_lock);
  compute_chunks(call);
  while (atomic_load_explicit(&chunks_done, memory_order_acquire) < current_chunks) sched_yield();
  atomic_store_explicit(&claim, (call << 32) | NO_CHUNK, memory_order_release);
  pthread_mutex_unlock(&caller_lock);
}

static void product_columns(const void *context, int first, int last) {
  columns_of((const product *)context, first, last);
}

static void product_nt(const product *p, int n) {
  strata_parallel_columns(product_columns, p, n, (long)p->m * n * p->k);
}

static int kernel_wanted(void) {
  static int decided = -1;
  if (decided < 0) {
    const char *choice = getenv("STRATA_SGEMM");
    int forced_off = choice != NULL && strcmp(choice, "openblas") == 0;
    __builtin_cpu_init();
    decided = !forced_off && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }
  return decided;
}
#endif

/* Which products the kernel takes depends on the call's layout only, never on its row count. */
void cblas_sgemm(int order, int transa, int transb, blas_int m, blas_int n, blas_int k, float alpha,
                 const float *a, blas_int lda, const float *b, blas_int ldb, float beta, float *c, blas_int ldc) {
#ifdef STRATA_KERNEL
  if (order == kRowMajor && transa == kNoTranspose && transb == kTranspose && k > 0 && kernel_wanted()) {
    if (m <= 0 || n <= 0) return;
    product p = {m, k, alpha, beta, a, b, lda, ldb, ldc, c};
    product_nt(&p, n);
    return;
  }
#endif
  scipy_cblas_sgemm(order, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

int strata_sgemm_kernel(void) {
#ifdef STRATA_KERNEL
  return kernel_wanted();
#else
  return 0;
#endif
}

/* The vector width the kernel computes with: 512 (AVX-512), 256 (AVX2), 0 (not strata's kernel). */
int strata_sgemm_kernel_width(void) {
#ifdef STRATA_KERNEL
  if (!kernel_wanted()) return 0;
  return wide_kernel_chosen() ? 512 : 256;
#else
  return 0;
#endif
}
