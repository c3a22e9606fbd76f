"""The repository agrees with itself: stages ↔ configs ↔ READMEs ↔ CLIs ↔ dvc.yaml ↔ STAGE_ORDER ↔ imports."""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from flows import STAGE_ORDER
from stages.common.config import RUNTIME_FIELD, StageConfig, config_layers, load_config, load_runtime

REPO = Path(__file__).resolve().parents[1]
STAGE_DIRS = sorted(p for p in (REPO / "stages").iterdir() if p.is_dir() and p.name not in ("common", "__pycache__"))
IMPLEMENTED = [p.name for p in STAGE_DIRS]


def test_layout_has_every_stage_folder():
    assert {p.name for p in STAGE_DIRS} == {"preprocess", "mvgen", "distill", "eval", "render"}
    for stage in STAGE_DIRS:  # a folder under stages/ is a package: no half-built stage without code
        assert (stage / "__init__.py").is_file() and (stage / "__main__.py").is_file(), stage
    for top in (
        "flows",
        "configs",
        "docker",
        "tests",
        "benchmarks",
        "dvc.yaml",
        "params.yaml",
        "README.md",
        "pyproject.toml",
        "Makefile",
        ".ci/run",
    ):
        assert (REPO / top).exists(), top


def config_class(stage: str) -> type[StageConfig]:
    module = importlib.import_module(f"stages.{stage}")
    classes = [
        v
        for v in vars(module).values()
        if isinstance(v, type)
        and issubclass(v, StageConfig)
        and v is not StageConfig
        and v.__name__ == f"{stage.capitalize()}Config"
    ]
    assert len(classes) == 1, f"stages.{stage} must export {stage.capitalize()}Config"
    return classes[0]


@pytest.mark.parametrize("stage", IMPLEMENTED)
def test_stage_has_config_readme_cli_and_run(stage):
    d = REPO / "stages" / stage
    module = importlib.import_module(f"stages.{stage}")
    assert callable(module.run)
    cls = config_class(stage)
    base = REPO / "configs" / f"{stage}.yaml"
    load_config(cls, base)  # validates: unknown keys or wrong types fail here
    # The paper's file spells out every field but the run-time knobs, so `dvc params diff` shows every change.
    assert set(yaml.safe_load(base.read_text())) == set(cls.model_fields) - {RUNTIME_FIELD}, base
    assert (REPO / "configs" / "tiny" / f"{stage}.yaml").is_file()
    main = (d / "__main__.py").read_text()
    assert "cli_main(run" in main and len(main.splitlines()) <= 15
    readme = (d / "README.md").read_text()
    for section in ("## Inputs", "## Outputs", "## CLI", "**Paper:**"):
        assert section in readme, (stage, section)
    assert len(readme.splitlines()) <= 50


CONFIG_SETS = sorted(p.name for p in (REPO / "configs").iterdir() if p.is_dir())
SET_FILES = [
    f"{s}/{stage}" for s in CONFIG_SETS for stage in IMPLEMENTED if (REPO / "configs" / s / f"{stage}.yaml").is_file()
]


def leaves(data: object, prefix: str = "") -> dict[str, object]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, object] = {}
    for key, value in data.items():
        out |= leaves(value, f"{prefix}.{key}" if prefix else key)
    return out


def test_every_config_set_has_a_run_time_file():
    assert CONFIG_SETS and {"tiny", "demo", "demo-gpu"} <= set(CONFIG_SETS)
    for folder in ("", *CONFIG_SETS):
        path = REPO / "configs" / folder / "runtime.yaml"
        sections = yaml.safe_load(path.read_text()) or {}
        assert set(sections) <= set(IMPLEMENTED), path
        for stage in sections:
            load_runtime(config_class(stage), path, stage)  # validates


@pytest.mark.parametrize("name", SET_FILES)
def test_config_set_files_are_overlays_holding_only_their_changes(name):
    """configs/<set>/<stage>.yaml names the paper's file as its base and holds only keys whose value differs."""
    set_name, stage = name.split("/")
    path = REPO / "configs" / set_name / f"{stage}.yaml"
    load_config(config_class(stage), path)  # the merged config validates
    assert config_layers(path) == [Path(os.path.normpath(REPO / "configs" / f"{stage}.yaml")), path]
    overlay = {k: v for k, v in yaml.safe_load(path.read_text()).items() if k != "base"}
    assert overlay and RUNTIME_FIELD not in overlay, "memory/speed knobs go in the set's runtime.yaml"
    base = leaves(yaml.safe_load((REPO / "configs" / f"{stage}.yaml").read_text()))
    for key, value in leaves(overlay).items():
        assert base[key] != value, f"{path}: {key} repeats the base value {value!r}"


def documented_fields(cls: type[BaseModel]):
    for name, field in cls.model_fields.items():
        yield cls, name, field
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from documented_fields(ann)


@pytest.mark.parametrize("stage", IMPLEMENTED)
def test_every_config_field_is_documented(stage):
    for cls, name, field in documented_fields(config_class(stage)):
        assert field.description and len(field.description) > 10, f"{cls.__name__}.{name} has no docstring"


def dvc_stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def test_dvc_stages_match_implemented_stages_and_stage_order():
    stages = dvc_stages()
    assert set(stages) == set(IMPLEMENTED) == set(STAGE_ORDER)
    # Topological order: a stage's deps may only name outputs of stages before it in STAGE_ORDER.
    for i, name in enumerate(STAGE_ORDER):
        deps = " ".join(str(d) for d in stages[name]["do"]["deps"])
        for later in STAGE_ORDER[i + 1 :]:
            assert f"data/{later}/" not in deps, f"{name} depends on later stage {later}"


