#!/usr/bin/env bash
# Build tiny-cuda-nn's PyTorch bindings (the `tinycudann` package) from a source tree assembled by
# scripts/assemble_tcnn.sh, into a folder for PYTHONPATH (../shared/design/platform-notes.md §8).
#
# Usage: scripts/build_tcnn.sh SRC_DIR SITE_DIR      patch SRC_DIR, build, install into SITE_DIR
#        scripts/build_tcnn.sh --patch-only SRC_DIR  only patch SRC_DIR (no CUDA needed)
# Environment: TCNN_CUDA_ARCHITECTURES (default 90: H100; e.g. "80;86;90"), MAX_JOBS (default: all cores),
#   PYTHON (default python3: the interpreter whose torch the extension is built against; it needs setuptools<82
#   (setup.py imports pkg_resources) and ninja, and nvcc of the CUDA major version that torch was built with).
# Then: export PYTHONPATH=SITE_DIR:$PYTHONPATH. ~180 s on 16 cores for one architecture (platform notes §8).
#
# The patch: as built against torch 2.11 / CUDA 13, every hash-grid forward segfaulted inside
# `tcnn::bytes_to_string` (include/tiny-cuda-nn/common_host.h: its std::ostringstream formatting crashes in the
# extension's libstdc++ locale code). Its stream formatting is replaced by the equivalent fmt::format("{:.3g} {}")
# (fmt is already a dependency). Applying it twice is a no-op; a source without the expected text stops the build.
set -euo pipefail

die() { echo "build_tcnn.sh: $*" >&2; exit 1; }
PYTHON=${PYTHON:-python3}

patch_only=0
if [ "${1:-}" = "--patch-only" ]; then
    patch_only=1
    shift
    [ $# -eq 1 ] || die "usage: scripts/build_tcnn.sh --patch-only SRC_DIR"
else
    [ $# -eq 2 ] || die "usage: scripts/build_tcnn.sh SRC_DIR SITE_DIR (or --patch-only SRC_DIR)"
fi
SRC=$1
HEADER=$SRC/include/tiny-cuda-nn/common_host.h
[ -f "$SRC/bindings/torch/setup.py" ] && [ -f "$HEADER" ] \
    || die "$SRC is not a tiny-cuda-nn source tree (no bindings/torch/setup.py or $HEADER); see scripts/assemble_tcnn.sh"

# 1. The bytes_to_string patch (idempotent).
"$PYTHON" - "$HEADER" <<'PATCH'
import os
import re
import sys

path = sys.argv[1]
with open(path) as fh:
    text = fh.read()
head = "inline std::string bytes_to_string(size_t bytes) {"
start = text.find(head)
if start < 0:
    sys.exit(f"build_tcnn.sh: {path} has no `{head}`: not the tiny-cuda-nn this patch was written for")
end = text.find("\n}", start)  # the function's closing brace, at column 0
body = text[start:end]
fixed = 'return fmt::format("{:.3g} {}", count, suffixes[i]);'
if fixed in body:
    print(f"build_tcnn.sh: {path}: bytes_to_string already patched")
    sys.exit(0)
stream = re.compile(
    r'std::ostringstream oss;\s*oss\.precision\(3\);\s*oss << count << " " << suffixes\[i\];\s*return oss\.str\(\);'
)
body, n = stream.subn(fixed, body)
if n != 1:
    sys.exit(f"build_tcnn.sh: {path}: bytes_to_string does not hold the expected std::ostringstream formatting")
tmp = path + ".patching"
with open(tmp, "w") as fh:
    fh.write(text[:start] + body + text[end:])
os.replace(tmp, path)
print(f"build_tcnn.sh: {path}: bytes_to_string patched (fmt::format instead of std::ostringstream)")
PATCH
[ "$patch_only" = 1 ] && exit 0

# 2. Build and install the bindings into SITE_DIR.
SITE=$2
command -v nvcc >/dev/null || die "nvcc not found: the build needs the CUDA toolkit (in Docker: a -devel base image)"
"$PYTHON" -c "import torch" 2>/dev/null || die "$PYTHON cannot import torch"
# tiny-cuda-nn@6ee3546's setup.py imports pkg_resources, which setuptools 82 removed.
"$PYTHON" -W ignore -c "import pkg_resources" 2>/dev/null \
    || die "$PYTHON has no pkg_resources (tiny-cuda-nn's setup.py imports it): install setuptools<82, e.g. 81.0.0"
ARCHS=${TCNN_CUDA_ARCHITECTURES:-90}
JOBS=${MAX_JOBS:-$(nproc)}
# The extension links -lcuda. Where no driver is installed (docker build), the toolkit's stub library stands in;
# the loader finds the real libcuda.so.1 at run time.
CUDA_ROOT=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc)")")}
if [ -d "$CUDA_ROOT/lib64/stubs" ]; then export LIBRARY_PATH=${LIBRARY_PATH:+$LIBRARY_PATH:}$CUDA_ROOT/lib64/stubs; fi
mkdir -p "$SITE"
SITE=$(cd "$SITE" && pwd)
echo "build_tcnn.sh: building tinycudann for sm_${ARCHS//;/,sm_} with $JOBS jobs into $SITE"
start=$SECONDS
(cd "$SRC/bindings/torch" && TCNN_CUDA_ARCHITECTURES=$ARCHS MAX_JOBS=$JOBS "$PYTHON" -m pip install \
    --no-index --no-build-isolation --no-deps --no-cache-dir --upgrade --target "$SITE" .)
[ -f "$SITE/tinycudann/__init__.py" ] || die "no tinycudann package in $SITE after the build"
for arch in ${ARCHS//[;,]/ }; do
    compgen -G "$SITE/tinycudann_bindings/_${arch}_C*.so" >/dev/null || die "no extension for sm_$arch in $SITE"
done
echo "build_tcnn.sh: built in $((SECONDS - start)) s; use it with: export PYTHONPATH=$SITE:\$PYTHONPATH"
