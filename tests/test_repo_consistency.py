"""The repository agrees with itself: stages ↔ configs ↔ READMEs ↔ CLIs ↔ dvc.yaml ↔ STAGE_ORDER ↔ imports."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from flows import STAGE_ORDER
from stages.common.config import StageConfig, load_config

REPO = Path(__file__).resolve().parents[1]
STAGE_DIRS = sorted(p for p in (REPO / "stages").iterdir() if p.is_dir() and p.name not in ("common", "__pycache__"))
IMPLEMENTED = [p.name for p in STAGE_DIRS if (p / "__init__.py").is_file()]
PLANNED = [p.name for p in STAGE_DIRS if not (p / "__init__.py").is_file()]


def test_layout_has_every_stage_folder():
    assert {p.name for p in STAGE_DIRS} == {"preprocess", "mvgen", "distill", "eval", "render"}
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
    for cfg in (REPO / "configs" / f"{stage}.yaml", REPO / "configs" / "tiny" / f"{stage}.yaml"):
        load_config(cls, cfg)  # validates: unknown keys or wrong types fail here
        # Every field is spelled out in the YAML, so `dvc params diff` shows every change.
        assert set(yaml.safe_load(cfg.read_text())) == set(cls.model_fields), cfg
    main = (d / "__main__.py").read_text()
    assert "cli_main(run" in main and len(main.splitlines()) <= 15
    readme = (d / "README.md").read_text()
    for section in ("## Inputs", "## Outputs", "## CLI", "**Paper:**"):
        assert section in readme, (stage, section)
    assert len(readme.splitlines()) <= 50


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


@pytest.mark.parametrize("stage", PLANNED)
def test_planned_stage_folders_say_so(stage):
    readme = (REPO / "stages" / stage / "README.md").read_text()
    assert "not implemented yet" in readme
    assert not list((REPO / "stages" / stage).glob("*.py")), "code without a package: finish it or remove it"


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
    """common imports no stage; nothing imports eval; only distill imports mvgen, through its __init__."""
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
    for path in (REPO / "flows").rglob("*.py"):
        assert not any(n.startswith("stages.") and n.count(".") > 1 for n in imports_of(path)), path
