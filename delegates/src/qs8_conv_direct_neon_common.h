/*
 * qs8_conv_direct_neon_common.h -- what the two AArch64 direct-convolution
 * variants share (qs8_conv_direct_neon.c: SMLAL runs in int16;
 * qs8_conv_direct_neon_dot.c: SDOT): the weight layout, the re-based padded
 * input, and the pixel-range threading.
 *
 * The reduction index k runs over (ky, kx, ci).  For one output pixel and
 * one kernel row the kw*cin inputs are contiguous in the padded input, and
 * OHWI weights have the same order, so a pixel's dot product with channel
 * co is, per kernel row, one contiguous run of seg = kw*cin bytes.  Each row
 * of weights is zero-padded to seg16 (a multiple of 16): the kernels read
 * 16 inputs at a time, and the up to 15 inputs read past a row's end meet
 * zero weights (the padded input has 64 bytes of slack at its end).
 *
 * Re-based input: x = q - base (int8), with the identity
 *   sum (q - z) w = sum x w + (base - z) sum w,
 * the last term folded into the bias once per invoke (modulo 2^32).
 */
#ifndef EQD_QS8_CONV_DIRECT_NEON_COMMON_H_
#define EQD_QS8_CONV_DIRECT_NEON_COMMON_H_

#include <stdlib.h>
#include <string.h>

#include "eqd_kernel.h"

typedef struct direct_neon_data {
  int seg16; /* kw*cin rounded up to 16                               */
  int8_t* w; /* [cout_pad][kh][seg16], zero in the padding            */
} direct_neon_data;

static inline int direct_neon_pack_weights(eqd_conv* c) {
  const int seg = c->kw * c->cin, seg16 = (seg + 15) & ~15;
  direct_neon_data* p = (direct_neon_data*)calloc(1, sizeof(*p));
  if (!p) return -1;
  c->kdata = p;
  p->seg16 = seg16;
  const size_t n = (size_t)c->cout_pad * c->kh * seg16;
  p->w = (int8_t*)eqd_aligned_alloc(n);
  if (!p->w) return -1;
  memset(p->w, 0, n);
  for (int co = 0; co < c->cout; ++co)
    for (int ky = 0; ky < c->kh; ++ky)
      memcpy(p->w + ((size_t)co * c->kh + ky) * seg16,
             c->w + ((size_t)co * c->kh + ky) * seg, (size_t)seg);
  return 0;
}

static inline void direct_neon_unpack(void* kdata) {
  direct_neon_data* p = (direct_neon_data*)kdata;
  if (!p) return;
  eqd_aligned_free(p->w);
  free(p);
}

/* padded re-based input (+64 slack) + per-invoke folded bias */
static inline size_t direct_neon_scratch(eqd_conv* c) {
  return eqd_direct_padded_bytes(c) + (size_t)c->cout_pad * sizeof(int32_t) + 64;
}

/* Splits the scratch into the padded input (returned) and the folded bias
 * bias + (base - z) * sum w (*beff, computed here, modulo 2^32). */
static inline int8_t* direct_neon_prepare(const eqd_conv* c, int base, int32_t** beff) {
  int8_t* pad = (int8_t*)c->scratch;
  int32_t* b = (int32_t*)((char*)c->scratch + eqd_direct_padded_bytes(c));
  const uint32_t corr = (uint32_t)(base - c->in_zp);
  for (int co = 0; co < c->cout_pad; ++co)
    b[co] = (int32_t)((uint32_t)c->bias[co] + corr * (uint32_t)c->wsum[co]);
  *beff = b;
  return pad;
}

/* The padded, re-based copy of one image. */
static inline void direct_neon_pad(const eqd_conv* c, const int8_t* img, int base,
                                   int8_t* pad) {
  eqd_pad_input_s8(img, c->in_h, c->in_w, c->cin, c->pad_top, c->pad_left, c->d_hp,
                   c->d_wp, (int8_t)c->in_zp, pad);
  if (base != 0) {
    const size_t n = (size_t)c->d_hp * c->d_wp * c->cin;
    for (size_t i = 0; i < n; ++i) pad[i] = (int8_t)(pad[i] - base); /* in [-64, 63] */
  }
}

/* Output pixels [p0, p1) of one image, handed to a variant's tile loop. */
typedef struct direct_neon_job {
  const eqd_conv* c;
  const direct_neon_data* d;
  const int8_t* pad;
  const int32_t* beff;
  int8_t* out;
  int run; /* products per int16 run (SMLAL variant) */
  int chunk;
} direct_neon_job;

/* Byte offset of output pixel p's window in the padded input. */
static inline size_t direct_neon_poff(const eqd_conv* c, int p) {
  const int oy = p / c->out_w, ox = p % c->out_w;
  return ((size_t)oy * c->stride_h * c->d_wp + (size_t)ox * c->stride_w) * c->cin;
}

/* Splits the pixels of one image into tasks of whole `mr` tiles. */
static inline int direct_neon_tasks(const eqd_conv* c, eqd_pool* pool, int mr, int* chunk) {
  const int npix = c->out_h * c->out_w, nth = eqd_pool_threads(pool);
  *chunk = npix;
  if (nth <= 1) return 1;
  int ch = (npix + 4 * nth - 1) / (4 * nth);
  ch = (ch + mr - 1) / mr * mr;
  *chunk = ch;
  return (npix + ch - 1) / ch;
}

#endif /* EQD_QS8_CONV_DIRECT_NEON_COMMON_H_ */
