/* Element-wise training kernels (declarations and definitions in train_api.h).
 *
 * mt_sgd_update is the engine's SGD update in one pass: the same float32 operations in the
 * same order as the numpy reference (device_model.engine_reference), each rounded once
 * (fp-contract is off: no FMA), so the results are identical bit for bit. Elements are
 * independent, so splitting the array across two threads changes nothing.
 */
#pragma GCC optimize("fp-contract=off")

#include "train_api.h"
#include "train_fast_api.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__)
#define VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define VECTOR_CLONES
#endif

/* Arrays at least this long are split across two threads. */
#define SPLIT_MIN ((int64_t)1 << 17)

/* The parked-thread pool of gemm.c (fn(ctx, t, nt) for t = 0..nt-1). */
void mt_run_parallel(void (*fn)(void *ctx, int tid, int nt), void *ctx, int nt);

/* fn(first) on the caller and fn(second) on a pool worker, at the same time. */
typedef struct {
    void (*fn)(void *);
    void *job[2];
} pair_job;

static void pair_part(void *p, int tid, int nt)
{
    pair_job *pj = p;
    (void)nt;
    pj->fn(pj->job[tid]);
}

static void run_pair(void (*fn)(void *), void *first, void *second)
{
    pair_job pj = {fn, {first, second}};
    mt_run_parallel(pair_part, &pj, 2);
}

typedef struct {
    float *w, *m;
    const float *g;
    const uint8_t *upd, *keep;
    float lr, mu, wd;
    int64_t lo, hi;
} sgd_job;

VECTOR_CLONES static void sgd_range(const sgd_job *t)
{
    float *restrict w = t->w;
    float *restrict m = t->m;
    const float *restrict g = t->g;
    const uint8_t *upd = t->upd, *keep = t->keep;
    const float lr = t->lr, mu = t->mu, wd = t->wd;
    const int64_t lo = t->lo, hi = t->hi;
    /* the common cases as straight loops the compiler vectorises */
    if (!upd && !keep && !m) {
        for (int64_t i = lo; i < hi; i++) {
            float d = g[i] + wd * w[i];
            w[i] = w[i] - lr * d;
        }
        return;
    }
    if (!upd && !keep) {
        for (int64_t i = lo; i < hi; i++) {
            float d = g[i] + wd * w[i];
            float mm = mu * m[i] + d;
            m[i] = mm;
            w[i] = w[i] - lr * mm;
        }
        return;
    }
    for (int64_t i = lo; i < hi; i++) {
        float wi = w[i];
        float d = g[i] + wd * wi;
        int u = upd ? upd[i] != 0 : 1;
        if (m) {
            float mm = mu * m[i] + d;
            m[i] = u ? mm : m[i];
            d = mm;
        }
        float wn = wi - lr * d;
        wn = u ? wn : wi;
        w[i] = (keep && !keep[i]) ? 0.0f : wn;
    }
}

static void sgd_part(void *p) { sgd_range(p); }

int mt_sgd_update(float *w, float *m, const float *g, const uint8_t *upd, const uint8_t *keep,
                  int64_t n, float lr, float mu, float wd, int threads)
{
    if (!w || !g || n < 0)
        return -1;
    if (threads <= 0)
        threads = n >= SPLIT_MIN ? 2 : 1;
    sgd_job a = {w, m, g, upd, keep, lr, mu, wd, 0, n};
    if (threads < 2 || n < 128) {
        sgd_range(&a);
        return 0;
    }
    int64_t mid = (n / 2) & ~(int64_t)63; /* whole cache lines to each thread */
    sgd_job b = a;
    a.hi = mid;
    b.lo = mid;
    run_pair(sgd_part, &a, &b);
    return 0;
}

typedef struct {
    const int64_t *acc;
    float *out;
    float scale;
    int64_t lo, hi;
} rescale_job;

