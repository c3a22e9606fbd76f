"""report.html: one page per subject (inline CSS, base64 PNGs and SVG charts, no network, no scripts).

It shows the 4D asset's orbit video (a distill prediction's preview.mp4, copied beside the page), the metrics with
the skipped ones and why, each view's metrics, our row beside the paper's published rows with the comparability
note, ground truth above (the mvgen views the field was fitted to, then) the prediction for every view over time,
the distillation's loss curves, and the protocol the numbers depend on. The page has no timestamp, so equal inputs
give equal bytes.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from stages.eval.manifest import SkippedMetric
from stages.eval.published import COMPARABILITY_NOTE, PAPER_METRICS, tables_for

__all__ = ["METRIC_INFO", "ReportView", "view_strip", "png_bytes", "render_report"]

METRIC_INFO: dict[str, tuple[str, str, str]] = {
    "clip_i": ("CLIP-I", "↑", "CLIP image similarity, prediction vs ground truth at the same view and frame"),
    "clip_c": ("CLIP-C", "↑", "CLIP similarity of consecutive predicted frames (temporal consistency)"),
    "clip_c_ground_truth": ("CLIP-C of GT", "", "the same on the ground truth: what a perfect prediction scores"),
    "fvd": ("FVD (pooled)", "↓", "Fréchet distance of I3D features, all predicted vs all ground-truth clips"),
    "fvd_consistent4d": ("FVD (Consistent4D)", "↓", "per-view ‖Δf‖² + Δsd², mean over views (their script)"),
    "lpips": ("LPIPS (VGG)", "↓", "learned perceptual distance to the ground truth"),
    "psnr": ("PSNR", "↑", "dB, data range 1, capped at 100 dB for identical images"),
    "ssim": ("SSIM", "↑", "structural similarity, Gaussian 11 px σ 1.5"),
}
"""metric key → (label, better direction, description); also the metric order of every table."""

_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:1200px}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}tr.ours{background:#eef6ff;font-weight:600}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5rem 1rem}.skip{color:#a33}
img{image-rendering:auto;max-width:100%}svg.curve{margin:0 .5rem .5rem 0}
"""


@dataclass(frozen=True)
class ReportView:
    """One view's block: its title, its mean metrics and its GT-over-prediction strip (PNG)."""

    title: str
    metrics: Mapping[str, float]
    png: bytes
    reference_metrics: Mapping[str, float] = field(default_factory=dict)
    """The mvgen view's `psnr` and `ssim` against the same ground truth, when the report shows the mvgen views."""


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 (H, W, 3) → PNG bytes (deterministic)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def view_strip(
    ground_truth: np.ndarray, prediction: np.ndarray, thumb_px: int, reference: np.ndarray | None = None
) -> np.ndarray:
    """Ground-truth frames above (the reference frames above) predicted frames, left to right in time.

    Args:
        ground_truth: uint8 (F, H, W, 3) RGB on white.
        prediction: uint8 (F, H', W', 3) RGB on white.
        thumb_px: side of each thumbnail.
        reference: uint8 (F, H'', W'', 3) RGB on white, the middle row (the mvgen views a field was fitted to).

    Returns:
        uint8 (R·thumb_px + 2(R-1), F·(thumb_px + 2), 3) with R rows (2 or 3), grey separators.
    """
    rows = []
    for frames in (ground_truth, *([] if reference is None else [reference]), prediction):
        size = (thumb_px, thumb_px)
        thumbs = [np.asarray(Image.fromarray(f).resize(size, Image.Resampling.LANCZOS)) for f in frames]
        gap = np.full((thumb_px, 2, 3), 200, np.uint8)
        rows.append(np.concatenate([x for t in thumbs for x in (t, gap)], axis=1))
    sep = np.full((2, rows[0].shape[1], 3), 200, np.uint8)
    return np.concatenate([x for row in rows for x in (row, sep)][:-1], axis=0)


