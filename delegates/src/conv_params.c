/*
 * conv_params.c -- quantization parameters, shapes and kernel dispatch for
 * one int8 CONV_2D node; running it with the node's kernel (eqd_kernel.h).
 *
 * The requantization parameters are derived exactly as TFLite derives them
 * for its per-channel int8 convolution, so that the fixed-point arithmetic
 * in eqd_requant_scalar() / the AVX2 requantizer reproduces TFLite's output
 * bit for bit:
 *   effective scale  m[c] = (double)s_in * (double)s_w[c] / (double)s_out
 *   QuantizeMultiplier: m = q * 2^shift with q in [0.5, 1) (frexp),
 *                       significand = round(q * 2^31) (ties away from zero),
 *                       renormalised when it rounds up to 2^31,
 *                       flushed to zero when shift < -31.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "eqd_kernel.h"

const char* const eqd_rounding_names[EQD_ROUND_COUNT] = {
    "reference", "builtin-x86", "builtin-arm64", "tflite-runtime-2.14"};

void* eqd_aligned_alloc(size_t bytes) {
  void* p = NULL;
  if (bytes == 0) bytes = 64;
  if (posix_memalign(&p, 64, bytes) != 0) return NULL;
  return p;
}

void eqd_aligned_free(void* p) { free(p); }

void eqd_quantize_multiplier(double m, int32_t* q, int* shift) {
  if (m == 0.0) {
    *q = 0;
    *shift = 0;
    return;
  }
  int e = 0;
  const double frac = frexp(m, &e); /* m = frac * 2^e, frac in [0.5, 1) */
  int64_t q_fixed = (int64_t)round(frac * (double)(1LL << 31));
  if (q_fixed == (1LL << 31)) { /* rounded up to 1.0: renormalise */
    q_fixed /= 2;
    ++e;
  }
  if (e < -31) { /* every bit would be shifted out: TFLite flushes to 0 */
    e = 0;
    q_fixed = 0;
  }
  *q = (int32_t)q_fixed;
  *shift = e;
}

/* TFLite's CalculateActivationRangeQuantized for int8 outputs:
 * quantize(f) = zp + (int32)round(f / scale), computed in float. */
static int32_t quantize_f(float f, float scale, int32_t zp) {
  const float r = roundf(f / scale);
  /* Clamp in float before the conversion (the C conversion of an
   * out-of-range float is undefined; TFLite never meets such scales with
   * sane models, and the final clamp to [-128,127] makes this invisible). */
  double v = (double)zp + (double)r;
  if (v > 2147483647.0) v = 2147483647.0;
  if (v < -2147483648.0) v = -2147483648.0;
  return (int32_t)v;
}

void eqd_activation_range(int act, float out_scale, int32_t out_zp,
                          int32_t* act_min, int32_t* act_max) {
  const int32_t qmin = -128, qmax = 127;
  int32_t lo = qmin, hi = qmax;
  switch (act) {
    case 1: /* RELU */
      lo = quantize_f(0.0f, out_scale, out_zp);
      lo = lo > qmin ? lo : qmin;
      break;
    case 3: /* RELU6 */
      lo = quantize_f(0.0f, out_scale, out_zp);
      lo = lo > qmin ? lo : qmin;
      hi = quantize_f(6.0f, out_scale, out_zp);
      hi = hi < qmax ? hi : qmax;
      break;
    case 2: /* RELU_N1_TO_1 */
      lo = quantize_f(-1.0f, out_scale, out_zp);
      lo = lo > qmin ? lo : qmin;
      hi = quantize_f(1.0f, out_scale, out_zp);
      hi = hi < qmax ? hi : qmax;
      break;
    default: /* NONE */
      break;
  }
  *act_min = lo;
  *act_max = hi;
}

