/* Fused loops of the calibration search (eq_tflite/native.py): the per-candidate
 * fake quantization, product, bias, activation and cosine sums that numpy runs as
 * five to eight passes over a layer's sampled rows run here as one.
 *
 * Exactness: every float32 operation is the one numpy performs, in the same
 * order (x / s, round half to even, clip, * s; a depthwise output sums its taps
 * k = 0, 1, ... in float32 like np.einsum; bias, then the activation's clip), so
 * the quantized rows and layer outputs are bit-identical with numpy's. The
 * cosine sums are float64 like numpy's, each sample's summed in one fixed order
 * (row by row, channel by channel) whatever the thread count; numpy's einsum sums
 * in another order, so scores may differ from it in the last bits.
 * Built with -ffp-contract=off (no fused multiply-add) and without -ffast-math.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define EQS_EXPORT __attribute__((visibility("default")))

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
/* One build for every x86-64 CPU: the loader picks the widest clone (rounding
 * vectorizes from SSE4.1 on). The results do not depend on the clone. */
#define EQS_CLONES __attribute__((target_clones("avx512f", "avx2", "sse4.1", "default")))
#else
#define EQS_CLONES
#endif

#define EQS_MAX_THREADS 64

static inline float fake_quant(float x, float s, float lo, float hi, int scale_back) {
  float q = rintf(x / s);
  q = q < lo ? lo : q;
  q = q > hi ? hi : q;
  return scale_back ? q * s : q;
}

/* ---- a minimal parallel for over [0, n): contiguous ranges, one per thread ---- */

/* fn(ctx, begin, end, part): part numbers the ranges 0, 1, ... (per-part results) */
typedef void (*range_fn)(void *ctx, int64_t begin, int64_t end, int part);

typedef struct {
  range_fn fn;
  void *ctx;
  int64_t begin, end;
  int part;
} job;

static void *run_job(void *arg) {
  job *j = (job *)arg;
  j->fn(j->ctx, j->begin, j->end, j->part);
  return NULL;
}

/* How many ranges parallel_for splits [0, n) into: at most `threads`, EQS_MAX_THREADS and
 * the number of `grain`-sized units (at least 1). */
static int parts_of(int64_t n, int64_t grain, int threads) {
  const int64_t units = (n + (grain < 1 ? 1 : grain) - 1) / (grain < 1 ? 1 : grain);
  if (threads > EQS_MAX_THREADS) threads = EQS_MAX_THREADS;
  if (threads > units) threads = (int)units;
  return threads < 1 ? 1 : threads;
}

/* Runs fn over [0, n) in parts_of(n, grain, threads) contiguous ranges, one per thread,
 * split only on multiples of `grain`; returns that number. A thread that cannot start
 * runs on the caller. */
static int parallel_for(range_fn fn, void *ctx, int64_t n, int64_t grain, int threads) {
  if (grain < 1) grain = 1;
  const int64_t units = (n + grain - 1) / grain;
  threads = parts_of(n, grain, threads);
  if (threads == 1) {
    if (n > 0) fn(ctx, 0, n, 0);
    return 1;
  }
  job jobs[EQS_MAX_THREADS];
  pthread_t ids[EQS_MAX_THREADS];
  int started[EQS_MAX_THREADS];
  for (int t = 0; t < threads; ++t) {
    int64_t b = units * t / threads * grain, e = units * (t + 1) / threads * grain;
    jobs[t] = (job){fn, ctx, b, e < n ? e : n, t};
  }
  for (int t = 1; t < threads; ++t)
    started[t] = pthread_create(&ids[t], NULL, run_job, &jobs[t]) == 0;
  run_job(&jobs[0]);
  for (int t = 1; t < threads; ++t) {
    if (started[t]) pthread_join(ids[t], NULL);
    else run_job(&jobs[t]);
  }
  return threads;
}

/* ---- fake quantization ---- */

typedef struct {
  const float *x;
  float *out;
  float s, lo, hi;
  int scale_back;
} fq_ctx;

