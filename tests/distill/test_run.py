from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from stages.common.artifacts import DistillManifest, git_sha, load_any_manifest
from stages.common.cameras import load_cameras, orbit_c2w
from stages.common.cli import cli_main
from stages.common.config import load_config
from stages.common.errors import StageError
from stages.common.image_io import read_rgba
from stages.distill import DistillConfig, run
from stages.distill.config import MeshConfig
from stages.distill.export import MESH_AXES, load_field
from tests.distill.tiny import REPO, make_upstream

TINY = load_config(DistillConfig, REPO / "configs/tiny/distill.yaml")


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> dict[str, Path]:
    return make_upstream(tmp_path_factory.mktemp("distill"))


def run_tiny(upstream, output_dir, config=TINY, **extra):
    return run(
        config,
        input_dir=upstream["mvgen"],
        preprocess_dir=upstream["pre"],
        weights_dir=upstream["weights"],
        lpips_dir=upstream["lpips"],
        output_dir=output_dir,
        **extra,
    )


def test_stage_writes_field_renders_for_eval_and_preview(upstream, tmp_path, mlflow_store):
    out = tmp_path / "out"
    m = run_tiny(upstream, out)
    assert load_any_manifest(out) == m == DistillManifest.load(out)
    assert (m.renders.num_views, m.renders.num_frames, m.renders.size_px) == (4, 4, 16)
    assert set(m.upstream) == {"mvgen", "preprocess"} and m.num_steps == 2 and m.hash_backend == "torch"
    assert (
        m.prompt == "an orange disc"
        and m.renders.source_indices == load_any_manifest(upstream["mvgen"]).views.source_indices
    )
    cams = load_cameras(out / m.renders.cameras_file)
    assert [c.azimuth_deg for c in cams] == [0.0, 90.0, 180.0, 270.0]
    for c in cams:
        np.testing.assert_allclose(c.c2w_array(), orbit_c2w(c.azimuth_deg, 0.0, 1.1))
    for v in range(4):
        for f in range(4):
            assert read_rgba(m.renders.frame_path(out, v, f)).shape == (16, 16, 4)
    # The blob is visible: opaque centre, empty corners.
    alpha = read_rgba(m.renders.frame_path(out, 0, 0))[..., 3]
    assert alpha[8, 8] > 200 and alpha[0, 0] < 50
    assert read_rgba(out / m.input_view_template.format(frame=3)).shape == (16, 16, 4)
    assert (out / m.preview_file).stat().st_size > 0
    assert m.meshes is None and not (out / "meshes").exists()  # mesh export is off by default
    assert {
        "loss/sds",
        "loss/anchor_lpips",
        "loss/anchor_dssim",
        "loss/orient",
        "loss/sparsity",
        "psnr/input_view",
        "psnr/anchor",
    } <= set(m.metrics)
    # Every logged step's losses, for people and the eval report.
    train_log = [json.loads(line) for line in (out / m.train_log_file).read_text().splitlines()]
    assert m.train_log_file in m.files and [r["step"] for r in train_log] == [1, 2]
    assert {"loss/total", "loss/sds", "loss/anchor_dssim", "psnr/anchor"} <= set(train_log[-1])
    # The saved field reloads and reproduces the trained parameters.
    field = load_field(out)
    saved = load_file(str(out / m.field_file))
    assert set(saved) == set(field.state_dict()) and all(
        np.array_equal(saved[k].numpy(), v.numpy()) for k, v in field.state_dict().items()
    )
    # MLflow got the losses at every step and a validation render.
    (run_dir,) = [p for p in mlflow_store.glob("*/*") if (p / "metrics").is_dir()]
    assert len((run_dir / "metrics/loss/sds").read_text().splitlines()) == 2
    assert sorted(p.name for p in (run_dir / "artifacts/validation").iterdir()) == [
        "step_000001.png",
        "step_000002.png",
    ]


def test_every_export_loop_reports_progress_off_a_terminal(upstream, tmp_path, monkeypatch, caplog):
    """A log shows each export loop (a silent one left a worker log quiet for 39 s on a busy machine)."""
    import io
    import logging

    from stages.common import logs

    ticks = iter(range(0, 1_000_000, 20))  # 20 s pass between two looks at the clock
    monkeypatch.setattr(logs, "clock", lambda: float(next(ticks)))
    monkeypatch.setenv("FOURD_PROGRESS_EVERY_S", "10")
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a terminal
    caplog.set_level(logging.INFO, logger="stages.common.logs")
    run_tiny(upstream, tmp_path / "out")
    loops = {r.getMessage().split(":")[0] for r in caplog.records if r.name == "stages.common.logs"}
    assert {"distill renders", "distill input and anchor views", "distill preview"} <= loops


