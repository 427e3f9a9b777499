/*
 * qs8_dwconv_neon.c -- depthwise int8 convolution (depth multiplier 1, any
 * kernel size up to 64 taps, stride 1/2, SAME/VALID) for AArch64 NEON.
 * Bit-exact with qs8_dwconv_scalar.c.
 *
 * 8 channels at a time: the raw input bytes (border = z_in) are widened to
 * int16 (SXTL) and multiplied by the int16-widened weights with SMLAL /
 * SMLAL2 (16 x 16 -> 32 bit).  |q w| <= 2^14 per tap, summed in int32
 * modulo 2^32 -- exact whenever TFLite's int32 accumulator is; z_in * sum w
 * is folded into bias_eff.  Channel leftovers read up to 7 bytes past a
 * pixel (64 bytes of slack at the end of the padded input) and meet zero
 * weights; only the real channels are stored.  Rows are split over threads.
 *
 * Path dwconv_neon_r8 (7-bit data, |w| <= 63, option bits=7): the padded
 * input holds x = q - (min q + 64) in [-64, 63] (the border z_in - base),
 * so 8 taps of x w fit an int16 lane (8 * 64 * 63 = 32256): SMLAL / SMLAL2
 * on int8 (16 channels, 16 products per tap in 2 instructions), widened by
 * SADDW every 8 taps, and base * sum w folded into the bias per invoke.
 * Path dwconv_neon: everything else (int16 SMLAL per tap, as above).
 */
#include "eqd_kernel.h"

#if defined(__aarch64__)

#include <arm_neon.h>
#include <string.h>

#include "qs8_requant_neon.h"

/* Weights as [cout_pad/8][taps][8] int16, zero in the padding (kdata). */
/* Weights as [cout_pad/8][taps][8] int16, then [cout_pad/16][taps][16] int8,
 * zero in the padding (kdata, one block). */
static int dwconv_neon_pack(eqd_conv* c) {
  const int C = c->cout, T = c->kh * c->kw, ncb = c->cout_pad / 8;
  const size_t n16 = (size_t)ncb * T * 8;
  int16_t* w = (int16_t*)eqd_aligned_alloc(n16 * sizeof(int16_t) + n16);
  c->kdata = w;
  if (!w) return -1;
  for (int cb = 0; cb < ncb; ++cb)
    for (int t = 0; t < T; ++t)
      for (int l = 0; l < 8; ++l) {
        const int ch = cb * 8 + l;
        w[((size_t)cb * T + t) * 8 + l] = ch < C ? c->w[(size_t)t * C + ch] : 0;
      }
  int8_t* w8 = (int8_t*)(w + n16);
  for (int cb = 0; cb < c->cout_pad / 16; ++cb)
    for (int t = 0; t < T; ++t)
      for (int l = 0; l < 16; ++l) {
        const int ch = cb * 16 + l;
        w8[((size_t)cb * T + t) * 16 + l] = ch < C ? c->w[(size_t)t * C + ch] : 0;
      }
  return 0;
}

static size_t dwconv_neon_scratch(eqd_conv* c) { return eqd_direct_padded_bytes(c); }

typedef struct dw_job {
  const eqd_conv* c;
  const int8_t* pad;
  int8_t* out;
  int base; /* dwconv_neon_r8: the input offset the padded input has had removed */
} dw_job;

static void dw_row(void* ctx, int oy, int thread) {
  (void)thread;
  const dw_job* j = (const dw_job*)ctx;
  const eqd_conv* c = j->c;
  const int C = c->cout, kh = c->kh, kw = c->kw, T = kh * kw;
  const size_t wp = (size_t)c->d_wp;
  const int16_t* wpk = (const int16_t*)c->kdata;
  for (int ox = 0; ox < c->out_w; ++ox) {
    const int8_t* base =
        j->pad + ((size_t)oy * c->stride_h * wp + (size_t)ox * c->stride_w) * C;
    int8_t* o = j->out + ((size_t)oy * c->out_w + ox) * C;
    for (int c0 = 0; c0 < C; c0 += 8) {
      const int16_t* wc = wpk + (size_t)(c0 / 8) * T * 8;
      int32x4_t lo = vld1q_s32(c->bias_eff + c0), hi = vld1q_s32(c->bias_eff + c0 + 4);
      for (int ky = 0; ky < kh; ++ky)
        for (int kx = 0; kx < kw; ++kx) {
          const int16x8_t x = vmovl_s8(vld1_s8(base + ((size_t)ky * wp + kx) * C + c0));
          const int16x8_t w = vld1q_s16(wc + (size_t)(ky * kw + kx) * 8);
          lo = vmlal_s16(lo, vget_low_s16(x), vget_low_s16(w));
          hi = vmlal_high_s16(hi, x, w);
        }
      const int n = C - c0 < 8 ? C - c0 : 8;
      eqd_store4_s8(o + c0, eqd_requant4_neon(lo, c, c0), n);
      if (n > 4) eqd_store4_s8(o + c0 + 4, eqd_requant4_neon(hi, c, c0 + 4), n - 4);
    }
  }
}

/* 16 channels of one output pixel: runs of 8 taps in int16 (SMLAL/SMLAL2 on
 * int8), each run widened into the int32 accumulators (SADDW). */
