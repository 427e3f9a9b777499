/*
 * qs8_winograd_f2x3_neon.c -- integer Winograd F(2x2,3x3) for AArch64 NEON.
 *
 * Same arithmetic as qs8_winograd_f2x3_scalar.c (its header derives the
 * bounds); identical bits.
 *
 *   1. pad      input -> int8, border = z_in (raw q everywhere)
 *   2. input transform, 8 channels per step, in int16 (SXTL, ADD, SUB):
 *               V[t][tile][c] = (B^T d B)[t],  |V| <= 512
 *   3. 16 GEMMs, int16 x int16 -> int32 with SMLAL/SMLAL2 by element:
 *               M[t][tile][co] = sum_c V[t][tile][c] * U'[t][co][c]
 *      |U'| <= 1152, |V| <= 512: each product < 2^20; the int32 sums wrap
 *      modulo 2^32, which is exact in the end (true 4 sum(q w) < 2^31 for
 *      cin <= 3640).
 *   4. output transform Y' = A^T M A (wrapping ADD/SUB), Y = Y' >> 2
 *      (exact), + (bias - z_in sum w), requantize, clamp, store.
 *
 * Micro-kernel: 4 tiles x 8 output channels: 8 int32x4 accumulators, 4
 * int16x8 input rows, 1 weight vector.  Tiles are processed in blocks
 * (eqd_winograd_scratch_bytes) split over threads.
 */
#include "eqd_kernel.h"

#if defined(__aarch64__)

#include <arm_neon.h>
#include <stdlib.h>
#include <string.h>

#include "qs8_requant_neon.h"

#define MR 4
#define NR 8

typedef struct wino_neon_data {
  int cin8;   /* cin rounded up to 8                                   */
  int16_t* u; /* [16][cout_pad/8][cin8][8] int16, zero in the padding  */
} wino_neon_data;

static void winograd_neon_unpack(void* kdata) {
  wino_neon_data* p = (wino_neon_data*)kdata;
  if (!p) return;
  eqd_aligned_free(p->u);
  free(p);
}

static int winograd_neon_pack(eqd_conv* c) {
  wino_neon_data* p = (wino_neon_data*)calloc(1, sizeof(*p));
  c->kdata = p;
  if (!p) return -1;
  const int cin = c->cin, cout = c->cout, ncb = c->cout_pad / NR;
  p->cin8 = (cin + 7) & ~7;
  const size_t n = (size_t)16 * ncb * p->cin8 * NR;
  p->u = (int16_t*)eqd_aligned_alloc(n * sizeof(int16_t));
  int16_t* u = eqd_winograd_transform_weights(c); /* [16][cout][cin] */
  if (!p->u || !u) {
    eqd_aligned_free(u);
    return -1;
  }
  memset(p->u, 0, n * sizeof(int16_t));
  for (int t = 0; t < 16; ++t)
    for (int co = 0; co < cout; ++co)
      for (int ci = 0; ci < cin; ++ci)
        p->u[(((size_t)t * ncb + co / NR) * p->cin8 + ci) * NR + co % NR] =
            u[((size_t)t * cout + co) * cin + ci];
  eqd_aligned_free(u);
  return 0;
}

/* V = B^T d B of one tile, 8 channels [ci, ci+8); B^T = {{1,0,-1,0},
 * {0,1,1,0},{0,-1,1,0},{0,1,0,-1}}: |B^T d| <= 256, |V| <= 512 in int16. */
static inline void input_transform8(const int8_t* p, size_t row_stride, size_t pix,
                                    int16_t* v, size_t t_stride) {
  int16x8_t d[4][4], t[4][4];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) d[i][j] = vmovl_s8(vld1_s8(p + i * row_stride + j * pix));
  for (int j = 0; j < 4; ++j) {
    t[0][j] = vsubq_s16(d[0][j], d[2][j]);
    t[1][j] = vaddq_s16(d[1][j], d[2][j]);
    t[2][j] = vsubq_s16(d[2][j], d[1][j]);
    t[3][j] = vsubq_s16(d[1][j], d[3][j]);
  }
  for (int i = 0; i < 4; ++i) {
    vst1q_s16(v + (i * 4 + 0) * t_stride, vsubq_s16(t[i][0], t[i][2]));
    vst1q_s16(v + (i * 4 + 1) * t_stride, vaddq_s16(t[i][1], t[i][2]));
    vst1q_s16(v + (i * 4 + 2) * t_stride, vsubq_s16(t[i][2], t[i][1]));
    vst1q_s16(v + (i * 4 + 3) * t_stride, vsubq_s16(t[i][1], t[i][3]));
  }
}