VECTOR_CLONES static void rescale_range(const rescale_job *t)
{
    const int64_t *restrict acc = t->acc;
    float *restrict out = t->out;
    const float scale = t->scale;
    for (int64_t i = t->lo; i < t->hi; i++)
        out[i] = (float)acc[i] * scale;
}

static void rescale_part(void *p) { rescale_range(p); }

int mt_rescale_i64(const int64_t *acc, float *out, int64_t n, int frac, int threads)
{
    if (!acc || !out || n < 0 || frac < -64 || frac > 126)
        return -1;
    uint32_t bits = (uint32_t)(127 - frac) << 23; /* 2^-frac, a normal float32 */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    if (threads <= 0)
        threads = n >= SPLIT_MIN ? 2 : 1;
    rescale_job a = {acc, out, scale, 0, n};
    if (threads < 2 || n < 128) {
        rescale_range(&a);
        return 0;
    }
    int64_t mid = (n / 2) & ~(int64_t)63;
    rescale_job b = a;
    a.hi = mid;
    b.lo = mid;
    run_pair(rescale_part, &a, &b);
    return 0;
}

/* The zero counters of one element type (float32, int8, int16): unit column stride, rows
 * walked in order, counting into per_row and per_col. */
#define ZERO_ROWS(NAME, T)                                                                     \
    VECTOR_CLONES static void NAME(const void *xv, int64_t rows, int64_t cols, int64_t rs,     \
                                   int64_t *per_row, int64_t *per_col, int64_t *total)          \
    {                                                                                          \
        const T *x = xv;                                                                       \
        int64_t tot = 0;                                                                       \
        for (int64_t r = 0; r < rows; r++) {                                                   \
            const T *row = x + r * rs;                                                         \
            int64_t z = 0;                                                                     \
            if (per_col) {                                                                     \
                for (int64_t c = 0; c < cols; c++) {                                           \
                    int64_t e = row[c] == 0;                                                   \
                    per_col[c] += e;                                                           \
                    z += e;                                                                    \
                }                                                                              \
            } else {                                                                           \
                for (int64_t c = 0; c < cols; c++)                                             \
                    z += row[c] == 0;                                                          \
            }                                                                                  \
            if (per_row)                                                                       \
                per_row[r] = z;                                                                \
            tot += z;                                                                          \
        }                                                                                      \
        *total = tot;                                                                          \
    }
ZERO_ROWS(zero_rows_f32, float)
ZERO_ROWS(zero_rows_i8, int8_t)
ZERO_ROWS(zero_rows_i16, int16_t)

typedef void (*zero_fn)(const void *, int64_t, int64_t, int64_t, int64_t *, int64_t *,
                        int64_t *);

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_ZERO_AVX512 1
#define TARGET_ZERO __attribute__((target("avx512f,avx512bw,avx512vl,popcnt")))

/* The same counts with AVX-512 compare masks: 16 float32 / 32 int16 / 64 int8 elements per
 * compare, the row's zeros by popcount, the columns' in int32 counters (a mask-add per 16
 * columns) added into per_col at the end. Falls back to the plain loop without memory. */
