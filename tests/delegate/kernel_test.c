/*
 * kernel_test.c -- per-kernel test harness (in XNNPACK's style): every row
 * of the kernel table that this CPU can run is checked against its family's
 * scalar reference, bit for bit, over a sweep of shapes and parameters:
 *
 *   - output widths and heights 1..9 (leftovers of every micro-tile),
 *   - every channel count 1..17 plus 31/32/33 (each residue mod 4, 8, 16),
 *   - SAME and VALID padding, strides 1 and 2, kernel sizes 1, 2, 3, 5,
 *   - random input zero points, 7-bit (|w| <= 63) and 8-bit weights (with
 *     -128), full-range and 7-bit-ranged (128 levels) inputs,
 *   - every fused activation, all three rounding rules, tie-heavy scales,
 *   - 1 and 2 threads, batch 1 and 2.
 *
 * The reference of the direct and Winograd families is direct_scalar (the
 * plain int32 convolution); that of the depthwise family is dwconv_scalar.
 * The references themselves are checked against TFLite by the Python suites
 * (test_bitexact.py natively, test_aarch64.py under qemu).
 *
 * Build: the delegate sources + this file (tests/delegate/test_kernels.py
 * does it natively and for aarch64).  Usage:
 *     kernel_test [CASES_PER_VARIANT [SEED [perturb]]]
 * Prints one line per variant:
 *     variant NAME isa ISA cases N outputs N mismatches N paths P=n,...
 * and exits 1 on any mismatch.
 *
 * Adding a kernel variant: add its row to kernels.c; this harness picks
 * every row up by itself (add a row to FAMILY_CASES below only for a new
 * family).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eqd_kernel.h"
#include "eqd_threadpool.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void) { /* xorshift64* */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return (uint32_t)((rng_state * 0x2545F4914F6CDD1Dull) >> 32);
}
static int rnd_int(int lo, int hi) { return lo + (int)(rnd() % (uint32_t)(hi - lo + 1)); }
static float rnd_float(float lo, float hi) {
  return lo + (hi - lo) * (float)(rnd() & 0xFFFFFF) / (float)0x1000000;
}
static int pick(const int* v, int n) { return v[rnd() % (uint32_t)n]; }

typedef struct test_case {
  int depthwise, k, stride, same, cin, cout, h, w, batch, nthreads;
  int wbits, in7, act, ties, bits7;
  eqd_rounding rounding;
} test_case;

/* A random case of `family`; index i sweeps channel counts and sizes
 * deterministically so every residue occurs within the first cases. */
static test_case make_case(eqd_family family, int i) {
  static const int extra_ch[] = {31, 32, 33};
  test_case t;
  memset(&t, 0, sizeof(t));
  t.depthwise = family == EQD_FAMILY_DWCONV;
  const int ch_a = i % 20 < 17 ? i % 20 + 1 : extra_ch[i % 20 - 17];
  const int ch_b = (i / 20) % 20 < 17 ? (i / 20) % 20 + 1 : extra_ch[(i / 20) % 20 - 17];
  if (family == EQD_FAMILY_WINOGRAD) {
    t.k = 3, t.stride = 1;
    t.cout = ch_a < 8 ? ch_a + 8 : ch_a; /* Winograd: >= 8 channels */
    t.cin = rnd_int(8, 20);
    if (rnd() % 4 == 0) t.cin = 33;
  } else {
    static const int ks[] = {1, 2, 3, 3, 5};
    t.k = t.depthwise ? pick(ks, 5) : pick(ks, 5);
    t.stride = rnd_int(1, 2);
    t.cout = ch_a;
    t.cin = t.depthwise ? ch_a : (rnd() % 2 ? ch_b : rnd_int(1, 9));
  }
  t.same = rnd() % 2;
  t.h = rnd_int(1, 9);
  t.w = rnd_int(1, 9);
  if (!t.same) {
    t.h += t.k - 1;
    t.w += t.k - 1;
  }
  t.batch = rnd() % 4 == 0 ? 2 : 1;
  t.nthreads = rnd() % 3 == 0 ? 2 : 1;
  t.wbits = rnd() % 2 ? 7 : 8;
  t.in7 = rnd() % 2;
  t.act = rnd_int(0, 3);
  t.ties = rnd() % 3 == 0;
  t.bits7 = rnd() % 4 != 0;
  t.rounding = (eqd_rounding)rnd_int(0, EQD_ROUND_COUNT - 1);
  return t;
}