#define EQD_LANE(l)                                                              \
  do {                                                                           \
    const int16x8_t w = vld1q_s16(uc + (size_t)(ci + l) * NR);                   \
    for (int m = 0; m < MR; ++m) {                                               \
      lo[m] = vmlal_laneq_s16(lo[m], vget_low_s16(w), x[m], l);                  \
      hi[m] = vmlal_high_laneq_s16(hi[m], w, x[m], l);                           \
    }                                                                            \
  } while (0)

/* M[t][m][8] for MR tiles (rows of v at offsets toff[m]), one channel block. */
static inline void gemm_4x8(const int16_t* v, size_t t_stride, const int toff[MR],
                            const int16_t* u_cb, size_t u_t_stride, int cin8, int32_t* mbuf) {
  for (int t = 0; t < 16; ++t) {
    const int16_t* vt = v + t * t_stride;
    const int16_t* uc = u_cb + t * u_t_stride;
    int32x4_t lo[MR], hi[MR];
    for (int m = 0; m < MR; ++m) lo[m] = hi[m] = vdupq_n_s32(0);
    for (int ci = 0; ci < cin8; ci += 8) {
      int16x8_t x[MR];
      for (int m = 0; m < MR; ++m) x[m] = vld1q_s16(vt + toff[m] + ci);
      EQD_LANE(0);
      EQD_LANE(1);
      EQD_LANE(2);
      EQD_LANE(3);
      EQD_LANE(4);
      EQD_LANE(5);
      EQD_LANE(6);
      EQD_LANE(7);
    }
    for (int m = 0; m < MR; ++m) {
      vst1q_s32(mbuf + (t * MR + m) * NR, lo[m]);
      vst1q_s32(mbuf + (t * MR + m) * NR + 4, hi[m]);
    }
  }
}
#undef EQD_LANE

/* Output transform + requantization of one tile, 4 channels [co, co+4). */
static inline void output_tile4(const eqd_conv* c, const int32_t* mbuf, int m, int half,
                                int co, int ty, int tx, int8_t* o) {
  int32x4_t mm[16];
  for (int t = 0; t < 16; ++t) mm[t] = vld1q_s32(mbuf + (t * MR + m) * NR + half * 4);
  /* A^T = {{1,1,1,0},{0,1,-1,-1}}; ADD/SUB wrap modulo 2^32. */
  int32x4_t s[2][4];
  for (int j = 0; j < 4; ++j) {
    s[0][j] = vaddq_s32(vaddq_s32(mm[j], mm[4 + j]), mm[8 + j]);
    s[1][j] = vsubq_s32(vsubq_s32(mm[4 + j], mm[8 + j]), mm[12 + j]);
  }
  const int n = c->cout - co < 4 ? c->cout - co : 4;
  const int32x4_t beff = vld1q_s32(c->bias_eff + co);
  for (int i = 0; i < 2; ++i) {
    const int oy = 2 * ty + i;
    if (oy >= c->out_h) break;
    const int32x4_t y[2] = {vaddq_s32(vaddq_s32(s[i][0], s[i][1]), s[i][2]),
                            vsubq_s32(vsubq_s32(s[i][1], s[i][2]), s[i][3])};
    for (int j = 0; j < 2; ++j) {
      const int ox = 2 * tx + j;
      if (ox >= c->out_w) break;
      /* exact divide by 4 (4 * conv fits int32), then the folded bias */
      const int32x4_t acc = vaddq_s32(vshrq_n_s32(y[j], 2), beff);
      eqd_store4_s8(o + ((size_t)oy * c->out_w + ox) * c->cout + co,
                    eqd_requant4_neon(acc, c, co), n);
    }
  }
}

