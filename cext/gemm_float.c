/* Float GEMM on float32 values with a defined accumulation order (docs/datapath.md).
 *
 * mt_gemm_f32: acc = fl32(acc + fl32(a*b)) sequentially over k, from +0. Vectorised over
 * outputs (never over k) so every output keeps that order; no FMA contraction (the module is
 * built as ISO C, where GCC's default is -ffp-contract=off, this file says so once more, and
 * the x86 micro-kernels issue separate multiply and add instructions). Kernels, chosen per
 * call: register-blocked AVX-512 (4 x 64, 8 x 32 or 8 x 16 tile) or AVX2 (6 x 16 tile) with B packed in column
 * panels (see "blocked fp32 kernels" below), or the portable row loop (MICROTRAIN_KERNEL=
 * portable, and CPUs without AVX2). All give the same bits.
 *
 * mt_gemm_f32_chunked: the chunk-based accumulation of FP8 training with chunked FP16
 * accumulation. Within a chunk of `chunk` consecutive k the accumulator is a value of an
 * IEEE-like (ebits, mbits) format: acc = round(acc + fl32(a*b)), the sum formed in double
 * (exact, or innocuously double-rounded: both addends have <= 24-bit significands and double
 * has 53 >= 2*24 + 2 bits) and rounded once to the format, nearest-even, overflow to inf,
 * subnormals kept. Chunk results are added in order in float32 from +0.
 */
#pragma GCC optimize("fp-contract=off")

#include "gemm_api.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define MAX_THREADS 16
#define DEFAULT_THREADS 2

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define VECTOR_CLONES
#endif

typedef struct {
    const float *a, *b; /* b: K x N row-major (packed when the caller's B is transposed) */
    int64_t lda, ldb;
    int trans_a;
    int64_t M, K, N;
    float *c;
    int64_t chunk;
    int ebits, mbits;
    double *scratch; /* N doubles per thread (chunked) */
    float *prod;     /* N floats per thread */
    int nt;
} fgemm_job;

static inline uint64_t d2u(double x)
{
    uint64_t u;
    memcpy(&u, &x, 8);
    return u;
}

static inline double u2d(uint64_t u)
{
    double x;
    memcpy(&x, &u, 8);
    return x;
}

/* Round x to the IEEE-like format with ebits exponent and mbits mantissa bits: nearest,
 * ties to even, subnormals kept, overflow (after rounding) to +-inf, the sign of x kept
 * (also on zero results); NaN and inf pass through. The spacing at x is q = 2^(e - mbits)
 * with e = max(floor(log2 |x|), emin); adding and subtracting C = 1.5 * 2^(e - mbits + 52)
 * rounds x to a multiple of q in the current (nearest-even) mode, exactly, because
 * |x| < 2^(e+1) is far below the half-binade C leaves room for. Only bit operations and
 * two additions, so loops over it vectorise. */
typedef struct {
    int64_t emin, emax, mbits;
    uint64_t maxv; /* bits of the largest finite value, as a double */
} accfmt;

static accfmt make_accfmt(int ebits, int mbits)
{
    int emax = (1 << (ebits - 1)) - 1;
    accfmt f = {1 - emax, emax, mbits, d2u(ldexp(2.0 - ldexp(1.0, -mbits), emax))};
    return f;
}

static inline double round_ieee_like(double x, accfmt f)
{
    int64_t emin = f.emin, mbits = f.mbits;
    uint64_t maxv = f.maxv;
    uint64_t u = d2u(x), sign = u & 0x8000000000000000ull, mag = u ^ sign;
    int64_t e = (int64_t)(mag >> 52) - 1023;
    e = e < emin ? emin : e;
    e = e > f.emax + 1 ? f.emax + 1 : e; /* beyond that x overflows anyway; keeps c finite */
    double c = u2d(((uint64_t)(e - mbits + 52 + 1023) << 52) | (1ull << 51));
    double r = (u2d(mag) + c) - c; /* |x| rounded to a multiple of 2^(e - mbits) */
    uint64_t rm = d2u(r);
    rm = rm > maxv ? 0x7FF0000000000000ull : rm;
    return mag >= 0x7FF0000000000000ull ? x : u2d(rm | sign);
}

