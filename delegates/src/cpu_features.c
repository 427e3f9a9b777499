/*
 * cpu_features.c -- the one place where CPU features are detected.
 * Kernels never test features themselves; delegate.c asks once per delegate
 * and stores the answer in each node (eqd_conv.isa).
 *
 * AVX-512 / AVX-VNNI kernels are deliberately absent: the development and CI
 * machines have no AVX-512, and an untested kernel is worse than none.
 */
#include "eqd_conv.h"

int eqd_detect_isa(void) {
  static int cached = -1; /* benign race: every thread computes the same */
  int isa = __atomic_load_n(&cached, __ATOMIC_RELAXED);
  if (isa >= 0) return isa;
  isa = EQD_ISA_SCALAR;
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
  __builtin_cpu_init();
  /* libgcc's "avx2" also requires the OS to save YMM state (XCR0). */
  if (__builtin_cpu_supports("avx2")) isa = EQD_ISA_AVX2;
#endif
  __atomic_store_n(&cached, isa, __ATOMIC_RELAXED);
  return isa;
}
