"""Fused Triton kernels for the tcnn-compatible hash grid: forward, backward and double backward.

The same encoding as `HashGridEncoding`'s torch path (see `hash_grid_4d.py` for the tcnn semantics: level scales,
dense/hashed indexing, the flat level-major `params`), computed without materialising the (N, 2^D, D) corner
tensors of the torch path, so memory is the points in and the features out:

- forward: one program per (block of points, level) gathers the 2^D corners' features and blends them;
- backward: the table gradient is scattered with atomic adds (as tcnn does); the input gradient, needed only for
  analytic normals, loops over the levels inside one program so it needs no atomics;
- double backward (the orientation loss differentiates the normals, which are an input gradient): given v = ∂L/∂(dx),
  ∂L/∂params[c] += Σ_d v_d·∂w_c/∂x_d · g and ∂L/∂g = Σ_c (Σ_d v_d·∂w_c/∂x_d)·params[c]; the second derivative with
  respect to x itself is not formed (no parameter depends on the sample positions), as in tcnn.

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

__all__ = ["LevelTables", "triton_available", "available_for", "encode"]

BLOCK = 128
"""Points per program (benchmarks/hash_grid.py sweeps it)."""
NUM_WARPS = 4
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
    for Triton's CPU interpreter: `_hash_grid_kernels.py` is loaded as its own module per mode, since Triton reads
    TRITON_INTERPRET when it decorates the functions."""
    import triton.language as tl

    if interpret and type(tl.zeros).__name__ == "JITFunction":
        raise RuntimeError(
            "the hash grid kernels cannot run on CPU: triton was imported before TRITON_INTERPRET=1 was set "
            "(set it in the environment before starting Python)"
        )
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
    try:
        path = Path(__file__).with_name("_hash_grid_kernels.py")
        spec = importlib.util.spec_from_file_location(f"_fourd_hash_grid_kernels_{int(interpret)}", path)
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


def _launch_args(x: Tensor, tables: LevelTables) -> tuple:
    return (tables.scale, tables.resolution, tables.size, tables.offset, tables.dense)


def _check(x: Tensor, params: Tensor, features: int) -> None:
    if x.dtype != torch.float32 or params.dtype != torch.float32:
        raise TypeError(f"hash grid kernels take float32 points and params, got {x.dtype} and {params.dtype}")
    if x.dim() != 2 or x.shape[1] not in (3, 4):
        raise ValueError(f"points must be (N, 3) or (N, 4), got {tuple(x.shape)}")
    if features < 1 or features & (features - 1):
        raise ValueError(f"the kernels need a power-of-two features_per_level, got {features}")


def _forward(x: Tensor, params: Tensor, tables: LevelTables, features: int) -> Tensor:
    n, dims = x.shape
    levels = tables.num_levels
    out = torch.empty(n, levels * features, device=x.device, dtype=torch.float32)
    if n == 0:
        return out
    forward_kernel = _kernels(not x.is_cuda)[0]
    forward_kernel[(triton_cdiv(n), levels)](
        x, params, out, n, *_launch_args(x, tables), D=dims, F=features, L=levels, BLOCK=BLOCK, num_warps=NUM_WARPS
    )
    return out


def triton_cdiv(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK


class _Encode(torch.autograd.Function):
    """out = encode(x, params); differentiable twice through `_EncodeBackward`."""

    @staticmethod
    def forward(ctx, x: Tensor, params: Tensor, tables: LevelTables, features: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, params)
        ctx.tables, ctx.features = tables, features
        return _forward(x, params, tables, features)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        x, params = ctx.saved_tensors
        need_x, need_params = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_x, grad_params = _EncodeBackward.apply(
            grad_out.contiguous(), x, params, ctx.tables, ctx.features, need_x, need_params
        )
        return (grad_x if need_x else None), (grad_params if need_params else None), None, None


class _EncodeBackward(torch.autograd.Function):
    """(grad_out, x, params) → (∂/∂x, ∂/∂params); its own backward is the double backward of the encoding."""

    @staticmethod
    def forward(ctx, grad_out, x, params, tables, features, need_x, need_params):  # type: ignore[override]
        ctx.save_for_backward(grad_out, x, params)
        ctx.tables, ctx.features = tables, features
        ctx.set_materialize_grads(False)
        n, dims = x.shape
        levels = tables.num_levels
        kernels = _kernels(not x.is_cuda)
        grad_x = torch.zeros_like(x)
        grad_params = torch.zeros_like(params)
        if n > 0 and need_params:
            kernels[1][(triton_cdiv(n), levels)](
                x,
                grad_out,
                grad_params,
                n,
                *_launch_args(x, tables),
                D=dims,
                F=features,
                L=levels,
                BLOCK=BLOCK,
                num_warps=NUM_WARPS,
            )
        if n > 0 and need_x:
            kernels[2][(triton_cdiv(n),)](
                x,
                params,
                grad_out,
                grad_x,
                n,
                *_launch_args(x, tables),
                D=dims,
                F=features,
                L=levels,
                BLOCK=BLOCK,
                num_warps=NUM_WARPS,
            )
        return grad_x, grad_params

    @staticmethod
    def backward(ctx, v_x: Tensor | None, v_params: Tensor | None):  # type: ignore[override]
        grad_out, x, params = ctx.saved_tensors
        tables, features = ctx.tables, ctx.features
        n, dims = x.shape
        levels = tables.num_levels
        want_params = ctx.needs_input_grad[2] and v_x is not None
        want_grad_out = ctx.needs_input_grad[0]
        grad_params = torch.zeros_like(params) if want_params else None
        grad_grad_out = None
        if want_grad_out:
            # ∂L/∂g from the params' gradient (rarely used: a penalty on ∂/∂params) is the forward with v_params as
            # the table; from the input gradient it is the double backward kernel's second output.
            grad_grad_out = (
                _forward(x, v_params.contiguous(), tables, features)
                if v_params is not None
                else torch.zeros_like(grad_out)
            )
        if v_x is not None and n > 0 and (want_params or want_grad_out):
            scratch = torch.empty_like(grad_out) if want_grad_out else grad_out  # unused pointer when not wanted
            _kernels(not x.is_cuda)[3][(triton_cdiv(n), levels)](
                x,
                params,
                grad_out,
                v_x.contiguous(),
                grad_params if want_params else params,
                scratch,
                n,
                *_launch_args(x, tables),
                D=dims,
                F=features,
                L=levels,
                BLOCK=BLOCK,
                num_warps=NUM_WARPS,
                WANT_PARAMS=want_params,
                WANT_GRAD_OUT=want_grad_out,
            )
            if want_grad_out:
                grad_grad_out = grad_grad_out + scratch
        return grad_grad_out, None, grad_params, None, None, None, None


def encode(x: Tensor, params: Tensor, tables: LevelTables, features_per_level: int) -> Tensor:
    """Encode points with the fused kernels.

    Args:
        x: (N, D) float32 in [0, 1]^D, D = 3 or 4, on CUDA (or CPU under TRITON_INTERPRET=1).
        params: the flat float32 tables (level-major, entry, feature), as `HashGridEncoding.params`.
        tables: the level geometry on x's device.
        features_per_level: F.

    Returns:
        (N, L·F) float32 features, level-major; differentiable w.r.t. x and params, twice.
    """
    _check(x, params, features_per_level)
    return _Encode.apply(x.contiguous(), params, tables, features_per_level)
