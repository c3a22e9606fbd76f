"""Parity report: our converted pieces against the official 4Diffusion source, as JSON and a Markdown table.

    PYTHONPATH=$PWD:<site with the official code's dependencies> python -m benchmarks.parity.report \\
        --official-src /path/to/4Diffusion --output benchmarks/results/parity_cpu.json

Every comparison of benchmarks/parity/pieces.py runs once on tiny seeded models (fp32, CPU), then the negative
controls (our side perturbed as a bug would) run the same comparisons. `tests/parity` asserts the same numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

from benchmarks.parity.official import STUBS, load_official, prepare_torchvision

CONTROLS = {
    "penultimate -> last hidden state (image tokens)": (
        "image_conditioning",
        {"control_hidden_layer": -1},
        "penultimate_tokens",
    ),
    "camera order reversed (SDS)": ("guidance", {"control_camera_order": True}, "grad_renders"),
    "CFG eps_c + s(eps_c - eps_u) (SDS)": ("guidance", {"control_guidance_scale": 6.0}, "grad_renders"),
    "CFG branches swapped (SDS)": ("guidance", {"control_guidance_scale": -4.0}, "grad_renders"),
}


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in (
        "torch",
        "diffusers",
        "transformers",
        "open_clip_torch",
        "torchvision",
        "einops",
        "omegaconf",
        "pytorch_lightning",
        "accelerate",
    ):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "absent"
    return out


def build_report(official_src: Path, official_commit: str | None = None) -> dict:
    prepare_torchvision()
    from benchmarks.parity import pieces
    from benchmarks.parity.models import build_pair

    off = load_official(official_src)
    pair = build_pair(off)
    results: dict[str, dict] = {}
    runs = {
        "vae": lambda: pieces.vae(off, pair),
        "image_conditioning": lambda: pieces.image_conditioning(off, pair),
        "text": lambda: pieces.text(off, pair),
        "guidance": lambda: pieces.guidance(off, pair),
        "anchor": lambda: pieces.anchor(off),
        "regularisers": lambda: pieces.regularisers(off),
    }
    for piece, run in runs.items():
        start = time.perf_counter()
        for name, d in run().items():
            key = f"{piece}/{name}"
            verdict = (
                "float noise"
                if d.max_rel <= pieces.FLOAT_NOISE_REL
                else ("documented deviation" if key in pieces.DEVIATIONS else "DIFFERENT")
            )
            results[key] = {
                **d.as_dict(),
                "verdict": verdict,
                **({"why": pieces.DEVIATIONS[key]} if key in pieces.DEVIATIONS else {}),
            }
        print(f"{piece}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    controls = {}
    for label, (piece, kwargs, output) in CONTROLS.items():
        d = getattr(pieces, piece)(off, pair, **kwargs)[output]
        controls[label] = {"output": f"{piece}/{output}", **d.as_dict(), "caught": d.max_rel >= pieces.CONTROL_MIN_REL}
    commit = subprocess.run(["git", "-C", str(official_src), "rev-parse", "HEAD"], capture_output=True, text=True)
    return {
        "official_src": str(official_src),
        "official_commit": commit.stdout.strip() or official_commit or "unknown (not a git checkout)",
        "float_noise_rel": pieces.FLOAT_NOISE_REL,
        "control_min_rel": pieces.CONTROL_MIN_REL,
        "comparisons": results,
        "negative_controls": controls,
        "official_long_prompt": pieces.official_long_prompt_error(off, pair) or "accepted",
        "stand_ins": dict(STUBS),
        "versions": _versions(),
    }


def markdown(report: dict) -> str:
    lines = ["| piece | max abs | max rel | verdict |", "|---|---|---|---|"]
    for key, r in report["comparisons"].items():
        lines.append(f"| {key} | {r['max_abs']:.2e} | {r['max_rel']:.2e} | {r['verdict']} |")
    lines += ["", "| negative control | output | max rel | caught |", "|---|---|---|---|"]
    for label, c in report["negative_controls"].items():
        lines.append(f"| {label} | {c['output']} | {c['max_rel']:.2e} | {'yes' if c['caught'] else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official-src", type=Path, required=True, help="checkout of aejion/4Diffusion")
    parser.add_argument("--output", type=Path, required=True, help="JSON report to write")
    parser.add_argument("--official-commit", help="the checkout's commit, when it is an archive without .git")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    with contextlib.redirect_stdout(sys.stderr):  # the official code prints while it builds its modules
        report = build_report(args.official_src, args.official_commit)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    bad = [k for k, r in report["comparisons"].items() if r["verdict"] == "DIFFERENT"]
    bad += [k for k, c in report["negative_controls"].items() if not c["caught"]]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
