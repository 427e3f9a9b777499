/*
 * qs8_winograd_f2x3_avx2.c -- integer Winograd F(2x2,3x3), AVX2.
 *
 * Same arithmetic as qs8_winograd_f2x3_scalar.c (read its header for the
 * derivation and the bounds); only the data layout and the vectorisation
 * differ, and the two produce identical bits.
 *
 *   1. pad      input -> int8 buffer, border = z_in (raw q everywhere)
 *   2. input transform, 16 channels per step:
 *               V[t][tile][c] = (B^T d B)[t]   int16, |V| <= 512
 *   3. 16 independent GEMMs with VPMADDWD (int16 x int16 pairs -> int32):
 *               M[t][tile][co] = sum_c V[t][tile][c] * U'[t][co][c]
 *      |U'| <= 1152, |V| <= 512: each product < 2^20 and VPMADDWD adds two,
 *      so the pair sum < 2^21 never saturates or wraps; the int32 running
 *      sums (VPADDD) wrap modulo 2^32, which is exact in the end (see the
 *      scalar file: the true 4 * sum(q w) < 2^31 for cin <= 3640).
 *   4. output transform Y' = A^T M A (modulo 2^32), Y = Y' >> 2 (exact),
 *      + (bias - z_in * sum w), requantize, clamp, store int8.
 *
 * Micro-kernel: EQD_WINO_MR (6) tiles x EQD_WINO_NR (16) output channels:
 * 12 accumulators + 2 weight vectors + 1 broadcast + 1 temporary = 16 ymm.
 */
#include <string.h>

#include "eqd_kernel.h"

#if defined(__x86_64__) || defined(__i386__)

#pragma GCC push_options
#pragma GCC target("avx2")

#include <immintrin.h>

#include "qs8_requant_avx2.h"

/* U' packed as [t][cb][cp][16 co][2 ci] int16 (cb: block of 16 output
 * channels, cp: pair of input channels), zero in the padding. */
static int winograd_avx2_pack(eqd_conv* c) {
  const int cin = c->cin, cout = c->cout;
  const int ncb = c->cout_pad / EQD_WINO_NR, ncp = c->cin2 / 2;
  const size_t n = (size_t)16 * ncb * ncp * EQD_WINO_NR * 2;
  int16_t* packed = (int16_t*)eqd_aligned_alloc(n * sizeof(int16_t));
  int16_t* wino_u = eqd_winograd_transform_weights(c); /* [16][cout][cin] */
  c->kdata = packed;
  if (!packed || !wino_u) {
    eqd_aligned_free(wino_u);
    return -1;
  }
  memset(packed, 0, n * sizeof(int16_t));
  for (int t = 0; t < 16; ++t)
    for (int co = 0; co < cout; ++co)
      for (int ci = 0; ci < cin; ++ci) {
        const int cb = co / EQD_WINO_NR, cl = co % EQD_WINO_NR;
        const size_t idx =
            ((((size_t)t * ncb + cb) * ncp + ci / 2) * EQD_WINO_NR + cl) * 2 + (ci & 1);
        packed[idx] = wino_u[((size_t)t * cout + co) * cin + ci];
      }
  eqd_aligned_free(wino_u);
  return 0;
}

/* Input transform of one tile, 16 channels [ci, ci+16): V = B^T d B.
 * B^T = {{1,0,-1,0},{0,1,1,0},{0,-1,1,0},{0,1,0,-1}}: |B^T d| <= 256,
 * |V| <= 512, all in int16 without overflow. */
