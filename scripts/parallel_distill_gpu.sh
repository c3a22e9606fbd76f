#!/usr/bin/env bash
# Issue #11: two subjects distilled at once on a 2-GPU machine, one per GPU, by the flow's GPU pool (flows/gpus.py),
# against the same two one after the other. Both subjects go through preprocess → mvgen → distill (no eval: its
# CLIP/I3D weights are not on the GPU machine) with config set $CONFIG_SET (default demo-gpu: the demo model of
# weights/demo on CUDA, Triton hash grids, ~1-2 min a distill on an H100) and FOURD_TRACKING=off.
#
#   bash scripts/parallel_distill_gpu.sh <folder of rgba_00000.png …>     # OUT must be set
#
# Run in the repository root on the device machine (Python 3.12 + torch, no network, no Docker; the working copy is
# no git repository): unpacks .carry/site312.tar.xz into $SITE (scripts/pack_site312.sh: prefect, dvc, diffusers,
# PyAV, … installed here; carry it and the frame folder), copies the tree to $WORK (/tmp/fourd-repo), links
# weights/fourdm → weights/demo/fourdm (the official weights are absent), creates weights/eval/lpips as an empty folder (root dvc.yaml lists it as a
# distill dependency; the config sets' anchor_lpips is 0, so distill never reads it: stages/distill/run.py loads
# LPIPS only when that weight is > 0), commits the copy to a new git repository and registers the frame folder as
# subject $SUBJECT2. Then, for each phase, the workspace out/workspaces/<set>/ is deleted (so every stage runs
# again; the DVC cache is not restored from) and Triton's cache starts empty:
#   sequential: python -m flows.fourd --subject fox --subject $SUBJECT2 --parallel 1   (FOURD_GPUS=$GPUS)
#   parallel:   the same with --parallel 2
# Each phase's wall time is taken around the whole command (Prefect's temporary server start included, the same in
# both). The outputs are checked (distill manifest, orbit renders, preview.mp4) and $OUT receives
# parallel_distill.json (GPU names, both walls, each stage's seconds/GPU/start/end, speed-up), the two console logs
# and the two preview.mp4 of the parallel phase; a table is printed. Each phase's record and log reach $OUT as soon
# as it ends (sequential.json, sequential.log, …), so a call stopped at its time limit still returns the first.
#
# Knobs (environment): SUBJECT2 (second), FPS2 (8), PROMPT2 (the folder's prompt.txt if any), CONFIG_SET (demo-gpu),
# GPUS (0,1), PHASES ("sequential parallel"; one phase per call also works on a warm machine: results are kept in
# $WORK/.phases and combined once both exist; e.g. PHASES=parallel FRESH=0 INSTALL=0 for the second call),
# FRESH (1: new copy; 0 reuses $WORK), INSTALL (1; $SITE is used whenever it exists), PYTHON (python3),
# and for dry runs on a CPU: DEVICE=cpu (rewrites `device:` of the set's mvgen/distill in the copy),
# DISTILL_STEPS / MVGEN_STEPS (rewrite num_steps / num_inference_steps in the copy). E.g. on a CPU machine:
#   OUT=/tmp/o INSTALL=0 PYTHON=/tmp/venvtest/bin/python CONFIG_SET=demo DISTILL_STEPS=2 MVGEN_STEPS=2 \
#       bash scripts/parallel_distill_gpu.sh /path/to/frames
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD
: "${OUT:?set OUT to the folder that comes back}"
FRAMES=${1:?usage: bash scripts/parallel_distill_gpu.sh <folder of rgba_*.png frames>}
[ -d "$FRAMES" ] || { echo "error: $FRAMES is not a folder of frames" >&2; exit 2; }
FRAMES=$(cd "$FRAMES" && pwd)
SUBJECT2=${SUBJECT2:-second}
FPS2=${FPS2:-8}
PROMPT2=${PROMPT2:-}
CONFIG_SET=${CONFIG_SET:-demo-gpu}
GPUS=${GPUS:-0,1}
PHASES=${PHASES-sequential parallel}
FRESH=${FRESH:-1}
INSTALL=${INSTALL:-1}
PY=${PYTHON:-python3}
SITE=${SITE:-/tmp/site}
WORK=${WORK:-/tmp/fourd-repo}
DEVICE=${DEVICE:-}
DISTILL_STEPS=${DISTILL_STEPS:-}
MVGEN_STEPS=${MVGEN_STEPS:-}
STAGES=(preprocess mvgen distill)
mkdir -p "$OUT"
for tool in git tar "$PY"; do command -v "$tool" >/dev/null || { echo "error: $tool not found" >&2; exit 2; }; done

