/*
 * claim.c -- which CONV_2D / DEPTHWISE_CONV_2D nodes the delegate takes
 * (see delegates/README.md, "What it claims"), and the delegate's Prepare,
 * which replaces the claimed nodes by the delegate kernel (partition.c).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eqd_delegate.h"

const TfLiteAffineQuantization* eqd_affine_of(const TfLiteTensor* t) {
  if (t->quantization.type != kTfLiteAffineQuantization) return NULL;
  return (const TfLiteAffineQuantization*)t->quantization.params;
}

static int finite_positive(float x) { return isfinite(x) && x > 0.0f; }

/* Per-tensor int8 activation with a usable scale. */
static int activation_ok(const TfLiteTensor* t) {
  if (t->type != kTfLiteInt8) return 0;
  if (!finite_positive(t->params.scale)) return 0;
  if (t->params.zero_point < -128 || t->params.zero_point > 127) return 0;
  const TfLiteAffineQuantization* a = eqd_affine_of(t);
  if (a && a->scale && a->scale->size != 1) return 0; /* per-axis activation */
  return 1;
}

/* The checks CONV_2D and DEPTHWISE_CONV_2D share. ------------------------ */

/* Geometry and fused activation the kernels implement. */
static const char* geometry_unsupported(TfLitePadding padding, int stride_w, int stride_h,
                                        int dilation_w, int dilation_h,
                                        TfLiteFusedActivation act) {
  if (padding != kTfLitePaddingSame && padding != kTfLitePaddingValid) return "padding";
  if ((stride_w != 1 && stride_w != 2) || (stride_h != 1 && stride_h != 2))
    return "stride not 1 or 2";
  if (dilation_w != 1 || dilation_h != 1) return "dilation";
  if (act != kTfLiteActNone && act != kTfLiteActRelu && act != kTfLiteActRelu6 &&
      act != kTfLiteActReluN1To1)
    return "fused activation";
  return NULL;
}

/* Resolves input, filter, output (and optional bias, -1 if absent) tensors of a
 * conv-like node and checks the per-tensor int8 activations and constant int8
 * filter. */
static const char* operands_unsupported(TfLiteContext* ctx, const TfLiteNode* node,
                                        const TfLiteTensor** in, const TfLiteTensor** f,
                                        const TfLiteTensor** out, int* bias_index) {
  if (!node->inputs || !node->outputs) return "no inputs/outputs";
  if (node->inputs->size < 2 || node->inputs->size > 3) return "input count";
  if (node->outputs->size != 1) return "output count";
  const int ii = node->inputs->data[0], fi = node->inputs->data[1];
  const int bi = node->inputs->size == 3 ? node->inputs->data[2] : -1;
  const int oi = node->outputs->data[0];
  const int nt = (int)ctx->tensors_size;
  if (ii < 0 || ii >= nt || fi < 0 || fi >= nt || oi < 0 || oi >= nt || bi >= nt)
    return "tensor index";
  *in = &ctx->tensors[ii];
  *f = &ctx->tensors[fi];
  *out = &ctx->tensors[oi];
  *bias_index = bi;
  if (!activation_ok(*in)) return "input not per-tensor int8";
  if (!activation_ok(*out)) return "output not per-tensor int8";
  if ((*f)->type != kTfLiteInt8) return "filter not int8";
  if ((*f)->allocation_type != kTfLiteMmapRo || !(*f)->data.raw) return "filter not constant";
  if (!(*f)->dims || (*f)->dims->size != 4) return "filter rank";
  return NULL;
}

/* Symmetric per-channel (along `axis`, `channels` scales) or per-tensor filter
 * quantization, with an effective scale s_in * s_w / s_out TFLite can encode. */
static const char* filter_quant_unsupported(const TfLiteTensor* in, const TfLiteTensor* f,
                                            const TfLiteTensor* out, int channels, int axis) {
  const TfLiteAffineQuantization* fa = eqd_affine_of(f);
  if (!fa || !fa->scale) return "filter not affine-quantized";
  if (fa->scale->size != channels && fa->scale->size != 1) return "filter scales";
  if (fa->scale->size == channels && channels > 1 && fa->quantized_dimension != axis)
    return "filter quantized dimension";
  if (fa->zero_point)
    for (int i = 0; i < fa->zero_point->size; ++i)
      if (fa->zero_point->data[i] != 0) return "filter zero point";
  for (int i = 0; i < fa->scale->size; ++i) {
    if (!finite_positive(fa->scale->data[i])) return "filter scale";
    const double eff = (double)in->params.scale * (double)fa->scale->data[i] /
                       (double)out->params.scale;
    if (!isfinite(eff) || eff >= 2147483648.0) return "effective scale";
  }
  return NULL;
}

