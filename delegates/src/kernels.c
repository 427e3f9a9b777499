/*
 * kernels.c -- the kernel table (see eqd_kernel.h) and the one selection
 * rule: per family, the first row whose CPU features are all available and
 * which is eligible for the node.  Best first; the scalar references last.
 */
#include <string.h>

#include "eqd_kernel.h"

const eqd_kernel* const eqd_kernels[] = {
#if defined(__x86_64__) || defined(__i386__)
    &eqd_kernel_winograd_avx2,
    &eqd_kernel_direct_avx2,
    &eqd_kernel_dwconv_avx2,
#endif
#if defined(__aarch64__)
    &eqd_kernel_winograd_neon,
    &eqd_kernel_direct_neon_dot,
    &eqd_kernel_direct_neon,
    &eqd_kernel_dwconv_neon,
#endif
    &eqd_kernel_winograd_scalar,
    &eqd_kernel_direct_scalar,
    &eqd_kernel_dwconv_scalar,
};
const int eqd_n_kernels = (int)(sizeof(eqd_kernels) / sizeof(eqd_kernels[0]));

const eqd_kernel* eqd_select_kernel(const eqd_conv* c, eqd_family family,
                                    uint32_t features) {
  for (int i = 0; i < eqd_n_kernels; ++i) {
    const eqd_kernel* k = eqd_kernels[i];
    if (k->family != family || (k->cpu_features & ~features) != 0) continue;
    if (k->eligible && !k->eligible(c)) continue;
    return k;
  }
  return NULL;
}

const eqd_kernel* eqd_find_kernel(const char* name) {
  for (int i = 0; i < eqd_n_kernels; ++i)
    if (!strcmp(eqd_kernels[i]->name, name)) return eqd_kernels[i];
  return NULL;
}
