/*
 * delegate.c -- the TFLite external-delegate plugin entry points
 * (tflite_plugin_create_delegate / tflite_plugin_destroy_delegate) and the
 * JSON introspection used by the tests and the benchmark.  Options are
 * parsed in options.c, nodes are claimed in claim.c, and the delegate
 * kernel lives in partition.c.
 *
 * The runtime is reached only through TfLiteContext's function pointers;
 * the structures are declared in ../include/eq_tflite_c_abi.h.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eqd_delegate.h"

/* ------------------------------------------------------------------------ */
/* Small growable string for the JSON reports                               */
/* ------------------------------------------------------------------------ */

void sb_printf(sbuf* b, const char* fmt, ...) {
  if (b->failed) return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    const size_t room = b->cap - b->len;
    const int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? room : 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
      b->failed = 1;
      return;
    }
    if (b->s && (size_t)n < room) {
      b->len += (size_t)n;
      return;
    }
    size_t ncap = b->cap ? b->cap * 2 : 1024;
    while (ncap < b->len + (size_t)n + 1) ncap *= 2;
    char* ns = (char*)realloc(b->s, ncap);
    if (!ns) {
      b->failed = 1;
      return;
    }
    b->s = ns;
    b->cap = ncap;
  }
}

void sb_json_string(sbuf* b, const char* s) {
  sb_printf(b, "\"");
  if (s) {
    for (const unsigned char* p = (const unsigned char*)s; *p; ++p) {
      if (*p == '"' || *p == '\\') sb_printf(b, "\\%c", *p);
      else if (*p < 0x20) sb_printf(b, "\\u%04x", *p);
      else sb_printf(b, "%c", *p);
    }
  }
  sb_printf(b, "\"");
}

void sb_int_array(sbuf* b, const TfLiteIntArray* a) {
  sb_printf(b, "[");
  if (a)
    for (int i = 0; i < a->size; ++i) sb_printf(b, i ? ",%d" : "%d", a->data[i]);
  sb_printf(b, "]");
}

EQD_EXPORT TfLiteDelegate* tflite_plugin_create_delegate(
    char** options_keys, char** options_values, size_t num_options,
    void (*report_error)(const char*)) {
  eqd_options opt;
  if (eqd_parse_options(options_keys, options_values, num_options, &opt, report_error))
    return NULL;
  eqd_delegate* d = (eqd_delegate*)calloc(1, sizeof(*d));
  if (!d) {
    eqd_report(report_error, "out of memory");
    return NULL;
  }
  d->opt = opt;
  d->base.data_ = d;
  d->base.Prepare = eqd_delegate_prepare;
  d->base.flags = kTfLiteDelegateFlagsAllowDynamicTensors;
  if (opt.debug)
    fprintf(stderr, EQD_LOG_PREFIX "created: isa=%s cpu_class=%s policy=%s winograd=%d bits=%d\n",
            eqd_isa_name(opt.features), eqd_isa_class(eqd_cpu_features()),
            opt.policy == EQD_POLICY_ALL ? "all" : "fastest", opt.winograd, opt.bits);
  return &d->base;
}

EQD_EXPORT void tflite_plugin_destroy_delegate(TfLiteDelegate* delegate) {
  eqd_delegate* d = (eqd_delegate*)delegate;
  if (!d) return;
  free(d->nodes);
  free(d->decisions);
  free(d->layout_json);
  free(d);
}

/* ------------------------------------------------------------------------ */
/* Introspection for tests and the benchmark (called through ctypes)        */
/* ------------------------------------------------------------------------ */

static int copy_out(const char* s, char* buf, int cap) {
  const int n = s ? (int)strlen(s) : 0;
  if (buf && cap > 0) {
    const int m = n < cap - 1 ? n : cap - 1;
    if (m > 0) memcpy(buf, s, (size_t)m);
    buf[m] = '\0';
  }
  return n;
}

/* JSON: options, ISA, and per claimed node the number of invokes per path.
 * Returns the full length (snprintf-like); call again with a larger buffer. */
