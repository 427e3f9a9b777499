/*
 * delegate.c -- the TFLite external-delegate plugin: options, node claiming
 * (the delegate's Prepare), and the delegate kernel (init / prepare / invoke
 * / free) that runs a connected subset of claimed convolutions.
 *
 * The runtime is reached only through TfLiteContext's function pointers;
 * the structures are declared in ../include/eq_tflite_c_abi.h.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eq_tflite_c_abi.h"
#include "eqd_conv.h"
#include "eqd_threadpool.h"

#define EQD_LOG_PREFIX "[eq-tflite delegate] "

/* ------------------------------------------------------------------------ */
/* Options                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct eqd_options {
  int debug;         /* 0/1: log claims and per-node path counts to stderr  */
  int winograd;      /* 0/1: use Winograd F(2x2,3x3) where eligible         */
  int depthwise;     /* 0/1: claim DEPTHWISE_CONV_2D (multiplier 1)         */
  int bits;          /* 7 (default) or 8: 8 disables the 7-bit input paths  */
  int num_threads;   /* -1 (interpreter's setting) or 1..64                 */
  int isa;           /* -1 auto, EQD_ISA_SCALAR, EQD_ISA_AVX2               */
  int record_layout; /* 0/1: snapshot tensors/nodes at Prepare (ABI test)   */
  eqd_rounding rounding;  /* requantization rule (option `rounding`)    */
} eqd_options;

/* Per claimed node statistics. */
typedef struct eqd_node_stats {
  int node_index;
  int cin, cout, kh, kw, stride_h, stride_w;
  int winograd;
  int depthwise;
  int nthreads; /* threads of the last prepare */
  int64_t counts[EQD_PATH_COUNT];
} eqd_node_stats;

typedef struct eqd_delegate {
  TfLiteDelegate base; /* must stay first: TfLiteDelegate* <-> eqd_delegate* */
  eqd_options opt;
  int isa;
  eqd_node_stats* nodes;
  int n_nodes, cap_nodes;
  int n_considered, n_claimed;
  int recommended_num_threads;
  char* layout_json;
} eqd_delegate;

/* ------------------------------------------------------------------------ */
/* Small growable string for the JSON reports                               */
/* ------------------------------------------------------------------------ */

typedef struct sbuf {
  char* s;
  size_t len, cap;
  int failed;
} sbuf;