def _fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "—"
    if metric.startswith("fvd"):
        return f"{value:.2f}"
    if metric == "psnr":
        return f"{value:.2f}"
    return f"{value:.4f}"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def render_report(
    *,
    subject: str,
    prediction_stage: str,
    metrics: Mapping[str, float],
    skipped: Mapping[str, SkippedMetric],
    views: Sequence[ReportView],
    source_indices: Sequence[int],
    protocol: Mapping[str, object],
    code_version: str,
    psnr_capped_frames: int,
    video: str | None = None,
    loss_curves: Sequence[str] = (),
) -> str:
    """The report as one HTML string (module docstring).

    Args:
        video: the orbit video's path relative to the page (a distill prediction's), or None.
        loss_curves: inline SVG charts of the distillation's losses (`report_media.loss_curves_svg`).
    """
    reference = any(view.reference_metrics for view in views)
    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>fourd eval: {_e(subject)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Evaluation of {_e(prediction_stage)} output for <em>{_e(subject)}</em></h1>",
        f"<p>{len(views)} views × {len(source_indices)} frames (input frames {_e(list(source_indices))}); "
        f"code {_e(code_version)}.</p>",
    ]

    # 1. The 4D asset itself, orbiting while time plays.
    if video is not None:
        out.append(
            f'<h2>The 4D asset</h2><video id="orbit" src="{_e(video)}" controls autoplay loop muted playsinline '
            'width="512"></video><p>Orbit of the distilled field while time plays (the preview of its artifact).</p>'
        )

    # 2. Our metrics, skipped ones with the reason and the file they wanted.
    out.append(
        '<h2>Metrics</h2><table id="metrics"><tr><th class="l">metric</th><th>value</th>'
        '<th class="l">meaning</th></tr>'
    )
    for key, (label, arrow, meaning) in METRIC_INFO.items():
        if key in metrics:
            cell = _e(_fmt(metrics[key], key))
        elif key in skipped:
            cell = f'<span class="skip">skipped: {_e(skipped[key].reason)} ({_e(skipped[key].wanted)})</span>'
        else:
            continue
        out.append(
            f'<tr data-metric="{_e(key)}"><td class="l">{_e(label)} {arrow}</td><td>{cell}</td>'
            f'<td class="l">{_e(meaning)}</td></tr>'
        )
    out.append("</table>")
    if psnr_capped_frames:
        out.append(f"<p>{psnr_capped_frames} frame(s) were identical to the ground truth: PSNR capped at 100 dB.</p>")

    # 3. Per view; with the mvgen views, theirs beside (what the field was fitted to, against the same truth).
    keys = [k for k in METRIC_INFO if any(k in view.metrics for view in views)]
    out.append('<h2>Per view</h2><table id="per-view"><tr><th class="l">view</th>')
    out.extend(f"<th>{_e(METRIC_INFO[k][0])} {METRIC_INFO[k][1]}</th>" for k in keys)
    out.append("<th>mvgen PSNR ↑</th><th>mvgen SSIM ↑</th>" if reference else "")
    out.append("</tr>")
    for view in views:
        cells = "".join(f"<td>{_fmt(view.metrics.get(k), k)}</td>" for k in keys)
        if reference:
            cells += "".join(f"<td>{_fmt(view.reference_metrics.get(k), k)}</td>" for k in ("psnr", "ssim"))
        out.append(f"<tr><td class='l'>{_e(view.title)}</td>{cells}</tr>")
    out.append("</table>")

    # 4. Our row beside the paper's.
    out.append("<h2>Beside the paper</h2>")
    ours = {**metrics}
    if "fvd_consistent4d" in metrics:
        ours["fvd"] = metrics["fvd_consistent4d"]
    for table in tables_for(prediction_stage):
        out.append(f"<h3>{_e(table.title)}</h3><table><tr><th class='l'>method</th>")
        out.extend(f"<th>{_e(METRIC_INFO[m][0].split(' (')[0])} {METRIC_INFO[m][1]}</th>" for m in PAPER_METRICS)
        out.append("</tr>")
        for method, row in table.rows:
            cells = "".join(f"<td>{_fmt(row[m], m)}</td>" for m in PAPER_METRICS)
            out.append(f"<tr><td class='l'>{_e(method)} (paper)</td>{cells}</tr>")
        if table.prediction_stage == prediction_stage:
            cells = "".join(f"<td>{_fmt(ours.get(m), m)}</td>" for m in PAPER_METRICS)
            out.append(f"<tr class='ours'><td class='l'>this run: {_e(subject)}</td>{cells}</tr>")
        out.append("</table>")
    out.append(f'<p class="note">{_e(COMPARABILITY_NOTE)}</p>')

    # 5. Ground truth above (mvgen above) prediction, per view over time.
    rows = "ground truth (top), mvgen (middle) and prediction (bottom)" if reference else ""
    rows = rows or "ground truth (top) and prediction (bottom)"
    out.append(f"<h2>Views: {rows}, time left to right</h2>")
    for view in views:
        summary = ", ".join(f"{METRIC_INFO[k][0]} {_fmt(v, k)}" for k, v in view.metrics.items())
        data = base64.b64encode(view.png).decode("ascii")
        out.append(
            f"<h3>{_e(view.title)}</h3><p>{_e(summary)}</p>"
            f'<img alt="{_e(view.title)}" src="data:image/png;base64,{data}">'
        )

    # 6. How the distillation went.
    if loss_curves:
        out.append('<h2>Distillation losses</h2><div id="losses">')
        out.extend(loss_curves)
        out.append("</div>")

    # 7. What the numbers depend on.
    out.append('<h2>Protocol</h2><table id="protocol">')
    out.extend(f"<tr><td class='l'>{_e(k)}</td><td class='l'>{_e(v)}</td></tr>" for k, v in protocol.items())
    out.append("</table></body></html>")
    return "\n".join(out) + "\n"
