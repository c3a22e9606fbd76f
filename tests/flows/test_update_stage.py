"""`update_stage` (flows/update.py) on a two-stage toy pipeline: `dvc status`, then `dvc repro --single-item` on
a GPU slot for GPU stages, without Prefect. The toy command records the environment it saw."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("dvc")
pytest.importorskip("prefect")

from flows.pipelines import stage_instances  # noqa: E402
from flows.update import StageFailed, TransientStageError, first_error, update_stage  # noqa: E402
from flows.workspace import subprocess_env  # noqa: E402

TOOL = """\
import json, os, sys, time
stage, src, out = sys.argv[1:4]
os.makedirs(out)
open(os.path.join(out, "partial"), "w").close()  # a failed run leaves this behind
if os.path.exists(f"fail-{stage}"):
    print("error: the input is bad", file=sys.stderr)
    print("cleaning up")
    sys.exit(3)
if os.environ.get("TOUCH_DEP"):  # as if a workspace sync rewrote the dependency meanwhile
    os.utime(src, ns=(1, 1))
seen = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "DVC_STAGE", "DVC_ROOT")}
text = open(src).read() if os.path.isfile(src) else open(os.path.join(src, "result.json")).read()
json.dump({"seen": seen, "input": text}, open(os.path.join(out, "result.json"), "w"))
"""

DVC_YAML = """\
stages:
  preprocess:
    foreach: ${subjects}
    do:
      cmd: python tool.py preprocess ${item.input} data/preprocess/${key}
      deps: ['${item.input}', tool.py]
      outs: ['data/preprocess/${key}']
  mvgen:
    foreach: ${subjects}
    do:
      cmd: python tool.py mvgen data/preprocess/${key} data/mvgen/${key}
      deps: ['data/preprocess/${key}', tool.py]
      outs: ['data/mvgen/${key}']
"""


def dvc(ws: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=ws, env=subprocess_env(), capture_output=True)


@pytest.fixture
def toy(tmp_path, monkeypatch) -> Path:
    ws = tmp_path / "ws"
    (ws / "inputs").mkdir(parents=True)
    (ws / "tool.py").write_text(TOOL)
    (ws / "dvc.yaml").write_text(DVC_YAML)
    (ws / "params.yaml").write_text(yaml.safe_dump({"subjects": {s: {"input": f"inputs/{s}.txt"} for s in "ab"}}))
    for s in "ab":
        (ws / f"inputs/{s}.txt").write_text(f"video {s}\n")
    subprocess.run(["git", "init", "-q"], cwd=ws, check=True)
    assert dvc(ws, "init", "-q").returncode == 0
    monkeypatch.setenv("FOURD_GPUS", "7")
    monkeypatch.setenv("FOURD_GPU_LOCK_DIR", str(tmp_path / "gpu-locks"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return ws


def instances(ws: Path, subject: str) -> dict:
    return {i.stage: i for i in stage_instances(ws, subject)}


def lock_entry(ws: Path, name: str) -> dict | None:
    path = ws / "dvc.lock"
    return (yaml.safe_load(path.read_text())["stages"] if path.is_file() else {}).get(name)


def result(ws: Path, out: str) -> dict:
    return json.loads((ws / out / "result.json").read_text())


def test_runs_the_command_on_its_gpu_commits_and_then_is_up_to_date(toy):
    env = subprocess_env()
    plan = instances(toy, "a")
    pre = update_stage(toy, plan["preprocess"], env)
    assert pre["ran"] and pre["gpu"] is None and pre["started"] <= pre["finished"]
    seen = result(toy, "data/preprocess/a")["seen"]
    assert seen == {"CUDA_VISIBLE_DEVICES": None, "DVC_STAGE": "preprocess@a", "DVC_ROOT": str(toy)}
    mv = update_stage(toy, plan["mvgen"], env)
    assert mv["ran"] and mv["gpu"] == "7"  # a GPU stage: a slot of the pool, and the command saw only that device
    assert result(toy, "data/mvgen/a")["seen"]["CUDA_VISIBLE_DEVICES"] == "7"
    assert lock_entry(toy, "preprocess@a") and lock_entry(toy, "mvgen@a")
    assert b"up to date" in dvc(toy, "status", "mvgen@a").stdout.lower()
    again = update_stage(toy, plan["mvgen"], env)
    assert not again["ran"] and again["gpu"] is None and again["started"] is None  # no slot taken when up to date


def test_a_missing_dependency_fails_before_the_command_runs(toy):
    with pytest.raises(StageFailed, match=r"mvgen@b: missing dependencies \['data/preprocess/b'\]"):
        update_stage(toy, instances(toy, "b")["mvgen"], subprocess_env())
    assert not (toy / "data/mvgen/b").exists() and lock_entry(toy, "mvgen@b") is None


def test_a_failed_command_commits_nothing_and_the_old_entry_stays_stale(toy):
    env = subprocess_env()
    plan = instances(toy, "a")
    update_stage(toy, plan["preprocess"], env)
    update_stage(toy, plan["mvgen"], env)
    old = lock_entry(toy, "mvgen@a")
    (toy / "inputs/a.txt").write_text("another video\n")
    update_stage(toy, plan["preprocess"], env)
    (toy / "fail-mvgen").touch()
    with pytest.raises(StageFailed, match="mvgen@a failed \\(exit 3\\)") as err:
        update_stage(toy, plan["mvgen"], env)
    assert not isinstance(err.value, TransientStageError)
    # The reason is on the first line (what Prefect's state message and `--watch` show).
    assert str(err.value).splitlines()[0] == "mvgen@a failed (exit 3): error: the input is bad"
    assert lock_entry(toy, "mvgen@a") == old  # dvc.lock does not claim the failed run's output
    assert (toy / "data/mvgen/a/partial").is_file() and not (toy / "data/mvgen/a/result.json").exists()
    assert b"up to date" not in dvc(toy, "status", "mvgen@a").stdout.lower()
    (toy / "fail-mvgen").unlink()
    assert update_stage(toy, plan["mvgen"], env)["ran"]  # the previous output was removed before the rerun
    assert "another video" in result(toy, "data/mvgen/a")["input"] and lock_entry(toy, "mvgen@a") != old


def test_the_docker_executor_refuses_a_command_that_is_not_one_stage_call(toy):
    inst = instances(toy, "a")["preprocess"]
    with pytest.raises(StageFailed, match="is not one `python -m stages.<stage>` call"):
        update_stage(toy, inst, subprocess_env(), executor="docker")
    assert lock_entry(toy, "preprocess@a") is None


def test_first_error_picks_the_line_that_says_why():
    assert first_error("loading\nerror: weights/fourdm: no model_index.json\nbye\n") == (
        "error: weights/fourdm: no model_index.json"
    )
    assert first_error("Traceback (most recent call last):\n  x\nValueError: bad size\n") == "ValueError: bad size"
    assert first_error("killed\n") == "killed" and first_error("") == "no output"
    dvc = "> python -m stages.mvgen\nerror: weights/fourdm: missing\nERROR: failed to reproduce 'mvgen@fox'"
    assert first_error(dvc) == "error: weights/fourdm: missing"  # the stage's reason, not DVC's wrapper