/* Optional constant int32 bias of `channels` elements. */
static const char* bias_unsupported(TfLiteContext* ctx, int bias_index, int channels) {
  if (bias_index < 0) return NULL;
  const TfLiteTensor* b = &ctx->tensors[bias_index];
  if (b->type != kTfLiteInt32) return "bias not int32";
  if (b->allocation_type != kTfLiteMmapRo || !b->data.raw) return "bias not constant";
  if (!b->dims || b->dims->size != 1 || b->dims->data[0] != channels) return "bias shape";
  return NULL;
}

/* Returns NULL if the CONV_2D node can run here, else a reason. */
static const char* conv_unsupported(TfLiteContext* ctx, const TfLiteNode* node) {
  const TfLiteConvParams* p = (const TfLiteConvParams*)node->builtin_data;
  if (!p) return "no params";
  const char* why = geometry_unsupported(p->padding, p->stride_width, p->stride_height,
                                         p->dilation_width_factor, p->dilation_height_factor,
                                         p->activation);
  const TfLiteTensor *in, *f, *out;
  int bi;
  if (!why) why = operands_unsupported(ctx, node, &in, &f, &out, &bi);
  if (why) return why;
  const int cout = f->dims->data[0], kh = f->dims->data[1];
  const int kw = f->dims->data[2], cin = f->dims->data[3];
  if (cout <= 0 || kh <= 0 || kw <= 0 || cin <= 0) return "filter shape";
  if ((size_t)cout * kh * kw * cin != f->bytes) return "filter bytes";
  if ((why = filter_quant_unsupported(in, f, out, cout, 0))) return why;
  if (in->dims && in->dims->size > 0) {
    if (in->dims->size != 4) return "input rank";
    if (in->dims->data[3] != cin) return "grouped convolution";
  }
  return bias_unsupported(ctx, bi, cout);
}

/* Returns NULL if the DEPTHWISE_CONV_2D node can run here, else a reason.
 * Depth multiplier 1 only; otherwise the same rules as CONV_2D. */
static const char* dwconv_unsupported(TfLiteContext* ctx, const TfLiteNode* node) {
  const TfLiteDepthwiseConvParams* p = (const TfLiteDepthwiseConvParams*)node->builtin_data;
  if (!p) return "no params";
  const char* why = geometry_unsupported(p->padding, p->stride_width, p->stride_height,
                                         p->dilation_width_factor, p->dilation_height_factor,
                                         p->activation);
  const TfLiteTensor *in, *f, *out;
  int bi;
  if (!why) why = operands_unsupported(ctx, node, &in, &f, &out, &bi);
  if (why) return why;
  if (f->dims->data[0] != 1) return "filter shape";
  const int kh = f->dims->data[1], kw = f->dims->data[2], ch = f->dims->data[3];
  if (kh <= 0 || kw <= 0 || ch <= 0) return "filter shape";
  if (kh * kw > 64) return "more than 64 taps";
  if ((size_t)kh * kw * ch != f->bytes) return "filter bytes";
  if (p->depth_multiplier != 1) return "depth multiplier";
  if ((why = filter_quant_unsupported(in, f, out, ch, 3))) return why;
  if (!in->dims || in->dims->size != 4) return "input rank";
  if (in->dims->data[3] != ch) return "depth multiplier";
  return bias_unsupported(ctx, bi, ch);
}

const char* eqd_node_unsupported(TfLiteContext* ctx, const TfLiteNode* node,
                                    int builtin_code) {
  return builtin_code == kTfLiteBuiltinConv2d ? conv_unsupported(ctx, node)
                                               : dwconv_unsupported(ctx, node);
}