def test_checkpoint_dir_resumes_a_finished_run_without_training(upstream, tmp_path):
    a = run_tiny(upstream, tmp_path / "a", checkpoint_dir=tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "checkpoint.safetensors").is_file()
    b = run_tiny(upstream, tmp_path / "b", checkpoint_dir=tmp_path / "ckpt")  # resumes at step 2 = num_steps
    assert a.metrics["psnr/input_view"] == b.metrics["psnr/input_view"]
    assert (tmp_path / "a" / "field.safetensors").read_bytes() == (tmp_path / "b" / "field.safetensors").read_bytes()


def test_mismatched_preprocess_artifact_is_refused(upstream, tmp_path):
    from stages.preprocess import PreprocessConfig
    from stages.preprocess import run as preprocess

    cfg = load_config(PreprocessConfig, REPO / "configs/tiny/preprocess.yaml").model_copy(update={"size_px": 16})
    preprocess(cfg, input_path=upstream["pre"].parent / "disc.mp4", output_dir=tmp_path / "other", subject="other")
    with pytest.raises(StageError, match="not sampled from"):
        run(
            TINY,
            input_dir=upstream["mvgen"],
            preprocess_dir=tmp_path / "other",
            weights_dir=upstream["weights"],
            lpips_dir=upstream["lpips"],
            output_dir=tmp_path / "out",
        )
    assert not (tmp_path / "out").exists()