EQS_CLONES static void fq_range(void *p, int64_t b, int64_t e, int part) {
  const fq_ctx *c = (const fq_ctx *)p;
  const float s = c->s, lo = c->lo, hi = c->hi;
  const float *x = c->x;
  float *out = c->out;
  if (c->scale_back) {
    for (int64_t i = b; i < e; ++i) out[i] = fake_quant(x[i], s, lo, hi, 1);
  } else {
    for (int64_t i = b; i < e; ++i) out[i] = fake_quant(x[i], s, lo, hi, 0);
  }
}

/* out[i] = clip(rint(x[i] / s), lo, hi) (* s when scale_back), for n floats. */
EQS_EXPORT void eqs_fake_quant(const float *x, float *out, int64_t n, float s, float lo,
                               float hi, int scale_back, int threads) {
  fq_ctx c = {x, out, s, lo, hi, scale_back};
  parallel_for(fq_range, &c, n, 1 << 14, n >= (1 << 18) ? threads : 1);
}

/* ---- cosine parts of layer outputs ---- */

/* Bias and activation on one output row (c values), then its float64 dot and norm
 * sums: into *dot / *norm (per_channel 0) or into dot[j] / norm[j] (per_channel 1). */
static inline void finish_row(const float *acc, const float *bias, const float *t, int64_t c,
                              float act_lo, float act_hi, double *dot, double *norm,
                              int per_channel) {
  if (per_channel) {
    for (int64_t j = 0; j < c; ++j) {
      float v = bias ? acc[j] + bias[j] : acc[j];
      v = v < act_lo ? act_lo : v;
      v = v > act_hi ? act_hi : v;
      dot[j] += (double)v * (double)t[j];
      norm[j] += (double)v * (double)v;
    }
    return;
  }
  double d = *dot, n = *norm;
  for (int64_t j = 0; j < c; ++j) {
    float v = bias ? acc[j] + bias[j] : acc[j];
    v = v < act_lo ? act_lo : v;
    v = v > act_hi ? act_hi : v;
    d += (double)v * (double)t[j];
    n += (double)v * (double)v;
  }
  *dot = d;
  *norm = n;
}

/* acc[c] = sum over taps k (in order) of fq(x[k, c]) * w[k, c] (w rows `w_stride` apart). */
static inline void depthwise_row(const float *x, const float *w, int64_t w_stride, int64_t k,
                                 int64_t c, float s, float lo, float hi, int quantize,
                                 float *acc) {
  for (int64_t j = 0; j < c; ++j) acc[j] = 0.0f;
  for (int64_t tap = 0; tap < k; ++tap) {
    const float *xt = x + tap * c, *wt = w + tap * w_stride;
    if (quantize) {
      for (int64_t j = 0; j < c; ++j) acc[j] = acc[j] + fake_quant(xt[j], s, lo, hi, 1) * wt[j];
    } else {
      for (int64_t j = 0; j < c; ++j) acc[j] = acc[j] + xt[j] * wt[j];
    }
  }
}

typedef struct {
  const float *x;       /* depthwise rows (rows, k, c), or NULL */
  const float *w;       /* depthwise: (k, c) weights, or (k, J, c) candidate weights */
  const float *y;       /* plain: products (rows, c) or (rows, J, c), or NULL */
  const float *bias;    /* (J, c), or NULL */
  const float *t;       /* (rows, c) target */
  const float *scales, *lo, *hi;  /* input candidates (J), sample scores */
  int64_t rows, per_sample, k, c, cands;
  float act_lo, act_hi;
  double *dot, *norm;   /* (J, samples) or (J, c) */
} score_ctx;

/* Sample scores: every input candidate j on samples [b, e), row by row (a row is
 * read once for all candidates). Each (j, sample) sums its rows in order. */