static void record_layout(TfLiteContext* ctx, eqd_delegate* d, const TfLiteIntArray* plan) {
  sbuf b = {0};
  sb_printf(&b, "{\"tensors\":[");
  for (size_t i = 0; i < ctx->tensors_size; ++i) {
    const TfLiteTensor* t = &ctx->tensors[i];
    sb_printf(&b, "%s{\"index\":%zu,\"name\":", i ? "," : "", i);
    sb_json_string(&b, t->name);
    sb_printf(&b, ",\"type\":%d,\"dims\":", (int)t->type);
    sb_int_array(&b, t->dims);
    sb_printf(&b, ",\"scale\":%.9g,\"zero_point\":%d,\"alloc\":%d,\"bytes\":%zu",
              (double)t->params.scale, (int)t->params.zero_point,
              (int)t->allocation_type, t->bytes);
    const TfLiteAffineQuantization* a = eqd_affine_of(t);
    sb_printf(&b, ",\"qtype\":%d", (int)t->quantization.type);
    if (a) {
      sb_printf(&b, ",\"scales\":[");
      if (a->scale)
        for (int j = 0; j < a->scale->size; ++j)
          sb_printf(&b, j ? ",%.9g" : "%.9g", (double)a->scale->data[j]);
      sb_printf(&b, "],\"zero_points\":");
      sb_int_array(&b, a->zero_point);
      sb_printf(&b, ",\"qdim\":%d", (int)a->quantized_dimension);
    }
    if (t->allocation_type == kTfLiteMmapRo && t->data.raw &&
        (t->type == kTfLiteInt8 || t->type == kTfLiteInt32)) {
      long long sum = 0;
      if (t->type == kTfLiteInt8)
        for (size_t j = 0; j < t->bytes; ++j) sum += t->data.int8[j];
      else
        for (size_t j = 0; j < t->bytes / 4; ++j) sum += t->data.i32[j];
      sb_printf(&b, ",\"data_sum\":%lld", sum);
    }
    sb_printf(&b, "}");
  }
  sb_printf(&b, "],\"nodes\":[");
  for (int i = 0; i < plan->size; ++i) {
    TfLiteNode* node = NULL;
    TfLiteRegistration* reg = NULL;
    if (ctx->GetNodeAndRegistration(ctx, plan->data[i], &node, &reg) != kTfLiteOk)
      continue;
    sb_printf(&b, "%s{\"index\":%d,\"builtin_code\":%d,\"version\":%d,\"inputs\":",
              i ? "," : "", plan->data[i], (int)reg->builtin_code, reg->version);
    sb_int_array(&b, node->inputs);
    sb_printf(&b, ",\"outputs\":");
    sb_int_array(&b, node->outputs);
    if (reg->builtin_code == kTfLiteBuiltinConv2d && node->builtin_data) {
      const TfLiteConvParams* p = (const TfLiteConvParams*)node->builtin_data;
      sb_printf(&b,
                ",\"conv\":{\"padding\":%d,\"stride_w\":%d,\"stride_h\":%d,"
                "\"activation\":%d,\"dilation_w\":%d,\"dilation_h\":%d}",
                (int)p->padding, p->stride_width, p->stride_height,
                (int)p->activation, p->dilation_width_factor,
                p->dilation_height_factor);
    }
    if (reg->builtin_code == kTfLiteBuiltinDepthwiseConv2d && node->builtin_data) {
      const TfLiteDepthwiseConvParams* p = (const TfLiteDepthwiseConvParams*)node->builtin_data;
      sb_printf(&b,
                ",\"dwconv\":{\"padding\":%d,\"stride_w\":%d,\"stride_h\":%d,"
                "\"depth_multiplier\":%d,\"activation\":%d,\"dilation_w\":%d,"
                "\"dilation_h\":%d}",
                (int)p->padding, p->stride_width, p->stride_height, p->depth_multiplier,
                (int)p->activation, p->dilation_width_factor, p->dilation_height_factor);
    }
    sb_printf(&b, "}");
  }
  sb_printf(&b, "],\"recommended_num_threads\":%d}", ctx->recommended_num_threads);
  free(d->layout_json);
  d->layout_json = b.failed ? NULL : b.s;
  if (b.failed) free(b.s);
}

/* The shape, weight bits and threads the claim policy looks at, for a
 * supported node. */
static void policy_node_of(TfLiteContext* ctx, const eqd_delegate* d, const TfLiteNode* node,
                           int code, eqd_policy_node* n) {
  const TfLiteTensor* in = &ctx->tensors[node->inputs->data[0]];
  const TfLiteTensor* f = &ctx->tensors[node->inputs->data[1]];
  memset(n, 0, sizeof(*n));
  n->depthwise = code == kTfLiteBuiltinDepthwiseConv2d;
  n->kh = f->dims->data[1];
  n->kw = f->dims->data[2];
  if (n->depthwise) {
    const TfLiteDepthwiseConvParams* p = (const TfLiteDepthwiseConvParams*)node->builtin_data;
    n->cin = n->cout = f->dims->data[3];
    n->stride_h = p->stride_height;
    n->stride_w = p->stride_width;
  } else {
    const TfLiteConvParams* p = (const TfLiteConvParams*)node->builtin_data;
    n->cout = f->dims->data[0];
    n->cin = f->dims->data[3];
    n->stride_h = p->stride_height;
    n->stride_w = p->stride_width;
  }
  if (in->dims && in->dims->size == 4) {
    n->in_h = in->dims->data[1];
    n->in_w = in->dims->data[2];
  }
  int wmax = 0;
  for (size_t i = 0; i < f->bytes; ++i) {
    const int a = abs((int)f->data.int8[i]);
    if (a > wmax) wmax = a;
  }
  n->wbits = d->opt.bits == 7 && wmax <= 63 ? 7 : 8;
}

