from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from stages.common import logs
from stages.common.cameras import OrbitCamera
from stages.common.errors import StageError
from stages.common.image_io import read_rgba
from stages.distill import DistillConfig
from stages.distill.guidance import FourDMGuidance
from stages.distill.losses import load_anchor_lpips
from stages.distill.schedules import LinearSchedule
from stages.distill.trainer import CHECKPOINT_FILE, AnchorTarget, Trainer, build_field
from tests.distill.tiny import REPO, tiny_distill_config, write_tiny_lpips
from tests.mvgen.tiny import IMAGE_PX, tiny_pipeline

TINY = tiny_distill_config()
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trainer")
    guidance = FourDMGuidance(tiny_pipeline(tmp), guidance_scale=5.0, std_rescale=0.2)
    frames = np.random.default_rng(0).integers(0, 256, (4, IMAGE_PX, IMAGE_PX, 3), dtype=np.uint8)
    cond = guidance.prepare(frames, "a fox", "blurry", torch.Generator().manual_seed(0))
    anchor = AnchorTarget(
        torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255, OrbitCamera.from_angles(0, 0.0, 0.0, 1.1, 45.0)
    )
    return guidance, cond, anchor, load_anchor_lpips(write_tiny_lpips(tmp / "lpips"))


def make_trainer(config: DistillConfig, parts) -> Trainer:
    guidance, cond, anchor, lpips = parts
    torch.manual_seed(config.seed)
    return Trainer(config, build_field(config), anchor, guidance=guidance, conditioning=cond, lpips=lpips, device=CPU)


