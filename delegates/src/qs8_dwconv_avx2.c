/*
 * qs8_dwconv_avx2.c -- int8 depthwise convolution (depth multiplier 1),
 * AVX2.  Bit-exact with qs8_dwconv_scalar.c / TFLite.
 *
 * 16 channels at a time; taps are taken in pairs (t, t+1): the int8 inputs
 * of both taps are sign-extended to int16 and interleaved per channel, the
 * weights are pre-interleaved the same way, and VPMADDWD gives per channel
 * x_t w_t + x_t+1 w_t+1 in int32.  Bounds: |x|, |w| <= 128, so a pair sum is
 * at most 2 * 2^14 = 32768 in magnitude (VPMADDWD cannot saturate: that
 * needs both products to be (-32768)^2); the int32 sums wrap modulo 2^32,
 * exact whenever TFLite's accumulator is.  An odd last tap is paired with a
 * zero weight.
 *
 * VPUNPCK{L,H}WD interleave within 128-bit lanes, so the "lo" accumulator
 * holds channels {0-3, 8-11} and "hi" {4-7, 12-15}; VPERM2I128 restores the
 * order before requantization.
 */
#include <string.h>

#include "eqd_kernel.h"

#if defined(__x86_64__) || defined(__i386__)

#pragma GCC push_options
#pragma GCC target("avx2")

#include <immintrin.h>

#include "qs8_requant_avx2.h"

#define EQD_DW_MAX_TAPS 64

/* Packed weights: [cout_pad/16][taps/2 rounded up][2][16] int16 (kdata). */
static int dwconv_avx2_pack(eqd_conv* c) {
  const int C = c->cout, T = c->kh * c->kw, T2 = (T + 1) / 2;
  const int ncb = c->cout_pad / 16;
  const size_t n = (size_t)ncb * T2 * 2 * 16;
  int16_t* dw_w = (int16_t*)eqd_aligned_alloc(n * sizeof(int16_t));
  c->kdata = dw_w;
  if (!dw_w) return -1;
  for (int cb = 0; cb < ncb; ++cb)
    for (int tp = 0; tp < T2; ++tp)
      for (int half = 0; half < 2; ++half)
        for (int i = 0; i < 16; ++i) {
          const int lane = i / 8, pos = i % 8;
          const int ch = cb * 16 + (lane ? 8 : 0) + (half ? 4 : 0) + pos / 2;
          const int t = 2 * tp + (pos % 2);
          int16_t v = 0;
          if (ch < C && t < T) v = c->w[(size_t)t * C + ch];
          dw_w[(((size_t)cb * T2 + tp) * 2 + half) * 16 + i] = v;
        }
  return 0;
}

typedef struct dw_job {
  const eqd_conv* c;
  const int8_t* pad;
  int8_t* out;
} dw_job;

/* Sums of 16 channels of NP (1 or 2) output pixels; T taps (a constant
 * after inlining for the common 3x3 and 5x5 kernels). */
static inline __attribute__((always_inline)) void dw_pixels(
    const int8_t* a0, const int8_t* a1, const size_t* toff, const int16_t* wcb, const int T,
    const int NP, __m256i out[2][2]) {
  const int T2 = (T + 1) / 2;
  __m256i lo0 = _mm256_setzero_si256(), hi0 = _mm256_setzero_si256();
  __m256i lo1 = _mm256_setzero_si256(), hi1 = _mm256_setzero_si256();
  for (int tp = 0; tp < T2; ++tp) {
    const size_t o0 = toff[2 * tp], o1 = toff[2 * tp + 1];
    const __m256i wlo = _mm256_load_si256((const __m256i*)(wcb + tp * 32));
    const __m256i whi = _mm256_load_si256((const __m256i*)(wcb + tp * 32 + 16));
    {
      const __m256i x0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(a0 + o0)));
      const __m256i x1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(a0 + o1)));
      lo0 = _mm256_add_epi32(lo0, _mm256_madd_epi16(_mm256_unpacklo_epi16(x0, x1), wlo));
      hi0 = _mm256_add_epi32(hi0, _mm256_madd_epi16(_mm256_unpackhi_epi16(x0, x1), whi));
    }
    if (NP > 1) {
      const __m256i x0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(a1 + o0)));
      const __m256i x1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(a1 + o1)));
      lo1 = _mm256_add_epi32(lo1, _mm256_madd_epi16(_mm256_unpacklo_epi16(x0, x1), wlo));
      hi1 = _mm256_add_epi32(hi1, _mm256_madd_epi16(_mm256_unpackhi_epi16(x0, x1), whi));
    }
  }
  out[0][0] = _mm256_permute2x128_si256(lo0, hi0, 0x20); /* channels 0-7  */
  out[0][1] = _mm256_permute2x128_si256(lo0, hi0, 0x31); /* channels 8-15 */
  out[1][0] = _mm256_permute2x128_si256(lo1, hi1, 0x20);
  out[1][1] = _mm256_permute2x128_si256(lo1, hi1, 0x31);
}

