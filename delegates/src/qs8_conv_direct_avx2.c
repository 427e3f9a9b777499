/*
 * qs8_conv_direct_avx2.c -- direct int8 convolution (any kernel size, stride
 * 1 or 2, SAME/VALID) with VPMADDUBSW and int16 partial sums, AVX2.
 * Bit-exact with qs8_conv_direct_scalar.c / TFLite.
 *
 * Reduction index k runs over (ky, kx, ci); for one output pixel and one
 * kernel row the kw*cin values are contiguous in the padded input, so k is
 * cut into "groups" of 4 consecutive bytes of one kernel row (the last group
 * of a row is completed with zero weights).  For 8 output channels a group
 * is one 32-byte weight vector [8 co][4 k] and one broadcast 4-byte
 * activation: VPMADDUBSW gives, per channel, two int16 pair sums.
 *
 * VPMADDUBSW multiplies UNSIGNED bytes u by SIGNED bytes w and saturates the
 * pair sum to int16.  The input is re-based while it is padded:
 *     u = q - base   (uint8),   x = u - off   (the value actually summed)
 * and the exact identity used is
 *     sum (q - z) w = sum (u - off) w + (base + off - z) * sum w,
 * the last term folded into the bias once per invoke (modulo 2^32).
 *
 * Paths (chosen per invoke from the weights' max |w| -- known at Prepare --
 * and a min/max range check done over the input in a quick pre-pass):
 *
 *   I16X8  |w| <= 63, input 7-bit (max q - min q <= 127 incl. z):
 *          base = min q, off = 64: u in [0,127], x in [-64,63].
 *          pair sum |u0 w0 + u1 w1| <= 2*127*63 = 16002: no saturation;
 *          a run of 4 VPMADDUBSW (8 products per int16 lane) is summed with
 *          wrapping VPADDW onto -64*sum(w of the run) (precomputed, |.| <=
 *          64*8*63 = 32256), giving sum of 8 x*w with |.| <= 8*64*63 = 32256
 *          < 32767: exact in int16 (intermediate wrap-around is harmless,
 *          addition modulo 2^16 with an in-range result).  Then VPMADDWD
 *          with ones widens lane pairs to int32.
 *   I16X4  |w| <= 63, full int8 input: base = -128, off = 128, u in [0,255],
 *          x = q in [-128,127]; pair <= 2*255*63 = 32130 (no saturation),
 *          runs of 2 VPMADDUBSW: |4 x w| <= 4*128*63 = 32256; offset
 *          -128*sum(w) with |.| <= 32256.
 *      or  |w| <= 127, 7-bit input: base = min q, off = 64; pair <=
 *          2*127*127 = 32258; |4 x w| <= 4*64*127 = 32512; offset <= 32512.
 *   I16X2  otherwise (full int8 input and |w| > 63, or w = -128): each w is
 *          split w = wa + wb, wa = floor(w/2) in [-64,63], wb in [-64,64],
 *          every group is processed twice (wa, wb) with base = -128, off = 0:
 *          pair <= 2*255*64 = 32640, widened right away (2 products).
 *
 * int32 sums (VPADDD) wrap modulo 2^32 -- exact whenever TFLite's int32
 * accumulator is (see qs8_conv_direct_scalar.c).
 *
 * Micro-kernel: EQD_DIRECT_MR (4) output pixels x 8 output channels.
 */
#include <stdlib.h>
#include <string.h>

#include "eqd_kernel.h"

#if defined(__x86_64__) || defined(__i386__)

#pragma GCC push_options
#pragma GCC target("avx2")

#include <immintrin.h>

#include "qs8_requant_avx2.h"

#define EQD_DIRECT_MR 4 /* output pixels per micro-kernel call */

/* Packed weights (pack) and shape tables (reshape) of this variant. */
typedef struct direct_avx2_data {
  int d_groups;       /* groups of 4 k values, padded to a multiple of 4    */
  int8_t* d_w;        /* [cout_pad/8][d_groups][8][4]                       */
  int8_t* d_w_split;  /* [cout_pad/8][2*d_groups][8][4] (only if |w| > 63)  */
  int16_t* d_off_r4;  /* [cout_pad/8][d_groups/4][16]: -64 * run sums      */
  int16_t* d_off_r2_128; /* [cout_pad/8][d_groups/2][16]: -128 * run sums  */
  int16_t* d_off_r2_64;  /* [cout_pad/8][d_groups/2][16]: -64 * run sums   */
  int32_t* d_aoff;    /* [3*d_groups] byte offsets of the groups            */
  size_t* d_poff;     /* [out_h*out_w] byte offset of each output pixel's
                         window in the padded input                        */
} direct_avx2_data;

