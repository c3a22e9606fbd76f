"""Parity of the renderer's fast paths with the reference path (same samples, same values, same gradients)."""

from __future__ import annotations

import pytest
import torch

from stages.common.cameras import OrbitCamera
from stages.distill.cameras import Rays, camera_rays
from stages.distill.fields import DynamicNeRFField
from stages.distill.renderer import (
    OccupancyGrid,
    composite,
    render_rays,
    render_rays_deferred,
    sample_rays,
    step_size_for,
)

STEP = step_size_for(64)


def tiny_field(blob_density: float = 40.0) -> DynamicNeRFField:
    torch.manual_seed(0)
    field = DynamicNeRFField(
        num_levels=3,
        log2_hashmap_size=10,
        base_resolution=4,
        per_level_scale=2.0,
        hidden_dim=16,
        blob_density=blob_density,
        blob_radius=0.45,
    )
    with torch.no_grad():  # features that matter, so the gradients reach every part of the field
        for grid in field.grid_parameters():
            grid.uniform_(-1.0, 1.0)
    return field


def scene(field: DynamicNeRFField, size: int = 10) -> tuple[Rays, torch.Tensor, OccupancyGrid]:
    cams = [OrbitCamera.from_angles(k, a, 10.0, 1.1, 45.0) for k, a in enumerate((-30.0, 60.0, 150.0))]
    per = [camera_rays(c, size) for c in cams]
    rays = Rays(torch.cat([p.origins for p in per]), torch.cat([p.directions for p in per]))
    times = torch.tensor([0.0, 0.5, 1.0]).repeat_interleave(size * size)
    grid = OccupancyGrid(16, 1.0, 0.95, 0.01, 256)
    generator = torch.Generator().manual_seed(3)
    grid.update(0, lambda x: field.density(x, torch.full_like(x[:, 0], 0.5)), STEP, generator)
    return rays, times, grid


KW = dict(step_size=STEP, alpha_threshold=0.01, early_stop_eps=1e-4)


@pytest.mark.parametrize("block", [1, 3, 16])
def test_blockwise_early_stop_keeps_exactly_the_reference_samples(block):
    field = tiny_field()
    rays, times, grid = scene(field)
    ref = sample_rays(field, rays, times, grid, generator=torch.Generator().manual_seed(5), with_rgb=True, **KW)
    fast = sample_rays(
        field,
        rays,
        times,
        grid,
        generator=torch.Generator().manual_seed(5),
        with_rgb=True,
        early_stop_block=block,
        eval_chunk=97,
        **KW,
    )
    assert ref.num_evaluated == ref.num_candidates > 0
    assert fast.num_evaluated < ref.num_evaluated  # rays that turned opaque stopped being evaluated
    assert 0 < ref.ray_ids.numel() < ref.num_candidates  # pruning and early stopping both did something
    assert torch.equal(fast.ray_ids, ref.ray_ids) and torch.equal(fast.t_starts, ref.t_starts)
    torch.testing.assert_close(fast.density, ref.density)
    torch.testing.assert_close(fast.rgb, ref.rgb)


def grads(field: DynamicNeRFField) -> dict[str, torch.Tensor]:
    out = {name: p.grad.clone() for name, p in field.named_parameters() if p.grad is not None}
    field.zero_grad(set_to_none=True)
    return out


def assert_same_grads(want: dict[str, torch.Tensor], got: dict[str, torch.Tensor], names: set[str]) -> None:
    assert set(want) == set(got) == names
    for name, g in want.items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(got[name], g, rtol=1e-4, atol=1e-6 * float(g.abs().max()), msg=name)