void mt_round_ieee_like(const double *x, double *out, int64_t count, int ebits, int mbits)
{
    accfmt f = make_accfmt(ebits, mbits);
    for (int64_t i = 0; i < count; i++)
        out[i] = round_ieee_like(x[i], f);
}

static inline float a_elem(const fgemm_job *g, int64_t m, int64_t k)
{
    return g->trans_a ? g->a[k * g->lda + m] : g->a[m * g->lda + k];
}

VECTOR_CLONES static void f32_row_step(float *restrict acc, float *restrict prod,
                                      const float *restrict brow, float a, int64_t n)
{
    for (int64_t j = 0; j < n; j++)
        prod[j] = a * brow[j];
    for (int64_t j = 0; j < n; j++)
        acc[j] = acc[j] + prod[j];
}

VECTOR_CLONES static void chunk_row_step(double *restrict acc, const float *restrict brow,
                                         float a, int64_t n, accfmt f)
{
    for (int64_t j = 0; j < n; j++) {
        float p = a * brow[j];
        acc[j] = round_ieee_like(acc[j] + (double)p, f);
    }
}

static void f32_job(fgemm_job *g, int tid)
{
    int64_t lo = g->M * tid / g->nt, hi = g->M * (tid + 1) / g->nt, N = g->N;
    float *prod = g->prod + tid * N;
    for (int64_t m = lo; m < hi; m++) {
        float *acc = g->c + m * N;
        for (int64_t n = 0; n < N; n++)
            acc[n] = 0.0f;
        for (int64_t k = 0; k < g->K; k++) {
            f32_row_step(acc, prod, g->b + k * g->ldb, a_elem(g, m, k), N);
        }
    }
}

static void chunked_job(fgemm_job *g, int tid)
{
    int64_t lo = g->M * tid / g->nt, hi = g->M * (tid + 1) / g->nt, N = g->N;
    double *acc = g->scratch + tid * N;
    accfmt f = make_accfmt(g->ebits, g->mbits);
    for (int64_t m = lo; m < hi; m++) {
        float *tot = g->c + m * N;
        for (int64_t n = 0; n < N; n++)
            tot[n] = 0.0f;
        for (int64_t k0 = 0; k0 < g->K; k0 += g->chunk) {
            int64_t k1 = k0 + g->chunk < g->K ? k0 + g->chunk : g->K;
            for (int64_t n = 0; n < N; n++)
                acc[n] = 0.0;
            for (int64_t k = k0; k < k1; k++)
                chunk_row_step(acc, g->b + k * g->ldb, a_elem(g, m, k), N, f);
            for (int64_t n = 0; n < N; n++)
                tot[n] = tot[n] + (float)acc[n];
        }
    }
}

/* ---------------------------------------------------------------- blocked fp32 kernels
 *
 * The same arithmetic as f32_job, reordered only across outputs: every output still gets
 * acc = +0, then acc = acc + (a*b) for k = 0..K-1 in order, one IEEE multiply and one IEEE
 * add per step (separate instructions, never an FMA). What changes is which outputs are in
 * flight together: a register tile of MR rows x NR columns of accumulators, B packed into
 * panels of NR columns (K rows of NR contiguous floats, zero-padded past N), A read in place
 * and broadcast one element per row and k. K is walked in blocks of KC; between blocks an
 * accumulator is stored to C and reloaded, which is exact (it is a float32 either way).
 * Edge tiles (fewer than MR rows or NR columns) run the same micro-kernel on a local tile.
 */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_X86_KERNELS 1
#else
#define HAVE_X86_KERNELS 0
#endif
#include <stdatomic.h>

enum { FK_PORTABLE = 0, FK_AVX2 = 1, FK_AVX512 = 2 };
#ifndef KC
#define KC 256
#endif
#define MR_MAX 8
#define NR_MAX 64

typedef void (*tile_fn)(const float *const *ap, int64_t cs, const float *bp, int64_t kc,
                        float *c, int64_t ldc, int first);

#if HAVE_X86_KERNELS
/* MR rows x 16 * NV columns of zmm accumulators. ap[i] points at A[m0+i, k0]; A[m0+i, k0+k]
 * is ap[i][k*cs]. bp holds kc rows of 16 * NV floats. Three shapes, picked by N: 4 x 64
 * for wide outputs (one broadcast of A serves four products: the broadcasts, not the
 * multiplies and adds, bound an 8 x 32 tile, measured), 8 x 32 and 8 x 16 for narrow ones
 * (less zero padding of the last panel). */
