"""The fused Triton hash-grid kernels against the torch path: forward, backward, double backward, the field.

On CPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1), so the same kernel source is checked here and,
with the `gpu` marker, compiled on CUDA at the paper's configuration.
"""

from __future__ import annotations

import os

import pytest
import torch

from stages.distill.fields import DynamicNeRFField, HashGridEncoding
from stages.distill.fields import hash_grid_triton as ht

pytestmark = pytest.mark.skipif(not ht.triton_available(), reason="triton is not installed")

SMALL = dict(num_levels=3, features_per_level=2, log2_hashmap_size=7, base_resolution=3, per_level_scale=2.0)
PAPER = dict(
    num_levels=16, features_per_level=2, log2_hashmap_size=19, base_resolution=16, per_level_scale=1.447269237440378
)


@pytest.fixture
def interpret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _grids(dims: int, device: str = "cpu", **kwargs) -> tuple[HashGridEncoding, HashGridEncoding]:
    """A triton-backed and a torch-backed grid sharing the same random tables."""
    torch.manual_seed(dims)
    fast = HashGridEncoding(dims, backend="triton", **kwargs).to(device)
    ref = HashGridEncoding(dims, backend="torch", **kwargs).to(device)
    with torch.no_grad():
        fast.params.uniform_(-1.0, 1.0)
        ref.params.copy_(fast.params)
    return fast, ref


def _points(n: int, dims: int, device: str = "cpu") -> torch.Tensor:
    x = torch.rand(n, dims, device=device)
    x[0], x[1] = 0.0, 1.0  # the box faces: x = 1 lands on the last grid vertex (dense wrap-around as tcnn)
    return x


def _first_and_second_order(grid: HashGridEncoding, x0: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor):
    """Features, ∂<out, r1>/∂(params, x), and ∂<∂<out, r>/∂x, r2>/∂(params, r) at r = r1 (the double backward)."""
    x = x0.clone().requires_grad_(True)
    out = grid(x)
    g_params, g_x = torch.autograd.grad((out * r1).sum(), [grid.params, x])
    r = r1.clone().requires_grad_(True)
    out = grid(x)
    (dx,) = torch.autograd.grad((out * r).sum(), x, create_graph=True)
    gg_params, gg_r = torch.autograd.grad((dx * r2).sum(), [grid.params, r])
    return {"out": out.detach(), "g_params": g_params, "g_x": g_x, "gg_params": gg_params, "gg_r": gg_r}


@pytest.mark.parametrize("dims", [3, 4])
def test_kernels_match_the_torch_path_to_second_order(interpret, dims):
    fast, ref = _grids(dims, **SMALL)
    assert {lv.dense for lv in fast.levels} == {True, False}  # both indexings are exercised
    x = _points(64, dims)
    r1, r2 = torch.randn(64, fast.output_dim), torch.randn(64, dims)
    got, want = _first_and_second_order(fast, x, r1, r2), _first_and_second_order(ref, x, r1, r2)
    for key in want:
        scale = want[key].abs().max().item()
        assert scale > 0, key
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=2e-6 * max(1.0, scale), msg=key)


def test_fused_pair_equals_the_sum_of_two_torch_grids_to_second_order(interpret):
    a_fast, a_ref = _grids(3, **SMALL)
    b_fast, b_ref = _grids(4, **SMALL)
    x0 = _points(48, 4)
    r1, r2 = torch.randn(48, a_fast.output_dim), torch.randn(48, 4)

    def run(pair):
        x = x0.clone().requires_grad_(True)
        r = r1.clone().requires_grad_(True)
        params = [a_fast.params, b_fast.params] if pair else [a_ref.params, b_ref.params]
        if pair:
            tables = (a_fast.level_tables(x.device), b_fast.level_tables(x.device))
            out = ht.encode_pair(x, *params, *tables, 2)
        else:
            out = a_ref(x[:, :3]) + b_ref(x)
        (dx,) = torch.autograd.grad((out * r).sum(), x, create_graph=True)
        grads = torch.autograd.grad((dx * r2).sum() + (out * r1).sum(), [*params, r])
        return [out.detach(), dx.detach(), *grads]

    for got, want in zip(run(True), run(False), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=2e-6 * max(1.0, want.abs().max().item()))
    with pytest.raises(ValueError, match="same level scales"):
        other = HashGridEncoding(4, **{**SMALL, "per_level_scale": 1.5}, backend="triton")
        ht.encode_pair(
            x0, a_fast.params, other.params, a_fast.level_tables(x0.device), other.level_tables(x0.device), 2
        )


