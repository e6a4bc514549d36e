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
#include "gemm_api.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define MT_HAVE_X86 1
#include <immintrin.h>
#define VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#define TARGET_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#else
#define MT_HAVE_X86 0
#define VECTOR_CLONES
#endif

#define MAX_THREADS 16
#define DEFAULT_THREADS 2

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
static void run_parallel(par_fn fn, void *ctx, int nt)
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
    mstats st;        /* statistics of the storage */
    const int64_t *l1_outer, *sum_outer, *zeros_k, *slices_k;
} operand;

static int operand_stats_alloc(operand *op, int64_t K)
{
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

static void operand_stats(operand *op, int64_t K)
{
    int64_t R = op->krows ? K : op->outer, C = op->krows ? op->outer : K;
    if (op->bytes == 1)
        stats_i8(op->p, op->ld, R, C, &op->st);
    else
        stats_i16(op->p, op->ld, R, C, &op->st);
}

typedef struct {
    operand *a, *b;
    int64_t K;
} stats_ctx;

static void stats_job(void *p, int tid, int nt)
{
    stats_ctx *s = p;
    if (nt == 1) {
        operand_stats(s->a, s->K);
        operand_stats(s->b, s->K);
    } else if (tid == 0) {
        operand_stats(s->a, s->K);
    } else if (tid == 1) {
        operand_stats(s->b, s->K);
    }
}

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
    int acc_bits, acc_mode, kernel, threads;
    int64_t acc_max, acc_min;
    unsigned char *slow; /* M flags: row computed by the sequential path */
    int64_t nslow;
    int32_t *b32;        /* K x N int32 copy of B (portable and sequential paths) */
    int64_t *corr;       /* M values subtracted from the fast sums (int8 bias trick) */
    int32_t *arows;      /* one K-element row buffer per thread */
    /* packed operands of the VNNI kernels */
    void *apack, *bpack;
    int64_t kgroups;     /* K / 4 (int8) or K / 2 (int16), rounded up */
    int64_t mpanels, npanels;
} gemm_job;

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

/* Mark the rows whose partial sums might leave the accumulator range (saturate mode). */
static void find_slow_rows(gemm_job *g)
{
    int64_t maxa = g->a.st.maxabs, maxb = g->b.st.maxabs;
    g->nslow = 0;
    for (int64_t m = 0; m < g->M; m++) {
        int64_t maxinit = 0;
        if (g->init)
            for (int64_t n = 0; n < g->N; n++) {
                int64_t v = g->init[m * g->N + n];
                int64_t u = v < 0 ? (v == INT64_MIN ? INT64_MAX : -v) : v;
                maxinit = u > maxinit ? u : maxinit;
            }
        int64_t row_bound = mul_sat(g->a.l1_outer[m], maxb);
        int slow = 0;
        if (add_sat(row_bound, maxinit) > g->acc_max) {
            for (int64_t n = 0; n < g->N && !slow; n++) {
                int64_t col_bound = mul_sat(maxa, g->b.l1_outer[n]);
                int64_t bound = row_bound < col_bound ? row_bound : col_bound;
                int64_t v = g->init ? g->init[m * g->N + n] : 0;
                int64_t u = v < 0 ? (v == INT64_MIN ? INT64_MAX : -v) : v;
                slow = add_sat(bound, u) > g->acc_max;
            }
        }
        g->slow[m] = (unsigned char)slow;
        g->nslow += slow;
    }
}

/* ---------------------------------------------------------------- portable kernel */

static void build_b32_job(void *p, int tid, int nt)
{
    gemm_job *g = p;
    int64_t lo, hi;
    split_range(g->K, tid, nt, &lo, &hi);
    for (int64_t k = lo; k < hi; k++)
        load_row(g->b32 + k * g->N, g->b.p, g->b.bytes, g->b.ld, g->b.trans, k, g->N);
}

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