EQS_CLONES static void sample_range(void *p, int64_t b, int64_t e, int part) {
  const score_ctx *c = (const score_ctx *)p;
  const int64_t ch = c->c, k = c->k, nj = c->cands, samples = c->rows / c->per_sample;
  float *acc = (float *)malloc(sizeof(float) * (size_t)(ch > 0 ? ch : 1));
  double *d = (double *)malloc(sizeof(double) * (size_t)(2 * nj));
  if (!acc || !d) {
    for (int64_t s = b; s < e; ++s)
      for (int64_t j = 0; j < nj; ++j) c->dot[j * samples + s] = c->norm[j * samples + s] = NAN;
    free(acc);
    free(d);
    return;
  }
  double *n = d + nj;
  for (int64_t s = b; s < e; ++s) {
    for (int64_t j = 0; j < nj; ++j) d[j] = n[j] = 0.0;
    for (int64_t r = s * c->per_sample; r < (s + 1) * c->per_sample; ++r) {
      const float *t = c->t + r * ch;
      for (int64_t j = 0; j < nj; ++j) {
        const float *out = acc;
        if (c->x)
          depthwise_row(c->x + r * k * ch, c->w, ch, k, ch, c->scales[j], c->lo[j], c->hi[j], 1,
                        acc);
        else
          out = c->y + r * ch;
        finish_row(out, c->bias ? c->bias + j * ch : NULL, t, ch, c->act_lo, c->act_hi, &d[j],
                   &n[j], 0);
      }
    }
    for (int64_t j = 0; j < nj; ++j) {
      c->dot[j * samples + s] = d[j];
      c->norm[j * samples + s] = n[j];
    }
  }
  free(acc);
  free(d);
}

/* Channel scores: candidate weights j in [b, e) over every row; dot[j, c] sums its
 * rows in order. Depthwise: out = sum_k fq(x[r, k, c]) * w[k, j, c] (x already
 * quantized: no fq); plain: y[r, j, c]. */
EQS_CLONES static void channel_range(void *p, int64_t b, int64_t e, int part) {
  const score_ctx *c = (const score_ctx *)p;
  const int64_t ch = c->c, k = c->k, nj = c->cands;
  float *acc = (float *)malloc(sizeof(float) * (size_t)(ch > 0 ? ch : 1));
  if (!acc) {
    for (int64_t i = b * ch; i < e * ch; ++i) c->dot[i] = c->norm[i] = NAN;
    return;
  }
  for (int64_t i = b * ch; i < e * ch; ++i) c->dot[i] = c->norm[i] = 0.0;
  for (int64_t r = 0; r < c->rows; ++r) {
    const float *t = c->t + r * ch;
    for (int64_t j = b; j < e; ++j) {
      const float *out = acc;
      if (c->x)
        depthwise_row(c->x + r * k * ch, c->w + j * ch, nj * ch, k, ch, 1.0f, 0.0f, 0.0f, 0, acc);
      else
        out = c->y + (r * nj + j) * ch;
      finish_row(out, c->bias ? c->bias + j * ch : NULL, t, ch, c->act_lo, c->act_hi,
                 c->dot + j * ch, c->norm + j * ch, 1);
    }
  }
  free(acc);
}

/* Per-sample (dot, norm) (J, samples) of a layer's output with target t for J input
 * candidates. Depthwise (x not NULL; multiplier 1): out = act(sum_k fq_j(x[:, k, :]) * w[k]
 * + bias_j) with fq_j = (scales[j], lo[j], hi[j]); else out = act(y + bias_j), J = 1
 * (y is that candidate's product). bias: (J, c) or NULL. */
EQS_EXPORT void eqs_sample_scores(const float *x, const float *w, const float *y,
                                  const float *bias, const float *t, int64_t rows,
                                  int64_t per_sample, int64_t k, int64_t c, int64_t cands,
                                  const float *scales, const float *lo, const float *hi,
                                  float act_lo, float act_hi, double *dot, double *norm,
                                  int threads) {
  score_ctx ctx = {x, w, y, bias, t, scales, lo, hi, rows, per_sample, k, c, cands,
                   act_lo, act_hi, dot, norm};
  parallel_for(sample_range, &ctx, per_sample > 0 ? rows / per_sample : 0, 1, threads);
}

/* Per-channel (dot, norm) (J, c) over all rows for J candidate weight matrices:
 * depthwise (x: quantized rows (rows, k, c), w: (k, J, c)) or products y (rows, J, c). */
EQS_EXPORT void eqs_channel_scores(const float *x, const float *w, const float *y,
                                   const float *bias, const float *t, int64_t rows, int64_t k,
                                   int64_t c, int64_t cands, float act_lo, float act_hi,
                                   double *dot, double *norm, int threads) {
  score_ctx ctx = {x, w, y, bias, t, NULL, NULL, NULL, rows, 1, k, c, cands,
                   act_lo, act_hi, dot, norm};
  parallel_for(channel_range, &ctx, cands, 1, threads);
}

