"""Fused Triton kernels for the tcnn-compatible hash grid: forward, backward and double backward.

The same encoding as `HashGridEncoding`'s torch path (see `hash_grid_4d.py` for the tcnn semantics: level scales,
dense/hashed indexing, the flat level-major `params`), computed without materialising the (N, 2^D, D) corner
tensors of the torch path, so memory is the points in and the features out:

- forward: one program per (block of points, level) gathers the 2^D corners' features and blends them;
- backward: the table gradient is scattered with atomic adds (as tcnn does); the input gradient, needed only for
  analytic normals, loops over the levels inside one program so it needs no atomics;
- double backward (the orientation loss differentiates the normals, which are an input gradient): given v = ∂L/∂(dx),
  ∂L/∂params[c] += Σ_d v_d·∂w_c/∂x_d · g and ∂L/∂g = Σ_c (Σ_d v_d·∂w_c/∂x_d)·params[c]; the second derivative with
  respect to x itself is not formed (tcnn forms it; here no parameter depends on the sample positions, so no
  gradient that the optimisation uses needs it).

`encode_pair` runs the field's 3D and 4D grids in one pass and writes the sum of their features (the field
adds them anyway), sharing each level's grid position between the two.

Triton runs on CUDA tensors. CPU tensors take the kernels too when `TRITON_INTERPRET=1` is set (Triton's interpreter,
used by the CPU tests), otherwise the caller falls back to the torch path (`available_for`).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["LevelTables", "triton_available", "available_for", "encode", "encode_pair"]

BLOCK = 256
"""Points per program (benchmarks/hash_grid.py sweeps it; 256 × 2 warps was fastest for the fused pair on an H100)."""
NUM_WARPS = 2
"""Warps per program (benchmarks/hash_grid.py sweeps it)."""


def triton_available() -> bool:
    """Whether the `triton` package imports."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


def available_for(x: Tensor) -> bool:
    """Whether the kernels can run on x's device: CUDA with Triton, or CPU under TRITON_INTERPRET=1."""
    if not triton_available():
        return False
    return x.is_cuda or (x.device.type == "cpu" and _interpret())


@dataclass(frozen=True)
class LevelTables:
    """Per-level geometry as device tensors (L,): scale (float32), resolution, table size, table offset (entries),
    dense flag (int32)."""

    scale: Tensor
    resolution: Tensor
    size: Tensor
    offset: Tensor
    dense: Tensor

    @property
    def num_levels(self) -> int:
        return int(self.scale.shape[0])


