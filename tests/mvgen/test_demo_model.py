"""The demo recipe of the trainer (a built model, in-memory windows): window sampling, VAE loss, checkpoints, the
end-to-end tiny run, its export and resume."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from stages.common.cameras import fourdm_camera_vectors
from stages.common.errors import StageError
from stages.mvgen.pipeline_fourdm import COMPONENTS, load_fourdm, official_scheduler
from stages.mvgen.training import TrainConfig, run
from stages.mvgen.training.bank import load_clip_bank, sample_windows
from stages.mvgen.training.build import build_pipeline
from stages.mvgen.training.camera_check import main as camera_check_main
from stages.mvgen.training.checkpoint import (
    CHECKPOINT,
    EXPORT,
    TrainState,
    load_checkpoint,
    load_trained_vae,
    save_checkpoint,
)
from stages.mvgen.training.cli import main, parse_config
from stages.mvgen.training.synthetic_ring import write_ring_artifact
from stages.mvgen.training.vae_phase import vae_loss
from stages.mvgen.training.windows import WindowSpec, clip_stride, front_view

REPO = Path(__file__).resolve().parents[2]
PX = 16


def write_ring(root: Path, subject: str, caption: str, views: int, frames: int) -> Path:
    """A render artifact whose train/ ring encodes (view, frame) in each image's colour: R = 20·v, G = 20·f."""

    def image(v: int, f: int) -> np.ndarray:
        rgba = np.zeros((PX, PX, 4), np.uint8)
        rgba[4:12, 4:12] = (20 * v, 10 * f, 100, 255)
        return rgba

    return write_ring_artifact(
        root / subject, image, views=views, frames=frames, size_px=PX, caption=caption, code_version="test"
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rings")
    write_ring(root, "cube-a", "a cube", 8, 24)  # one subject with three clips...
    write_ring(root, "cube-b", "a cube", 8, 10)
    write_ring(root, "cube-c", "a cube", 8, 10)
    write_ring(root, "ball-a", "a ball", 8, 16)  # ...and one with a single clip
    return root


def tiny_config(*sets: str) -> TrainConfig:
    """configs/tiny/train_fourdm_demo.yaml with `section.key=value` overrides (as `--set` on the command line)."""
    return parse_config(REPO / "configs/tiny/train_fourdm_demo.yaml", list(sets))


def spec(num_frames: int = 4, **kw) -> WindowSpec:
    """The demo recipe's windows: subject-balanced, the largest stride ≤ 3 that fits."""
    return WindowSpec(num_frames, 3, "largest_fitting", "subject", **kw)


def all_params(pipe) -> dict:
    return dict(pipe.unet.named_parameters())


def decode(bank, index: int) -> tuple[int, int]:
    """(view, frame) from an image's colour."""
    pixel = bank.rgb[index, 8, 8]
    return int(round(pixel[0] / 20)), int(round(pixel[1] / 10))


def test_clip_stride_is_the_largest_that_fits():
    assert [clip_stride(n, 8, 3) for n in (8, 14, 15, 16, 21, 22, 24, 100)] == [1, 1, 2, 2, 2, 3, 3, 3]


def test_windows_have_orthogonal_views_strided_frames_and_relative_cameras(data):
    bank = load_clip_bank(data, PX, 4)
    assert bank.subject_captions == ["a ball", "a cube"] and len(bank.rgb) == 8 * (24 + 10 + 10 + 16)
    w = sample_windows(bank, 200, spec(time_reversal=True), torch.Generator().manual_seed(0))
    reversed_count = 0
    for i in range(200):
        c = int(w.clips[i])
        decoded = [[decode(bank, int(j)) for j in row] for row in w.views[i]]  # (F, 4) of (view, frame)
        frames = [row[0][1] for row in decoded]
        ring = [v for v, _ in decoded[0]]
        assert all(row == [(v, f) for v in ring] for row, f in zip(decoded, frames, strict=True))
        assert [(v - ring[0]) % 8 for v in ring] == [0, 2, 4, 6]  # 90° apart
        steps = np.diff(frames)
        stride = clip_stride(bank.num_frames[c], 4, 3)
        assert set(np.abs(steps)) == {stride} and len(set(np.sign(steps))) == 1
        reversed_count += steps[0] < 0
        mono = {decode(bank, int(j))[0] for j in w.condition[i]}
        assert len(mono) == 1 and [decode(bank, int(j))[1] for j in w.condition[i]] == frames
        m = mono.pop()
        rel = [((v - m) * 45.0) % 360.0 for v in ring]
        np.testing.assert_allclose(w.cameras[i].numpy(), fourdm_camera_vectors(rel, 0.0), atol=1e-6)
        assert bank.subject_captions[int(w.captions[i])] == bank.captions[c]
    assert 60 < reversed_count < 140
    # Subject-balanced: the single-clip subject gets half the windows, not a quarter.
    counts = Counter(int(x) for x in sample_windows(bank, 2000, spec(), torch.Generator().manual_seed(1)).captions)
    assert abs(counts[0] / 2000 - 0.5) < 0.04


def test_focus_windows_are_the_demo_setup_at_the_requested_rate(data):
    bank = load_clip_bank(data, PX, 4)
    focus = bank.names.index("ball-a")
    w = sample_windows(
        bank, 1000, spec(time_reversal=True, focus_clip=focus, focus_fraction=0.75), torch.Generator().manual_seed(2)
    )
    front = front_view(8)
    assert front == 4  # the ring view at azimuth 0: −180° + 45°·4
    picked = [i for i in range(1000) if int(w.clips[i]) == focus]
    # 0.75 focus windows plus the ball's half of the others (two subjects, balanced)
    assert abs(len(picked) / 1000 - (0.75 + 0.25 / 2)) < 0.04
    focused = 0
    for i in picked:
        mono = {decode(bank, int(j))[0] for j in w.condition[i]}
        ring = [decode(bank, int(j))[0] for j in w.views[i, 0]]
        if mono == {front} and ring == [front, 6, 0, 2]:  # views at 0/90/180/270 from the front, in that order
            focused += 1
            np.testing.assert_allclose(
                w.cameras[i].numpy(), fourdm_camera_vectors([0.0, 90.0, 180.0, 270.0], 0.0), atol=1e-6
            )
    assert focused >= 0.74 * 1000 * 0.98  # all focus windows (a random one matches by chance only rarely)


def test_front_view_only_windows_keep_the_draws_and_condition_on_the_front(data):
    bank = load_clip_bank(data, PX, 4)
    plain = sample_windows(bank, 200, spec(time_reversal=True), torch.Generator().manual_seed(3))
    front = sample_windows(bank, 200, spec(time_reversal=True, front_view_only=True), torch.Generator().manual_seed(3))
    assert torch.equal(front.clips, plain.clips) and torch.equal(front.captions, plain.captions)
    want = fourdm_camera_vectors([0.0, 90.0, 180.0, 270.0], 0.0)
    for i in range(200):
        # Same frames as the default draw, now from the front view (4) and the views 0/90/180/270° from it.
        assert [decode(bank, int(j))[1] for j in front.condition[i]] == [
            decode(bank, int(j))[1] for j in plain.condition[i]
        ]
        assert {decode(bank, int(j))[0] for j in front.condition[i]} == {4}
        assert [decode(bank, int(j))[0] for j in front.views[i, 0]] == [4, 6, 0, 2]
        np.testing.assert_allclose(front.cameras[i].numpy(), want, atol=1e-6)
    assert any({decode(bank, int(j))[0] for j in plain.condition[i]} != {4} for i in range(200))


def test_front_view_windows_with_any_base_keep_the_front_condition_and_vary_the_quadruple(data):
    bank = load_clip_bank(data, PX, 4)
    plain = sample_windows(bank, 200, spec(time_reversal=True), torch.Generator().manual_seed(3))
    draw = dict(front_view_only=True, any_base=True)
    anyb = sample_windows(bank, 200, spec(time_reversal=True, **draw), torch.Generator().manual_seed(3))
    bases = set()
    for i in range(200):
        assert {decode(bank, int(j))[0] for j in anyb.condition[i]} == {4}  # conditioned on the front view
        ring = [decode(bank, int(j))[0] for j in anyb.views[i, 0]]
        assert ring == [decode(bank, int(j))[0] for j in plain.views[i, 0]]  # the default draw's quadruple
        bases.add(ring[0])
        azimuths = [((v - 4) * 45.0) % 360.0 for v in ring]  # 8 views, 45° apart, relative to the front (4)
        np.testing.assert_allclose(anyb.cameras[i].numpy(), fourdm_camera_vectors(azimuths, 0.0), atol=1e-6)
    assert bases == set(range(8))
    # focus windows keep the front quadruple
    focus_spec = spec(time_reversal=True, focus_clip=0, focus_fraction=1.0, **draw)
    focus = sample_windows(bank, 50, focus_spec, torch.Generator().manual_seed(4))
    assert all([decode(bank, int(j))[0] for j in focus.views[i, 0]] == [4, 6, 0, 2] for i in range(50))
    # ... unless focus_any_base: then the focus clip's windows, front view in, any quadruple out
    focus_spec = spec(time_reversal=True, focus_clip=0, focus_fraction=1.0, focus_any_base=True, **draw)
    focus = sample_windows(bank, 200, focus_spec, torch.Generator().manual_seed(4))
    assert (focus.clips == 0).all()
    bases = set()
    for i in range(200):
        assert {decode(bank, int(j))[0] for j in focus.condition[i]} == {4}
        ring = [decode(bank, int(j))[0] for j in focus.views[i, 0]]
        assert ring == [(ring[0] + 2 * k) % 8 for k in range(4)]
        bases.add(ring[0])
        azimuths = [((v - 4) * 45.0) % 360.0 for v in ring]
        np.testing.assert_allclose(focus.cameras[i].numpy(), fourdm_camera_vectors(azimuths, 0.0), atol=1e-6)
    assert bases == set(range(8))


def test_too_short_clips_are_a_clear_error(data):
    with pytest.raises(StageError, match="needs 12"):
        load_clip_bank(data, PX, 12)


def test_vae_loss_decreases_when_overfitting_a_batch(tmp_path):
    cfg = tiny_config()
    pipe = build_pipeline(cfg, tmp_path / "tok")
    vae = pipe.vae.train().requires_grad_(True)
    x = torch.rand(4, 3, PX, PX) * 2 - 1
    mask = (torch.rand(4, 1, PX, PX) > 0.5).float()
    optimizer = torch.optim.Adam(vae.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, _ = vae_loss(vae, x, mask, cfg.vae_phase, torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_checkpoint_round_trip_restores_weights_ema_and_moments(tmp_path):
    cfg = tiny_config()
    pipe = build_pipeline(cfg, tmp_path / "tok")
    params = dict(pipe.unet.named_parameters())
    for p in params.values():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params.values(), lr=1e-3)
    sum(p.float().pow(2).sum() for p in params.values()).backward()
    optimizer.step()
    ema = {k: p.detach() * 0.5 for k, p in params.items()}
    pipe.vae.register_to_config(scaling_factor=0.25)
    state = TrainState(3, 7, 0.25, {"vae": 1.0})
    save_checkpoint(
        tmp_path / "ckpt", pipe, params, ema, optimizer, state, "sha", built=True, moments_dtype=torch.bfloat16
    )

    other = build_pipeline(tiny_config("seed=9", "model.encoder_seed=9"), tmp_path / "tok2")
    other_ema = {k: torch.zeros_like(p) for k, p in other.unet.named_parameters()}
    other_opt = torch.optim.AdamW(other.unet.parameters(), lr=1e-3)
    state = load_checkpoint(tmp_path / "ckpt", other, all_params(other), other_ema, other_opt, built=True)
    assert (state.vae_step, state.unet_step, state.scaling_factor) == (3, 7, 0.25)
    assert other.vae.config.scaling_factor == 0.25
    for name in ("unet", "vae", "text_encoder", "image_encoder"):
        a, b = getattr(pipe, name).state_dict(), getattr(other, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert all(torch.equal(ema[k], other_ema[k]) for k in ema)
    for name, p in other.unet.named_parameters():
        saved, restored = optimizer.state[params[name]], other_opt.state[p]
        assert torch.equal(restored["exp_avg"], saved["exp_avg"].to(torch.bfloat16).float())
        assert float(restored["step"]) == float(saved["step"]) == 1.0


def test_slim_checkpoint_without_raw_weights_resumes_from_the_ema(tmp_path):
    cfg = tiny_config()
    pipe = build_pipeline(cfg, tmp_path / "tok")
    ema = {k: torch.randn_like(p) for k, p in pipe.unet.named_parameters()}
    save_checkpoint(tmp_path / "ckpt", pipe, all_params(pipe), ema, None, TrainState(3, 5, 0.5), "sha", built=True)
    (tmp_path / "ckpt" / "unet.safetensors").unlink()
    other = build_pipeline(tiny_config("seed=9"), tmp_path / "tok2")
    other_ema = {k: torch.zeros_like(p) for k, p in other.unet.named_parameters()}
    assert load_checkpoint(tmp_path / "ckpt", other, all_params(other), other_ema, None, built=True).unet_step == 5
    for k, p in other.unet.named_parameters():
        assert torch.equal(p, ema[k]) and torch.equal(other_ema[k], ema[k])
    (tmp_path / "ckpt" / "unet_ema.safetensors").unlink()
    with pytest.raises(StageError, match="neither"):
        load_checkpoint(tmp_path / "ckpt", other, all_params(other), other_ema, None, built=True)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "run"
    run(tiny_config(), data_dir=data, output_dir=out)
    return out


def test_tiny_run_exports_a_fourdm_folder_that_loads_and_samples(trained):
    index = json.loads((trained / EXPORT / "model_index.json").read_text())
    assert index == {"_class_name": "FourDMPipeline", **{k: v.__name__ for k, v in COMPONENTS.items()}}
    pipe = load_fourdm(trained / EXPORT)
    assert pipe.unet.dtype == torch.float32  # float16 files, upcast by the loader
    assert pipe.scheduler.config.prediction_type == "epsilon" and not pipe.scheduler.config.rescale_betas_zero_snr
    torch.testing.assert_close(pipe.scheduler.alphas_cumprod, official_scheduler().alphas_cumprod)
    state = json.loads((trained / CHECKPOINT / "state.json").read_text())
    assert pipe.vae.config.scaling_factor == pytest.approx(state["scaling_factor"])
    ema = load_file(str(trained / CHECKPOINT / "unet_ema.safetensors"))
    exported = pipe.unet.state_dict()
    assert all(torch.equal(exported[k], ema[k].half().float()) for k in ema)  # the EMA weights are what ships
    frames = (np.random.default_rng(0).random((4, PX, PX, 3)) * 255).astype(np.uint8)
    out = pipe(frames, "a cube", negative_prompt="", num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (4, 4, PX, PX, 3) and np.isfinite(out.images).all()
    log = [json.loads(line) for line in (trained / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["phase"] == "vae"] == [1, 2, 3]
    assert [r["step"] for r in log if r["phase"] == "unet"] == [1, 2, 3, 4]
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["unet"]["steps"] == 4 and set(summary["samples"]) == {"cube-a", "ball-a"}
    report = (trained / "report.md").read_text()
    assert report.startswith("# Demo 4DM training run") and "| unet | 4 |" in report and "| cube-a |" in report
    assert [r["t"] for r in summary["camera_check"]] == [50, 200, 400, 600, 800, 950]
    assert "## Camera check" in report and "| 950 |" in report
    assert {p.name for p in (trained / "samples").iterdir()} == {
        "cube-a.png",
        "ball-a.png",
        "metrics.json",
        "vae_reconstructions.png",
    }


def test_a_run_from_weights_fine_tunes_them_and_reports_their_vae(data, trained, tmp_path):
    start = trained / EXPORT
    out = run(tiny_config("schedule.steps=2"), data_dir=data, weights_dir=start, output_dir=tmp_path / "ft")
    log = [json.loads(line) for line in (tmp_path / "ft/train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["phase"] == "unet"] == [1, 2] and not [r for r in log if r["phase"] == "vae"]
    vae = "vae/diffusion_pytorch_model.safetensors"
    a, b = load_file(str(start / vae)), load_file(str(out / vae))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the VAE is the starting one, untouched
    scaling = json.loads((start / "vae/config.json").read_text())["scaling_factor"]
    summary = json.loads((tmp_path / "ft/summary.json").read_text())
    assert summary["vae"] == {"from": str(start), "scaling_factor": pytest.approx(scaling)}
    report = (tmp_path / "ft/report.md").read_text()
    assert f"VAE: the starting weights' (`{start}`), frozen; scaling factor {scaling:.5f}." in report


def test_rerun_resumes_from_the_checkpoint_and_a_lost_optimizer_warms_up_again(data, trained, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    vae_before = load_file(str(run_dir / CHECKPOINT / "vae.safetensors"))
    (run_dir / CHECKPOINT / "unet_optimizer.safetensors").unlink()
    run(tiny_config("schedule.steps=6"), data_dir=data, output_dir=run_dir)
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    unet_rows = [r for r in log if r["phase"] == "unet"]
    assert [r["step"] for r in unet_rows] == [1, 2, 3, 4, 5, 6]  # the VAE did not train again
    assert [r["lr"] for r in unet_rows[4:]] == pytest.approx([0.0005, 0.001])  # warm-up of 2 steps restarts
    assert json.loads((run_dir / CHECKPOINT / "state.json").read_text())["unet_step"] == 6
    vae_after = load_file(str(run_dir / CHECKPOINT / "vae.safetensors"))
    assert all(torch.equal(vae_before[k], vae_after[k]) for k in vae_before)


def test_export_only_rebuilds_the_same_folder_from_the_checkpoint(trained, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(trained / CHECKPOINT, run_dir / CHECKPOINT)
    run(tiny_config("export_only=true"), output_dir=run_dir)
    for part in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"):
        a, b = (load_file(str(d / EXPORT / part)) for d in (trained, run_dir))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    with pytest.raises(StageError, match="no checkpoint"):
        run(tiny_config("export_only=true"), output_dir=tmp_path / "empty")


def test_command_line_overrides_and_bad_keys(trained, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(trained / CHECKPOINT, run_dir / CHECKPOINT)
    config = str(REPO / "configs/tiny/train_fourdm_demo.yaml")
    assert main(["--config", config, "--output", str(run_dir), "--export-only", "--set", "export_dtype=float32"]) == 0
    assert load_fourdm(run_dir / EXPORT).unet.dtype == torch.float32
    unet = load_file(str(run_dir / EXPORT / "unet/diffusion_pytorch_model.safetensors"))
    assert all(v.dtype == torch.float32 for v in unet.values())  # the override reached the export
    assert main(["--config", config, "--output", str(run_dir), "--set", "no_such_key=1"]) == 1
    assert main(["--config", config, "--output", str(run_dir), "--set", "schedule.batch_size=zero"]) == 1
    assert main(["--config", config, "--output", str(run_dir)]) == 1  # training needs --data
    err = capsys.readouterr().err
    assert "no_such_key" in err and "schedule.batch_size" in err and "--data is required" in err


def test_demo_size_model_maps_64px_frames_to_16px_latents(tmp_path):
    cfg = parse_config(REPO / "configs/demo/train_fourdm.yaml", [])
    pipe = build_pipeline(cfg, tmp_path / "tok")
    latents = pipe.encode_latents(np.full((1, 64, 64, 3), 255, np.uint8), None)
    assert latents.shape == (1, 4, 16, 16) and pipe.unet.config.sample_size == 16
    assert pipe.encode_images(np.zeros((1, 64, 64, 3), np.uint8)).shape == (1, 65, 64)
    assert pipe.encode_text(["a low-poly red fox"]).shape == (1, 77, 64)


def test_camera_check_command_line(data, trained, tmp_path, capsys):
    out = tmp_path / "check.json"
    argv = ["--weights", str(trained / EXPORT), "--data", str(data), "--clip", "cube-a", "--windows", "2"]
    assert camera_check_main([*argv, "--frames", "4", "--timesteps", "100", "900", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["clips"] == ["cube-a"] and [r["t"] for r in result["rows"]] == [100, 900]
    for r in result["rows"]:
        assert r["gap"] == pytest.approx(r["mse_rotated"] - r["mse_true"])
        assert r["relative_gap"] == pytest.approx(r["mse_rotated"] / r["mse_true"] - 1)
    assert "true vs rotated cameras" in capsys.readouterr().out
    assert camera_check_main([*argv, "--frames", "4", "--timesteps", "999", "--front-view", "--json", str(out)]) == 0
    front = json.loads(out.read_text())["rows"]
    assert [r["t"] for r in front] == [999] and front[0]["mse_true"] != result["rows"][1]["mse_true"]
    assert camera_check_main(["--weights", str(trained / EXPORT), "--data", str(data), "--clip", "nope"]) == 2
    assert "is not a folder of render artifacts" in capsys.readouterr().err


def test_v_prediction_with_zero_terminal_snr_ships_its_scheduler_and_reuses_a_trained_vae(data, trained, tmp_path):
    with pytest.raises(StageError, match="zero_terminal_snr needs prediction_type v_prediction"):
        tiny_config("model.zero_terminal_snr=true")
    out = tmp_path / "run"
    v = ("model.prediction_type=v_prediction", "model.zero_terminal_snr=true")
    cfg = tiny_config(*v, f"vae_phase.reuse={trained / EXPORT}")
    run(cfg, data_dir=data, output_dir=out)
    # with vae_phase.reuse the run trains no VAE phase and ships the given run's VAE and scaling factor as they are
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert {r["phase"] for r in log} == {"unet"}
    part = "vae/diffusion_pytorch_model.safetensors"
    a, b = (load_file(str(d / EXPORT / part)) for d in (trained, out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    scaling = [json.loads((d / EXPORT / "vae/config.json").read_text())["scaling_factor"] for d in (trained, out)]
    assert scaling[0] == scaling[1] != 1.0
    pipe = load_fourdm(out / EXPORT)  # the scheduler's config travels with the weights
    scheduler = pipe.scheduler
    assert scheduler.config.prediction_type == "v_prediction" and scheduler.config.rescale_betas_zero_snr
    assert float(scheduler.alphas_cumprod[-1]) == 0.0 < float(official_scheduler().alphas_cumprod[-1])
    scheduler.set_timesteps(4)
    assert int(scheduler.timesteps[0]) == 999  # sampling starts where training saw no trace of the views
    frames = (np.random.default_rng(0).random((4, PX, PX, 3)) * 255).astype(np.uint8)
    images = pipe(
        frames, "a cube", negative_prompt="", num_inference_steps=3, generator=torch.Generator().manual_seed(0)
    )
    assert np.isfinite(images.images).all()
    summary = json.loads((out / "summary.json").read_text())
    assert all(np.isfinite(r["mse_true"]) for r in summary["camera_check"])


def test_vae_from_a_folder_without_a_vae_or_of_another_architecture_is_a_clear_error(data, trained, tmp_path):
    other = tiny_config("model.vae.block_out_channels=[8, 8]")
    pipe = build_pipeline(other, tmp_path / "tok")
    with pytest.raises(StageError, match="differs from the configured one"):
        load_trained_vae(pipe, trained / EXPORT, torch.float16)
    with pytest.raises(StageError, match="no exported VAE there"):
        load_trained_vae(pipe, tmp_path, torch.float16)
    with pytest.raises(StageError, match="no exported VAE there"):
        run(tiny_config(f"vae_phase.reuse={tmp_path}"), data_dir=data, output_dir=tmp_path / "run")
    assert not (tmp_path / "run" / CHECKPOINT).exists()
