/* Exact integer GEMM on DFXP codes with an explicit accumulator model (docs/datapath.md).
 *
 * The result of every output is defined sequentially: acc = init, then for k = 0..K-1
 * acc = sat_or_wrap(acc + a*b) to acc_bits bits. Computing it that way is slow, so:
 *
 * * wrap mode is arithmetic modulo 2^acc_bits, where summation order does not matter: the
 *   exact int64 sum S is computed by a fast kernel and wrapped once at the end;
 * * saturate mode uses the fast sum for every output row whose partial sums provably stay in
 *   range (|init| + min(L1(a_row) * max|B|, max|A| * L1(b_col)) <= 2^(acc_bits-1) - 1 for
 *   every output of the row: no partial sum in any order can then leave the range), and the
 *   sequential saturating loop (vectorised over n) for the other rows.
 *
 * Fast kernels, chosen at run time:
 * * AVX-512 VNNI (x86-64): operands packed into panels; int8 x int8 with vpdpbusd (u8 x s8:
 *   B is biased by +128 into u8, and 128 * rowsum(A) is subtracted at the end), any int16
 *   operand with vpdpwssd on A (int16) times B split into its high byte (b >> 8) and its low
 *   byte (b & 255), b = 256 * hi + lo. The int32 partial sums are flushed into int64 often
 *   enough that they can never overflow (bounds next to KC8 / KC16 below).
 * * portable C: int64 row accumulation the compiler vectorises.
 * Work is split over pthreads by column panels (VNNI) or rows (portable).
 *
 * The operand statistics (zeros, non-zero 4-bit slices, per-k sums for the MAC counts) are
 * computed in one pass over each operand in its storage layout, A and B on two threads.
 */
#define _POSIX_C_SOURCE 200809L
#include "gemm_api.h"
#include "gemm_scaled_api.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__) && \
    !defined(MT_NO_X86)
#define MT_HAVE_X86 1
#include <immintrin.h>
#define VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#define TARGET_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define TARGET_VBMI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi")))
#else
#define MT_HAVE_X86 0
#define VECTOR_CLONES
#endif

#define MAX_THREADS 16
#define DEFAULT_THREADS 2
/* Below this much int8 work per thread (a quarter of it for int16, whose kernel is 4x slower
 * per MAC), waking a second thread costs more than it saves (measured on the 2-core
 * development machine with a loaded neighbour). */
#define MIN_MACS_PER_THREAD ((int64_t)1 << 24)

/* ---------------------------------------------------------------- threads */

typedef void (*par_fn)(void *ctx, int tid, int nt);

typedef struct {
    par_fn fn;
    void *ctx;
    int tid, nt;
} par_job;

static void *par_thread(void *p)
{
    par_job *j = p;
    j->fn(j->ctx, j->tid, j->nt);
    return NULL;
}

/* Run fn(ctx, t, nt) for t = 0..nt-1, t > 0 on new threads (inline if one cannot start). */
static void run_spawned(par_fn fn, void *ctx, int nt)
{
    pthread_t th[MAX_THREADS];
    par_job jobs[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int t = 1; t < nt; t++) {
        jobs[t] = (par_job){fn, ctx, t, nt};
        started[t] = pthread_create(&th[t], NULL, par_thread, &jobs[t]) == 0;
    }
    fn(ctx, 0, nt);
    for (int t = 1; t < nt; t++) {
        if (started[t])
            pthread_join(th[t], NULL);
        else
            fn(ctx, t, nt);
    }
}

/* A pool of parked worker threads (tids 1..nworkers), started on first use and kept: waking
 * a parked thread costs far less than creating one, which matters for GEMMs of a fraction of
 * a millisecond. One caller owns the pool at a time; a concurrent caller spawns its own
 * threads. After fork() the child starts with an empty pool. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake, done;
    int nworkers, busy, pending, nt;
    unsigned long gen;
    par_fn fn;
    void *ctx;
} g_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER,
            0, 0, 0, 0, 0, NULL, NULL};
static unsigned long g_start_gen[MAX_THREADS];
static pthread_once_t g_pool_once = PTHREAD_ONCE_INIT;

static pthread_mutex_t g_scratch_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_scratch_busy;

static void pool_after_fork_child(void)
{
    pthread_mutex_init(&g_scratch_lock, NULL); /* the parent's holder does not exist here */
    g_scratch_busy = 0;
    pthread_mutex_init(&g_pool.lock, NULL);
    pthread_cond_init(&g_pool.wake, NULL);
    pthread_cond_init(&g_pool.done, NULL);
    g_pool.nworkers = g_pool.busy = g_pool.pending = 0;
}

static void pool_init_once(void) { pthread_atfork(NULL, NULL, pool_after_fork_child); }

static void *pool_worker(void *arg)
{
    int tid = (int)(intptr_t)arg;
    pthread_mutex_lock(&g_pool.lock);
    unsigned long seen = g_start_gen[tid];
    for (;;) {
        while (g_pool.gen == seen)
            pthread_cond_wait(&g_pool.wake, &g_pool.lock);
        seen = g_pool.gen;
        if (tid < g_pool.nt) {
            par_fn fn = g_pool.fn;
            void *ctx = g_pool.ctx;
            int nt = g_pool.nt;
            pthread_mutex_unlock(&g_pool.lock);
            fn(ctx, tid, nt);
            pthread_mutex_lock(&g_pool.lock);
            if (--g_pool.pending == 0)
                pthread_cond_signal(&g_pool.done);
        }
    }
    return NULL;
}

/* Run fn(ctx, t, nt) for t = 0..nt-1: t = 0 on the caller, the others on pool workers (or
 * inline on the caller when a worker cannot be started). */
static void run_parallel(par_fn fn, void *ctx, int nt)
{
    if (nt <= 1) {
        fn(ctx, 0, 1);
        return;
    }
    pthread_once(&g_pool_once, pool_init_once);
    pthread_mutex_lock(&g_pool.lock);
    if (g_pool.busy) {
        pthread_mutex_unlock(&g_pool.lock);
        run_spawned(fn, ctx, nt);
        return;
    }
    g_pool.busy = 1;
    while (g_pool.nworkers < nt - 1) {
        int t = g_pool.nworkers + 1;
        pthread_t th;
        pthread_attr_t attr;
        g_start_gen[t] = g_pool.gen;
        if (pthread_attr_init(&attr) != 0)
            break;
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int ok = pthread_create(&th, &attr, pool_worker, (void *)(intptr_t)t) == 0;
        pthread_attr_destroy(&attr);
        if (!ok)
            break;
        g_pool.nworkers = t;
    }
    int usable = g_pool.nworkers + 1 < nt ? g_pool.nworkers + 1 : nt;
    g_pool.fn = fn;
    g_pool.ctx = ctx;
    g_pool.nt = nt;
    g_pool.pending = usable - 1;
    g_pool.gen++;
    pthread_cond_broadcast(&g_pool.wake);
    pthread_mutex_unlock(&g_pool.lock);
    fn(ctx, 0, nt);
    for (int t = usable; t < nt; t++)
        fn(ctx, t, nt);
    pthread_mutex_lock(&g_pool.lock);
    while (g_pool.pending > 0)
        pthread_cond_wait(&g_pool.done, &g_pool.lock);
    g_pool.busy = 0;
    pthread_mutex_unlock(&g_pool.lock);
}

/* The pool for the other kernels of the module (gemm_float.c, train.c, numerics.c): not part
 * of the cffi interface (hidden like every symbol of the module). */
void mt_run_parallel(void (*fn)(void *ctx, int tid, int nt), void *ctx, int nt)
{
    run_parallel(fn, ctx, nt);
}

static void split_range(int64_t n, int tid, int nt, int64_t *lo, int64_t *hi)
{
    *lo = n * tid / nt;
    *hi = n * (tid + 1) / nt;
}

static void *alloc64(size_t bytes)
{
    size_t rounded = (bytes + 63) / 64 * 64;
    return aligned_alloc(64, rounded ? rounded : 64);
}

/* ---------------------------------------------------------------- operand statistics */

/* Statistics of one stored matrix X (R x C, row stride ld): per row and per column the L1
 * norm, the sum, the zero count and the count of non-zero 4-bit slices of |x|; max |x|. */
typedef struct {
    int64_t *row_l1, *row_sum, *row_zeros, *row_slices; /* R each */
    int64_t *col_l1, *col_sum, *col_zeros, *col_slices; /* C each */
    int64_t maxabs;
} mstats;

/* Non-zero 4-bit slices of the magnitude u (0..32768): at most 4. */
#define NZSLICES(u) \
    ((((u)&15) != 0) + ((((u) >> 4) & 15) != 0) + ((((u) >> 8) & 15) != 0) + (((u) >> 12) != 0))

#define DEF_STATS(NAME, T)                                                                 \
    VECTOR_CLONES static void NAME(const T *x, int64_t ld, int64_t R, int64_t C, mstats *s) \
    {                                                                                      \
        int64_t mx = 0;                                                                    \
        for (int64_t r = 0; r < R; r++) {                                                  \
            const T *row = x + r * ld;                                                     \
            int64_t l1 = 0, sum = 0, z = 0, sl = 0;                                        \
            for (int64_t c = 0; c < C; c++) {                                              \
                int64_t v = row[c];                                                        \
                int64_t u = v < 0 ? -v : v;                                                \
                int64_t zz = u == 0;                                                       \
                int64_t ss = NZSLICES(u);                                                  \
                l1 += u;                                                                   \
                sum += v;                                                                  \
                z += zz;                                                                   \
                sl += ss;                                                                  \
                mx = u > mx ? u : mx;                                                      \
                s->col_l1[c] += u;                                                         \
                s->col_sum[c] += v;                                                        \
                s->col_zeros[c] += zz;                                                     \
                s->col_slices[c] += ss;                                                    \
            }                                                                              \
            s->row_l1[r] = l1;                                                             \
            s->row_sum[r] = sum;                                                           \
            s->row_zeros[r] = z;                                                           \
            s->row_slices[r] = sl;                                                         \
        }                                                                                  \
        s->maxabs = mx;                                                                    \
    }

