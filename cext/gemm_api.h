#ifndef MICROTRAIN_GEMM_API_H
#define MICROTRAIN_GEMM_API_H
/* The datapath kernels (docs/datapath.md): exact integer GEMM on DFXP codes with an explicit
 * accumulator model and the operand statistics the cost model needs, and float GEMM with
 * sequential float32 accumulation or chunked low-precision accumulation.
 *
 * Operands are row-major with a row stride in elements (lda, ldb) and unit column stride.
 * trans_a = 1 means the array holds A transposed (K x M, a[m,k] = a_ptr[k*lda + m]);
 * trans_b = 1 means it holds B transposed (N x K). Integer codes are int8 (bytes = 1) or
 * int16 (bytes = 2), in any mix. Results are row-major M x N without padding.
 * Return value: 0 on success, MT_GEMM_EBADARG on a bad argument, MT_GEMM_ENOMEM when a
 * scratch buffer could not be allocated (nothing is written to c then).
 */
#include <stdint.h>

enum { MT_GEMM_OK = 0, MT_GEMM_EBADARG = -1, MT_GEMM_ENOMEM = -2 };

/* Kernel selection: AUTO = the fastest one this CPU runs; PORTABLE = plain C. */
enum { MT_KERNEL_AUTO = 0, MT_KERNEL_PORTABLE = 1, MT_KERNEL_AVX512_VNNI = 2 };

/* Accumulator overflow behaviour. */
enum { MT_ACC_SATURATE = 0, MT_ACC_WRAP = 1 };

/* Statistics of one integer GEMM (docs/datapath.md, "Statistics"). */
typedef struct {
    int64_t macs;            /* M * N * K */
    int64_t zeros_a;         /* zero elements of A */
    int64_t zeros_b;         /* zero elements of B */
    int64_t macs_a_zero;     /* MACs whose A operand is zero */
    int64_t macs_b_zero;     /* MACs whose B operand is zero */
    int64_t macs_both_zero;  /* MACs whose A and B operands are both zero */
    int64_t macs_executed;   /* MACs with both operands non-zero */
    int64_t nzslices_a;      /* non-zero 4-bit slices of |a| over all elements of A */
    int64_t nzslices_b;      /* the same for B */
    int64_t slice_ops;       /* sum over MACs of nzslices(a) * nzslices(b) */
    int64_t slow_rows;       /* output rows computed by the sequential saturating path */
    int32_t kernel;          /* the MT_KERNEL_* that computed the exact sums */
    int32_t threads;         /* worker threads used */
} mt_gemm_stats;

/* 1 if the kernel can run on this CPU (AUTO and PORTABLE always can). */
int mt_gemm_kernel_available(int kernel);

/* C = init + A.B with the accumulator model: acc = init[m,n] (0 when init is NULL), then for
 * k = 0..K-1 in order acc = sat_or_wrap(acc + a[m,k] * b[k,n]) to acc_bits (8..64) bits.
 * init, when given, is M x N row-major and must lie in the accumulator range. threads <= 0
 * means automatic: 2, or fewer when there are under 2^24 MACs per thread (2^22 with an int16
 * operand). stats may be NULL. */
int mt_gemm_int(const void *a, int a_bytes, int64_t lda, int trans_a,
                const void *b, int b_bytes, int64_t ldb, int trans_b,
                int64_t m, int64_t k, int64_t n,
                const int64_t *init, int64_t *c, int acc_bits, int acc_mode,
                int kernel, int threads, mt_gemm_stats *stats);

/* Float GEMM on float32 values, acc = fl32(acc + fl32(a*b)) sequentially over k from +0. */
int mt_gemm_f32(const float *a, int64_t lda, int trans_a, const float *b, int64_t ldb,
                int trans_b, int64_t m, int64_t k, int64_t n, float *c, int threads);

/* Chunked low-precision accumulation: within each chunk of `chunk` consecutive k,
 * acc = round_(ebits,mbits)(acc + fl32(a*b)) from +0 (IEEE-like format, nearest-even,
 * overflow to inf, subnormals kept; ebits 2..8, mbits 1..23); chunk sums are added in order
 * in float32: total = fl32(total + acc), from +0. */
int mt_gemm_f32_chunked(const float *a, int64_t lda, int trans_a, const float *b,
                        int64_t ldb, int trans_b, int64_t m, int64_t k, int64_t n, float *c,
                        int64_t chunk, int ebits, int mbits, int threads);

/* The accumulation format's rounding, exposed for the reference tests: out[i] = round(x[i]). */
void mt_round_ieee_like(const double *x, double *out, int64_t count, int ebits, int mbits);

#endif
