/*
 * partition.c -- the delegate kernel's lifecycle.  One instance runs one
 * connected subset of claimed nodes: init (op_init per node: parameters,
 * requantization, the kernel variant chosen once from the table and its
 * packed weights), prepare (shapes, threads, scratch), invoke, free.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eqd_delegate.h"
#include "eqd_threadpool.h"

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
  s->kernel = c->kernel;
  return d->n_nodes++;
}

/* Fills op->conv from the (already validated) node. Returns 0 on success. */
static int op_init(TfLiteContext* ctx, eqd_delegate* d, int node_index, eqd_op* op) {
  TfLiteNode* node = NULL;
  TfLiteRegistration* reg = NULL;
  if (ctx->GetNodeAndRegistration(ctx, node_index, &node, &reg) != kTfLiteOk)
    return -1;
  const int is_dw = reg->builtin_code == kTfLiteBuiltinDepthwiseConv2d;
  if (eqd_node_unsupported(ctx, node, reg->builtin_code)) return -1;
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
  c->allow_7bit = d->opt.bits == 7;
  if (eqd_conv_init_weights(c, bi >= 0 ? ctx->tensors[bi].data.i32 : NULL) != 0) return -1;
  const TfLiteAffineQuantization* fa = eqd_affine_of(f);
  if (eqd_conv_init_requant(c, in->params.scale, fa->scale->data, fa->scale->size,
                            out->params.scale, d->opt.rounding) != 0)
    return -1;
  /* The kernel: chosen once, here, from the table (eqd_kernel.h). */
  /* The family the claim policy decided at Prepare (policy=fastest may
   * pick direct over Winograd), else the family rule. */
  const int decided = eqd_decided_family(d, node_index);
  const eqd_family family =
      decided >= 0 ? (eqd_family)decided : eqd_conv_family(c, d->opt.winograd);
  c->winograd = family == EQD_FAMILY_WINOGRAD;
  if (eqd_conv_use_kernel(c, eqd_select_kernel(c, family, d->opt.features)) != 0) return -1;
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
      fprintf(stderr, EQD_LOG_PREFIX "node %d %s %dx%d s%d %d->%d kernel %s:",
              s->node_index, s->depthwise ? "dwconv" : "conv", s->kh, s->kw, s->stride_h,
              s->cin, s->cout, s->kernel->name);
      for (int p = 0; p < EQD_MAX_PATHS && s->kernel->paths[p]; ++p)
        if (s->counts[p]) fprintf(stderr, " %s=%lld", s->kernel->paths[p],
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
   * "unspecified", counts as 1).  Only the SIMD kernels use them. */
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
    const int path = eqd_conv_run(&op->conv, in, out, part->pool);
    d->nodes[op->stats_index].counts[path]++;
  }
  return kTfLiteOk;
}

static const char* kernel_profiling_string(const TfLiteContext* ctx, const TfLiteNode* node) {
  (void)ctx;
  (void)node;
  return "EqTfliteDelegate";
}

TfLiteRegistration eqd_partition_registration(void) {
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
  return reg;
}