DEF_STATS(stats_i8, int8_t)
DEF_STATS(stats_i16, int16_t)

/* One GEMM operand seen logically: outer = m for A, n for B. */
typedef struct {
    const void *p;
    int bytes;
    int64_t ld;
    int trans;        /* storage is the transpose of the logical matrix (A: M x K, B: K x N) */
    int krows;        /* storage rows run over k (A transposed, B not transposed) */
    int64_t outer;    /* M for A, N for B */
    mstats st;        /* full statistics of the storage (computed only when needed) */
    int full;         /* st is filled */
    int64_t *qbuf;    /* 2 K values: zeros and non-zero slices per k (quick statistics) */
    int64_t maxabs;
    int64_t part_max[MAX_THREADS]; /* max |x| of each thread's part (quick statistics) */
    int qfail;                      /* a part could not get its scratch buffer */
    int qbuf_owned;                 /* qbuf was allocated for this call (not scratch) */
    const int64_t *l1_outer, *sum_outer, *zeros_k, *slices_k;
} operand;

/* Bytes of the quick-statistics buffer: the merged per-k arrays, then one pair per part
 * when storage rows are not k. */
static size_t operand_qbytes(const operand *op, int64_t K, int parts)
{
    size_t bytes = (size_t)(2 * K * (op->krows ? 1 : parts + 1) + 1) * sizeof(int64_t);
    return (bytes + 63) / 64 * 64;
}

/* The quick-statistics buffer, zeroed: in `place` when given (a scratch block), else own. */
static int operand_stats_alloc(operand *op, int64_t K, int parts, void *place)
{
    size_t bytes = operand_qbytes(op, K, parts);
    if (place) {
        op->qbuf = place;
        memset(place, 0, bytes);
        return 0;
    }
    op->qbuf = calloc(bytes, 1);
    op->qbuf_owned = 1;
    return op->qbuf ? 0 : -1;
}

/* The buffers of the full statistics, allocated only when they are needed. */
static int operand_full_alloc(operand *op, int64_t K)
{
    if (op->st.row_l1)
        return 0;
    int64_t R = op->krows ? K : op->outer, C = op->krows ? op->outer : K;
    int64_t *buf = calloc((size_t)(4 * (R + C)) + 1, sizeof(int64_t));
    if (!buf)
        return -1;
    op->st.row_l1 = buf;
    op->st.row_sum = buf + R;
    op->st.row_zeros = buf + 2 * R;
    op->st.row_slices = buf + 3 * R;
    op->st.col_l1 = buf + 4 * R;
    op->st.col_sum = buf + 4 * R + C;
    op->st.col_zeros = buf + 4 * R + 2 * C;
    op->st.col_slices = buf + 4 * R + 3 * C;
    if (op->krows) {
        op->l1_outer = op->st.col_l1;
        op->sum_outer = op->st.col_sum;
        op->zeros_k = op->st.row_zeros;
        op->slices_k = op->st.row_slices;
    } else {
        op->l1_outer = op->st.row_l1;
        op->sum_outer = op->st.row_sum;
        op->zeros_k = op->st.col_zeros;
        op->slices_k = op->st.col_slices;
    }
    return 0;
}

static void operand_full_stats(operand *op, int64_t K)
{
    if (op->full)
        return;
    int64_t R = op->krows ? K : op->outer, C = op->krows ? op->outer : K;
    if (op->bytes == 1)
        stats_i8(op->p, op->ld, R, C, &op->st);
    else
        stats_i16(op->p, op->ld, R, C, &op->st);
    op->full = 1;
    op->maxabs = op->st.maxabs;
}

static int quick_stats(operand *op, int64_t K);

/* Zeros and slices per k and max |x|: the quick AVX-512 pass, else the full statistics. */
static void operand_stats(operand *op, int64_t K, int portable)
{
    if (!portable && quick_stats(op, K))
        return;
    operand_full_stats(op, K);
    op->zeros_k = op->krows ? op->st.row_zeros : op->st.col_zeros;
    op->slices_k = op->krows ? op->st.row_slices : op->st.col_slices;
}


typedef struct {
    operand *a, *b;
    int64_t K;
    int full;
    int portable; /* plain C statistics (the portable kernel) */
} stats_ctx;

static void stats_job(void *p, int tid, int nt)
{
    stats_ctx *s = p;
    operand *ops[2] = {s->a, s->b};
    for (int i = tid; i < 2; i += nt) {
        if (s->full)
            operand_full_stats(ops[i], s->K);
        else
            operand_stats(ops[i], s->K, s->portable);
    }
}

/* ---------------------------------------------------------------- quick statistics (AVX-512) */

#if MT_HAVE_X86
#define TARGET_BW __attribute__((target("avx512f,avx512bw,popcnt")))

static int bw_available(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("popcnt");
}

/* Storage rows run over k: per-row reductions. */
TARGET_BW static void qstats_rows_i8(const int8_t *x, int64_t ld, int64_t R, int64_t C,
                                     int64_t *zk, int64_t *sk, int64_t *mx)
{
    const __m512i zero = _mm512_setzero_si512(), lo = _mm512_set1_epi8(0x0F),
                  hi = _mm512_set1_epi8((char)0xF0);
    __m512i vmax = zero;
    for (int64_t r = 0; r < R; r++) {
        const int8_t *row = x + r * ld;
        int64_t z = 0, s = 0;
        for (int64_t c = 0; c < C; c += 64) {
            __mmask64 km = C - c >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (C - c)) - 1);
            __m512i v = _mm512_maskz_loadu_epi8(km, row + c);
            __m512i a = _mm512_abs_epi8(v);
            z += __builtin_popcountll(_mm512_mask_cmpeq_epi8_mask(km, v, zero));
            s += __builtin_popcountll(_mm512_test_epi8_mask(a, lo));
            s += __builtin_popcountll(_mm512_test_epi8_mask(a, hi));
            vmax = _mm512_max_epu8(vmax, a);
        }
        zk[r] = z;
        sk[r] = s;
    }
    uint8_t t[64];
    _mm512_storeu_si512((void *)t, vmax);
    int64_t m = 0;
    for (int i = 0; i < 64; i++)
        m = t[i] > m ? t[i] : m;
    *mx = m;
}

TARGET_BW static void qstats_rows_i16(const int16_t *x, int64_t ld, int64_t R, int64_t C,
                                      int64_t *zk, int64_t *sk, int64_t *mx)
{
    const __m512i zero = _mm512_setzero_si512();
    __m512i nib[4];
    for (int i = 0; i < 4; i++)
        nib[i] = _mm512_set1_epi16((short)(0xF << (4 * i)));
    __m512i vmax = zero;
    for (int64_t r = 0; r < R; r++) {
        const int16_t *row = x + r * ld;
        int64_t z = 0, s = 0;
        for (int64_t c = 0; c < C; c += 32) {
            __mmask32 km = C - c >= 32 ? ~(__mmask32)0 : (((__mmask32)1 << (C - c)) - 1);
            __m512i v = _mm512_maskz_loadu_epi16(km, row + c);
            __m512i a = _mm512_abs_epi16(v);
            z += __builtin_popcount(_mm512_mask_cmpeq_epi16_mask(km, v, zero));
            for (int i = 0; i < 4; i++)
                s += __builtin_popcount(_mm512_test_epi16_mask(a, nib[i]));
            vmax = _mm512_max_epu16(vmax, a);
        }
        zk[r] = z;
        sk[r] = s;
    }
    uint16_t t[32];
    _mm512_storeu_si512((void *)t, vmax);
    int64_t m = 0;
    for (int i = 0; i < 32; i++)
        m = t[i] > m ? t[i] : m;
    *mx = m;
}

/* Storage columns run over k: narrow per-column counters, flushed before they can wrap. */
TARGET_BW static void qstats_cols_i8(const int8_t *x, int64_t ld, int64_t R, int64_t C,
                                     int64_t *zk, int64_t *sk, int64_t *mx, uint8_t *cnt)
{
    const __m512i zero = _mm512_setzero_si512(), one = _mm512_set1_epi8(1),
                  lo = _mm512_set1_epi8(0x0F), hi = _mm512_set1_epi8((char)0xF0);
    int64_t Cp = (C + 63) / 64 * 64;
    uint8_t *zc = cnt, *sc = cnt + Cp;
    __m512i vmax = zero;
    for (int64_t r0 = 0; r0 < R; r0 += 127) { /* <= 2 slices per row: 127 rows fit in u8 */
        int64_t r1 = R - r0 < 127 ? R : r0 + 127;
        memset(cnt, 0, (size_t)(2 * Cp));
        for (int64_t r = r0; r < r1; r++) {
            const int8_t *row = x + r * ld;
            for (int64_t c = 0; c < C; c += 64) {
                __mmask64 km = C - c >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (C - c)) - 1);
                __m512i v = _mm512_maskz_loadu_epi8(km, row + c);
                __m512i a = _mm512_abs_epi8(v);
                __m512i zv = _mm512_loadu_si512((const void *)(zc + c));
                __m512i sv = _mm512_loadu_si512((const void *)(sc + c));
                zv = _mm512_mask_add_epi8(zv, _mm512_mask_cmpeq_epi8_mask(km, v, zero), zv, one);
                sv = _mm512_mask_add_epi8(sv, _mm512_test_epi8_mask(a, lo), sv, one);
                sv = _mm512_mask_add_epi8(sv, _mm512_test_epi8_mask(a, hi), sv, one);
                _mm512_storeu_si512((void *)(zc + c), zv);
                _mm512_storeu_si512((void *)(sc + c), sv);
                vmax = _mm512_max_epu8(vmax, a);
            }
        }
        for (int64_t c = 0; c < C; c++) {
            zk[c] += zc[c];
            sk[c] += sc[c];
        }
    }
    uint8_t t[64];
    _mm512_storeu_si512((void *)t, vmax);
    int64_t m = 0;
    for (int i = 0; i < 64; i++)
        m = t[i] > m ? t[i] : m;
    *mx = m;
}

