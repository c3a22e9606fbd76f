"""Triton kernels of the hash grid (see `hash_grid_triton.py`, which loads this file once compiled for CUDA and
once under Triton's CPU interpreter: Triton decides that when the functions are decorated)."""

# ruff: noqa: E741
import triton
import triton.language as tl


@triton.jit
def _corner(
    c: tl.constexpr,
    D: tl.constexpr,
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
    dense,
):
    """Table index (int32) of corner c and its per-dimension factors a_d (frac or 1 − frac) and signs."""
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
    index = tl.where(dense != 0, index_dense, index_hash) % size
    return index.to(tl.int32), a0, a1, a2, a3


@triton.jit
def _position(x_ptr, offs, mask, scale, D: tl.constexpr):
    """Grid position of the block's points: integer base (uint32) and fraction, per dimension."""
    x0 = tl.load(x_ptr + offs * D + 0, mask=mask, other=0.0)
    x1 = tl.load(x_ptr + offs * D + 1, mask=mask, other=0.0)
    x2 = tl.load(x_ptr + offs * D + 2, mask=mask, other=0.0)
    pos0 = x0 * scale + 0.5
    pos1 = x1 * scale + 0.5
    pos2 = x2 * scale + 0.5
    g0 = tl.floor(pos0)
    g1 = tl.floor(pos1)
    g2 = tl.floor(pos2)
    if D == 4:
        x3 = tl.load(x_ptr + offs * D + 3, mask=mask, other=0.0)
        pos3 = x3 * scale + 0.5
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
def _level(scale_ptr, res_ptr, size_ptr, offset_ptr, dense_ptr, level):
    scale = tl.load(scale_ptr + level)
    res = tl.load(res_ptr + level).to(tl.uint32)
    size = tl.load(size_ptr + level).to(tl.uint32)
    offset = tl.load(offset_ptr + level)
    dense = tl.load(dense_ptr + level)
    return scale, res, size, offset, dense