static void sb_printf(sbuf* b, const char* fmt, ...) {
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

static void sb_json_string(sbuf* b, const char* s) {
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

static void sb_int_array(sbuf* b, const TfLiteIntArray* a) {
  sb_printf(b, "[");
  if (a)
    for (int i = 0; i < a->size; ++i) sb_printf(b, i ? ",%d" : "%d", a->data[i]);
  sb_printf(b, "]");
}

/* ------------------------------------------------------------------------ */
/* Node support check                                                        */
/* ------------------------------------------------------------------------ */

static const TfLiteAffineQuantization* affine_of(const TfLiteTensor* t) {
  if (t->quantization.type != kTfLiteAffineQuantization) return NULL;
  return (const TfLiteAffineQuantization*)t->quantization.params;
}

static int finite_positive(float x) { return isfinite(x) && x > 0.0f; }

/* Per-tensor int8 activation with a usable scale. */
static int activation_ok(const TfLiteTensor* t) {
  if (t->type != kTfLiteInt8) return 0;
  if (!finite_positive(t->params.scale)) return 0;
  if (t->params.zero_point < -128 || t->params.zero_point > 127) return 0;
  const TfLiteAffineQuantization* a = affine_of(t);
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
  const TfLiteAffineQuantization* fa = affine_of(f);
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

static const char* node_unsupported(TfLiteContext* ctx, const TfLiteNode* node,
                                    int builtin_code) {
  return builtin_code == kTfLiteBuiltinConv2d ? conv_unsupported(ctx, node)
                                               : dwconv_unsupported(ctx, node);
}

/* ------------------------------------------------------------------------ */
/* Delegate kernel: one instance per connected subset of claimed nodes      */
/* ------------------------------------------------------------------------ */

typedef struct eqd_op {
  eqd_conv conv;
  int in_tensor, out_tensor;
  int in_internal;  /* input produced by an earlier op of this partition   */
  int out_internal; /* output consumed only inside this partition          */
  int8_t* out_buf;  /* own buffer for an internal output                   */
  size_t out_buf_bytes;
  int stats_index;
} eqd_op;

typedef struct eqd_partition {
  eqd_delegate* delegate;
  eqd_op* ops;
  int n_ops;
  int nthreads;    /* threads decided at the last kernel prepare */
  eqd_pool* pool;  /* NULL when nthreads == 1 */
} eqd_partition;

static int int_array_contains(const TfLiteIntArray* a, int v) {
  if (!a) return 0;
  for (int i = 0; i < a->size; ++i)
    if (a->data[i] == v) return 1;
  return 0;
}

static int stats_add(eqd_delegate* d, const eqd_conv* c) {
  if (d->n_nodes == d->cap_nodes) {
    const int ncap = d->cap_nodes ? d->cap_nodes * 2 : 16;
    eqd_node_stats* n = (eqd_node_stats*)realloc(d->nodes, (size_t)ncap * sizeof(*n));
    if (!n) return -1;
    d->nodes = n;
    d->cap_nodes = ncap;
  }
  eqd_node_stats* s = &d->nodes[d->n_nodes];
  memset(s, 0, sizeof(*s));
  s->node_index = c->node_index;
  s->cin = c->cin;
  s->cout = c->cout;
  s->kh = c->kh;
  s->kw = c->kw;
  s->stride_h = c->stride_h;
  s->stride_w = c->stride_w;
  s->winograd = c->winograd;
  s->depthwise = c->depthwise;
  return d->n_nodes++;
}

/* Fills op->conv from the (already validated) node. Returns 0 on success. */
static int op_init(TfLiteContext* ctx, eqd_delegate* d, int node_index, eqd_op* op) {
  TfLiteNode* node = NULL;
  TfLiteRegistration* reg = NULL;
  if (ctx->GetNodeAndRegistration(ctx, node_index, &node, &reg) != kTfLiteOk)
    return -1;
  const int is_dw = reg->builtin_code == kTfLiteBuiltinDepthwiseConv2d;
  if (node_unsupported(ctx, node, reg->builtin_code)) return -1;
  const TfLiteTensor* in = &ctx->tensors[node->inputs->data[0]];
  const TfLiteTensor* f = &ctx->tensors[node->inputs->data[1]];
  const TfLiteTensor* out = &ctx->tensors[node->outputs->data[0]];
  const int bi = node->inputs->size == 3 ? node->inputs->data[2] : -1;
  eqd_conv* c = &op->conv;
  memset(c, 0, sizeof(*c));
  c->node_index = node_index;
  c->depthwise = is_dw;
  int act;
  if (is_dw) {
    const TfLiteDepthwiseConvParams* p = (const TfLiteDepthwiseConvParams*)node->builtin_data;
    c->cout = c->cin = f->dims->data[3];
    c->stride_h = p->stride_height;
    c->stride_w = p->stride_width;
    c->padding_same = p->padding == kTfLitePaddingSame;
    act = p->activation;
  } else {
    const TfLiteConvParams* p = (const TfLiteConvParams*)node->builtin_data;
    c->cout = f->dims->data[0];
    c->cin = f->dims->data[3];
    c->stride_h = p->stride_height;
    c->stride_w = p->stride_width;
    c->padding_same = p->padding == kTfLitePaddingSame;
    act = p->activation;
  }
  c->kh = f->dims->data[1];
  c->kw = f->dims->data[2];
  c->in_zp = in->params.zero_point;
  c->out_zp = out->params.zero_point;
  eqd_activation_range(act, out->params.scale, c->out_zp, &c->act_min, &c->act_max);
  c->w = f->data.int8;
  c->cout_pad = (c->cout + 15) & ~15;
  c->cin2 = (c->cin + 1) & ~1;
  c->isa = d->isa;
  c->allow_7bit = d->opt.bits == 7;
  c->bias = (int32_t*)calloc((size_t)c->cout_pad, sizeof(int32_t));
  c->wsum = (int32_t*)calloc((size_t)c->cout_pad, sizeof(int32_t));
  if (!c->bias || !c->wsum) return -1;
  if (bi >= 0) {
    const int32_t* b = ctx->tensors[bi].data.i32;
    for (int i = 0; i < c->cout; ++i) c->bias[i] = b[i];
  }
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
  const TfLiteAffineQuantization* fa = affine_of(f);
  if (eqd_conv_init_requant(c, in->params.scale, fa->scale->data, fa->scale->size,
                            out->params.scale, d->opt.rounding) != 0)
    return -1;
  c->winograd = !c->depthwise && d->opt.winograd && c->kh == 3 && c->kw == 3 && c->stride_h == 1 &&
                c->stride_w == 1 && c->cin >= 8 && c->cout >= 8 &&
                c->cin <= EQD_WINOGRAD_MAX_CIN;
  if (c->winograd) {
    c->wino_u = (int16_t*)eqd_aligned_alloc((size_t)16 * c->cout * c->cin *
                                            sizeof(int16_t));
    if (!c->wino_u) return -1;
    eqd_winograd_prepare_weights(c);
  }
#if defined(__x86_64__) || defined(__i386__)
  if (c->isa == EQD_ISA_AVX2) {
    const int rc = c->depthwise  ? eqd_dwconv_avx2_pack(c)
                   : c->winograd ? eqd_winograd_avx2_pack(c)
                                 : eqd_direct_avx2_pack(c);
    if (rc) return -1;
  }
#endif
  op->in_tensor = node->inputs->data[0];
  op->out_tensor = node->outputs->data[0];
  op->stats_index = stats_add(d, c);
  return op->stats_index < 0 ? -1 : 0;
}

static void partition_free(eqd_partition* part) {
  if (!part) return;
  eqd_pool_destroy(part->pool);
  for (int i = 0; i < part->n_ops; ++i) {
    eqd_conv_free(&part->ops[i].conv);
    free(part->ops[i].out_buf);
  }
  free(part->ops);
  free(part);
}

static void* kernel_init(TfLiteContext* ctx, const char* buffer, size_t length) {
  (void)length;
  const TfLiteDelegateParams* params = (const TfLiteDelegateParams*)buffer;
  if (!params || !params->nodes_to_replace || !params->delegate) return NULL;
  eqd_delegate* d = (eqd_delegate*)params->delegate;
  eqd_partition* part = (eqd_partition*)calloc(1, sizeof(*part));
  if (!part) return NULL;
  part->delegate = d;
  const int n = params->nodes_to_replace->size;
  part->ops = (eqd_op*)calloc((size_t)(n > 0 ? n : 1), sizeof(eqd_op));
  if (!part->ops) {
    free(part);
    return NULL;
  }
  for (int i = 0; i < n; ++i) {
    eqd_op* op = &part->ops[i];
    if (op_init(ctx, d, params->nodes_to_replace->data[i], op) != 0) {
      eqd_conv_free(&op->conv);
      partition_free(part);
      ctx->ReportError(ctx, EQD_LOG_PREFIX "failed to initialise node %d",
                       params->nodes_to_replace->data[i]);
      return NULL;
    }
    part->n_ops = i + 1;
  }
  /* Classify tensors: an op input produced by an earlier op of the partition
   * that TFLite does not see as a partition output lives in our own buffer. */
  for (int i = 0; i < n; ++i) {
    eqd_op* op = &part->ops[i];
    op->out_internal = !int_array_contains(params->output_tensors, op->out_tensor);
    for (int j = 0; j < i; ++j)
      if (part->ops[j].out_tensor == op->in_tensor)
        op->in_internal = part->ops[j].out_internal ? j + 1 : 0;
  }
  return part;
}

static void kernel_free(TfLiteContext* ctx, void* buffer) {
  (void)ctx;
  eqd_partition* part = (eqd_partition*)buffer;
  if (!part) return;
  eqd_delegate* d = part->delegate;
  if (d && d->opt.debug) {
    for (int i = 0; i < part->n_ops; ++i) {
      const eqd_node_stats* s = &d->nodes[part->ops[i].stats_index];
      fprintf(stderr, EQD_LOG_PREFIX "node %d %s %dx%d s%d %d->%d:", s->node_index,
              s->depthwise ? "dwconv" : "conv", s->kh, s->kw, s->stride_h, s->cin,
              s->cout);
      for (int p = 0; p < EQD_PATH_COUNT; ++p)
        if (s->counts[p]) fprintf(stderr, " %s=%lld", eqd_path_names[p],
                                  (long long)s->counts[p]);
      fprintf(stderr, "\n");
    }
  }
  partition_free(part);
}

static TfLiteStatus kernel_prepare(TfLiteContext* ctx, TfLiteNode* node) {
  eqd_partition* part = (eqd_partition*)node->user_data;
  if (!part) {
    ctx->ReportError(ctx, EQD_LOG_PREFIX "kernel was not initialised");
    return kTfLiteError;
  }
  /* Threads: the num_threads option, else the interpreter's setting (-1,
   * "unspecified", counts as 1).  Only the AVX2 kernels use them. */
  const int nthreads_opt = part->delegate->opt.num_threads;
  int nthreads = nthreads_opt > 0 ? nthreads_opt : ctx->recommended_num_threads;
  if (nthreads < 1) nthreads = 1;
  if (nthreads > 64) nthreads = 64;
  if (nthreads != part->nthreads) {
    eqd_pool_destroy(part->pool);
    part->pool = eqd_pool_create(nthreads); /* NULL for 1 (or on failure) */
    part->nthreads = part->pool ? eqd_pool_threads(part->pool) : 1;
  }
  for (int i = 0; i < part->n_ops; ++i) {
    eqd_op* op = &part->ops[i];
    eqd_conv* c = &op->conv;
    int n, h, w, ch;
    if (op->in_internal) {
      const eqd_op* src = &part->ops[op->in_internal - 1];
      n = src->conv.batch;
      h = src->conv.out_h;
      w = src->conv.out_w;
      ch = src->conv.cout;
    } else {
      const TfLiteTensor* t = &ctx->tensors[op->in_tensor];
      if (!t->dims || t->dims->size != 4) {
        ctx->ReportError(ctx, EQD_LOG_PREFIX "node %d: input must be 4-D",
                         c->node_index);
        return kTfLiteError;
      }
      n = t->dims->data[0];
      h = t->dims->data[1];
      w = t->dims->data[2];
      ch = t->dims->data[3];
    }
    part->delegate->nodes[op->stats_index].nthreads = part->nthreads;
    if (ch != c->cin || eqd_conv_setup_shape(c, n, h, w, part->nthreads) != 0) {
      ctx->ReportError(ctx,
                       EQD_LOG_PREFIX "node %d: unsupported input shape "
                       "[%d,%d,%d,%d] for a %dx%d conv with %d input channels",
                       c->node_index, n, h, w, ch, c->kh, c->kw, c->cin);
      return kTfLiteError;
    }
    if (op->out_internal) {
      const size_t bytes = (size_t)n * c->out_h * c->out_w * c->cout;
      if (bytes > op->out_buf_bytes) {
        free(op->out_buf);
        op->out_buf = (int8_t*)malloc(bytes);
        op->out_buf_bytes = op->out_buf ? bytes : 0;
        if (!op->out_buf) return kTfLiteError;
      }
    } else {
      TfLiteIntArray* dims = (TfLiteIntArray*)malloc(sizeof(TfLiteIntArray) + 4 * sizeof(int));
      if (!dims) return kTfLiteError;
      dims->size = 4;
      dims->data[0] = n;
      dims->data[1] = c->out_h;
      dims->data[2] = c->out_w;
      dims->data[3] = c->cout;
      /* ResizeTensor takes ownership of dims (released with free()). */
      if (ctx->ResizeTensor(ctx, &ctx->tensors[op->out_tensor], dims) != kTfLiteOk)
        return kTfLiteError;
    }
  }
  return kTfLiteOk;
}

static TfLiteStatus kernel_invoke(TfLiteContext* ctx, TfLiteNode* node) {
  eqd_partition* part = (eqd_partition*)node->user_data;
  if (!part) return kTfLiteError;
  eqd_delegate* d = part->delegate;
  for (int i = 0; i < part->n_ops; ++i) {
    eqd_op* op = &part->ops[i];
    const int8_t* in = op->in_internal
                           ? part->ops[op->in_internal - 1].out_buf
                           : ctx->tensors[op->in_tensor].data.int8;
    int8_t* out = op->out_internal ? op->out_buf : ctx->tensors[op->out_tensor].data.int8;
    if (!in || !out) {
      ctx->ReportError(ctx, EQD_LOG_PREFIX "node %d: tensor data not allocated",
                       op->conv.node_index);
      return kTfLiteError;
    }
    const eqd_path path = eqd_conv_run(&op->conv, in, out, part->pool);
    d->nodes[op->stats_index].counts[path]++;
  }
  return kTfLiteOk;
}

static const char* kernel_profiling_string(const TfLiteContext* ctx, const TfLiteNode* node) {
  (void)ctx;
  (void)node;
  return "EqTfliteDelegate";
}

/* ------------------------------------------------------------------------ */
/* Delegate Prepare: claim nodes                                             */
/* ------------------------------------------------------------------------ */

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
    const TfLiteAffineQuantization* a = affine_of(t);
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

static TfLiteStatus delegate_prepare(TfLiteContext* ctx, TfLiteDelegate* delegate) {
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
                          : node_unsupported(ctx, node, code);
    if (d->opt.debug)
      fprintf(stderr, EQD_LOG_PREFIX "node %d %s: %s%s\n", plan->data[i],
              code == kTfLiteBuiltinConv2d ? "CONV_2D" : "DEPTHWISE_CONV_2D",
              why ? "left to TFLite: " : "claimed", why ? why : "");
    if (!why) claim->data[claim->size++] = plan->data[i];
  }
  TfLiteStatus st = kTfLiteOk;
  if (claim->size > 0) {
    TfLiteRegistration reg;
    memset(&reg, 0, sizeof(reg));
    reg.init = kernel_init;
    reg.free = kernel_free;
    reg.prepare = kernel_prepare;
    reg.invoke = kernel_invoke;
    reg.profiling_string = kernel_profiling_string;
    reg.builtin_code = 51; /* BuiltinOperator_DELEGATE */
    reg.custom_name = "EqTfliteDelegate";
    reg.version = 1;
    st = ctx->ReplaceNodeSubsetsWithDelegateKernels(ctx, reg, claim, delegate);
    if (st == kTfLiteOk) d->n_claimed += claim->size;
  }
  free(plan);
  free(claim);
  return st;
}

/* ------------------------------------------------------------------------ */
/* Plugin entry points                                                       */
/* ------------------------------------------------------------------------ */

static void report(void (*report_error)(const char*), const char* fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  if (report_error) report_error(msg);
  else fprintf(stderr, EQD_LOG_PREFIX "%s\n", msg);
}

static int parse_int(const char* s, long lo, long hi, int* out) {
  if (!s || !*s) return -1;
  char* end = NULL;
  errno = 0;
  const long v = strtol(s, &end, 10);
  if (errno || !end || *end != '\0' || v < lo || v > hi) return -1;
  *out = (int)v;
  return 0;
}

static int parse_options(char** keys, char** values, size_t n, eqd_options* o,
                         void (*report_error)(const char*)) {
  o->debug = 0;
  o->winograd = 1;
  o->depthwise = 1;
  o->bits = 7;
  o->num_threads = -1;
  o->isa = -1;
  o->record_layout = 0;
  o->rounding = EQD_ROUND_NATIVE;
  for (size_t i = 0; i < n; ++i) {
    const char* k = keys ? keys[i] : NULL;
    const char* v = values ? values[i] : NULL;
    if (!k || !v) {
      report(report_error, "option %zu has a NULL key or value", i);
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
      else bad = 1;
    } else if (!strcmp(k, "isa")) {
      if (!strcmp(v, "auto")) o->isa = -1;
      else if (!strcmp(v, "scalar")) o->isa = EQD_ISA_SCALAR;
      else if (!strcmp(v, "avx2")) {
        if (eqd_detect_isa() < EQD_ISA_AVX2) {
          report(report_error, "option isa=avx2: this CPU has no AVX2");
          return -1;
        }
        o->isa = EQD_ISA_AVX2;
      } else bad = 1;
    } else {
      report(report_error,
             "unknown option '%s' (known: debug, winograd, depthwise, bits, "
             "num_threads, isa, rounding, record_layout)", k);
      return -1;
    }
    if (bad) {
      report(report_error, "bad value '%s' for option '%s' (see delegates/README.md)",
             v, k);
      return -1;
    }
  }
  return 0;
}

EQD_EXPORT TfLiteDelegate* tflite_plugin_create_delegate(
    char** options_keys, char** options_values, size_t num_options,
    void (*report_error)(const char*)) {
  eqd_options opt;
  if (parse_options(options_keys, options_values, num_options, &opt, report_error))
    return NULL;
  eqd_delegate* d = (eqd_delegate*)calloc(1, sizeof(*d));
  if (!d) {
    report(report_error, "out of memory");
    return NULL;
  }
  d->opt = opt;
  d->isa = opt.isa >= 0 ? opt.isa : eqd_detect_isa();
  d->base.data_ = d;
  d->base.Prepare = delegate_prepare;
  d->base.flags = kTfLiteDelegateFlagsAllowDynamicTensors;
  if (opt.debug)
    fprintf(stderr, EQD_LOG_PREFIX "created: isa=%s winograd=%d bits=%d\n",
            d->isa == EQD_ISA_AVX2 ? "avx2" : "scalar", opt.winograd, opt.bits);
  return &d->base;
}

EQD_EXPORT void tflite_plugin_destroy_delegate(TfLiteDelegate* delegate) {
  eqd_delegate* d = (eqd_delegate*)delegate;
  if (!d) return;
  free(d->nodes);
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
EQD_EXPORT int eqd_stats_json(TfLiteDelegate* delegate, char* buf, int cap) {
  eqd_delegate* d = (eqd_delegate*)delegate;
  if (!d) return -1;
  sbuf b = {0};
  sb_printf(&b,
            "{\"isa\":\"%s\",\"winograd\":%d,\"bits\":%d,\"num_threads\":%d,"
            "\"rounding\":\"%s\","
            "\"recommended_num_threads\":%d,\"considered\":%d,\"claimed\":%d,"
            "\"nodes\":[",
            d->isa == EQD_ISA_AVX2 ? "avx2" : "scalar", d->opt.winograd, d->opt.bits,
            d->opt.num_threads, eqd_rounding_names[d->opt.rounding],
            d->recommended_num_threads, d->n_considered,
            d->n_claimed);
  for (int i = 0; i < d->n_nodes; ++i) {
    const eqd_node_stats* s = &d->nodes[i];
    sb_printf(&b,
              "%s{\"node\":%d,\"kh\":%d,\"kw\":%d,\"stride\":%d,\"cin\":%d,"
              "\"cout\":%d,\"op\":\"%s\",\"winograd\":%d,\"threads\":%d,"
              "\"paths\":{",
              i ? "," : "", s->node_index, s->kh, s->kw, s->stride_h, s->cin,
              s->cout, s->depthwise ? "DEPTHWISE_CONV_2D" : "CONV_2D", s->winograd,
              s->nthreads);
    int first = 1;
    for (int p = 0; p < EQD_PATH_COUNT; ++p) {
      if (!s->counts[p]) continue;
      sb_printf(&b, "%s\"%s\":%lld", first ? "" : ",", eqd_path_names[p],
                (long long)s->counts[p]);
      first = 0;
    }
    sb_printf(&b, "}}");
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
