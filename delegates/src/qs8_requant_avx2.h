/*
 * qs8_requant_avx2.h -- TFLite's fixed-point requantization for 8 int32
 * lanes (8 consecutive output channels), bit for bit equal to
 * eqd_requant_scalar().  Include only from files compiled for AVX2
 * (after `#pragma GCC target("avx2")`).
 */
#ifndef EQD_QS8_REQUANT_AVX2_H_
#define EQD_QS8_REQUANT_AVX2_H_

#include <immintrin.h>

#include "eqd_conv.h"

typedef struct eqd_rq_consts {
  __m256i zp, vmin, vmax, nudge;
} eqd_rq_consts;

static inline eqd_rq_consts eqd_rq_consts_init(const eqd_conv* c) {
  eqd_rq_consts k;
  k.zp = _mm256_set1_epi32(c->out_zp);
  k.vmin = _mm256_set1_epi32(c->act_min);
  k.vmax = _mm256_set1_epi32(c->act_max);
  /* single rounding (aarch64 rule): floor, no nudge; see eqd_conv.rq_single */
  k.nudge = _mm256_set1_epi64x(c->rq_single ? 0 : (1LL << 30));
  return k;
}

/* Per-channel requantization constants of 8 channels, loaded once per
 * channel block (the arrays are padded to cout_pad, so loads stay in
 * bounds). */
typedef struct eqd_rq8 {
  __m256i m, ls, rs, mask, thr0, away; /* away: -1 lanes: ties away from 0 */
} eqd_rq8;

static inline eqd_rq8 eqd_rq8_load(const eqd_conv* c, int ch) {
  eqd_rq8 r;
  r.m = _mm256_loadu_si256((const __m256i*)(c->rq_mult + ch));
  r.ls = _mm256_loadu_si256((const __m256i*)(c->rq_lshift + ch));
  r.rs = _mm256_loadu_si256((const __m256i*)(c->rq_rshift + ch));
  r.mask = _mm256_loadu_si256((const __m256i*)(c->rq_rmask + ch));
  r.thr0 = _mm256_loadu_si256((const __m256i*)(c->rq_rthresh + ch));
  r.away = _mm256_loadu_si256((const __m256i*)(c->rq_away + ch));
  return r;
}

/* acc: 8 int32 accumulators of the channels described by r.
 * Returns the clamped outputs as int32 lanes. */
static inline __m256i eqd_requant8_avx2(__m256i acc, const eqd_rq8* r,
                                        const eqd_rq_consts* k) {
  /* x = acc * 2^left_shift, wrapping like TFLite's int32 multiply. */
  const __m256i x = _mm256_sllv_epi32(acc, r->ls);
  /* SaturatingRoundingDoublingHighMul(x, m) = floor((x*m + 2^30) / 2^31)
   * (identical to the nudge-and-truncate form for both signs; the saturating
   * case x == m == INT32_MIN cannot occur because 0 <= m < 2^31); with a
   * zero nudge (rq_single) it is floor(x*m / 2^31), AArch64's SQDMULH.
   * |x*m| < 2^62, so the 64-bit sums cannot overflow, and the result fits in
   * 32 bits, so the low half of a logical shift equals the arithmetic one. */
  const __m256i nudge = k->nudge;
  const __m256i p_even = _mm256_add_epi64(_mm256_mul_epi32(x, r->m), nudge);
  const __m256i p_odd = _mm256_add_epi64(
      _mm256_mul_epi32(_mm256_srli_epi64(x, 32), _mm256_srli_epi64(r->m, 32)), nudge);
  const __m256i h = _mm256_blend_epi32(_mm256_srli_epi64(p_even, 31),
                                       _mm256_slli_epi64(p_odd, 1), 0xAA);
  /* Rounding divide by 2^rs: (h >> rs) + (rem > thr), thr = (mask >> 1)
   * (+1 for negative h when ties go away from zero). No overflow: see
   * eqd_rdbpot(). */
  const __m256i rem = _mm256_and_si256(h, r->mask);
  const __m256i neg = _mm256_and_si256(_mm256_cmpgt_epi32(_mm256_setzero_si256(), h),
                                       r->away);
  const __m256i thr = _mm256_sub_epi32(r->thr0, neg);
  __m256i q = _mm256_srav_epi32(h, r->rs);
  q = _mm256_sub_epi32(q, _mm256_cmpgt_epi32(rem, thr));
  q = _mm256_add_epi32(q, k->zp); /* wraps like TFLite's int32 add */
  q = _mm256_max_epi32(q, k->vmin);
  return _mm256_min_epi32(q, k->vmax);
}

/* Stores n (1..8) int8 values from 8 clamped int32 lanes. */
static inline void eqd_store8_s8(int8_t* dst, __m256i v, int n) {
  const __m128i p16 = _mm_packs_epi32(_mm256_castsi256_si128(v),
                                      _mm256_extracti128_si256(v, 1));
  const __m128i p8 = _mm_packs_epi16(p16, p16);
  if (n >= 8) {
    _mm_storel_epi64((__m128i*)dst, p8);
  } else {
    int8_t tmp[16];
    _mm_storeu_si128((__m128i*)tmp, p8);
    for (int i = 0; i < n; ++i) dst[i] = tmp[i];
  }
}

#endif /* EQD_QS8_REQUANT_AVX2_H_ */
