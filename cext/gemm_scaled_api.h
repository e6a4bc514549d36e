#ifndef MICROTRAIN_GEMM_SCALED_API_H
#define MICROTRAIN_GEMM_SCALED_API_H
/* The integer GEMM with its result rescaled to float32 in the same call (the engine's DFXP
 * layers: codes times codes, then times 2^-(frac_a + frac_b); docs/datapath.md).
 */
#include "gemm_api.h"

/* out (M x N float32) = (float)C * 2^-frac (-64 <= frac <= 126), C = A.B as mt_gemm_int
 * computes it with the default accumulator (32 bits for int8 x int8, 48 otherwise),
 * saturating, no init: the same bits as mt_gemm_int followed by mt_rescale_i64, without
 * storing the int64 result where one K block of the kernel gives the final sums. kernel is
 * an MT_KERNEL_* or MT_KERNEL_FROM_ENV. */
/* kernel of mt_gemm_int_f32: MICROTRAIN_KERNEL's (auto | portable | avx512-vnni; unset or
 * empty = auto; another name is a bad argument). */
enum { MT_KERNEL_FROM_ENV = -1 };

int mt_gemm_int_f32(const void *a, int a_bytes, int64_t lda, int trans_a, const void *b,
                    int b_bytes, int64_t ldb, int trans_b, int64_t m, int64_t k, int64_t n,
                    float *out, int frac, int kernel, int threads, mt_gemm_stats *stats);

#endif
