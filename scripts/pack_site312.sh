#!/usr/bin/env bash
# Packs the GPU machine's extra Python packages (Python 3.12, no network there) into one xz tarball small enough to
# carry (the `run` tool carries at most 64 MiB; the wheels alone are ~84 MB, the installed tree packed with xz -9e ~50 MB):
# .carry/pipeline-whl (prefect, dvc and their dependencies), .whl (diffusers, pydantic, tyro, pytest, …) and PyAV
# (the image has no `av`; every stage writes its preview.mp4 with it). The first folder wins for a name in several.
#
#   bash scripts/pack_site312.sh [wheel folder …]     # default: .carry/pipeline-whl .whl .carry/av-whl
#   → .carry/site312.tar.xz, unpacked by scripts/parallel_distill_gpu.sh into $SITE
#
# Missing PyAV wheel: pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux_2_28_x86_64 -d .carry/av-whl av
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ $# -gt 0 ] || set -- .carry/pipeline-whl .whl .carry/av-whl
mapfile -t wheels < <("$PY" - "$@" <<'PYEOF'
import sys
from pathlib import Path
seen = {}
for folder in sys.argv[1:]:
    for w in sorted(Path(folder).glob("*.whl")):
        seen.setdefault(w.name.split("-")[0].lower().replace("_", "-"), w)
print("\n".join(str(w) for w in seen.values()))
PYEOF
)
[ ${#wheels[@]} -gt 0 ] || { echo "error: no wheels in $*" >&2; exit 2; }
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_26_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux_2_5_x86_64 manylinux1_x86_64 linux_x86_64; do platforms+=(--platform "$p"); done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip install -q --no-deps --no-compile --ignore-requires-python --only-binary=:all: --python-version 3.12 \
    --implementation cp --abi cp312 --abi abi3 --abi none "${platforms[@]}" --target "$tmp/site" "${wheels[@]}"
mkdir -p .carry
# Left out (~3 MB packed, needed to stay under the limit beside the ~15 MB tree): Prefect's UI bundles (the phases run
# its temporary server with the UI off; a missing bundle is skipped) and pytest with its plugins (no tests run there).
tar -C "$tmp/site" --exclude=./prefect/server/ui --exclude=./prefect/server/ui-v2 --exclude='./pytest*' \
    --exclude=./_pytest --exclude='./pluggy*' --exclude='./iniconfig*' --exclude=./py.py -cf - . \
    | xz -T0 -9e > .carry/site312.tar.xz.part
mv .carry/site312.tar.xz.part .carry/site312.tar.xz
ls -l .carry/site312.tar.xz