static void portable_job(void *p, int tid, int nt)
{
    gemm_job *g = p;
    int64_t lo, hi;
    split_range(g->M, tid, nt, &lo, &hi);
    int32_t *arow = g->arows + tid * (g->K + 1);
    for (int64_t m = lo; m < hi; m++) {
        if (g->slow[m])
            continue;
        load_row(arow, g->a.p, g->a.bytes, g->a.ld, g->a.trans, m, g->K);
        row_sum_exact(g->c + m * g->N, arow, g->b32, g->K, g->N);
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

static int64_t wrap_bits(int64_t v, int bits)
{
    if (bits >= 64)
        return v;
    uint64_t u = (uint64_t)v << (64 - bits);
    return (int64_t)u >> (64 - bits); /* arithmetic shift (GCC) sign-extends */
}

/* Final values: fast rows get init + S - corr (wrapped in wrap mode); slow rows run the
 * sequential saturating loop. */
static void finish_job(void *p, int tid, int nt)
{
    gemm_job *g = p;
    int64_t lo, hi;
    split_range(g->M, tid, nt, &lo, &hi);
    int32_t *arow = g->arows + tid * (g->K + 1);
    for (int64_t m = lo; m < hi; m++) {
        int64_t *crow = g->c + m * g->N;
        const int64_t *irow = g->init ? g->init + m * g->N : NULL;
        if (g->slow[m]) {
            load_row(arow, g->a.p, g->a.bytes, g->a.ld, g->a.trans, m, g->K);
            for (int64_t n = 0; n < g->N; n++)
                crow[n] = irow ? irow[n] : 0;
            if (g->acc_bits == 64)
                row_saturating64(crow, arow, g->b32, g->K, g->N);
            else
                row_saturating(crow, arow, g->b32, g->K, g->N, g->acc_min, g->acc_max);
            continue;
        }
        int64_t corr = g->corr ? g->corr[m] : 0;
        if (g->acc_mode == MT_ACC_WRAP) {
            for (int64_t n = 0; n < g->N; n++) {
                uint64_t v = (uint64_t)crow[n] - (uint64_t)corr + (irow ? (uint64_t)irow[n] : 0);
                crow[n] = wrap_bits((int64_t)v, g->acc_bits);
            }
        } else {
            for (int64_t n = 0; n < g->N; n++)
                crow[n] = crow[n] - corr + (irow ? irow[n] : 0);
        }
    }
}

/* ---------------------------------------------------------------- AVX-512 VNNI kernels */

/* int8: micro-tile 8 x 32 (16 zmm accumulators), K blocks of KC8Q quads of k. An int32 lane
 * gains at most 4 * 255 * 128 = 130560 per quad, so 128 quads (512 k) stay far below 2^31. */
#define MR8 8
#define NR8 32
#define KC8Q 128
/* int16: micro-tile 6 x 32 with a high-byte and a low-byte accumulator each (24 zmm),
 * K blocks of KC16P pairs of k. Per pair a lane gains at most 2 * 32768 * 255 = 16711680
 * (low byte) or 2 * 32768 * 128 = 2^23 (high byte): 128 pairs stay within +-2^31 - 1
 * (128 * 16711680 = 2139095040 < 2147483647). */
#define MR16 6
#define NR16 32
#define KC16P 128

#if MT_HAVE_X86

static int vnni_available(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

/* tile[r][j] = sum over nq quads of sum_t ap[q][r][t] * (bp[q][j][t]) (bp is u8). */
TARGET_VNNI static void ukr8(const int8_t *ap, const uint8_t *bp, int64_t nq, int32_t *tile)
{
    __m512i acc[MR8][2];
#pragma GCC unroll 8
    for (int r = 0; r < MR8; r++)
        acc[r][0] = acc[r][1] = _mm512_setzero_si512();
    for (int64_t q = 0; q < nq; q++) {
        __m512i b0 = _mm512_load_si512((const void *)bp);
        __m512i b1 = _mm512_load_si512((const void *)(bp + 64));
#pragma GCC unroll 8
        for (int r = 0; r < MR8; r++) {
            int32_t w;
            memcpy(&w, ap + 4 * r, 4);
            __m512i av = _mm512_set1_epi32(w);
            acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], b0, av);
            acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], b1, av);
        }
        ap += 4 * MR8;
        bp += 4 * NR8;
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR8; r++) {
        _mm512_storeu_si512((void *)(tile + r * NR8), acc[r][0]);
        _mm512_storeu_si512((void *)(tile + r * NR8 + 16), acc[r][1]);
    }
}

