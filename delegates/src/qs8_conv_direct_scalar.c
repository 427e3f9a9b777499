/*
 * qs8_conv_direct_scalar.c -- portable reference int8 convolution (any
 * kernel size, stride, SAME/VALID), bit-exact with TFLite's reference
 * per-channel int8 convolution.
 *
 * Zero points: the input is copied into a padded buffer whose border holds
 * the input zero point z, so every tap reads a raw q (padding taps read z and
 * contribute (z - z) * w = 0 in TFLite's formulation).  Then
 *   sum_k (q_k - z) * w_k = sum_k q_k * w_k - z * sum_k w_k,
 * and z * sum_k w_k is folded into the per-channel bias once per invoke.
 *
 * Bounds: |q * w| <= 128 * 128 = 2^14 per tap; the sum is taken modulo 2^32
 * (uint32_t), which equals TFLite's int32 accumulator whenever that one does
 * not overflow (|acc| < 2^31, i.e. up to 2^31 / 2^14 = 131072 taps even in
 * the worst case).
 */
#include "eqd_kernel.h"

void eqd_direct_scalar(const eqd_conv* c, const int8_t* in, int8_t* out) {
  const int cin = c->cin, cout = c->cout, kh = c->kh, kw = c->kw;
  const int hp = c->d_hp, wp = c->d_wp;
  int8_t* pad = (int8_t*)c->scratch;
  const size_t in_img = (size_t)c->in_h * c->in_w * cin;
  const size_t out_img = (size_t)c->out_h * c->out_w * cout;
  for (int b = 0; b < c->batch; ++b) {
    eqd_pad_input_s8(in + b * in_img, c->in_h, c->in_w, cin, c->pad_top,
                     c->pad_left, hp, wp, (int8_t)c->in_zp, pad);
    int8_t* o = out + b * out_img;
    for (int oy = 0; oy < c->out_h; ++oy) {
      for (int ox = 0; ox < c->out_w; ++ox) {
        const int8_t* base =
            pad + ((size_t)oy * c->stride_h * wp + (size_t)ox * c->stride_w) * cin;
        for (int co = 0; co < cout; ++co) {
          const int8_t* wc = c->w + (size_t)co * kh * kw * cin;
          uint32_t acc = 0;
          for (int ky = 0; ky < kh; ++ky) {
            const int8_t* row = base + (size_t)ky * wp * cin;
            const int8_t* wr = wc + (size_t)ky * kw * cin;
            for (int k = 0; k < kw * cin; ++k)
              acc += (uint32_t)((int32_t)row[k] * (int32_t)wr[k]);
          }
          acc += (uint32_t)c->bias[co] -
                 (uint32_t)c->in_zp * (uint32_t)c->wsum[co];
          *o++ = eqd_requant_scalar(c, co, (int32_t)acc);
        }
      }
    }
  }
}

static size_t direct_scalar_scratch(eqd_conv* c) { return eqd_direct_padded_bytes(c); }

static int direct_scalar_run(const eqd_conv* c, const int8_t* in, int8_t* out,
                             eqd_pool* pool) {
  (void)pool;
  eqd_direct_scalar(c, in, out);
  return 0;
}

const eqd_kernel eqd_kernel_direct_scalar = {
    .name = "direct_scalar", .isa = "scalar", .family = EQD_FAMILY_DIRECT,
    .scratch_bytes = direct_scalar_scratch, .run = direct_scalar_run,
    .paths = {"direct_scalar"}};