static inline void input_transform16(const int8_t* p, size_t row_stride, size_t pix,
                                     int16_t* v, size_t t_stride) {
  __m256i d[4][4];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j)
      d[i][j] = _mm256_cvtepi8_epi16(
          _mm_loadu_si128((const __m128i*)(p + i * row_stride + j * pix)));
  __m256i t[4][4];
  for (int j = 0; j < 4; ++j) {
    t[0][j] = _mm256_sub_epi16(d[0][j], d[2][j]);
    t[1][j] = _mm256_add_epi16(d[1][j], d[2][j]);
    t[2][j] = _mm256_sub_epi16(d[2][j], d[1][j]);
    t[3][j] = _mm256_sub_epi16(d[1][j], d[3][j]);
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_si256((__m256i*)(v + (i * 4 + 0) * t_stride),
                        _mm256_sub_epi16(t[i][0], t[i][2]));
    _mm256_storeu_si256((__m256i*)(v + (i * 4 + 1) * t_stride),
                        _mm256_add_epi16(t[i][1], t[i][2]));
    _mm256_storeu_si256((__m256i*)(v + (i * 4 + 2) * t_stride),
                        _mm256_sub_epi16(t[i][2], t[i][1]));
    _mm256_storeu_si256((__m256i*)(v + (i * 4 + 3) * t_stride),
                        _mm256_sub_epi16(t[i][1], t[i][3]));
  }
}

/* M[t][m][16] for MR tiles (rows of v at tile offsets toff[m]) and one block
 * of 16 output channels. */
static inline void gemm_mr_x16(const int16_t* v, size_t t_stride, const int toff[EQD_WINO_MR],
                               const int16_t* u_cb, size_t u_t_stride, int ncp,
                               int32_t* mbuf) {
  for (int t = 0; t < 16; ++t) {
    const int16_t* vt = v + t * t_stride;
    const int16_t* ut = u_cb + t * u_t_stride;
    const int16_t* v0 = vt + toff[0];
    const int16_t* v1 = vt + toff[1];
    const int16_t* v2 = vt + toff[2];
    const int16_t* v3 = vt + toff[3];
    const int16_t* v4 = vt + toff[4];
    const int16_t* v5 = vt + toff[5];
    __m256i a00 = _mm256_setzero_si256(), a01 = _mm256_setzero_si256();
    __m256i a10 = _mm256_setzero_si256(), a11 = _mm256_setzero_si256();
    __m256i a20 = _mm256_setzero_si256(), a21 = _mm256_setzero_si256();
    __m256i a30 = _mm256_setzero_si256(), a31 = _mm256_setzero_si256();
    __m256i a40 = _mm256_setzero_si256(), a41 = _mm256_setzero_si256();
    __m256i a50 = _mm256_setzero_si256(), a51 = _mm256_setzero_si256();
    for (int cp = 0; cp < ncp; ++cp) {
      const __m256i w0 = _mm256_load_si256((const __m256i*)(ut + cp * 32));
      const __m256i w1 = _mm256_load_si256((const __m256i*)(ut + cp * 32 + 16));
      int32_t s;
      __m256i b;
#define EQD_WINO_ROW(vm, x0, x1)                                 \
  memcpy(&s, (vm) + 2 * cp, 4);                                  \
  b = _mm256_set1_epi32(s);                                      \
  x0 = _mm256_add_epi32(x0, _mm256_madd_epi16(b, w0));           \
  x1 = _mm256_add_epi32(x1, _mm256_madd_epi16(b, w1));
      EQD_WINO_ROW(v0, a00, a01)
      EQD_WINO_ROW(v1, a10, a11)
      EQD_WINO_ROW(v2, a20, a21)
      EQD_WINO_ROW(v3, a30, a31)
      EQD_WINO_ROW(v4, a40, a41)
      EQD_WINO_ROW(v5, a50, a51)
#undef EQD_WINO_ROW
    }
    int32_t* mt = mbuf + t * EQD_WINO_MR * 16;
    _mm256_storeu_si256((__m256i*)(mt + 0 * 16), a00);
    _mm256_storeu_si256((__m256i*)(mt + 0 * 16 + 8), a01);
    _mm256_storeu_si256((__m256i*)(mt + 1 * 16), a10);
    _mm256_storeu_si256((__m256i*)(mt + 1 * 16 + 8), a11);
    _mm256_storeu_si256((__m256i*)(mt + 2 * 16), a20);
    _mm256_storeu_si256((__m256i*)(mt + 2 * 16 + 8), a21);
    _mm256_storeu_si256((__m256i*)(mt + 3 * 16), a30);
    _mm256_storeu_si256((__m256i*)(mt + 3 * 16 + 8), a31);
    _mm256_storeu_si256((__m256i*)(mt + 4 * 16), a40);
    _mm256_storeu_si256((__m256i*)(mt + 4 * 16 + 8), a41);
    _mm256_storeu_si256((__m256i*)(mt + 5 * 16), a50);
    _mm256_storeu_si256((__m256i*)(mt + 5 * 16 + 8), a51);
  }
}