#define AVX512_TILE(MR, NV)                                                                    \
    __attribute__((target("avx512f"))) static void tile_avx512_##MR##x##NV(                    \
        const float *const *ap, int64_t cs, const float *bp, int64_t kc, float *c,            \
        int64_t ldc, int first)                                                                \
    {                                                                                          \
        __m512 acc[MR][NV];                                                                    \
        _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++)                                   \
            _Pragma("GCC unroll 4") for (int j = 0; j < NV; j++) acc[i][j] =                   \
                first ? _mm512_setzero_ps() : _mm512_loadu_ps(c + i * ldc + 16 * j);           \
        const float *a[MR];                                                                    \
        _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++) a[i] = ap[i];                     \
        for (int64_t k = 0; k < kc; k++) {                                                     \
            __m512 b[NV];                                                                      \
            _Pragma("GCC unroll 4") for (int j = 0; j < NV; j++) b[j] =                        \
                _mm512_loadu_ps(bp + k * 16 * NV + 16 * j);                                    \
            const int64_t o = k * cs;                                                          \
            _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++)                               \
            {                                                                                  \
                const __m512 av = _mm512_set1_ps(a[i][o]);                                     \
                _Pragma("GCC unroll 4") for (int j = 0; j < NV; j++) acc[i][j] =               \
                    _mm512_add_ps(acc[i][j], _mm512_mul_ps(av, b[j]));                         \
            }                                                                                  \
        }                                                                                      \
        _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++)                                   \
            _Pragma("GCC unroll 4") for (int j = 0; j < NV; j++)                               \
                _mm512_storeu_ps(c + i * ldc + 16 * j, acc[i][j]);                             \
    }
AVX512_TILE(4, 4)
AVX512_TILE(8, 2)
AVX512_TILE(8, 1)

/* 6 rows x 16 columns: 12 ymm accumulators. */
__attribute__((target("avx2"))) static void tile_avx2(const float *const *ap, int64_t cs,
                                                      const float *bp, int64_t kc, float *c,
                                                      int64_t ldc, int first)
{
    __m256 acc[6][2];
#pragma GCC unroll 6
    for (int i = 0; i < 6; i++) {
        acc[i][0] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(c + i * ldc);
        acc[i][1] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(c + i * ldc + 8);
    }
    const float *a0 = ap[0], *a1 = ap[1], *a2 = ap[2], *a3 = ap[3], *a4 = ap[4], *a5 = ap[5];
    for (int64_t k = 0; k < kc; k++) {
        __m256 b0 = _mm256_loadu_ps(bp + k * 16), b1 = _mm256_loadu_ps(bp + k * 16 + 8);
        int64_t o = k * cs;
#define ROW(i, ai)                                                                     \
    do {                                                                               \
        __m256 av = _mm256_broadcast_ss(ai + o);                                       \
        acc[i][0] = _mm256_add_ps(acc[i][0], _mm256_mul_ps(av, b0));                   \
        acc[i][1] = _mm256_add_ps(acc[i][1], _mm256_mul_ps(av, b1));                   \
    } while (0)
        ROW(0, a0);
        ROW(1, a1);
        ROW(2, a2);
        ROW(3, a3);
        ROW(4, a4);
        ROW(5, a5);
#undef ROW
    }
#pragma GCC unroll 6
    for (int i = 0; i < 6; i++) {
        _mm256_storeu_ps(c + i * ldc, acc[i][0]);
        _mm256_storeu_ps(c + i * ldc + 8, acc[i][1]);
    }
}
#endif

/* Which blocked kernel runs: MICROTRAIN_KERNEL=portable forces the row-wise portable loop
 * (as for the integer kernels); MICROTRAIN_FLOAT_KERNEL=portable|avx2|avx512 picks one
 * explicitly (for tests; a kernel this CPU lacks falls back to the best it has). Read at
 * each call, like the Python side reads its environment. */
static int float_kernel(void)
{
    const char *fk = getenv("MICROTRAIN_FLOAT_KERNEL");
    const char *k = getenv("MICROTRAIN_KERNEL");
    if ((fk && strcmp(fk, "portable") == 0) || (!fk && k && strcmp(k, "portable") == 0))
        return FK_PORTABLE;
#if HAVE_X86_KERNELS
    int has512 = __builtin_cpu_supports("avx512f"), has2 = __builtin_cpu_supports("avx2");
    if (fk && strcmp(fk, "avx2") == 0 && has2)
        return FK_AVX2;
    if (has512)
        return FK_AVX512;
    if (has2)
        return FK_AVX2;
#endif
    return FK_PORTABLE;
}

