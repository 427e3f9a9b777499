/*
 * qs8_conv_direct_neon_dot.c -- direct int8 convolution for AArch64 CPUs
 * with the dot product extension (ARMv8.2 SDOT; HWCAP_ASIMDDP), chosen at
 * run time.  Same weight layout, padding and threading as the SMLAL
 * variant (qs8_conv_direct_neon_common.h), raw inputs (x = q).
 *
 * One SDOT adds 4 products of int8 pairs into each of 4 int32 lanes (16
 * multiply-adds per instruction); |4 x w| <= 4 * 2^14 = 2^16, so nothing
 * can saturate, and the int32 sums wrap modulo 2^32 -- exact whenever
 * TFLite's int32 accumulator is.  No input range check is needed.
 *
 * Micro-tile: 4 output pixels x 4 output channels: 16 int32x4 accumulators
 * + 4 input + 4 weight vectors = 24 of 32 registers.
 */
#include "eqd_kernel.h"

#if defined(__aarch64__)

/* The dot-product instructions are enabled for this file only; the rest of
 * the library stays ARMv8.0, and the row runs only where HWCAP_ASIMDDP is
 * set.  GCC: by the pragma below.  clang ignores that pragma, and its
 * arm_neon.h declares vdotq_s32 only under __ARM_FEATURE_DOTPROD, so clang
 * builds this file with -march=armv8.2-a+dotprod (delegates/CMakeLists.txt
 * does). */
#if defined(__clang__)
#if !defined(__ARM_FEATURE_DOTPROD)
#error "build qs8_conv_direct_neon_dot.c with -march=armv8.2-a+dotprod (see CMakeLists.txt)"
#endif
#else
#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")
#endif

#include <arm_neon.h>

#include "qs8_conv_direct_neon_common.h"
#include "qs8_requant_neon.h"

#define MR 4
#define NR 4

static inline __attribute__((always_inline)) void tile_4x4(
    const int8_t* const a[MR], size_t row_stride, const int8_t* w, size_t w_stride, int kh,
    int seg16, int32_t dot[MR][NR]) {
  int32x4_t acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) acc[m][n] = vdupq_n_s32(0);
  for (int ky = 0; ky < kh; ++ky) {
    const size_t ro = (size_t)ky * row_stride;
    const int8_t* wp = w + (size_t)ky * seg16;
    for (int j = 0; j < seg16; j += 16) {
      int8x16_t x[MR], wv[NR];
      for (int m = 0; m < MR; ++m) x[m] = vld1q_s8(a[m] + ro + j);
      for (int n = 0; n < NR; ++n) wv[n] = vld1q_s8(wp + n * w_stride + j);
      for (int m = 0; m < MR; ++m)
        for (int n = 0; n < NR; ++n) acc[m][n] = vdotq_s32(acc[m][n], x[m], wv[n]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) dot[m][n] = vaddvq_s32(acc[m][n]);
}

static void task(void* ctx, int t, int thread) {
  (void)thread;
  const direct_neon_job* j = (const direct_neon_job*)ctx;
  const eqd_conv* c = j->c;
  const int npix = c->out_h * c->out_w;
  const int pbeg = t * j->chunk, pend = pbeg + j->chunk < npix ? pbeg + j->chunk : npix;
  const int seg16 = j->d->seg16, kh = c->kh;
  const size_t row_stride = (size_t)c->d_wp * c->cin, w_stride = (size_t)kh * seg16;
  for (int p0 = pbeg; p0 < pend; p0 += MR) {
    const int np = pend - p0 < MR ? pend - p0 : MR;
    const int8_t* a[MR];
    for (int m = 0; m < MR; ++m) /* tail: repeat the last pixel */
      a[m] = j->pad + direct_neon_poff(c, p0 + (m < np ? m : np - 1));
    for (int co = 0; co < c->cout; co += NR) {
      int32_t dot[MR][NR];
      tile_4x4(a, row_stride, j->d->w + (size_t)co * w_stride, w_stride, kh, seg16, dot);
      const int nc = c->cout - co < NR ? c->cout - co : NR;
      const int32x4_t b = vld1q_s32(j->beff + co);
      for (int m = 0; m < np; ++m) {
        const int32x4_t s = vreinterpretq_s32_u32(vaddq_u32(
            vreinterpretq_u32_s32(vld1q_s32(dot[m])), vreinterpretq_u32_s32(b)));
        eqd_store4_s8(j->out + (size_t)(p0 + m) * c->cout + co,
                      eqd_requant4_neon(s, c, co), nc);
      }
    }
  }
}

static int direct_neon_dot_run(const eqd_conv* c, const int8_t* in, int8_t* out,
                               eqd_pool* pool) {
  const size_t in_img = (size_t)c->in_h * c->in_w * c->cin;
  const size_t out_img = (size_t)c->out_h * c->out_w * c->cout;
  direct_neon_job j;
  memset(&j, 0, sizeof(j));
  j.c = c;
  j.d = (const direct_neon_data*)c->kdata;
  int32_t* beff;
  int8_t* pad = direct_neon_prepare(c, 0, &beff);
  j.beff = beff;
  const int ntasks = direct_neon_tasks(c, pool, MR, &j.chunk);
  for (int b = 0; b < c->batch; ++b) {
    direct_neon_pad(c, in + b * in_img, 0, pad);
    j.pad = pad;
    j.out = out + b * out_img;
    eqd_pool_run(pool, task, &j, ntasks);
  }
  return 0;
}

#if !defined(__clang__)
#pragma GCC pop_options
#endif

const eqd_kernel eqd_kernel_direct_neon_dot = {
    .name = "direct_neon_dot", .isa = "neon-dotprod", .family = EQD_FAMILY_DIRECT,
    .cpu_features = EQD_CPU_NEON | EQD_CPU_DOTPROD, .pack = direct_neon_pack_weights,
    .unpack = direct_neon_unpack, .scratch_bytes = direct_neon_scratch,
    .run = direct_neon_dot_run, .paths = {"direct_neon_dot"}};

#endif /* __aarch64__ */