/* ---- Gram matrices of depthwise rows ---- */

typedef struct {
  const float *x;  /* (rows, k, c) */
  double *out;     /* (k, k, c) */
  int64_t rows, k, c;
} gram_ctx;

#define EQS_GRAM_CH 64    /* channels per block: a block's float32 sums stay in L1 */
#define EQS_GRAM_ROWS 256 /* rows per exact float32 partial sum (|q| <= 255: < 2**24) */

EQS_CLONES static void gram_range(void *p, int64_t b, int64_t e, int part) {
  const gram_ctx *g = (const gram_ctx *)p;
  const int64_t k = g->k, c = g->c, pairs = k * (k + 1) / 2;
  float *acc = (float *)malloc(sizeof(float) * (size_t)(pairs * EQS_GRAM_CH));
  double *sum = (double *)malloc(sizeof(double) * (size_t)(pairs * EQS_GRAM_CH));
  if (!acc || !sum) {
    for (int64_t i = 0; i < k * k; ++i)
      for (int64_t ch = b; ch < e; ++ch) g->out[i * c + ch] = NAN;
    free(acc);
    free(sum);
    return;
  }
  for (int64_t c0 = b; c0 < e; c0 += EQS_GRAM_CH) {
    const int64_t n = e - c0 < EQS_GRAM_CH ? e - c0 : EQS_GRAM_CH;
    for (int64_t q = 0; q < pairs * EQS_GRAM_CH; ++q) sum[q] = 0.0;
    for (int64_t r0 = 0; r0 < g->rows; r0 += EQS_GRAM_ROWS) {
      const int64_t r1 = r0 + EQS_GRAM_ROWS < g->rows ? r0 + EQS_GRAM_ROWS : g->rows;
      for (int64_t q = 0; q < pairs * EQS_GRAM_CH; ++q) acc[q] = 0.0f;
      for (int64_t r = r0; r < r1; ++r) {
        const float *x = g->x + r * k * c + c0;
        float *a = acc;
        for (int64_t i = 0; i < k; ++i)
          for (int64_t j = i; j < k; ++j, a += EQS_GRAM_CH) {
            const float *xi = x + i * c, *xj = x + j * c;
            for (int64_t ch = 0; ch < n; ++ch) a[ch] += xi[ch] * xj[ch];
          }
      }
      for (int64_t q = 0; q < pairs * EQS_GRAM_CH; ++q) sum[q] += (double)acc[q];
    }
    int64_t q = 0;
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = i; j < k; ++j, ++q)
        for (int64_t ch = 0; ch < n; ++ch)
          g->out[(i * k + j) * c + c0 + ch] = g->out[(j * k + i) * c + c0 + ch] =
              sum[q * EQS_GRAM_CH + ch];
  }
  free(acc);
  free(sum);
}

/* out[i, j, c] = sum_r x[r, i, c] * x[r, j, c] in float64, for x holding integers of
 * magnitude <= 255 (quantized rows): exact, so equal to any exact summation. */
EQS_EXPORT void eqs_depthwise_gram(const float *x, int64_t rows, int64_t k, int64_t c,
                                   double *out, int threads) {
  gram_ctx g = {x, out, rows, k, c};
  parallel_for(gram_range, &g, c, EQS_GRAM_CH, threads);
}

/* ---- weight candidates ---- */

typedef struct {
  const float *w;       /* (k, c) */
  const double *scales; /* (J, c) step sizes */
  float *out;           /* (k, J, c) */
  int64_t c, cands;
  double qmax;
} wq_ctx;

