#!/usr/bin/env bash
# Render the demo model's training set and pack it for the GPU machine (weights/demo/README.md says how it is used).
#
#   scripts/render_demo_training_data.sh [ASSETS_DIR] [OUTPUT_DIR] [TAR]
#     ASSETS_DIR  animated .glb assets            (default ../shared/assets)
#     OUTPUT_DIR  one render artifact per clip    (default .carry/demo-renders; git-ignored)
#     TAR         the same, packed in one file    (default .carry/demo_renders.tar.xz; what the GPU run carries)
#
# Needs the render venv (`make render-env`, or RENDER_PYTHON=/path/to/python with bpy 4.5.15). Measured on 2
# shared CPU cores: 32 clips of 5 assets, 11,928 images at 64², 611 s, a 15 MB tar.xz (weights/demo/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
ASSETS=${1:-../shared/assets}
OUT=${2:-.carry/demo-renders}
TAR=${3:-.carry/demo_renders.tar.xz}
PY=${RENDER_PYTHON:-.venv-render/bin/python}
if [ ! -x "$PY" ]; then make render-env; fi
start=$(date +%s)
"$PY" scripts/render_demo_training_data.py --assets "$ASSETS" --output "$OUT"
echo "render_demo_training_data: rendering took $(( $(date +%s) - start )) s"
mkdir -p "$(dirname "$TAR")"
# Sorted names, fixed owner and mtime: the same renders give the same bytes. xz: tar's 512-byte blocks would
# otherwise add 12 MB of padding to the 21 MB of small PNGs.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime='2024-01-01 00:00Z' -cf - -C "$OUT" . | xz -T1 -6 > "$TAR"
echo "render_demo_training_data: $(find "$OUT" -name '*.png' | wc -l) images, $(du -b "$TAR" | cut -f1) bytes in $TAR"