static inline direct_avx2_data* dd(const eqd_conv* c) {
  return (direct_avx2_data*)c->kdata;
}

static size_t direct_avx2_scratch(eqd_conv* c) {
  /* padded u8 input + 64 slack (groups read up to 3 bytes past a row) +
   * per-invoke folded bias */
  return eqd_direct_padded_bytes(c) + (size_t)c->cout_pad * sizeof(int32_t) + 64;
}

static void direct_avx2_unpack(void* kdata) {
  direct_avx2_data* p = (direct_avx2_data*)kdata;
  if (!p) return;
  eqd_aligned_free(p->d_w);
  eqd_aligned_free(p->d_w_split);
  eqd_aligned_free(p->d_off_r4);
  eqd_aligned_free(p->d_off_r2_128);
  eqd_aligned_free(p->d_off_r2_64);
  free(p->d_aoff);
  free(p->d_poff);
  free(p);
}

/* Shape tables: group offsets and output-pixel window offsets. */
static int direct_avx2_reshape(eqd_conv* c) {
  const int oh = c->out_h, ow = c->out_w;
  direct_avx2_data* p = dd(c);
  /* Byte offsets of the direct kernels' k-groups: group j of kernel row ky
   * starts at ky * (row stride) + 4 j inside the padded input.  Layout:
   * [0, G) one entry per group; [G, 3G) each group twice (split path). */
  free(p->d_aoff);
  p->d_aoff = NULL;
  if (p->d_groups > 0) {
    const int G = p->d_groups;
    p->d_aoff = (int32_t*)calloc((size_t)G * 3, sizeof(int32_t));
    if (!p->d_aoff) return -1;
    const int seg = c->kw * c->cin;
    const int gps = (seg + 3) / 4; /* groups per kernel row */
    for (int g = 0; g < G; ++g) {
      int32_t off = 0; /* padding groups: zero weights, any valid address */
      if (g < c->kh * gps) {
        const int ky = g / gps, j = g % gps;
        off = (int32_t)((size_t)ky * c->d_wp * c->cin + 4 * (size_t)j);
      }
      p->d_aoff[g] = off;
      p->d_aoff[G + 2 * g] = off;
      p->d_aoff[G + 2 * g + 1] = off;
    }
  }
  free(p->d_poff);
  p->d_poff = NULL;
  if (p->d_groups > 0) {
    p->d_poff = (size_t*)malloc((size_t)oh * ow * sizeof(size_t));
    if (!p->d_poff) return -1;
    for (int oy = 0; oy < oh; ++oy)
      for (int ox = 0; ox < ow; ++ox)
        p->d_poff[(size_t)oy * ow + ox] =
            ((size_t)oy * c->stride_h * c->d_wp + (size_t)ox * c->stride_w) * c->cin;
  }
  return 0;
}

static int8_t wk(const eqd_conv* c, int co, int g, int kk) {
  const int seg = c->kw * c->cin, gps = (seg + 3) / 4;
  if (co >= c->cout || g >= c->kh * gps) return 0;
  const int ky = g / gps, k = 4 * (g % gps) + kk;
  if (k >= seg) return 0;
  return c->w[((size_t)co * c->kh + ky) * seg + k];
}