typedef struct wino_job {
  const eqd_conv* c;
  const int8_t* pad;
  int8_t* out;
} wino_job;

static void wino_block(void* ctx, int task, int thread) {
  const wino_job* j = (const wino_job*)ctx;
  const eqd_conv* c = j->c;
  const wino_neon_data* d = (const wino_neon_data*)c->kdata;
  const int cin = c->cin, cin8 = d->cin8;
  const int tb = c->wino_tb, cstride = c->wino_cstride;
  const int ntw = c->tiles_w, ntiles = c->tiles_h * c->tiles_w;
  const int ncb = c->cout_pad / NR;
  char* mine = (char*)c->scratch + eqd_winograd_padded_bytes(c) +
               (size_t)thread * eqd_winograd_thread_bytes(c);
  int16_t* v = (int16_t*)mine;
  int32_t* mbuf = (int32_t*)(mine + (((size_t)16 * tb * cstride * sizeof(int16_t) + 63) &
                                     ~(size_t)63));
  const size_t t_stride = (size_t)tb * cstride;
  const size_t u_t_stride = (size_t)ncb * cin8 * NR;
  const size_t row_stride = (size_t)c->w_wp * cin;
  const int t0 = task * tb;
  const int nt = ntiles - t0 < tb ? ntiles - t0 : tb;
  for (int i = 0; i < nt; ++i) {
    const int ty = (t0 + i) / ntw, tx = (t0 + i) % ntw;
    const int8_t* p = j->pad + (size_t)(2 * ty) * row_stride + (size_t)(2 * tx) * cin;
    for (int ci = 0; ci < cin8; ci += 8)
      input_transform8(p + ci, row_stride, (size_t)cin, v + (size_t)i * cstride + ci,
                       t_stride);
  }
  for (int cb = 0; cb < ncb; ++cb) {
    if (cb * NR >= c->cout) break;
    for (int i0 = 0; i0 < nt; i0 += MR) {
      int toff[MR];
      for (int m = 0; m < MR; ++m) toff[m] = (i0 + m < nt ? i0 + m : nt - 1) * cstride;
      gemm_4x8(v, t_stride, toff, d->u + (size_t)cb * cin8 * NR, u_t_stride, cin8, mbuf);
      for (int m = 0; m < MR && i0 + m < nt; ++m) {
        const int ty = (t0 + i0 + m) / ntw, tx = (t0 + i0 + m) % ntw;
        for (int half = 0; half < 2; ++half) {
          const int co = cb * NR + half * 4;
          if (co >= c->cout) break;
          output_tile4(c, mbuf, m, half, co, ty, tx, j->out);
        }
      }
    }
  }
}

static int winograd_neon_run(const eqd_conv* c, const int8_t* in, int8_t* out,
                             eqd_pool* pool) {
  const int ntiles = c->tiles_h * c->tiles_w;
  const int nblocks = (ntiles + c->wino_tb - 1) / c->wino_tb;
  int8_t* pad = (int8_t*)c->scratch;
  const size_t in_img = (size_t)c->in_h * c->in_w * c->cin;
  const size_t out_img = (size_t)c->out_h * c->out_w * c->cout;
  for (int b = 0; b < c->batch; ++b) {
    eqd_pad_input_s8(in + b * in_img, c->in_h, c->in_w, c->cin, c->pad_top, c->pad_left,
                     c->w_hp, c->w_wp, (int8_t)c->in_zp, pad);
    wino_job job = {c, pad, out + b * out_img};
    eqd_pool_run(pool, wino_block, &job, nblocks);
  }
  return 0;
}

const eqd_kernel eqd_kernel_winograd_neon = {
    .name = "winograd_neon", .isa = "neon", .family = EQD_FAMILY_WINOGRAD,
    .cpu_features = EQD_CPU_NEON, .pack = winograd_neon_pack,
    .unpack = winograd_neon_unpack, .scratch_bytes = eqd_winograd_scratch_bytes,
    .run = winograd_neon_run, .paths = {"winograd_neon"}};

#endif /* __aarch64__ */
