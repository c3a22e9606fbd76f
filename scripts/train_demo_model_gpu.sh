#!/usr/bin/env bash
# One GPU call of the demo model's training (weights/demo/README.md): unpack the renders, train or resume for
# MINUTES, pack the run into $OUT as at most 7 files of at most 15 MiB each.
#
# Run in the repository root on the device machine (torch 2.11 + CUDA, Python 3.12, no pydantic 2 / diffusers:
# the carried wheels in .whl/ provide them), carrying .whl and .carry/demo_renders.tar.xz, plus for a resumed
# run the parts of an earlier run in .carry/demo-resume/ (scripts/install_demo_model.sh --resume-dir puts them there):
#
#   bash scripts/train_demo_model_gpu.sh        # MINUTES=8.0 by default: ~8.5 min wall in all
#
# A one-minute smoke test of the same path (tiny step counts, nothing kept):
#   EXTRA="--set vae_steps=50 --set unet_steps=40 --set sample_steps=4 --set checkpoint_every=20" MINUTES=3 \
#       bash scripts/train_demo_model_gpu.sh
#
# $OUT receives: fourdm.tar (the exported FourDM folder), checkpoint.tar.part-aa/-ab (the resumable weights),
# unet_optimizer.safetensors (AdamW moments), report.tar (samples/, train_log.jsonl, summary.json, report.md) and
# console.log. A resume set (.carry/demo-resume/: checkpoint.tar.part-* and train_log.jsonl, written by
# scripts/install_demo_model.sh) may lack unet.safetensors and the moments: training then goes on from the EMA
# weights with a fresh AdamW (warm-up).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder that comes back}"
MINUTES=${MINUTES:-8.0}
DATA_TAR=${DATA_TAR:-.carry/demo_renders.tar.xz}
RESUME=${RESUME:-.carry/demo-resume}
RUN=${RUN:-/tmp/demo-model-run}
DATA=${DATA:-/tmp/demo-renders}
SITE=${SITE:-/tmp/site}

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
export PYTHONPATH="$SITE:$PWD" FOURD_TRACKING=off PYTHONUNBUFFERED=1
rm -rf "$DATA" && mkdir -p "$DATA" "$RUN"
python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" "$DATA_TAR" "$DATA"
if compgen -G "$RESUME/checkpoint.tar.part-*" >/dev/null; then
    rm -rf "$RUN/checkpoint"
    cat "$RESUME"/checkpoint.tar.part-* | tar -x -C "$RUN"
    if [ -f "$RESUME/unet_optimizer.safetensors" ]; then cp "$RESUME/unet_optimizer.safetensors" "$RUN/checkpoint/"; fi
    if [ -f "$RESUME/train_log.jsonl" ]; then cp "$RESUME/train_log.jsonl" "$RUN/"; fi
    echo "resuming from $(cat "$RUN/checkpoint/state.json" | tr -d '\n ')"
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
status=0
python3 -m stages.mvgen.training.demo_model --config configs/demo/demo_model.yaml --data "$DATA" \
    --output "$RUN" --minutes "$MINUTES" ${EXTRA:-} 2>&1 | tee "$OUT/console.log" || status=$?

# Pack whatever exists (a run that ran out of time in the VAE phase still leaves its checkpoint).
[ -d "$RUN/fourdm" ] && tar -cf "$OUT/fourdm.tar" -C "$RUN" fourdm
if [ -d "$RUN/checkpoint" ]; then
    tar -cf - -C "$RUN" --exclude unet_optimizer.safetensors checkpoint | split -b 15M - "$OUT/checkpoint.tar.part-"
    [ -f "$RUN/checkpoint/unet_optimizer.safetensors" ] && cp "$RUN/checkpoint/unet_optimizer.safetensors" "$OUT/"
fi
report=()
for f in samples train_log.jsonl summary.json report.md; do [ -e "$RUN/$f" ] && report+=("$f"); done
[ ${#report[@]} -gt 0 ] && tar -cf "$OUT/report.tar" -C "$RUN" "${report[@]}"
ls -l "$OUT"
exit "$status"