EQS_CLONES static void weights_range(void *p, int64_t b, int64_t e, int part) {
  const wq_ctx *g = (const wq_ctx *)p;
  const int64_t c = g->c, nj = g->cands;
  for (int64_t r = b; r < e; ++r) {
    const float *w = g->w + r * c;
    for (int64_t j = 0; j < nj; ++j) {
      const double *s = g->scales + j * c;
      float *o = g->out + (r * nj + j) * c;
      for (int64_t ch = 0; ch < c; ++ch) {
        double q = s[ch] > 0 ? rint((double)w[ch] / s[ch]) : 0.0;
        q = q < -g->qmax ? -g->qmax : q;
        q = q > g->qmax ? g->qmax : q;
        o[ch] = (float)(q * s[ch]);
      }
    }
  }
}

/* out[k, j, c] = clip(rint(w[k, c] / s[j, c]), +-(2**(bits-1) - 1)) * s[j, c] in float64,
 * stored as float32 (0 where s <= 0): grid.fake_quant_weights of every candidate. */
EQS_EXPORT void eqs_fake_quant_weights(const float *w, int64_t k, int64_t c,
                                       const double *scales, int64_t cands, int bits, float *out,
                                       int threads) {
  wq_ctx g = {w, scales, out, c, cands, (double)((1 << (bits - 1)) - 1)};
  parallel_for(weights_range, &g, k, 8, k * cands * c >= (1 << 16) ? threads : 1);
}

/* ---- tails of a tensor ---- */

#define EQS_TAIL_GRAIN (1 << 16)

typedef struct {
  const float *x;
  float *out;        /* NULL: count only */
  float lo, hi;
  int64_t counts[EQS_MAX_THREADS];
  int64_t starts[EQS_MAX_THREADS];
} tail_ctx;

static void tail_range(void *p, int64_t b, int64_t e, int part) {
  tail_ctx *g = (tail_ctx *)p;
  const float lo = g->lo, hi = g->hi, *x = g->x;
  if (!g->out) {
    int64_t n = 0;
    for (int64_t i = b; i < e; ++i) n += (x[i] < lo) | (x[i] > hi);
    g->counts[part] = n;
  } else {
    float *o = g->out + g->starts[part];
    for (int64_t i = b; i < e; ++i)
      if (x[i] < lo || x[i] > hi) *o++ = x[i];
  }
}

/* The values of x (n floats) below lo or above hi, in order, into out (which must
 * hold them; out NULL: only count). Returns how many there are. */
EQS_EXPORT int64_t eqs_tails(const float *x, int64_t n, float lo, float hi, float *out,
                             int threads) {
  tail_ctx g = {x, NULL, lo, hi, {0}, {0}};
  const int parts = parallel_for(tail_range, &g, n, EQS_TAIL_GRAIN, threads);
  int64_t total = 0;
  for (int t = 0; t < parts; ++t) {
    g.starts[t] = total;
    total += g.counts[t];
  }
  if (out) {  /* the same split: each part writes where its count says */
    g.out = out;
    parallel_for(tail_range, &g, n, EQS_TAIL_GRAIN, threads);
  }
  return total;
}

/* ---- im2col rows at sampled output positions ---- */

typedef struct {
  const float *x;  /* (n, h, w, c) */
  const int64_t *sample, *oy, *ox;
  float *out;      /* (rows, kh, kw, c) */
  int64_t h, w, c, kh, kw, sh, sw, dh, dw, pt, pl;
  float pad;
} gather_ctx;

static void gather_range(void *p, int64_t b, int64_t e, int part) {
  const gather_ctx *g = (const gather_ctx *)p;
  const int64_t c = g->c;
  for (int64_t r = b; r < e; ++r) {
    float *o = g->out + r * g->kh * g->kw * c;
    const float *xs = g->x + g->sample[r] * g->h * g->w * c;
    for (int64_t i = 0; i < g->kh; ++i) {
      const int64_t y = g->oy[r] * g->sh + i * g->dh - g->pt;
      for (int64_t j = 0; j < g->kw; ++j, o += c) {
        const int64_t xx = g->ox[r] * g->sw + j * g->dw - g->pl;
        if (y < 0 || y >= g->h || xx < 0 || xx >= g->w) {
          for (int64_t ch = 0; ch < c; ++ch) o[ch] = g->pad;
        } else {
          memcpy(o, xs + (y * g->w + xx) * c, sizeof(float) * (size_t)c);
        }
      }
    }
  }
}

