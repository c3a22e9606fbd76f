"""Parity of the two Gaussian rasterisers: gsplat 1.5.3's CUDA kernels against our torch reference (values and
gradients on one random scene), and a trainer step on either backend. GPU only: `RUN_GPU_TESTS=1` on a CUDA machine
with gsplat installed (`pip install gsplat==1.5.3`; its kernels compile at the first call, a minute or two)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from stages.common.cameras import OrbitCamera
from stages.distill.gaussians import GaussianTrainer, camera_matrices, rasterize_torch
from stages.distill.gaussians.gsplat_backend import rasterize_gsplat
from tests.distill.test_gaussians import fit_config, truth_anchor

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.timeout(1200),  # the first gsplat call compiles its CUDA kernels
    pytest.mark.skipif(
        not torch.cuda.is_available() or importlib.util.find_spec("gsplat") is None,
        reason="needs CUDA and gsplat==1.5.3",
    ),
]
CUDA = torch.device("cuda")


def random_scene(count: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """2 times of `count` Gaussians in the subject's box, of every size, opacity and orientation, on CUDA."""
    gen = torch.Generator().manual_seed(seed)
    means = (torch.rand(count, 3, generator=gen) - 0.5) * 0.7
    scene = {
        "means": torch.stack([means, means + 0.02 * torch.randn(count, 3, generator=gen)]),  # (2, N, 3)
        "quats": torch.randn(count, 4, generator=gen),
        "scales": 0.005 + 0.05 * torch.rand(count, 3, generator=gen),
        "opacities": 0.05 + 0.9 * torch.rand(count, generator=gen),
        "colours": torch.rand(count, 3, generator=gen),
    }
    return {k: v.to(CUDA).requires_grad_() for k, v in scene.items()}


def test_gsplat_matches_the_torch_reference_in_values_and_gradients():
    scene = random_scene(300)
    cameras = [OrbitCamera.from_angles(v, a, e, 1.1, 45.0) for v, (a, e) in enumerate([(0, 0), (100, 12), (230, 4)])]
    viewmats, ks = camera_matrices(cameras, 64, CUDA)
    background = torch.tensor([1.0, 0.9, 0.8], device=CUDA)
    gen = torch.Generator().manual_seed(1)
    w_rgb = torch.rand(2, 3, 64, 64, 3, generator=gen).to(CUDA)
    w_alpha = torch.rand(2, 3, 64, 64, 1, generator=gen).to(CUDA)
    outputs, grads = [], []
    for rasterize in (rasterize_torch, rasterize_gsplat):
        out = rasterize(
            **{k: scene[k] for k in ("means", "quats", "scales", "opacities", "colours")},
            viewmats=viewmats,
            ks=ks,
            size=64,
            background=background,
        )
        loss = (out.rgb * w_rgb).sum() + (out.alpha * w_alpha).sum()
        grads.append(torch.autograd.grad(loss, list(scene.values())))
        outputs.append(out)
    ref, gs = outputs
    assert ref.alpha.max() > 0.5 and ref.alpha.min() < 0.01  # a scene with opaque and empty pixels
    torch.testing.assert_close(gs.rgb, ref.rgb, atol=1e-4, rtol=0)
    torch.testing.assert_close(gs.alpha, ref.alpha, atol=1e-4, rtol=0)
    seen = ref.alpha > 0.1
    torch.testing.assert_close(gs.depth[seen], ref.depth[seen], atol=1e-3, rtol=0)
    for name, g_ref, g_gs in zip(scene, *grads, strict=True):
        scale = float(g_ref.abs().max())
        torch.testing.assert_close(g_gs, g_ref, atol=1e-3 * scale, rtol=1e-3, msg=lambda m, n=name: f"{n}: {m}")


def test_a_trainer_step_on_gsplat_matches_the_torch_backend():
    anchor = truth_anchor()
    losses, means = [], []
    for backend in ("torch", "gsplat"):
        config = fit_config(3, backend=backend).model_copy(update={"device": "cuda"})
        trainer = GaussianTrainer(config, anchor, guidance=None, conditioning=None, lpips=None, device=CUDA)
        losses.append([float(trainer.step_tensors()["loss/total"]) for _ in range(3)])
        means.append(trainer.field.means.detach())
    assert losses[0] == pytest.approx(losses[1], rel=1e-3)
    torch.testing.assert_close(means[1], means[0], atol=1e-5, rtol=0)