#define ZERO_AVX512(NAME, T, PLAIN, LANES, MASKT, CMP, POPCNT)                                 \
    TARGET_ZERO static void NAME(const void *xv, int64_t rows, int64_t cols, int64_t rs,       \
                                 int64_t *per_row, int64_t *per_col, int64_t *total)            \
    {                                                                                          \
        int32_t *cnt = NULL;                                                                   \
        if (per_col && !(cnt = calloc((size_t)cols + LANES, sizeof *cnt))) {                   \
            PLAIN(xv, rows, cols, rs, per_row, per_col, total);                                \
            return;                                                                            \
        }                                                                                      \
        const T *x = xv;                                                                       \
        const __m512i one = _mm512_set1_epi32(1);                                              \
        const int64_t cfull = cols / LANES * LANES;                                            \
        const MASKT tail = (MASKT)((((MASKT)1) << (cols - cfull)) - 1); /* cols-cfull < LANES */ \
        int64_t tot = 0;                                                                       \
        if (cnt && cols <= LANES) { /* one vector a row: column counts stay in registers */    \
            const MASKT k = cols == LANES ? (MASKT)~(MASKT)0 : tail;                           \
            __m512i acc[LANES / 16];                                                           \
            for (int p = 0; p < LANES / 16; p++)                                               \
                acc[p] = _mm512_setzero_si512();                                               \
            for (int64_t r = 0; r < rows; r++) {                                               \
                MASKT m = CMP(x + r * rs, k);                                                  \
                int64_t z = POPCNT(m);                                                         \
                for (int p = 0; p < LANES / 16; p++)                                           \
                    acc[p] = _mm512_mask_add_epi32(acc[p], (__mmask16)(m >> (16 * p)), acc[p], \
                                                   one);                                       \
                if (per_row)                                                                   \
                    per_row[r] = z;                                                            \
                tot += z;                                                                      \
            }                                                                                  \
            for (int p = 0; p < LANES / 16; p++)                                               \
                _mm512_storeu_si512((void *)(cnt + 16 * p), acc[p]);                           \
            for (int64_t c = 0; c < cols; c++)                                                 \
                per_col[c] += cnt[c];                                                          \
            free(cnt);                                                                         \
            *total = tot;                                                                      \
            return;                                                                            \
        }                                                                                      \
        for (int64_t r = 0; r < rows; r++) {                                                   \
            const T *row = x + r * rs;                                                         \
            int64_t z = 0;                                                                     \
            for (int64_t c = 0; c <= cols - LANES || (c < cols && c == cfull); c += LANES) {   \
                MASKT m = CMP(row + c, c == cfull ? tail : (MASKT)~(MASKT)0);                  \
                z += POPCNT(m);                                                                \
                if (cnt)                                                                       \
                    for (int p = 0; p < LANES / 16; p++) {                                     \
                        __m512i v = _mm512_loadu_si512((const void *)(cnt + c + 16 * p));      \
                        v = _mm512_mask_add_epi32(v, (__mmask16)(m >> (16 * p)), v, one);      \
                        _mm512_storeu_si512((void *)(cnt + c + 16 * p), v);                    \
                    }                                                                          \
            }                                                                                  \
            if (per_row)                                                                       \
                per_row[r] = z;                                                                \
            tot += z;                                                                          \
        }                                                                                      \
        for (int64_t c = 0; cnt && c < cols; c++)                                              \
            per_col[c] += cnt[c];                                                              \
        free(cnt);                                                                             \
        *total = tot;                                                                          \
    }

TARGET_ZERO static inline __mmask16 cmp_f32(const float *p, __mmask16 k)
{
    return _mm512_mask_cmp_ps_mask(k, _mm512_maskz_loadu_ps(k, p), _mm512_setzero_ps(),
                                   _CMP_EQ_OQ);
}
TARGET_ZERO static inline __mmask32 cmp_i16(const int16_t *p, __mmask32 k)
{
    return _mm512_mask_cmpeq_epi16_mask(k, _mm512_maskz_loadu_epi16(k, p),
                                        _mm512_setzero_si512());
}
TARGET_ZERO static inline __mmask64 cmp_i8(const int8_t *p, __mmask64 k)
{
    return _mm512_mask_cmpeq_epi8_mask(k, _mm512_maskz_loadu_epi8(k, p),
                                       _mm512_setzero_si512());
}
#define POP16(m) __builtin_popcount((unsigned)(m))
#define POP64(m) __builtin_popcountll((unsigned long long)(m))
ZERO_AVX512(zero_rows_f32_512, float, zero_rows_f32, 16, __mmask16, cmp_f32, POP16)
ZERO_AVX512(zero_rows_i16_512, int16_t, zero_rows_i16, 32, __mmask32, cmp_i16, POP16)
ZERO_AVX512(zero_rows_i8_512, int8_t, zero_rows_i8, 64, __mmask64, cmp_i8, POP64)

