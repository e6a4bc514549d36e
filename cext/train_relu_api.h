#ifndef MICROTRAIN_TRAIN_RELU_API_H
#define MICROTRAIN_TRAIN_RELU_API_H
/* The engine's ReLU in one pass each way (docs/engine.md), bit for bit what its numpy form
 * np.where(x > 0, x, 0) gives.
 */
#include <stdint.h>

/* pos[i] = x[i] > 0 (0 or 1; false for NaN and both zeros); y[i] = pos[i] ? x[i] : +0.
 * Returns 0, or -1 on a bad argument. */
int mt_relu_f32(const float *x, float *y, uint8_t *pos, int64_t n);

/* out[i] = pos[i] ? e[i] : +0 (pos 0/1 bytes; e's bits kept where pos). out may be e.
 * Returns 0, or -1 on a bad argument. */
int mt_relu_bwd_f32(const float *e, const uint8_t *pos, float *out, int64_t n);
#endif