/* One output row. */
static void dw_row(void* ctx, int oy, int thread) {
  (void)thread;
  const dw_job* j = (const dw_job*)ctx;
  const eqd_conv* c = j->c;
  const int C = c->cout, T = c->kh * c->kw, T2 = (T + 1) / 2;
  const int ncb = c->cout_pad / 16;
  const size_t row = (size_t)c->d_wp * C;
  size_t toff[EQD_DW_MAX_TAPS + 1];
  for (int t = 0; t < T; ++t) toff[t] = (t / c->kw) * row + (size_t)(t % c->kw) * C;
  toff[T] = toff[T - 1]; /* dummy partner of an odd last tap (weight 0) */
  const eqd_rq_consts k = eqd_rq_consts_init(c);
  const int8_t* rowbase = j->pad + (size_t)oy * c->stride_h * row;
  int8_t* orow = j->out + (size_t)oy * c->out_w * C;
  const size_t pix_step = (size_t)c->stride_w * C;
  for (int cb = 0; cb < ncb; ++cb) {
    const int c0 = cb * 16;
    if (c0 >= C) break;
    const int n = C - c0 < 16 ? C - c0 : 16;
    const eqd_rq8 rq0 = eqd_rq8_load(c, c0), rq1 = eqd_rq8_load(c, c0 + 8);
    const __m256i b0 = _mm256_loadu_si256((const __m256i*)(c->bias_eff + c0));
    const __m256i b1 = _mm256_loadu_si256((const __m256i*)(c->bias_eff + c0 + 8));
    const int16_t* wcb = (const int16_t*)c->kdata + (size_t)cb * T2 * 32;
    for (int ox = 0; ox < c->out_w; ox += 2) {
      const int np = c->out_w - ox >= 2 ? 2 : 1;
      const int8_t* a0 = rowbase + (size_t)ox * pix_step + c0;
      const int8_t* a1 = a0 + pix_step;
      __m256i acc[2][2];
      if (np == 2) {
        if (T == 9) dw_pixels(a0, a1, toff, wcb, 9, 2, acc);
        else if (T == 25) dw_pixels(a0, a1, toff, wcb, 25, 2, acc);
        else dw_pixels(a0, a1, toff, wcb, T, 2, acc);
      } else {
        dw_pixels(a0, a0, toff, wcb, T, 1, acc);
      }
      for (int p = 0; p < np; ++p) {
        int8_t* o = orow + (size_t)(ox + p) * C + c0;
        eqd_store8_s8(o, eqd_requant8_avx2(_mm256_add_epi32(acc[p][0], b0), &rq0, &k),
                      n < 8 ? n : 8);
        if (n > 8)
          eqd_store8_s8(o + 8, eqd_requant8_avx2(_mm256_add_epi32(acc[p][1], b1), &rq1, &k),
                        n - 8);
      }
    }
  }
}

static size_t dwconv_avx2_scratch(eqd_conv* c) { return eqd_direct_padded_bytes(c); }

static int dwconv_avx2_run(const eqd_conv* c, const int8_t* in, int8_t* out,
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

#pragma GCC pop_options

const eqd_kernel eqd_kernel_dwconv_avx2 = {
    .name = "dwconv_avx2", .isa = "avx2", .family = EQD_FAMILY_DWCONV,
    .cpu_features = EQD_CPU_AVX2, .pack = dwconv_avx2_pack, .unpack = eqd_aligned_free,
    .scratch_bytes = dwconv_avx2_scratch, .run = dwconv_avx2_run,
    .paths = {"dwconv_avx2"}};

#endif /* x86 */
