/*
 * cpu_features.c -- the one place where CPU features are detected: cpuid
 * (through libgcc's __builtin_cpu_supports, which also checks that the OS
 * saves YMM state) on x86, getauxval(AT_HWCAP) on Linux/Android aarch64.
 * Kernels never test features themselves; the kernel table (kernels.c) is
 * filtered by these bits once per node, in op_init.
 *
 * AVX-512 VNNI and AVX-VNNI are detected but used by no kernel: they only
 * classify the CPU for the claim policy (eqd_isa_class), because XNNPACK's
 * int8 kernels use them.  i8mm is not detected (no kernel, no table row).
 */
#define _GNU_SOURCE
#include "eqd_kernel.h"

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#define EQD_HWCAP_ASIMD (1UL << 1)
#define EQD_HWCAP_ASIMDDP (1UL << 20)
#endif

uint32_t eqd_cpu_features(void) {
  static int cached = -1; /* benign race: every thread computes the same */
  int f = __atomic_load_n(&cached, __ATOMIC_RELAXED);
  if (f >= 0) return (uint32_t)f;
  uint32_t features = 0;
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2")) features |= EQD_CPU_AVX2;
  /* libgcc also checks that the OS saves the ZMM / opmask state (XCR0). */
  if (__builtin_cpu_supports("avx512vnni")) features |= EQD_CPU_AVX512VNNI;
  if (__builtin_cpu_supports("avxvnni")) features |= EQD_CPU_AVXVNNI;
#elif defined(__aarch64__) && defined(__linux__)
  const unsigned long hw = getauxval(AT_HWCAP);
  if (hw & EQD_HWCAP_ASIMD) features |= EQD_CPU_NEON;
  if ((hw & EQD_HWCAP_ASIMD) && (hw & EQD_HWCAP_ASIMDDP)) features |= EQD_CPU_DOTPROD;
#elif defined(__aarch64__)
  features |= EQD_CPU_NEON; /* Advanced SIMD is mandatory in ARMv8-A */
#endif
  __atomic_store_n(&cached, (int)features, __ATOMIC_RELAXED);
  return features;
}

const char* eqd_isa_name(uint32_t features) {
  if (features & EQD_CPU_AVX2) return "avx2";
  if (features & EQD_CPU_DOTPROD) return "neon-dotprod";
  if (features & EQD_CPU_NEON) return "neon";
  return "scalar";
}

const char* eqd_isa_class(uint32_t features) {
  if ((features & EQD_CPU_AVX2) && (features & (EQD_CPU_AVX512VNNI | EQD_CPU_AVXVNNI)))
    return "avx512vnni";
  if (features & EQD_CPU_AVX2) return "avx2";
  if (features & EQD_CPU_DOTPROD) return "neon-dotprod";
  if (features & EQD_CPU_NEON) return "neon";
  return "scalar";
}
