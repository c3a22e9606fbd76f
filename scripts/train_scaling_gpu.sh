#!/usr/bin/env bash
# 4DM training on 1 vs 2 GPUs (issue #11): benchmarks/train_scaling.py on the device machine.
#
# Run in the repository root on a 2-GPU device machine (torch 2.11 + CUDA, Python 3.12; diffusers and pydantic 2
# come from the carried wheels in .whl/), carrying .whl and .carry/demo_renders.tar.xz (the training renders,
# scripts/render_demo_training_data.sh):
#
#   bash scripts/train_scaling_gpu.sh              # ~6 min: cases demo (1/2 GPUs), full (1/2 GPUs), full-ckpt (1 GPU)
#   CASES="demo" STEPS=20 bash scripts/train_scaling_gpu.sh    # a quick check of the same path
#   CASES="demo" STEPS=300 SET=micro_batch_size=4 bash scripts/train_scaling_gpu.sh   # one --set KEY=VALUE override
#
# $OUT receives train_scaling.json (the benchmark's JSON), train_scaling.txt (its table) and each run's console log.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder that comes back}"
DATA_TAR=${DATA_TAR:-.carry/demo_renders.tar.xz}
DATA=${DATA:-/tmp/demo-renders}
SITE=${SITE:-/tmp/site}
WORK=${WORK:-/tmp/train-scaling}
CASES=${CASES:-demo full full-ckpt}

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
export PYTHONPATH="$SITE:$PWD" FOURD_TRACKING=off PYTHONUNBUFFERED=1
rm -rf "$DATA" && mkdir -p "$DATA"
python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" "$DATA_TAR" "$DATA"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
status=0
# shellcheck disable=SC2086
python3 benchmarks/train_scaling.py --data "$DATA" --gpus 1 2 --cases $CASES --work "$WORK" \
    --json "$OUT/train_scaling.json" ${STEPS:+--steps "$STEPS"} ${SET:+--set $SET} 2>&1 | tee "$OUT/train_scaling.txt" || status=$?
for f in "$WORK"/*/console.log; do
    [ -f "$f" ] && cp "$f" "$OUT/$(basename "$(dirname "$f")").console.log"
done
exit "$status"