static inline __attribute__((always_inline)) void dw_pixel_r8(
    const int8_t* base, const size_t* toff, int T, const int8_t* wc, int32x4_t acc[4]) {
  for (int t0 = 0; t0 < T; t0 += 8) {
    int16x8_t r0 = vdupq_n_s16(0), r1 = vdupq_n_s16(0);
#define DW_TAP(t)                                                        \
  do {                                                                   \
    const int8x16_t x_ = vld1q_s8(base + toff[t]), w_ = vld1q_s8(wc + (size_t)(t) * 16); \
    r0 = vmlal_s8(r0, vget_low_s8(x_), vget_low_s8(w_));                 \
    r1 = vmlal_high_s8(r1, x_, w_);                                      \
  } while (0)
    if (T - t0 >= 8) {
      for (int t = 0; t < 8; ++t) DW_TAP(t0 + t); /* unrolled: no branch per tap */
    } else {
      for (int t = t0; t < T; ++t) DW_TAP(t);
    }
#undef DW_TAP
    acc[0] = vaddw_s16(acc[0], vget_low_s16(r0));
    acc[1] = vaddw_high_s16(acc[1], r0);
    acc[2] = vaddw_s16(acc[2], vget_low_s16(r1));
    acc[3] = vaddw_high_s16(acc[3], r1);
  }
}

static void dw_row_r8(void* ctx, int oy, int thread) {
  (void)thread;
  const dw_job* j = (const dw_job*)ctx;
  const eqd_conv* c = j->c;
  const int C = c->cout, T = c->kh * c->kw;
  const size_t row = (size_t)c->d_wp * C;
  size_t toff[64]; /* at most 64 taps (claim.c) */
  for (int t = 0; t < T; ++t) toff[t] = (size_t)(t / c->kw) * row + (size_t)(t % c->kw) * C;
  const int8_t* w8 = (const int8_t*)((const int16_t*)c->kdata + (size_t)c->cout_pad * T);
  for (int ox = 0; ox < c->out_w; ++ox) {
    const int8_t* base = j->pad + (size_t)oy * c->stride_h * row + (size_t)ox * c->stride_w * C;
    int8_t* o = j->out + ((size_t)oy * c->out_w + ox) * C;
    for (int c0 = 0; c0 < C; c0 += 16) {
      const int8_t* wc = w8 + (size_t)(c0 / 16) * T * 16;
      int32x4_t acc[4];
      for (int q = 0; q < 4; ++q) /* bias - z_in sum w + base sum w, mod 2^32 */
        acc[q] = vmlaq_n_s32(vld1q_s32(c->bias_eff + c0 + 4 * q),
                             vld1q_s32(c->wsum + c0 + 4 * q), j->base);
      dw_pixel_r8(base + c0, toff, T, wc, acc);
      for (int q = 0; q < 4 && c0 + 4 * q < C; ++q) {
        const int n = C - (c0 + 4 * q) < 4 ? C - (c0 + 4 * q) : 4;
        eqd_store4_s8(o + c0 + 4 * q, eqd_requant4_neon(acc[q], c, c0 + 4 * q), n);
      }
    }
  }
}

static int dwconv_neon_run(const eqd_conv* c, const int8_t* in, int8_t* out,
                           eqd_pool* pool) {
  const size_t in_img = (size_t)c->in_h * c->in_w * c->cin;
  const size_t out_img = (size_t)c->out_h * c->out_w * c->cout;
  int8_t* pad = (int8_t*)c->scratch;
  int qmin = c->in_zp, qmax = c->in_zp;
  const size_t n = in_img * c->batch;
  for (size_t i = 0; i < n; ++i) {
    qmin = in[i] < qmin ? in[i] : qmin;
    qmax = in[i] > qmax ? in[i] : qmax;
  }
  const int r8 = c->allow_7bit && qmax - qmin <= 127 && c->wabs_max <= 63;
  const int base = r8 ? qmin + 64 : 0;
  const size_t padded = (size_t)c->d_hp * c->d_wp * c->cin;
  for (int b = 0; b < c->batch; ++b) {
    eqd_pad_input_s8(in + b * in_img, c->in_h, c->in_w, c->cin, c->pad_top, c->pad_left,
                     c->d_hp, c->d_wp, (int8_t)c->in_zp, pad);
    if (r8) { /* x = q - base in [-64, 63] (q and z_in within 127 of min q) */
      const int8x16_t vb = vdupq_n_s8((int8_t)base);
      size_t i = 0;
      for (; i + 16 <= padded; i += 16) vst1q_s8(pad + i, vsubq_s8(vld1q_s8(pad + i), vb));
      for (; i < padded; ++i) pad[i] = (int8_t)(pad[i] - base);
    }
    dw_job job = {c, pad, out + b * out_img, base};
    eqd_pool_run(pool, r8 ? dw_row_r8 : dw_row, &job, c->out_h);
  }
  return r8 ? 0 : 1;
}

const eqd_kernel eqd_kernel_dwconv_neon = {
    .name = "dwconv_neon", .isa = "neon", .family = EQD_FAMILY_DWCONV,
    .cpu_features = EQD_CPU_NEON, .pack = dwconv_neon_pack, .unpack = eqd_aligned_free,
    .scratch_bytes = dwconv_neon_scratch, .run = dwconv_neon_run,
    .paths = {"dwconv_neon_r8", "dwconv_neon"}};

#endif /* __aarch64__ */
