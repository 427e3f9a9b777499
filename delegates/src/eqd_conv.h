/*
 * eqd_conv.h -- internal interface between the delegate glue (delegate.c),
 * the quantization parameters (conv_params.c) and the kernels
 * (qs8_conv_direct_*.c, qs8_winograd_f2x3_*.c, qs8_dwconv_*.c).
 *
 * Conventions (same as TFLite):
 *   activations NHWC int8, real = s * (q - zp);
 *   weights OHWI int8, per output channel symmetric (zp = 0);
 *   bias int32 with scale s_in * s_w[c] (zero when absent);
 *   acc[c] = sum (q_in - z_in) * w[c] + bias[c]   (int32)
 *   q_out  = clamp(MultiplyByQuantizedMultiplier(acc, M[c], shift[c]) + z_out,
 *                  act_min, act_max).
 *
 * Every kernel computes `acc` exactly.  All int32 accumulation is done modulo
 * 2^32 (uint32_t in C, vpaddd in SIMD), so whenever TFLite's own int32
 * accumulator does not overflow (|acc| < 2^31) the results are identical, and
 * signed overflow (undefined behaviour in C) never happens in our code.
 */
#ifndef EQD_CONV_H_
#define EQD_CONV_H_

#include <stddef.h>
#include <stdint.h>

#include "eqd_threadpool.h"

/* Winograd F(2x2,3x3) is exact in int32 while 4 * 9 * cin * 128 * 128 < 2^31,
 * i.e. the true value of 4 * sum(q * w) (which is what the output transform
 * produces before the divide by 4) is representable.  See
 * qs8_winograd_f2x3_scalar.c for the derivation. */
#define EQD_WINOGRAD_MAX_CIN 3640

/* Winograd tile block geometry shared by the Winograd variants (scratch
 * layout): MR tiles x NR output channels per micro-kernel call. */
#define EQD_WINO_NR 16
#define EQD_WINO_MR 6

struct eqd_kernel;

typedef struct eqd_conv {
  /* ---- constant, from the model (filled at kernel init) ---- */
  int node_index;
  int cin, cout, kh, kw, stride_h, stride_w;
  int padding_same; /* 1 = SAME, 0 = VALID */
  int32_t in_zp, out_zp, act_min, act_max;
  const int8_t* w;  /* OHWI (depthwise: HWC), TFLite's read-only constant */
  int32_t* bias;    /* [cout_pad] (zeros when absent / in padding lanes)   */
  int32_t* wsum;    /* [cout_pad] sum of w over kh*kw*cin (kh*kw: depthwise) */
  int wabs_max;     /* max |w| over the whole filter (<= 128)              */
  int cout_pad;     /* cout rounded up to 16                               */
  /* Requantization, per channel (TFLite's QuantizeMultiplier), [cout_pad]. */
  int32_t* rq_mult;    /* Q0.31 significand, 0 or in [2^30, 2^31)          */
  int32_t* rq_lshift;  /* max(shift, 0)                                    */
  int32_t* rq_rshift;  /* max(-shift, 0), <= 31                            */
  int32_t* rq_rmask;   /* (1 << rshift) - 1                                */
  int32_t* rq_rthresh; /* rmask >> 1                                       */
  /* Ties of the final rounding right shift, per channel: -1 = away from
   * zero (TFLite's reference kernels, RoundingDivideByPOT), 0 = toward +inf
   * (TFLite's optimized int8 kernels on x86: ruy's AVX2 requantization for
   * CONV_2D; for DEPTHWISE_CONV_2D the optimized kernel rounds the channels
   * it handles 8 at a time toward +inf and the remaining C % 8 channels away
   * from zero).  Option `rounding=builtin|reference`.  [cout_pad] */
  int32_t* rq_away;
  /* 1: single rounding (ruy's aarch64 kernels, TFLite CONV_2D on arm64):
   * h = floor(x * M / 2^31) with x = acc << (shift >= 0 ? shift + 1 : 0),
   * then a rounding right shift by (shift >= 0 ? 1 : -shift), ties toward
   * +inf; this equals floor((acc * M * 2^shift + 2^(30 - shift)) / 2^(31 -
   * shift)) whenever acc << lshift does not wrap.  rq_lshift / rq_rshift
   * hold these shifts and rq_away is 0.  0: double rounding (srdhm, then
   * the rounding shift with the per-channel tie rule of rq_away). */
  int rq_single;

  /* ---- algorithm choice and prepacked weights ---- */
  int allow_7bit;     /* option bits=7: use the 7-bit input fast paths      */
  int depthwise;      /* 1: DEPTHWISE_CONV_2D (multiplier 1), cin == cout,
                         w is [kh][kw][c] (the filter's leading 1 dropped) */
  int winograd;       /* 1 if this node runs the Winograd family            */
  int cin2;           /* cin rounded up to even                             */
  int32_t* bias_eff;  /* [cout_pad] bias - z_in * sum(w) (mod 2^32)         */
  const struct eqd_kernel* kernel; /* the variant that runs (eqd_kernel.h) */
  void* kdata;        /* its packed constant data (opaque, owned)           */

  /* ---- shape dependent (filled at kernel prepare) ---- */
  int batch, in_h, in_w, out_h, out_w, pad_top, pad_left;
  int nthreads;       /* threads the SIMD kernels may use (scratch per thread) */
  int d_hp, d_wp;     /* padded input for the direct kernels               */
  int tiles_h, tiles_w, w_hp, w_wp; /* Winograd tiling and padded input   */
  int wino_tb;        /* tiles per block (multiple of EQD_WINO_MR)          */
  int wino_cstride;   /* int16 stride of one tile's channels in V (cin->16) */
  void* scratch;      /* one aligned block, sized by kernel->scratch_bytes  */
  size_t scratch_bytes;
} eqd_conv;