def test_deferred_render_gives_the_direct_renders_pixels_and_parameter_gradients():
    field = tiny_field()
    rays, times, grid = scene(field)
    g = torch.Generator().manual_seed(7)
    g_rgb, g_opacity = (
        torch.randn(rays.origins.shape[0], 3, generator=g),
        torch.randn(rays.origins.shape[0], generator=g),
    )
    direct = render_rays(field, rays, times, grid, generator=torch.Generator().manual_seed(5), **KW)
    ((direct.rgb * g_rgb).sum() + (direct.opacity * g_opacity).sum()).backward()
    want = grads(field)

    deferred = render_rays_deferred(
        field, rays, times, grid, generator=torch.Generator().manual_seed(5), early_stop_block=4, **KW
    )
    assert not deferred.rgb.requires_grad and deferred.num_samples == direct.num_samples
    torch.testing.assert_close(deferred.rgb, direct.rgb.detach())
    torch.testing.assert_close(deferred.opacity, direct.opacity.detach())
    chunks = deferred.chunks(40)
    longest = int(torch.bincount(deferred.samples.ray_ids).max())
    assert len(chunks) > 5 and all(0 < s1 - s0 < 40 + longest for s0, s1, r0, r1 in chunks)
    ray_ids = deferred.samples.ray_ids  # chunks cut between rays, never through one
    assert all(ray_ids[s0] == r0 and ray_ids[s1 - 1] == r1 - 1 for s0, s1, r0, r1 in chunks)
    assert all(ray_ids[s0 - 1] < ray_ids[s0] for s0, *_ in chunks[1:])
    assert [c[0] for c in chunks[1:]] == [c[1] for c in chunks[:-1]] and chunks[-1][1] == deferred.num_samples
    assert deferred.chunks(10 * deferred.num_samples) == [(0, deferred.num_samples, chunks[0][2], chunks[-1][3])]
    deferred.backward(
        lambda out, sl: (out.rgb * g_rgb[sl]).sum() + (out.opacity * g_opacity[sl]).sum(), chunk_samples=40
    )
    assert_same_grads(want, grads(field), {name for name, _ in field.named_parameters()})


def test_deferred_orientation_pass_gives_the_direct_double_backward_gradients():
    field = tiny_field(blob_density=10.0)
    rays, times, grid = scene(field, size=8)
    direct = render_rays(field, rays, times, grid, generator=torch.Generator().manual_seed(2), with_orient=True, **KW)
    (direct.orient.sum() / (direct.opacity > 0).sum()).backward()
    want = grads(field)

    deferred = render_rays_deferred(
        field, rays, times, grid, generator=torch.Generator().manual_seed(2), with_rgb=False, **KW
    )
    assert deferred.rgb is None
    count = (deferred.opacity > 0).sum()
    assert count == (direct.opacity > 0).sum()
    deferred.backward(lambda out, sl: out.orient.sum() / count, chunk_samples=64, with_orient=True)
    # The normals depend on the density only: the grids and the density MLP, not the colour MLP.
    names = {name for name, _ in field.named_parameters() if not name.startswith("feature_mlp")}
    assert_same_grads(want, grads(field), names)


def test_orientation_pass_without_colour_gives_the_same_term_and_gradients():
    # The orientation pass evaluates the density alone (composite with_rgb=False): its term, the opacity and every
    # parameter gradient equal those of the full field call, and the colour network is never run.
    field = tiny_field(blob_density=10.0)
    rays, times, grid = scene(field, size=8)
    samples = sample_rays(field, rays, times, grid, generator=torch.Generator().manual_seed(2), **KW)
    outs, got = [], []
    for with_rgb in (True, False):
        out = composite(field, rays, times, samples, step_size=STEP, with_orient=True, with_rgb=with_rgb)
        (out.orient.sum() / (out.opacity > 0).sum()).backward()
        outs.append(out)
        got.append(grads(field))
    full, bare = outs
    assert full.rgb is not None and bare.rgb is None
    assert bare.num_samples == full.num_samples > 0
    torch.testing.assert_close(bare.orient, full.orient)
    torch.testing.assert_close(bare.opacity, full.opacity)
    names = {name for name, _ in field.named_parameters() if not name.startswith("feature_mlp")}
    assert_same_grads(got[0], got[1], names)
    calls = []
    handle = field.feature_mlp.register_forward_hook(lambda *_: calls.append(1))
    composite(field, rays, times, samples, step_size=STEP, with_orient=True, with_rgb=False)
    composite(field, rays, times, samples, step_size=STEP, with_orient=True)
    handle.remove()
    assert len(calls) == 1  # only the call with colour ran the colour network
