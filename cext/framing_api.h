#ifndef MICROTRAIN_FRAMING_API_H
#define MICROTRAIN_FRAMING_API_H
/* The frame codec's C accelerator (module protocol._framing_c, built by build_framing.py):
 * COBS, CRC-32 and the delimiter search exactly as protocol/framing.py does them (the Python
 * code is the reference; tests/test_framing_c.py checks both agree byte for byte). Not part of
 * device_model._chip: build_chip.py skips every cext/framing* file. */
#include <stddef.h>
#include <stdint.h>

/* Names are mt_codec_*, apart from the static inline mt_crc32 / mt_cobs_decode of the generated
 * include/microtrain_protocol.h (the board-side reference), so a file may include both.
 *
 * Version of this API; bumped when a function is added or changed (protocol.framing uses
 * the module only if the version is the one it was written for). */
int mt_codec_version(void);

/* CRC-32/IEEE of p[0..n) continued from value, exactly zlib.crc32(p, value). Folds 256 bytes a
 * step with VPCLMULQDQ (AVX-512) or 64 bytes with PCLMULQDQ where the CPU has them, else a
 * byte table. */
uint32_t mt_codec_crc32(uint32_t value, const uint8_t *p, size_t n);

/* 1 if mt_codec_crc32 uses carry-less multiplication on this CPU, 0 if it runs the byte table. */
int mt_codec_crc32_simd(void);

/* The wire bytes of a frame: 0x00 | COBS(a | b | crc) | 0x00 where crc is
 * mt_codec_crc32(value, a | b), 4 bytes little-endian. out holds n + 4 + (n + 4) / 254 + 3 bytes
 * (n = na + nb). Returns the bytes written. */
size_t mt_codec_frame_encode(const uint8_t *a, size_t na, const uint8_t *b, size_t nb,
                             uint32_t value, uint8_t *out);

/* COBS-encode the concatenation a | b | c (na + nb + nc bytes, any of them empty) into out,
 * with a 0x00 delimiter before and after when delimit is non-zero. out must hold
 * n + n / 254 + 1 bytes (n = na + nb + nc), plus 2 with delimiters. Returns the bytes
 * written. A run of 254 non-zero bytes ends a 0xFF block; the last block is always written
 * (so 254 non-zero bytes encode to 0xFF, the bytes, 0x01), as protocol.framing does. */
size_t mt_codec_cobs_encode(const uint8_t *a, size_t na, const uint8_t *b, size_t nb,
                            const uint8_t *c, size_t nc, int delimit, uint8_t *out);

/* COBS-decode in[0..n) into out (n - 1 bytes at most; n >= 1). Returns the decoded length,
 * or -(1 + offset) for the first block that is bad: its code byte at `offset` is 0x00, or it
 * claims more data bytes than remain. Data bytes are copied as they are (a caller that must
 * reject 0x00 inside a frame checks for it first, as protocol.framing does). */
ptrdiff_t mt_codec_cobs_decode(const uint8_t *in, size_t n, uint8_t *out);

/* The offsets of the first zero bytes of p[0..n), at most cap of them, into pos; returns how
 * many were stored (cap: there may be more). memchr does the scanning (bytes.split looks at
 * every byte in a loop of its own, several times slower on frames of 16 KiB). */
size_t mt_codec_zeros(const uint8_t *p, size_t n, size_t *pos, size_t cap);
#endif