# 1. Environment: the GPU image's missing packages, `python` on PATH for dvc.yaml's `python -m stages.<stage>`, no
#    tracking, Prefect's state in /tmp. The packages (prefect, dvc and their dependencies from .carry/pipeline-whl,
#    diffusers, pydantic, tyro, … from .whl, and PyAV, which every stage's preview.mp4 needs) travel installed and
#    xz-packed, since the wheels themselves exceed the carry limit: scripts/pack_site312.sh makes the tarball.
if [ "$INSTALL" = 1 ]; then
    [ -f .carry/site312.tar.xz ] || { echo "error: .carry/site312.tar.xz missing: run scripts/pack_site312.sh" >&2; exit 2; }
    rm -rf "$SITE" && mkdir -p "$SITE" && tar -C "$SITE" -xJf .carry/site312.tar.xz
fi
if [ -d "$SITE" ]; then export PYTHONPATH="$SITE:$WORK"; else export PYTHONPATH="$WORK${PYTHONPATH:+:$PYTHONPATH}"; fi
mkdir -p /tmp/fourd-bin
ln -sf "$(command -v "$PY")" /tmp/fourd-bin/python
export PATH="/tmp/fourd-bin:$PATH"
export FOURD_TRACKING=off PYTHONUNBUFFERED=1 PREFECT_HOME=/tmp/fourd-prefect PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_SERVER_UI_ENABLED=false PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=90
export DVC_NO_ANALYTICS=1 DO_NOT_TRACK=1 FOURD_GPU_LOCK_DIR=/tmp/fourd-gpu-locks
unset CUDA_VISIBLE_DEVICES

# 2. The copy: a git repository with DVC (.dvc/ is tracked), the demo weights as weights/fourdm, an empty LPIPS folder.
if [ "$FRESH" = 1 ] || [ ! -d "$WORK/.git" ]; then
    rm -rf "$WORK" && mkdir -p "$WORK"
    tar -C "$SRC" --exclude=./.git --exclude=./.carry --exclude=./.whl --exclude=./.gl --exclude=./out --exclude=./data \
        --exclude=./mlruns --exclude=./mlflow.db --exclude=./.prefect --exclude=./.dvc/cache --exclude=./.dvc/tmp \
        --exclude=./weights/fourdm --exclude=./weights/eval --exclude='__pycache__' --exclude=./.pytest_cache \
        --exclude=./.ruff_cache --exclude='./.venv*' -cf - . | tar -C "$WORK" -xf -
    [ -f "$WORK/.dvc/config" ] || { echo "error: $SRC/.dvc/config missing: not a fourd checkout" >&2; exit 2; }
    [ -f "$WORK/weights/demo/fourdm/model_index.json" ] || { echo "error: weights/demo/fourdm missing" >&2; exit 2; }
    ln -s demo/fourdm "$WORK/weights/fourdm"
    mkdir -p "$WORK/weights/eval/lpips"
    for f in "$WORK/configs/$CONFIG_SET/mvgen.yaml" "$WORK/configs/$CONFIG_SET/distill.yaml"; do
        [ -f "$f" ] || { echo "error: config set $CONFIG_SET has no $(basename "$f")" >&2; exit 2; }
        if [ -n "$DEVICE" ]; then sed -i "s/^device: .*/device: $DEVICE/" "$f"; fi
    done
    if [ -n "$DISTILL_STEPS" ]; then
        sed -i "s/^num_steps: .*/num_steps: $DISTILL_STEPS/" "$WORK/configs/$CONFIG_SET/distill.yaml"
    fi
    if [ -n "$MVGEN_STEPS" ]; then
        sed -i "s/^num_inference_steps: .*/num_inference_steps: $MVGEN_STEPS/" "$WORK/configs/$CONFIG_SET/mvgen.yaml"
    fi
    git -C "$WORK" init -q
    git -C "$WORK" add -A
    git -C "$WORK" -c user.name=fourd -c user.email=fourd@localhost -c commit.gpgsign=false commit -qm "parallel distill run"
    rm -rf "$WORK/.phases" && mkdir -p "$WORK/.phases"
    echo "/.phases/" >> "$WORK/.git/info/exclude"
fi
cd "$WORK"

