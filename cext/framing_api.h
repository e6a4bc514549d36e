#ifndef MICROTRAIN_FRAMING_API_H
#define MICROTRAIN_FRAMING_API_H
/* The frame codec's C accelerator (module protocol._framing_c, built by build_framing.py):
 * COBS byte stuffing exactly as protocol/framing.py does it (the Python code is the
 * reference; tests/test_framing_c.py checks both agree byte for byte). Not part of
 * device_model._chip: build_chip.py skips every cext/framing* file. */
#include <stddef.h>
#include <stdint.h>

/* Version of the codec; bumped when any output byte could change. */
int mt_framing_version(void);

/* COBS-encode the concatenation a | b | c (na + nb + nc bytes, any of them empty) into out,
 * with a 0x00 delimiter before and after when delimit is non-zero. out must hold
 * n + n / 254 + 1 bytes (n = na + nb + nc), plus 2 with delimiters. Returns the bytes
 * written. A run of 254 non-zero bytes ends a 0xFF block; the last block is always written
 * (so 254 non-zero bytes encode to 0xFF, the bytes, 0x01), as protocol.framing does. */
size_t mt_cobs_frame(const uint8_t *a, size_t na, const uint8_t *b, size_t nb, const uint8_t *c,
                     size_t nc, int delimit, uint8_t *out);

/* COBS-decode in[0..n) into out (n - 1 bytes at most; n >= 1). Returns the decoded length,
 * or -(1 + offset) for the first block that is bad: its code byte at `offset` is 0x00, or it
 * claims more data bytes than remain. Data bytes are copied as they are (a caller that must
 * reject 0x00 inside a frame checks for it first, as protocol.framing does). */
ptrdiff_t mt_cobs_decode(const uint8_t *in, size_t n, uint8_t *out);
#endif
