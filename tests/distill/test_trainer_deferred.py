"""Full train_step parity: the deferred path (and the chunked VAE encoder) against the direct reference path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.common.cameras import OrbitCamera
from stages.distill import DistillConfig
from stages.distill.guidance import FourDMGuidance
from stages.distill.losses import load_anchor_lpips
from stages.distill.trainer import AnchorTarget, Trainer, build_field
from tests.distill.tiny import tiny_distill_config, write_tiny_lpips
from tests.mvgen.tiny import IMAGE_PX, tiny_pipeline

TINY = tiny_distill_config()


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deferred")
    guidance = FourDMGuidance(tiny_pipeline(tmp), guidance_scale=5.0, std_rescale=0.2)
    frames = np.random.default_rng(0).integers(0, 256, (4, IMAGE_PX, IMAGE_PX, 3), dtype=np.uint8)
    cond = guidance.prepare(frames, "a fox", "blurry", torch.Generator().manual_seed(0))
    anchor = AnchorTarget(
        torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255, OrbitCamera.from_angles(0, 0.0, 0.0, 1.1, 45.0)
    )
    return guidance, cond, anchor, load_anchor_lpips(write_tiny_lpips(tmp / "lpips"))


def config(grad_chunk_samples: int, vae_chunk: int = 0, early_stop_block: int = 0) -> DistillConfig:
    runtime = TINY.runtime.model_copy(
        update={
            "grad_chunk_samples": grad_chunk_samples,
            "orient_chunk_samples": max(1, grad_chunk_samples // 2),
            "early_stop_block": early_stop_block,
            "vae_chunk": vae_chunk,
        }
    )
    return TINY.model_copy(update={"runtime": runtime})


def make_trainer(cfg: DistillConfig, parts) -> Trainer:
    guidance, cond, anchor, lpips = parts
    torch.manual_seed(cfg.seed)
    field = build_field(cfg)
    with torch.no_grad():  # grid features that matter, so every parameter's gradient is exercised
        for grid in field.grid_parameters():
            grid.uniform_(-0.5, 0.5)
    return Trainer(cfg, field, anchor, guidance=guidance, conditioning=cond, lpips=lpips, device=torch.device("cpu"))


def record_gradients(trainer: Trainer) -> list[dict[str, torch.Tensor]]:
    """Make the trainer's optimiser record the field's gradients each time it steps."""
    seen: list[dict[str, torch.Tensor]] = []
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        seen.append({n: p.grad.clone() for n, p in trainer.field.named_parameters() if p.grad is not None})
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    return seen


@pytest.mark.parametrize(("chunk", "vae_chunk", "block"), [(256, 0, 0), (64, 3, 2)])
def test_deferred_train_step_matches_the_direct_step(parts, chunk, vae_chunk, block):
    """Steps 0 and 1 (opaque loss on from step 1) from identical states: same losses, same gradients, same draws."""
    direct, deferred = make_trainer(config(0), parts), make_trainer(config(chunk, vae_chunk, block), parts)
    got, want = record_gradients(deferred), record_gradients(direct)
    for step in range(2):
        m_direct, m_deferred = direct.train_step(), deferred.train_step()
        assert set(m_direct) == set(m_deferred) >= {"loss/sds", "loss/sparsity", "loss/orient", "loss/anchor_lpips"}
        assert ("loss/opaque" in m_direct) == (step == 1)
        for name, value in m_direct.items():
            assert m_deferred[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
        assert len(got) == len(want) == step + 1
        assert set(got[-1]) == set(want[-1]) == {n for n, _ in direct.field.named_parameters()}
        for name, g in want[-1].items():
            assert g.abs().max() > 0, name
            torch.testing.assert_close(got[-1][name], g, rtol=1e-4, atol=1e-5 * float(g.abs().max()), msg=name)
        # Both generators drew the same numbers (cameras, offsets, timesteps, noise, frames).
        assert torch.equal(direct.generator.get_state(), deferred.generator.get_state())
        # Continue both from the direct trainer's state, so that the next step compares like with like.
        deferred.field.load_state_dict(direct.field.state_dict())
        deferred.optimizer.load_state_dict(direct.optimizer.state_dict())
        deferred.occupancy.load_state_dict(direct.occupancy.state_dict())
    assert set(deferred.render_stats) == {"sds", "orient", "anchor"}
    assert all(0 < s["samples"] <= s["evaluated"] <= s["candidates"] for s in deferred.render_stats.values())
