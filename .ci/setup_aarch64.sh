#!/usr/bin/env bash
# Sets up everything the aarch64 tests need on an x86_64 Debian/Ubuntu host:
#   * gcc-aarch64-linux-gnu and qemu-user (apt);
#   * an aarch64 CPython 3.11 root, unpacked from Debian arm64 .debs
#     (dpkg --add-architecture arm64; apt-get download; dpkg -x);
#   * aarch64 wheels of ai-edge-litert and numpy (pip download --platform);
#   * a /proc/cpuinfo LD_PRELOAD shim plus one cpuinfo file per emulated CPU
#     model, generated from that model's own HWCAP/MIDR (see
#     .ci/aarch64/cpuinfo_shim.c: LiteRT's builtin kernels crash under
#     qemu-user without it).
# Idempotent: everything lands in $EQ_AARCH64_CACHE (default
# ~/.cache/eq-tflite-aarch64); a re-run with an intact cache only checks the
# stamp and returns in well under a second.  tests/delegate/aarch64.py reads
# the same directory.  Needs root (or sudo) for apt only on the first run.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="${EQ_AARCH64_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/eq-tflite-aarch64}"
LITERT_VERSION=2.3.0
NUMPY_VERSION=2.4.6
CPU_MODELS="cortex-a72 neoverse-n1"
DEBS="python3.11-minimal libpython3.11-minimal libpython3.11-stdlib python3.11
libc6 zlib1g libffi8 libexpat1 libssl3 libbz2-1.0 liblzma5 libsqlite3-0 libgcc-s1
libstdc++6 libuuid1 libncursesw6 libtinfo6 libreadline8 libcrypt1 libnsl2 libtirpc3
libdb5.3 libgdbm6"

# The stamp names everything that shapes the cache; change any -> rebuild.
KEY="$(cat "$0" "$HERE/aarch64/cpuinfo_shim.c" "$HERE/aarch64/cpuinfo_gen.c" | sha256sum | cut -c1-16)"
have_tools() { command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64 >/dev/null; }
if have_tools && [ "$(cat "$CACHE/ready" 2>/dev/null)" = "$KEY" ]; then
  echo "aarch64 toolchain: cached in $CACHE"
  exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
log() { echo "setup_aarch64: $*"; }
t0=$(date +%s)

if ! have_tools; then
  log "apt-get install gcc-aarch64-linux-gnu qemu-user"
  $SUDO apt-get install -y -q gcc-aarch64-linux-gnu qemu-user >/dev/null ||
    { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q gcc-aarch64-linux-gnu qemu-user >/dev/null; }
fi

mkdir -p "$CACHE/debs" "$CACHE/wheels"
rm -f "$CACHE/ready"

# --- aarch64 CPython root --------------------------------------------------
if [ ! -x "$CACHE/root/usr/bin/python3.11" ]; then
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    log "dpkg --add-architecture arm64"
    $SUDO dpkg --add-architecture arm64
  fi
  pkgs=""
  for p in $DEBS; do pkgs="$pkgs $p:arm64"; done
  pkgs="$pkgs media-types"
  # shellcheck disable=SC2086
  (cd "$CACHE/debs" && apt-get download $pkgs >/dev/null 2>&1) || {
    log "apt-get update (arm64 package lists)"
    $SUDO apt-get update -q >/dev/null
    # shellcheck disable=SC2086
    (cd "$CACHE/debs" && apt-get download $pkgs >/dev/null)
  }
  rm -rf "$CACHE/root.tmp"
  mkdir -p "$CACHE/root.tmp"
  for deb in "$CACHE"/debs/*.deb; do dpkg -x "$deb" "$CACHE/root.tmp"; done
  rm -rf "$CACHE/root"
  mv "$CACHE/root.tmp" "$CACHE/root"
fi

# --- aarch64 wheels ----------------------------------------------------------
PLAT="--platform manylinux_2_27_aarch64 --platform manylinux_2_28_aarch64 \
--platform manylinux2014_aarch64 --python-version 3.11 --implementation cp \
--abi cp311 --abi abi3 --abi none"
if [ ! -f "$CACHE/site/.done-$LITERT_VERSION-$NUMPY_VERSION" ]; then
  log "pip download ai-edge-litert==$LITERT_VERSION numpy==$NUMPY_VERSION (aarch64)"
  # shellcheck disable=SC2086
  python3 -m pip download -q --only-binary=:all: $PLAT \
    "ai-edge-litert==$LITERT_VERSION" "numpy==$NUMPY_VERSION" -d "$CACHE/wheels"
  rm -rf "$CACHE/site"
  # shellcheck disable=SC2086
  python3 -m pip install -q --no-deps --no-compile $PLAT --target "$CACHE/site" \
    "$CACHE"/wheels/*.whl
  touch "$CACHE/site/.done-$LITERT_VERSION-$NUMPY_VERSION"
fi

# --- /proc/cpuinfo shim and per-model cpuinfo files ------------------------
mkdir -p "$CACHE/shim"
aarch64-linux-gnu-gcc -O2 -shared -fPIC -o "$CACHE/shim/cpuinfo_shim.so" \
  "$HERE/aarch64/cpuinfo_shim.c" -ldl
aarch64-linux-gnu-gcc -O2 -static -o "$CACHE/shim/cpuinfo_gen" "$HERE/aarch64/cpuinfo_gen.c"
for cpu in $CPU_MODELS; do
  qemu-aarch64 -cpu "$cpu" "$CACHE/shim/cpuinfo_gen" "$(nproc)" >"$CACHE/shim/cpuinfo-$cpu"
  grep -q '^Features.* asimd' "$CACHE/shim/cpuinfo-$cpu" ||
    { log "error: cpuinfo for $cpu has no asimd"; exit 1; }
done

# --- wrapper and smoke test ----------------------------------------------------
mkdir -p "$CACHE/bin"
cat >"$CACHE/bin/python-aarch64" <<WRAP
#!/usr/bin/env bash
# aarch64 python3.11 with numpy + ai-edge-litert under qemu-user.
# EQ_QEMU_CPU selects the emulated CPU (default neoverse-n1; also cortex-a72).
# Never -cpu max: qemu 7.2's SME emulation breaks XNNPACK.
cpu="\${EQ_QEMU_CPU:-neoverse-n1}"
exec qemu-aarch64 -cpu "\$cpu" -L "$CACHE/root" \\
  -E LD_PRELOAD="$CACHE/shim/cpuinfo_shim.so" -E EQ_CPUINFO="$CACHE/shim/cpuinfo-\$cpu" \\
  -E PYTHONPATH="$CACHE/site\${PYTHONPATH:+:\$PYTHONPATH}" -E PYTHONDONTWRITEBYTECODE=1 \\
  "$CACHE/root/usr/bin/python3.11" "\$@"
WRAP
chmod +x "$CACHE/bin/python-aarch64"
"$CACHE/bin/python-aarch64" -c "import numpy, platform; from ai_edge_litert.interpreter import Interpreter; assert platform.machine() == 'aarch64'" ||
  { log "error: the aarch64 python does not start"; exit 1; }
echo "$KEY" >"$CACHE/ready"
log "ready in $CACHE ($(( $(date +%s) - t0 )) s)"
