"""Triton device functions of the hash grid's kernels (`_hash_grid_kernels.py`): corner indices and weights, grid
positions, and the per-level gather, scatter and gradient sums the kernels call.

Like the kernels, this file is loaded once compiled for CUDA and once under Triton's CPU interpreter
(`hash_grid_triton.py`): Triton decides that when the functions are decorated.
"""

import triton
import triton.language as tl


@triton.jit
def _corner(c: tl.constexpr, D: tl.constexpr, i0, i1, i2, i3, f0, f1, f2, f3, res, size, dense):
    """Table index (int32) of corner c of a D-dim grid and its per-dimension factors a_d (frac or 1 − frac)."""
    b0: tl.constexpr = c & 1
    b1: tl.constexpr = (c >> 1) & 1
    b2: tl.constexpr = (c >> 2) & 1
    b3: tl.constexpr = (c >> 3) & 1
    a0 = f0 if b0 else 1.0 - f0
    a1 = f1 if b1 else 1.0 - f1
    a2 = f2 if b2 else 1.0 - f2
    p0 = i0 + b0
    p1 = i1 + b1
    p2 = i2 + b2
    if D == 4:
        a3 = f3 if b3 else 1.0 - f3
        p3 = i3 + b3
    else:
        a3 = tl.full(f0.shape, 1.0, tl.float32)
        p3 = i3
    # Dense: x + y·R + z·R² (+ t·R³), uint32 wrap-around. Hashed: coherent-prime XOR.
    index_dense = p0 + p1 * res + p2 * (res * res)
    if D == 4:
        index_dense = index_dense + p3 * (res * res * res)
    index_hash = p0 ^ (p1 * tl.full(p1.shape, 2654435761, tl.uint32)) ^ (p2 * tl.full(p2.shape, 805459861, tl.uint32))
    if D == 4:
        index_hash = index_hash ^ (p3 * tl.full(p3.shape, 3674653429, tl.uint32))
    # `index % size` without integer division: a dense index stays below 2·size (its largest corner coordinate is the
    # resolution R, and R·(1 + R + … + R^(D−1)) < 2·R^D ≤ 2·size), and a hashed table's size is a power of two
    # (both checked by `level_tables`).
    index_dense = tl.where(index_dense >= size, index_dense - size, index_dense)
    index = tl.where(dense != 0, index_dense, index_hash & (size - 1))
    return index.to(tl.int32), a0, a1, a2, a3


@triton.jit
def _dweights(c: tl.constexpr, D: tl.constexpr, a0, a1, a2, a3, scale):
    """∂w_c/∂x_d for d < D: scale · (±1) · ∏_{e≠d} a_e (zero for d ≥ D)."""
    s0: tl.constexpr = 1.0 if (c & 1) else -1.0
    s1: tl.constexpr = 1.0 if ((c >> 1) & 1) else -1.0
    s2: tl.constexpr = 1.0 if ((c >> 2) & 1) else -1.0
    s3: tl.constexpr = 1.0 if ((c >> 3) & 1) else -1.0
    d0 = (s0 * scale) * (a1 * a2 * a3)
    d1 = (s1 * scale) * (a0 * a2 * a3)
    d2 = (s2 * scale) * (a0 * a1 * a3)
    if D == 4:
        d3 = (s3 * scale) * (a0 * a1 * a2)
    else:
        d3 = tl.zeros(a0.shape, tl.float32)
    return d0, d1, d2, d3


@triton.jit
def _position(x_ptr, offs, mask, scale, DX: tl.constexpr):
    """Grid position of the block's points (rows of DX floats): integer base (uint32) and fraction per dimension,
    pos = fma(x, scale, 0.5) with one rounding as tcnn's `pos_fract`."""
    x0 = tl.load(x_ptr + offs * DX + 0, mask=mask, other=0.0)
    x1 = tl.load(x_ptr + offs * DX + 1, mask=mask, other=0.0)
    x2 = tl.load(x_ptr + offs * DX + 2, mask=mask, other=0.0)
    pos0 = tl.fma(x0, scale, 0.5)
    pos1 = tl.fma(x1, scale, 0.5)
    pos2 = tl.fma(x2, scale, 0.5)
    g0 = tl.floor(pos0)
    g1 = tl.floor(pos1)
    g2 = tl.floor(pos2)
    if DX == 4:
        x3 = tl.load(x_ptr + offs * DX + 3, mask=mask, other=0.0)
        pos3 = tl.fma(x3, scale, 0.5)
        g3 = tl.floor(pos3)
        f3 = pos3 - g3
        i3 = g3.to(tl.int32).to(tl.uint32)
    else:
        f3 = tl.zeros(x0.shape, tl.float32)
        i3 = tl.zeros(x0.shape, tl.uint32)
    return (
        g0.to(tl.int32).to(tl.uint32),
        g1.to(tl.int32).to(tl.uint32),
        g2.to(tl.int32).to(tl.uint32),
        i3,
        pos0 - g0,
        pos1 - g1,
        pos2 - g2,
        f3,
    )


