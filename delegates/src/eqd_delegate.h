/*
 * eqd_delegate.h -- internal interface of the delegate's glue, split in
 * three parts: option parsing (options.c), node claiming (claim.c) and the
 * delegate kernel's lifecycle (partition.c); delegate.c holds the plugin
 * entry points and the JSON introspection.
 */
#ifndef EQD_DELEGATE_H_
#define EQD_DELEGATE_H_

#include <stddef.h>
#include <stdint.h>

#include "eq_tflite_c_abi.h"
#include "eqd_conv.h"
#include "eqd_kernel.h"

#define EQD_LOG_PREFIX "[eq-tflite delegate] "

typedef struct eqd_options {
  int debug;         /* 0/1: log claims and per-node kernel counts to stderr */
  int winograd;      /* 0/1: use Winograd F(2x2,3x3) where eligible         */
  int depthwise;     /* 0/1: claim DEPTHWISE_CONV_2D (multiplier 1)         */
  int bits;          /* 7 (default) or 8: 8 disables the 7-bit input paths  */
  int num_threads;   /* -1 (interpreter's setting) or 1..64                 */
  uint32_t features; /* CPU features the kernels may use (option isa)       */
  int record_layout; /* 0/1: snapshot tensors/nodes at Prepare (ABI test)   */
  eqd_rounding rounding; /* requantization rule (option `rounding`)         */
} eqd_options;

/* Per claimed node statistics. */
typedef struct eqd_node_stats {
  int node_index;
  int cin, cout, kh, kw, stride_h, stride_w;
  int winograd;
  int depthwise;
  int nthreads; /* threads of the last prepare */
  const eqd_kernel* kernel;       /* the variant chosen in op_init   */
  int64_t counts[EQD_MAX_PATHS];  /* invokes per kernel->paths[i]    */
} eqd_node_stats;

typedef struct eqd_delegate {
  TfLiteDelegate base; /* must stay first: TfLiteDelegate* <-> eqd_delegate* */
  eqd_options opt;
  eqd_node_stats* nodes;
  int n_nodes, cap_nodes;
  int n_considered, n_claimed;
  int recommended_num_threads;
  char* layout_json;
} eqd_delegate;

/* options.c: fills o from the plugin's key/value strings; reports the
 * reason through report_error (or stderr) and returns -1 on bad input. */
int eqd_parse_options(char** keys, char** values, size_t n, eqd_options* o,
                      void (*report_error)(const char*));
void eqd_report(void (*report_error)(const char*), const char* fmt, ...);

/* claim.c: the delegate's Prepare (claims nodes, replaces them with the
 * delegate kernel), and the support check op_init repeats. */
TfLiteStatus eqd_delegate_prepare(TfLiteContext* ctx, TfLiteDelegate* delegate);
const char* eqd_node_unsupported(TfLiteContext* ctx, const TfLiteNode* node,
                                 int builtin_code);
const TfLiteAffineQuantization* eqd_affine_of(const TfLiteTensor* t);

/* partition.c: the registration of the delegate kernel (init / free /
 * prepare / invoke of one connected subset of claimed nodes). */
TfLiteRegistration eqd_partition_registration(void);

/* delegate.c: growable string for the JSON reports. */
typedef struct sbuf {
  char* s;
  size_t len, cap;
  int failed;
} sbuf;
void sb_printf(sbuf* b, const char* fmt, ...);
void sb_json_string(sbuf* b, const char* s);
void sb_int_array(sbuf* b, const TfLiteIntArray* a);

#endif /* EQD_DELEGATE_H_ */