/* Packed-B buffers cached per thread slot between calls, so repeated GEMMs do not pay page
 * faults; a slot in use by a concurrent call makes that call allocate its own. */
#define CACHE_MAX_BYTES ((size_t)16 << 20) /* per slot: MDNet-size panels fit; bounded memory */
typedef struct {
    atomic_int busy;
    float *p;
    size_t n;
} buf_slot;
static buf_slot buf_cache[MAX_THREADS];

static float *buf_get(int slot, size_t n, int *cached)
{
    size_t bytes = (n * sizeof(float) + 63) & ~(size_t)63;
    buf_slot *s = &buf_cache[slot];
    *cached = 0;
    if (bytes <= CACHE_MAX_BYTES && !atomic_exchange(&s->busy, 1)) {
        if (s->n < bytes) {
            free(s->p);
            s->p = aligned_alloc(64, bytes);
            s->n = s->p ? bytes : 0;
        }
        if (s->p) {
            *cached = 1;
            return s->p;
        }
        atomic_store(&s->busy, 0);
        return NULL;
    }
    return aligned_alloc(64, bytes);
}

static void buf_put(int slot, float *p, int cached)
{
    if (cached)
        atomic_store(&buf_cache[slot].busy, 0);
    else
        free(p);
}

typedef struct {
    const float *a, *b;
    int64_t rs, cs; /* A[m, k] = a[m*rs + k*cs] */
    int64_t ldb;
    int trans_b;
    int64_t M, K, N;
    float *c;
    int nt, kern, split_n;
    int mr, nr; /* register tile */
    tile_fn tile;
    float *bp; /* packed B panels, panel q at bp + q * K * nr */
} blk_job;

#if HAVE_X86_KERNELS
/* r[i] := column i of the 16 x 16 matrix whose rows are r[0..15] (unpack, shuffle, two lane
 * shuffles: a pure permutation of the values). */
__attribute__((target("avx512f"))) static inline void transpose16(__m512 r[16])
{
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int g = 0; g < 2; g++)
        for (int i = 0; i < 4; i++) {
            t[8 * g + i] = _mm512_shuffle_f32x4(r[8 * g + i], r[8 * g + 4 + i], 0x88);
            t[8 * g + 4 + i] = _mm512_shuffle_f32x4(r[8 * g + i], r[8 * g + 4 + i], 0xdd);
        }
    for (int i = 0; i < 8; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88);
        r[8 + i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0xdd);
    }
}

/* The transposed-B packing of pack_panel for k < K rounded down to 16, in 16 x 16 blocks;
 * returns how many k it packed. */
__attribute__((target("avx512f"))) static int64_t pack_t_avx512(const blk_job *g, int64_t n0,
                                                                int nr, int64_t w, float *out)
{
    int64_t K16 = g->K & ~(int64_t)15;
    for (int64_t k0 = 0; k0 < K16; k0 += 16)
        for (int jb = 0; jb < nr; jb += 16) {
            __m512 r[16];
            for (int j = 0; j < 16; j++)
                r[j] = jb + j < w ? _mm512_loadu_ps(g->b + (n0 + jb + j) * g->ldb + k0)
                                  : _mm512_setzero_ps();
            transpose16(r);
            for (int k = 0; k < 16; k++)
                _mm512_storeu_ps(out + (k0 + k) * nr + jb, r[k]);
        }
    return K16;
}
#endif

#if HAVE_X86_KERNELS
/* dst[0..nr) = src[0..w) then zeros (nr a multiple of 16, w <= nr): masked 16-wide moves
 * instead of a memcpy call and a tail loop per row (narrow panels: conv layers, N = 2). */
__attribute__((target("avx512f"))) static inline void row_pad16(float *dst, const float *src,
                                                               int64_t w, int nr)
{
    for (int jb = 0; jb < nr; jb += 16) {
        int64_t rem = w - jb;
        __mmask16 m = rem >= 16 ? (__mmask16)0xFFFF : (rem > 0 ? (__mmask16)((1u << rem) - 1) : 0);
        _mm512_storeu_ps(dst + jb, _mm512_maskz_loadu_ps(m, src + jb));
    }
}