static int direct_avx2_pack(eqd_conv* c) {
  c->kdata = calloc(1, sizeof(direct_avx2_data));
  if (!c->kdata) return -1;
  const int seg = c->kw * c->cin, gps = (seg + 3) / 4;
  const int G = (c->kh * gps + 3) / 4 * 4;
  const int ncb = c->cout_pad / 8;
  dd(c)->d_groups = G;
  dd(c)->d_w = (int8_t*)eqd_aligned_alloc((size_t)ncb * G * 32);
  if (!dd(c)->d_w) return -1;
  for (int cb = 0; cb < ncb; ++cb)
    for (int g = 0; g < G; ++g)
      for (int l = 0; l < 8; ++l)
        for (int kk = 0; kk < 4; ++kk)
          dd(c)->d_w[(((size_t)cb * G + g) * 8 + l) * 4 + kk] = wk(c, cb * 8 + l, g, kk);
  if (c->wabs_max > 63) {
    dd(c)->d_w_split = (int8_t*)eqd_aligned_alloc((size_t)ncb * 2 * G * 32);
    if (!dd(c)->d_w_split) return -1;
    for (int cb = 0; cb < ncb; ++cb)
      for (int g = 0; g < G; ++g)
        for (int i = 0; i < 32; ++i) {
          const int w = dd(c)->d_w[((size_t)cb * G + g) * 32 + i];
          const int wa = w >= 0 ? w / 2 : -((-w + 1) / 2); /* floor(w / 2) */
          dd(c)->d_w_split[((size_t)cb * 2 * G + 2 * g) * 32 + i] = (int8_t)wa;
          dd(c)->d_w_split[((size_t)cb * 2 * G + 2 * g + 1) * 32 + i] = (int8_t)(w - wa);
        }
  }
  /* Run offsets: lane (co, h) of a run = -off * sum over the run's groups of
   * w[co][2h] + w[co][2h+1] (the two bytes that VPMADDUBSW pairs). */
  int16_t** dst[3] = {&dd(c)->d_off_r4, &dd(c)->d_off_r2_128, &dd(c)->d_off_r2_64};
  const int runs[3] = {4, 2, 2}, offs[3] = {64, 128, 64};
  const int needed[3] = {c->wabs_max <= 63, c->wabs_max <= 63, c->wabs_max <= 127};
  for (int v = 0; v < 3; ++v) {
    if (!needed[v]) continue;
    const int R = runs[v], nrun = G / R;
    int16_t* o = (int16_t*)eqd_aligned_alloc((size_t)ncb * nrun * 16 * sizeof(int16_t));
    if (!o) return -1;
    *dst[v] = o;
    for (int cb = 0; cb < ncb; ++cb)
      for (int r = 0; r < nrun; ++r)
        for (int lane = 0; lane < 16; ++lane) {
          const int l = lane / 2, h = lane % 2;
          int32_t s = 0;
          for (int j = 0; j < R; ++j) {
            const int8_t* wg = dd(c)->d_w + (((size_t)cb * G + r * R + j) * 8 + l) * 4;
            s += wg[2 * h] + wg[2 * h + 1];
          }
          /* |off * s| <= 32512 (see the header): fits int16 */
          o[((size_t)cb * nrun + r) * 16 + lane] = (int16_t)(-offs[v] * s);
        }
  }
  return 0;
}

/* One block of MR pixels x 8 channels. R: groups per int16 run (1, 2, 4);
 * off16: per-run int16 offsets (NULL when R == 1). */
static inline __attribute__((always_inline)) void kernel_4x8(
    const uint8_t* a0, const uint8_t* a1, const uint8_t* a2, const uint8_t* a3,
    const int32_t* aoff, const int8_t* w, const int16_t* off16, int ngroups, const int R,
    __m256i acc[4]) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i c0 = _mm256_setzero_si256(), c1 = _mm256_setzero_si256();
  __m256i c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
  for (int g0 = 0; g0 < ngroups; g0 += R) {
    __m256i s0, s1, s2, s3;
    if (R > 1) {
      s0 = _mm256_load_si256((const __m256i*)(off16 + (g0 / R) * 16));
    } else {
      s0 = _mm256_setzero_si256();
    }
    s1 = s0;
    s2 = s0;
    s3 = s0;
    for (int j = 0; j < R; ++j) {
      const int g = g0 + j;
      const __m256i wv = _mm256_load_si256((const __m256i*)(w + (size_t)g * 32));
      const int32_t o = aoff[g];
      int32_t v0, v1, v2, v3;
      memcpy(&v0, a0 + o, 4);
      memcpy(&v1, a1 + o, 4);
      memcpy(&v2, a2 + o, 4);
      memcpy(&v3, a3 + o, 4);
      /* wrapping int16 adds: exact, see the header */
      s0 = _mm256_add_epi16(s0, _mm256_maddubs_epi16(_mm256_set1_epi32(v0), wv));
      s1 = _mm256_add_epi16(s1, _mm256_maddubs_epi16(_mm256_set1_epi32(v1), wv));
      s2 = _mm256_add_epi16(s2, _mm256_maddubs_epi16(_mm256_set1_epi32(v2), wv));
      s3 = _mm256_add_epi16(s3, _mm256_maddubs_epi16(_mm256_set1_epi32(v3), wv));
    }
    c0 = _mm256_add_epi32(c0, _mm256_madd_epi16(s0, ones));
    c1 = _mm256_add_epi32(c1, _mm256_madd_epi16(s1, ones));
    c2 = _mm256_add_epi32(c2, _mm256_madd_epi16(s2, ones));
    c3 = _mm256_add_epi32(c3, _mm256_madd_epi16(s3, ones));
  }
  acc[0] = c0;
  acc[1] = c1;
  acc[2] = c2;
  acc[3] = c3;
}

