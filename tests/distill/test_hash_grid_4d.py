from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stages.distill.fields import DynamicNeRFField, HashGridEncoding, grid_levels

PAPER = dict(num_levels=16, log2_hashmap_size=19, base_resolution=16, per_level_scale=1.447269237440378)


def naive_encode(grid: HashGridEncoding, point: list[float]) -> list[float]:
    """Instant-NGP by the book, one point at a time in plain Python integers (uint32 wrap-around by masking)."""
    primes = (1, 2654435761, 805459861, 3674653429)
    params = grid.params.detach().double().tolist()
    F, D = grid.features_per_level, grid.num_dims
    out = []
    for level in grid.levels:
        pos = [p * level.scale + 0.5 for p in point]
        base = [math.floor(p) for p in pos]
        frac = [p - b for p, b in zip(pos, base, strict=True)]
        acc = [0.0] * F
        for corner in range(2**D):
            c = [base[d] + ((corner >> d) & 1) for d in range(D)]
            w = math.prod(frac[d] if (corner >> d) & 1 else 1 - frac[d] for d in range(D))
            if level.resolution**D <= level.size:
                index = sum(c[d] * level.resolution**d for d in range(D))
            else:
                index = 0
                for d in range(D):
                    index ^= (c[d] * primes[d]) & 0xFFFFFFFF
            index %= level.size
            for f in range(F):
                acc[f] += w * params[(level.offset + index) * F + f]
        out += acc
    return out


def test_levels_follow_tcnn_and_the_paper():
    levels3 = grid_levels(3, **PAPER)
    assert [lv.resolution for lv in levels3][:3] == [16, 24, 34] and levels3[-1].resolution == 4096
    assert [lv.dense for lv in levels3] == [True] * 5 + [False] * 11  # spec §4.1: dense levels 0–4 in 3D
    assert [lv.dense for lv in grid_levels(4, **PAPER)] == [True] * 2 + [False] * 14  # and 0–1 in 4D
    n3 = HashGridEncoding(3, **PAPER).params.numel()
    n4 = HashGridEncoding(4, **PAPER).params.numel()
    # spec §4.1: ≈ 12.6 M + 15.5 M; platform notes §8: tcnn's two grids hold 28.07 M parameters.
    assert (n3, n4) == (12_599_920, 15_474_688)


@pytest.mark.parametrize("dims", [3, 4])
def test_torch_backend_matches_naive_reference(dims):
    torch.manual_seed(0)
    # Small tables so that dense and hashed levels both occur.
    grid = HashGridEncoding(
        dims, num_levels=5, features_per_level=2, log2_hashmap_size=8, base_resolution=2, per_level_scale=2.0
    )
    assert {lv.dense for lv in grid.levels} == {True, False}
    with torch.no_grad():
        grid.params.uniform_(-1, 1)
    x = torch.rand(64, dims)
    x[0] = 0.0
    x[1] = 1.0
    got = grid(x).double()
    want = torch.tensor([naive_encode(grid, p) for p in x.double().tolist()], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_gradients_match_finite_differences():
    torch.manual_seed(0)
    grid = HashGridEncoding(
        4, num_levels=3, features_per_level=2, log2_hashmap_size=6, base_resolution=2, per_level_scale=1.5
    ).double()
    x = (torch.rand(5, 4, dtype=torch.float64) * 0.9 + 0.05).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, q: _with_params(grid, p, q), (grid.params, x))


def _with_params(grid: HashGridEncoding, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    out = []
    for level in grid.levels:
        pos = x * level.scale + 0.5
        base = torch.floor(pos).detach()
        frac = pos - base
        corners = grid.corners
        w = torch.where(corners[None].bool(), frac[:, None], 1 - frac[:, None]).prod(-1)
        c = base.long()[:, None] + corners[None]
        if level.dense:
            idx = (c * torch.tensor([level.resolution**d for d in range(4)])).sum(-1)
        else:
            h = c * grid.primes
            idx = h[..., 0] ^ h[..., 1] ^ h[..., 2] ^ h[..., 3]
        idx = (idx & 0xFFFFFFFF) % level.size
        table = params[level.offset * 2 : (level.offset + level.size) * 2].view(level.size, 2)
        out.append((w[..., None] * table[idx]).sum(1))
    return torch.cat(out, -1)


def test_module_gradient_equals_functional_gradient():
    torch.manual_seed(0)
    grid = HashGridEncoding(
        4, num_levels=3, features_per_level=2, log2_hashmap_size=6, base_resolution=2, per_level_scale=1.5
    ).double()
    x = torch.rand(7, 4, dtype=torch.float64)
    g = torch.randn(7, 6, dtype=torch.float64)
    (grid(x) * g).sum().backward()
    params = grid.params.detach().clone().requires_grad_(True)
    (_with_params(grid, params, x) * g).sum().backward()
    torch.testing.assert_close(grid.params.grad, params.grad)


def test_init_and_field_outputs():
    torch.manual_seed(0)
    field = DynamicNeRFField(num_levels=2, log2_hashmap_size=8, base_resolution=4, per_level_scale=2.0, hidden_dim=8)
    assert field.grid_xyz.params.abs().max() <= 1e-4 and field.grid_xyz.params.abs().max() > 0
    assert all(m.bias is None for m in field.modules() if isinstance(m, torch.nn.Linear))
    x = torch.tensor([[0.0, 0.0, 0.0], [0.9, 0.0, 0.0]])
    out = field(x, torch.tensor([0.0, 1.0]))
    assert out.rgb.shape == (2, 3) and bool(((out.rgb > 0) & (out.rgb < 1)).all())
    # The blob: ≈ softplus(10) at the centre, ≈ softplus(10·(1 − 0.9/0.5)) = softplus(−8) further out.
    np.testing.assert_allclose(
        out.density.detach().numpy(), [math.log1p(math.exp(10)), math.log1p(math.exp(-8))], rtol=1e-3
    )
    torch.testing.assert_close(field.density(x, torch.tensor([0.0, 1.0])), out.density)
