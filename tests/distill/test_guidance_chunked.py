"""The chunked VAE-encoder path of the SDS (guidance.vae_chunk) against the one-graph reference."""

from __future__ import annotations

import numpy as np
import torch

from stages.distill.guidance import FourDMGuidance
from tests.mvgen.tiny import IMAGE_PX, tiny_pipeline


def test_chunked_encoder_gives_the_same_loss_target_and_render_gradient(tmp_path):
    guidance = FourDMGuidance(tiny_pipeline(tmp_path), guidance_scale=5.0, std_rescale=0.2)
    frames = np.random.default_rng(0).integers(0, 256, (2, IMAGE_PX, IMAGE_PX, 3), dtype=np.uint8)
    cond = guidance.prepare(frames, "a fox", "blurry", torch.Generator().manual_seed(0))
    rgb = torch.rand(2, 4, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    results = []
    for chunk in (0, 3):  # 3 does not divide the 8 renders: a short last chunk
        leaf = rgb.clone().requires_grad_(True)
        out = guidance(
            leaf,
            cond,
            azimuths_deg=[0.0, 90.0, 180.0, 270.0],
            elevation_deg=3.0,
            min_step=200,
            max_step=800,
            generator=torch.Generator().manual_seed(4),
            vae_chunk=chunk,
        )
        (2.0 * out.loss).backward()
        results.append((out, leaf.grad))
    (ref, ref_grad), (got, got_grad) = results
    assert got.timestep == ref.timestep
    torch.testing.assert_close(got.latents, ref.latents.detach())
    torch.testing.assert_close(got.target, ref.target)
    torch.testing.assert_close(got.loss.detach(), ref.loss.detach())
    assert ref_grad.abs().max() > 0
    torch.testing.assert_close(got_grad, ref_grad)
    # Renders without gradients take the plain path (nothing to re-encode).
    plain = guidance(
        rgb,
        cond,
        azimuths_deg=[0.0, 90.0, 180.0, 270.0],
        elevation_deg=3.0,
        min_step=200,
        max_step=800,
        generator=torch.Generator().manual_seed(4),
        vae_chunk=3,
    )
    assert not plain.loss.requires_grad
    torch.testing.assert_close(plain.loss, ref.loss.detach())
