#!/usr/bin/env bash
# Install the result of scripts/train_demo_model_gpu.sh into weights/demo (run here, after the GPU call).
#
#   scripts/install_demo_model.sh FILES_DIR
#     FILES_DIR  the files the GPU call returned (checkpoint.tar.part-*, unet_optimizer.safetensors, report.tar,
#                fourdm.tar, console.log)
#
# 1. reassembles the run in .carry/demo-run/ (checkpoint/, samples/, train_log.jsonl, summary.json, report.md);
# 2. re-exports weights/demo/fourdm from the checkpoint with this machine's pinned libraries (export_only) and
#    checks it against the folder the GPU exported, tensor for tensor;
# 3. copies samples/, train_log.jsonl, summary.json and report.md to weights/demo/training/;
# 4. packs a slim resume set in .carry/demo-resume/ (the checkpoint without the raw UNet weights and the AdamW
#    moments, ~16 MB, plus train_log.jsonl): a second GPU call resumes from the EMA weights with a fresh AdamW and
#    fits the 64 MiB carry beside .whl, the data and the committed weights. The full checkpoint stays in $RUN.
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${1:?usage: scripts/install_demo_model.sh FILES_DIR}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
RUN=.carry/demo-run
RESUME=.carry/demo-resume

rm -rf "$RUN" "$RESUME" && mkdir -p "$RUN" "$RESUME"
cat "$FILES"/checkpoint.tar.part-* | tar -x -C "$RUN"
if [ -f "$FILES/unet_optimizer.safetensors" ]; then cp "$FILES/unet_optimizer.safetensors" "$RUN/checkpoint/"; fi
tar -cf - -C "$RUN" checkpoint/state.json checkpoint/vae.safetensors checkpoint/encoders.safetensors \
    checkpoint/unet_ema.safetensors | split -b 15M - "$RESUME/checkpoint.tar.part-"
tar -x -C "$RUN" -f "$FILES/report.tar"
if [ ! -f "$RUN/report.md" ]; then  # runs of the trainer before report.md existed
    "$PY" -c "import json, sys; from pathlib import Path; from stages.mvgen.training.demo_model import write_report; \
run = Path(sys.argv[1]); write_report(run, json.loads((run / 'summary.json').read_text()))" "$RUN"
fi
cp "$RUN/train_log.jsonl" "$RESUME/"
mkdir -p "$RUN/gpu" && tar -x -C "$RUN/gpu" -f "$FILES/fourdm.tar"

FOURD_TRACKING=off "$PY" -m stages.mvgen.training.demo_model --config configs/demo/demo_model.yaml \
    --output "$RUN" --export-only
"$PY" - "$RUN/fourdm" "$RUN/gpu/fourdm" <<'EOF'
import sys
from pathlib import Path

from safetensors.torch import load_file

local, gpu = map(Path, sys.argv[1:])
files = sorted(p.relative_to(local) for p in local.rglob("*.safetensors"))
assert files, f"no weights in {local}"
for rel in files:
    a, b = load_file(str(local / rel)), load_file(str(gpu / rel))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), f"{rel} differs from the GPU export"
import json

def settings(path: Path) -> dict:  # a component's config without the library's bookkeeping (_diffusers_version...)
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}

# The diffusers components' configs (the transformers ones carry that library's version-dependent defaults): e.g.
# the scheduler's prediction type differs when the export's config lacks the GPU run's --set overrides.
configs = [Path("scheduler/scheduler_config.json"), Path("unet/config.json"), Path("vae/config.json")]
for rel in configs:
    assert (local / rel).is_file() and settings(local / rel) == settings(gpu / rel), (
        f"{rel} differs from the GPU export: export with the configuration the GPU run trained with"
    )
print(f"install_demo_model: {len(files)} weight files and {len(configs)} configs equal to the GPU export")
EOF
rm -rf weights/demo/fourdm weights/demo/training
mkdir -p weights/demo/training
cp -r "$RUN/fourdm" weights/demo/fourdm
cp -r "$RUN/samples" "$RUN/train_log.jsonl" "$RUN/summary.json" "$RUN/report.md" weights/demo/training/
du -sh weights/demo/fourdm weights/demo/training
echo "install_demo_model: weights/demo ready; read weights/demo/training/report.md, then commit weights/demo"