/* Receptive fields (rows, kh, kw, c) of an NHWC float32 tensor at output positions
 * (sample[r], oy[r], ox[r]): input row oy*sh + i*dh - pt, column ox*sw + j*dw - pl,
 * pad outside the tensor. Positions must lie in the output. */
EQS_EXPORT void eqs_gather_windows(const float *x, int64_t h, int64_t w, int64_t c,
                                   const int64_t *sample, const int64_t *oy, const int64_t *ox,
                                   int64_t rows, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                                   int64_t dh, int64_t dw, int64_t pt, int64_t pl, float pad,
                                   float *out, int threads) {
  gather_ctx g = {x, sample, oy, ox, out, h, w, c, kh, kw, sh, sw, dh, dw, pt, pl, pad};
  parallel_for(gather_range, &g, rows, 64, rows * kh * kw * c >= (1 << 16) ? threads : 1);
}

/* ---- Gram-matrix scores of weight candidates ---- */

typedef struct {
  const float *w;        /* (k, J, c) candidate weights */
  const double *xy;      /* (k, c) */
  const float *gw32;     /* (k, J, c) G w, or NULL */
  const double *gw64;    /* (k, J, c) G w, or NULL */
  const double *x_sum;   /* (k) or (k, c) */
  int64_t k, cands, c;
  int per_channel_sum;   /* x_sum is (k, c) */
  double *dot, *norm, *xw;  /* (J, c) */
} parts_ctx;

EQS_CLONES static void parts_range(void *p, int64_t b, int64_t e, int part) {
  const parts_ctx *g = (const parts_ctx *)p;
  const int64_t c = g->c, nj = g->cands;
  for (int64_t j = b; j < e; ++j) {
    double *dot = g->dot + j * c, *norm = g->norm + j * c, *xw = g->xw + j * c;
    for (int64_t ch = 0; ch < c; ++ch) dot[ch] = norm[ch] = xw[ch] = 0.0;
    for (int64_t kk = 0; kk < g->k; ++kk) {
      const float *w = g->w + (kk * nj + j) * c;
      const double *xy = g->xy + kk * c;
      const double *xs = g->per_channel_sum ? g->x_sum + kk * c : NULL;
      const double xk = g->per_channel_sum ? 0.0 : g->x_sum[kk];
      if (g->gw32) {
        const float *gw = g->gw32 + (kk * nj + j) * c;
        for (int64_t ch = 0; ch < c; ++ch) norm[ch] += (double)w[ch] * (double)gw[ch];
      } else {
        const double *gw = g->gw64 + (kk * nj + j) * c;
        for (int64_t ch = 0; ch < c; ++ch) norm[ch] += (double)w[ch] * gw[ch];
      }
      for (int64_t ch = 0; ch < c; ++ch) {
        dot[ch] += (double)w[ch] * xy[ch];
        xw[ch] += (xs ? xs[ch] : xk) * (double)w[ch];
      }
    }
  }
}

/* For candidate weights w (k, J, c): dot[j, c] = sum_k w xy[k, c], norm[j, c] = sum_k w gw,
 * xw[j, c] = sum_k x_sum w (x_sum (k) or, per_channel_sum, (k, c)); float64, k in order. */
EQS_EXPORT void eqs_gram_parts(const float *w, const double *xy, const float *gw32,
                               const double *gw64, const double *x_sum, int per_channel_sum,
                               int64_t k, int64_t cands, int64_t c, double *dot, double *norm,
                               double *xw, int threads) {
  parts_ctx g = {w, xy, gw32, gw64, x_sum, k, cands, c, per_channel_sum, dot, norm, xw};
  parallel_for(parts_range, &g, cands, 1, threads);
}

/* ---- histograms ---- */

typedef struct {
  const float *x;
  const double *edges;  /* bins + 1 */
  int64_t bins;
  double first, last, inv;
  int64_t *counts;      /* (parts, bins) */
} hist_ctx;