static int zero_avx512(void)
{
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("popcnt");
    }
    return known;
}
#else
#define HAVE_ZERO_AVX512 0
#endif

/* One row range on a thread, into its own per_col buffer. */
typedef struct {
    zero_fn fn;
    const void *x;
    int64_t rows, cols, rs;
    int64_t *per_row, *per_col;
    int64_t total;
} zero_job;

static void zero_part(void *p)
{
    zero_job *t = p;
    t->fn(t->x, t->rows, t->cols, t->rs, t->per_row, t->per_col, &t->total);
}

/* fn with per_col zeroed first; large matrices in two row halves on two threads (integer
 * counts: the split cannot change them). */
static void zero_rows_split(zero_fn fn, const char *x, int esize, int64_t rows, int64_t cols,
                            int64_t rs, int64_t *per_row, int64_t *per_col, int64_t *total,
                            int threads)
{
    for (int64_t c = 0; per_col && c < cols; c++)
        per_col[c] = 0;
    int64_t half = rows / 2;
    int64_t *second = NULL;
    int split = threads != 1 && rows * cols >= SPLIT_MIN && half > 0;
    if (split && per_col)
        second = calloc((size_t)cols, sizeof *second);
    if (!split || (per_col && !second)) {
        fn(x, rows, cols, rs, per_row, per_col, total);
        return;
    }
    zero_job a = {fn, x, half, cols, rs, per_row, per_col, 0};
    zero_job b = {fn, x + half * rs * esize, rows - half, cols, rs,
                  per_row ? per_row + half : NULL, second, 0};
    run_pair(zero_part, &a, &b);
    for (int64_t c = 0; per_col && c < cols; c++)
        per_col[c] += second[c];
    free(second);
    *total = a.total + b.total;
}

static int64_t elem_is_zero(const char *x, int esize, int64_t i)
{
    if (esize == 4) {
        float v;
        memcpy(&v, x + i * 4, 4);
        return v == 0.0f;
    }
    if (esize == 2) {
        int16_t v;
        memcpy(&v, x + i * 2, 2);
        return v == 0;
    }
    return x[i] == 0;
}

int64_t mt_zero_counts(const void *xv, int elem, int64_t rows, int64_t cols, int64_t rs,
                       int64_t cs, int64_t *per_row, int64_t *per_col, int threads)
{
    const char *x = xv;
    zero_fn fn = elem == MT_ZERO_F32 ? zero_rows_f32 : (elem == MT_ZERO_I16 ? zero_rows_i16
                                                                            : zero_rows_i8);
#if HAVE_ZERO_AVX512
    const char *kern = getenv("MICROTRAIN_KERNEL");
    if (zero_avx512() && !(kern && strcmp(kern, "portable") == 0))
        fn = elem == MT_ZERO_F32 ? zero_rows_f32_512
                                 : (elem == MT_ZERO_I16 ? zero_rows_i16_512 : zero_rows_i8_512);
#endif
    int esize = elem == MT_ZERO_F32 ? 4 : (elem == MT_ZERO_I16 ? 2 : 1);
    if (rows <= 0 || cols <= 0) {
        for (int64_t c = 0; per_col && c < cols; c++)
            per_col[c] = 0;
        for (int64_t r = 0; per_row && r < rows; r++)
            per_row[r] = 0;
        return 0;
    }
    int64_t total = 0;
    if (cs == 1) {
        zero_rows_split(fn, x, esize, rows, cols, rs, per_row, per_col, &total, threads);
        return total;
    }
    if (rs == 1) { /* unit row stride (a transposed view): the same walk, roles swapped */
        zero_rows_split(fn, x, esize, cols, rows, cs, per_col, per_row, &total, threads);
        return total;
    }
    for (int64_t c = 0; per_col && c < cols; c++)
        per_col[c] = 0;
    for (int64_t r = 0; r < rows; r++) {
        int64_t z = 0;
        for (int64_t c = 0; c < cols; c++) {
            int64_t e = elem_is_zero(x, esize, r * rs + c * cs);
            z += e;
            if (per_col)
                per_col[c] += e;
        }
        if (per_row)
            per_row[r] = z;
        total += z;
    }
    return total;
}

