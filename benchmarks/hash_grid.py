"""Benchmark the distill hash grids on a GPU: torch path, our fused Triton kernels and tinycudann, side by side.

    python benchmarks/hash_grid.py --json out/hash_grid.json

The workload of platform-notes §8 (the tcnn reference measurement): 4Diffusion's field encodes 2^20 random points in
[0, 1]^4 with a 3D grid (x, y, z) and a 4D grid (x, y, z, t), 16 levels, 2 features, 2^19 tables, base 16, scale
1.4473. Forward = both grids, no autograd; forward + backward = both grids and the table gradients of a random
output gradient. Mean of `--repeats` after `--warmup` runs, CUDA events. Every backend uses the same tables, and the
Triton and tcnn outputs are compared with the torch path's on the same points (max abs difference) so a fast wrong
kernel cannot pass. Triton's block size and warps are swept first (forward + backward), the best is used.
`triton_pair` is the field's own call: both grids in one fused pass whose output is their sum (`encode_pair`).
tcnn is measured when `tinycudann` imports (scripts/build_tcnn.sh); its default half-precision encoding is what
platform-notes §8 measured, so both its float32 (our config's) and float16 forms are reported.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from stages.distill.fields import HashGridEncoding
from stages.distill.fields import hash_grid_triton as ht

PAPER = dict(
    num_levels=16, features_per_level=2, log2_hashmap_size=19, base_resolution=16, per_level_scale=1.447269237440378
)


def timed(fn, warmup: int, repeats: int) -> float:
    """Mean milliseconds of fn() over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def timings(forward, forward_backward, n: int, warmup: int, repeats: int) -> dict:
    """Times of the two callables over n points, throughputs and the peak memory."""
    torch.cuda.reset_peak_memory_stats()
    fwd = timed(forward, warmup, repeats)
    fwd_bwd = timed(forward_backward, warmup, repeats)
    return {
        "forward_ms": fwd,
        "forward_backward_ms": fwd_bwd,
        "forward_mpoints_per_s": n / fwd / 1e3,
        "forward_backward_mpoints_per_s": n / fwd_bwd / 1e3,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


def measure(grids: tuple[torch.nn.Module, torch.nn.Module], points: torch.Tensor, warmup: int, repeats: int) -> dict:
    g3, g4 = grids
    grad = torch.randn(points.shape[0], g3.output_dim, device=points.device)
    x3 = points[:, :3].contiguous()

    def forward():
        with torch.no_grad():
            return g3(x3), g4(points)

    def forward_backward():
        for p in (g3.params, g4.params):
            p.grad = None
        a, b = g3(x3), g4(points)
        torch.autograd.backward([a, b], [grad.to(a.dtype), grad.to(b.dtype)])

    return timings(forward, forward_backward, points.shape[0], warmup, repeats)


def make(backend: str, reference: tuple[HashGridEncoding, HashGridEncoding]) -> tuple[HashGridEncoding, ...]:
    grids = []
    for ref in reference:
        grid = HashGridEncoding(ref.num_dims, backend=backend, **PAPER).cuda()
        grid.load_state_dict(ref.state_dict())
        grids.append(grid)
    return tuple(grids)


def max_diff(grids, reference, points: torch.Tensor) -> float:
    with torch.no_grad():
        x3 = points[:, :3].contiguous()
        got = torch.cat([grids[0](x3).float(), grids[1](points).float()], 1)
        want = torch.cat([reference[0](x3), reference[1](points)], 1)
    return float((got - want).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1 << 20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--skip-torch", action="store_true", help="skip the (slow, memory-hungry) torch path timing")
    parser.add_argument("--json", type=Path, default=Path("out/hash_grid.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    points = torch.rand(args.points, 4, device="cuda")
    reference = tuple(HashGridEncoding(d, backend="torch", **PAPER).cuda() for d in (3, 4))
    with torch.no_grad():
        for grid in reference:
            grid.params.uniform_(-1.0, 1.0)  # larger than the init so differences are visible
    result: dict = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "points": args.points,
        "config": PAPER,
        "parameters": sum(g.params.numel() for g in reference),
        "backends": {},
    }
    if not args.skip_torch:
        result["backends"]["torch"] = measure(reference, points, 1, 3)
        print("torch", json.dumps(result["backends"]["torch"]))

    triton_grids = make("triton", reference)
    sweep = {}
    for block in (64, 128, 256):
        for warps in (2, 4, 8):
            ht.BLOCK, ht.NUM_WARPS = block, warps
            sweep[f"{block}x{warps}"] = measure(triton_grids, points, 2, 5)["forward_backward_ms"]
    best = min(sweep, key=sweep.get)
    ht.BLOCK, ht.NUM_WARPS = (int(v) for v in best.split("x"))
    result["triton_sweep_forward_backward_ms"] = sweep
    entry = measure(triton_grids, points, args.warmup, args.repeats)
    entry.update(
        block=ht.BLOCK, num_warps=ht.NUM_WARPS, max_abs_diff_vs_torch=max_diff(triton_grids, reference, points)
    )
    result["backends"]["triton"] = entry
    print("triton", json.dumps(entry))

    # The field's use: both grids fused in one pass whose output is their sum (`encode_pair`).
    pair = _Pair(*triton_grids)
    sweep = {}
    for block in (64, 128, 256):
        for warps in (2, 4, 8):
            ht.BLOCK, ht.NUM_WARPS = block, warps
            sweep[f"{block}x{warps}"] = measure_pair(pair, points, 2, 5)["forward_backward_ms"]
    best = min(sweep, key=sweep.get)
    ht.BLOCK, ht.NUM_WARPS = (int(v) for v in best.split("x"))
    result["triton_pair_sweep_forward_backward_ms"] = sweep
    entry = measure_pair(pair, points, args.warmup, args.repeats)
    with torch.no_grad():
        want = reference[0](points[:, :3].contiguous()) + reference[1](points)
        entry["max_abs_diff_vs_torch"] = float((pair(points) - want).abs().max())
    entry.update(block=ht.BLOCK, num_warps=ht.NUM_WARPS)
    result["backends"]["triton_pair"] = entry
    print("triton_pair", json.dumps(entry))

    try:
        import tinycudann  # noqa: F401
    except ImportError as err:
        result["backends"]["tcnn"] = {"skipped": f"tinycudann does not import: {err}"}
    else:
        tcnn_grids = make("tcnn", reference)
        entry = measure(tcnn_grids, points, args.warmup, args.repeats)
        entry["max_abs_diff_vs_torch"] = max_diff(tcnn_grids, reference, points)
        result["backends"]["tcnn"] = entry
        # tcnn's default (what platform-notes §8 measured): half-precision tables and output.
        import tinycudann as tcnn

        half = []
        for ref in reference:
            enc = tcnn.Encoding(
                ref.num_dims,
                {
                    "otype": "HashGrid",
                    "n_levels": 16,
                    "n_features_per_level": 2,
                    "log2_hashmap_size": 19,
                    "base_resolution": 16,
                    "per_level_scale": PAPER["per_level_scale"],
                },
            ).cuda()
            half.append(_TcnnAsGrid(enc))  # tcnn's own init: timing does not depend on the values
        result["backends"]["tcnn_fp16"] = measure(tuple(half), points, args.warmup, args.repeats)
        for name in ("tcnn", "tcnn_fp16"):
            print(name, json.dumps(result["backends"][name]))
        for ours in ("triton", "triton_pair"):
            for name in ("tcnn", "tcnn_fp16"):
                tri, ref = result["backends"][ours], result["backends"][name]
                result[f"{ours}_vs_{name}_throughput"] = {
                    "forward": ref["forward_ms"] / tri["forward_ms"],
                    "forward_backward": ref["forward_backward_ms"] / tri["forward_backward_ms"],
                }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=2))


class _Pair(torch.nn.Module):
    """The 3D + 4D grids through `encode_pair` (one fused pass, summed features)."""

    def __init__(self, g3: HashGridEncoding, g4: HashGridEncoding) -> None:
        super().__init__()
        self.g3, self.g4 = g3, g4

    def forward(self, xyzt: torch.Tensor) -> torch.Tensor:
        dev = xyzt.device
        return ht.encode_pair(
            xyzt, self.g3.params, self.g4.params, self.g3.level_tables(dev), self.g4.level_tables(dev), 2
        )


def measure_pair(pair: _Pair, points: torch.Tensor, warmup: int, repeats: int) -> dict:
    grad = torch.randn(points.shape[0], pair.g3.output_dim, device=points.device)

    def forward():
        with torch.no_grad():
            return pair(points)

    def forward_backward():
        pair.g3.params.grad = pair.g4.params.grad = None
        pair(points).backward(grad)

    return timings(forward, forward_backward, points.shape[0], warmup, repeats)


class _TcnnAsGrid(torch.nn.Module):
    """tcnn's own half-precision encoding with the `params`/`output_dim` names `measure` uses."""

    def __init__(self, encoding: torch.nn.Module) -> None:
        super().__init__()
        self.encoding = encoding
        self.output_dim = encoding.n_output_dims

    @property
    def params(self) -> torch.nn.Parameter:
        return self.encoding.params

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoding(x)


if __name__ == "__main__":
    main()