TARGET_BW static void qstats_cols_i16(const int16_t *x, int64_t ld, int64_t R, int64_t C,
                                      int64_t *zk, int64_t *sk, int64_t *mx, uint16_t *cnt)
{
    const __m512i zero = _mm512_setzero_si512(), one = _mm512_set1_epi16(1);
    __m512i nib[4];
    for (int i = 0; i < 4; i++)
        nib[i] = _mm512_set1_epi16((short)(0xF << (4 * i)));
    int64_t Cp = (C + 31) / 32 * 32;
    uint16_t *zc = cnt, *sc = cnt + Cp;
    __m512i vmax = zero;
    for (int64_t r0 = 0; r0 < R; r0 += 16383) { /* <= 4 slices per row */
        int64_t r1 = R - r0 < 16383 ? R : r0 + 16383;
        memset(cnt, 0, (size_t)(2 * Cp) * sizeof(uint16_t));
        for (int64_t r = r0; r < r1; r++) {
            const int16_t *row = x + r * ld;
            for (int64_t c = 0; c < C; c += 32) {
                __mmask32 km = C - c >= 32 ? ~(__mmask32)0 : (((__mmask32)1 << (C - c)) - 1);
                __m512i v = _mm512_maskz_loadu_epi16(km, row + c);
                __m512i a = _mm512_abs_epi16(v);
                __m512i zv = _mm512_loadu_si512((const void *)(zc + c));
                __m512i sv = _mm512_loadu_si512((const void *)(sc + c));
                zv = _mm512_mask_add_epi16(zv, _mm512_mask_cmpeq_epi16_mask(km, v, zero), zv, one);
                for (int i = 0; i < 4; i++)
                    sv = _mm512_mask_add_epi16(sv, _mm512_test_epi16_mask(a, nib[i]), sv, one);
                _mm512_storeu_si512((void *)(zc + c), zv);
                _mm512_storeu_si512((void *)(sc + c), sv);
                vmax = _mm512_max_epu16(vmax, a);
            }
        }
        for (int64_t c = 0; c < C; c++) {
            zk[c] += zc[c];
            sk[c] += sc[c];
        }
    }
    uint16_t t[32];
    _mm512_storeu_si512((void *)t, vmax);
    int64_t m = 0;
    for (int i = 0; i < 32; i++)
        m = t[i] > m ? t[i] : m;
    *mx = m;
}

/* Quick statistics of the storage rows [r0, r1) as part `part`: per-k values go straight
 * into zeros_k/slices_k when storage rows run over k, else into the part's own arrays
 * (merged by quick_stats_merge). Returns 0 when a scratch buffer is missing. */
static int quick_stats_part(operand *op, int64_t K, int64_t r0, int64_t r1, int part)
{
    int64_t C = op->krows ? op->outer : K;
    int64_t *zk = op->qbuf, *sk = op->qbuf + K;
    int64_t *mx = &op->part_max[part];
    if (r1 <= r0)
        return 1;
    if (op->krows) {
        if (op->bytes == 1)
            qstats_rows_i8((const int8_t *)op->p + r0 * op->ld, op->ld, r1 - r0, C, zk + r0,
                           sk + r0, mx);
        else
            qstats_rows_i16((const int16_t *)op->p + r0 * op->ld, op->ld, r1 - r0, C, zk + r0,
                            sk + r0, mx);
        return 1;
    }
    zk = op->qbuf + 2 * K * (part + 1);
    sk = zk + K;
    void *cnt = alloc64((size_t)(2 * ((C + 63) / 64 * 64)) * 2);
    if (!cnt)
        return 0;
    if (op->bytes == 1)
        qstats_cols_i8((const int8_t *)op->p + r0 * op->ld, op->ld, r1 - r0, C, zk, sk, mx, cnt);
    else
        qstats_cols_i16((const int16_t *)op->p + r0 * op->ld, op->ld, r1 - r0, C, zk, sk, mx,
                        cnt);
    free(cnt);
    return 1;
}

static void quick_stats_merge(operand *op, int64_t K, int parts)
{
    int64_t mx = 0;
    for (int t = 0; t < parts; t++)
        mx = op->part_max[t] > mx ? op->part_max[t] : mx;
    op->maxabs = mx;
    if (!op->krows)
        for (int t = 0; t < parts; t++) {
            const int64_t *zt = op->qbuf + 2 * K * (t + 1), *st = zt + K;
            for (int64_t k = 0; k < K; k++) {
                op->qbuf[k] += zt[k];
                op->qbuf[K + k] += st[k];
            }
        }
    op->zeros_k = op->qbuf;
    op->slices_k = op->qbuf + K;
}

static int quick_stats(operand *op, int64_t K)
{
    if (!bw_available())
        return 0;
    if (!quick_stats_part(op, K, 0, op->krows ? K : op->outer, 0))
        return 0;
    quick_stats_merge(op, K, 1);
    return 1;
}
#else
static int bw_available(void) { return 0; }
static int quick_stats(operand *op, int64_t K)
{
    (void)op;
    (void)K;
    return 0;
}
static int quick_stats_part(operand *op, int64_t K, int64_t r0, int64_t r1, int part)
{
    (void)op;
    (void)K;
    (void)r0;
    (void)r1;
    (void)part;
    return 0;
}
static void quick_stats_merge(operand *op, int64_t K, int parts)
{
    (void)op;
    (void)K;
    (void)parts;
}
#endif

/* ---------------------------------------------------------------- row loads */

/* dst[c] = X[r, c] for the logical matrix X (rows x C) stored as X (trans = 0) or X^T. */
static void load_row(int32_t *dst, const void *x, int bytes, int64_t ld, int trans, int64_t r,
                     int64_t C)
{
    if (bytes == 1) {
        const int8_t *p = x;
        if (trans)
            for (int64_t c = 0; c < C; c++)
                dst[c] = p[c * ld + r];
        else
            for (int64_t c = 0; c < C; c++)
                dst[c] = p[r * ld + c];
    } else {
        const int16_t *p = x;
        if (trans)
            for (int64_t c = 0; c < C; c++)
                dst[c] = p[c * ld + r];
        else
            for (int64_t c = 0; c < C; c++)
                dst[c] = p[r * ld + c];
    }
}


/* ---------------------------------------------------------------- the job */

typedef struct {
    operand a, b;
    int64_t M, K, N;
    const int64_t *init;
    int64_t *c;
    int acc_bits, acc_mode, threads;
    int64_t acc_max, acc_min;
    int use_vnni, is8;   /* which fast kernel; int8 x int8 or the int16 one */
    unsigned char *slow; /* M flags: row computed by the sequential path */
    int64_t nslow;
    int32_t *b32;        /* K x N int32 copy of B (portable and sequential paths) */
    int32_t *arows;      /* one K-element row buffer per thread */
    int64_t *corr;       /* M values subtracted from the fast sums (int8 bias trick) */
    void *apack, *bpack; /* packed operands of the VNNI kernels */
    int64_t kgroups;     /* K / 4 (int8) or K / 2 (int16), rounded up */
    int64_t mpanels, npanels;
    int64_t mr16;        /* rows per int16 A panel: 6, or 4 */
    int vbmi;            /* AVX-512 VBMI byte permutations available (int8 B packing) */
    int direct;          /* no init, saturating: one-block sums are final (cf written directly) */
    float *cf;           /* float output (mt_gemm_int_f32): cf = (float)c * scale, or NULL */
    float scale;         /* 2^-frac */
} gemm_job;

/* cf[m, n0..n0+nv) = (float)c[m, n0..n0+nv) * scale: the int64 to float32 conversion (one
 * rounding) then the exact power-of-two scaling, as mt_rescale_i64 does. */
VECTOR_CLONES static void row_to_float(float *restrict out, const int64_t *restrict in,
                                       int64_t nv, float scale)
{
    for (int64_t j = 0; j < nv; j++)
        out[j] = (float)in[j] * scale;
}

static int64_t mul_sat(int64_t x, int64_t y)
{
    int64_t r;
    if (__builtin_mul_overflow(x, y, &r))
        return INT64_MAX;
    return r;
}

static int64_t add_sat(int64_t x, int64_t y)
{
    int64_t r;
    if (__builtin_add_overflow(x, y, &r))
        return INT64_MAX;
    return r;
}

static int64_t abs_sat(int64_t v) { return v < 0 ? (v == INT64_MIN ? INT64_MAX : -v) : v; }

/* A bound computed with saturating arithmetic proves safety only below INT64_MAX. */
static int bound_fits(int64_t bound, int64_t acc_max) { return bound < INT64_MAX && bound <= acc_max; }

/* Mark the rows whose partial sums might leave the accumulator range (saturate mode): first
 * the global bound max|init| + max|A| * max|B| * K, then per output
 * |init| + min(L1(a_row) * max|B|, max|A| * L1(b_col)). */
