/*
 * qs8_winograd_f2x3_scalar.c -- portable integer Winograd F(2x2, 3x3) for
 * 3x3 stride-1 int8 convolutions; bit-exact with the direct convolution.
 *
 *   Y = A^T [ (G g G^T) .* (B^T d B) ] A          (exact over the rationals)
 * G has entries 1/2, so we use G' = 2G (rows {2,0,0},{1,1,1},{1,-1,1},{0,0,2}):
 *   U' = G' g G'^T = 4 U is an integer matrix, and
 *   Y' = A^T [ U' .* V ] A = 4 Y, so Y = Y' / 4 exactly (arithmetic >> 2).
 *
 * Bounds (w in [-128, 127] covers any int8 filter, q in [-128, 127]):
 *   kernel transform  t = G' g:   |t| <= (1+1+1) * 128 = 384
 *                     U' = t G'^T: |U'| <= 3 * 384 = 1152   (1143 for |w| <= 127)
 *     -> U' is stored as int16.
 *   input transform   B^T has two entries +-1 per row:
 *                     |B^T d| <= 2 * 128 = 256, |V| <= 2 * 256 = 512
 *     -> V is stored as int16.
 *   products          |U' * V| <= 1152 * 512 = 589824 < 2^20, accumulated
 *     over cin in int32 modulo 2^32; the output transform is also done
 *     modulo 2^32.  Arithmetic modulo 2^32 is a ring homomorphism, so the
 *     result equals the true Y' = 4 * sum(q * w) modulo 2^32, and since
 *     |4 * sum(q * w)| <= 4 * 9 * cin * 128 * 128 < 2^31 for
 *     cin <= EQD_WINOGRAD_MAX_CIN (3640), it IS the true value; >> 2 then
 *     divides exactly.  (Intermediate values may exceed 2^31; that is
 *     harmless modulo 2^32 and never undefined, as we use uint32_t.)
 * Zero points: d holds raw q, the padding holds z_in, and z_in * sum(w) is
 * subtracted per output channel afterwards (the transforms are linear).
 */
#include <string.h>

#include "eqd_kernel.h"

int16_t* eqd_winograd_transform_weights(const eqd_conv* c) {
  const int cin = c->cin, cout = c->cout;
  int16_t* u = (int16_t*)eqd_aligned_alloc((size_t)16 * cout * cin * sizeof(int16_t));
  if (!u) return NULL; /* [16][cout][cin] */
  for (int co = 0; co < cout; ++co) {
    for (int ci = 0; ci < cin; ++ci) {
      int32_t g[3][3], t[4][3];
      for (int ky = 0; ky < 3; ++ky)
        for (int kx = 0; kx < 3; ++kx)
          g[ky][kx] = c->w[(((size_t)co * 3 + ky) * 3 + kx) * cin + ci];
      for (int j = 0; j < 3; ++j) { /* t = G' g, |t| <= 384 */
        t[0][j] = 2 * g[0][j];
        t[1][j] = g[0][j] + g[1][j] + g[2][j];
        t[2][j] = g[0][j] - g[1][j] + g[2][j];
        t[3][j] = 2 * g[2][j];
      }
      for (int i = 0; i < 4; ++i) { /* U' = t G'^T, |U'| <= 1152 */
        const int32_t r[4] = {2 * t[i][0], t[i][0] + t[i][1] + t[i][2],
                              t[i][0] - t[i][1] + t[i][2], 2 * t[i][2]};
        for (int j = 0; j < 4; ++j)
          u[((size_t)(i * 4 + j) * cout + co) * cin + ci] = (int16_t)r[j];
      }
    }
  }
  return u;
}

/* V = B^T d B for one channel; d[4][4] raw q. |V| <= 512. */
static void input_transform(const int8_t* p, size_t row_stride, size_t pix_stride,
                            int16_t v[16]) {
  int32_t d[4][4], t[4][4];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) d[i][j] = p[i * row_stride + j * pix_stride];
  for (int j = 0; j < 4; ++j) { /* B^T d: |t| <= 256 */
    t[0][j] = d[0][j] - d[2][j];
    t[1][j] = d[1][j] + d[2][j];
    t[2][j] = d[2][j] - d[1][j];
    t[3][j] = d[1][j] - d[3][j];
  }
  for (int i = 0; i < 4; ++i) { /* (B^T d) B: |V| <= 512 */
    v[i * 4 + 0] = (int16_t)(t[i][0] - t[i][2]);
    v[i * 4 + 1] = (int16_t)(t[i][1] + t[i][2]);
    v[i * 4 + 2] = (int16_t)(t[i][2] - t[i][1]);
    v[i * 4 + 3] = (int16_t)(t[i][1] - t[i][3]);
  }
}

size_t eqd_winograd_padded_bytes(const eqd_conv* c) {
  /* +64: the AVX2 input transform reads 16 channels at a time */
  return ((size_t)c->w_hp * c->w_wp * c->cin + 64 + 63) & ~(size_t)63;
}

size_t eqd_winograd_thread_bytes(const eqd_conv* c) {
  const size_t v = 16 * (size_t)c->wino_tb * c->wino_cstride * sizeof(int16_t);
  const size_t m = 16 * EQD_WINO_MR * EQD_WINO_NR * sizeof(int32_t);
  return ((v + 63) & ~(size_t)63) + ((m + 63) & ~(size_t)63);
}

