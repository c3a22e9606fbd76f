"""Several subjects at once (`fourd_batch`, tiny configs and weights) on a fake two-GPU pool: on a CPU the device
ids are only values of CUDA_VISIBLE_DEVICES, but which stage held which slot, and when, is what the pool decides.

One module-scoped repository copy, in which one module-scoped batch (`two_subjects`) runs fox and a registered frame
folder through preprocess and mvgen concurrently on FOURD_GPUS=0,1; the first test checks that batch, the second
reruns both mvgens on FOURD_GPUS=0 (one slot). mvgen stands for every GPU stage (distill takes its slot the same
way, and the chain test runs it); one thread per stage process, so that two of them share this machine's cores
without oversubscription.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("prefect")
pytest.importorskip("dvc")

import flows.cli as cli_module  # noqa: E402
from flows import GPU_STAGES  # noqa: E402
from flows.fourd import fourd_batch  # noqa: E402
from stages.common.artifacts import MvgenManifest, PreprocessManifest  # noqa: E402
from stages.common.config import load_config_data  # noqa: E402
from tests.conftest import isolate_tracking  # noqa: E402

STAGES = ["preprocess", "mvgen"]


def dvc(ws: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=ws, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def gpu_runs(summary: dict) -> list[tuple[str, str, float, float]]:
    """(instance, device, started, finished) of every GPU stage that ran."""
    return [
        (r["instance"], r["gpu"], r["started"], r["finished"])
        for res in summary["subjects"].values()
        for stage, r in res["stages"].items()
        if stage in GPU_STAGES and r["ran"]
    ]


def overlap(a: tuple, b: tuple) -> bool:
    return a[2] < b[3] and b[2] < a[3]


def use_gpus(monkeypatch: pytest.MonkeyPatch, devices: str, lock_dir: Path) -> None:
    monkeypatch.setenv("FOURD_GPUS", devices)
    monkeypatch.setenv("FOURD_GPU_LOCK_DIR", str(lock_dir))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def two_subjects(tiny_repo: Path, prefect_harness: None, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`fourd_batch`'s summary of a registered frame folder (vixen) and fox through STAGES on FOURD_GPUS=0,1."""
    scratch = tmp_path_factory.mktemp("two-subjects")
    frames = scratch / "vixen"
    shutil.copytree(tiny_repo / "examples/fox/render/input", frames, ignore=shutil.ignore_patterns("prompt.txt"))
    with pytest.MonkeyPatch.context() as monkeypatch:
        isolate_tracking(scratch / "mlruns", monkeypatch)
        use_gpus(monkeypatch, "0,1", scratch / "gpu-locks")
        return fourd_batch(
            videos=[str(frames)],
            prompts=["a vixen walking"],
            subjects=["fox"],
            fps=8.0,
            config_set="tiny",
            stages=STAGES,
            repo=str(tiny_repo),
        )


def test_two_subjects_at_once_each_gpu_stage_on_its_own_device(tiny_repo, two_subjects):
    summary = two_subjects
    assert summary["order"] == ["vixen", "fox"] and summary["parallel"] == 2 and summary["gpus"] == ["0", "1"]
    lock = yaml.safe_load((tiny_repo / "pipelines/tiny/dvc.lock").read_text())["stages"]
    for subject in ("vixen", "fox"):
        res = summary["subjects"][subject]
        assert [r["instance"] for r in res["stages"].values() if r["ran"]] == [f"{s}@{subject}" for s in STAGES]
        assert res["stages"]["preprocess"]["gpu"] is None  # CPU stages take no slot
        assert MvgenManifest.load(tiny_repo / f"data/tiny/mvgen/{subject}").subject == subject
        assert {f"{s}@{subject}" for s in STAGES} <= set(lock)
        targets = (f"pipelines/tiny/dvc.yaml:{s}@{subject}" for s in STAGES)
        assert "up to date" in dvc(tiny_repo, "status", *targets).lower()
    assert PreprocessManifest.load(tiny_repo / "data/tiny/preprocess/vixen").prompt == "a vixen walking"

    runs = gpu_runs(summary)
    assert len(runs) == 2 and {r[1] for r in runs} == {"0", "1"}
    for a, b in itertools.combinations(runs, 2):
        assert a[1] != b[1] or not overlap(a, b), (a, b)  # a device is never held by two stage runs at once
    # The subjects really ran side by side: some GPU stage of one overlapped one of the other (on the other GPU).
    assert any(overlap(a, b) for a, b in itertools.combinations(runs, 2) if a[0][-3:] != b[0][-3:]), runs


def test_one_gpu_the_gpu_stages_never_overlap(tiny_repo, two_subjects, monkeypatch, tmp_path, prefect_harness):
    use_gpus(monkeypatch, "0", tmp_path / "gpu-locks")
    cfg_path = tiny_repo / "configs/tiny/mvgen.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["seed"] = int(load_config_data(cfg_path)["seed"]) + 1
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    summary = fourd_batch(
        subjects=["fox", "vixen"], config_set="tiny", stages=["mvgen"], parallel=2, repo=str(tiny_repo)
    )
    runs = gpu_runs(summary)
    assert sorted(r[0] for r in runs) == ["mvgen@fox", "mvgen@vixen"] and {r[1] for r in runs} == {"0"}
    assert not overlap(*runs), runs  # both subflows wanted the one GPU at once: one waited


def test_cli_keeps_the_single_subject_form_and_batches_several(monkeypatch, capsys):
    calls: list[tuple[str, tuple]] = []
    monkeypatch.setattr(cli_module, "fourd", _Fake("fourd", calls))
    monkeypatch.setattr(cli_module, "fourd_batch", _Fake("batch", calls))
    monkeypatch.setattr(cli_module, "check_arguments", lambda *args, **kwargs: None)  # a.mp4 is not a file
    cli_module.main(["--video", "a.mp4", "--subject", "name", "--prompt", "p", "--config-set", "tiny"])
    assert calls[-1] == ("fourd", ("a.mp4", "name", "p", 0.0, "tiny", None, "local", None, None))
    cli_module.main(["--subject", "fox"])
    assert calls[-1] == ("fourd", (None, "fox", None, 0.0, "auto", None, "local", None, None))
    cli_module.main(["--video", "a.mp4", "--video", "b.mp4", "--fps", "8"])
    assert calls[-1] == ("batch", (["a.mp4", "b.mp4"], [], [], 8.0, "auto", None, "local", None, None, None))
    cli_module.main(["--subject", "fox", "--subject", "other", "--parallel", "2", "--stages", "preprocess"])
    assert calls[-1] == ("batch", ([], ["fox", "other"], [], 0.0, "auto", ["preprocess"], "local", None, None, 2))
    capsys.readouterr()


def test_cli_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        cli_module.main(["--help"])
    text = capsys.readouterr().out
    for action in cli_module.parser()._actions:
        assert action.help and action.option_strings[-1] in text, action.dest  # no option is left undescribed


class _Fake:
    def __init__(self, name: str, calls: list) -> None:
        self.name, self.calls = name, calls
        self.fn = lambda: None

    def __call__(self, *args):  # noqa: ANN204
        self.calls.append((self.name, args))
        return {}