TARGET_VNNI static void ukr16(const int16_t *ap, const int16_t *bp, int64_t np, int32_t *hi,
                              int32_t *lo)
{
    __m512i h[MR16][2], l[MR16][2];
#pragma GCC unroll 6
    for (int r = 0; r < MR16; r++)
        h[r][0] = h[r][1] = l[r][0] = l[r][1] = _mm512_setzero_si512();
    for (int64_t q = 0; q < np; q++) {
        __m512i bh0 = _mm512_load_si512((const void *)bp);
        __m512i bh1 = _mm512_load_si512((const void *)(bp + 32));
        __m512i bl0 = _mm512_load_si512((const void *)(bp + 64));
        __m512i bl1 = _mm512_load_si512((const void *)(bp + 96));
#pragma GCC unroll 6
        for (int r = 0; r < MR16; r++) {
            int32_t w;
            memcpy(&w, ap + 2 * r, 4);
            __m512i av = _mm512_set1_epi32(w);
            h[r][0] = _mm512_dpwssd_epi32(h[r][0], bh0, av);
            h[r][1] = _mm512_dpwssd_epi32(h[r][1], bh1, av);
            l[r][0] = _mm512_dpwssd_epi32(l[r][0], bl0, av);
            l[r][1] = _mm512_dpwssd_epi32(l[r][1], bl1, av);
        }
        ap += 2 * MR16;
        bp += 4 * NR16;
    }
#pragma GCC unroll 6
    for (int r = 0; r < MR16; r++) {
        _mm512_storeu_si512((void *)(hi + r * NR16), h[r][0]);
        _mm512_storeu_si512((void *)(hi + r * NR16 + 16), h[r][1]);
        _mm512_storeu_si512((void *)(lo + r * NR16), l[r][0]);
        _mm512_storeu_si512((void *)(lo + r * NR16 + 16), l[r][1]);
    }
}

/* Pack A (int8 x int8 case): panel p holds rows p*MR8.. as [quad][MR8][4] bytes. */
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
            if (!g->a.trans) {
                const int8_t *row = src + m * g->a.ld;
                int64_t q = 0;
                for (; 4 * q + 4 <= K; q++)
                    memcpy(d + (q * MR8 + r) * 4, row + 4 * q, 4);
                for (int64_t k = 4 * q; k < K; k++)
                    d[(q * MR8 + r) * 4 + (k - 4 * q)] = row[k];
            } else {
                for (int64_t k = 0; k < K; k++)
                    d[((k >> 2) * MR8 + r) * 4 + (k & 3)] = src[k * g->a.ld + m];
            }
        }
    }
}

/* Pack B (int8 x int8 case): panel p holds columns p*NR8.. as [quad][NR8][4] bytes b + 128. */
static void pack_b8(const gemm_job *g, int64_t p0, int64_t p1)
{
    int64_t N = g->N, K = g->K, Kq = g->kgroups;
    const int8_t *src = g->b.p;
    int64_t ld = g->b.ld;
    const __m128i flip = _mm_set1_epi8((char)0x80);
    for (int64_t p = p0; p < p1; p++) {
        uint8_t *d = (uint8_t *)g->bpack + p * Kq * NR8 * 4;
        int64_t n0 = p * NR8, nv = N - n0 < NR8 ? N - n0 : NR8;
        memset(d, 0x80, (size_t)(Kq * NR8 * 4));
        if (!g->b.trans) {
            int64_t q = 0;
            if (nv == NR8) {
                for (; 4 * q + 4 <= K; q++) {
                    const int8_t *s0 = src + (4 * q) * ld + n0;
                    for (int grp = 0; grp < NR8 / 16; grp++) {
                        __m128i r0 = _mm_loadu_si128((const __m128i *)(s0 + 16 * grp));
                        __m128i r1 = _mm_loadu_si128((const __m128i *)(s0 + ld + 16 * grp));
                        __m128i r2 = _mm_loadu_si128((const __m128i *)(s0 + 2 * ld + 16 * grp));
                        __m128i r3 = _mm_loadu_si128((const __m128i *)(s0 + 3 * ld + 16 * grp));
                        r0 = _mm_xor_si128(r0, flip);
                        r1 = _mm_xor_si128(r1, flip);
                        r2 = _mm_xor_si128(r2, flip);
                        r3 = _mm_xor_si128(r3, flip);
                        __m128i lo01 = _mm_unpacklo_epi8(r0, r1), hi01 = _mm_unpackhi_epi8(r0, r1);
                        __m128i lo23 = _mm_unpacklo_epi8(r2, r3), hi23 = _mm_unpackhi_epi8(r2, r3);
                        uint8_t *o = d + (q * NR8 + 16 * grp) * 4;
                        _mm_storeu_si128((__m128i *)o, _mm_unpacklo_epi16(lo01, lo23));
                        _mm_storeu_si128((__m128i *)(o + 16), _mm_unpackhi_epi16(lo01, lo23));
                        _mm_storeu_si128((__m128i *)(o + 32), _mm_unpacklo_epi16(hi01, hi23));
                        _mm_storeu_si128((__m128i *)(o + 48), _mm_unpackhi_epi16(hi01, hi23));
                    }
                }
            }
            for (int64_t k = 4 * q; k < K; k++) {
                const int8_t *row = src + k * ld + n0;
                uint8_t *o = d + ((k >> 2) * NR8) * 4 + (k & 3);
                for (int64_t j = 0; j < nv; j++)
                    o[4 * j] = (uint8_t)(row[j] ^ (int8_t)0x80);
            }
        } else {
            for (int64_t j = 0; j < nv; j++) {
                const int8_t *row = src + (n0 + j) * ld;
                int64_t q = 0;
                for (; 4 * q + 4 <= K; q++) {
                    uint32_t w;
                    memcpy(&w, row + 4 * q, 4);
                    w ^= 0x80808080u;
                    memcpy(d + (q * NR8 + j) * 4, &w, 4);
                }
                for (int64_t k = 4 * q; k < K; k++)
                    d[(q * NR8 + j) * 4 + (k - 4 * q)] = (uint8_t)(row[k] ^ (int8_t)0x80);
            }
        }
    }
}