#endif

/* Pack B columns [n0, n0 + NR) of rows [0, K) into kc-row panels: out[k*NR + j]. */
static void pack_panel(const blk_job *g, int64_t n0, int nr, float *out)
{
    int64_t w = g->N - n0 < nr ? g->N - n0 : nr, K = g->K;
#if HAVE_X86_KERNELS
    if (!g->trans_b && g->kern == FK_AVX512 && nr % 16 == 0) {
        for (int64_t k = 0; k < K; k++)
            row_pad16(out + k * nr, g->b + k * g->ldb + n0, w, nr);
        return;
    }
#endif
    if (!g->trans_b) {
        for (int64_t k = 0; k < K; k++) {
            const float *src = g->b + k * g->ldb + n0;
            float *dst = out + k * nr;
            memcpy(dst, src, (size_t)w * sizeof(float));
            for (int64_t j = w; j < nr; j++)
                dst[j] = 0.0f;
        }
        return;
    }
    int64_t kdone = 0;
#if HAVE_X86_KERNELS
    if (g->kern == FK_AVX512 && nr % 16 == 0)
        kdone = pack_t_avx512(g, n0, nr, w, out);
#endif
    for (int64_t k0 = kdone; k0 < K; k0 += 64) { /* B^T: N x K; transpose in 64-k strips */
        int64_t k1 = k0 + 64 < K ? k0 + 64 : K;
        for (int64_t j = 0; j < nr; j++) {
            if (j < w) {
                const float *src = g->b + (n0 + j) * g->ldb;
                for (int64_t k = k0; k < k1; k++)
                    out[k * nr + j] = src[k];
            } else {
                for (int64_t k = k0; k < k1; k++)
                    out[k * nr + j] = 0.0f;
            }
        }
    }
}

/* The pool of gemm.c: fn(ctx, t, nt) for t = 0..nt-1, t > 0 on parked workers. */
void mt_run_parallel(void (*fn)(void *ctx, int tid, int nt), void *ctx, int nt);

/* Phase 1: thread tid packs its share of the column panels into the shared buffer g->bp. */
static void blk_pack(void *p, int tid, int nt)
{
    blk_job *g = p;
    int64_t np = (g->N + g->nr - 1) / g->nr;
    for (int64_t q = np * tid / nt; q < np * (tid + 1) / nt; q++)
        pack_panel(g, q * g->nr, g->nr, g->bp + q * g->K * g->nr);
}

/* Phase 2: thread tid computes its column panels (split_n) or its whole row tiles. */
static void blk_compute(void *p, int tid, int nt)
{
    blk_job *g = p;
    int mr = g->mr, nr = g->nr;
    tile_fn tile = g->tile;
    int64_t M = g->M, K = g->K, N = g->N, np = (N + nr - 1) / nr;
    int64_t m_lo = 0, m_hi = M, p_lo = 0, p_hi = np;
    if (g->split_n) {
        p_lo = np * tid / nt;
        p_hi = np * (tid + 1) / nt;
    } else { /* split rows in whole tiles */
        int64_t tiles = (M + mr - 1) / mr;
        m_lo = tiles * tid / nt * mr;
        m_hi = tiles * (tid + 1) / nt * mr;
        m_hi = m_hi < M ? m_hi : M;
    }
    if (p_lo >= p_hi || m_lo >= m_hi)
        return;
    const float *bp = g->bp;
    const int64_t cs = g->cs;
    float tmp[MR_MAX * NR_MAX];
    const float *ap[MR_MAX];
    for (int64_t k0 = 0; k0 < K; k0 += KC) {
        int64_t kc = K - k0 < KC ? K - k0 : KC;
        int first = k0 == 0;
        for (int64_t p = p_lo; p < p_hi; p++) {
            const float *bpk = bp + p * K * nr + k0 * nr;
            int64_t n0 = p * nr, w = N - n0 < nr ? N - n0 : nr;
            for (int64_t m0 = m_lo; m0 < m_hi; m0 += mr) {
                int64_t h = m_hi - m0 < mr ? m_hi - m0 : mr;
                for (int i = 0; i < mr; i++) /* rows past the edge repeat the last row */
                    ap[i] = g->a + (m0 + (i < h ? i : h - 1)) * g->rs + k0 * g->cs;
                float *cc = g->c + m0 * N + n0;
                if (h == mr && w == nr) {
                    tile(ap, cs, bpk, kc, cc, N, first);
                    continue;
                }
                if (!first)
                    for (int64_t i = 0; i < h; i++)
                        memcpy(tmp + i * nr, cc + i * N, (size_t)w * sizeof(float));
                tile(ap, cs, bpk, kc, tmp, nr, first);
                for (int64_t i = 0; i < h; i++)
                    memcpy(cc + i * N, tmp + i * nr, (size_t)w * sizeof(float));
            }
        }
    }
}

