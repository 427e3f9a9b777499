/*
 * eq_tflite_c_abi.h -- the subset of the TensorFlow Lite C ABI that the
 * EasyQuant delegate uses, declared by this project.
 *
 * Neither the tensorflow nor the ai-edge-litert wheel ships TFLite's C
 * headers, and neither exports TfLite* symbols.  The delegate therefore
 * declares the structures it touches itself, following the documented
 * ("semi-ABI stable": fields are only ever appended) layout of TFLite's
 * public C interface, and reaches the runtime exclusively through the
 * function pointers in TfLiteContext.  Nothing here is linked against.
 *
 * Rules kept in this file:
 *   - Every struct that the runtime hands us by pointer is declared up to the
 *     last field we read.  A struct we hand to the runtime *by value*
 *     (TfLiteRegistration) or allocate ourselves (TfLiteDelegate) is declared
 *     in full, so its size matches what the runtime expects.
 *   - tests/delegate/test_abi_layout.py reads known tensors and nodes through
 *     these declarations (eqd_describe_graph in delegate.c) and compares them
 *     with what the Python interpreter and the flatbuffer report.
 *
 * Target: 64-bit Linux (LP64), TFLite 2.1x / LiteRT 2.x.
 */
#ifndef EQ_TFLITE_C_ABI_H_
#define EQ_TFLITE_C_ABI_H_

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status, types ------------------------------------------------------ */

typedef enum EqTfLiteStatus {
  kTfLiteOk = 0,
  kTfLiteError = 1,
  kTfLiteDelegateError = 2,
  kTfLiteApplicationError = 3,
} TfLiteStatus;

/* Element types (values fixed by the schema). Only the ones we test. */
typedef enum EqTfLiteType {
  kTfLiteNoType = 0,
  kTfLiteFloat32 = 1,
  kTfLiteInt32 = 2,
  kTfLiteUInt8 = 3,
  kTfLiteInt64 = 4,
  kTfLiteString = 5,
  kTfLiteBool = 6,
  kTfLiteInt16 = 7,
  kTfLiteComplex64 = 8,
  kTfLiteInt8 = 9,
  kTfLiteFloat16 = 10,
} TfLiteType;

/* Variable-length int array: `size` then `size` ints, allocated with malloc
 * by the runtime (TfLiteIntArrayCreate) and released with free(). */
typedef struct TfLiteIntArray {
  int size;
  int data[];
} TfLiteIntArray;

typedef struct TfLiteFloatArray {
  int size;
  float data[];
} TfLiteFloatArray;

/* Legacy per-tensor quantization parameters. */
typedef struct TfLiteQuantizationParams {
  float scale;
  int32_t zero_point;
} TfLiteQuantizationParams;

typedef enum EqTfLiteQuantizationType {
  kTfLiteNoQuantization = 0,
  kTfLiteAffineQuantization = 1,
} TfLiteQuantizationType;

typedef struct TfLiteQuantization {
  TfLiteQuantizationType type;
  void* params; /* TfLiteAffineQuantization* when type == affine */
} TfLiteQuantization;

typedef struct TfLiteAffineQuantization {
  TfLiteFloatArray* scale;
  TfLiteIntArray* zero_point;
  int32_t quantized_dimension;
} TfLiteAffineQuantization;

/* Only the untyped member is used. */
typedef union TfLitePtrUnion {
  int8_t* int8;
  int32_t* i32;
  char* raw;
  const char* raw_const;
  void* data;
} TfLitePtrUnion;

typedef enum EqTfLiteAllocationType {
  kTfLiteMemNone = 0,
  kTfLiteMmapRo = 1,
  kTfLiteArenaRw = 2,
  kTfLiteArenaRwPersistent = 3,
  kTfLiteDynamic = 4,
  kTfLitePersistentRo = 5,
  kTfLiteCustom = 6,
  kTfLiteVariantObject = 7,
  kTfLiteNonCpu = 8,
} TfLiteAllocationType;