static inline int32_t elem(const void *p, int bytes, int64_t i)
{
    return bytes == 1 ? ((const int8_t *)p)[i] : ((const int16_t *)p)[i];
}

/* Pack A (int16 case): panel p holds rows p*MR16.. as [pair][MR16][2] int16. */
static void pack_a16(const gemm_job *g, int64_t p0, int64_t p1)
{
    int64_t M = g->M, K = g->K, Kp = g->kgroups;
    for (int64_t p = p0; p < p1; p++) {
        int16_t *d = (int16_t *)g->apack + p * Kp * MR16 * 2;
        memset(d, 0, (size_t)(Kp * MR16 * 2) * sizeof(int16_t));
        for (int r = 0; r < MR16; r++) {
            int64_t m = p * MR16 + r;
            if (m >= M)
                break;
            if (!g->a.trans) {
                int64_t base = m * g->a.ld;
                for (int64_t k = 0; k < K; k++)
                    d[((k >> 1) * MR16 + r) * 2 + (k & 1)] =
                        (int16_t)elem(g->a.p, g->a.bytes, base + k);
            } else {
                for (int64_t k = 0; k < K; k++)
                    d[((k >> 1) * MR16 + r) * 2 + (k & 1)] =
                        (int16_t)elem(g->a.p, g->a.bytes, k * g->a.ld + m);
            }
        }
    }
}

/* Pack B (int16 case): panel p holds columns p*NR16.. as [pair][hi, lo][NR16][2] int16 with
 * b = 256 * hi + lo, hi = b >> 8 in -128..127, lo = b & 255. */
static void pack_b16(const gemm_job *g, int64_t p0, int64_t p1)
{
    int64_t N = g->N, K = g->K, Kp = g->kgroups;
    for (int64_t p = p0; p < p1; p++) {
        int16_t *d = (int16_t *)g->bpack + p * Kp * NR16 * 4;
        int64_t n0 = p * NR16, nv = N - n0 < NR16 ? N - n0 : NR16;
        memset(d, 0, (size_t)(Kp * NR16 * 4) * sizeof(int16_t));
        for (int64_t k = 0; k < K; k++) {
            int16_t *o = d + (k >> 1) * NR16 * 4 + (k & 1);
            for (int64_t j = 0; j < nv; j++) {
                int64_t idx = g->b.trans ? (n0 + j) * g->b.ld + k : k * g->b.ld + n0 + j;
                int32_t v = elem(g->b.p, g->b.bytes, idx);
                o[2 * j] = (int16_t)(v >> 8);
                o[2 * NR16 + 2 * j] = (int16_t)(v & 255);
            }
        }
    }
}