static void find_slow_rows(gemm_job *g)
{
    int64_t maxa = g->a.maxabs, maxb = g->b.maxabs, maxinit_all = 0;
    g->nslow = 0;
    if (g->init)
        for (int64_t i = 0; i < g->M * g->N; i++) {
            int64_t u = abs_sat(g->init[i]);
            maxinit_all = u > maxinit_all ? u : maxinit_all;
        }
    if (bound_fits(add_sat(mul_sat(mul_sat(maxa, maxb), g->K), maxinit_all), g->acc_max))
        return;
    if (operand_full_alloc(&g->a, g->K) || operand_full_alloc(&g->b, g->K)) {
        memset(g->slow, 1, (size_t)g->M); /* no memory for the bound: the slow path is exact */
        g->nslow = g->M;
        return;
    }
    stats_ctx sc = {&g->a, &g->b, g->K, 1, 0};
    run_parallel(stats_job, &sc, g->threads < 2 ? 1 : 2);
    for (int64_t m = 0; m < g->M; m++) {
        int64_t maxinit = 0;
        if (g->init)
            for (int64_t n = 0; n < g->N; n++) {
                int64_t u = abs_sat(g->init[m * g->N + n]);
                maxinit = u > maxinit ? u : maxinit;
            }
        int64_t row_bound = mul_sat(g->a.l1_outer[m], maxb);
        int slow = 0;
        if (!bound_fits(add_sat(row_bound, maxinit), g->acc_max)) {
            for (int64_t n = 0; n < g->N && !slow; n++) {
                int64_t col_bound = mul_sat(maxa, g->b.l1_outer[n]);
                int64_t bound = row_bound < col_bound ? row_bound : col_bound;
                int64_t u = g->init ? abs_sat(g->init[m * g->N + n]) : 0;
                slow = !bound_fits(add_sat(bound, u), g->acc_max);
            }
        }
        g->slow[m] = (unsigned char)slow;
        g->nslow += slow;
    }
}

static int64_t wrap_bits(int64_t v, int bits)
{
    if (bits >= 64)
        return v;
    uint64_t u = (uint64_t)v << (64 - bits);
    return (int64_t)u >> (64 - bits); /* arithmetic shift (GCC) sign-extends */
}

/* c[m, n0..n0+nv) holds exact sums (before the int8 correction): make them final values. */
static void finish_segment(const gemm_job *g, int64_t m, int64_t n0, int64_t nv)
{
    int64_t *crow = g->c + m * g->N + n0;
    const int64_t *irow = g->init ? g->init + m * g->N + n0 : NULL;
    int64_t corr = g->corr ? g->corr[m] : 0;
    if (g->acc_mode == MT_ACC_WRAP) {
        for (int64_t j = 0; j < nv; j++) {
            uint64_t v = (uint64_t)crow[j] - (uint64_t)corr + (irow ? (uint64_t)irow[j] : 0);
            crow[j] = wrap_bits((int64_t)v, g->acc_bits);
        }
    } else if (corr || irow) {
        for (int64_t j = 0; j < nv; j++)
            crow[j] = crow[j] - corr + (irow ? irow[j] : 0);
    }
}

/* ---------------------------------------------------------------- portable kernel */

static void build_b32_rows(gemm_job *g, int tid, int nt)
{
    int64_t lo, hi;
    split_range(g->K, tid, nt, &lo, &hi);
    for (int64_t k = lo; k < hi; k++)
        load_row(g->b32 + k * g->N, g->b.p, g->b.bytes, g->b.ld, g->b.trans, k, g->N);
}

static void build_b32_job(void *p, int tid, int nt) { build_b32_rows(p, tid, nt); }

VECTOR_CLONES static void row_sum_exact(int64_t *acc, const int32_t *arow, const int32_t *b32,
                                        int64_t K, int64_t N)
{
    for (int64_t n = 0; n < N; n++)
        acc[n] = 0;
    for (int64_t k = 0; k < K; k++) {
        int64_t a = arow[k];
        if (a == 0)
            continue;
        const int32_t *brow = b32 + k * N;
        for (int64_t n = 0; n < N; n++)
            acc[n] += a * brow[n];
    }
}

static void portable_rows(gemm_job *g, int tid, int nt)
{
    int64_t lo, hi;
    split_range(g->M, tid, nt, &lo, &hi);
    int32_t *arow = g->arows + tid * (g->K + 1);
    for (int64_t m = lo; m < hi; m++) {
        if (g->slow[m])
            continue;
        load_row(arow, g->a.p, g->a.bytes, g->a.ld, g->a.trans, m, g->K);
        row_sum_exact(g->c + m * g->N, arow, g->b32, g->K, g->N);
        finish_segment(g, m, 0, g->N);
    }
}

/* ---------------------------------------------------------------- sequential saturating path */

VECTOR_CLONES static void row_saturating(int64_t *acc, const int32_t *arow, const int32_t *b32,
                                         int64_t K, int64_t N, int64_t lo, int64_t hi)
{
    for (int64_t k = 0; k < K; k++) {
        int64_t a = arow[k];
        if (a == 0)
            continue; /* acc is in range, so sat(acc + 0) = acc */
        const int32_t *brow = b32 + k * N;
        for (int64_t n = 0; n < N; n++) {
            int64_t t = acc[n] + a * brow[n];
            t = t < lo ? lo : t;
            acc[n] = t > hi ? hi : t;
        }
    }
}

/* 64-bit accumulators: acc + a*b may leave int64 itself, so check each step. */
static void row_saturating64(int64_t *acc, const int32_t *arow, const int32_t *b32, int64_t K,
                             int64_t N)
{
    for (int64_t k = 0; k < K; k++) {
        int64_t a = arow[k];
        if (a == 0)
            continue;
        const int32_t *brow = b32 + k * N;
        for (int64_t n = 0; n < N; n++) {
            int64_t pr = a * brow[n], t;
            if (__builtin_add_overflow(acc[n], pr, &t))
                t = pr > 0 ? INT64_MAX : INT64_MIN;
            acc[n] = t;
        }
    }
}

static void slow_job(void *p, int tid, int nt)
{
    gemm_job *g = p;
    int32_t *arow = g->arows + tid * (g->K + 1);
    int64_t seen = 0, lo, hi;
    split_range(g->nslow, tid, nt, &lo, &hi); /* this thread's share of the slow rows */
    for (int64_t m = 0; m < g->M; m++) {
        if (!g->slow[m])
            continue;
        int64_t mine = seen >= lo && seen < hi;
        seen++;
        if (!mine)
            continue;
        int64_t *crow = g->c + m * g->N;
        load_row(arow, g->a.p, g->a.bytes, g->a.ld, g->a.trans, m, g->K);
        for (int64_t n = 0; n < g->N; n++)
            crow[n] = g->init ? g->init[m * g->N + n] : 0;
        if (g->acc_bits == 64)
            row_saturating64(crow, arow, g->b32, g->K, g->N);
        else
            row_saturating(crow, arow, g->b32, g->K, g->N, g->acc_min, g->acc_max);
    }
}

/* ---------------------------------------------------------------- scratch memory */

/* One cached scratch block for the packed operands, so repeated GEMMs do not pay for fresh
 * pages each call; a concurrent call (or one needing over SCRATCH_CACHE_MAX) allocates its own. */
#define SCRATCH_CACHE_MAX ((size_t)64 << 20)
static void *g_scratch;
static size_t g_scratch_size;

static void *scratch_get(size_t bytes, int *owned)
{
    *owned = 1;
    pthread_once(&g_pool_once, pool_init_once);
    if (bytes <= SCRATCH_CACHE_MAX) {
        pthread_mutex_lock(&g_scratch_lock);
        if (!g_scratch_busy) {
            if (g_scratch_size < bytes) {
                free(g_scratch);
                g_scratch = alloc64(bytes);
                g_scratch_size = g_scratch ? bytes : 0;
            }
            if (g_scratch) {
                g_scratch_busy = 1;
                *owned = 0;
                pthread_mutex_unlock(&g_scratch_lock);
                return g_scratch;
            }
        }
        pthread_mutex_unlock(&g_scratch_lock);
    }
    return alloc64(bytes);
}

static void scratch_put(void *p, int owned)
{
    if (owned) {
        free(p);
        return;
    }
    pthread_mutex_lock(&g_scratch_lock);
    g_scratch_busy = 0;
    pthread_mutex_unlock(&g_scratch_lock);
}

/* ---------------------------------------------------------------- AVX-512 VNNI kernels */

/* int8: micro-tile 8 x 32 (16 zmm accumulators), K blocks of KC8Q quads of k. An int32 lane
 * gains at most 4 * 255 * 128 = 130560 per quad, so 128 quads (512 k) stay far below 2^31. */
#define MR8 8
#define NR8 32
#define KC8Q 128
/* int16: A is split into its high byte (a >> 8, -128..127) and low byte (a & 255), both as
 * int16, a = 256 * hi + lo; micro-tile 6 x 32 with a high and a low accumulator each (24 zmm),
 * K blocks of KC16P pairs of k. Per pair a lane gains at most 2 * 255 * 32768 = 16711680
 * (low byte) or 2 * 128 * 32768 = 2^23 (high byte): 128 pairs stay within +-(2^31 - 1)
 * (128 * 16711680 = 2139095040 < 2147483647), and (-32768)^2 never occurs in one product. */
#define MR16 6
#define NR16 32
#define KC16P 128
/* Bytes of packed A kept hot (in L2) per row block. */
#define A_BLOCK_BYTES ((int64_t)256 << 10)

#if MT_HAVE_X86