# 3. Preflight (seconds, before any GPU time): the stages' interpreter has torch/dvc/prefect, the set's distill backend
#    can be recorded in a distill manifest, and the second subject is registered (dvc add; outside the timed phases).
"$PY" - "$CONFIG_SET" <<'EOF'
import subprocess, sys
from pathlib import Path
from flows.workspace import subprocess_env
from stages.common.artifacts import DistillManifest
from stages.common.config import load_config
from stages.distill import DistillConfig
from pydantic import TypeAdapter, ValidationError
from importlib.metadata import PackageNotFoundError, distribution
from packaging.requirements import Requirement
# Every requirement of prefect/dvc/diffusers (with their extras) installed in a version they accept: a package the
# image has in another version is named here, before any GPU work (add its wheel to .carry/pipeline-whl and repack).
todo, seen, missing, mismatched = [Requirement(r) for r in ("prefect", "dvc", "diffusers")], set(), [], []
while todo:
    req = todo.pop()
    key = (req.name.lower(), tuple(sorted(req.extras)))
    if key in seen:
        continue
    seen.add(key)
    try:
        dist = distribution(req.name)
    except PackageNotFoundError:
        missing.append(str(req))
        continue
    if req.specifier and not req.specifier.contains(dist.version, prereleases=True):
        mismatched.append(f"{req} (have {dist.version})")
    for r in dist.requires or []:
        sub = Requirement(r)
        if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in ("", *req.extras)):
            todo.append(sub)
if mismatched:
    print("warning: versions other than required:", "; ".join(sorted(set(mismatched))))
# Left out of .carry/pipeline-whl on purpose (a flow run and dvc status/commit/add never import them).
DROPPED = {"apprise", "asyncssh", "celery", "kombu"}
skipped = sorted({m for m in missing if Requirement(m).name.lower() in DROPPED})
missing = [m for m in missing if Requirement(m).name.lower() not in DROPPED]
if skipped:
    print("note: not installed on purpose (unused by the flow and dvc status/commit/add):", ", ".join(skipped))
if missing:
    sys.exit("error: not installed (carry their wheels): " + ", ".join(sorted(set(missing))))
probe = "import sys, torch, dvc, prefect, diffusers, av, tyro; print(sys.executable, torch.__version__, torch.cuda.device_count(), 'GPUs')"
proc = subprocess.run(["python", "-c", probe], env=subprocess_env(), capture_output=True, text=True)
print(proc.stdout.strip() or proc.stderr.strip())
if proc.returncode:
    sys.exit("error: `python` as the stages see it cannot import torch/dvc/prefect/diffusers/av/tyro")
# A trivial flow starts Prefect's temporary server as the phases will (its startup imports more than `prefect` does:
# a GPU call once lost both phases to a missing burner_redis there).
proc = subprocess.run(["python", "-c", "from prefect import flow; print('prefect flow ok', flow(lambda: 1)())"],
                      env=subprocess_env(), capture_output=True, text=True, timeout=180)
if proc.returncode:
    sys.exit("error: a trivial Prefect flow failed (temporary server):\n" + proc.stderr[-3000:])
print(next((l for l in proc.stdout.splitlines() if 'prefect flow ok' in l), 'prefect flow ran'))
backend = load_config(DistillConfig, Path(f"configs/{sys.argv[1]}/distill.yaml")).field.backend
try:
    TypeAdapter(DistillManifest.model_fields["hash_backend"].annotation).validate_python(backend)
except ValidationError:
    sys.exit(f"error: configs/{sys.argv[1]}/distill.yaml field.backend {backend!r} is not accepted by "
             "DistillManifest.hash_backend (stages/common/artifacts.py): the run would fail after training")
EOF
"$PY" - "$FRAMES" "$SUBJECT2" "$FPS2" "$PROMPT2" <<'EOF'
import sys
from pathlib import Path
from flows.workspace import find_repo, register_subject
frames, name, fps, prompt = sys.argv[1:]
print("registered", register_subject(find_repo("."), Path(frames), name, prompt or None, float(fps)))
EOF
if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader \
    > .phases/gpus.csv || true; fi