/* ---------------------------------------------------------------- ReLU (train_fast_api.h) */

VECTOR_CLONES static void relu_fwd(const float *restrict x, float *restrict y,
                                   uint8_t *restrict pos, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        int p = x[i] > 0.0f;
        pos[i] = (uint8_t)p;
        y[i] = p ? x[i] : 0.0f;
    }
}

VECTOR_CLONES static void relu_bwd(const float *e, const uint8_t *restrict pos, float *out,
                                   int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        out[i] = pos[i] ? e[i] : 0.0f;
}

int mt_relu_f32(const float *x, float *y, uint8_t *pos, int64_t n)
{
    if (!x || !y || !pos || n < 0)
        return -1;
    relu_fwd(x, y, pos, n);
    return 0;
}

int mt_relu_bwd_f32(const float *e, const uint8_t *pos, float *out, int64_t n)
{
    if (!e || !pos || !out || n < 0)
        return -1;
    relu_bwd(e, pos, out, n);
    return 0;
}

/* ---------------------------------------------------------------- SGD + zero counts */

typedef struct {
    float *w, *m;
    const float *g;
    float lr, mu, wd;
    int64_t r0, r1, cols;
    int64_t *per_row, *per_col;
    zero_fn zfn;
} sgd_zc_job;

/* Rows [r0, r1) in blocks of about 2^16 elements: each block updated (sgd_range, the same
 * arithmetic) and counted while it is in cache; per_col accumulates (zeroed by the caller). */
static void sgd_zc_rows(void *p)
{
    sgd_zc_job *t = p;
    int64_t cols = t->cols, step = cols > 0 && cols < 65536 ? 65536 / cols : 1;
    for (int64_t r = t->r0; r < t->r1; r += step) {
        int64_t re = r + step < t->r1 ? r + step : t->r1;
        sgd_job j = {t->w, t->m, t->g, NULL, NULL, t->lr, t->mu, t->wd, r * cols, re * cols};
        sgd_range(&j);
        int64_t tot;
        if (cols > 0)
            t->zfn(t->w + r * cols, re - r, cols, cols, t->per_row + r, t->per_col, &tot);
    }
}

int mt_sgd_update_zc(float *w, float *m, const float *g, int64_t rows, int64_t cols, float lr,
                     float mu, float wd, int threads, int64_t *per_row, int64_t *per_col)
{
    if (!w || !g || !per_row || !per_col || rows < 0 || cols < 0)
        return -1;
    zero_fn zfn = zero_rows_f32;
#if HAVE_ZERO_AVX512
    const char *kern = getenv("MICROTRAIN_KERNEL");
    if (zero_avx512() && !(kern && strcmp(kern, "portable") == 0))
        zfn = zero_rows_f32_512;
#endif
    for (int64_t c = 0; c < cols; c++)
        per_col[c] = 0;
    if (cols == 0) {
        for (int64_t r = 0; r < rows; r++)
            per_row[r] = 0;
        return 0;
    }
    int64_t n = rows * cols;
    if (threads <= 0)
        threads = n >= SPLIT_MIN ? 2 : 1;
    sgd_zc_job a = {w, m, g, lr, mu, wd, 0, rows, cols, per_row, per_col, zfn};
    int64_t *second = NULL;
    if (threads >= 2 && rows >= 2 && n >= 128)
        second = calloc((size_t)cols + 1, sizeof *second);
    if (!second) {
        sgd_zc_rows(&a);
        return 0;
    }
    sgd_zc_job b = a;
    a.r1 = b.r0 = rows / 2;
    b.per_col = second;
    run_pair(sgd_zc_rows, &a, &b);
    for (int64_t c = 0; c < cols; c++)
        per_col[c] += second[c];
    free(second);
    return 0;
}