static void pack_job(void *p, int tid, int nt)
{
    gemm_job *g = p;
    int64_t lo, hi;
    int is8 = g->kernel == 8;
    split_range(g->mpanels, tid, nt, &lo, &hi);
    if (is8)
        pack_a8(g, lo, hi);
    else
        pack_a16(g, lo, hi);
    split_range(g->npanels, tid, nt, &lo, &hi);
    if (is8)
        pack_b8(g, lo, hi);
    else
        pack_b16(g, lo, hi);
}

static void vnni_job(void *p, int tid, int nt)
{
    gemm_job *g = p;
    int64_t lo, hi, M = g->M, N = g->N, Kg = g->kgroups;
    split_range(g->npanels, tid, nt, &lo, &hi);
    if (g->kernel == 8) {
        _Alignas(64) int32_t tile[MR8 * NR8];
        for (int64_t np = lo; np < hi; np++) {
            int64_t n0 = np * NR8, nv = N - n0 < NR8 ? N - n0 : NR8;
            for (int64_t q0 = 0; q0 < Kg; q0 += KC8Q) {
                int64_t nq = Kg - q0 < KC8Q ? Kg - q0 : KC8Q;
                const uint8_t *bp = (const uint8_t *)g->bpack + (np * Kg + q0) * NR8 * 4;
                for (int64_t mp = 0; mp < g->mpanels; mp++) {
                    int64_t m0 = mp * MR8, mv = M - m0 < MR8 ? M - m0 : MR8;
                    if (g->nslow) {
                        int any = 0;
                        for (int64_t r = 0; r < mv; r++)
                            any |= !g->slow[m0 + r];
                        if (!any)
                            continue;
                    }
                    const int8_t *ap = (const int8_t *)g->apack + (mp * Kg + q0) * MR8 * 4;
                    ukr8(ap, bp, nq, tile);
                    for (int64_t r = 0; r < mv; r++) {
                        int64_t *crow = g->c + (m0 + r) * N + n0;
                        const int32_t *t = tile + r * NR8;
                        if (q0 == 0)
                            for (int64_t j = 0; j < nv; j++)
                                crow[j] = t[j];
                        else
                            for (int64_t j = 0; j < nv; j++)
                                crow[j] += t[j];
                    }
                }
            }
        }
    } else {
        _Alignas(64) int32_t th[MR16 * NR16];
        _Alignas(64) int32_t tl[MR16 * NR16];
        for (int64_t np = lo; np < hi; np++) {
            int64_t n0 = np * NR16, nv = N - n0 < NR16 ? N - n0 : NR16;
            for (int64_t q0 = 0; q0 < Kg; q0 += KC16P) {
                int64_t nq = Kg - q0 < KC16P ? Kg - q0 : KC16P;
                const int16_t *bp = (const int16_t *)g->bpack + (np * Kg + q0) * NR16 * 4;
                for (int64_t mp = 0; mp < g->mpanels; mp++) {
                    int64_t m0 = mp * MR16, mv = M - m0 < MR16 ? M - m0 : MR16;
                    if (g->nslow) {
                        int any = 0;
                        for (int64_t r = 0; r < mv; r++)
                            any |= !g->slow[m0 + r];
                        if (!any)
                            continue;
                    }
                    const int16_t *ap = (const int16_t *)g->apack + (mp * Kg + q0) * MR16 * 2;
                    ukr16(ap, bp, nq, th, tl);
                    for (int64_t r = 0; r < mv; r++) {
                        int64_t *crow = g->c + (m0 + r) * N + n0;
                        const int32_t *h = th + r * NR16, *l = tl + r * NR16;
                        if (q0 == 0)
                            for (int64_t j = 0; j < nv; j++)
                                crow[j] = (int64_t)h[j] * 256 + l[j];
                        else
                            for (int64_t j = 0; j < nv; j++)
                                crow[j] += (int64_t)h[j] * 256 + l[j];
                    }
                }
            }
        }
    }
}