/* Pads and re-bases the input: dst = (uint8)(q - base), border (z - base). */
static void pack_input(const eqd_conv* c, const int8_t* src, int base, uint8_t* dst) {
  const int h = c->in_h, w = c->in_w, ch = c->cin, hp = c->d_hp, wp = c->d_wp;
  const int pt = c->pad_top, pl = c->pad_left;
  const uint8_t fill = (uint8_t)(c->in_zp - base);
  const __m256i vb = _mm256_set1_epi8((char)base);
  const size_t row = (size_t)wp * ch;
  for (int y = 0; y < hp; ++y) {
    uint8_t* d = dst + (size_t)y * row;
    const int sy = y - pt;
    if (sy < 0 || sy >= h) {
      memset(d, fill, row);
      continue;
    }
    int x0 = pl > 0 ? pl : 0;
    int x1 = pl + w < wp ? pl + w : wp;
    if (x1 < x0) x1 = x0;
    if (x0 > 0) memset(d, fill, (size_t)x0 * ch);
    const int8_t* s = src + ((size_t)sy * w + (size_t)(x0 - pl)) * ch;
    uint8_t* dd = d + (size_t)x0 * ch;
    const size_t n = (size_t)(x1 - x0) * ch;
    size_t i = 0;
    for (; i + 32 <= n; i += 32)
      _mm256_storeu_si256((__m256i*)(dd + i),
                          _mm256_sub_epi8(_mm256_loadu_si256((const __m256i*)(s + i)), vb));
    for (; i < n; ++i) dd[i] = (uint8_t)(s[i] - base);
    if (x1 < wp) memset(d + (size_t)x1 * ch, fill, (size_t)(wp - x1) * ch);
  }
}

/* min and max of n int8 values */
static void range_s8(const int8_t* p, size_t n, int* mn, int* mx) {
  __m256i vmin = _mm256_set1_epi8(127), vmax = _mm256_set1_epi8(-128);
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256i v = _mm256_loadu_si256((const __m256i*)(p + i));
    vmin = _mm256_min_epi8(vmin, v);
    vmax = _mm256_max_epi8(vmax, v);
  }
  int8_t a[32], b[32];
  _mm256_storeu_si256((__m256i*)a, vmin);
  _mm256_storeu_si256((__m256i*)b, vmax);
  int lo = 127, hi = -128;
  for (int j = 0; j < 32; ++j) {
    if (a[j] < lo) lo = a[j];
    if (b[j] > hi) hi = b[j];
  }
  for (; i < n; ++i) {
    if (p[i] < lo) lo = p[i];
    if (p[i] > hi) hi = p[i];
  }
  *mn = lo;
  *mx = hi;
}

typedef struct direct_job {
  const eqd_conv* c;
  const uint8_t* pad;   /* re-based padded input of one image */
  int8_t* out;          /* output of one image */
  const int8_t* w;      /* packed weights of the path */
  const int16_t* offs;  /* run offsets of the path (NULL for R == 1) */
  const int32_t* ao;    /* group byte offsets of the path */
  const int32_t* beff;  /* folded bias */
  int groups, R, chunk; /* chunk: output pixels per task */
} direct_job;

static void direct_task(void* ctx, int task, int thread) {
  (void)thread;
  const direct_job* j = (const direct_job*)ctx;
  const eqd_conv* c = j->c;
  const int npix = c->out_h * c->out_w, ncb = c->cout_pad / 8;
  const int pbeg = task * j->chunk;
  const int pend = pbeg + j->chunk < npix ? pbeg + j->chunk : npix;
  const int G = j->groups, R = j->R, nrun = G / R;
  const eqd_rq_consts k = eqd_rq_consts_init(c);
  for (int cb = 0; cb < ncb; ++cb) {
    const int co = cb * 8;
    if (co >= c->cout) break;
    const int n = c->cout - co < 8 ? c->cout - co : 8;
    const int8_t* wcb = j->w + (size_t)cb * G * 32;
    const int16_t* ocb = j->offs ? j->offs + (size_t)cb * nrun * 16 : NULL;
    const __m256i vb = _mm256_loadu_si256((const __m256i*)(j->beff + co));
    const eqd_rq8 rq = eqd_rq8_load(c, co);
    for (int p0 = pbeg; p0 < pend; p0 += EQD_DIRECT_MR) {
      const uint8_t* a[EQD_DIRECT_MR];
      for (int m = 0; m < EQD_DIRECT_MR; ++m) {
        const int p = p0 + m < pend ? p0 + m : pend - 1; /* tail: repeat */
        a[m] = j->pad + dd(c)->d_poff[p];
      }
      __m256i acc[4];
      if (R == 4)
        kernel_4x8(a[0], a[1], a[2], a[3], j->ao, wcb, ocb, G, 4, acc);
      else if (R == 2)
        kernel_4x8(a[0], a[1], a[2], a[3], j->ao, wcb, ocb, G, 2, acc);
      else
        kernel_4x8(a[0], a[1], a[2], a[3], j->ao, wcb, ocb, G, 1, acc);
      for (int m = 0; m < EQD_DIRECT_MR && p0 + m < pend; ++m)
        eqd_store8_s8(j->out + (size_t)(p0 + m) * c->cout + co,
                      eqd_requant8_avx2(_mm256_add_epi32(acc[m], vb), &rq, &k), n);
    }
  }
}

