from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from safetensors.torch import load_file

from stages.common.cameras import fourdm_camera_vectors
from stages.common.errors import StageError
from stages.mvgen.pipeline_fourdm import load_fourdm
from stages.mvgen.training import run
from stages.mvgen.training.cli import parse_config
from stages.mvgen.training.dataset import find_clip_sources, sample_clip
from stages.mvgen.training.objective import (
    camera_gap,
    denoising_loss,
    dropout_mask,
    output_and_target,
    step_generator,
    training_loss,
)
from stages.mvgen.training.synthetic_ring import write_ring_artifact
from tests.mvgen.tiny import IMAGE_PX, tiny_pipeline

REPO = Path(__file__).resolve().parents[2]
RING, FRAMES = 8, 10


def make_training_render(root: Path, subject: str = "obj") -> Path:
    """A render artifact whose train/ ring encodes (view, frame) in each image's colour."""

    def image(v: int, f: int) -> np.ndarray:
        rgba = np.zeros((IMAGE_PX, IMAGE_PX, 4), np.uint8)
        rgba[4:12, 4:12] = (20 * v, 20 * f, 100, 255)
        return rgba

    return write_ring_artifact(
        root / subject, image, views=RING, frames=FRAMES, size_px=IMAGE_PX, caption="a square", code_version="test"
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train")
    tiny_pipeline(root).save_pretrained(root / "weights")
    make_training_render(root / "data")
    return {"weights": root / "weights", "data": root / "data"}


def decode(sample) -> tuple[list[int], list[int]]:
    """(view, frame) read back from the colour of every image of a sample."""
    views = [int(round(sample.views[k, 0, 8, 8, 0] / 20)) for k in range(4)]
    frames = [int(round(sample.views[0, i, 8, 8, 1] / 20)) for i in range(sample.views.shape[1])]
    return views, frames


def test_samples_have_orthogonal_views_strided_frames_and_relative_cameras(setup):
    sources = find_clip_sources(setup["data"])
    assert len(sources) == 1 and sources[0].num_views == RING and sources[0].caption == "a square"
    for seed in range(6):
        s = sample_clip(sources, 4, 3, IMAGE_PX, torch.Generator().manual_seed(seed))
        views, frames = decode(s)
        assert views == s.view_ids and frames == s.frame_ids
        assert [(v - views[0]) % RING for v in views] == [0, 2, 4, 6]  # 90° apart
        assert np.diff(frames).tolist() == [3, 3, 3] and frames[-1] < FRAMES
        mono = int(round(s.condition[0, 8, 8, 0] / 20))
        rel = [((v - mono) * 360.0 / RING) % 360.0 for v in views]
        np.testing.assert_allclose(s.cameras, fourdm_camera_vectors(rel, 0.0), atol=1e-6)
        assert s.views.shape == (4, 4, IMAGE_PX, IMAGE_PX, 3) and s.condition.shape == (4, IMAGE_PX, IMAGE_PX, 3)


def test_too_short_clips_and_missing_data_are_clear_errors(setup, tmp_path):
    from stages.common.errors import StageError

    with pytest.raises(StageError, match="need"):
        sample_clip(find_clip_sources(setup["data"]), 8, 4, IMAGE_PX, torch.Generator().manual_seed(0))
    with pytest.raises(StageError, match="no render artifact with training clips"):
        find_clip_sources(tmp_path)


def test_condition_dropout_rate_is_honoured():
    drops = torch.cat([dropout_mask(100, 0.1, step_generator(0, s)) for s in range(200)])
    assert abs(drops.float().mean().item() - 0.1) < 0.01
    assert not dropout_mask(1000, 0.0, torch.Generator()).any() and dropout_mask(1000, 1.0, torch.Generator()).all()


def tiny_config(*sets: str):
    """configs/tiny/train_fourdm.yaml with `section.key=value` overrides (as `--set` on the command line)."""
    return parse_config(REPO / "configs/tiny/train_fourdm.yaml", list(sets))


@pytest.fixture(scope="module")
def plain_run(setup, tmp_path_factory) -> Path:
    """Two steps of the tiny paper-mode recipe (shared by the tests that only read its outputs)."""
    out = tmp_path_factory.mktemp("plain") / "run"
    cfg = tiny_config("optim.mode=paper", "schedule.steps=2")
    run(cfg, data_dir=setup["data"], weights_dir=setup["weights"], output_dir=out)
    return out


def test_paper_mode_changes_only_motion_modules(setup, plain_run):
    before = load_fourdm(setup["weights"]).unet.state_dict()
    after = load_fourdm(plain_run / "fourdm").unet.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".temporal_transformer." in f".{k}" for k in changed)
    for name in ("vae", "text_encoder", "image_encoder"):
        a = getattr(load_fourdm(setup["weights"]), name).state_dict()
        b = getattr(load_fourdm(plain_run / "fourdm"), name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_loss_decreases_when_overfitting_one_batch(setup):
    pipe = load_fourdm(setup["weights"])
    params = [p for p in pipe.unet.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=2e-3)
    sources = find_clip_sources(setup["data"])
    sample = sample_clip(sources, 3, 2, IMAGE_PX, torch.Generator().manual_seed(0))
    losses = []
    for _ in range(10):  # the loss falls to about a quarter within 10 steps
        loss = training_loss(pipe, [sample], torch.Generator().manual_seed(1), 0.0)  # same noise and t each step
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(setup, tmp_path):
    cfg = tiny_config("schedule.steps=4", "schedule.checkpoint_every=2", "optim.ema_decay=0.5")
    run(cfg, data_dir=setup["data"], weights_dir=setup["weights"], output_dir=tmp_path / "straight")
    run(
        cfg.model_copy(update={"schedule": cfg.schedule.model_copy(update={"steps": 2})}),
        data_dir=setup["data"],
        weights_dir=setup["weights"],
        output_dir=tmp_path / "resumed",
    )  # "killed" after step 2 (its checkpoint is what survives)
    run(cfg, data_dir=setup["data"], weights_dir=setup["weights"], output_dir=tmp_path / "resumed")
    a = load_file(str(tmp_path / "straight" / "checkpoint" / "unet.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "checkpoint" / "unet.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ua, ub = (load_fourdm(tmp_path / d / "fourdm").unet.state_dict() for d in ("straight", "resumed"))
    assert all(torch.equal(ua[k], ub[k]) for k in ua)


def test_gradient_checkpointing_gives_the_same_gradients_and_recomputes_every_block(setup, monkeypatch):
    import stages.mvgen.models.unet_fourdm as unet_module

    pipe = load_fourdm(setup["weights"])
    sample = sample_clip(find_clip_sources(setup["data"]), 3, 2, IMAGE_PX, torch.Generator().manual_seed(0))

    def grads() -> dict[str, torch.Tensor]:
        pipe.unet.zero_grad(set_to_none=True)
        pipe.unet.requires_grad_(True)
        training_loss(pipe, [sample], torch.Generator().manual_seed(1), 0.0).backward()
        return {k: p.grad.clone() for k, p in pipe.unet.named_parameters()}

    plain = grads()
    calls = []
    real = unet_module.checkpoint
    monkeypatch.setattr(unet_module, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    pipe.unet.enable_gradient_checkpointing()  # the diffusers API our UNet supports
    assert pipe.unet.gradient_checkpointing
    checkpointed = grads()
    blocks = len(pipe.unet.input_blocks) + 1 + len(pipe.unet.output_blocks)
    assert len(calls) == blocks
    for k in plain:
        torch.testing.assert_close(checkpointed[k], plain[k], rtol=1e-5, atol=1e-7, msg=k)
    with torch.no_grad():  # inference never checkpoints
        calls.clear()
        training_loss(pipe, [sample], torch.Generator().manual_seed(1), 0.0)
        assert not calls


def test_two_processes_follow_one_process_with_accumulation(setup, tmp_path):
    """torchrun with 2 CPU processes (gloo), 1 clip each, equals 1 process accumulating 2 clips: same clips, noise
    and dropout per global micro-batch, gradients averaged the same way; so the logged losses and the weights
    agree to float tolerance, and each run writes its log and summary."""
    import subprocess
    import sys

    import yaml

    cfg = tiny_config(
        "optim.mode=scratch",
        "schedule.steps=3",
        "schedule.batch_size=2",
        "schedule.checkpoint_every=3",
        "conditioning.condition_dropout=0.5",
    )
    config_file = tmp_path / "train.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    run(cfg, data_dir=setup["data"], weights_dir=setup["weights"], output_dir=tmp_path / "one")
    env = {**__import__("os").environ, "FOURD_TRACKING": "off", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "stages.mvgen.training", "--config", str(config_file), "--data", str(setup["data"])]
    cmd += ["--weights", str(setup["weights"]), "--output", str(tmp_path / "two")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    def log(d: str) -> list[dict]:
        import json

        return [json.loads(line) for line in (tmp_path / d / "train_log.jsonl").read_text().splitlines()]

    one, two = log("one"), log("two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3]
    np.testing.assert_allclose([r["loss"] for r in two], [r["loss"] for r in one], rtol=1e-5)
    a = load_file(str(tmp_path / "one" / "checkpoint" / "unet.safetensors"))
    b = load_file(str(tmp_path / "two" / "checkpoint" / "unet.safetensors"))
    # Adam turns float-level differences of near-zero gradients into lr-sized steps, so the weights are compared
    # by their total update: the two runs' updates agree to about 1% (other clips or noise would differ by ~100%).
    start = load_fourdm(setup["weights"]).unet.state_dict()
    assert a.keys() == b.keys() <= start.keys()
    da = torch.cat([(a[k] - start[k]).flatten() for k in sorted(a)])
    db = torch.cat([(b[k] - start[k]).flatten() for k in sorted(a)])
    assert da.norm() > 0  # the weights did train
    assert (db - da).norm() < 5e-2 * da.norm()
    import json

    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["accumulation"] == 1 and summary["steps"] == 3
    assert json.loads((tmp_path / "one" / "summary.json").read_text())["accumulation"] == 2


def test_sample_grids_are_written_and_do_not_change_training(setup, plain_run, tmp_path):
    from stages.common.image_io import read_rgba
    from stages.mvgen.training.dataset import sample_clip as draw

    cfg = tiny_config("schedule.steps=2")
    assert cfg.optim.mode == "paper"  # the recipe of `plain_run`
    sampled = tiny_config("schedule.steps=2", "schedule.sample_every=1", "schedule.sample_steps=2")
    run(sampled, data_dir=setup["data"], weights_dir=setup["weights"], output_dir=tmp_path / "sampled")
    a = load_file(str(plain_run / "checkpoint" / "unet.safetensors"))
    b = load_file(str(tmp_path / "sampled" / "checkpoint" / "unet.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # sampling draws from none of the run's generators
    grids = sorted((tmp_path / "sampled" / "samples").glob("step_*.png"))
    assert [g.name for g in grids] == ["step_000001.png", "step_000002.png"]
    grid = read_rgba(grids[0])
    frames = cfg.data.num_frames
    assert grid.shape[:2] == ((1 + 2 * 4) * IMAGE_PX, frames * IMAGE_PX)
    # Row 0 is the conditioning video; the ground-truth rows are its views at 0/90/180/270° (aligned sample).
    s = draw(find_clip_sources(setup["data"]), frames, 2, IMAGE_PX, torch.Generator().manual_seed(cfg.seed), True)
    views, _ = decode(s)
    mono = int(round(s.condition[0, 8, 8, 0] / 20))
    assert views == [(mono + 2 * k) % RING for k in range(4)]
    np.testing.assert_array_equal(grid[:IMAGE_PX, :IMAGE_PX, :3], s.condition[0])
    np.testing.assert_array_equal(grid[IMAGE_PX : 2 * IMAGE_PX, :IMAGE_PX, :3], s.views[0, 0])
    assert not (plain_run / "samples").exists()


def encoded_batch(pipe, batch: int = 2, frames: int = 3) -> tuple[torch.Tensor, ...]:
    """Random latents, tokens and text of `batch` clips, cameras at 0/90/180/270° (+ the zero reference row)."""
    g = torch.Generator().manual_seed(5)
    h = IMAGE_PX // 2
    x0 = torch.randn((batch, frames, 4, 4, h, h), generator=g)
    ref = torch.randn((batch, frames, 4, h, h), generator=g)
    tokens = torch.randn((batch, frames, 257, pipe.unet.config.ip_embedding_dim), generator=g)
    text = pipe.encode_text(["a cube"] * batch).float()
    cameras = torch.from_numpy(fourdm_camera_vectors([0, 90, 180, 270], 10.0))[None].repeat(batch, 1, 1)
    return x0, ref, tokens, text, cameras


def test_v_prediction_trains_on_the_velocity(setup):
    pipe = load_fourdm(setup["weights"])
    x0, ref, tokens, text, cameras = encoded_batch(pipe, batch=3)
    args = (pipe.unet, pipe.scheduler, x0, ref, tokens, text, cameras)
    config = {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")}
    v_scheduler = DDIMScheduler(**config | {"prediction_type": "v_prediction"})
    g = torch.Generator().manual_seed(1)
    noise = torch.randn((3, x0.shape[1], 5, *x0.shape[3:]), generator=g)
    t = torch.randint(0, 1000, (3,), generator=g)
    with torch.no_grad():
        out, target, _ = output_and_target(*args, noise, t, None)
        out_v, target_v, _ = output_and_target(pipe.unet, v_scheduler, *args[2:], noise, t, None)
        eps_loss = denoising_loss(*args, torch.Generator().manual_seed(1))
        v_loss = denoising_loss(pipe.unet, v_scheduler, *args[2:], torch.Generator().manual_seed(1))
    assert torch.equal(target, noise) and torch.equal(out_v, out)  # same UNet call, another target
    a = pipe.scheduler.alphas_cumprod[t].reshape(3, 1, 1, 1, 1, 1)
    slots = torch.cat([x0, ref[:, :, None]], dim=2)
    torch.testing.assert_close(target_v, a.sqrt() * noise - (1 - a).sqrt() * slots)
    torch.testing.assert_close(eps_loss, (out[:, :, :4] - noise[:, :, :4]).pow(2).mean())
    torch.testing.assert_close(v_loss, (out[:, :, :4] - target_v[:, :, :4]).pow(2).mean())
    bad = DDIMScheduler(**config | {"prediction_type": "sample"})
    with pytest.raises(StageError, match="epsilon and v_prediction"):
        denoising_loss(pipe.unet, bad, *args[2:], torch.Generator().manual_seed(1))


def test_camera_gap_is_zero_exactly_when_the_camera_input_is_cut(setup):
    pipe = load_fourdm(setup["weights"])
    x0, ref, tokens, text, cameras = encoded_batch(pipe)
    args = (pipe.unet, pipe.scheduler, x0, ref, tokens, text, cameras)
    live = camera_gap(*args, [100, 900], torch.Generator().manual_seed(0))
    assert set(live) == {100, 900}
    assert all(set(r) == {"mse_true", "mse_rotated", "x0_own", "x0_other"} for r in live.values())
    assert all(np.isfinite(list(r.values())).all() for r in live.values())
    assert any(abs(r["mse_rotated"] - r["mse_true"]) > 1e-6 for r in live.values())  # random weights see cameras
    with torch.no_grad():
        pipe.unet.camera_embed[0].weight.zero_()  # every camera now gives the same embedding
    cut = camera_gap(*args, [100, 900], torch.Generator().manual_seed(0))
    assert all(r["mse_true"] == r["mse_rotated"] for r in cut.values())


class Oracle(torch.nn.Module):
    """A 'UNet' that knows the clean latents (rows b f s) and returns the exact ε or v of its noisy input."""

    def __init__(self, slots: torch.Tensor, scheduler) -> None:
        super().__init__()
        self.slots, self.scheduler = slots.reshape(-1, *slots.shape[3:]), scheduler

    def forward(self, sample, timestep, *args):
        a = self.scheduler.alphas_cumprod[timestep].reshape(-1, 1, 1, 1)
        eps = (sample - a.sqrt() * self.slots) / (1 - a).sqrt()
        if self.scheduler.config.prediction_type == "v_prediction":
            return a.sqrt() * eps - (1 - a).sqrt() * self.slots
        return eps


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_camera_gap_x0_columns_on_an_oracle(setup, prediction):
    pipe = load_fourdm(setup["weights"])
    config = {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")}
    scheduler = DDIMScheduler(**config | {"prediction_type": prediction})
    x0, ref, tokens, text, cameras = encoded_batch(pipe)
    oracle = Oracle(torch.cat([x0, ref[:, :, None]], dim=2), scheduler)
    rows = camera_gap(oracle, scheduler, x0, ref, tokens, text, cameras, [10, 500, 990], torch.Generator())
    apart = float(((x0 - x0.roll(-1, dims=2)) ** 2).mean())
    for r in rows.values():
        assert r["mse_true"] < 1e-8 and r["mse_rotated"] < 1e-8  # exact, and blind to the cameras
        assert r["x0_own"] < 1e-6 and r["x0_other"] == pytest.approx(apart, rel=1e-4)