def test_cli_missing_lpips_weights_is_one_clear_line(upstream, tmp_path, capsys):
    rc = cli_main(
        run,
        DistillConfig,
        [
            "--config",
            str(REPO / "configs/tiny/distill.yaml"),
            "--input",
            str(upstream["mvgen"]),
            "--preprocess",
            str(upstream["pre"]),
            "--weights",
            str(upstream["weights"]),
            "--lpips",
            str(tmp_path / "nolpips"),
            "--output",
            str(tmp_path / "out"),
        ],
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err[-1].startswith("error: LPIPS weights not found") and "vgg16-397923af.pth" in err[-1]
    assert not (tmp_path / "out").exists()


def test_mesh_export_writes_one_mesh_per_timestamp_into_the_manifest(upstream, tmp_path):
    trimesh = pytest.importorskip("trimesh")
    config = TINY.model_copy(update={"mesh": MeshConfig(enabled=True, resolution=16, threshold=5.0)})
    m = run_tiny(upstream, tmp_path / "out", config=config)
    assert m == DistillManifest.load(tmp_path / "out") and m.meshes is not None
    assert m.meshes.num_frames == m.renders.num_frames == 4 and set(m.meshes.file_list()) <= set(m.files)
    # Two steps barely move the field from its blob: softplus(10·(1 − r/0.5)) = 5 at r = 0.2503.
    voxel = 2.0 / 15
    for f in range(4):
        mesh = trimesh.load(str(m.meshes.frame_path(tmp_path / "out", "obj", f)), process=False)
        assert len(mesh.vertices) == m.meshes.num_vertices[f] > 0
        assert np.abs(np.linalg.norm(mesh.vertices @ MESH_AXES, axis=1) - 0.2503).max() < voxel
        assert (tmp_path / "out" / m.meshes.templates["glb"].format(frame=f)).stat().st_size > 0


def test_mesh_export_without_pymcubes_fails_before_training(upstream, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mcubes", None)  # import mcubes raises ImportError
    config = TINY.model_copy(update={"mesh": MeshConfig(enabled=True)})
    with pytest.raises(StageError, match="mesh.enabled needs PyMCubes"):
        run_tiny(upstream, tmp_path / "out", config=config)
    assert not (tmp_path / "out").exists()


def test_the_manifest_records_every_hash_grid_backend_the_config_offers():
    """A run with any `field.backend` must be able to write its manifest (the manifest's field must accept it)."""
    import typing

    from stages.distill.config import FieldConfig

    offered = typing.get_args(FieldConfig.model_fields["backend"].annotation)
    recorded = typing.get_args(DistillManifest.model_fields["hash_backend"].annotation)
    assert offered and set(offered) == set(recorded)


def test_a_checkpoint_resumes_only_the_run_that_wrote_it(upstream, tmp_path, caplog):
    """Another --input (mvgen sampled with another seed) or another config starts fresh; never the old field."""
    from stages.mvgen import MvgenConfig
    from stages.mvgen import run as mvgen

    ckpt = tmp_path / "ckpt"
    run_tiny(upstream, tmp_path / "a", checkpoint_dir=ckpt)
    other = {**upstream, "mvgen": tmp_path / "mvgen-seed1"}
    mvgen_cfg = load_config(MvgenConfig, REPO / "configs/tiny/mvgen.yaml").model_copy(update={"seed": 1})
    mvgen(mvgen_cfg, input_dir=upstream["pre"], weights_dir=upstream["weights"], output_dir=other["mvgen"])
    run_tiny(other, tmp_path / "b", checkpoint_dir=ckpt)
    assert "written from other inputs" in caplog.text
    run_tiny(other, tmp_path / "fresh")
    field = "field.safetensors"
    assert (tmp_path / "b" / field).read_bytes() == (tmp_path / "fresh" / field).read_bytes()
    assert (tmp_path / "b" / field).read_bytes() != (tmp_path / "a" / field).read_bytes()
    caplog.clear()
    changed = TINY.model_copy(update={"seed": 3})
    run_tiny(other, tmp_path / "c", config=changed, checkpoint_dir=ckpt)  # a config change reruns, no error
    assert "written with another config" in caplog.text
    run_tiny(other, tmp_path / "c-fresh", config=changed)
    assert (tmp_path / "c" / field).read_bytes() == (tmp_path / "c-fresh" / field).read_bytes()


def test_an_mvgen_folder_that_contradicts_its_manifest_is_refused_before_training(upstream, tmp_path, capsys):
    import json
    import shutil

    mvgen_dir = shutil.copytree(upstream["mvgen"], tmp_path / "mvgen")
    data = json.loads((mvgen_dir / "manifest.json").read_text())
    data["views"]["size_px"] = 8  # the frames are 16 px
    (mvgen_dir / "manifest.json").write_text(json.dumps(data))
    args = ["--input", str(mvgen_dir), "--preprocess", str(upstream["pre"]), "--weights", str(upstream["weights"])]
    args += ["--lpips", str(upstream["lpips"]), "--output", str(tmp_path / "out")]
    assert cli_main(run, DistillConfig, ["--config", str(REPO / "configs/tiny/distill.yaml"), *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "16x16 px, but the manifest says the mvgen views are 8x8 px" in err[-1]
    assert not (tmp_path / "out").exists()


# One process imports the stage once, then forks a child per attempt; each child runs the distill CLI and SIGKILLs
# itself at the `n`-th call of its target: inside an optimiser step (gradients computed, parameters not updated),
# inside a checkpoint save (the temp file half written, not yet renamed), or inside the final write (some renders in
# the staging folder). The parent prints each child's exit status.
_CHAOS = """
import json, os, signal, sys
from stages.common.cli import cli_main
from stages.distill import DistillConfig, run
run_module, checkpoint_module = sys.modules["stages.distill.run"], sys.modules["stages.distill.checkpoint"]
import torch

plan, argv = json.loads(sys.argv[1]), sys.argv[2:]

def killing(original, n, before=None):
    calls = [0]
    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            if before is not None:
                before(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)
    return wrapper

def half_save(state, path, metadata=None):
    checkpoint_save(state, path, metadata=metadata)
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2)

checkpoint_save = checkpoint_module.save_file
statuses = []
for target, n in plan:
    pid = os.fork()
    if pid == 0:
        torch.set_num_threads(1)
        if target == "step":
            torch.optim.AdamW.step = killing(torch.optim.AdamW.step, n)
        elif target == "checkpoint":
            checkpoint_module.save_file = killing(checkpoint_save, n, before=half_save)
        elif target == "final-write":
            run_module.write_rgba = killing(run_module.write_rgba, n, before=run_module.write_rgba)
        os._exit(cli_main(run, DistillConfig, argv))
    statuses.append(os.waitpid(pid, 0)[1])
print(json.dumps(statuses))
"""


def test_distill_killed_anywhere_and_rerun_ends_with_the_uninterrupted_output_and_no_debris(
    upstream, tmp_path, monkeypatch, request
):
    """Chaos: SIGKILL mid-step, mid-checkpoint and mid-final-write (call numbers drawn at random), a rerun after each;
    the last rerun's output equals an uninterrupted run's, byte for byte, and nothing else is left behind."""
    import json
    import os
    import random
    import signal
    import subprocess

    # One code version for every run: a commit or a file written elsewhere in the checkout meanwhile must not count.
    monkeypatch.setenv("FOURD_CODE_VERSION", "chaos-test")
    git_sha.cache_clear()  # this process may have cached the checkout's commit
    request.addfinalizer(git_sha.cache_clear)
    config = TINY.model_copy(update={"num_steps": 4})
    reference = run_tiny(upstream, tmp_path / "reference", config=config)
    rng = random.Random(19)
    out, ckpt = tmp_path / "runs" / "out", tmp_path / "runs" / "ckpt"
    argv = ["--config", str(REPO / "configs/tiny/distill.yaml"), "--num-steps", "4", "--input", str(upstream["mvgen"])]
    argv += ["--preprocess", str(upstream["pre"]), "--weights", str(upstream["weights"]), "--lpips"]
    argv += [str(upstream["lpips"]), "--output", str(out), "--checkpoint", str(ckpt)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "FOURD_TRACKING": "off", "OMP_NUM_THREADS": "1"}
    # 4 steps with a checkpoint after each, then 4 views × 4 frames of renders: kill in step 2 or 3, in the next
    # checkpoint save, and in one of the first 16 renders; then a last run that finishes.
    plan = [("step", rng.randint(2, 3)), ("checkpoint", 1), ("final-write", rng.randint(1, 16)), ("none", 0)]
    cmd = [sys.executable, "-c", _CHAOS, json.dumps(plan), *argv]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    statuses = json.loads(proc.stdout.strip().splitlines()[-1])
    assert statuses == [signal.SIGKILL] * 3 + [0], (plan, statuses, proc.stderr[-3000:])
    ref = tmp_path / "reference"
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(ref).as_posix() for p in ref.rglob("*") if p.is_file())
    for rel in files:
        assert (out / rel).read_bytes() == (ref / rel).read_bytes(), rel
    assert DistillManifest.load(out) == reference
    assert sorted(p.name for p in out.parent.iterdir()) == ["ckpt", "out"]  # no staging folder
    assert sorted(p.name for p in ckpt.iterdir()) == ["checkpoint.safetensors"]  # no half-written temp file


def test_anchor_source_input_puts_the_input_frames_at_the_input_camera(upstream, tmp_path):
    from stages.common.artifacts import MvgenManifest, PreprocessManifest
    from stages.distill.losses import anchor_target

    config = TINY.model_copy(
        update={"cameras": TINY.cameras.model_copy(update={"anchor_source": "input", "extra_anchor_views": [1]})}
    )
    seen = {}
    run_tiny(
        upstream, tmp_path / "out", config=config, on_step=lambda trainer: seen.setdefault("anchor", trainer.anchor)
    )
    anchor = seen["anchor"]
    pre = PreprocessManifest.load(upstream["pre"])
    inputs = torch.stack([anchor_target(read_rgba(p)) for p in pre.frame_paths(upstream["pre"])])
    views = MvgenManifest.load(upstream["mvgen"]).views
    generated = torch.stack(
        [anchor_target(read_rgba(views.frame_path(upstream["mvgen"], 1, f))) for f in range(views.num_frames)]
    )
    assert anchor.camera.azimuth_deg == 0.0 and anchor.camera.elevation_deg == 0.0
    assert torch.equal(anchor.frames, inputs)  # the input video, not mvgen's view 0
    assert not torch.equal(
        inputs,
        torch.stack(
            [anchor_target(read_rgba(views.frame_path(upstream["mvgen"], 0, f))) for f in range(views.num_frames)]
        ),
    )
    assert torch.equal(anchor.extra_frames[0], generated)  # the extra views stay mvgen's
    masks = torch.stack(
        [torch.from_numpy(read_rgba(p)[..., 3] > 127).float() for p in pre.frame_paths(upstream["pre"])]
    )
    assert torch.equal(anchor.masks[0, :, 0], masks)


def test_anchor_source_input_refuses_an_anchor_view_away_from_the_input_camera(upstream, tmp_path):
    config = TINY.model_copy(
        update={"cameras": TINY.cameras.model_copy(update={"anchor_source": "input", "anchor_view": 1})}
    )
    with pytest.raises(StageError, match="needs the anchor view at the input camera .* view 1 is at azimuth 90"):
        run_tiny(upstream, tmp_path / "out", config=config)
    assert not (tmp_path / "out").exists()  # refused before anything is loaded or written