/* Below this many MACs per thread a second thread costs more to wake than it saves. */
#define F32_MACS_PER_THREAD ((int64_t)1 << 21)

static int run_blocked(const float *a, int64_t lda, int trans_a, const float *b, int64_t ldb,
                       int trans_b, int64_t m, int64_t k, int64_t n, float *c, int threads,
                       int kern)
{
    if (m == 0 || n == 0)
        return MT_GEMM_OK;
    if (k == 0) {
        memset(c, 0, (size_t)(m * n) * sizeof(float));
        return MT_GEMM_OK;
    }
    if (threads <= 0) {
        int64_t macs = m * n * k;
        threads = macs >= 2 * F32_MACS_PER_THREAD ? DEFAULT_THREADS : 1;
    }
    if (threads > MAX_THREADS)
        threads = MAX_THREADS;
    blk_job g = {a, b, trans_a ? 1 : lda, trans_a ? lda : 1, ldb, !!trans_b, m, k, n, c,
                 threads, kern, 0, 6, 16, NULL, NULL};
#if HAVE_X86_KERNELS
    if (kern == FK_AVX512) {
        g.mr = n > 32 ? 4 : 8;
        g.nr = n > 32 ? 64 : (n > 16 ? 32 : 16);
        g.tile = n > 32 ? tile_avx512_4x4 : (n > 16 ? tile_avx512_8x2 : tile_avx512_8x1);
    } else {
        g.tile = tile_avx2;
    }
#endif
    int nr = g.nr, mr = g.mr;
    int64_t np = (n + nr - 1) / nr, tiles = (m + mr - 1) / mr;
    /* split the column panels when each thread gets at least two, else the row tiles */
    g.split_n = np >= 2 * threads || np >= tiles;
    /* the packed panels, shared: packed by all threads, then read by the computing ones */
    int cached;
    g.bp = buf_get(0, (size_t)(np * k * nr), &cached);
    if (!g.bp)
        return MT_GEMM_ENOMEM;
    mt_run_parallel(blk_pack, &g, threads);
    mt_run_parallel(blk_compute, &g, threads);
    buf_put(0, g.bp, cached);
    return MT_GEMM_OK;
}

typedef struct {
    fgemm_job *g;
    int tid;
    int chunked;
} fthread;

static void *fthread_main(void *p)
{
    fthread *t = p;
    if (t->chunked)
        chunked_job(t->g, t->tid);
    else
        f32_job(t->g, t->tid);
    return NULL;
}

