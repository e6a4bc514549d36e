#ifndef MICROTRAIN_NUMERICS_API_H
#define MICROTRAIN_NUMERICS_API_H
/* Number formats of the chip (docs/numerics.md), bit-identical to protocol/numerics.py.
 *
 * Every entry point works on a whole array: x (float32), codes, n elements, the format, the
 * rounding mode, saturation, the stochastic-rounding key (seed, stream), the flat index of
 * x[0] in its tensor (offset) and an optional array of injected random values (rbits, NULL
 * to use the generator). Codes are uint8/uint16/uint32 for float formats and int8/int16 for
 * fixed point, as code_dtype() says. Only integer arithmetic touches the values being rounded.
 */
#include <stddef.h>
#include <stdint.h>

/* Rounding modes. */
enum { MT_ROUND_NEAREST = 0, MT_ROUND_STOCHASTIC = 1, MT_ROUND_TRUNCATE = 2 };

/* Families of float formats: IEEE-like (top exponent = inf/NaN), OCP "fn" (no inf, only
 * S.1..1.1..1 is NaN), DLFloat (no subnormals, exponent 0 is a normal binade except for the
 * zero code, one merged NaN/inf code at the top). */
enum { MT_FLOAT_IEEE = 0, MT_FLOAT_FN = 1, MT_FLOAT_DL = 2 };

/* A float format: ebits exponent bits, mbits mantissa bits (mbits <= 22), exponent bias,
 * family, code width in bytes (1, 2 or 4) and scale_exp: the element value is the code's
 * value times 2^scale_exp (fp8-seb's shared exponent; 0 otherwise). */
typedef struct {
    int ebits;
    int mbits;
    int bias;
    int family;
    int code_bytes;
    int scale_exp;
} mt_float_fmt;

/* The SR generator: out[j] = r[offset + j] for key (seed, stream). */
void mt_sr_bits(uint32_t *out, size_t n, uint64_t seed, uint64_t stream, uint64_t offset);

/* Float formats. saturate: 1 = clamp to +-max, 0 = overflow value (inf or NaN). */
void mt_encode_float(const float *x, void *codes, size_t n, const mt_float_fmt *fmt,
                     int rounding, int saturate, uint64_t seed, uint64_t stream,
                     uint64_t offset, const uint32_t *rbits);
void mt_decode_float(const void *codes, float *out, size_t n, const mt_float_fmt *fmt);

/* Fixed point: nbits-bit two's complement (4..16) times 2^-frac_bits; codes int8 when
 * nbits <= 8, else int16. saturate: 1 = clamp, 0 = wrap modulo 2^nbits. */
void mt_encode_fixed(const float *x, void *codes, size_t n, int nbits, int frac_bits,
                     int rounding, int saturate, uint64_t seed, uint64_t stream,
                     uint64_t offset, const uint32_t *rbits);
void mt_decode_fixed(const void *codes, float *out, size_t n, int nbits, int frac_bits);
/* encode and decode in one pass: the codes and their values (code * 2^-frac_bits). */
void mt_encode_fixed_values(const float *x, void *codes, float *out, size_t n, int nbits,
                            int frac_bits, int rounding, int saturate, uint64_t seed,
                            uint64_t stream, uint64_t offset, const uint32_t *rbits);
/* encode + decode in one pass (no code array): out = the quantized values. */
void mt_quantize_fixed(const float *x, float *out, size_t n, int nbits, int frac_bits,
                       int rounding, int saturate, uint64_t seed, uint64_t stream,
                       uint64_t offset, const uint32_t *rbits);

/* FGMP: e4m3 majority, 0x10000 | fp16 code for outliers (|x| > threshold, NaN, inf). */
void mt_encode_fgmp(const float *x, uint32_t *codes, size_t n, double threshold,
                    int rounding, int saturate, uint64_t seed, uint64_t stream,
                    uint64_t offset, const uint32_t *rbits);
void mt_decode_fgmp(const uint32_t *codes, float *out, size_t n);
size_t mt_count_outliers(const uint32_t *codes, size_t n);

/* Per-tensor scaling. mt_amax_bits: float32 bits of the largest finite |x| (0 if none).
 * The rest map amax bits to the parameter docs/numerics.md defines, clamped to [-64, 64]:
 * dfxpN frac_bits (largest f with amax * 2^f <= 2^(N-1) - 1), flex16 shared_exp (smallest s
 * with amax <= 32767 * 2^s), fp8-seb shared_exp (smallest s with amax <= 448 * 2^s). */
uint32_t mt_amax_bits(const float *x, size_t n);
int mt_scale_dfxp(uint32_t amax_bits, int nbits);
int mt_scale_flex16(uint32_t amax_bits);
int mt_scale_seb(uint32_t amax_bits);

/* Threads used by the array entry points for large arrays (1 or 2; default 2). */
void mt_numerics_set_threads(int n);
/* 1: use the loops compiled for the baseline instruction set only, not the AVX2/AVX-512
 * clones chosen at load time (same results; lets tests check both). Default 0. */
void mt_numerics_set_portable(int portable);
#endif
