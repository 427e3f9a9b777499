/*
 * cpuinfo_shim.c -- LD_PRELOAD library for aarch64 processes under
 * qemu-user: opening /proc/cpuinfo opens the file named by EQ_CPUINFO.
 *
 * qemu 7.2 does not emulate /proc/cpuinfo for aarch64 guests, so the guest
 * sees the host's x86 text; LiteRT's cpuinfo library then misreads the CPU
 * and its builtin kernels crash.  The replacement file is generated from the
 * emulated CPU's own HWCAP and MIDR by cpuinfo_gen.c, so its Features line
 * matches the -cpu model.  Test tooling only; never shipped.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char* redirect(const char* path) {
  const char* alt = getenv("EQ_CPUINFO");
  if (path && alt && *alt && strcmp(path, "/proc/cpuinfo") == 0) return alt;
  return path;
}

static int mode_of(int flags, va_list ap) {
  return (flags & (O_CREAT | O_TMPFILE)) ? va_arg(ap, int) : 0;
}

#define OPEN_WRAPPER(name)                                              \
  int name(const char* path, int flags, ...) {                          \
    static int (*real)(const char*, int, ...);                          \
    if (!real) real = (int (*)(const char*, int, ...))dlsym(RTLD_NEXT, #name); \
    va_list ap;                                                         \
    va_start(ap, flags);                                                \
    const int mode = mode_of(flags, ap);                                \
    va_end(ap);                                                         \
    return real(redirect(path), flags, mode);                           \
  }
OPEN_WRAPPER(open)
OPEN_WRAPPER(open64)

#define OPENAT_WRAPPER(name)                                                 \
  int name(int dirfd, const char* path, int flags, ...) {                    \
    static int (*real)(int, const char*, int, ...);                          \
    if (!real) real = (int (*)(int, const char*, int, ...))dlsym(RTLD_NEXT, #name); \
    va_list ap;                                                              \
    va_start(ap, flags);                                                     \
    const int mode = mode_of(flags, ap);                                     \
    va_end(ap);                                                              \
    return real(dirfd, redirect(path), flags, mode);                         \
  }
OPENAT_WRAPPER(openat)
OPENAT_WRAPPER(openat64)

#define FOPEN_WRAPPER(name)                                                   \
  FILE* name(const char* path, const char* mode) {                            \
    static FILE* (*real)(const char*, const char*);                           \
    if (!real) real = (FILE * (*)(const char*, const char*))dlsym(RTLD_NEXT, #name); \
    return real(redirect(path), mode);                                        \
  }
FOPEN_WRAPPER(fopen)
FOPEN_WRAPPER(fopen64)