static eqd_decision* decision_add(eqd_delegate* d) {
  if (d->n_decisions == d->cap_decisions) {
    const int ncap = d->cap_decisions ? d->cap_decisions * 2 : 32;
    eqd_decision* n = (eqd_decision*)realloc(d->decisions, (size_t)ncap * sizeof(*n));
    if (!n) return NULL;
    d->decisions = n;
    d->cap_decisions = ncap;
  }
  eqd_decision* e = &d->decisions[d->n_decisions++];
  memset(e, 0, sizeof(*e));
  return e;
}

TfLiteStatus eqd_delegate_prepare(TfLiteContext* ctx, TfLiteDelegate* delegate) {
  eqd_delegate* d = (eqd_delegate*)delegate;
  TfLiteIntArray* plan_rt = NULL;
  if (ctx->GetExecutionPlan(ctx, &plan_rt) != kTfLiteOk || !plan_rt) return kTfLiteError;
  /* Copy: later runtime calls may invalidate the runtime's array. */
  const size_t plan_bytes = sizeof(TfLiteIntArray) + (size_t)plan_rt->size * sizeof(int);
  TfLiteIntArray* plan = (TfLiteIntArray*)malloc(plan_bytes);
  TfLiteIntArray* claim = (TfLiteIntArray*)malloc(plan_bytes);
  if (!plan || !claim) {
    free(plan);
    free(claim);
    return kTfLiteError;
  }
  memcpy(plan, plan_rt, plan_bytes);
  claim->size = 0;
  d->recommended_num_threads = ctx->recommended_num_threads;
  /* The threads the kernels will use (as kernel_prepare decides them). */
  int nthreads = d->opt.num_threads > 0 ? d->opt.num_threads : ctx->recommended_num_threads;
  if (nthreads < 1) nthreads = 1;
  if (d->opt.record_layout) record_layout(ctx, d, plan);
  for (int i = 0; i < plan->size; ++i) {
    TfLiteNode* node = NULL;
    TfLiteRegistration* reg = NULL;
    if (ctx->GetNodeAndRegistration(ctx, plan->data[i], &node, &reg) != kTfLiteOk)
      continue;
    const int code = reg->builtin_code;
    if (code != kTfLiteBuiltinConv2d && code != kTfLiteBuiltinDepthwiseConv2d) continue;
    d->n_considered++;
    const char* why = code == kTfLiteBuiltinDepthwiseConv2d && !d->opt.depthwise
                          ? "option depthwise=0"
                          : eqd_node_unsupported(ctx, node, code);
    eqd_decision* e = decision_add(d);
    if (!e) {
      free(plan);
      free(claim);
      return kTfLiteError;
    }
    e->node_index = plan->data[i];
    e->depthwise = code == kTfLiteBuiltinDepthwiseConv2d;
    if (why) {
      snprintf(e->reason, sizeof(e->reason), "unsupported: %s", why);
    } else {
      eqd_policy_node pn;
      eqd_family family;
      policy_node_of(ctx, d, node, code, &pn);
      e->kh = pn.kh;
      e->kw = pn.kw;
      e->stride_h = pn.stride_h;
      e->cin = pn.cin;
      e->cout = pn.cout;
      e->claimed = eqd_policy_claims(&d->opt, &pn, nthreads, &family, e->reason,
                                     sizeof(e->reason));
      e->family = (int)family;
    }
    if (d->opt.debug)
      fprintf(stderr, EQD_LOG_PREFIX "node %d %s: %s: %s\n", plan->data[i],
              e->depthwise ? "DEPTHWISE_CONV_2D" : "CONV_2D",
              e->claimed ? "claimed" : "declined, left to TFLite", e->reason);
    if (e->claimed) claim->data[claim->size++] = plan->data[i];
  }
  TfLiteStatus st = kTfLiteOk;
  if (claim->size > 0) {
    const TfLiteRegistration reg = eqd_partition_registration();
    st = ctx->ReplaceNodeSubsetsWithDelegateKernels(ctx, reg, claim, delegate);
    if (st == kTfLiteOk) d->n_claimed += claim->size;
  }
  free(plan);
  free(claim);
  return st;
}