@triton.jit
def forward_kernel(
    x_ptr,
    params_ptr,
    out_ptr,
    N,
    scale_ptr,
    res_ptr,
    size_ptr,
    offset_ptr,
    dense_ptr,
    D: tl.constexpr,
    F: tl.constexpr,
    L: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    level = tl.program_id(1)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    scale, res, size, offset, dense = _level(scale_ptr, res_ptr, size_ptr, offset_ptr, dense_ptr, level)
    i0, i1, i2, i3, f0, f1, f2, f3 = _position(x_ptr, offs, mask, scale, D)
    feat = tl.arange(0, F)[None, :]  # (1, F): a point's F features are adjacent in the table and the output
    mask2 = mask[:, None]
    acc = tl.zeros([BLOCK, F], tl.float32)
    for c in tl.static_range(2**D):
        index, a0, a1, a2, a3 = _corner(c, D, i0, i1, i2, i3, f0, f1, f2, f3, res, size, dense)
        value = tl.load(params_ptr + ((offset + index) * F)[:, None] + feat, mask=mask2, other=0.0)
        acc += (a0 * a1 * a2 * a3)[:, None] * value
    tl.store(out_ptr + (offs * (L * F) + level * F)[:, None] + feat, acc, mask=mask2)


@triton.jit
def backward_params_kernel(
    x_ptr,
    grad_out_ptr,
    grad_params_ptr,
    N,
    scale_ptr,
    res_ptr,
    size_ptr,
    offset_ptr,
    dense_ptr,
    D: tl.constexpr,
    F: tl.constexpr,
    L: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    level = tl.program_id(1)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    scale, res, size, offset, dense = _level(scale_ptr, res_ptr, size_ptr, offset_ptr, dense_ptr, level)
    i0, i1, i2, i3, f0, f1, f2, f3 = _position(x_ptr, offs, mask, scale, D)
    feat = tl.arange(0, F)[None, :]
    mask2 = mask[:, None]
    g = tl.load(grad_out_ptr + (offs * (L * F) + level * F)[:, None] + feat, mask=mask2, other=0.0)  # (BLOCK, F)
    for c in tl.static_range(2**D):
        index, a0, a1, a2, a3 = _corner(c, D, i0, i1, i2, i3, f0, f1, f2, f3, res, size, dense)
        tl.atomic_add(
            grad_params_ptr + ((offset + index) * F)[:, None] + feat,
            (a0 * a1 * a2 * a3)[:, None] * g,
            mask=mask2,
            sem="relaxed",
        )


@triton.jit
def _dweights(c: tl.constexpr, D: tl.constexpr, a0, a1, a2, a3, scale):
    """∂w_c/∂x_d for d < D: scale · (±1) · ∏_{e≠d} a_e."""
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
def backward_input_kernel(
    x_ptr,
    params_ptr,
    grad_out_ptr,
    grad_x_ptr,
    N,
    scale_ptr,
    res_ptr,
    size_ptr,
    offset_ptr,
    dense_ptr,
    D: tl.constexpr,
    F: tl.constexpr,
    L: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    gx0 = tl.zeros([BLOCK], tl.float32)
    gx1 = tl.zeros([BLOCK], tl.float32)
    gx2 = tl.zeros([BLOCK], tl.float32)
    gx3 = tl.zeros([BLOCK], tl.float32)
    feat = tl.arange(0, F)[None, :]
    mask2 = mask[:, None]
    for level in tl.range(0, L):
        scale, res, size, offset, dense = _level(scale_ptr, res_ptr, size_ptr, offset_ptr, dense_ptr, level)
        i0, i1, i2, i3, f0, f1, f2, f3 = _position(x_ptr, offs, mask, scale, D)
        g = tl.load(grad_out_ptr + (offs * (L * F) + level * F)[:, None] + feat, mask=mask2, other=0.0)
        for c in tl.static_range(2**D):
            index, a0, a1, a2, a3 = _corner(c, D, i0, i1, i2, i3, f0, f1, f2, f3, res, size, dense)
            value = tl.load(params_ptr + ((offset + index) * F)[:, None] + feat, mask=mask2, other=0.0)
            dot = tl.sum(g * value, axis=1)  # (BLOCK,)
            d0, d1, d2, d3 = _dweights(c, D, a0, a1, a2, a3, scale)
            gx0 += d0 * dot
            gx1 += d1 * dot
            gx2 += d2 * dot
            gx3 += d3 * dot
    tl.store(grad_x_ptr + offs * D + 0, gx0, mask=mask)
    tl.store(grad_x_ptr + offs * D + 1, gx1, mask=mask)
    tl.store(grad_x_ptr + offs * D + 2, gx2, mask=mask)
    if D == 4:
        tl.store(grad_x_ptr + offs * D + 3, gx3, mask=mask)


@triton.jit
def double_backward_kernel(
    x_ptr,
    params_ptr,
    grad_out_ptr,
    v_ptr,
    grad_params_ptr,
    grad_grad_out_ptr,
    N,
    scale_ptr,
    res_ptr,
    size_ptr,
    offset_ptr,
    dense_ptr,
    D: tl.constexpr,
    F: tl.constexpr,
    L: tl.constexpr,
    BLOCK: tl.constexpr,
    WANT_PARAMS: tl.constexpr,
    WANT_GRAD_OUT: tl.constexpr,
):
    pid = tl.program_id(0)
    level = tl.program_id(1)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    scale, res, size, offset, dense = _level(scale_ptr, res_ptr, size_ptr, offset_ptr, dense_ptr, level)
    i0, i1, i2, i3, f0, f1, f2, f3 = _position(x_ptr, offs, mask, scale, D)
    v0 = tl.load(v_ptr + offs * D + 0, mask=mask, other=0.0)
    v1 = tl.load(v_ptr + offs * D + 1, mask=mask, other=0.0)
    v2 = tl.load(v_ptr + offs * D + 2, mask=mask, other=0.0)
    if D == 4:
        v3 = tl.load(v_ptr + offs * D + 3, mask=mask, other=0.0)
    else:
        v3 = tl.zeros([BLOCK], tl.float32)
    feat = tl.arange(0, F)[None, :]
    mask2 = mask[:, None]
    g = tl.load(grad_out_ptr + (offs * (L * F) + level * F)[:, None] + feat, mask=mask2, other=0.0)  # (BLOCK, F)
    acc = tl.zeros([BLOCK, F], tl.float32)
    for c in tl.static_range(2**D):
        index, a0, a1, a2, a3 = _corner(c, D, i0, i1, i2, i3, f0, f1, f2, f3, res, size, dense)
        d0, d1, d2, d3 = _dweights(c, D, a0, a1, a2, a3, scale)
        vw = (v0 * d0 + v1 * d1 + v2 * d2 + v3 * d3)[:, None]  # Σ_d v_d ∂w_c/∂x_d
        address = ((offset + index) * F)[:, None] + feat
        if WANT_PARAMS:
            tl.atomic_add(grad_params_ptr + address, vw * g, mask=mask2, sem="relaxed")
        if WANT_GRAD_OUT:
            acc += vw * tl.load(params_ptr + address, mask=mask2, other=0.0)
    if WANT_GRAD_OUT:
        tl.store(grad_grad_out_ptr + (offs * (L * F) + level * F)[:, None] + feat, acc, mask=mask2)
