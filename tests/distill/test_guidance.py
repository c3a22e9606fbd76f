from __future__ import annotations

import copy
import types

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from stages.common.errors import StageError
from stages.distill.guidance import FourDMGuidance
from stages.mvgen.models import FourDMUNet
from stages.mvgen.pipeline_fourdm import FourDMPipeline
from tests.mvgen.tiny import IMAGE_PX, tiny_pipeline


@pytest.fixture(scope="module")
def guidance(tmp_path_factory):
    return FourDMGuidance(tiny_pipeline(tmp_path_factory.mktemp("tiny4dm")), guidance_scale=5.0, std_rescale=0.2)


@pytest.fixture(scope="module")
def cond(guidance):
    frames = np.random.default_rng(0).integers(0, 256, (2, IMAGE_PX, IMAGE_PX, 3), dtype=np.uint8)
    return guidance.prepare(frames, "a fox", "blurry", torch.Generator().manual_seed(0))


def call(guidance, cond, rgb, seed=0):
    return guidance(
        rgb,
        cond,
        azimuths_deg=[0.0, 90.0, 180.0, 270.0],
        elevation_deg=3.0,
        min_step=200,
        max_step=800,
        generator=torch.Generator().manual_seed(seed),
    )


def test_sds_gradient_points_from_the_render_towards_x0(guidance, cond):
    torch.manual_seed(0)
    rgb = torch.rand(2, 4, 3, 12, 12, requires_grad=True)  # renders at another size than the VAE's
    out = call(guidance, cond, rgb)
    assert out.target.shape == out.latents.shape == (8, 4, IMAGE_PX // 2, IMAGE_PX // 2)
    assert 200 <= out.timestep <= 800
    out.loss.backward()
    # The gradient is exactly that of ½‖E(rgb) − x̂0‖²/N with x̂0 held fixed (same posterior noise).
    rgb2 = rgb.detach().clone().requires_grad_(True)
    z = guidance.encode(rgb2.reshape(8, 3, 12, 12), torch.Generator().manual_seed(0))
    torch.testing.assert_close(z, out.latents)
    (0.5 * ((z - out.target) ** 2).sum() / 8).backward()
    torch.testing.assert_close(rgb.grad, rgb2.grad)

    # A small step against the gradient brings the render's latents closer to the target.
    def distance(images):
        with torch.no_grad():
            return (
                guidance.encode(images.reshape(8, 3, 12, 12), torch.Generator().manual_seed(0)) - out.target
            ).norm()

    step = 0.05 / rgb.grad.abs().max()
    assert distance(rgb.detach() - step * rgb.grad) < distance(rgb.detach())


def test_sds_is_reproducible_and_depends_on_the_cameras(guidance, cond):
    rgb = torch.rand(2, 4, 3, IMAGE_PX, IMAGE_PX, generator=torch.Generator().manual_seed(1))
    a, b = call(guidance, cond, rgb), call(guidance, cond, rgb)
    assert torch.equal(a.target, b.target)
    c = guidance(
        rgb,
        cond,
        azimuths_deg=[45.0, 135.0, 225.0, 315.0],
        elevation_deg=3.0,
        min_step=200,
        max_step=800,
        generator=torch.Generator().manual_seed(0),
    )
    assert c.timestep == a.timestep and not torch.allclose(c.target, a.target)


def test_cfg_and_rescale_follow_the_formula(guidance, cond):
    """With std_rescale 0 and scale 1 the target is the conditional x0; the rescale only changes the spread."""
    rgb = torch.rand(2, 4, 3, IMAGE_PX, IMAGE_PX, generator=torch.Generator().manual_seed(2))
    plain = FourDMGuidance(guidance.pipe, guidance_scale=1.0, std_rescale=0.0)
    cfg = FourDMGuidance(guidance.pipe, guidance_scale=5.0, std_rescale=0.0)
    full = FourDMGuidance(guidance.pipe, guidance_scale=5.0, std_rescale=1.0)
    x_plain, x_cfg, x_full = (call(g, cond, rgb).target for g in (plain, cfg, full))
    # r = 1: x̂0_cfg scaled to the conditional estimate's std.
    torch.testing.assert_close(x_full, x_cfg * (x_plain.std() + 1e-8) / (x_cfg.std() + 1e-8))
    r = call(guidance, cond, rgb).target  # r = 0.2
    torch.testing.assert_close(r, 0.2 * x_full + 0.8 * x_cfg)


def test_v_prediction_guidance_gives_the_epsilon_targets(guidance, cond):
    """A 4DM predicting v (scheduler prediction_type v_prediction) that equals an ε model converted, v = √ᾱ·ε −
    √(1−ᾱ)·x̂0, gives the same SDS target: CFG and the std rescale act on x̂0 the same way."""
    pipe = guidance.pipe
    alphas = pipe.scheduler.alphas_cumprod

    def v_forward(self, sample, timestep, *args):
        eps = FourDMUNet.forward(self, sample, timestep, *args)
        a = alphas.to(sample.device)[timestep].reshape(-1, 1, 1, 1)
        x0 = (sample - (1 - a).sqrt() * eps) / a.sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * x0

    unet_v = copy.deepcopy(pipe.unet)
    unet_v.forward = types.MethodType(v_forward, unet_v)
    scheduler_v = DDIMScheduler(
        **{k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")}
        | {"prediction_type": "v_prediction"}
    )
    pipe_v = FourDMPipeline(
        unet_v, pipe.vae, scheduler_v, pipe.text_encoder, pipe.tokenizer, pipe.image_encoder, pipe.feature_extractor
    )
    guidance_v = FourDMGuidance(pipe_v, guidance_scale=5.0, std_rescale=0.2)
    assert guidance_v.prediction_type == "v_prediction" and guidance.prediction_type == "epsilon"
    rgb = torch.rand(2, 4, 3, IMAGE_PX, IMAGE_PX, generator=torch.Generator().manual_seed(4))
    want, got = call(guidance, cond, rgb), call(guidance_v, cond, rgb)
    assert got.timestep == want.timestep
    torch.testing.assert_close(got.target, want.target, rtol=1e-4, atol=1e-4)
    # The same v model read as an ε model gives another target: the conversion is what makes them agree.
    scheduler_eps = DDIMScheduler(
        **{k: v for k, v in scheduler_v.config.items() if not k.startswith("_")} | {"prediction_type": "epsilon"}
    )
    wrong = FourDMGuidance(
        FourDMPipeline(
            unet_v,
            pipe.vae,
            scheduler_eps,
            pipe.text_encoder,
            pipe.tokenizer,
            pipe.image_encoder,
            pipe.feature_extractor,
        ),
        guidance_scale=5.0,
        std_rescale=0.2,
    )
    assert not torch.allclose(call(wrong, cond, rgb).target, want.target, atol=1e-2)


def test_a_prediction_type_4dm_does_not_support_is_refused_before_any_step(guidance):
    pipe = guidance.pipe
    config = {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")} | {"prediction_type": "sample"}
    parts = (pipe.unet, pipe.vae, DDIMScheduler(**config), pipe.text_encoder, pipe.tokenizer, pipe.image_encoder)
    with pytest.raises(StageError, match="prediction_type 'sample'"):
        FourDMGuidance(FourDMPipeline(*parts, pipe.feature_extractor))
