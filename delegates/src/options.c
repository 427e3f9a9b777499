/*
 * options.c -- the delegate's options: every value arrives as a string
 * (TFLite's external-delegate API); unknown keys and bad values are
 * reported in one line and make delegate creation fail.
 *
 * Numbers are written as an optional '-' followed by decimal digits, and
 * nothing else: no sign '+', no surrounding whitespace (" 2" and "2 " are
 * both rejected, as are "builtin " and other padded words).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eqd_delegate.h"

void eqd_report(void (*report_error)(const char*), const char* fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  if (report_error) report_error(msg);
  else fprintf(stderr, EQD_LOG_PREFIX "%s\n", msg);
}

static int parse_int(const char* s, long lo, long hi, int* out) {
  if (!s) return -1;
  const char* p = s + (*s == '-');
  if (*p < '0' || *p > '9' || strlen(p) > 9) return -1; /* no overflow below */
  long v = 0;
  for (; *p; ++p) {
    if (*p < '0' || *p > '9') return -1;
    v = 10 * v + (*p - '0');
  }
  if (*s == '-') v = -v;
  if (v < lo || v > hi) return -1;
  *out = (int)v;
  return 0;
}

int eqd_parse_options(char** keys, char** values, size_t n, eqd_options* o,
                         void (*report_error)(const char*)) {
  o->debug = 0;
  o->winograd = 1;
  o->depthwise = 1;
  o->bits = 7;
  o->num_threads = -1;
  o->features = eqd_cpu_features();
  o->record_layout = 0;
  o->rounding = EQD_ROUND_NATIVE;
  o->policy = EQD_POLICY_FASTEST;
  for (size_t i = 0; i < n; ++i) {
    const char* k = keys ? keys[i] : NULL;
    const char* v = values ? values[i] : NULL;
    if (!k || !v) {
      eqd_report(report_error, "option %zu has a NULL key or value", i);
      return -1;
    }
    int bad = 0;
    if (!strcmp(k, "debug")) bad = parse_int(v, 0, 1, &o->debug);
    else if (!strcmp(k, "winograd")) bad = parse_int(v, 0, 1, &o->winograd);
    else if (!strcmp(k, "depthwise")) bad = parse_int(v, 0, 1, &o->depthwise);
    else if (!strcmp(k, "record_layout")) bad = parse_int(v, 0, 1, &o->record_layout);
    else if (!strcmp(k, "bits")) {
      bad = parse_int(v, 7, 8, &o->bits);
    } else if (!strcmp(k, "num_threads")) {
      bad = parse_int(v, -1, 64, &o->num_threads);
      if (!bad && o->num_threads == 0) bad = 1;
    } else if (!strcmp(k, "rounding")) {
      if (!strcmp(v, "builtin")) o->rounding = EQD_ROUND_NATIVE;
      else if (!strcmp(v, "reference")) o->rounding = EQD_ROUND_REFERENCE;
      else if (!strcmp(v, "builtin-x86")) o->rounding = EQD_ROUND_X86;
      else if (!strcmp(v, "builtin-arm64")) o->rounding = EQD_ROUND_ARM64;
      else if (!strcmp(v, "tflite-runtime-2.14")) o->rounding = EQD_ROUND_TFLITE214;
      else bad = 1;
    } else if (!strcmp(k, "policy")) {
      if (!strcmp(v, "fastest")) o->policy = EQD_POLICY_FASTEST;
      else if (!strcmp(v, "all")) o->policy = EQD_POLICY_ALL;
      else bad = 1;
    } else if (!strcmp(k, "isa")) {
      /* The kernels may use exactly these features (and the CPU must have
       * them): the table then picks the best eligible row among them. */
      static const struct {
        const char* name;
        uint32_t features;
      } isas[] = {{"scalar", 0},
                  {"avx2", EQD_CPU_AVX2},
                  {"neon", EQD_CPU_NEON},
                  {"neon-dotprod", EQD_CPU_NEON | EQD_CPU_DOTPROD}};
      const uint32_t have = eqd_cpu_features();
      bad = 1;
      if (!strcmp(v, "auto")) {
        o->features = have;
        bad = 0;
      }
      for (size_t j = 0; j < sizeof(isas) / sizeof(isas[0]); ++j) {
        if (strcmp(v, isas[j].name)) continue;
        if ((isas[j].features & ~have) != 0) {
          eqd_report(report_error, "option isa=%s: this CPU lacks it (it has: %s)", v,
                     eqd_isa_name(have));
          return -1;
        }
        o->features = isas[j].features;
        bad = 0;
      }
    } else {
      eqd_report(report_error,
                 "unknown option '%s' (known: policy, debug, winograd, depthwise, bits, "
                 "num_threads, isa, rounding, record_layout)",
                 k);
      return -1;
    }
    if (bad && !strcmp(k, "policy")) {
      eqd_report(report_error, "bad value '%s' for option 'policy' (fastest or all)", v);
      return -1;
    }
    if (bad) {
      eqd_report(report_error, "bad value '%s' for option '%s' (see delegates/README.md)",
                 v, k);
      return -1;
    }
  }
  return 0;
}
