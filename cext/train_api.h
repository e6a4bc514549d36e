#ifndef MICROTRAIN_TRAIN_API_H
#define MICROTRAIN_TRAIN_API_H
/* Element-wise training kernels of the engine (docs/engine.md, "Update"): one pass over a
 * parameter tensor doing what the engine's numpy update does in several, bit for bit.
 */
#include <stdint.h>

/* SGD with momentum and weight decay, in place, float32 IEEE arithmetic (each operation
 * rounded once, no FMA), for i = 0..n-1:
 *   if upd is NULL or upd[i]:
 *       d = g[i] + wd * w[i]
 *       if m is not NULL: m[i] = mu * m[i] + d; d = m[i]
 *       w[i] = w[i] - lr * d
 *   if keep is not NULL and !keep[i]: w[i] = 0
 * (an element not updated keeps w[i] and m[i]). upd and keep are 0/1 bytes. threads <= 0 =
 * automatic (2 for large n). Returns 0, or -1 on a bad argument. */
int mt_sgd_update(float *w, float *m, const float *g, const uint8_t *upd, const uint8_t *keep,
                  int64_t n, float lr, float mu, float wd, int threads);

/* Element types of mt_zero_counts. */
enum { MT_ZERO_F32 = 0, MT_ZERO_I8 = 1, MT_ZERO_I16 = 2 };

/* Zero elements of a rows x cols matrix x[r * rs + c * cs] of float32, int8 or int16
 * (elem; strides in elements; two threads for large matrices with unit stride along one
 * axis): per_row[r] (rows entries) and per_col[c] (cols entries) get the number of elements
 * equal to zero (+0 or -0 for float32) in row r and column c; either may be NULL.
 * threads <= 0 = automatic (2 for large matrices), 1 = one thread. Returns the total. */
int64_t mt_zero_counts(const void *x, int elem, int64_t rows, int64_t cols, int64_t rs,
                       int64_t cs, int64_t *per_row, int64_t *per_col, int threads);

/* out[i] = (float)acc[i] * 2^-frac for -64 <= frac <= 126: the int64 rounded once to float32
 * (nearest-even), then scaled by a power of two (exact unless it under- or overflows, which
 * rounds as IEEE float32 multiplication does). numpy's acc.astype(float32) * float32(2^-frac),
 * in one pass. threads <= 0 = automatic. Returns 0, or -1 on a bad argument. */
int mt_rescale_i64(const int64_t *acc, float *out, int64_t n, int frac, int threads);
#endif