typedef int TfLiteBufferHandle;

struct TfLiteDelegate;
struct TfLiteRegistration;
struct TfLiteSparsity;

/* ---- tensors and nodes (read through pointers) --------------------------- */

typedef struct TfLiteTensor {
  TfLiteType type;
  TfLitePtrUnion data;
  TfLiteIntArray* dims;
  TfLiteQuantizationParams params;
  TfLiteAllocationType allocation_type;
  size_t bytes;
  const void* allocation;
  const char* name;
  struct TfLiteDelegate* delegate;
  TfLiteBufferHandle buffer_handle;
  bool data_is_stale;
  bool is_variable;
  TfLiteQuantization quantization;
  struct TfLiteSparsity* sparsity;
  const TfLiteIntArray* dims_signature;
} TfLiteTensor;

typedef struct TfLiteNode {
  TfLiteIntArray* inputs;
  TfLiteIntArray* outputs;
  TfLiteIntArray* intermediates;
  TfLiteIntArray* temporaries;
  void* user_data;
  void* builtin_data;
  const void* custom_initial_data;
  int custom_initial_data_size;
  struct TfLiteDelegate* delegate;
  bool might_have_side_effect;
} TfLiteNode;

/* Given to a delegate kernel's init() as `buffer` (length 0). */
typedef struct TfLiteDelegateParams {
  struct TfLiteDelegate* delegate;
  TfLiteIntArray* nodes_to_replace;
  TfLiteIntArray* input_tensors;
  TfLiteIntArray* output_tensors;
} TfLiteDelegateParams;

/* ---- context: the only way we call into the runtime ---------------------- */

typedef struct TfLiteContext {
  size_t tensors_size;
  TfLiteStatus (*GetExecutionPlan)(struct TfLiteContext* context,
                                   TfLiteIntArray** execution_plan);
  TfLiteTensor* tensors;
  void* impl_;
  /* Takes ownership of new_size (must come from malloc). */
  TfLiteStatus (*ResizeTensor)(struct TfLiteContext*, TfLiteTensor* tensor,
                               TfLiteIntArray* new_size);
  void (*ReportError)(struct TfLiteContext*, const char* msg, ...);
  TfLiteStatus (*AddTensors)(struct TfLiteContext*, int tensors_to_add,
                             int* first_new_tensor_index);
  TfLiteStatus (*GetNodeAndRegistration)(struct TfLiteContext*, int node_index,
                                         TfLiteNode** node,
                                         struct TfLiteRegistration** reg);
  /* NB: the registration is passed BY VALUE: its full size matters. */
  TfLiteStatus (*ReplaceNodeSubsetsWithDelegateKernels)(
      struct TfLiteContext*, struct TfLiteRegistration registration,
      const TfLiteIntArray* nodes_to_replace, struct TfLiteDelegate* delegate);
  int recommended_num_threads;
  void* (*GetExternalContext)(struct TfLiteContext*, int type);
  void (*SetExternalContext)(struct TfLiteContext*, int type, void* ctx);
  bool allow_fp32_relax_to_fp16;
  void* profiler;
  /* Later members (AllocatePersistentBuffer, ... ReleaseSubgraphContext) are
   * not used; the context is only ever accessed through a pointer. */
} TfLiteContext;

/* ---- registration (passed by value: declared in full) -------------------- */

typedef struct TfLiteRegistration {
  void* (*init)(TfLiteContext* context, const char* buffer, size_t length);
  void (*free)(TfLiteContext* context, void* buffer);
  TfLiteStatus (*prepare)(TfLiteContext* context, TfLiteNode* node);
  TfLiteStatus (*invoke)(TfLiteContext* context, TfLiteNode* node);
  const char* (*profiling_string)(const TfLiteContext* context,
                                  const TfLiteNode* node);
  int32_t builtin_code;
  const char* custom_name;
  int version;
  void* registration_external; /* TfLiteOperator*; NULL for us */
  void* (*async_kernel)(TfLiteContext* context, TfLiteNode* node);
  uint64_t inplace_operator;
} TfLiteRegistration;