/* conv_params.c */
void eqd_quantize_multiplier(double m, int32_t* q, int* shift);
void eqd_activation_range(int act, float out_scale, int32_t out_zp,
                          int32_t* act_min, int32_t* act_max);
/* Requantization rules (option `rounding`). */
typedef enum eqd_rounding {
  EQD_ROUND_REFERENCE = 0, /* TFLite's reference kernels: double rounding,
                              ties away from zero everywhere              */
  EQD_ROUND_X86 = 1,       /* LiteRT's builtin kernels on x86-64          */
  EQD_ROUND_ARM64 = 2,     /* LiteRT's builtin kernels on aarch64         */
  EQD_ROUND_TFLITE214 = 3, /* tflite-runtime 2.14's builtin kernels on x86:
                              CONV_2D as X86, DEPTHWISE_CONV_2D ties away
                              from zero in every channel (measured)      */
  EQD_ROUND_COUNT
} eqd_rounding;
extern const char* const eqd_rounding_names[EQD_ROUND_COUNT];
#if defined(__aarch64__)
#define EQD_ROUND_NATIVE EQD_ROUND_ARM64
#else
#define EQD_ROUND_NATIVE EQD_ROUND_X86
#endif
int eqd_conv_init_requant(eqd_conv* c, float in_scale, const float* w_scales,
                          int n_w_scales, float out_scale, eqd_rounding rounding);
/* Sets the shape and thread count and (re)allocates scratch memory. */
int eqd_conv_setup_shape(eqd_conv* c, int batch, int in_h, int in_w, int nthreads);
/* After the geometry, zero points, depthwise and w are set: cout_pad,
 * cin2, bias (copied; NULL = zeros), wsum, wabs_max and bias_eff. */
int eqd_conv_init_weights(eqd_conv* c, const int32_t* bias);
void eqd_conv_free(eqd_conv* c);
/* Runs one convolution with c->kernel; returns the index of the path that
 * ran (kernel->paths).  `pool` (may be NULL) must have at most c->nthreads
 * threads; the scalar kernels ignore it. */
int eqd_conv_run(eqd_conv* c, const int8_t* in, int8_t* out, eqd_pool* pool);

void* eqd_aligned_alloc(size_t bytes);
void eqd_aligned_free(void* p);

/* Padded copy: dst[hp][wp][c] = src[y - pt][x - pl][c] inside, else `fill`. */
void eqd_pad_input_s8(const int8_t* src, int h, int w, int ch, int pt, int pl,
                      int hp, int wp, int8_t fill, int8_t* dst);

/* Shared by every Winograd variant (qs8_winograd_f2x3_scalar.c): the scalar
 * transformed kernel U' = G' g G'^T, [16][cout][cin] int16 (|U'| <= 1152). */