static int direct_avx2_run(const eqd_conv* c, const int8_t* in, int8_t* out,
                           eqd_pool* pool) {
  const size_t in_img = (size_t)c->in_h * c->in_w * c->cin;
  const size_t out_img = (size_t)c->out_h * c->out_w * c->cout;
  /* Range check over the whole batch (and the padding value z). */
  int qmin, qmax;
  range_s8(in, in_img * c->batch, &qmin, &qmax);
  if (c->in_zp < qmin) qmin = c->in_zp;
  if (c->in_zp > qmax) qmax = c->in_zp;
  const int in7 = c->allow_7bit && qmax - qmin <= 127;
  int path;
  int base, off;
  direct_job j;
  memset(&j, 0, sizeof(j));
  j.c = c;
  j.w = dd(c)->d_w;
  j.ao = dd(c)->d_aoff; /* [0, G) one per group, [G, 3G) split path */
  j.groups = dd(c)->d_groups;
  if (c->wabs_max <= 63 && in7) {
    path = 0;
    base = qmin, off = 64, j.R = 4, j.offs = dd(c)->d_off_r4;
  } else if (c->wabs_max <= 63) {
    path = 1;
    base = -128, off = 128, j.R = 2, j.offs = dd(c)->d_off_r2_128;
  } else if (c->wabs_max <= 127 && in7) {
    path = 1;
    base = qmin, off = 64, j.R = 2, j.offs = dd(c)->d_off_r2_64;
  } else {
    path = 2;
    base = -128, off = 0, j.R = 1, j.w = dd(c)->d_w_split, j.groups = 2 * dd(c)->d_groups;
    j.ao = dd(c)->d_aoff + dd(c)->d_groups;
  }
  uint8_t* pad = (uint8_t*)c->scratch;
  int32_t* beff = (int32_t*)((char*)c->scratch + eqd_direct_padded_bytes(c));
  /* bias + (base + off - z) * sum w, modulo 2^32 */
  const uint32_t corr = (uint32_t)(base + off - c->in_zp);
  for (int co = 0; co < c->cout_pad; ++co)
    beff[co] = (int32_t)((uint32_t)c->bias[co] + corr * (uint32_t)c->wsum[co]);
  j.beff = beff;
  const int npix = c->out_h * c->out_w;
  const int nth = eqd_pool_threads(pool);
  int ntasks = 1;
  j.chunk = npix;
  if (nth > 1) { /* ~4 tasks per thread, whole micro-tiles */
    int chunk = (npix + 4 * nth - 1) / (4 * nth);
    chunk = (chunk + EQD_DIRECT_MR - 1) / EQD_DIRECT_MR * EQD_DIRECT_MR;
    j.chunk = chunk;
    ntasks = (npix + chunk - 1) / chunk;
  }
  for (int b = 0; b < c->batch; ++b) {
    pack_input(c, in + b * in_img, base, pad);
    j.pad = pad;
    j.out = out + b * out_img;
    eqd_pool_run(pool, direct_task, &j, ntasks);
  }
  return path;
}

#pragma GCC pop_options

const eqd_kernel eqd_kernel_direct_avx2 = {
    .name = "direct_avx2", .isa = "avx2", .family = EQD_FAMILY_DIRECT,
    .cpu_features = EQD_CPU_AVX2, .pack = direct_avx2_pack,
    .unpack = direct_avx2_unpack, .reshape = direct_avx2_reshape,
    .scratch_bytes = direct_avx2_scratch, .run = direct_avx2_run,
    .paths = {"direct_avx2_i16x8", "direct_avx2_i16x4", "direct_avx2_i16x2"}};

#endif /* x86 */