/* Output transform + requantization of one tile, 8 channels [co, co+8). */
static inline void output_tile8(const eqd_conv* c, const int32_t* mbuf, int m, int half,
                                int co, int ty, int tx, int8_t* o, const eqd_rq8* rq,
                                __m256i beff, const eqd_rq_consts* k) {
  __m256i mm[16];
  for (int t = 0; t < 16; ++t)
    mm[t] = _mm256_loadu_si256(
        (const __m256i*)(mbuf + (t * EQD_WINO_MR + m) * 16 + half * 8));
  /* A^T = {{1,1,1,0},{0,1,-1,-1}}; VPADDD/VPSUBD wrap modulo 2^32. */
  __m256i s[2][4];
  for (int j = 0; j < 4; ++j) {
    s[0][j] = _mm256_add_epi32(_mm256_add_epi32(mm[j], mm[4 + j]), mm[8 + j]);
    s[1][j] = _mm256_sub_epi32(_mm256_sub_epi32(mm[4 + j], mm[8 + j]), mm[12 + j]);
  }
  const int n = c->cout - co < 8 ? c->cout - co : 8;
  for (int i = 0; i < 2; ++i) {
    const int oy = 2 * ty + i;
    if (oy >= c->out_h) break;
    const __m256i y[2] = {
        _mm256_add_epi32(_mm256_add_epi32(s[i][0], s[i][1]), s[i][2]),
        _mm256_sub_epi32(_mm256_sub_epi32(s[i][1], s[i][2]), s[i][3])};
    for (int j = 0; j < 2; ++j) {
      const int ox = 2 * tx + j;
      if (ox >= c->out_w) break;
      /* exact divide by 4 (4 * conv fits int32), then the folded bias */
      const __m256i acc = _mm256_add_epi32(_mm256_srai_epi32(y[j], 2), beff);
      eqd_store8_s8(o + ((size_t)oy * c->out_w + ox) * c->cout + co,
                    eqd_requant8_avx2(acc, rq, k), n);
    }
  }
}

typedef struct wino_job {
  const eqd_conv* c;
  const int8_t* pad; /* padded input of one image */
  int8_t* out;       /* output of one image */
} wino_job;

/* One block of wino_tb tiles: transform, 16 GEMMs, output transform.
 * `thread` selects the per-thread V and M scratch. */