/* Fills c (geometry, zero points, weights, scales) for case t. */
typedef struct case_data {
  int8_t* w;
  int32_t* bias;
  float* w_scales;
  float in_scale, out_scale;
  int32_t in_zp, out_zp;
  int8_t* in;
  size_t in_n;
} case_data;

static void make_data(const test_case* t, case_data* d) {
  const int taps = t->k * t->k;
  const size_t wn = t->depthwise ? (size_t)taps * t->cout : (size_t)t->cout * taps * t->cin;
  d->w = (int8_t*)malloc(wn);
  d->bias = (int32_t*)malloc(sizeof(int32_t) * (size_t)t->cout);
  d->w_scales = (float*)malloc(sizeof(float) * (size_t)t->cout);
  const int wmax = t->ties ? 3 : (t->wbits == 7 ? 63 : 127);
  for (size_t j = 0; j < wn; ++j) d->w[j] = (int8_t)rnd_int(-wmax, wmax);
  if (t->wbits == 8 && !t->ties && rnd() % 2) d->w[rnd() % wn] = -128;
  d->in_scale = rnd_float(0.01f, 0.1f);
  d->in_zp = rnd_int(-128, 127);
  d->out_zp = rnd_int(-128, 127);
  const int kdepth = t->depthwise ? taps : taps * t->cin;
  for (int c = 0; c < t->cout; ++c) {
    d->bias[c] = t->ties ? rnd_int(-300, 300) : rnd_int(-32768, 32767);
    d->w_scales[c] = t->ties ? 0.01f : rnd_float(0.002f, 0.02f);
  }
  if (t->ties) { /* multiplier in [1/16, 1/2): right shifts of 1..4 bits */
    d->out_scale = d->in_scale * 0.01f / rnd_float(1.0f / 16, 0.5f);
  } else if (rnd() % 10 == 0) { /* effective scale above 1: left shifts */
    d->out_scale = d->in_scale * 0.02f / rnd_float(1.1f, 6.0f);
  } else {
    const float acc_std = 74.0f * (float)wmax / 1.73f * sqrtf((float)kdepth);
    d->out_scale = d->in_scale * 0.011f * acc_std / 40.0f * rnd_float(0.5f, 2.0f);
  }
  d->in_n = (size_t)t->batch * t->h * t->w * t->cin;
  d->in = (int8_t*)malloc(d->in_n);
  const int lo = t->in7 ? rnd_int(-128, 0) : -128;
  const int hi = t->in7 ? lo + 127 : 127;
  for (size_t j = 0; j < d->in_n; ++j) d->in[j] = (int8_t)rnd_int(lo, hi);
}

static void free_data(case_data* d) {
  free(d->w);
  free(d->bias);
  free(d->w_scales);
  free(d->in);
}

/* Sets up c to run case t with kernel k; returns 0 on success. */
static int setup(eqd_conv* c, const test_case* t, const case_data* d, const eqd_kernel* k) {
  memset(c, 0, sizeof(*c));
  c->cin = t->cin;
  c->cout = t->cout;
  c->kh = c->kw = t->k;
  c->stride_h = c->stride_w = t->stride;
  c->padding_same = t->same;
  c->in_zp = d->in_zp;
  c->out_zp = d->out_zp;
  c->depthwise = t->depthwise;
  c->allow_7bit = t->bits7;
  c->w = d->w;
  eqd_activation_range(t->act, d->out_scale, d->out_zp, &c->act_min, &c->act_max);
  if (eqd_conv_init_weights(c, d->bias) != 0) return -1;
  if (eqd_conv_init_requant(c, d->in_scale, d->w_scales, t->cout, d->out_scale,
                            t->rounding) != 0)
    return -1;
  if (eqd_conv_use_kernel(c, k) != 0) return -1;
  return eqd_conv_setup_shape(c, t->batch, t->h, t->w, t->nthreads);
}

typedef struct variant_result {
  long cases, outputs, mismatches, skipped;
  long path_counts[EQD_MAX_PATHS];
} variant_result;

static void print_case(const test_case* t) {
  fprintf(stderr,
          "  case: %s k=%d s=%d %s cin=%d cout=%d h=%d w=%d batch=%d threads=%d wbits=%d "
          "in7=%d act=%d ties=%d bits7=%d rounding=%s\n",
          t->depthwise ? "dw" : "conv", t->k, t->stride, t->same ? "SAME" : "VALID", t->cin,
          t->cout, t->h, t->w, t->batch, t->nthreads, t->wbits, t->in7, t->act, t->ties,
          t->bits7, eqd_rounding_names[t->rounding]);
}

