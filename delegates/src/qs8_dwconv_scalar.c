/*
 * qs8_dwconv_scalar.c -- portable reference int8 depthwise convolution
 * (depth multiplier 1, any kernel size, stride 1/2, SAME/VALID), bit-exact
 * with TFLite.  Same zero-point handling as the direct convolution: the
 * input is padded with z, raw q are summed, z * sum(w) is folded into the
 * bias.  |q * w| <= 2^14 per tap, summed modulo 2^32 (exact whenever
 * TFLite's int32 accumulator is).
 */
#include "eqd_kernel.h"

void eqd_dwconv_scalar(const eqd_conv* c, const int8_t* in, int8_t* out) {
  const int ch = c->cout, kh = c->kh, kw = c->kw;
  const int hp = c->d_hp, wp = c->d_wp;
  int8_t* pad = (int8_t*)c->scratch;
  const size_t in_img = (size_t)c->in_h * c->in_w * ch;
  const size_t out_img = (size_t)c->out_h * c->out_w * ch;
  for (int b = 0; b < c->batch; ++b) {
    eqd_pad_input_s8(in + b * in_img, c->in_h, c->in_w, ch, c->pad_top, c->pad_left,
                     hp, wp, (int8_t)c->in_zp, pad);
    int8_t* o = out + b * out_img;
    for (int oy = 0; oy < c->out_h; ++oy)
      for (int ox = 0; ox < c->out_w; ++ox) {
        const int8_t* base =
            pad + ((size_t)oy * c->stride_h * wp + (size_t)ox * c->stride_w) * ch;
        for (int k = 0; k < ch; ++k) {
          uint32_t acc = 0;
          for (int ky = 0; ky < kh; ++ky)
            for (int kx = 0; kx < kw; ++kx)
              acc += (uint32_t)((int32_t)base[((size_t)ky * wp + kx) * ch + k] *
                                (int32_t)c->w[((size_t)ky * kw + kx) * ch + k]);
          acc += (uint32_t)c->bias[k] - (uint32_t)c->in_zp * (uint32_t)c->wsum[k];
          *o++ = eqd_requant_scalar(c, k, (int32_t)acc);
        }
      }
  }
}

static size_t dwconv_scalar_scratch(eqd_conv* c) { return eqd_direct_padded_bytes(c); }

static int dwconv_scalar_run(const eqd_conv* c, const int8_t* in, int8_t* out,
                             eqd_pool* pool) {
  (void)pool;
  eqd_dwconv_scalar(c, in, out);
  return 0;
}

const eqd_kernel eqd_kernel_dwconv_scalar = {
    .name = "dwconv_scalar", .isa = "scalar", .family = EQD_FAMILY_DWCONV,
    .scratch_bytes = dwconv_scalar_scratch, .run = dwconv_scalar_run,
    .paths = {"dwconv_scalar"}};