/* ---- delegate (allocated by us: declared in full) ------------------------ */

enum {
  kTfLiteDelegateFlagsNone = 0,
  kTfLiteDelegateFlagsAllowDynamicTensors = 1,
};

typedef struct TfLiteDelegate {
  void* data_;
  TfLiteStatus (*Prepare)(TfLiteContext* context,
                          struct TfLiteDelegate* delegate);
  TfLiteStatus (*CopyFromBufferHandle)(TfLiteContext* context,
                                       struct TfLiteDelegate* delegate,
                                       TfLiteBufferHandle buffer_handle,
                                       TfLiteTensor* tensor);
  TfLiteStatus (*CopyToBufferHandle)(TfLiteContext* context,
                                     struct TfLiteDelegate* delegate,
                                     TfLiteBufferHandle buffer_handle,
                                     TfLiteTensor* tensor);
  void (*FreeBufferHandle)(TfLiteContext* context,
                           struct TfLiteDelegate* delegate,
                           TfLiteBufferHandle* handle);
  int64_t flags;
  void* opaque_delegate_builder; /* must stay NULL */
} TfLiteDelegate;

/* ---- builtin op codes and options we inspect ----------------------------- */

enum {
  kTfLiteBuiltinConv2d = 3,
  kTfLiteBuiltinDepthwiseConv2d = 4,
};

typedef enum EqTfLitePadding {
  kTfLitePaddingUnknown = 0,
  kTfLitePaddingSame = 1,
  kTfLitePaddingValid = 2,
} TfLitePadding;

typedef enum EqTfLiteFusedActivation {
  kTfLiteActNone = 0,
  kTfLiteActRelu = 1,
  kTfLiteActReluN1To1 = 2,
  kTfLiteActRelu6 = 3,
  kTfLiteActTanh = 4,
  kTfLiteActSignBit = 5,
  kTfLiteActSigmoid = 6,
} TfLiteFusedActivation;

/* builtin_data of CONV_2D (later members, e.g. quantized_bias_type, unused). */
typedef struct TfLiteConvParams {
  TfLitePadding padding;
  int stride_width;
  int stride_height;
  TfLiteFusedActivation activation;
  int dilation_width_factor;
  int dilation_height_factor;
} TfLiteConvParams;

/* builtin_data of DEPTHWISE_CONV_2D. */
typedef struct TfLiteDepthwiseConvParams {
  TfLitePadding padding;
  int stride_width;
  int stride_height;
  int depth_multiplier;
  TfLiteFusedActivation activation;
  int dilation_width_factor;
  int dilation_height_factor;
} TfLiteDepthwiseConvParams;

/* ---- plugin entry points (what load_delegate() dlsym's) ------------------ */

#if defined(__GNUC__)
#define EQD_EXPORT __attribute__((visibility("default")))
#else
#define EQD_EXPORT
#endif

EQD_EXPORT TfLiteDelegate* tflite_plugin_create_delegate(
    char** options_keys, char** options_values, size_t num_options,
    void (*report_error)(const char*));
EQD_EXPORT void tflite_plugin_destroy_delegate(TfLiteDelegate* delegate);

/* Layout sanity checks that hold on LP64 for the documented layout. */
#if defined(__LP64__)
_Static_assert(sizeof(TfLiteRegistration) == 88, "TfLiteRegistration size");
_Static_assert(offsetof(TfLiteTensor, quantization) == 80, "TfLiteTensor");
_Static_assert(offsetof(TfLiteTensor, name) == 56, "TfLiteTensor.name");
_Static_assert(offsetof(TfLiteContext, recommended_num_threads) == 72,
               "TfLiteContext.recommended_num_threads");
_Static_assert(sizeof(TfLiteDelegate) == 56, "TfLiteDelegate size");
#endif

#ifdef __cplusplus
}
#endif

#endif /* EQ_TFLITE_C_ABI_H_ */