/* ---------------------------------------------------------------- im2col (train_fast_api.h) */

/* Each sample's zero-padded planes first (hp x wp, scratch), then every output row's window
 * rows as plain copies of kw elements (no bounds test per element). */
#define IM2COL_BODY(T)                                                                         \
    do {                                                                                       \
        const T *xs = x;                                                                       \
        T *o = out;                                                                            \
        const int64_t hp = h + 2 * ph, wp = w + 2 * pw, K = c * kh * kw;                       \
        T *pad = calloc((size_t)(c * hp * wp), sizeof(T));                                     \
        if (!pad)                                                                              \
            return -2;                                                                         \
        for (int64_t b = 0; b < n; b++) {                                                      \
            for (int64_t ci = 0; ci < c; ci++)                                                 \
                for (int64_t r = 0; r < h; r++)                                                \
                    memcpy(pad + (ci * hp + r + ph) * wp + pw, xs + ((b * c + ci) * h + r) * w, \
                           (size_t)w * sizeof(T));                                             \
            for (int64_t oh = 0; oh < ho; oh++)                                                \
                for (int64_t ow = 0; ow < wo; ow++, o += K) {                                  \
                    T *dst = o;                                                                \
                    for (int64_t ci = 0; ci < c; ci++) {                                       \
                        const T *src = pad + (ci * hp + oh * sh) * wp + ow * sw;               \
                        if (kw == 3)                                                           \
                            for (int i = 0; i < kh; i++, dst += 3, src += wp) {                \
                                dst[0] = src[0];                                               \
                                dst[1] = src[1];                                               \
                                dst[2] = src[2];                                               \
                            }                                                                  \
                        else                                                                   \
                            for (int i = 0; i < kh; i++, dst += kw, src += wp)                 \
                                for (int j = 0; j < kw; j++)                                   \
                                    dst[j] = src[j];                                           \
                    }                                                                          \
                }                                                                              \
        }                                                                                      \
        free(pad);                                                                             \
    } while (0)

int mt_im2col(const void *x, int esize, int64_t n, int64_t c, int64_t h, int64_t w, int kh,
              int kw, int sh, int sw, int ph, int pw, int64_t ho, int64_t wo, void *out)
{
    if (!x || !out || n < 0 || c < 0 || h < 0 || w < 0 || kh < 1 || kw < 1 || sh < 1 ||
        sw < 1 || ph < 0 || pw < 0 || ho < 0 || wo < 0)
        return -1;
    switch (esize) {
    case 1:
        IM2COL_BODY(uint8_t);
        return 0;
    case 2:
        IM2COL_BODY(uint16_t);
        return 0;
    case 4:
        IM2COL_BODY(uint32_t);
        return 0;
    case 8:
        IM2COL_BODY(uint64_t);
        return 0;
    default:
        return -1;
    }
}

/* ---------------------------------------------------------------- NCHW + bias (train_fast_api.h) */

int mt_to_nchw_bias_f32(const float *src, int64_t n, int64_t o, int64_t hw, int64_t sb,
                        int64_t sp, int64_t sc, const float *bias, float *dst)
{
    if (!src || !dst || n < 0 || o < 0 || hw < 0)
        return -1;
    for (int64_t b = 0; b < n; b++)
        for (int64_t c = 0; c < o; c++) {
            const float *s = src + b * sb + c * sc;
            float *d = dst + (b * o + c) * hw;
            if (bias) {
                const float bc = bias[c];
                for (int64_t p = 0; p < hw; p++)
                    d[p] = s[p * sp] + bc;
            } else {
                for (int64_t p = 0; p < hw; p++)
                    d[p] = s[p * sp];
            }
        }
    return 0;
}