static int vnni_available(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

static inline int32_t ld32(const void *p)
{
    int32_t w;
    memcpy(&w, p, 4);
    return w;
}

/* The micro-kernels name every accumulator, and issue the dot-product instructions through
 * inline asm that ties the accumulator to the destination: with the intrinsics GCC 12 copies
 * every accumulator and spills it to the stack on each iteration. AT&T operand order:
 * acc += sum over the lane's pairs/quads of %1 * %2 (vpdpbusd: %1 unsigned, %2 signed). */
#define VPDPBUSD(acc, u8, s8) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u8), "v"(s8))
#define VPDPWSSD(acc, x, y) __asm__("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(x), "v"(y))
#define Z _mm512_setzero_si512()
#define DP8(r)                                                 \
    do {                                                       \
        __m512i av = _mm512_set1_epi32(ld32(ap + 4 * (r)));    \
        VPDPBUSD(c##r##0, b0, av);                             \
        VPDPBUSD(c##r##1, b1, av);                             \
    } while (0)
#define ST8(r)                                                         \
    do {                                                               \
        _mm512_store_si512((void *)(tile + (r) * NR8), c##r##0);       \
        _mm512_store_si512((void *)(tile + (r) * NR8 + 16), c##r##1);  \
    } while (0)

/* tile[r][j] = sum over nq quads of sum_t ap[q][r][t] * bp[q][j][t] (ap s8, bp u8). */
TARGET_VNNI __attribute__((noinline)) static void ukr8(const int8_t *ap, const uint8_t *bp,
                                                        int64_t nq, int32_t *tile)
{
    __m512i c00 = Z, c01 = Z, c10 = Z, c11 = Z, c20 = Z, c21 = Z, c30 = Z, c31 = Z;
    __m512i c40 = Z, c41 = Z, c50 = Z, c51 = Z, c60 = Z, c61 = Z, c70 = Z, c71 = Z;
    for (int64_t q = 0; q < nq; q++) {
        __m512i b0 = _mm512_load_si512((const void *)bp);
        __m512i b1 = _mm512_load_si512((const void *)(bp + 64));
        DP8(0);
        DP8(1);
        DP8(2);
        DP8(3);
        DP8(4);
        DP8(5);
        DP8(6);
        DP8(7);
        ap += 4 * MR8;
        bp += 4 * NR8;
    }
    ST8(0);
    ST8(1);
    ST8(2);
    ST8(3);
    ST8(4);
    ST8(5);
    ST8(6);
    ST8(7);
}

#define DP16(r)                                                   \
    do {                                                          \
        __m512i ah = _mm512_set1_epi32(ld32(ap + 4 * (r)));       \
        __m512i al = _mm512_set1_epi32(ld32(ap + 4 * (r) + 2));   \
        VPDPWSSD(h##r##0, b0, ah);                                \
        VPDPWSSD(h##r##1, b1, ah);                                \
        VPDPWSSD(l##r##0, b0, al);                                \
        VPDPWSSD(l##r##1, b1, al);                                \
    } while (0)
#define ST16(r)                                                       \
    do {                                                              \
        _mm512_store_si512((void *)(hi + (r) * NR16), h##r##0);       \
        _mm512_store_si512((void *)(hi + (r) * NR16 + 16), h##r##1);  \
        _mm512_store_si512((void *)(lo + (r) * NR16), l##r##0);       \
        _mm512_store_si512((void *)(lo + (r) * NR16 + 16), l##r##1);  \
    } while (0)

/* hi[r][j] / lo[r][j] = sum over np pairs of the high / low byte of a times b. */
TARGET_VNNI __attribute__((noinline)) static void ukr16(const int16_t *ap, const int16_t *bp,
                                                         int64_t np, int32_t *hi, int32_t *lo)
{
    __m512i h00 = Z, h01 = Z, l00 = Z, l01 = Z, h10 = Z, h11 = Z, l10 = Z, l11 = Z;
    __m512i h20 = Z, h21 = Z, l20 = Z, l21 = Z, h30 = Z, h31 = Z, l30 = Z, l31 = Z;
    __m512i h40 = Z, h41 = Z, l40 = Z, l41 = Z, h50 = Z, h51 = Z, l50 = Z, l51 = Z;
    for (int64_t q = 0; q < np; q++) {
        __m512i b0 = _mm512_load_si512((const void *)bp);
        __m512i b1 = _mm512_load_si512((const void *)(bp + 32));
        DP16(0);
        DP16(1);
        DP16(2);
        DP16(3);
        DP16(4);
        DP16(5);
        ap += 4 * MR16;
        bp += 2 * NR16;
    }
    ST16(0);
    ST16(1);
    ST16(2);
    ST16(3);
    ST16(4);
    ST16(5);
}

/* The same with 4 rows (chosen when M is far from a multiple of 6, e.g. M = 32). */
TARGET_VNNI __attribute__((noinline)) static void ukr16x4(const int16_t *ap, const int16_t *bp,
                                                           int64_t np, int32_t *hi, int32_t *lo)
{
    __m512i h00 = Z, h01 = Z, l00 = Z, l01 = Z, h10 = Z, h11 = Z, l10 = Z, l11 = Z;
    __m512i h20 = Z, h21 = Z, l20 = Z, l21 = Z, h30 = Z, h31 = Z, l30 = Z, l31 = Z;
    for (int64_t q = 0; q < np; q++) {
        __m512i b0 = _mm512_load_si512((const void *)bp);
        __m512i b1 = _mm512_load_si512((const void *)(bp + 32));
        DP16(0);
        DP16(1);
        DP16(2);
        DP16(3);
        ap += 4 * 4;
        bp += 2 * NR16;
    }
    ST16(0);
    ST16(1);
    ST16(2);
    ST16(3);
}

/* Pack A (int8 x int8): panel p holds rows p*MR8.. as [quad][MR8][4] bytes; also
 * corr[m] = 128 * sum_k a[m,k]. */
static void pack_a8(const gemm_job *g, int64_t p0, int64_t p1)
{
    int64_t M = g->M, K = g->K, Kq = g->kgroups;
    const int8_t *src = g->a.p;
    for (int64_t p = p0; p < p1; p++) {
        int8_t *d = (int8_t *)g->apack + p * Kq * MR8 * 4;
        memset(d, 0, (size_t)(Kq * MR8 * 4));
        for (int r = 0; r < MR8; r++) {
            int64_t m = p * MR8 + r;
            if (m >= M)
                break;
            int64_t sum = 0;
            if (!g->a.trans) {
                const int8_t *row = src + m * g->a.ld;
                int64_t q = 0;
                for (; 4 * q + 4 <= K; q++)
                    memcpy(d + (q * MR8 + r) * 4, row + 4 * q, 4);
                for (int64_t k = 4 * q; k < K; k++)
                    d[(q * MR8 + r) * 4 + (k - 4 * q)] = row[k];
                for (int64_t k = 0; k < K; k++)
                    sum += row[k];
            } else {
                for (int64_t k = 0; k < K; k++) {
                    int8_t v = src[k * g->a.ld + m];
                    d[((k >> 2) * MR8 + r) * 4 + (k & 3)] = v;
                    sum += v;
                }
            }
            g->corr[m] = 128 * sum; /* sum_k a (b + 128) - 128 sum_k a = sum_k a b */
        }
    }
}

static int vbmi_available(void)
{
    __builtin_cpu_init();
    return vnni_available() && __builtin_cpu_supports("avx512vbmi");
}

/* The full quads of full panels of a row-major int8 B with AVX-512 VBMI: one two-source
 * byte permutation interleaves 16 columns of four rows. Returns the quads done. */
TARGET_VBMI static int64_t pack_b8_vbmi(const int8_t *src, int64_t ld, int64_t K, int64_t n0,
                                        uint8_t *d)
{
    uint8_t i0[64], i1[64];
    for (int i = 0; i < 64; i++) { /* out[4j + t] = row t, column j (+16 for i1) */
        int j = i / 4, t = i % 4;
        i0[i] = (uint8_t)((t >= 2 ? 64 : 0) + (t % 2) * 32 + j);
        i1[i] = (uint8_t)(i0[i] + 16);
    }
    const __m512i idx0 = _mm512_loadu_si512((const void *)i0);
    const __m512i idx1 = _mm512_loadu_si512((const void *)i1);
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    int64_t q = 0;
    for (; 4 * q + 4 <= K; q++) {
        const int8_t *s0 = src + (4 * q) * ld + n0;
        __m512i r01 = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)s0)),
            _mm256_loadu_si256((const __m256i *)(s0 + ld)), 1);
        __m512i r23 = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(s0 + 2 * ld))),
            _mm256_loadu_si256((const __m256i *)(s0 + 3 * ld)), 1);
        uint8_t *o = d + q * NR8 * 4;
        _mm512_store_si512((void *)o,
                           _mm512_xor_si512(_mm512_permutex2var_epi8(r01, idx0, r23), flip));
        _mm512_store_si512((void *)(o + 64),
                           _mm512_xor_si512(_mm512_permutex2var_epi8(r01, idx1, r23), flip));
    }
    return q;
}

/* 16 columns of 4 consecutive K rows (r0..r3), each byte + 128, stored as [column][4] bytes:
 * the SSE interleave of pack_b8's panels. */
static inline void interleave4_flip(__m128i r0, __m128i r1, __m128i r2, __m128i r3, __m128i flip,
                                    uint8_t *o)
{
    r0 = _mm_xor_si128(r0, flip);
    r1 = _mm_xor_si128(r1, flip);
    r2 = _mm_xor_si128(r2, flip);
    r3 = _mm_xor_si128(r3, flip);
    __m128i lo01 = _mm_unpacklo_epi8(r0, r1), hi01 = _mm_unpackhi_epi8(r0, r1);
    __m128i lo23 = _mm_unpacklo_epi8(r2, r3), hi23 = _mm_unpackhi_epi8(r2, r3);
    _mm_store_si128((__m128i *)o, _mm_unpacklo_epi16(lo01, lo23));
    _mm_store_si128((__m128i *)(o + 16), _mm_unpackhi_epi16(lo01, lo23));
    _mm_store_si128((__m128i *)(o + 32), _mm_unpacklo_epi16(hi01, hi23));
    _mm_store_si128((__m128i *)(o + 48), _mm_unpackhi_epi16(hi01, hi23));
}

/* Pack B (int8 x int8): panel p holds columns p*NR8.. as [quad][NR8][4] bytes b + 128. */
/* The full-panel SSE interleave of pack_b8 for a partial panel (nv < NR8 columns): columns
 * past nv are loaded as 0 (masked loads), which the flip makes 0x80, the padding. Returns
 * the quads packed (the K tail is left to the caller). */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static int64_t
pack_b8_partial(const int8_t *src, int64_t ld, int64_t K, int64_t n0, int64_t nv, uint8_t *d)
{
    const __m128i flip = _mm_set1_epi8((char)0x80);
    __mmask16 km[NR8 / 16];
    for (int grp = 0; grp < NR8 / 16; grp++) {
        int64_t left = nv - 16 * grp;
        km[grp] = left >= 16 ? (__mmask16)0xFFFF : (left > 0 ? (__mmask16)((1u << left) - 1) : 0);
    }
    int64_t q = 0;
    for (; 4 * q + 4 <= K; q++) {
        const int8_t *s0 = src + (4 * q) * ld + n0;
        for (int grp = 0; grp < NR8 / 16; grp++) {
            __m128i r0 = _mm_maskz_loadu_epi8(km[grp], s0 + 16 * grp);
            __m128i r1 = _mm_maskz_loadu_epi8(km[grp], s0 + ld + 16 * grp);
            __m128i r2 = _mm_maskz_loadu_epi8(km[grp], s0 + 2 * ld + 16 * grp);
            __m128i r3 = _mm_maskz_loadu_epi8(km[grp], s0 + 3 * ld + 16 * grp);
            interleave4_flip(r0, r1, r2, r3, flip, d + (q * NR8 + 16 * grp) * 4);
        }
    }
    return q;
}

static void pack_b8(const gemm_job *g, int64_t p0, int64_t p1)
{
    int64_t N = g->N, K = g->K, Kq = g->kgroups;
    const int8_t *src = g->b.p;
    int64_t ld = g->b.ld;
    const __m128i flip = _mm_set1_epi8((char)0x80);
    for (int64_t p = p0; p < p1; p++) {
        uint8_t *d = (uint8_t *)g->bpack + p * Kq * NR8 * 4;
        int64_t n0 = p * NR8, nv = N - n0 < NR8 ? N - n0 : NR8;
        int64_t q = 0;
        if (!g->b.trans && nv == NR8 && g->vbmi) {
            q = pack_b8_vbmi(src, ld, K, n0, d);
        } else if (!g->b.trans && nv < NR8 && bw_available()) {
            q = pack_b8_partial(src, ld, K, n0, nv, d);
        } else if (!g->b.trans && nv == NR8) {
            for (; 4 * q + 4 <= K; q++) {
                const int8_t *s0 = src + (4 * q) * ld + n0;
                for (int grp = 0; grp < NR8 / 16; grp++) {
                    __m128i r0 = _mm_loadu_si128((const __m128i *)(s0 + 16 * grp));
                    __m128i r1 = _mm_loadu_si128((const __m128i *)(s0 + ld + 16 * grp));
                    __m128i r2 = _mm_loadu_si128((const __m128i *)(s0 + 2 * ld + 16 * grp));
                    __m128i r3 = _mm_loadu_si128((const __m128i *)(s0 + 3 * ld + 16 * grp));
                    interleave4_flip(r0, r1, r2, r3, flip, d + (q * NR8 + 16 * grp) * 4);
                }
            }
        }
        /* the rest (partial panel, K tail, transposed B): padding is 0x80, i.e. b = 0 */
        memset(d + q * NR8 * 4, 0x80, (size_t)((Kq - q) * NR8 * 4));
        if (!g->b.trans) {
            for (int64_t k = 4 * q; k < K; k++) {
                const int8_t *row = src + k * ld + n0;
                uint8_t *o = d + ((k >> 2) * NR8) * 4 + (k & 3);
                for (int64_t j = 0; j < nv; j++)
                    o[4 * j] = (uint8_t)(row[j] ^ (int8_t)0x80);
            }
        } else {
            for (int64_t j = 0; j < nv; j++) {
                const int8_t *row = src + (n0 + j) * ld;
                int64_t qq = 0;
                for (; 4 * qq + 4 <= K; qq++) {
                    uint32_t w;
                    memcpy(&w, row + 4 * qq, 4);
                    w ^= 0x80808080u;
                    memcpy(d + (qq * NR8 + j) * 4, &w, 4);
                }
                for (int64_t k = 4 * qq; k < K; k++)
                    d[(qq * NR8 + j) * 4 + (k - 4 * qq)] = (uint8_t)(row[k] ^ (int8_t)0x80);
            }
        }
    }
}

static inline int32_t elem(const void *p, int bytes, int64_t i)
{
    return bytes == 1 ? ((const int8_t *)p)[i] : ((const int16_t *)p)[i];
}

/* Pack A (int16 kernel): panel p holds rows p*mr.. as
 * [pair][mr][hi(k), hi(k+1), lo(k), lo(k+1)] int16. */
static void pack_a16(const gemm_job *g, int64_t p0, int64_t p1)
{
    int64_t M = g->M, K = g->K, Kp = g->kgroups, mr = g->mr16;
    for (int64_t p = p0; p < p1; p++) {
        int16_t *d = (int16_t *)g->apack + p * Kp * mr * 4;
        memset(d, 0, (size_t)(Kp * mr * 4) * sizeof(int16_t));
        for (int r = 0; r < mr; r++) {
            int64_t m = p * mr + r;
            if (m >= M)
                break;
            int64_t k = 0;
            if (!g->a.trans && g->a.bytes == 2) {
                const int16_t *row = (const int16_t *)g->a.p + m * g->a.ld;
                for (; k + 2 <= K; k += 2) {
                    int16_t *o = d + ((k >> 1) * mr + r) * 4;
                    int32_t v0 = row[k], v1 = row[k + 1];
                    o[0] = (int16_t)(v0 >> 8);
                    o[1] = (int16_t)(v1 >> 8);
                    o[2] = (int16_t)(v0 & 255);
                    o[3] = (int16_t)(v1 & 255);
                }
            }
            for (; k < K; k++) {
                int64_t idx = g->a.trans ? k * g->a.ld + m : m * g->a.ld + k;
                int32_t v = elem(g->a.p, g->a.bytes, idx);
                int16_t *o = d + ((k >> 1) * mr + r) * 4 + (k & 1);
                o[0] = (int16_t)(v >> 8);
                o[2] = (int16_t)(v & 255);
            }
        }
    }
}

/* Pack B (int16 kernel): panel p holds columns p*NR16.. as [pair][NR16][2] int16. */
TARGET_VNNI static void pack_b16(const gemm_job *g, int64_t p0, int64_t p1)
{
    int64_t N = g->N, K = g->K, Kp = g->kgroups;
    /* ilv0 / ilv1 interleave columns 0..15 / 16..31 of two rows: out[2j + t] = row_t[j]. */
    short i0[32], i1[32];
    for (int i = 0; i < 32; i++) {
        i0[i] = (short)((i & 1) * 32 + i / 2);
        i1[i] = (short)((i & 1) * 32 + 16 + i / 2);
    }
    const __m512i ilv0 = _mm512_loadu_si512((const void *)i0);
    const __m512i ilv1 = _mm512_loadu_si512((const void *)i1);
    for (int64_t p = p0; p < p1; p++) {
        int16_t *d = (int16_t *)g->bpack + p * Kp * NR16 * 2;
        int64_t n0 = p * NR16, nv = N - n0 < NR16 ? N - n0 : NR16;
        int64_t k0 = 0;
        if (!g->b.trans && g->b.bytes == 2 && nv == NR16) {
            const int16_t *src = g->b.p;
            int64_t ld = g->b.ld;
            for (; k0 + 2 <= K; k0 += 2) {
                const int16_t *s0 = src + k0 * ld + n0;
                __m512i r0 = _mm512_loadu_si512((const void *)s0);
                __m512i r1 = _mm512_loadu_si512((const void *)(s0 + ld));
                int16_t *o = d + (k0 >> 1) * NR16 * 2;
                _mm512_store_si512((void *)o, _mm512_permutex2var_epi16(r0, ilv0, r1));
                _mm512_store_si512((void *)(o + 32), _mm512_permutex2var_epi16(r0, ilv1, r1));
            }
        }
        memset(d + (k0 >> 1) * NR16 * 2, 0, (size_t)((Kp - (k0 >> 1)) * NR16 * 2) * 2);
        if (g->b.trans && g->b.bytes == 2) {
            const int16_t *src = g->b.p;
            for (int64_t j = 0; j < nv; j++) {
                const int16_t *row = src + (n0 + j) * g->b.ld;
                int64_t q = 0;
                for (; 2 * q + 2 <= K; q++)
                    memcpy(d + (q * NR16 + j) * 2, row + 2 * q, 4);
                if (2 * q < K)
                    d[(q * NR16 + j) * 2] = row[2 * q];
            }
            continue;
        }
        for (int64_t k = k0; k < K; k++) {
            int16_t *o = d + (k >> 1) * NR16 * 2 + (k & 1);
            for (int64_t j = 0; j < nv; j++) {
                int64_t idx = g->b.trans ? (n0 + j) * g->b.ld + k : k * g->b.ld + n0 + j;
                o[2 * j] = (int16_t)elem(g->b.p, g->b.bytes, idx);
            }
        }
    }
}

static void vnni_pack(gemm_job *g, int tid, int nt)
{
    int64_t lo, hi;
    split_range(g->mpanels, tid, nt, &lo, &hi);
    if (g->is8)
        pack_a8(g, lo, hi);
    else
        pack_a16(g, lo, hi);
    split_range(g->npanels, tid, nt, &lo, &hi);
    if (g->is8)
        pack_b8(g, lo, hi);
    else
        pack_b16(g, lo, hi);
}

static int panel_all_slow(const gemm_job *g, int64_t m0, int64_t mv)
{
    if (!g->nslow)
        return 0;
    for (int64_t r = 0; r < mv; r++)
        if (!g->slow[m0 + r])
            return 0;
    return 1;
}

/* The single-K-block final values as floats: int8 (x - corr), int16 (256 hi + lo). */
VECTOR_CLONES static void vals_to_float8(float *restrict out, const int32_t *restrict x,
                                         int64_t corr, int64_t nv, float scale)
{
    for (int64_t j = 0; j < nv; j++)
        out[j] = (float)((int64_t)x[j] - corr) * scale;
}

VECTOR_CLONES static void vals_to_float16(float *restrict out, const int32_t *restrict x,
                                          const int32_t *restrict y, int64_t nv, float scale)
{
    for (int64_t j = 0; j < nv; j++)
        out[j] = (float)((int64_t)x[j] * 256 + y[j]) * scale;
}

TARGET_VNNI static void vnni_compute(gemm_job *g, int tid, int nt)
{
    int64_t lo, hi, M = g->M, N = g->N, Kg = g->kgroups;
    split_range(g->npanels, tid, nt, &lo, &hi);
    int64_t mr = g->is8 ? MR8 : g->mr16, nr = g->is8 ? NR8 : NR16, kc = g->is8 ? KC8Q : KC16P;
    _Alignas(64) int32_t t1[MR8 * NR8];
    _Alignas(64) int32_t t2[MR16 * NR16];
    /* Row blocks of A panels sized to stay in L2 while this thread's B panels stream by. */
    int64_t panel_bytes = Kg * mr * (g->is8 ? 4 : 8);
    int64_t mcp = A_BLOCK_BYTES / (panel_bytes ? panel_bytes : 1);
    mcp = mcp < 1 ? 1 : mcp;
    for (int64_t mb = 0; mb < g->mpanels; mb += mcp) {
        int64_t me = mb + mcp < g->mpanels ? mb + mcp : g->mpanels;
        for (int64_t np = lo; np < hi; np++) {
            int64_t n0 = np * nr, nv = N - n0 < nr ? N - n0 : nr;
            for (int64_t q0 = 0; q0 < Kg; q0 += kc) {
                int64_t nq = Kg - q0 < kc ? Kg - q0 : kc;
                int last = q0 + nq >= Kg;
                for (int64_t mp = mb; mp < me; mp++) {
                    int64_t m0 = mp * mr, mv = M - m0 < mr ? M - m0 : mr;
                    if (panel_all_slow(g, m0, mv))
                        continue;
                    if (g->is8)
                        ukr8((const int8_t *)g->apack + (mp * Kg + q0) * MR8 * 4,
                             (const uint8_t *)g->bpack + (np * Kg + q0) * NR8 * 4, nq, t1);
                    else
                        (mr == 4 ? ukr16x4 : ukr16)(
                            (const int16_t *)g->apack + (mp * Kg + q0) * mr * 4,
                            (const int16_t *)g->bpack + (np * Kg + q0) * NR16 * 2, nq, t1, t2);
                    for (int64_t r = 0; r < mv; r++) {
                        int64_t *crow = g->c + (m0 + r) * N + n0;
                        const int32_t *x = t1 + r * nr, *y = t2 + r * nr;
                        if (g->cf && q0 == 0 && last && g->direct) {
                            /* one K block: the final value (finish_segment without init,
                             * saturating) goes to the float output, c is not written */
                            if (g->slow[m0 + r])
                                continue;
                            float *frow = g->cf + (m0 + r) * N + n0;
                            if (g->is8)
                                vals_to_float8(frow, x, g->corr[m0 + r], nv, g->scale);
                            else
                                vals_to_float16(frow, x, y, nv, g->scale);
                            continue;
                        }
                        if (g->is8 && q0 == 0)
                            for (int64_t j = 0; j < nv; j++)
                                crow[j] = x[j];
                        else if (g->is8)
                            for (int64_t j = 0; j < nv; j++)
                                crow[j] += x[j];
                        else if (q0 == 0)
                            for (int64_t j = 0; j < nv; j++)
                                crow[j] = (int64_t)x[j] * 256 + y[j];
                        else
                            for (int64_t j = 0; j < nv; j++)
                                crow[j] += (int64_t)x[j] * 256 + y[j];
                        if (last && !g->slow[m0 + r]) {
                            finish_segment(g, m0 + r, n0, nv);
                            if (g->cf)
                                row_to_float(g->cf + (m0 + r) * N + n0, crow, nv, g->scale);
                        }
                    }
                }
            }
        }
    }
}

/* Sizes of the packed operands; the caller allocates them. */
static void vnni_plan(gemm_job *g, size_t *abytes, size_t *bbytes)
{
    g->is8 = g->a.bytes == 1 && g->b.bytes == 1;
    g->vbmi = vbmi_available();
    /* 4-row int16 panels when 6-row ones would waste over 5% of the rows */
    int64_t waste6 = (g->M + MR16 - 1) / MR16 * MR16 - g->M;
    g->mr16 = waste6 * 20 > g->M ? 4 : MR16;
    int64_t mr = g->is8 ? MR8 : g->mr16, nr = g->is8 ? NR8 : NR16;
    g->kgroups = g->is8 ? (g->K + 3) / 4 : (g->K + 1) / 2;
    g->mpanels = (g->M + mr - 1) / mr;
    g->npanels = (g->N + nr - 1) / nr;
    *abytes = (size_t)(g->mpanels * g->kgroups * mr) * (g->is8 ? 4 : 8);
    *bbytes = (size_t)(g->npanels * g->kgroups * nr) * 4;
}

#else /* !MT_HAVE_X86 */

static int vnni_available(void) { return 0; }
static void vnni_pack(gemm_job *g, int tid, int nt)
{
    (void)g;
    (void)tid;
    (void)nt;
}
static void vnni_compute(gemm_job *g, int tid, int nt)
{
    (void)g;
    (void)tid;
    (void)nt;
}
static void vnni_plan(gemm_job *g, size_t *abytes, size_t *bbytes)
{
    (void)g;
    *abytes = *bbytes = 0;
}

#endif

/* ---------------------------------------------------------------- phases */

/* Phase 1: operand statistics (A on thread 0, B on thread 1) and the operand copies the
 * chosen kernel reads (packed panels, or the int32 B). */
static void prep_job(void *p, int tid, int nt)
{
    gemm_job *g = p;
    if (g->use_vnni && bw_available()) { /* every thread takes a share of each operand's rows */
        operand *ops[2] = {&g->a, &g->b};
        for (int i = 0; i < 2; i++) {
            int64_t lo, hi;
            split_range(ops[i]->krows ? g->K : ops[i]->outer, tid, nt, &lo, &hi);
            if (!quick_stats_part(ops[i], g->K, lo, hi, tid))
                ops[i]->qfail = 1;
        }
    } else {
        stats_ctx sc = {&g->a, &g->b, g->K, 0, !g->use_vnni};
        stats_job(&sc, tid, nt < 2 ? 1 : 2);
    }
    if (g->use_vnni)
        vnni_pack(g, tid, nt);
    else
        build_b32_rows(g, tid, nt);
}

/* Phase 2: exact sums and final values of every row not marked slow. */
static void main_job(void *p, int tid, int nt)
{
    gemm_job *g = p;
    if (g->use_vnni)
        vnni_compute(g, tid, nt);
    else
        portable_rows(g, tid, nt);
}

/* ---------------------------------------------------------------- entry points */

int mt_gemm_kernel_available(int kernel)
{
    if (kernel == MT_KERNEL_AUTO || kernel == MT_KERNEL_PORTABLE)
        return 1;
    if (kernel == MT_KERNEL_AVX512_VNNI)
        return vnni_available();
    return 0;
}

static void fill_stats(const gemm_job *g, mt_gemm_stats *s)
{
    int64_t M = g->M, K = g->K, N = g->N;
    int64_t za = 0, zb = 0, sa = 0, sb = 0, both = 0, sops = 0;
    for (int64_t k = 0; k < K; k++) {
        za += g->a.zeros_k[k];
        zb += g->b.zeros_k[k];
        sa += g->a.slices_k[k];
        sb += g->b.slices_k[k];
        both += g->a.zeros_k[k] * g->b.zeros_k[k];
        sops += g->a.slices_k[k] * g->b.slices_k[k];
    }
    s->macs = M * N * K;
    s->zeros_a = za;
    s->zeros_b = zb;
    s->macs_a_zero = za * N;
    s->macs_b_zero = zb * M;
    s->macs_both_zero = both;
    s->macs_executed = s->macs - s->macs_a_zero - s->macs_b_zero + both;
    s->nzslices_a = sa;
    s->nzslices_b = sb;
    s->slice_ops = sops;
    s->slow_rows = g->nslow;
    s->kernel = g->use_vnni ? MT_KERNEL_AVX512_VNNI : MT_KERNEL_PORTABLE;
    s->threads = g->threads;
}

static int gemm_int_impl(const void *a, int a_bytes, int64_t lda, int trans_a, const void *b,
                         int b_bytes, int64_t ldb, int trans_b, int64_t m, int64_t k,
                         int64_t n, const int64_t *init, int64_t *c, int acc_bits,
                         int acc_mode, int kernel, int threads, mt_gemm_stats *stats, float *cf,
                         float scale);

int mt_gemm_int(const void *a, int a_bytes, int64_t lda, int trans_a,
                const void *b, int b_bytes, int64_t ldb, int trans_b,
                int64_t m, int64_t k, int64_t n,
                const int64_t *init, int64_t *c, int acc_bits, int acc_mode,
                int kernel, int threads, mt_gemm_stats *stats)
{
    return gemm_int_impl(a, a_bytes, lda, trans_a, b, b_bytes, ldb, trans_b, m, k, n, init, c,
                         acc_bits, acc_mode, kernel, threads, stats, NULL, 0.0f);
}

/* MICROTRAIN_KERNEL as the Python side reads it (surrounding blanks ignored; unset or empty
 * is auto); -1 for a name it does not accept. */
static int kernel_from_env(void)
{
    const char *v = getenv("MICROTRAIN_KERNEL");
    if (!v)
        return MT_KERNEL_AUTO;
    while (*v == ' ' || (*v >= '\t' && *v <= '\r'))
        v++;
    size_t len = strlen(v);
    while (len && (v[len - 1] == ' ' || (v[len - 1] >= '\t' && v[len - 1] <= '\r')))
        len--;
    if (len == 0 || (len == 4 && !strncmp(v, "auto", 4)))
        return MT_KERNEL_AUTO;
    if (len == 8 && !strncmp(v, "portable", 8))
        return MT_KERNEL_PORTABLE;
    if (len == 11 && !strncmp(v, "avx512-vnni", 11))
        return MT_KERNEL_AVX512_VNNI;
    return -1;
}

int mt_gemm_int_f32(const void *a, int a_bytes, int64_t lda, int trans_a, const void *b,
                    int b_bytes, int64_t ldb, int trans_b, int64_t m, int64_t k, int64_t n,
                    float *out, int frac, int kernel, int threads, mt_gemm_stats *stats)
{
    if (kernel == MT_KERNEL_FROM_ENV && (kernel = kernel_from_env()) < 0)
        return MT_GEMM_EBADARG;
    if (!out || frac < -64 || frac > 126 || m < 0 || n < 0 || (a_bytes != 1 && a_bytes != 2) ||
        (b_bytes != 1 && b_bytes != 2))
        return MT_GEMM_EBADARG;
    uint32_t bits = (uint32_t)(127 - frac) << 23; /* 2^-frac, a normal float32 */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    /* the int64 results: only the rows and blocks that need them are written (the pages of
     * a fresh allocation that are never touched cost nothing) */
    int64_t *c = malloc((size_t)(m * n > 0 ? m * n : 1) * sizeof(int64_t));
    if (!c)
        return MT_GEMM_ENOMEM;
    int rc = gemm_int_impl(a, a_bytes, lda, trans_a, b, b_bytes, ldb, trans_b, m, k, n, NULL, c,
                           a_bytes == 1 && b_bytes == 1 ? 32 : 48, MT_ACC_SATURATE, kernel,
                           threads, stats, out, scale);
    free(c);
    return rc;
}

static int gemm_int_impl(const void *a, int a_bytes, int64_t lda, int trans_a, const void *b,
                         int b_bytes, int64_t ldb, int trans_b, int64_t m, int64_t k,
                         int64_t n, const int64_t *init, int64_t *c, int acc_bits,
                         int acc_mode, int kernel, int threads, mt_gemm_stats *stats, float *cf,
                         float scale)
{
    if (!a || !b || !c || m < 0 || k < 0 || n < 0 || (a_bytes != 1 && a_bytes != 2) ||
        (b_bytes != 1 && b_bytes != 2) || acc_bits < 8 || acc_bits > 64 ||
        (acc_mode != MT_ACC_SATURATE && acc_mode != MT_ACC_WRAP) ||
        !mt_gemm_kernel_available(kernel))
        return MT_GEMM_EBADARG;
    if ((trans_a ? lda < m : lda < k) || (trans_b ? ldb < k : ldb < n))
        return MT_GEMM_EBADARG;
    if (threads <= 0) { /* automatic: the default, but enough work for each thread */
        int64_t per = a_bytes == 1 && b_bytes == 1 ? MIN_MACS_PER_THREAD : MIN_MACS_PER_THREAD / 4;
        int64_t macs = m * n * k, most = macs / per;
        threads = most < DEFAULT_THREADS ? (most < 1 ? 1 : (int)most) : DEFAULT_THREADS;
    }
    if (threads > MAX_THREADS)
        threads = MAX_THREADS;

    gemm_job g;
    memset(&g, 0, sizeof g);
    g.a = (operand){.p = a, .bytes = a_bytes, .ld = lda, .trans = !!trans_a,
                    .krows = !!trans_a, .outer = m};
    g.b = (operand){.p = b, .bytes = b_bytes, .ld = ldb, .trans = !!trans_b,
                    .krows = !trans_b, .outer = n};
    g.M = m;
    g.K = k;
    g.N = n;
    g.init = init;
    g.c = c;
    g.acc_bits = acc_bits;
    g.acc_mode = acc_mode;
    g.threads = threads;
    g.acc_max = acc_bits == 64 ? INT64_MAX : (int64_t)((UINT64_C(1) << (acc_bits - 1)) - 1);
    g.acc_min = -g.acc_max - 1;
    if (init && acc_bits < 64)
        for (int64_t i = 0; i < m * n; i++)
            if (init[i] < g.acc_min || init[i] > g.acc_max)
                return MT_GEMM_EBADARG;
    g.use_vnni = kernel == MT_KERNEL_AVX512_VNNI ||
                 (kernel == MT_KERNEL_AUTO && vnni_available());
    g.cf = cf;
    g.scale = scale;
    g.direct = !init && acc_mode == MT_ACC_SATURATE;

    int rc = MT_GEMM_ENOMEM, owned = 1;
    void *scratch = NULL;
    g.slow = calloc((size_t)m + 1, 1);
    g.arows = malloc((size_t)(threads * (k + 1)) * sizeof(int32_t));
    if (!g.slow || !g.arows)
        goto out;
    size_t ab = 0, bb = 0, qa = operand_qbytes(&g.a, k, threads),
           qb = operand_qbytes(&g.b, k, threads);
    if (g.use_vnni && k > 0 && m > 0 && n > 0) {
        vnni_plan(&g, &ab, &bb);
        ab = (ab + 63) / 64 * 64;
        bb = (bb + 63) / 64 * 64;
        scratch = scratch_get(ab + bb + qa + qb, &owned);
        if (!scratch)
            goto out;
        g.apack = scratch;
        g.bpack = (char *)scratch + ab;
    }
    if (operand_stats_alloc(&g.a, k, threads, scratch ? (char *)scratch + ab + bb : NULL) ||
        operand_stats_alloc(&g.b, k, threads, scratch ? (char *)scratch + ab + bb + qa : NULL))
        goto out;
    if ((!g.use_vnni || !bw_available()) &&
        (operand_full_alloc(&g.a, k) || operand_full_alloc(&g.b, k)))
        goto out; /* the plain C statistics fill the full buffers */
    if (k == 0 || m == 0 || n == 0) {
        memset(c, 0, (size_t)(m * n) * sizeof(int64_t));
        for (int64_t i = 0; init && i < m * n; i++)
            c[i] = init[i];
        stats_ctx sc = {&g.a, &g.b, k, 0, !g.use_vnni};
        stats_job(&sc, 0, 1);
        if (cf)
            row_to_float(cf, c, m * n, scale);
        rc = MT_GEMM_OK;
        goto done;
    }
    if (g.use_vnni) {
        if (g.is8 && !(g.corr = malloc((size_t)m * sizeof(int64_t))))
            goto out;
    } else {
        g.b32 = malloc((size_t)(k * n) * sizeof(int32_t));
        if (!g.b32)
            goto out;
    }
    run_parallel(prep_job, &g, threads);
    if (g.use_vnni && bw_available()) {
        if (g.a.qfail || g.b.qfail)
            goto out;
        quick_stats_merge(&g.a, k, threads);
        quick_stats_merge(&g.b, k, threads);
    }
    if (acc_mode == MT_ACC_SATURATE)
        find_slow_rows(&g);
    if (g.nslow < m)
        run_parallel(main_job, &g, threads);
    if (g.nslow) {
        if (!g.b32) {
            g.b32 = malloc((size_t)(k * n) * sizeof(int32_t));
            if (!g.b32)
                goto out;
            run_parallel(build_b32_job, &g, threads);
        }
        run_parallel(slow_job, &g, threads);
    }
    if (cf) /* rows the fast kernel did not convert: all (portable), or the slow ones */
        for (int64_t r = 0; r < m; r++)
            if (!g.use_vnni || g.slow[r])
                row_to_float(cf + r * n, c + r * n, n, scale);
    rc = MT_GEMM_OK;
done:
    if (stats)
        fill_stats(&g, stats);
out:
    if (scratch)
        scratch_put(scratch, owned);
    free(g.slow);
    free(g.arows);
    free(g.b32);
    free(g.corr);
    free((void *)g.a.st.row_l1);
    free((void *)g.b.st.row_l1);
    if (g.a.qbuf_owned)
        free(g.a.qbuf);
    if (g.b.qbuf_owned)
        free(g.b.qbuf);
    return rc;
}