@functools.cache
def _kernels(interpret: bool):
    """(forward, backward_params, backward_input, double_backward) kernels, compiled for CUDA or, with `interpret`,
    for Triton's CPU interpreter: `_hash_grid_device.py` and `_hash_grid_kernels.py` (which calls its functions) are
    loaded as their own modules per mode, since Triton reads TRITON_INTERPRET when it decorates the functions."""
    import triton.language as tl

    if interpret and type(tl.zeros).__name__ == "JITFunction":
        raise RuntimeError(
            "the hash grid kernels cannot run on CPU: triton was imported before TRITON_INTERPRET=1 was set "
            "(set it in the environment before starting Python)"
        )
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
    try:
        for part in ("device", "kernels"):  # the kernels module finds its device functions by its own name
            path = Path(__file__).with_name(f"_hash_grid_{part}.py")
            spec = importlib.util.spec_from_file_location(f"_fourd_hash_grid_{part}_{int(interpret)}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # Triton looks functions up through their module
            spec.loader.exec_module(module)
    finally:
        if previous is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous
    return (
        module.forward_kernel,
        module.backward_params_kernel,
        module.backward_input_kernel,
        module.double_backward_kernel,
    )


@dataclass(frozen=True)
class _Spec:
    """What the kernels need besides the tensors: grid a (DA dims) and optional grid b (DB dims, 0 = none)."""

    tables_a: LevelTables
    tables_b: LevelTables | None
    dims_a: int
    dims_b: int
    features: int

    @property
    def levels(self) -> int:
        return self.tables_a.num_levels

    def args(self) -> tuple:
        a, b = self.tables_a, self.tables_b if self.tables_b is not None else self.tables_a
        return (a.scale, a.resolution, a.size, a.offset, a.dense, b.size, b.offset, b.dense)

    def constants(self) -> dict:
        return dict(DA=self.dims_a, DB=self.dims_b, F=self.features, L=self.levels, BLOCK=BLOCK, num_warps=NUM_WARPS)


def triton_cdiv(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK


def _forward(x: Tensor, pa: Tensor, pb: Tensor | None, spec: _Spec) -> Tensor:
    n = x.shape[0]
    out = torch.empty(n, spec.levels * spec.features, device=x.device, dtype=torch.float32)
    if n > 0:
        _kernels(not x.is_cuda)[0][(triton_cdiv(n), spec.levels)](
            x, pa, pb if pb is not None else pa, out, n, *spec.args(), **spec.constants()
        )
    return out


def _engine_will_run(node) -> bool:
    """Whether the running backward pass will execute autograd `node` (True when that cannot be told).

    `ctx.needs_input_grad` says only which inputs require grad, not which gradients this pass wants: the analytic
    normals' `autograd.grad(density, x, create_graph=True)` would compute the tables' gradients too and throw them
    away (on an H200, a third of the orientation pass's kernel time). The engine knows; it answers for non-leaf
    nodes, hence `_param_node`'s views."""
    if node is None:
        return True
    try:
        return bool(torch._C._will_engine_execute_node(node))
    except (AttributeError, RuntimeError):  # an older or newer torch without it, or a case it does not support
        return True


def _param_node(tensor: Tensor | None) -> tuple[Tensor | None, object]:
    """(the tensor as the kernels see it, the autograd node `_engine_will_run` asks about): a view of a tensor that
    requires grad while grad mode is on (the view's node runs exactly when that tensor's gradient is wanted), else
    the tensor itself and no node."""
    if tensor is None or not (tensor.requires_grad and torch.is_grad_enabled()):
        return tensor, None
    view = tensor.view_as(tensor)
    return view, view.grad_fn


class _Encode(torch.autograd.Function):
    """out = grid_a(x) (+ grid_b(x)); differentiable twice through `_EncodeBackward`."""

    @staticmethod
    def forward(ctx, x: Tensor, pa: Tensor, pb: Tensor | None, spec: _Spec, nodes=(None,) * 3) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, pa, pb)
        ctx.spec = spec
        ctx.nodes = nodes
        return _forward(x, pa, pb, spec)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        x, pa, pb = ctx.saved_tensors
        need = ctx.needs_input_grad[:3]
        need = tuple(n and _engine_will_run(node) for n, node in zip(need, ctx.nodes, strict=True))
        grad_x, grad_a, grad_b = _EncodeBackward.apply(grad_out.contiguous(), x, pa, pb, ctx.spec, need)
        grads = (grad_x if need[0] else None), (grad_a if need[1] else None), (grad_b if need[2] else None)
        return (*grads, None, None)


class _EncodeBackward(torch.autograd.Function):
    """(grad_out, x, pa, pb) → (∂/∂x, ∂/∂pa, ∂/∂pb); its own backward is the double backward of the encoding."""

    @staticmethod
    def forward(ctx, grad_out, x, pa, pb, spec: _Spec, need: tuple[bool, bool, bool]):  # type: ignore[override]
        ctx.save_for_backward(grad_out, x, pa, pb)
        ctx.spec = spec
        ctx.set_materialize_grads(False)
        n = x.shape[0]
        kernels = _kernels(not x.is_cuda)
        grad_x = torch.zeros_like(x)
        grad_a = torch.zeros_like(pa)
        grad_b = torch.zeros_like(pb) if pb is not None else None
        if n > 0 and (need[1] or need[2]):
            kernels[1][(triton_cdiv(n), spec.levels)](
                x, grad_out, grad_a, grad_b if grad_b is not None else grad_a, n, *spec.args(), **spec.constants()
            )
        if n > 0 and need[0]:
            kernels[2][(triton_cdiv(n),)](
                x, pa, pb if pb is not None else pa, grad_out, grad_x, n, *spec.args(), **spec.constants()
            )
        return grad_x, grad_a, grad_b

    @staticmethod
    def backward(ctx, v_x: Tensor | None, v_a: Tensor | None, v_b: Tensor | None):  # type: ignore[override]
        grad_out, x, pa, pb = ctx.saved_tensors
        spec: _Spec = ctx.spec
        n = x.shape[0]
        want_params = v_x is not None and (ctx.needs_input_grad[2] or ctx.needs_input_grad[3])
        want_grad_out = ctx.needs_input_grad[0]
        grad_a = torch.zeros_like(pa) if want_params else None
        grad_b = torch.zeros_like(pb) if want_params and pb is not None else None
        grad_grad_out = None
        if want_grad_out:
            # From the tables' gradients (rare: a penalty on ∂/∂params) ∂L/∂g is the forward with v as the tables;
            # from the input gradient it is the double backward kernel's second output.
            grad_grad_out = torch.zeros_like(grad_out)
            if v_a is not None or v_b is not None:
                va = v_a.contiguous() if v_a is not None else torch.zeros_like(pa)
                vb = None if pb is None else (v_b.contiguous() if v_b is not None else torch.zeros_like(pb))
                grad_grad_out = _forward(x, va, vb, spec)
        if v_x is not None and n > 0 and (want_params or want_grad_out):
            scratch = torch.empty_like(grad_out) if want_grad_out else grad_out  # not written unless wanted
            ga = grad_a if grad_a is not None else pa  # not written unless wanted
            _kernels(not x.is_cuda)[3][(triton_cdiv(n), spec.levels)](
                x,
                pa,
                pb if pb is not None else pa,
                grad_out,
                v_x.contiguous(),
                ga,
                grad_b if grad_b is not None else ga,
                scratch,
                n,
                *spec.args(),
                **spec.constants(),
                WANT_PARAMS=want_params,
                WANT_GRAD_OUT=want_grad_out,
            )
            if want_grad_out:
                grad_grad_out = grad_grad_out + scratch
        return grad_grad_out, None, grad_a, grad_b, None, None


def _check(x: Tensor, params: list[Tensor], features: int) -> None:
    if x.dtype != torch.float32 or any(p.dtype != torch.float32 for p in params):
        dtypes = ", ".join(str(t.dtype) for t in (x, *params))
        raise TypeError(f"hash grid kernels take float32 points and params, got {dtypes}")
    if x.dim() != 2 or x.shape[1] not in (3, 4):
        raise ValueError(f"points must be (N, 3) or (N, 4), got {tuple(x.shape)}")
    if features < 1 or features & (features - 1):
        raise ValueError(f"the kernels need a power-of-two features_per_level, got {features}")


def encode(x: Tensor, params: Tensor, tables: LevelTables, features_per_level: int) -> Tensor:
    """Encode points with one grid.

    Args:
        x: (N, D) float32 in [0, 1]^D, D = 3 or 4, on CUDA (or CPU under TRITON_INTERPRET=1).
        params: the flat float32 tables (level-major, entry, feature), as `HashGridEncoding.params`.
        tables: the level geometry on x's device.
        features_per_level: F, a power of two.

    Returns:
        (N, L·F) float32 features, level-major; differentiable w.r.t. x and params, twice.
    """
    _check(x, [params], features_per_level)
    spec = _Spec(tables, None, x.shape[1], 0, features_per_level)
    (x, node_x), (params, node) = _param_node(x.contiguous()), _param_node(params)
    return _Encode.apply(x, params, None, spec, (node_x, node, None))


def encode_pair(
    xyzt: Tensor,
    params_xyz: Tensor,
    params_xyzt: Tensor,
    tables_xyz: LevelTables,
    tables_xyzt: LevelTables,
    features_per_level: int,
) -> Tensor:
    """HashGrid3D(x, y, z) + HashGrid4D(x, y, z, t) in one pass (the dynamic field's encoding).

    The two grids must share the number of levels and the level scales (same base resolution and growth), as the
    paper's do; each keeps its own tables.

    Args:
        xyzt: (N, 4) float32 in [0, 1]^4.
        params_xyz, params_xyzt: the 3D and the 4D grid's flat tables.
        tables_xyz, tables_xyzt: their level geometry on xyzt's device.
        features_per_level: F of both grids.

    Returns:
        (N, L·F) float32, the sum of both grids' features; differentiable w.r.t. xyzt and both tables, twice.
    """
    _check(xyzt, [params_xyz, params_xyzt], features_per_level)
    if xyzt.shape[1] != 4:
        raise ValueError(f"encode_pair takes (N, 4) points, got {tuple(xyzt.shape)}")
    if not (
        torch.equal(tables_xyz.scale, tables_xyzt.scale) and torch.equal(tables_xyz.resolution, tables_xyzt.resolution)
    ):
        raise ValueError("encode_pair needs two grids with the same level scales")
    spec = _Spec(tables_xyz, tables_xyzt, 3, 4, features_per_level)
    (xyzt, node_x), (params_xyz, node_a), (params_xyzt, node_b) = map(
        _param_node, (xyzt.contiguous(), params_xyz, params_xyzt)
    )
    return _Encode.apply(xyzt, params_xyz, params_xyzt, spec, (node_x, node_a, node_b))
