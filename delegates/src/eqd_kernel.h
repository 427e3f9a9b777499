/*
 * eqd_kernel.h -- the kernel table: every convolution variant is one row.
 *
 * A row names the variant, its instruction set and family, says which nodes
 * it can run (`eligible`), packs the constant weights into its own opaque
 * data (`pack` / `unpack`), sizes its scratch memory for a shape
 * (`scratch_bytes`, after the optional `reshape`), and runs (`run`).
 *
 * The table (kernels.c) is ordered best first.  op_init picks, once per
 * node, the first row of the node's family whose CPU features the delegate
 * may use (detected once, in cpu_features.c, and narrowed by option `isa`)
 * and which is eligible.  Every family ends with its portable scalar
 * reference, which is always eligible.
 *
 * Adding a variant: one source file that defines its `const eqd_kernel`
 * row and one line in kernels.c.  The C harness (tests/delegate/
 * kernel_test.c) then tests it against its family's scalar reference by
 * itself; add its name to the expected sets of tests/delegate/
 * test_kernels.py (the test row), so that its absence would fail.
 */
#ifndef EQD_KERNEL_H_
#define EQD_KERNEL_H_

#include <stddef.h>
#include <stdint.h>

#include "eqd_conv.h"
#include "eqd_threadpool.h"

typedef enum eqd_family {
  EQD_FAMILY_DIRECT = 0,   /* CONV_2D, any kernel size, stride 1/2          */
  EQD_FAMILY_WINOGRAD = 1, /* CONV_2D 3x3 stride 1, F(2x2,3x3)              */
  EQD_FAMILY_DWCONV = 2,   /* DEPTHWISE_CONV_2D, depth multiplier 1         */
  EQD_FAMILY_COUNT
} eqd_family;

/* CPU feature bits (cpu_features.c). */
#define EQD_CPU_AVX2 (1u << 0)    /* x86-64 AVX2 with OS YMM support        */
#define EQD_CPU_NEON (1u << 1)    /* AArch64 Advanced SIMD (HWCAP_ASIMD)    */
#define EQD_CPU_DOTPROD (1u << 2) /* AArch64 SDOT/UDOT (HWCAP_ASIMDDP)      */
/* x86 int8 dot products.  No kernel here uses them (no row requires these
 * bits); they classify the CPU for the claim policy (claim_policy.c),
 * because XNNPACK's int8 kernels use them where they exist. */
#define EQD_CPU_AVX512VNNI (1u << 3) /* AVX-512 VNNI (VPDPBUSD on zmm), OS-enabled */
#define EQD_CPU_AVXVNNI (1u << 4)    /* AVX-VNNI (VEX-encoded VPDPBUSD)         */

/* Most sub-paths one run() can report (e.g. direct AVX2: i16x8/i16x4/i16x2). */
#define EQD_MAX_PATHS 4

typedef struct eqd_kernel {
  const char* name;        /* e.g. "direct_neon"                           */
  const char* isa;         /* "scalar", "avx2", "neon", "neon-dotprod"     */
  eqd_family family;
  uint32_t cpu_features;   /* all of these bits are required               */
  /* 1 if this variant can run node c (NULL: every node of the family). */
  int (*eligible)(const eqd_conv* c);
  /* Packs constant data into c->kdata (NULL: nothing to pack). 0 = ok. */
  int (*pack)(eqd_conv* c);
  void (*unpack)(void* kdata);
  /* Shape-dependent tables after a shape change (NULL: none). 0 = ok. */
  int (*reshape)(eqd_conv* c);
  /* Scratch for c's current shape and thread count. */
  size_t (*scratch_bytes)(eqd_conv* c);
  /* Runs; returns the index in paths[] of the code that ran. */
  int (*run)(const eqd_conv* c, const int8_t* in, int8_t* out, eqd_pool* pool);
  const char* paths[EQD_MAX_PATHS]; /* names of what run() reports         */
} eqd_kernel;

/* The table, best first within each family. */
extern const eqd_kernel* const eqd_kernels[];
extern const int eqd_n_kernels;

/* CPU features of this machine (detected once). */
uint32_t eqd_cpu_features(void);
/* The best isa name the features allow ("avx2", "neon-dotprod", ...). */
const char* eqd_isa_name(uint32_t features);
/* The CPU class of the claim policy's cost table: "avx512vnni" (AVX-512
 * VNNI or AVX-VNNI), "avx2" (AVX2 without VNNI), "neon-dotprod", "neon",
 * or "scalar" (anything else). */
const char* eqd_isa_class(uint32_t features);
/* The first eligible row of c's family within `features`. Never NULL for a
 * valid node (the scalar reference is always eligible). */
const eqd_kernel* eqd_select_kernel(const eqd_conv* c, eqd_family family,
                                    uint32_t features);
/* The family of a node: depthwise, Winograd (3x3 stride 1, 8..3640 input
 * and >= 8 output channels, when allowed) or direct. */
eqd_family eqd_conv_family(const eqd_conv* c, int winograd_allowed);
/* Makes k the node's kernel and packs its data (conv_params.c). 0 = ok. */
int eqd_conv_use_kernel(eqd_conv* c, const eqd_kernel* k);
/* Finds a row by name (tests); NULL if absent. */
const eqd_kernel* eqd_find_kernel(const char* name);

/* The variants (defined in their own files). */
extern const eqd_kernel eqd_kernel_direct_scalar;
extern const eqd_kernel eqd_kernel_winograd_scalar;
extern const eqd_kernel eqd_kernel_dwconv_scalar;
#if defined(__x86_64__) || defined(__i386__)
extern const eqd_kernel eqd_kernel_direct_avx2;
extern const eqd_kernel eqd_kernel_winograd_avx2;
extern const eqd_kernel eqd_kernel_dwconv_avx2;
#endif
#if defined(__aarch64__)
extern const eqd_kernel eqd_kernel_direct_neon;
extern const eqd_kernel eqd_kernel_direct_neon_dot;
extern const eqd_kernel eqd_kernel_winograd_neon;
extern const eqd_kernel eqd_kernel_dwconv_neon;
#endif

#endif /* EQD_KERNEL_H_ */