/* The reason of the latest decision about node_index ("" if none). */
static const char* decision_reason(const eqd_delegate* d, int node_index) {
  for (int i = d->n_decisions - 1; i >= 0; --i)
    if (d->decisions[i].node_index == node_index) return d->decisions[i].reason;
  return "";
}

/* JSON: options, ISA, per claimed node the number of invokes per path and
 * why it was claimed, and every declined node with the reason.  Returns the
 * full length (snprintf-like); call again with a larger buffer. */
EQD_EXPORT int eqd_stats_json(TfLiteDelegate* delegate, char* buf, int cap) {
  eqd_delegate* d = (eqd_delegate*)delegate;
  if (!d) return -1;
  sbuf b = {0};
  sb_printf(&b,
            "{\"isa\":\"%s\",\"cpu_class\":\"%s\",\"policy\":\"%s\",\"winograd\":%d,"
            "\"bits\":%d,\"num_threads\":%d,\"rounding\":\"%s\","
            "\"recommended_num_threads\":%d,\"considered\":%d,\"claimed\":%d,"
            "\"nodes\":[",
            eqd_isa_name(d->opt.features), eqd_isa_class(eqd_cpu_features()),
            d->opt.policy == EQD_POLICY_ALL ? "all" : "fastest", d->opt.winograd,
            d->opt.bits, d->opt.num_threads, eqd_rounding_names[d->opt.rounding],
            d->recommended_num_threads, d->n_considered, d->n_claimed);
  for (int i = 0; i < d->n_nodes; ++i) {
    const eqd_node_stats* s = &d->nodes[i];
    sb_printf(&b,
              "%s{\"node\":%d,\"kh\":%d,\"kw\":%d,\"stride\":%d,\"cin\":%d,"
              "\"cout\":%d,\"op\":\"%s\",\"winograd\":%d,\"threads\":%d,"
              "\"kernel\":\"%s\",\"kernel_isa\":\"%s\",\"why\":",
              i ? "," : "", s->node_index, s->kh, s->kw, s->stride_h, s->cin,
              s->cout, s->depthwise ? "DEPTHWISE_CONV_2D" : "CONV_2D", s->winograd,
              s->nthreads, s->kernel->name, s->kernel->isa);
    sb_json_string(&b, decision_reason(d, s->node_index));
    sb_printf(&b, ",\"paths\":{");
    int first = 1;
    for (int p = 0; p < EQD_MAX_PATHS && s->kernel->paths[p]; ++p) {
      if (!s->counts[p]) continue;
      sb_printf(&b, "%s\"%s\":%lld", first ? "" : ",", s->kernel->paths[p],
                (long long)s->counts[p]);
      first = 0;
    }
    sb_printf(&b, "}}");
  }
  sb_printf(&b, "],\"declined\":[");
  int first = 1;
  for (int i = 0; i < d->n_decisions; ++i) {
    const eqd_decision* e = &d->decisions[i];
    if (e->claimed) continue;
    sb_printf(&b,
              "%s{\"node\":%d,\"op\":\"%s\",\"kh\":%d,\"kw\":%d,\"stride\":%d,"
              "\"cin\":%d,\"cout\":%d,\"why\":",
              first ? "" : ",", e->node_index,
              e->depthwise ? "DEPTHWISE_CONV_2D" : "CONV_2D", e->kh, e->kw, e->stride_h,
              e->cin, e->cout);
    sb_json_string(&b, e->reason);
    sb_printf(&b, "}");
    first = 0;
  }
  sb_printf(&b, "]}");
  const int n = b.failed ? -1 : copy_out(b.s, buf, cap);
  free(b.s);
  return n;
}

/* JSON snapshot of every tensor and node as read through our ABI structs at
 * the last Prepare (only with option record_layout=1). */
EQD_EXPORT int eqd_layout_json(TfLiteDelegate* delegate, char* buf, int cap) {
  eqd_delegate* d = (eqd_delegate*)delegate;
  if (!d || !d->layout_json) return -1;
  return copy_out(d->layout_json, buf, cap);
}