static void hist_range(void *p, int64_t b, int64_t e, int part) {
  const hist_ctx *g = (const hist_ctx *)p;
  int64_t *counts = g->counts + part * g->bins;
  const double *edges = g->edges;
  const int64_t last_bin = g->bins - 1;
  for (int64_t i = b; i < e; ++i) {
    const double v = g->x[i];
    if (!(v >= g->first && v <= g->last)) continue;
    int64_t k = (int64_t)((v - edges[0]) * g->inv);
    k = k < 0 ? 0 : (k > last_bin ? last_bin : k);
    while (k > 0 && v < edges[k]) --k;
    while (k < last_bin && v >= edges[k + 1]) ++k;
    ++counts[k];
  }
}

/* counts[k] += number of x in [edges[k], edges[k + 1]) (the last bin also takes its right
 * edge), for x in [first, last]: np.histogram with these edges. -1: out of memory. */
EQS_EXPORT int eqs_histogram(const float *x, int64_t n, const double *edges, int64_t bins,
                             double first, double last, int64_t *counts, int threads) {
  const int64_t grain = 1 << 16;
  const int parts = parts_of(n, grain, threads);
  hist_ctx g = {x, edges, bins, first, last,
                edges[bins] > edges[0] ? (double)bins / (edges[bins] - edges[0]) : 0.0,
                (int64_t *)calloc((size_t)(parts * bins), sizeof(int64_t))};
  if (!g.counts) return -1;
  parallel_for(hist_range, &g, n, grain, parts);
  for (int t = 0; t < parts; ++t)
    for (int64_t k = 0; k < bins; ++k) counts[k] += g.counts[t * bins + k];
  free(g.counts);
  return 0;
}

/* ---- whole depthwise layers ---- */

typedef struct {
  const float *x;  /* (n, h, w, c) */
  const float *wt; /* (kh * kw, c * m) */
  float *out;      /* (n, ho, wo, c * m) */
  int64_t h, w, c, m, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo;
} dwconv_ctx;

EQS_CLONES static void dwconv_range(void *p, int64_t b, int64_t e, int part) {
  const dwconv_ctx *g = (const dwconv_ctx *)p;
  const int64_t c = g->c, m = g->m, cm = c * m;
  for (int64_t row = b; row < e; ++row) {  /* row = sample * ho + oy */
    const int64_t s = row / g->ho, oy = row % g->ho;
    const float *xs = g->x + s * g->h * g->w * c;
    for (int64_t ox = 0; ox < g->wo; ++ox) {
      float *acc = g->out + (row * g->wo + ox) * cm;
      for (int64_t j = 0; j < cm; ++j) acc[j] = 0.0f;
      for (int64_t i = 0; i < g->kh; ++i) {
        const int64_t y = oy * g->sh + i * g->dh - g->pt;
        for (int64_t jj = 0; jj < g->kw; ++jj) {
          const int64_t xx = ox * g->sw + jj * g->dw - g->pl;
          const float *wt = g->wt + (i * g->kw + jj) * cm;
          const int inside = y >= 0 && y < g->h && xx >= 0 && xx < g->w;
          const float *xv = inside ? xs + (y * g->w + xx) * c : NULL;
          if (m == 1) {
            if (inside)
              for (int64_t j = 0; j < c; ++j) acc[j] = acc[j] + xv[j] * wt[j];
            else
              for (int64_t j = 0; j < c; ++j) acc[j] = acc[j] + 0.0f * wt[j];
          } else {
            for (int64_t j = 0; j < c; ++j) {
              const float v = inside ? xv[j] : 0.0f;
              for (int64_t q = 0; q < m; ++q) acc[j * m + q] = acc[j * m + q] + v * wt[j * m + q];
            }
          }
        }
      }
    }
  }
}

/* A depthwise convolution (multiplier m) of NHWC float32 x, zero padding (pt, pl before),
 * every output position, float32, taps summed in order: out = sum_k x_k * w_k. */
EQS_EXPORT void eqs_depthwise_conv(const float *x, int64_t n, int64_t h, int64_t w, int64_t c,
                                   int64_t m, const float *wt, int64_t kh, int64_t kw,
                                   int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t pt,
                                   int64_t pl, int64_t ho, int64_t wo, float *out, int threads) {
  dwconv_ctx g = {x, wt, out, h, w, c, m, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo};
  parallel_for(dwconv_range, &g, n * ho, 1, n * ho * wo * c * m >= (1 << 15) ? threads : 1);
}