static int run_float(const float *a, int64_t lda, int trans_a, const float *b, int64_t ldb,
                     int trans_b, int64_t m, int64_t k, int64_t n, float *c, int64_t chunk,
                     int ebits, int mbits, int threads, int chunked)
{
    if (!a || !b || !c || m < 0 || k < 0 || n < 0)
        return MT_GEMM_EBADARG;
    if ((trans_a ? lda < m : lda < k) || (trans_b ? ldb < k : ldb < n))
        return MT_GEMM_EBADARG;
    if (chunked && (chunk < 1 || ebits < 2 || ebits > 8 || mbits < 1 || mbits > 23))
        return MT_GEMM_EBADARG;
    if (!chunked) {
        int kern = float_kernel();
        if (kern != FK_PORTABLE)
            return run_blocked(a, lda, trans_a, b, ldb, trans_b, m, k, n, c, threads, kern);
    }
    if (threads <= 0)
        threads = DEFAULT_THREADS;
    if (threads > MAX_THREADS)
        threads = MAX_THREADS;
    fgemm_job g = {a, b, lda, ldb, !!trans_a, m, k, n, c, chunk, ebits, mbits, NULL, NULL,
                   threads};
    float *bt = NULL;
    int rc = MT_GEMM_ENOMEM;
    if (trans_b && k > 0 && n > 0) { /* pack B^T into K x N rows so n is the unit stride */
        bt = malloc((size_t)(k * n) * sizeof(float));
        if (!bt)
            return MT_GEMM_ENOMEM;
        for (int64_t j = 0; j < n; j++)
            for (int64_t i = 0; i < k; i++)
                bt[i * n + j] = b[j * ldb + i];
        g.b = bt;
        g.ldb = n;
    }
    g.prod = malloc((size_t)(threads * n + 1) * sizeof(float));
    g.scratch = malloc((size_t)(threads * n + 1) * sizeof(double));
    if (!g.prod || !g.scratch)
        goto out;
    pthread_t th[MAX_THREADS];
    fthread jobs[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int t = 0; t < threads; t++)
        jobs[t] = (fthread){&g, t, chunked};
    for (int t = 1; t < threads; t++)
        started[t] = pthread_create(&th[t], NULL, fthread_main, &jobs[t]) == 0;
    fthread_main(&jobs[0]);
    for (int t = 1; t < threads; t++) {
        if (started[t])
            pthread_join(th[t], NULL);
        else
            fthread_main(&jobs[t]);
    }
    rc = MT_GEMM_OK;
out:
    free(bt);
    free(g.prod);
    free(g.scratch);
    return rc;
}

/* C = A.B with B stored transposed (N x K) and larger than A: compute C^T = B^T.A^T instead,
 * i.e. the same products and the same k order per output (a*b == b*a exactly), with the
 * stored B read in place as the broadcast operand and A packed, which is the smaller copy
 * (FF reads the weights W, out x in, this way: W is packed no more), then transpose C^T into
 * C. Returns MT_GEMM_ENOMEM when the temporary cannot be had. */
static int run_blocked_swapped(const float *a, int64_t lda, int trans_a, const float *b,
                               int64_t ldb, int64_t m, int64_t k, int64_t n, float *c,
                               int threads, int kern)
{
    float *ct = aligned_alloc(64, ((size_t)(m * n) * sizeof(float) + 63) & ~(size_t)63);
    if (!ct)
        return MT_GEMM_ENOMEM;
    /* A' = stored B (N x K row-major), B' = A^T: stored A (M x K) is B' transposed */
    int rc = run_blocked(b, ldb, 0, a, lda, !trans_a, n, k, m, ct, threads, kern);
    if (rc == MT_GEMM_OK)
        for (int64_t i0 = 0; i0 < m; i0 += 64)
            for (int64_t j0 = 0; j0 < n; j0 += 64) {
                int64_t i1 = i0 + 64 < m ? i0 + 64 : m, j1 = j0 + 64 < n ? j0 + 64 : n;
                for (int64_t i = i0; i < i1; i++)
                    for (int64_t j = j0; j < j1; j++)
                        c[i * n + j] = ct[j * m + i];
            }
    free(ct);
    return rc;
}

int mt_gemm_f32(const float *a, int64_t lda, int trans_a, const float *b, int64_t ldb,
                int trans_b, int64_t m, int64_t k, int64_t n, float *c, int threads)
{
    /* B transposed and more than twice the size of A, enough of both for the blocked
     * kernel's wide tile either way round */
    if (trans_b && a && b && c && m >= 64 && n > 2 * m && k >= 64 && lda >= (trans_a ? m : k) &&
        ldb >= k) {
        int kern = float_kernel();
        if (kern != FK_PORTABLE) {
            int rc = run_blocked_swapped(a, lda, trans_a, b, ldb, m, k, n, c, threads, kern);
            if (rc != MT_GEMM_ENOMEM)
                return rc;
        }
    }
    return run_float(a, lda, trans_a, b, ldb, trans_b, m, k, n, c, 1, 5, 10, threads, 0);
}

int mt_gemm_f32_chunked(const float *a, int64_t lda, int trans_a, const float *b,
                        int64_t ldb, int trans_b, int64_t m, int64_t k, int64_t n, float *c,
                        int64_t chunk, int ebits, int mbits, int threads)
{
    return run_float(a, lda, trans_a, b, ldb, trans_b, m, k, n, c, chunk, ebits, mbits,
                     threads, 1);
}