size_t eqd_winograd_scratch_bytes(eqd_conv* c) {
  /* [padded input int8] then per thread [V: 16 x tb x cstride int16]
   * [M: 16 x MR x NR int32] */
  const size_t cstride = (size_t)((c->cin + 15) & ~15);
  /* Keep one block of transformed tiles within ~192 KiB (L2). */
  size_t tb = (192u * 1024u) / (16 * cstride * sizeof(int16_t));
  const size_t ntiles = (size_t)c->tiles_h * c->tiles_w;
  if (tb > ntiles) tb = ntiles;
  if (c->nthreads > 1) { /* at least ~4 blocks per thread when possible */
    const size_t per = (ntiles + 4 * (size_t)c->nthreads - 1) / (4 * (size_t)c->nthreads);
    if (per < tb) tb = per;
  }
  tb = (tb + EQD_WINO_MR - 1) / EQD_WINO_MR * EQD_WINO_MR;
  if (tb < EQD_WINO_MR) tb = EQD_WINO_MR;
  c->wino_tb = (int)tb;
  c->wino_cstride = (int)cstride;
  return eqd_winograd_padded_bytes(c) +
         (size_t)(c->nthreads > 0 ? c->nthreads : 1) * eqd_winograd_thread_bytes(c) + 64;
}

void eqd_winograd_scalar(const eqd_conv* c, const int8_t* in, int8_t* out) {
  const int16_t* wino_u = (const int16_t*)c->kdata; /* [16][cout][cin] */
  const int cin = c->cin, cout = c->cout;
  const int hp = c->w_hp, wp = c->w_wp;
  int8_t* pad = (int8_t*)c->scratch;
  int16_t* v = (int16_t*)((char*)c->scratch + eqd_winograd_padded_bytes(c)); /* [cin][16] */
  const size_t in_img = (size_t)c->in_h * c->in_w * cin;
  const size_t out_img = (size_t)c->out_h * c->out_w * cout;
  const size_t row_stride = (size_t)wp * cin;
  for (int b = 0; b < c->batch; ++b) {
    eqd_pad_input_s8(in + b * in_img, c->in_h, c->in_w, cin, c->pad_top,
                     c->pad_left, hp, wp, (int8_t)c->in_zp, pad);
    int8_t* o = out + b * out_img;
    for (int ty = 0; ty < c->tiles_h; ++ty) {
      for (int tx = 0; tx < c->tiles_w; ++tx) {
        const int8_t* p = pad + (size_t)(2 * ty) * row_stride + (size_t)(2 * tx) * cin;
        for (int ci = 0; ci < cin; ++ci)
          input_transform(p + ci, row_stride, (size_t)cin, v + (size_t)ci * 16);
        for (int co = 0; co < cout; ++co) {
          uint32_t m[16];
          for (int t = 0; t < 16; ++t) {
            const int16_t* u = wino_u + ((size_t)t * cout + co) * cin;
            uint32_t acc = 0; /* modulo 2^32, see the header comment */
            for (int ci = 0; ci < cin; ++ci)
              acc += (uint32_t)((int32_t)u[ci] * (int32_t)v[(size_t)ci * 16 + t]);
            m[t] = acc;
          }
          /* Y' = A^T M A, A^T = {{1,1,1,0},{0,1,-1,-1}} (modulo 2^32) */
          uint32_t s[2][4];
          for (int j = 0; j < 4; ++j) {
            s[0][j] = m[j] + m[4 + j] + m[8 + j];
            s[1][j] = m[4 + j] - m[8 + j] - m[12 + j];
          }
          const uint32_t bias_eff =
              (uint32_t)c->bias[co] - (uint32_t)c->in_zp * (uint32_t)c->wsum[co];
          for (int i = 0; i < 2; ++i) {
            const int oy = 2 * ty + i;
            if (oy >= c->out_h) break;
            const uint32_t y2[2] = {s[i][0] + s[i][1] + s[i][2],
                                    s[i][1] - s[i][2] - s[i][3]};
            for (int j = 0; j < 2; ++j) {
              const int ox = 2 * tx + j;
              if (ox >= c->out_w) break;
              /* exact: |4 * sum(q w)| < 2^31 for cin <= EQD_WINOGRAD_MAX_CIN */
              const int32_t conv = ((int32_t)y2[j]) >> 2;
              const int32_t acc = (int32_t)((uint32_t)conv + bias_eff);
              o[((size_t)oy * c->out_w + ox) * cout + co] =
                  eqd_requant_scalar(c, co, acc);
            }
          }
        }
      }
    }
  }
}

static int winograd_scalar_pack(eqd_conv* c) {
  c->kdata = eqd_winograd_transform_weights(c);
  return c->kdata ? 0 : -1;
}

static int winograd_scalar_run(const eqd_conv* c, const int8_t* in, int8_t* out,
                               eqd_pool* pool) {
  (void)pool;
  eqd_winograd_scalar(c, in, out);
  return 0;
}

const eqd_kernel eqd_kernel_winograd_scalar = {
    .name = "winograd_scalar", .isa = "scalar", .family = EQD_FAMILY_WINOGRAD,
    .pack = winograd_scalar_pack, .unpack = eqd_aligned_free,
    .scratch_bytes = eqd_winograd_scratch_bytes, .run = winograd_scalar_run,
    .paths = {"winograd_scalar"}};