static void wino_block(void* ctx, int task, int thread) {
  const wino_job* j = (const wino_job*)ctx;
  const eqd_conv* c = j->c;
  const int cin = c->cin, cout = c->cout;
  const int tb = c->wino_tb, cstride = c->wino_cstride;
  const int ntw = c->tiles_w, ntiles = c->tiles_h * c->tiles_w;
  const int ncb = c->cout_pad / EQD_WINO_NR, ncp = c->cin2 / 2;
  char* mine = (char*)c->scratch + eqd_winograd_padded_bytes(c) +
               (size_t)thread * eqd_winograd_thread_bytes(c);
  int16_t* v = (int16_t*)mine;
  int32_t* mbuf = (int32_t*)(mine + (((size_t)16 * tb * cstride * sizeof(int16_t) + 63) &
                                     ~(size_t)63));
  const size_t t_stride = (size_t)tb * cstride; /* int16 between transforms */
  const size_t u_t_stride = (size_t)ncb * ncp * 32;
  const size_t row_stride = (size_t)c->w_wp * cin;
  const eqd_rq_consts k = eqd_rq_consts_init(c);
  const int t0 = task * tb;
  const int nt = ntiles - t0 < tb ? ntiles - t0 : tb;
  /* 2. input transform of the block */
  for (int i = 0; i < nt; ++i) {
    const int ty = (t0 + i) / ntw, tx = (t0 + i) % ntw;
    const int8_t* p = j->pad + (size_t)(2 * ty) * row_stride + (size_t)(2 * tx) * cin;
    for (int ci = 0; ci < cin; ci += 16)
      input_transform16(p + ci, row_stride, (size_t)cin, v + (size_t)i * cstride + ci,
                        t_stride);
  }
  /* 3 + 4. GEMMs and output transform, MR tiles at a time.  Channel blocks
   * outermost: one block of U' (16 * cin2 * 16 int16) stays in cache while
   * all tiles of the block stream past it. */
  for (int cb = 0; cb < ncb; ++cb) {
    const int co0 = cb * EQD_WINO_NR;
    const eqd_rq8 rq[2] = {eqd_rq8_load(c, co0), eqd_rq8_load(c, co0 + 8)};
    const __m256i beff[2] = {_mm256_loadu_si256((const __m256i*)(c->bias_eff + co0)),
                             _mm256_loadu_si256((const __m256i*)(c->bias_eff + co0 + 8))};
    for (int i0 = 0; i0 < nt; i0 += EQD_WINO_MR) {
      int toff[EQD_WINO_MR];
      for (int m = 0; m < EQD_WINO_MR; ++m) {
        const int i = i0 + m < nt ? i0 + m : nt - 1; /* tail: repeat last */
        toff[m] = i * cstride;
      }
      gemm_mr_x16(v, t_stride, toff, (const int16_t*)c->kdata + (size_t)cb * ncp * 32, u_t_stride,
                  ncp, mbuf);
      for (int m = 0; m < EQD_WINO_MR && i0 + m < nt; ++m) {
        const int ty = (t0 + i0 + m) / ntw, tx = (t0 + i0 + m) % ntw;
        for (int half = 0; half < 2; ++half) {
          const int co = cb * EQD_WINO_NR + half * 8;
          if (co >= cout) break;
          output_tile8(c, mbuf, m, half, co, ty, tx, j->out, &rq[half], beff[half], &k);
        }
      }
    }
  }
}

static int winograd_avx2_run(const eqd_conv* c, const int8_t* in, int8_t* out,
                             eqd_pool* pool) {
  const int cin = c->cin;
  const int ntiles = c->tiles_h * c->tiles_w;
  const int nblocks = (ntiles + c->wino_tb - 1) / c->wino_tb;
  int8_t* pad = (int8_t*)c->scratch;
  const size_t in_img = (size_t)c->in_h * c->in_w * cin;
  const size_t out_img = (size_t)c->out_h * c->out_w * c->cout;
  for (int b = 0; b < c->batch; ++b) {
    /* 1. padded raw input (border = z_in) */
    eqd_pad_input_s8(in + b * in_img, c->in_h, c->in_w, cin, c->pad_top, c->pad_left,
                     c->w_hp, c->w_wp, (int8_t)c->in_zp, pad);
    wino_job job = {c, pad, out + b * out_img};
    eqd_pool_run(pool, wino_block, &job, nblocks);
  }
  return 0;
}

#pragma GCC pop_options

const eqd_kernel eqd_kernel_winograd_avx2 = {
    .name = "winograd_avx2", .isa = "avx2", .family = EQD_FAMILY_WINOGRAD,
    .cpu_features = EQD_CPU_AVX2, .pack = winograd_avx2_pack, .unpack = eqd_aligned_free,
    .scratch_bytes = eqd_winograd_scratch_bytes, .run = winograd_avx2_run,
    .paths = {"winograd_avx2"}};

#endif /* x86 */
