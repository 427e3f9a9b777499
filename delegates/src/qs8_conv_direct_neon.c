/*
 * qs8_conv_direct_neon.c -- direct int8 convolution (any kernel size,
 * stride 1 or 2, SAME/VALID) for AArch64 NEON without the dot product
 * extension: SMLAL products accumulated in int16, widened by SADALP.
 * Bit-exact with qs8_conv_direct_scalar.c.
 *
 * Per 16 reduction values one SMULL/SMLAL (low 8 bytes) and one SMLAL2
 * (high 8 bytes) add 2 products to each int16 lane; after a run of R
 * products per lane, SADALP adds lane pairs into the int32 accumulator.
 * R is the longest run that cannot leave int16 (|x| <= X, |w| <= W,
 * R X W <= 32767), chosen per invoke from max |w| (known at pack time) and
 * a range check of the input (as the AVX2 kernel does):
 *
 *   path  input x                        weights      R   bound R*X*W
 *   r8    7-bit: x = q - min q - 64      |w| <= 63    8   8*64*63  = 32256
 *   r4    7-bit                          |w| <= 127   4   4*64*127 = 32512
 *   r4    full:  x = q                   |w| <= 63    4   4*128*63 = 32256
 *   r2    7-bit                          w = -128     2   2*64*128 = 16384
 *   r2    full                           |w| <= 127   2   2*128*127= 32512
 *   r1    full                           w = -128     1   (SMULL, then SADALP)
 *
 * ("7-bit" = the input, with its zero point, spans at most 128 levels;
 * option bits=8 never takes those rows.)  int32 sums wrap modulo 2^32 --
 * exact whenever TFLite's int32 accumulator is (qs8_conv_direct_scalar.c).
 *
 * Micro-tile: 2 output pixels x 4 output channels: 8 int16x8 runs + 8
 * int32x4 accumulators + 2 input + 4 weight vectors = 22 of 32 registers.
 */
#include "eqd_kernel.h"

#if defined(__aarch64__)

#include <arm_neon.h>

#include "qs8_conv_direct_neon_common.h"
#include "qs8_requant_neon.h"

#define MR 2
#define NR 4