int eqd_conv_init_requant(eqd_conv* c, float in_scale, const float* w_scales,
                          int n_w_scales, float out_scale, eqd_rounding rounding) {
  const int cp = c->cout_pad;
  c->rq_mult = (int32_t*)calloc((size_t)cp, sizeof(int32_t));
  c->rq_lshift = (int32_t*)calloc((size_t)cp, sizeof(int32_t));
  c->rq_rshift = (int32_t*)calloc((size_t)cp, sizeof(int32_t));
  c->rq_rmask = (int32_t*)calloc((size_t)cp, sizeof(int32_t));
  c->rq_rthresh = (int32_t*)calloc((size_t)cp, sizeof(int32_t));
  c->rq_away = (int32_t*)calloc((size_t)cp, sizeof(int32_t));
  if (!c->rq_mult || !c->rq_lshift || !c->rq_rshift || !c->rq_rmask ||
      !c->rq_rthresh || !c->rq_away)
    return -1;
  /* Rules per channel (see eqd_conv.rq_away and rq_single).  Measured
   * against LiteRT 2.3 (tests/delegate/rounding_probe.py, natively and
   * under qemu-aarch64 for cortex-a72 and neoverse-n1).
   *   x86-64 CONV_2D: ruy's AVX2 kernel, double rounding, ties up;
   *   aarch64 CONV_2D: ruy's NEON kernel, single rounding (SQDMULH+SRSHL);
   *   DEPTHWISE_CONV_2D on both: double rounding, ties up in the channels
   *   the optimized kernel handles 8 at a time, away from zero in the last
   *   C % 8.
   * and against tflite-runtime 2.14 on x86: CONV_2D as LiteRT 2.3 on x86,
   * DEPTHWISE_CONV_2D ties away from zero in every channel. */
  int simd_channels = c->depthwise ? c->cout / 8 * 8 : c->cout;
  if (rounding == EQD_ROUND_TFLITE214 && c->depthwise) simd_channels = 0;
  c->rq_single = rounding == EQD_ROUND_ARM64 && !c->depthwise;
  for (int ch = 0; ch < c->cout; ++ch)
    c->rq_away[ch] = (rounding == EQD_ROUND_REFERENCE || ch >= simd_channels) ? -1 : 0;
  if (c->rq_single)
    for (int ch = 0; ch < c->cout; ++ch) c->rq_away[ch] = 0;
  for (int ch = 0; ch < c->cout; ++ch) {
    const double ws = (double)w_scales[n_w_scales == 1 ? 0 : ch];
    const double eff = (double)in_scale * ws / (double)out_scale;
    int32_t q;
    int shift;
    eqd_quantize_multiplier(eff, &q, &shift);
    /* shift > 31 would make TFLite's (1 << left_shift) undefined; such a
     * scale (> 2^31) is rejected when claiming the node. */
    if (shift > 31) return -1;
    c->rq_mult[ch] = q;
    if (c->rq_single) { /* ruy aarch64: right shift at least 1 */
      c->rq_lshift[ch] = shift >= 0 ? shift + 1 : 0;
      c->rq_rshift[ch] = shift >= 0 ? 1 : -shift;
    } else {
      c->rq_lshift[ch] = shift > 0 ? shift : 0;
      c->rq_rshift[ch] = shift > 0 ? 0 : -shift; /* <= 31 by construction */
    }
    c->rq_rmask[ch] = (int32_t)((1LL << c->rq_rshift[ch]) - 1);
    c->rq_rthresh[ch] = c->rq_rmask[ch] >> 1;
  }
  return 0;
}

void eqd_pad_input_s8(const int8_t* src, int h, int w, int ch, int pt, int pl,
                      int hp, int wp, int8_t fill, int8_t* dst) {
  const size_t row = (size_t)wp * (size_t)ch;
  for (int y = 0; y < hp; ++y) {
    int8_t* d = dst + (size_t)y * row;
    const int sy = y - pt;
    if (sy < 0 || sy >= h) {
      memset(d, (unsigned char)fill, row);
      continue;
    }
    /* columns [x0, x1) come from the source row */
    int x0 = pl > 0 ? pl : 0;
    int x1 = pl + w < wp ? pl + w : wp;
    if (x1 < x0) x1 = x0;
    if (x0 > 0) memset(d, (unsigned char)fill, (size_t)x0 * ch);
    if (x1 > x0)
      memcpy(d + (size_t)x0 * ch,
             src + ((size_t)sy * w + (size_t)(x0 - pl)) * ch,
             (size_t)(x1 - x0) * ch);
    if (x1 < wp) memset(d + (size_t)x1 * ch, (unsigned char)fill,
                        (size_t)(wp - x1) * ch);
  }
}

/* TFLite's ComputeOutSize / ComputePaddingHeightWidth (dilation 1). */
static int out_size(int same, int in, int k, int s) {
  return same ? (in + s - 1) / s : (in - k + s) / s;
}

static int pad_before(int in, int k, int s, int out) {
  int total = (out - 1) * s + k - in;
  if (total < 0) total = 0;
  return total / 2;
}

