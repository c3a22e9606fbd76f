"""The config sets' pipeline files (flows/pipelines.py): generated from dvc.yaml, committed, resolvable by DVC."""

from __future__ import annotations

import shutil

import pytest

from flows.pipelines import CONFIG_SETS, main, stage_instances
from tests.flows.builders import REPO

pytest.importorskip("dvc")

# The commands `make demo` ran from its own examples/fox/dvc.yaml, which pipelines/demo/dvc.yaml replaces: the same
# commands give the same numbers (`--folder-fps 8.0` is params.yaml's value of fox; the old file said `8`).
DEMO_FOX = {
    "preprocess": "python -m stages.preprocess --config configs/demo/preprocess.yaml "
    "--input examples/fox/render/input --output data/demo/preprocess/fox --subject fox --folder-fps 8.0 "
    "--framing keep",
    "mvgen": "python -m stages.mvgen --config configs/demo/mvgen.yaml --input data/demo/preprocess/fox "
    "--weights weights/demo/fourdm --output data/demo/mvgen/fox",
    "distill": "python -m stages.distill --config configs/demo/distill.yaml --runtime configs/demo/runtime.yaml "
    "--input data/demo/mvgen/fox "
    "--preprocess data/demo/preprocess/fox --weights weights/demo/fourdm --lpips weights/eval/lpips "
    "--output data/demo/distill/fox --checkpoint data/demo/checkpoints/distill/fox",
    "eval": "python -m stages.eval --config configs/demo/eval.yaml --prediction data/demo/distill/fox "
    "--mvgen data/demo/mvgen/fox --ground-truth examples/fox/render --weights weights/eval "
    "--output data/demo/eval/fox --metrics reports/demo/fox.json",
}


def test_committed_pipelines_are_generated_from_dvc_yaml(tmp_path, capsys):
    assert main(["--check"]) == 0, capsys.readouterr().err  # stale: run python -m flows.pipelines
    repo = tmp_path / "repo"
    repo.mkdir()
    for rel in ("dvc.yaml", "configs", "pipelines"):
        (shutil.copytree if (REPO / rel).is_dir() else shutil.copy)(REPO / rel, repo / rel)
    dvc_yaml = repo / "dvc.yaml"
    dvc_yaml.write_text(dvc_yaml.read_text().replace("--subject ${key}", "--subject ${key} --verbose"))
    assert main(["--check", "--repo", str(repo)]) == 1
    assert "pipelines/demo/dvc.yaml" in capsys.readouterr().err
    assert main(["--repo", str(repo)]) == 0 and main(["--check", "--repo", str(repo)]) == 0
    assert "--subject ${key} --verbose" in (repo / "pipelines/tiny/dvc.yaml").read_text()


def test_the_demo_pipeline_runs_the_demo_commands_of_make_demo():
    demo = {i.stage: i for i in stage_instances(REPO, "fox", config_set="demo")}
    assert {s: i.cmd for s, i in demo.items()} == DEMO_FOX


def test_dvc_sees_every_pipeline_of_the_repository_without_overlapping_outputs():
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        graph = repo.index.graph  # raises on two stages with one output
        names = {stage.addressing for stage in repo.index.stages}
    assert graph.number_of_nodes() >= len(names)
    for name in CONFIG_SETS:
        assert f"pipelines/{name}/dvc.yaml:mvgen@fox" in names
    assert "mvgen@fox" in names