/* ---- Bit-Split's plane step ---- */

typedef struct {
  const double *h;     /* (k, k) shared or (k, k, c) per channel */
  const double *diag;  /* (k, c) per channel or (k) shared */
  const double *g;     /* (k, c) */
  double *hq;          /* (k, c), updated */
  const double *alpha; /* (c) */
  int8_t *plane;       /* (k, c), updated */
  int64_t *q;          /* (k, c), updated */
  const uint8_t *free_; /* (k, c) or NULL */
  double p;
  int64_t k, c;
  int per_channel;
  int64_t changed[EQS_MAX_THREADS];
} plane_ctx;

static void plane_range(void *arg, int64_t b, int64_t e, int part) {
  plane_ctx *g = (plane_ctx *)arg;
  const int64_t k = g->k, c = g->c, n = e - b;
  double *d = (double *)malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
  int64_t *moved = (int64_t *)malloc(sizeof(int64_t) * (size_t)(n > 0 ? n : 1));
  if (!d || !moved) {
    free(d);
    free(moved);
    g->changed[part] = -1;
    return;
  }
  int64_t changed = 0;
  const double p = g->p;
  for (int64_t kk = 0; kk < k; ++kk) {
    int64_t m = 0;  /* channels of this range that moved at entry kk */
    for (int64_t ch = b; ch < e; ++ch) {
      const double a = g->alpha[ch], a2 = a * a;
      const double curv = a2 * (g->per_channel ? g->diag[kk * c + ch] : g->diag[kk]);
      const double grad = a2 * g->hq[kk * c + ch] - a * g->g[kk * c + ch];
      const double pl = (double)g->plane[kk * c + ch];
      double target = rint(pl - grad / (curv * p));
      target = target < -1.0 ? -1.0 : (target > 1.0 ? 1.0 : target);
      if (isnan(target)) target = 0.0;
      double dv = p * (target - pl);
      const double gain = 2 * dv * grad + curv * dv * dv;
      const int move = dv != 0 && curv > 0 && gain < 0 && (!g->free_ || g->free_[kk * c + ch]);
      if (!move) dv = 0.0;
      d[ch - b] = dv;
      if (move) {
        g->plane[kk * c + ch] = (int8_t)(g->plane[kk * c + ch] + (int8_t)(dv / p));
        g->q[kk * c + ch] += (int64_t)dv;
        moved[m++] = ch;
      }
    }
    changed += m;
    if (!m) continue;
    /* hq[:, ch] += H[:, kk](, ch) * d[ch] on the channels that moved: K x moved, not K x C */
    for (int64_t j = 0; j < k; ++j) {
      double *hq = g->hq + j * c;
      const double *col = g->per_channel ? g->h + (j * k + kk) * c : NULL;
      const double hjk = g->per_channel ? 0.0 : g->h[j * k + kk];
      for (int64_t i = 0; i < m; ++i) {
        const int64_t ch = moved[i];
        hq[ch] = hq[ch] + (col ? col[ch] : hjk) * d[ch - b];
      }
    }
  }
  free(moved);
  free(d);
  g->changed[part] = changed;
}

/* One Bit-Split plane step (eq_tflite/methods/bitsplit.py, _plane_step): for k in order,
 * each channel's exact minimization over plane entry (k, c), updating plane, q and hq.
 * Channels are independent, so they run in parallel. Returns the entries changed, or -1
 * when out of memory (nothing is then consistent: the caller raises). */
EQS_EXPORT int64_t eqs_plane_step(const double *h, int per_channel, const double *diag,
                                  const double *g, double *hq, const double *alpha,
                                  int8_t *plane, int64_t *q, const uint8_t *free_, double p,
                                  int64_t k, int64_t c, int threads) {
  plane_ctx ctx = {h, diag, g, hq, alpha, plane, q, free_, p, k, c, per_channel, {0}};
  const int parts = parallel_for(plane_range, &ctx, c, 8, k * k * c < (1 << 14) ? 1 : threads);
  int64_t total = 0;
  for (int t = 0; t < parts; ++t) {
    if (ctx.changed[t] < 0) return -1;
    total += ctx.changed[t];
  }
  return total;
}