/* Dot products of MR pixels x NR channels; R products per int16 run. */
static inline __attribute__((always_inline)) void tile_2x4(
    const int8_t* a0, const int8_t* a1, size_t row_stride, const int8_t* w,
    size_t w_stride, int kh, int seg16, const int R, int32_t dot[MR][NR]) {
  int32x4_t acc[MR][NR];
  int16x8_t run[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) {
      acc[m][n] = vdupq_n_s32(0);
      run[m][n] = vdupq_n_s16(0);
    }
  int steps = 0; /* 16-value steps in the current run (2 products each) */
  for (int ky = 0; ky < kh; ++ky) {
    const int8_t* x0p = a0 + (size_t)ky * row_stride;
    const int8_t* x1p = a1 + (size_t)ky * row_stride;
    const int8_t* wp = w + (size_t)ky * seg16;
    for (int j = 0; j < seg16; j += 16) {
      const int8x16_t x[MR] = {vld1q_s8(x0p + j), vld1q_s8(x1p + j)};
      int8x16_t wv[NR];
      for (int n = 0; n < NR; ++n) wv[n] = vld1q_s8(wp + n * w_stride + j);
      if (R == 1) { /* |x w| <= 2^14: one product, then widen */
        for (int m = 0; m < MR; ++m)
          for (int n = 0; n < NR; ++n) {
            acc[m][n] = vpadalq_s16(acc[m][n],
                                    vmull_s8(vget_low_s8(x[m]), vget_low_s8(wv[n])));
            acc[m][n] = vpadalq_s16(acc[m][n], vmull_high_s8(x[m], wv[n]));
          }
        continue;
      }
      for (int m = 0; m < MR; ++m)
        for (int n = 0; n < NR; ++n) {
          run[m][n] = vmlal_s8(run[m][n], vget_low_s8(x[m]), vget_low_s8(wv[n]));
          run[m][n] = vmlal_high_s8(run[m][n], x[m], wv[n]);
        }
      if (++steps == R / 2) {
        for (int m = 0; m < MR; ++m)
          for (int n = 0; n < NR; ++n) {
            acc[m][n] = vpadalq_s16(acc[m][n], run[m][n]);
            run[m][n] = vdupq_n_s16(0);
          }
        steps = 0;
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) {
      if (R > 1 && steps) acc[m][n] = vpadalq_s16(acc[m][n], run[m][n]);
      dot[m][n] = vaddvq_s32(acc[m][n]);
    }
}

static inline __attribute__((always_inline)) void pixels(const direct_neon_job* j,
                                                          int pbeg, int pend, const int R) {
  const eqd_conv* c = j->c;
  const int seg16 = j->d->seg16, kh = c->kh;
  const size_t row_stride = (size_t)c->d_wp * c->cin, w_stride = (size_t)kh * seg16;
  for (int p0 = pbeg; p0 < pend; p0 += MR) {
    const int np = pend - p0 < MR ? pend - p0 : MR;
    const int8_t* a0 = j->pad + direct_neon_poff(c, p0);
    const int8_t* a1 = np > 1 ? j->pad + direct_neon_poff(c, p0 + 1) : a0;
    for (int co = 0; co < c->cout; co += NR) {
      int32_t dot[MR][NR];
      tile_2x4(a0, a1, row_stride, j->d->w + (size_t)co * w_stride, w_stride, kh, seg16, R,
               dot);
      const int nc = c->cout - co < NR ? c->cout - co : NR;
      const int32x4_t b = vld1q_s32(j->beff + co);
      for (int m = 0; m < np; ++m) {
        /* wraps modulo 2^32 like the scalar reference */
        const int32x4_t s = vreinterpretq_s32_u32(vaddq_u32(
            vreinterpretq_u32_s32(vld1q_s32(dot[m])), vreinterpretq_u32_s32(b)));
        eqd_store4_s8(j->out + (size_t)(p0 + m) * c->cout + co,
                      eqd_requant4_neon(s, c, co), nc);
      }
    }
  }
}

static void task(void* ctx, int t, int thread) {
  (void)thread;
  const direct_neon_job* j = (const direct_neon_job*)ctx;
  const int npix = j->c->out_h * j->c->out_w;
  const int pbeg = t * j->chunk, pend = pbeg + j->chunk < npix ? pbeg + j->chunk : npix;
  switch (j->run) { /* one instance per run length (constant R) */
    case 8: pixels(j, pbeg, pend, 8); break;
    case 4: pixels(j, pbeg, pend, 4); break;
    case 2: pixels(j, pbeg, pend, 2); break;
    default: pixels(j, pbeg, pend, 1); break;
  }
}

static int direct_neon_run(const eqd_conv* c, const int8_t* in, int8_t* out, eqd_pool* pool) {
  const size_t in_img = (size_t)c->in_h * c->in_w * c->cin;
  const size_t out_img = (size_t)c->out_h * c->out_w * c->cout;
  int qmin = c->in_zp, qmax = c->in_zp;
  const size_t n = in_img * c->batch;
  for (size_t i = 0; i < n; ++i) {
    qmin = in[i] < qmin ? in[i] : qmin;
    qmax = in[i] > qmax ? in[i] : qmax;
  }
  const int in7 = c->allow_7bit && qmax - qmin <= 127;
  const int base = in7 ? qmin + 64 : 0; /* x in [-64, 63], or x = q */
  const int X = in7 ? 64 : 128, W = c->wabs_max > 0 ? c->wabs_max : 1;
  int R = 8;
  while (R > 1 && R * X * W > 32767) R /= 2;
  direct_neon_job j;
  memset(&j, 0, sizeof(j));
  j.c = c;
  j.d = (const direct_neon_data*)c->kdata;
  j.run = R;
  int32_t* beff;
  int8_t* pad = direct_neon_prepare(c, base, &beff);
  j.beff = beff;
  const int ntasks = direct_neon_tasks(c, pool, MR, &j.chunk);
  for (int b = 0; b < c->batch; ++b) {
    direct_neon_pad(c, in + b * in_img, base, pad);
    j.pad = pad;
    j.out = out + b * out_img;
    eqd_pool_run(pool, task, &j, ntasks);
  }
  return R == 8 ? 0 : R == 4 ? 1 : R == 2 ? 2 : 3;
}

const eqd_kernel eqd_kernel_direct_neon = {
    .name = "direct_neon", .isa = "neon", .family = EQD_FAMILY_DIRECT,
    .cpu_features = EQD_CPU_NEON, .pack = direct_neon_pack_weights,
    .unpack = direct_neon_unpack, .scratch_bytes = direct_neon_scratch,
    .run = direct_neon_run,
    .paths = {"direct_neon_r8", "direct_neon_r4", "direct_neon_r2", "direct_neon_r1"}};

#endif /* __aarch64__ */