int eqd_conv_setup_shape(eqd_conv* c, int batch, int in_h, int in_w, int nthreads) {
  if (nthreads < 1) nthreads = 1;
  if (batch <= 0 || in_h <= 0 || in_w <= 0) return -1;
  const int oh = out_size(c->padding_same, in_h, c->kh, c->stride_h);
  const int ow = out_size(c->padding_same, in_w, c->kw, c->stride_w);
  if (oh <= 0 || ow <= 0) return -1;
  const int same_shape = c->scratch && c->batch == batch && c->in_h == in_h &&
                         c->in_w == in_w && c->nthreads == nthreads;
  c->nthreads = nthreads;
  c->batch = batch;
  c->in_h = in_h;
  c->in_w = in_w;
  c->out_h = oh;
  c->out_w = ow;
  c->pad_top = pad_before(in_h, c->kh, c->stride_h, oh);
  c->pad_left = pad_before(in_w, c->kw, c->stride_w, ow);
  c->d_hp = (oh - 1) * c->stride_h + c->kh;
  c->d_wp = (ow - 1) * c->stride_w + c->kw;
  c->tiles_h = (oh + 1) / 2;
  c->tiles_w = (ow + 1) / 2;
  c->w_hp = 2 * c->tiles_h + 2;
  c->w_wp = 2 * c->tiles_w + 2;
  if (same_shape) return 0;

  if (c->kernel->reshape && c->kernel->reshape(c) != 0) return -1;
  const size_t need = c->kernel->scratch_bytes(c);
  eqd_aligned_free(c->scratch);
  c->scratch = eqd_aligned_alloc(need);
  c->scratch_bytes = need;
  return c->scratch ? 0 : -1;
}

int eqd_conv_run(eqd_conv* c, const int8_t* in, int8_t* out, eqd_pool* pool) {
  if (eqd_pool_threads(pool) > c->nthreads) pool = NULL; /* scratch too small */
  return c->kernel->run(c, in, out, pool);
}

size_t eqd_direct_padded_bytes(const eqd_conv* c) {
  return (((size_t)c->d_hp * c->d_wp * c->cin + 64 + 63) & ~(size_t)63);
}

int eqd_conv_init_weights(eqd_conv* c, const int32_t* bias) {
  c->cout_pad = (c->cout + 15) & ~15;
  c->cin2 = (c->cin + 1) & ~1;
  c->bias = (int32_t*)calloc((size_t)c->cout_pad, sizeof(int32_t));
  c->wsum = (int32_t*)calloc((size_t)c->cout_pad, sizeof(int32_t));
  c->bias_eff = (int32_t*)calloc((size_t)c->cout_pad, sizeof(int32_t));
  if (!c->bias || !c->wsum || !c->bias_eff) return -1;
  if (bias)
    for (int i = 0; i < c->cout; ++i) c->bias[i] = bias[i];
  int wmax = 0;
  if (c->depthwise) { /* w is [kh][kw][c] */
    const size_t taps = (size_t)c->kh * c->kw;
    for (size_t t = 0; t < taps; ++t)
      for (int ch = 0; ch < c->cout; ++ch) {
        const int v = c->w[t * c->cout + ch];
        c->wsum[ch] += v; /* |sum| <= 64 * 128: no overflow */
        const int a = v < 0 ? -v : v;
        if (a > wmax) wmax = a;
      }
  } else {
    const size_t k = (size_t)c->kh * c->kw * c->cin;
    for (int co = 0; co < c->cout; ++co) {
      int32_t s = 0; /* |s| <= 128 * k: fits int32 for any real filter */
      for (size_t i = 0; i < k; ++i) {
        const int v = c->w[(size_t)co * k + i];
        s += v;
        const int a = v < 0 ? -v : v;
        if (a > wmax) wmax = a;
      }
      c->wsum[co] = s;
    }
  }
  c->wabs_max = wmax;
  for (int co = 0; co < c->cout; ++co) /* modulo 2^32 */
    c->bias_eff[co] =
        (int32_t)((uint32_t)c->bias[co] - (uint32_t)c->in_zp * (uint32_t)c->wsum[co]);
  return 0;
}

eqd_family eqd_conv_family(const eqd_conv* c, int winograd_allowed) {
  if (c->depthwise) return EQD_FAMILY_DWCONV;
  if (winograd_allowed && c->kh == 3 && c->kw == 3 && c->stride_h == 1 &&
      c->stride_w == 1 && c->cin >= 8 && c->cout >= 8 && c->cin <= EQD_WINOGRAD_MAX_CIN)
    return EQD_FAMILY_WINOGRAD;
  return EQD_FAMILY_DIRECT;
}

int eqd_conv_use_kernel(eqd_conv* c, const eqd_kernel* k) {
  if (!k || (k->eligible && !k->eligible(c))) return -1;
  c->kernel = k;
  c->winograd = k->family == EQD_FAMILY_WINOGRAD;
  return k->pack ? k->pack(c) : 0;
}

void eqd_conv_free(eqd_conv* c) {
  if (!c) return;
  if (c->kernel && c->kernel->unpack) c->kernel->unpack(c->kdata);
  free(c->bias);
  free(c->wsum);
  free(c->rq_mult);
  free(c->rq_lshift);
  free(c->rq_rshift);
  free(c->rq_rmask);
  free(c->rq_rthresh);
  free(c->rq_away);
  free(c->bias_eff);
  eqd_aligned_free(c->scratch);
  memset(c, 0, sizeof(*c));
}