int16_t* eqd_winograd_transform_weights(const eqd_conv* c);
size_t eqd_winograd_scratch_bytes(eqd_conv* c); /* also sets wino_tb */
size_t eqd_winograd_padded_bytes(const eqd_conv* c);
size_t eqd_winograd_thread_bytes(const eqd_conv* c); /* V + M of one thread */
/* Padded input of the direct and depthwise kernels, + 64 bytes slack. */
size_t eqd_direct_padded_bytes(const eqd_conv* c);

/* The scalar references of the three families (bit-exact with TFLite). */
void eqd_direct_scalar(const eqd_conv* c, const int8_t* in, int8_t* out);
void eqd_winograd_scalar(const eqd_conv* c, const int8_t* in, int8_t* out);
void eqd_dwconv_scalar(const eqd_conv* c, const int8_t* in, int8_t* out);

/* ---- TFLite's fixed-point requantization, scalar, bit for bit ----------- */

/* SaturatingRoundingDoublingHighMul: a * b / 2^31 rounded to nearest with
 * TFLite's nudge-and-truncate (ties toward +inf, = floor((ab + 2^30) / 2^31)),
 * saturating the single overflow case a == b == INT32_MIN. */
static inline int32_t eqd_srdhm(int32_t a, int32_t b) {
  if (a == b && a == INT32_MIN) return INT32_MAX;
  const int64_t ab = (int64_t)a * (int64_t)b; /* |ab| <= 2^62: no overflow */
  const int64_t nudge = ab >= 0 ? (1LL << 30) : (1 - (1LL << 30));
  return (int32_t)((ab + nudge) / (1LL << 31)); /* C division truncates */
}

/* floor(a * b / 2^31) for 0 <= b < 2^31: AArch64's SQDMULH (which
 * saturates only for a == b == INT32_MIN, excluded here). */
static inline int32_t eqd_floor_mulhi(int32_t a, int32_t b) {
  const int64_t ab = (int64_t)a * (int64_t)b;
  const int64_t q = ab / (1LL << 31); /* truncates toward zero */
  return (int32_t)(q * (1LL << 31) > ab ? q - 1 : q);
}

/* Rounding divide by 2^e (0 <= e <= 31), to nearest.
 * away != 0: ties away from zero, TFLite's RoundingDivideByPOT.
 * away == 0: ties toward +inf, = floor((x + 2^(e-1)) / 2^e) as ruy's AVX2
 *            kernel computes it (including its overflow case, which yields
 *            2^(31-e) = (INT32_MAX >> e) + 1 here as well).
 * (x >> e) + 1 <= 2^(31-e) cannot overflow for e >= 1; for e = 0 the
 * remainder is 0 and nothing is added. */
static inline int32_t eqd_rdbpot(int32_t x, int e, int away) {
  const int32_t mask = (int32_t)((1LL << e) - 1);
  const int32_t remainder = x & mask;
  const int32_t threshold = (mask >> 1) + ((away && x < 0) ? 1 : 0);
  return (x >> e) + (remainder > threshold ? 1 : 0);
}

/* TFLite's MultiplyByQuantizedMultiplier followed by +zp and the clamp.
 * x * 2^left_shift wraps like TFLite's int32 multiply (done in uint32). */
static inline int8_t eqd_requant_scalar(const eqd_conv* c, int ch, int32_t acc) {
  /* A shift of 32 (single rounding with shift 31) gives 0, as SSHL and
   * VPSLLVD do; C's << would be undefined there. */
  const int ls = c->rq_lshift[ch];
  const int32_t x = ls >= 32 ? 0 : (int32_t)((uint32_t)acc << ls);
  const int32_t h = c->rq_single ? eqd_floor_mulhi(x, c->rq_mult[ch])
                                 : eqd_srdhm(x, c->rq_mult[ch]);
  int32_t v = eqd_rdbpot(h, c->rq_rshift[ch], c->rq_away[ch] != 0);
  v = (int32_t)((uint32_t)v + (uint32_t)c->out_zp);
  if (v < c->act_min) v = c->act_min;
  if (v > c->act_max) v = c->act_max;
  return (int8_t)v;
}

#endif /* EQD_CONV_H_ */