@pytest.mark.parametrize("stage", IMPLEMENTED)
def test_dvc_stage_wiring(stage):
    do = dvc_stages()[stage]["do"]
    assert f"python -m stages.{stage} --config configs/{stage}.yaml" in " ".join(do["cmd"].split())
    assert f"stages/{stage}" in do["deps"] and "stages/common" in do["deps"]
    assert do["params"] == [{f"configs/{stage}.yaml": None}]
    assert do["outs"] == [f"data/{stage}/${{key}}"]
    # Memory/speed knobs come from the run-time file, which DVC does not track: changing one reruns nothing.
    assert "runtime.yaml" not in " ".join(map(str, do["deps"]))
    if RUNTIME_FIELD in config_class(stage).model_fields:
        assert "--runtime configs/runtime.yaml" in " ".join(do["cmd"].split())


def test_params_subjects_point_at_inputs():
    subjects = yaml.safe_load((REPO / "params.yaml").read_text())["subjects"]
    assert subjects, "at least the bundled example"
    for name, spec in subjects.items():
        assert (REPO / spec["input"]).exists() or spec["input"].startswith("data/raw/"), name


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_import_boundaries_follow_the_data_dag():
    """common imports no stage; nothing imports eval; only distill imports mvgen, through its __init__; flows use
    stage packages and stages.common."""
    for path in (REPO / "stages").rglob("*.py"):
        owner = path.relative_to(REPO / "stages").parts[0]
        for name in imports_of(path):
            if not name.startswith("stages."):
                continue
            target = name.split(".")[1]
            if target in (owner, "common"):
                continue
            assert owner != "common", f"{path}: stages.common must not import {name}"
            assert target != "eval", f"{path}: nothing imports stages.eval"
            assert owner == "distill" and name == "stages.mvgen", f"{path} imports {name}"
    # flows use a stage's public package (stages.<stage>) and the shared contracts (stages.common.*) only.
    for path in (REPO / "flows").rglob("*.py"):
        for name in imports_of(path):
            if name.startswith("stages.") and not name.startswith("stages.common."):
                assert name.count(".") == 1, f"{path} imports {name}"


def test_benchmark_results_hold_one_current_file_per_benchmark_and_device():
    """benchmarks/results/<benchmark>_<device>.json: superseded runs are deleted, not kept beside the current one."""
    pattern = re.compile(r"^(?P<benchmark>[a-z_]+?)_(?P<device>(h100|h200|a100|cpu)(x\d+)?)\.json$")
    scripts = sorted((p.stem for p in (REPO / "benchmarks").glob("*.py")), key=len, reverse=True)
    seen: dict[tuple[str, str], str] = {}
    for path in sorted((REPO / "benchmarks/results").iterdir()):
        m = pattern.match(path.name)
        assert m, f"{path.name}: name it <benchmark>_<device>.json"
        assert json.loads(path.read_text()), path
        # distill_quality_alpaca_h100.json is a second file of benchmarks/distill_quality.py on the H100: its runs
        # belong under `runs` of the one file.
        name = m["benchmark"]
        script = next((s for s in scripts if name == s or name.startswith(s + "_")), name)
        key = (script, m["device"])
        assert key not in seen, f"{path.name} and {seen[key]}: one file per benchmark ({script}) and device"
        seen[key] = path.name


# Path flags of a stage CLI that are not inputs: outputs, and distill's checkpoint folder, a cache that resumes only
# the very run that wrote it (its config and input hashes are checked), so it can never make an output stale.
NOT_INPUTS = {"output_dir", "metrics_path", "checkpoint_dir"}


def _unread_lpips(argv: list[str], flag: str) -> bool:
    """A distill config whose LPIPS anchor weight is 0 (the demo's) passes --lpips but never reads it."""
    from stages.distill import DistillConfig

    if flag != "--lpips":
        return False
    return load_config(DistillConfig, REPO / argv[argv.index("--config") + 1]).loss_weights.anchor_lpips == 0


@pytest.mark.parametrize(
    "dvc_file", ["dvc.yaml", *(f"pipelines/{s}/dvc.yaml" for s in ("tiny", "demo", "demo-gpu", "fast"))]
)
def test_every_input_a_stage_command_reads_is_a_dependency_of_its_dvc_stage(dvc_file):
    """A file a stage reads but DVC does not watch (eval's weights once) leaves its output stale when it changes."""
    import shlex

    from stages.common.cli import _flag, _path_params

    for name, spec in yaml.safe_load((REPO / dvc_file).read_text())["stages"].items():
        do = spec.get("do", spec)
        argv = shlex.split(" ".join(do["cmd"].split()))
        module = importlib.import_module(argv[argv.index("-m") + 1])
        deps = [str(d).rstrip("/") for d in do["deps"]]
        checked = 0
        for param, kind, _ in _path_params(module.run):
            flag = _flag(param)
            if param in NOT_INPUTS or kind is not Path or flag not in argv:
                continue
            value = argv[argv.index(flag) + 1].rstrip("/")
            if _unread_lpips(argv, flag):
                continue
            assert any(value == d or value.startswith(d + "/") for d in deps), f"{dvc_file} {name}: {flag} {value}"
            checked += 1
        assert checked, f"{dvc_file} {name}: no input flag found in {argv}"