@triton.jit
def _table(size_ptr, offset_ptr, dense_ptr, level):
    """One grid's table at `level`: size (uint32), offset (entries, int32), dense flag."""
    return tl.load(size_ptr + level).to(tl.uint32), tl.load(offset_ptr + level), tl.load(dense_ptr + level)


@triton.jit
def _gather(
    params_ptr, D: tl.constexpr, F: tl.constexpr, i0, i1, i2, i3, f0, f1, f2, f3, res, size, offset, dense, mask2
):
    """Σ_c w_c · table[c], (BLOCK, F), for one grid at one level."""
    feat = tl.arange(0, F)[None, :]  # a point's F features are adjacent in the table
    acc = tl.zeros([f0.shape[0], F], tl.float32)
    for c in tl.static_range(2**D):
        index, a0, a1, a2, a3 = _corner(c, D, i0, i1, i2, i3, f0, f1, f2, f3, res, size, dense)
        value = tl.load(params_ptr + ((offset + index) * F)[:, None] + feat, mask=mask2, other=0.0)
        acc += (a0 * a1 * a2 * a3)[:, None] * value
    return acc


@triton.jit
def _scatter(
    grad_ptr, g, D: tl.constexpr, F: tl.constexpr, i0, i1, i2, i3, f0, f1, f2, f3, res, size, offset, dense, mask2
):
    """table_grad[c] += w_c · g for one grid at one level (relaxed atomics, as tcnn's atomicAdd)."""
    feat = tl.arange(0, F)[None, :]
    for c in tl.static_range(2**D):
        index, a0, a1, a2, a3 = _corner(c, D, i0, i1, i2, i3, f0, f1, f2, f3, res, size, dense)
        address = grad_ptr + ((offset + index) * F)[:, None] + feat
        tl.atomic_add(address, (a0 * a1 * a2 * a3)[:, None] * g, mask=mask2, sem="relaxed")


@triton.jit
def _input_grad(
    params_ptr,
    g,
    D: tl.constexpr,
    F: tl.constexpr,
    i0,
    i1,
    i2,
    i3,
    f0,
    f1,
    f2,
    f3,
    res,
    size,
    offset,
    dense,
    scale,
    mask2,
):
    """Σ_c ∂w_c/∂x_d · <g, table[c]> for d = 0..3, one grid at one level."""
    feat = tl.arange(0, F)[None, :]
    gx0 = tl.zeros(f0.shape, tl.float32)
    gx1 = tl.zeros(f0.shape, tl.float32)
    gx2 = tl.zeros(f0.shape, tl.float32)
    gx3 = tl.zeros(f0.shape, tl.float32)
    for c in tl.static_range(2**D):
        index, a0, a1, a2, a3 = _corner(c, D, i0, i1, i2, i3, f0, f1, f2, f3, res, size, dense)
        value = tl.load(params_ptr + ((offset + index) * F)[:, None] + feat, mask=mask2, other=0.0)
        dot = tl.sum(g * value, axis=1)
        d0, d1, d2, d3 = _dweights(c, D, a0, a1, a2, a3, scale)
        gx0 += d0 * dot
        gx1 += d1 * dot
        gx2 += d2 * dot
        gx3 += d3 * dot
    return gx0, gx1, gx2, gx3


@triton.jit
def _second_order(
    params_ptr,
    grad_params_ptr,
    g,
    v0,
    v1,
    v2,
    v3,
    D: tl.constexpr,
    F: tl.constexpr,
    i0,
    i1,
    i2,
    i3,
    f0,
    f1,
    f2,
    f3,
    res,
    size,
    offset,
    dense,
    scale,
    mask2,
    WANT_PARAMS: tl.constexpr,
    WANT_GRAD_OUT: tl.constexpr,
):
    """With vw_c = Σ_d v_d ∂w_c/∂x_d: table_grad[c] += vw_c · g (atomics) and returns Σ_c vw_c · table[c]."""
    feat = tl.arange(0, F)[None, :]
    acc = tl.zeros([f0.shape[0], F], tl.float32)
    for c in tl.static_range(2**D):
        index, a0, a1, a2, a3 = _corner(c, D, i0, i1, i2, i3, f0, f1, f2, f3, res, size, dense)
        d0, d1, d2, d3 = _dweights(c, D, a0, a1, a2, a3, scale)
        vw = (v0 * d0 + v1 * d1 + v2 * d2 + v3 * d3)[:, None]
        address = ((offset + index) * F)[:, None] + feat
        if WANT_PARAMS:
            tl.atomic_add(grad_params_ptr + address, vw * g, mask=mask2, sem="relaxed")
        if WANT_GRAD_OUT:
            acc += vw * tl.load(params_ptr + address, mask=mask2, other=0.0)
    return acc