def test_gradient_of_the_kernels_is_the_finite_difference_of_their_forward(interpret):
    # Independent of the torch path: d/dparams of <encode, r> along a random direction, central differences in
    # float64 are not available to the kernels, so a float32 step on a smooth (linear in params) function.
    fast, _ = _grids(3, **SMALL)
    x, r = _points(32, 3), torch.randn(32, fast.output_dim)
    (g,) = torch.autograd.grad((fast(x) * r).sum(), [fast.params])
    direction = torch.randn_like(fast.params)
    with torch.no_grad():
        base = fast.params.clone()
        fast.params.copy_(base + 1e-2 * direction)
        plus = (fast(x) * r).sum()
        fast.params.copy_(base - 1e-2 * direction)
        minus = (fast(x) * r).sum()
    torch.testing.assert_close((plus - minus) / 2e-2, (g * direction).sum(), rtol=1e-3, atol=1e-3)


def test_cpu_without_the_interpreter_falls_back_to_the_torch_path(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    fast, ref = _grids(4, **SMALL)
    x = _points(50, 4)
    assert not ht.available_for(x)
    torch.testing.assert_close(fast(x), ref(x), rtol=0, atol=0)


def test_field_with_triton_grids_matches_torch_and_shares_its_checkpoint(interpret):
    torch.manual_seed(0)
    kwargs = dict(SMALL, hidden_dim=8, backend="torch")
    ref = DynamicNeRFField(**kwargs)
    with torch.no_grad():
        for p in ref.grid_parameters():
            p.uniform_(-1.0, 1.0)
    fast = DynamicNeRFField(**{**kwargs, "backend": "triton"})
    fast.load_state_dict(ref.state_dict())  # one state dict whatever the backend
    x = (torch.rand(40, 3) * 2 - 1) * 0.8
    t = torch.rand(40)
    out_fast, out_ref = fast(x, t), ref(x, t)
    torch.testing.assert_close(out_fast.density, out_ref.density, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_fast.rgb, out_ref.rgb, rtol=1e-5, atol=1e-6)

    def orient_grads(field: DynamicNeRFField) -> list[torch.Tensor]:
        # The orientation loss's use: analytic normals −∇σ, differentiated again w.r.t. every parameter.
        xs = x.clone().requires_grad_(True)
        (normal,) = torch.autograd.grad(field.density(xs, t).sum(), xs, create_graph=True)
        loss = (normal * torch.linspace(-1, 1, 3)).relu().pow(2).sum()
        return torch.autograd.grad(loss, [*field.grid_parameters(), *field.density_mlp.parameters()])

    for a, b in zip(orient_grads(fast), orient_grads(ref), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * max(1.0, b.abs().max().item()))


def test_normals_pass_skips_the_table_gradients_it_throws_away(interpret, monkeypatch):
    # autograd.grad(σ, x, create_graph=True) wants ∂σ/∂x only: the tables' first-order kernel must not run there,
    # and must run when a later backward needs the tables' gradient (through the MLP's second-order term).
    launches: list[int] = []
    real = ht._kernels

    class Counted:
        def __init__(self, index: int, kernel) -> None:
            self.index, self.kernel = index, kernel

        def __getitem__(self, grid):
            launches.append(self.index)
            return self.kernel[grid]

    monkeypatch.setattr(ht, "_kernels", lambda interp: tuple(Counted(i, k) for i, k in enumerate(real(interp))))
    a, a_ref = _grids(3, **SMALL)
    b, b_ref = _grids(4, **SMALL)
    x = _points(40, 4).requires_grad_(True)
    out = ht.encode_pair(x, a.params, b.params, a.level_tables(x.device), b.level_tables(x.device), 2)
    feat_grad = torch.randn_like(out)
    launches.clear()
    (dx,) = torch.autograd.grad((out.tanh() * feat_grad).sum(), x, create_graph=True)
    assert launches == [2]  # the input gradient only: no table-gradient kernel (1)
    launches.clear()
    torch.autograd.grad((dx * torch.randn_like(dx)).sum(), [a.params, b.params])
    assert sorted(launches) == [1, 3]  # tanh's second-order term through the grid (1), the double backward (3)

    # the gradients are unchanged: the torch path's
    def grads(pair: bool) -> list[torch.Tensor]:
        xs = x.detach().clone().requires_grad_(True)
        params = [a.params, b.params] if pair else [a_ref.params, b_ref.params]
        if pair:
            f = ht.encode_pair(xs, *params, a.level_tables(xs.device), b.level_tables(xs.device), 2)
        else:
            f = a_ref(xs[:, :3]) + b_ref(xs)
        (d,) = torch.autograd.grad((f.tanh() * feat_grad).sum(), xs, create_graph=True)
        return torch.autograd.grad((d * torch.linspace(-1, 1, 4)).relu().pow(2).sum(), params)

    for got, want in zip(grads(True), grads(False), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=2e-6 * max(1.0, want.abs().max().item()))
    out = ht.encode_pair(x, a.params, b.params, a.level_tables(x.device), b.level_tables(x.device), 2)
    launches.clear()
    (out * feat_grad).sum().backward()  # a plain backward computes every gradient, as before
    assert sorted(launches) == [1, 2] and a.params.grad is not None and x.grad is not None


def test_bad_inputs_are_named():
    params = torch.zeros(10)
    with pytest.raises(TypeError, match="float32"):
        ht.encode(torch.zeros(3, 3, dtype=torch.float64), params, None, 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(N, 3\) or \(N, 4\)"):
        ht.encode(torch.zeros(3, 5), params, None, 2)  # type: ignore[arg-type]


@pytest.mark.gpu
@pytest.mark.parametrize("dims", [3, 4])
def test_compiled_kernels_match_the_torch_path_at_the_paper_configuration(dims):
    assert torch.cuda.is_available(), "the gpu tests need CUDA"
    assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
    fast, ref = _grids(dims, "cuda", **PAPER)
    x = _points(1 << 16, dims, "cuda")
    r1 = torch.randn(x.shape[0], fast.output_dim, device="cuda")
    r2 = torch.randn(x.shape[0], dims, device="cuda")
    got, want = _first_and_second_order(fast, x, r1, r2), _first_and_second_order(ref, x, r1, r2)
    for key in want:
        scale = want[key].abs().max().item()
        # Atomic adds on the GPU sum in any order: tolerance relative to the largest value.
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-5 * max(1.0, scale), msg=key)


@pytest.mark.gpu
def test_compiled_fused_pair_matches_the_torch_path_at_the_paper_configuration():
    assert torch.cuda.is_available(), "the gpu tests need CUDA"
    a_fast, a_ref = _grids(3, "cuda", **PAPER)
    b_fast, b_ref = _grids(4, "cuda", **PAPER)
    x = _points(1 << 16, 4, "cuda").requires_grad_(True)
    r = torch.randn(x.shape[0], a_fast.output_dim, device="cuda")
    tables = (a_fast.level_tables(x.device), b_fast.level_tables(x.device))
    got = ht.encode_pair(x, a_fast.params, b_fast.params, *tables, 2)
    want = a_ref(x[:, :3]) + b_ref(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * want.abs().max().item())
    grads_got = torch.autograd.grad((got * r).sum(), [a_fast.params, b_fast.params, x])
    grads_want = torch.autograd.grad((want * r).sum(), [a_ref.params, b_ref.params, x])
    for g, w in zip(grads_got, grads_want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5 * max(1.0, w.abs().max().item()))