# 4. The phases.
run_phase() {  # <name> <parallel>
    local name=$1 parallel=$2 status=0 t0 t1
    rm -rf "out/workspaces/$CONFIG_SET" "/tmp/fourd-triton-$name" "$PREFECT_HOME"
    export TRITON_CACHE_DIR="/tmp/fourd-triton-$name"
    echo "== $name: fox + $SUBJECT2, --parallel $parallel, FOURD_GPUS=$GPUS"
    t0=$(date +%s.%N)
    FOURD_GPUS=$GPUS "$PY" -m flows.fourd --repo "$WORK" --config-set "$CONFIG_SET" --subject fox \
        --subject "$SUBJECT2" --parallel "$parallel" --stages "${STAGES[@]}" --summary-json ".phases/$name.summary.json" \
        > ".phases/$name.log" 2>&1 || status=$?
    t1=$(date +%s.%N)
    "$PY" - "$name" "$t0" "$t1" "$status" "$CONFIG_SET" fox "$SUBJECT2" <<'EOF'
import json, sys
from pathlib import Path
from stages.common.artifacts import DistillManifest
name, t0, t1, status, config_set, *subjects = sys.argv[1:]
ws = Path("out/workspaces") / config_set
outputs = {}
for s in subjects:
    d = ws / "data/distill" / s
    try:
        m = DistillManifest.load(d)
        orbit = len(m.renders.file_list())
        ok = (d / m.preview_file).is_file() and all((d / f).is_file() for f in m.renders.file_list())
        outputs[s] = {"ok": ok, "num_steps": m.num_steps, "orbit_files": orbit, "metrics": m.metrics}
    except Exception as exc:  # noqa: BLE001 - recorded, the phase counts as failed
        outputs[s] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
summary_path = Path(f".phases/{name}.summary.json")
summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
record = {
    "wall_s": round(float(t1) - float(t0), 2),
    "exit_status": int(status),
    "batch_wall_s": summary.get("wall_seconds"),
    "parallel": summary.get("parallel"),
    "stages": {
        s: {st: {k: r.get(k) for k in ("ran", "gpu", "seconds", "started", "finished")} for st, r in res["stages"].items()}
        for s, res in summary.get("subjects", {}).items() if "stages" in res
    },
    "outputs": outputs,
}
Path(f".phases/{name}.json").write_text(json.dumps(record, indent=2))
print(f"{name}: wall {record['wall_s']} s, exit {status}, outputs {'ok' if all(o['ok'] for o in outputs.values()) else outputs}")
EOF
    cp ".phases/$name.log" "$OUT/$name.log"
    cp ".phases/$name.json" "$OUT/$name.json"  # comes back even if a later phase runs out of time
    if [ "$name" = parallel ]; then
        for s in fox "$SUBJECT2"; do
            if [ -f "out/workspaces/$CONFIG_SET/data/distill/$s/preview.mp4" ]; then
                cp "out/workspaces/$CONFIG_SET/data/distill/$s/preview.mp4" "$OUT/preview_$s.mp4"
            fi
        done
    fi
    if [ "$status" != 0 ]; then tail -40 ".phases/$name.log"; fi
    return 0
}
for phase in $PHASES; do
    case $phase in
        sequential) run_phase sequential 1 ;;
        parallel) run_phase parallel 2 ;;
        *) echo "error: unknown phase $phase (sequential, parallel)" >&2; exit 2 ;;
    esac
done

# 5. The result: both phases' records, the GPUs, the speed-up; a table.
"$PY" - "$OUT/parallel_distill.json" "$CONFIG_SET" "$GPUS" "$DEVICE" "$DISTILL_STEPS" "$MVGEN_STEPS" <<'EOF'
import json, sys
from pathlib import Path
out, config_set, gpus, device, distill_steps, mvgen_steps = sys.argv[1:]
phases = {p: json.loads(Path(f".phases/{p}.json").read_text()) for p in ("sequential", "parallel")
          if Path(f".phases/{p}.json").is_file()}
gpu_csv = Path(".phases/gpus.csv")
result = {
    "gpus": [line.strip() for line in gpu_csv.read_text().splitlines()] if gpu_csv.is_file() else [],
    "config_set": config_set,
    "fourd_gpus": gpus,
    "overrides": {k: v for k, v in {"device": device, "distill_steps": distill_steps, "mvgen_steps": mvgen_steps}.items() if v},
    **phases,
}
ok = all(p["exit_status"] == 0 and all(o["ok"] for o in p["outputs"].values()) for p in phases.values())
if len(phases) == 2:
    result["speedup"] = round(phases["sequential"]["wall_s"] / phases["parallel"]["wall_s"], 3)
result["all_ok"] = ok and len(phases) == 2
Path(out).write_text(json.dumps(result, indent=2) + "\n")
print("\n| phase | subject | stage | GPU | seconds | ran |\n|---|---|---|---|---|---|")
for name, p in phases.items():
    for subject, stages in p["stages"].items():
        for stage, r in stages.items():
            print(f"| {name} | {subject} | {stage} | {r['gpu'] if r['gpu'] is not None else '-'} | {r['seconds']} | {r['ran']} |")
print()
for name, p in phases.items():
    print(f"{name}: wall {p['wall_s']} s (flow {p['batch_wall_s']} s), exit {p['exit_status']}")
if "speedup" in result:
    print(f"speed-up (sequential / parallel wall): {result['speedup']}x")
print("GPUs:", "; ".join(result["gpus"]) or "none listed", "| all outputs ok:", result["all_ok"])
EOF
ls -l "$OUT"