/* Pack and run the VNNI kernel into g->c. Returns 0 or MT_GEMM_ENOMEM. */
static int run_vnni(gemm_job *g)
{
    int is8 = g->a.bytes == 1 && g->b.bytes == 1;
    g->kernel = is8 ? 8 : 16;
    int64_t mr = is8 ? MR8 : MR16, nr = is8 ? NR8 : NR16;
    g->kgroups = is8 ? (g->K + 3) / 4 : (g->K + 1) / 2;
    g->mpanels = (g->M + mr - 1) / mr;
    g->npanels = (g->N + nr - 1) / nr;
    size_t abytes = (size_t)(g->mpanels * g->kgroups * mr) * 4;
    size_t bbytes = (size_t)(g->npanels * g->kgroups * nr) * (is8 ? 4 : 8);
    g->apack = alloc64(abytes);
    g->bpack = alloc64(bbytes);
    if (is8)
        g->corr = malloc((size_t)g->M * sizeof(int64_t) + 8);
    if (!g->apack || !g->bpack || (is8 && !g->corr)) {
        free(g->apack);
        free(g->bpack);
        free(g->corr);
        g->apack = g->bpack = NULL;
        g->corr = NULL;
        return MT_GEMM_ENOMEM;
    }
    if (is8)
        for (int64_t m = 0; m < g->M; m++)
            g->corr[m] = 128 * g->a.sum_outer[m];
    run_parallel(pack_job, g, g->threads);
    run_parallel(vnni_job, g, g->threads);
    free(g->apack);
    free(g->bpack);
    g->apack = g->bpack = NULL;
    return 0;
}

#else /* !MT_HAVE_X86 */

static int vnni_available(void) { return 0; }
static int run_vnni(gemm_job *g)
{
    (void)g;
    return MT_GEMM_EBADARG;
}

#endif

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
}

int mt_gemm_int(const void *a, int a_bytes, int64_t lda, int trans_a,
                const void *b, int b_bytes, int64_t ldb, int trans_b,
                int64_t m, int64_t k, int64_t n,
                const int64_t *init, int64_t *c, int acc_bits, int acc_mode,
                int kernel, int threads, mt_gemm_stats *stats)
{
    if (!a || !b || !c || m < 0 || k < 0 || n < 0 || (a_bytes != 1 && a_bytes != 2) ||
        (b_bytes != 1 && b_bytes != 2) || acc_bits < 8 || acc_bits > 64 ||
        (acc_mode != MT_ACC_SATURATE && acc_mode != MT_ACC_WRAP) ||
        !mt_gemm_kernel_available(kernel))
        return MT_GEMM_EBADARG;
    if ((trans_a ? lda < m : lda < k) || (trans_b ? ldb < k : ldb < n))
        return MT_GEMM_EBADARG;
    if (threads <= 0)
        threads = DEFAULT_THREADS;
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

    int rc = MT_GEMM_ENOMEM;
    g.slow = calloc((size_t)m + 1, 1);
    g.arows = malloc((size_t)(threads * (k + 1)) * sizeof(int32_t));
    if (!g.slow || !g.arows || operand_stats_alloc(&g.a, k) || operand_stats_alloc(&g.b, k))
        goto out;
    stats_ctx sc = {&g.a, &g.b, k};
    run_parallel(stats_job, &sc, threads < 2 ? 1 : 2);
    if (acc_mode == MT_ACC_SATURATE)
        find_slow_rows(&g);

    int use_vnni = kernel == MT_KERNEL_AVX512_VNNI ||
                   (kernel == MT_KERNEL_AUTO && vnni_available());
    int need_b32 = !use_vnni || g.nslow > 0;
    if (need_b32 && k > 0 && n > 0) {
        g.b32 = malloc((size_t)(k * n) * sizeof(int32_t));
        if (!g.b32)
            goto out;
        run_parallel(build_b32_job, &g, threads);
    }
    int run_fast = g.nslow < m && k > 0 && n > 0;
    if (!run_fast || k == 0)
        memset(c, 0, (size_t)(m * n) * sizeof(int64_t));
    if (run_fast) {
        if (use_vnni) {
            rc = run_vnni(&g);
            if (rc)
                goto out;
        } else {
            run_parallel(portable_job, &g, threads);
        }
    }
    run_parallel(finish_job, &g, threads);
    rc = MT_GEMM_OK;
    if (stats) {
        fill_stats(&g, stats);
        stats->slow_rows = g.nslow;
        stats->kernel = use_vnni ? MT_KERNEL_AVX512_VNNI : MT_KERNEL_PORTABLE;
        stats->threads = threads;
    }
out:
    free(g.slow);
    free(g.arows);
    free(g.b32);
    free(g.corr);
    free((void *)g.a.st.row_l1);
    free((void *)g.b.st.row_l1);
    return rc;
}
