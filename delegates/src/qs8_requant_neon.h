/*
 * qs8_requant_neon.h -- TFLite's fixed-point requantization for 4 int32
 * lanes (4 consecutive output channels) with AArch64 NEON, bit for bit
 * equal to eqd_requant_scalar() for every rule of eqd_conv (double or
 * single rounding, ties up or away from zero per channel):
 *
 *   x = SSHL(acc, lshift)                   (wraps; a shift of 32 gives 0)
 *   h = SQRDMULH(x, M)  = floor((x M + 2^30) / 2^31)   double rounding
 *     = SQDMULH(x, M)   = floor(x M / 2^31)            single rounding
 *   ties away from zero: h -= 1 where h < 0 and rshift > 0 (SQADD; only
 *     INT32_MIN saturates, and it rounds the same either way)
 *   q = SRSHL(h, -rshift) = floor((h + 2^(rshift-1)) / 2^rshift)
 *   q = clamp(q + z_out, act_min, act_max)
 *
 * SQRDMULH/SQDMULH saturate only for x == M == INT32_MIN, impossible since
 * 0 <= M < 2^31.  This is how ruy's and TFLite's NEON kernels compute it.
 */
#ifndef EQD_QS8_REQUANT_NEON_H_
#define EQD_QS8_REQUANT_NEON_H_

#include <arm_neon.h>
#include <string.h>

#include "eqd_conv.h"

static inline int32x4_t eqd_requant4_neon(int32x4_t acc, const eqd_conv* c, int ch) {
  const int32x4_t m = vld1q_s32(c->rq_mult + ch);
  const int32x4_t ls = vld1q_s32(c->rq_lshift + ch);
  const int32x4_t rs = vld1q_s32(c->rq_rshift + ch);
  const int32x4_t away = vld1q_s32(c->rq_away + ch);
  const int32x4_t x = vshlq_s32(acc, ls);
  int32x4_t h = c->rq_single ? vqdmulhq_s32(x, m) : vqrdmulhq_s32(x, m);
  const int32x4_t fix_lanes =
      vandq_s32(away, vreinterpretq_s32_u32(vcgtq_s32(rs, vdupq_n_s32(0))));
  h = vqaddq_s32(h, vandq_s32(fix_lanes, vshrq_n_s32(h, 31)));
  int32x4_t q = vrshlq_s32(h, vnegq_s32(rs));
  q = vaddq_s32(q, vdupq_n_s32(c->out_zp));
  q = vmaxq_s32(q, vdupq_n_s32(c->act_min));
  return vminq_s32(q, vdupq_n_s32(c->act_max));
}

/* Stores n (1..4) int8 values of 4 clamped int32 lanes. */
static inline void eqd_store4_s8(int8_t* dst, int32x4_t v, int n) {
  const int8x8_t b = vqmovn_s16(vcombine_s16(vqmovn_s32(v), vdup_n_s16(0)));
  if (n >= 4) {
    const int32_t word = vget_lane_s32(vreinterpret_s32_s8(b), 0);
    memcpy(dst, &word, 4);
  } else {
    int8_t tmp[8];
    vst1_s8(tmp, b);
    for (int i = 0; i < n; ++i) dst[i] = tmp[i];
  }
}

#endif /* EQD_QS8_REQUANT_NEON_H_ */
