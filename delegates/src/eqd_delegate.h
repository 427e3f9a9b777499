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

/* Option `policy`: which supported nodes the delegate claims. */
typedef enum eqd_policy {
  EQD_POLICY_FASTEST = 0, /* only where the cost table says the kernel beats
                             XNNPACK on this CPU class (claim_policy.c)   */
  EQD_POLICY_ALL = 1,     /* every supported node (the exactness tests)   */
} eqd_policy;

typedef struct eqd_options {
  int debug;         /* 0/1: log claims and per-node kernel counts to stderr */
  int winograd;      /* 0/1: use Winograd F(2x2,3x3) where eligible         */
  int depthwise;     /* 0/1: claim DEPTHWISE_CONV_2D (multiplier 1)         */
  int bits;          /* 7 (default) or 8: 8 disables the 7-bit input paths  */
  int num_threads;   /* -1 (interpreter's setting) or 1..64                 */
  uint32_t features; /* CPU features the kernels may use (option isa)       */
  int record_layout; /* 0/1: snapshot tensors/nodes at Prepare (ABI test)   */
  eqd_rounding rounding; /* requantization rule (option `rounding`)         */
  eqd_policy policy;     /* option `policy`                                  */
} eqd_options;

/* A supported node as the claim policy sees it at the delegate's Prepare. */
typedef struct eqd_policy_node {
  int depthwise;
  int cin, cout, kh, kw, stride_h, stride_w;
  int in_h, in_w; /* input height and width at Prepare (0: unknown)       */
  int wbits;      /* 7 if every weight is in [-63, 63] (and option bits=7),
                     else 8: the direct kernels' fast paths depend on it */
} eqd_policy_node;

/* One node's claim decision (every CONV_2D / DEPTHWISE_CONV_2D considered). */
typedef struct eqd_decision {
  int node_index;
  int depthwise;
  int claimed;
  int family;        /* eqd_family op_init uses for a claimed node      */
  int kh, kw, stride_h, cin, cout;
  char reason[256];  /* why claimed or declined (stats, debug log)      */
} eqd_decision;

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
  eqd_decision* decisions; /* every Prepare appends its considered nodes  */
  int n_decisions, cap_decisions;
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

/* claim_policy.c: decides under opt->policy whether to claim a supported
 * node and with which kernel family; writes the reason.  nthreads: the
 * threads the kernels will use.  Returns 1 to claim, 0 to decline. */
int eqd_policy_claims(const eqd_options* opt, const eqd_policy_node* n, int nthreads,
                      eqd_family* family, char* reason, size_t cap);
/* The family decided for a claimed node at the latest Prepare, or -1. */
int eqd_decided_family(const eqd_delegate* d, int node_index);

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