/* Negative control (third argument "perturb"): the variant runs with
 * another rounding rule than the reference, so the harness must report
 * mismatches, proving it can see a one-LSB difference. */
static int perturb = 0;

static void test_variant(const eqd_kernel* k, const eqd_kernel* ref, int ncases,
                         eqd_pool* pool, variant_result* r) {
  memset(r, 0, sizeof(*r));
  for (int i = 0; i < ncases; ++i) {
    const test_case t = make_case(k->family, i);
    case_data d;
    make_data(&t, &d);
    eqd_conv cv, cr;
    if (setup(&cr, &t, &d, ref) != 0) {
      fprintf(stderr, "reference setup failed\n");
      print_case(&t);
      exit(2);
    }
    if (k->eligible && !k->eligible(&cr)) { /* e.g. a shape the variant omits */
      r->skipped++;
      eqd_conv_free(&cr);
      free_data(&d);
      continue;
    }
    test_case tv = t;
    if (perturb) /* a rule that differs on this op (3 = 1 for CONV_2D) */
      tv.rounding = (eqd_rounding)(t.rounding == EQD_ROUND_REFERENCE ? EQD_ROUND_ARM64
                                                                     : EQD_ROUND_REFERENCE);
    if (setup(&cv, &tv, &d, k) != 0) {
      fprintf(stderr, "%s: setup failed\n", k->name);
      print_case(&t);
      exit(2);
    }
    const size_t out_n = (size_t)t.batch * cr.out_h * cr.out_w * t.cout;
    int8_t* o_ref = (int8_t*)malloc(out_n);
    int8_t* o_var = (int8_t*)malloc(out_n);
    memset(o_var, 0x55, out_n);
    eqd_conv_run(&cr, d.in, o_ref, NULL);
    const int path = eqd_conv_run(&cv, d.in, o_var, t.nthreads > 1 ? pool : NULL);
    r->path_counts[path]++;
    long bad = 0;
    for (size_t j = 0; j < out_n; ++j) bad += o_ref[j] != o_var[j];
    if (bad && r->mismatches == 0 && !perturb) {
      fprintf(stderr, "%s: %ld of %zu outputs differ from %s\n", k->name, bad, out_n,
              ref->name);
      print_case(&t);
    }
    r->cases++;
    r->outputs += (long)out_n;
    r->mismatches += bad;
    free(o_ref);
    free(o_var);
    eqd_conv_free(&cv);
    eqd_conv_free(&cr);
    free_data(&d);
  }
}

int main(int argc, char** argv) {
  const int ncases = argc > 1 ? atoi(argv[1]) : 400;
  if (argc > 2) rng_state ^= (uint64_t)strtoull(argv[2], NULL, 10) * 0x100000001B3ull;
  perturb = argc > 3 && !strcmp(argv[3], "perturb");
  const uint32_t have = eqd_cpu_features();
  const eqd_kernel* refs[EQD_FAMILY_COUNT] = {&eqd_kernel_direct_scalar,
                                              &eqd_kernel_direct_scalar,
                                              &eqd_kernel_dwconv_scalar};
  eqd_pool* pool = eqd_pool_create(2);
  printf("cpu %s\n", eqd_isa_name(have));
  int failed = 0;
  for (int i = 0; i < eqd_n_kernels; ++i) {
    const eqd_kernel* k = eqd_kernels[i];
    if (k == refs[k->family]) continue;
    if ((k->cpu_features & ~have) != 0) {
      printf("variant %s isa %s unavailable\n", k->name, k->isa);
      continue;
    }
    variant_result r;
    test_variant(k, refs[k->family], ncases, pool, &r);
    printf("variant %s isa %s cases %ld outputs %ld mismatches %ld skipped %ld paths ",
           k->name, k->isa, r.cases, r.outputs, r.mismatches, r.skipped);
    int first = 1;
    for (int p = 0; p < EQD_MAX_PATHS && k->paths[p]; ++p) {
      printf("%s%s=%ld", first ? "" : ",", k->paths[p], r.path_counts[p]);
      first = 0;
    }
    printf("\n");
    failed |= r.mismatches != 0;
  }
  eqd_pool_destroy(pool);
  return failed;
}
