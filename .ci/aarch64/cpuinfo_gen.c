/*
 * cpuinfo_gen.c -- prints a Linux aarch64 /proc/cpuinfo for the CPU this
 * program runs on (under qemu-aarch64 -cpu MODEL: the emulated one), from
 * getauxval(AT_HWCAP/AT_HWCAP2) and MIDR_EL1.  Usage: cpuinfo_gen NCPUS.
 * Feature names follow the kernel's arch/arm64/kernel/cpuinfo.c.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/auxv.h>

static const char* const hwcap_names[32] = {
    "fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32",
    "atomics", "fphp", "asimdhp", "cpuid", "asimdrdm", "jscvt", "fcma", "lrcpc",
    "dcpop", "sha3", "sm3", "sm4", "asimddp", "sha512", "sve", "asimdfhm",
    "dit", "uscat", "ilrcpc", "flagm", "ssbs", "sb", "paca", "pacg"};
static const char* const hwcap2_names[20] = {
    "dcpodp", "sve2", "sveaes", "svepmull", "svebitperm", "svesha3", "svesm4",
    "flagm2", "frint", "svei8mm", "svef32mm", "svef64mm", "svebf16", "i8mm",
    "bf16", "dgh", "rng", "bti", "mte", "ecv"};

int main(int argc, char** argv) {
  const int ncpu = argc > 1 ? atoi(argv[1]) : 1;
  const unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
  uint64_t midr = 0;
  if (hw & (1UL << 11)) __asm__ volatile("mrs %0, midr_el1" : "=r"(midr));
  for (int cpu = 0; cpu < (ncpu > 0 ? ncpu : 1); ++cpu) {
    printf("processor\t: %d\nBogoMIPS\t: 50.00\nFeatures\t:", cpu);
    for (int b = 0; b < 32; ++b)
      if (hw & (1UL << b)) printf(" %s", hwcap_names[b]);
    for (int b = 0; b < 20; ++b)
      if (hw2 & (1UL << b)) printf(" %s", hwcap2_names[b]);
    printf("\nCPU implementer\t: 0x%02x\nCPU architecture: 8\n"
           "CPU variant\t: 0x%x\nCPU part\t: 0x%03x\nCPU revision\t: %d\n\n",
           (unsigned)(midr >> 24) & 0xff, (unsigned)(midr >> 20) & 0xf,
           (unsigned)(midr >> 4) & 0xfff, (unsigned)midr & 0xf);
  }
  return 0;
}
