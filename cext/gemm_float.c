/* Float GEMM on float32 values with a defined accumulation order (docs/datapath.md).
 *
 * mt_gemm_f32: acc = fl32(acc + fl32(a*b)) sequentially over k, from +0. Vectorised over n
 * (never over k) so every output keeps that order; no FMA contraction (the module is built
 * as ISO C, where GCC's default is -ffp-contract=off, and this file says so once more).
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

int mt_gemm_f32(const float *a, int64_t lda, int trans_a, const float *b, int64_t ldb,
                int trans_b, int64_t m, int64_t k, int64_t n, float *c, int threads)
{
    return run_float(a, lda, trans_a, b, ldb, trans_b, m, k, n, c, 1, 5, 10, threads, 0);
}

int mt_gemm_f32_chunked(const float *a, int64_t lda, int trans_a, const float *b,
                        int64_t ldb, int trans_b, int64_t m, int64_t k, int64_t n, float *c,
                        int64_t chunk, int ebits, int mbits, int threads)
{
    return run_float(a, lda, trans_a, b, ldb, trans_b, m, k, n, c, chunk, ebits, mbits,
                     threads, 1);
}