def test_resume_gives_bit_identical_parameters(parts, tmp_path):
    config = TINY.model_copy(
        update={
            "num_steps": 4,
            "checkpoint_every_steps": 1,
            "renderer": TINY.renderer.model_copy(
                update={"occupancy_update_every_steps": 2, "occupancy_warmup_steps": 1}
            ),
        }
    )
    straight = make_trainer(config, parts)
    straight.fit(4)
    first = make_trainer(config, parts)
    first.fit(2, checkpoint_dir=tmp_path)
    del first  # the process "dies" here; only the checkpoint survives
    resumed = make_trainer(config, parts)
    resumed.fit(4, checkpoint_dir=tmp_path)
    assert resumed.step == straight.step == 4
    for (name, a), b in zip(straight.field.state_dict().items(), resumed.field.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(straight.occupancy.occupancy, resumed.occupancy.occupancy)
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    assert not list(Path(tmp_path).glob(".*tmp")) and (tmp_path / CHECKPOINT_FILE).is_file()


def test_learning_rates_decay_to_their_final_fraction_and_resume_where_they_were(parts, tmp_path):
    optimizer = TINY.optimizer.model_copy(update={"final_lr_factor": 0.25})
    config = TINY.model_copy(update={"num_steps": 4, "checkpoint_every_steps": 1, "optimizer": optimizer})
    straight = make_trainer(config, parts)
    rates = []
    for _ in range(4):
        straight.fit(straight.step + 1)
        rates.append([g["lr"] for g in straight.optimizer.param_groups])
    for step, (grid, mlp) in enumerate(rates):  # the rates the step at `step` took
        assert grid == pytest.approx(optimizer.grid_lr * 0.25 ** (step / 4))
        assert mlp == pytest.approx(optimizer.mlp_lr * 0.25 ** (step / 4))
    first = make_trainer(config, parts)
    first.fit(2, checkpoint_dir=tmp_path)
    resumed = make_trainer(config, parts)
    resumed.fit(4, checkpoint_dir=tmp_path)
    for (name, a), b in zip(straight.field.state_dict().items(), resumed.field.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    paper = make_trainer(TINY.model_copy(update={"num_steps": 4}), parts)  # final_lr_factor 1: constant rates
    paper.fit(3)
    assert [g["lr"] for g in paper.optimizer.param_groups] == [TINY.optimizer.grid_lr, TINY.optimizer.mlp_lr]


def test_a_checkpoint_of_another_config_or_inputs_is_replaced_by_a_fresh_run(parts, tmp_path, caplog):
    make_trainer(TINY, parts).fit(1, checkpoint_dir=tmp_path, inputs_sha256="a")
    other = TINY.model_copy(update={"seed": 1})
    fresh = make_trainer(other, parts)
    fresh.fit(1)
    for config, inputs, reason in ((other, "a", "another config"), (other, "b", "other inputs")):
        trainer = make_trainer(config, parts)
        trainer.fit(1, checkpoint_dir=tmp_path, inputs_sha256=inputs)  # no error: starts at step 0
        assert reason in caplog.text and "training starts at step 0" in caplog.text
        for (name, a), b in zip(fresh.field.state_dict().items(), trainer.field.state_dict().values(), strict=True):
            assert torch.equal(a, b), name
        caplog.clear()
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"truncated")
    make_trainer(other, parts).fit(1, checkpoint_dir=tmp_path, inputs_sha256="b")
    assert "not a readable checkpoint" in caplog.text


@pytest.mark.parametrize("where", ["parameter", "learning rate"])
def test_a_loss_or_parameter_that_stops_being_finite_stops_training_naming_step_and_term(parts, tmp_path, where):
    if where == "parameter":
        trainer = make_trainer(TINY, parts)
        with torch.no_grad():
            next(trainer.field.parameters()).fill_(float("nan"))
        match = r"step 1: parameter 'grid_xyz.params' became NaN or infinite"  # renders empty, losses finite
    else:  # a finite but absurd learning rate: the first update overflows, the second step's losses are NaN
        absurd = TINY.optimizer.model_copy(update={"grid_lr": 1e30, "mlp_lr": 1e30})
        trainer = make_trainer(TINY.model_copy(update={"optimizer": absurd}), parts)
        match = r"step \d: (loss term 'loss/\w+' is (nan|inf)|parameter '[\w.]+'.* became NaN or infinite)"
    with pytest.raises(StageError, match=match):
        trainer.fit(2, checkpoint_dir=tmp_path)
    if (tmp_path / CHECKPOINT_FILE).exists():  # only a checkpoint of a step before the failure
        assert all(t.isfinite().all() for t in load_file(str(tmp_path / CHECKPOINT_FILE)).values())
    else:
        assert where == "parameter"


def test_a_checkpoint_resumes_after_a_change_of_the_run_time_knobs(parts, tmp_path):
    """The run-time section (memory/speed) is not part of the config hash a checkpoint is tied to."""
    first = make_trainer(TINY, parts)
    first.fit(1, checkpoint_dir=tmp_path)
    runtime = TINY.runtime.model_copy(update={"grad_chunk_samples": 64, "march_chunk": 1024, "early_stop_block": 0})
    resumed = make_trainer(TINY.model_copy(update={"runtime": runtime}), parts)
    resumed.load_checkpoint(tmp_path / CHECKPOINT_FILE)
    assert resumed.step == 1
    for (name, a), b in zip(first.field.state_dict().items(), resumed.field.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(first.generator.get_state(), resumed.generator.get_state())


def test_training_changes_the_field_and_only_trainable_parts(parts):
    trainer = make_trainer(TINY, parts)
    before = {k: v.clone() for k, v in trainer.field.state_dict().items()}
    unet_before = next(parts[0].pipe.unet.parameters()).clone()
    metrics = trainer.train_step()
    assert all(np.isfinite(v) for v in metrics.values())
    assert all(not torch.equal(before[k], v) for k, v in trainer.field.state_dict().items())
    assert torch.equal(unet_before, next(parts[0].pipe.unet.parameters()))


def test_anchor_only_optimisation_fits_the_example_views(tmp_path):
    """The anchor loss alone (no 4DM) makes the field reproduce a real view: the bundled fox's front view."""
    render = REPO / "examples/fox/render"
    from stages.common.artifacts import RenderManifest

    gt = RenderManifest.load(render).gt
    frames = []
    for f in range(2):
        rgba = read_rgba(gt.frame_path(render, 0, f)).astype(np.float32) / 255.0
        image = torch.from_numpy(rgba).permute(2, 0, 1)[None]
        image = torch.nn.functional.interpolate(image, size=(32, 32), mode="area")[0]
        mask = (image[3:] > 0.5).float()
        frames.append(image[:3] * mask + (1 - mask))
    from stages.common.cameras import load_cameras

    camera = load_cameras(render / gt.cameras_file)[0]
    anchor = AnchorTarget(torch.stack(frames), camera)
    lpips = load_anchor_lpips(write_tiny_lpips(tmp_path / "lpips"))
    zero = LinearSchedule.constant(0.0)
    config = TINY.model_copy(
        update={
            "num_steps": 40,
            "optimizer": TINY.optimizer.model_copy(
                update={"grid_lr": 0.05, "mlp_lr": 0.01}
            ),  # few steps: larger steps
            "field": TINY.field.model_copy(
                update={"num_levels": 4, "base_resolution": 8, "log2_hashmap_size": 12, "hidden_dim": 16}
            ),
            "renderer": TINY.renderer.model_copy(update={"num_samples_per_ray": 32}),
            "loss_weights": TINY.loss_weights.model_copy(
                update={
                    "sds": 0.0,
                    "anchor_lpips": 1.0,
                    "anchor_dssim": 1.0,
                    "orient": zero,
                    "sparsity": zero,
                    "opaque": zero,
                }
            ),
        }
    )
    torch.manual_seed(0)
    trainer = Trainer(config, build_field(config), anchor, guidance=None, conditioning=None, lpips=lpips, device=CPU)
    first = trainer.train_step()["psnr/anchor"]
    trainer.fit(40)
    with torch.no_grad():  # deterministic renders of both frames after training
        out = trainer.render([camera], trainer.times.tolist(), 32, stratified=False)
    fitted = out.rgb.reshape(2, 32, 32, 3).permute(0, 3, 1, 2)
    last = float(-10 * torch.log10((fitted - anchor.frames).pow(2).mean()))
    assert last > first + 10.0, (first, last)


def l1_only_weights(l1: float):
    """TINY's loss weights with every term off except the anchor L1 term."""
    zero = LinearSchedule.constant(0.0)
    off = {"sds": 0.0, "anchor_lpips": 0.0, "anchor_dssim": 0.0, "orient": zero, "sparsity": zero, "opaque": zero}
    return TINY.loss_weights.model_copy(update={**off, "anchor_l1": l1})


def test_anchor_l1_is_added_logged_and_reaches_the_field(parts):
    """anchor_l1 > 0: same draws and terms as without it, the total grows by λ·loss/anchor_l1, the field's
    gradients change; with only the L1 weight on, the anchor render still runs."""
    with_l1 = TINY.model_copy(update={"loss_weights": TINY.loss_weights.model_copy(update={"anchor_l1": 7.0})})
    plain, extra = make_trainer(TINY, parts), make_trainer(with_l1, parts)
    grads: list[dict[str, torch.Tensor]] = []
    for trainer in (plain, extra):
        step = trainer.optimizer.step

        def recording_step(*args, _step=step, _trainer=trainer, **kwargs):
            grads.append({n: p.grad.clone() for n, p in _trainer.field.named_parameters() if p.grad is not None})
            return _step(*args, **kwargs)

        trainer.optimizer.step = recording_step
    m_plain, m_extra = plain.train_step(), extra.train_step()
    assert "loss/anchor_l1" not in m_plain and set(m_extra) == set(m_plain) | {"loss/anchor_l1"}
    for name, value in m_plain.items():
        if name != "loss/total":
            assert m_extra[name] == value, name
    assert 0.0 < m_extra["loss/anchor_l1"] <= 1.0
    assert m_extra["loss/total"] == pytest.approx(m_plain["loss/total"] + 7.0 * m_extra["loss/anchor_l1"], rel=1e-5)
    assert any(not torch.equal(grads[0][n], grads[1][n]) for n in grads[0])
    only_l1 = l1_only_weights(1.0)
    metrics = make_trainer(TINY.model_copy(update={"loss_weights": only_l1}), parts).train_step()
    assert metrics["loss/total"] == pytest.approx(metrics["loss/anchor_l1"], rel=1e-6) and "psnr/anchor" in metrics


def test_anchor_l1_deferred_backward_matches_the_direct_one(parts):
    """The L1 term's gradient reaches the field the same way through the deferred path (pixel gradients, chunks)."""
    weights = l1_only_weights(5.0)
    grads = []
    for chunk in (0, 64):
        config = TINY.model_copy(
            update={
                "loss_weights": weights,
                "runtime": TINY.runtime.model_copy(update={"grad_chunk_samples": chunk}),
            }
        )
        trainer = make_trainer(config, parts)
        with torch.no_grad():
            for grid in trainer.field.grid_parameters():
                grid.uniform_(-0.5, 0.5)
        trainer.optimizer.step = lambda *a, **k: None  # keep the gradients of step 0
        metrics = trainer.train_step()
        grads.append(({n: p.grad.clone() for n, p in trainer.field.named_parameters()}, metrics))
    (direct, m_direct), (deferred, m_deferred) = grads
    assert m_deferred["loss/anchor_l1"] == pytest.approx(m_direct["loss/anchor_l1"], rel=1e-5)
    for name, g in direct.items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(deferred[name], g, rtol=1e-4, atol=1e-5 * float(g.abs().max()), msg=name)


def with_extra_views(anchor: AnchorTarget) -> AnchorTarget:
    """The anchor plus 3 extra anchor videos (the anchor's frames mirrored, tinted, upside down) at 90/180/270°."""
    f = anchor.frames
    extra = torch.stack([f.flip(-1), f * torch.tensor([1.0, 0.5, 0.5])[:, None, None], f.flip(-2)])
    cams = [OrbitCamera.from_angles(k, 90.0 * k, 0.0, 1.1, 45.0) for k in (1, 2, 3)]
    return AnchorTarget(f, anchor.camera, extra_frames=extra, extra_cameras=cams)


def test_extra_anchor_views_are_rendered_and_match_between_the_direct_and_deferred_paths(parts):
    guidance, cond, anchor, lpips = parts
    size = anchor.frames.shape[-1]
    results = []
    for chunk in (0, 64):
        config = TINY.model_copy(
            update={
                "loss_weights": l1_only_weights(5.0).model_copy(update={"anchor_dssim": 3.0}),
                "runtime": TINY.runtime.model_copy(update={"grad_chunk_samples": chunk}),
            }
        )
        torch.manual_seed(config.seed)
        trainer = Trainer(
            config, build_field(config), with_extra_views(anchor), guidance=guidance, conditioning=cond,
            lpips=lpips, device=CPU,
        )  # fmt: skip
        with torch.no_grad():
            for grid in trainer.field.grid_parameters():
                grid.uniform_(-0.5, 0.5)
        trainer.optimizer.step = lambda *a, **k: None  # keep the gradients of step 0
        metrics = trainer.train_step()
        assert trainer.render_stats["anchor"]["rays"] == 4 * size * size  # the anchor view and the 3 extra ones
        results.append(({n: p.grad.clone() for n, p in trainer.field.named_parameters()}, metrics))
    (direct, m_direct), (deferred, m_deferred) = results
    for key in ("loss/anchor_l1", "loss/anchor_dssim"):
        assert m_deferred[key] == pytest.approx(m_direct[key], rel=1e-5)
    for name, g in direct.items():
        torch.testing.assert_close(deferred[name], g, rtol=1e-4, atol=1e-5 * float(g.abs().max()), msg=name)
    # the extra views change the loss: the same step with the anchor view alone gives another L1
    plain = make_trainer(TINY.model_copy(update={"loss_weights": l1_only_weights(5.0)}), parts)
    with torch.no_grad():
        for grid in plain.field.grid_parameters():
            grid.uniform_(-0.5, 0.5)
    assert plain.train_step()["loss/anchor_l1"] != pytest.approx(m_direct["loss/anchor_l1"], rel=1e-3)


def test_anchor_target_checks_its_extra_views(parts):
    anchor = parts[2]
    full = with_extra_views(anchor)
    torch.testing.assert_close(full.frame(1), torch.cat([anchor.frames[1:2], full.extra_frames[:, 1]]))
    assert [c.view for c in full.cameras] == [anchor.camera.view, 1, 2, 3]
    with pytest.raises(ValueError, match="3 extra anchor videos but 2 cameras"):
        AnchorTarget(anchor.frames, anchor.camera, full.extra_frames, full.extra_cameras[:2])
    with pytest.raises(ValueError, match="differ from the anchor video"):
        AnchorTarget(anchor.frames, anchor.camera, full.extra_frames[:, :2], full.extra_cameras)


def test_fit_off_a_terminal_logs_progress_with_its_losses(parts, monkeypatch, caplog):
    ticks = iter(range(0, 10_000, 20))  # 20 s pass between two looks at the clock
    monkeypatch.setattr(logs, "clock", lambda: float(next(ticks)))
    monkeypatch.setenv("FOURD_PROGRESS_EVERY_S", "10")
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a terminal
    caplog.set_level(logging.INFO, logger="stages.common.logs")
    # Losses are read every log_every_steps and at the first step, so every line here has them.
    trainer = make_trainer(TINY.model_copy(update={"num_steps": 3, "log_every_steps": 2}), parts)
    trainer.fit(3)
    lines = [r.getMessage() for r in caplog.records if r.name == "stages.common.logs"]
    assert [line.split(",")[0] for line in lines] == [
        "distill: step 1/3 (33%)",
        "distill: step 2/3 (67%)",
        "distill: step 3/3 done in 1:00",
    ]
    assert "ETA 0:40" in lines[0]
    for line in lines:
        assert re.search(
            r"; loss/total [-+0-9.e]+, loss/sds [-+0-9.e]+, loss/anchor_lpips .*, psnr/anchor [0-9.]+$", line
        ), line
