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
 */
#include "eqd_kernel.h"

#if defined(__aarch64__)

#include <arm_neon.h>
#include <string.h>

#include "qs8_requant_neon.h"

/* Weights as [cout_pad/8][taps][8] int16, zero in the padding (kdata). */
static int dwconv_neon_pack(eqd_conv* c) {
  const int C = c->cout, T = c->kh * c->kw, ncb = c->cout_pad / 8;
  int16_t* w = (int16_t*)eqd_aligned_alloc((size_t)ncb * T * 8 * sizeof(int16_t));
  c->kdata = w;
  if (!w) return -1;
  for (int cb = 0; cb < ncb; ++cb)
    for (int t = 0; t < T; ++t)
      for (int l = 0; l < 8; ++l) {
        const int ch = cb * 8 + l;
        w[((size_t)cb * T + t) * 8 + l] = ch < C ? c->w[(size_t)t * C + ch] : 0;
      }
  return 0;
}

static size_t dwconv_neon_scratch(eqd_conv* c) { return eqd_direct_padded_bytes(c); }

typedef struct dw_job {
  const eqd_conv* c;
  const int8_t* pad;
  int8_t* out;
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

static int dwconv_neon_run(const eqd_conv* c, const int8_t* in, int8_t* out,
                           eqd_pool* pool) {
  const size_t in_img = (size_t)c->in_h * c->in_w * c->cin;
  const size_t out_img = (size_t)c->out_h * c->out_w * c->cout;
  int8_t* pad = (int8_t*)c->scratch;
  for (int b = 0; b < c->batch; ++b) {
    eqd_pad_input_s8(in + b * in_img, c->in_h, c->in_w, c->cin, c->pad_top, c->pad_left,
                     c->d_hp, c->d_wp, (int8_t)c->in_zp, pad);
    dw_job job = {c, pad, out + b * out_img};
    eqd_pool_run(pool, dw_row, &job, c->out_h);
  }
  return 0;
}

const eqd_kernel eqd_kernel_dwconv_neon = {
    .name = "dwconv_neon", .isa = "neon", .family = EQD_FAMILY_DWCONV,
    .cpu_features = EQD_CPU_NEON, .pack = dwconv_neon_pack, .unpack = eqd_aligned_free,
    .scratch_bytes = dwconv_neon_scratch, .run = dwconv_neon_run,
    .paths = {"dwconv_neon"}};

#endif /* __aarch64__ */
