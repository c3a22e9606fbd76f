"""Import hygiene of the product code: reading configs imports no model code; run modules are imported through
their package (stages/<stage>/__init__.py loads `run` lazily)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = sorted(p.parent.name for p in (REPO / "stages").glob("*/__main__.py"))
HEAVY = ("torch", "diffusers", "transformers")

READ_EVERY_CONFIG = """
import json, sys
from pathlib import Path
from stages.common.config import load_config, load_runtime, main
import importlib
stages = {stages!r}
for stage in stages:
    package = importlib.import_module(f"stages.{{stage}}")
    cls = getattr(package, f"{{stage.capitalize()}}Config")
    for path in [Path("configs") / f"{{stage}}.yaml", *Path("configs").glob(f"*/{{stage}}.yaml")]:
        load_config(cls, path)
        for runtime in Path("configs").glob("**/runtime.yaml"):
            if "runtime" in cls.model_fields:
                load_runtime(cls, runtime, stage)
from stages.mvgen.training import TrainConfig
for path in [Path("configs/train_fourdm.yaml"), *Path("configs").glob("*/train_fourdm*.yaml")]:
    load_config(TrainConfig, path)
assert main(["show", "configs/demo/distill.yaml", "configs/tiny/mvgen.yaml", "configs/demo/train_fourdm.yaml"]) == 0
print(json.dumps(sorted(sys.modules)))
"""


def test_reading_and_showing_every_config_imports_no_model_code():
    proc = subprocess.run(
        [sys.executable, "-c", READ_EVERY_CONFIG.format(stages=STAGES)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    modules = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {f"stages.{s}.config" for s in STAGES} | {"stages.mvgen.training.config"} <= set(modules)
    loaded = sorted({m.split(".")[0] for m in modules} & set(HEAVY))
    assert not loaded, f"reading configs imported {loaded}"


def test_run_modules_are_imported_through_their_package():
    """`import stages.<stage>.run` would bind the module, not the function, to `stages.<stage>.run`."""
    run_modules = {f"stages.{p.parent.name}.run" for p in (REPO / "stages").glob("*/run.py")}
    offenders = []
    for top in ("stages", "flows", "tests", "benchmarks", "scripts"):
        for path in (REPO / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                # The lazy loader itself, in the package's __init__.py, is the one allowed importer.
                if path.name == "__init__.py" and isinstance(node, ast.ImportFrom):
                    continue
                offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n in run_modules]
    assert not offenders, offenders
