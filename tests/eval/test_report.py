"""report.html of a distilled prediction: the orbit video beside the page, the mvgen views between ground truth and
the prediction with their own scores, per-view metrics, the loss curves; checked in a real headless browser."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stages.common.config import load_config
from stages.common.errors import StageError
from stages.eval import EvalConfig, EvalManifest, run
from tests.eval.builders import make_distill, make_mvgen, make_render, object_frames

REPO = Path(__file__).resolve().parents[2]
TINY = load_config(EvalConfig, REPO / "configs/tiny/eval.yaml")
SOURCE = [0, 2, 4, 6]
TRAIN_LOG = [
    {"step": s, "loss/total": 1e5 / s**3, "loss/anchor_dssim": 0.5 - 0.01 * s, "psnr/anchor": 10.0 + s}
    for s in range(10, 60, 10)
]


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))


def build_subject(root: Path, noise: float = 30.0) -> dict[str, Path]:
    """Ground truth; mvgen views equal to it; distilled renders that are a noisy copy."""
    truth = object_frames(4, SOURCE)
    make_render(root / "gt", truth, source_indices=SOURCE)
    make_mvgen(root / "mvgen", truth, source_indices=SOURCE)
    rng = np.random.default_rng(0)
    noisy = truth.copy()
    noisy[..., :3] = np.clip(truth[..., :3] + rng.normal(0, noise, truth[..., :3].shape), 0, 255).astype(np.uint8)
    make_distill(root / "distill", noisy, root / "mvgen", source_indices=SOURCE, train_log=TRAIN_LOG)
    return {"gt": root / "gt", "mvgen": root / "mvgen", "distill": root / "distill"}


@pytest.fixture(scope="module")
def distilled(tmp_path_factory) -> tuple[EvalManifest, Path]:
    root = tmp_path_factory.mktemp("report")
    dirs = build_subject(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FOURD_TRACKING", "off")
        manifest = run(
            TINY,
            prediction_dir=dirs["distill"],
            ground_truth_dir=dirs["gt"],
            output_dir=root / "out",
            mvgen_dir=dirs["mvgen"],
        )
    return manifest, root / "out"


def test_report_shows_the_orbit_video_mvgen_views_per_view_scores_and_loss_curves(distilled):
    manifest, out = distilled
    page = (out / "report.html").read_text()
    parser = Tags()
    parser.feed(page)
    tags = parser.tags
    # The orbit video is copied beside the page (part of the artifact) and referenced relatively.
    (video,) = [a for t, a in tags if t == "video"]
    assert video["src"] == "preview.mp4" and "preview.mp4" in manifest.files
    assert (out / "preview.mp4").read_bytes() == (out.parent / "distill" / "preview.mp4").read_bytes()
    # Each view's strip: ground truth, mvgen, prediction.
    images = [a["src"] for t, a in tags if t == "img"]
    assert len(images) == 4
    strip = Image.open(io.BytesIO(base64.b64decode(images[0].split(",", 1)[1])))
    thumb = TINY.report_thumb_px
    assert strip.size == (len(SOURCE) * (thumb + 2), 3 * thumb + 4)
    rows = np.asarray(strip)
    top, middle, bottom = rows[:thumb], rows[thumb + 2 : 2 * thumb + 2], rows[2 * thumb + 4 :]
    assert np.array_equal(top, middle) and not np.array_equal(middle, bottom)  # mvgen = GT here, the field is noisy
    assert "ground truth (top), mvgen (middle) and prediction (bottom)" in page
    # Per view: the prediction's scores and the mvgen views' (perfect here: they equal the ground truth).
    table = page[page.index('<table id="per-view">') :]
    table = table[: table.index("</table>")]
    header = re.findall(r"<th[^>]*>([^<]*)</th>", table.split("</tr>")[0])
    assert header == ["view", "PSNR ↑", "SSIM ↑", "mvgen PSNR ↑", "mvgen SSIM ↑"]
    body = [re.findall(r"<td>([^<]*)</td>", row) for row in table.split("<tr>")[2:]]
    assert len(body) == 4
    for cells in body:
        psnr, ssim, mvgen_psnr, mvgen_ssim = (float(c) for c in cells)
        assert psnr == pytest.approx(manifest.metrics["psnr"], abs=3) and psnr < 40 and ssim < 0.99
        assert mvgen_psnr == 100.0 and mvgen_ssim == pytest.approx(1.0)
    # The loss curves: one chart per logged series, the one spanning 2 orders of magnitude on a log scale.
    series = [a["data-series"] for t, a in tags if t == "svg"]
    assert series == ["loss/total", "loss/anchor_dssim", "psnr/anchor"]
    assert "loss/total (log scale)" in page and "psnr/anchor (log scale)" not in page
    points = re.findall(r'<polyline[^>]*points="([^"]+)"', page)
    assert [len(p.split()) for p in points] == [len(TRAIN_LOG)] * 3


def test_report_of_an_mvgen_prediction_or_a_distill_run_without_mvgen_leaves_those_parts_out(tmp_path, monkeypatch):
    monkeypatch.setenv("FOURD_TRACKING", "off")
    dirs = build_subject(tmp_path)
    run(TINY, prediction_dir=dirs["mvgen"], ground_truth_dir=dirs["gt"], output_dir=tmp_path / "a")
    page = (tmp_path / "a" / "report.html").read_text()
    assert "<video" not in page and "<svg" not in page and "mvgen PSNR" not in page
    m = run(TINY, prediction_dir=dirs["distill"], ground_truth_dir=dirs["gt"], output_dir=tmp_path / "b")
    page = (tmp_path / "b" / "report.html").read_text()
    assert "<video" in page and "<svg" in page and "mvgen PSNR" not in page and "preview.mp4" in m.files


def test_mvgen_that_the_prediction_was_not_fitted_to_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("FOURD_TRACKING", "off")
    dirs = build_subject(tmp_path)
    make_mvgen(tmp_path / "other", object_frames(4, SOURCE)[:, ::-1], source_indices=SOURCE[::-1])
    with pytest.raises(StageError, match="not distilled from"):
        run(
            TINY,
            prediction_dir=dirs["distill"],
            ground_truth_dir=dirs["gt"],
            output_dir=tmp_path / "o",
            mvgen_dir=tmp_path / "other",
        )
    with pytest.raises(StageError, match="--mvgen is for a distill prediction"):
        run(
            TINY,
            prediction_dir=dirs["mvgen"],
            ground_truth_dir=dirs["gt"],
            output_dir=tmp_path / "o",
            mvgen_dir=dirs["mvgen"],
        )
    assert not (tmp_path / "o").exists()


# A script the test adds to a copy of the page (the report itself has none): once the page, its images and the video
# have loaded or failed, it writes what the browser saw into the DOM that --dump-dom prints.
PROBE = """
<script>
function fourdProbe() {
  const video = document.querySelector('video');
  const report = {
    images: [...document.images].map(i => i.complete && i.naturalWidth > 0),
    svgs: [...document.querySelectorAll('svg.curve')].map(s => s.getBBox().width > 0),
    video: video && {readyState: video.readyState, width: video.videoWidth, error: video.error && video.error.code},
  };
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify(report);
  document.body.appendChild(out);
}
window.addEventListener('load', () => {
  const video = document.querySelector('video');
  if (!video || video.readyState >= 2) { fourdProbe(); return; }
  video.addEventListener('loadeddata', fourdProbe);
  video.addEventListener('error', fourdProbe);
});
</script>
"""


def test_report_loads_its_video_images_and_charts_in_headless_chromium(distilled, tmp_path):
    """Debian's chromium (`apt-get install chromium`; .ci/run installs it): skipped only where it is absent."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    _, out = distilled
    page = tmp_path / "page"
    shutil.copytree(out, page)  # the probe goes into a copy; the video stays beside it, as in the artifact
    html = (page / "report.html").read_text()
    (page / "probe.html").write_text(html.replace("</body>", PROBE + "</body>"))
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required"]
    cmd += ["--virtual-time-budget=15000", "--dump-dom", (page / "probe.html").as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    match = re.search(r'<pre id="probe">([^<]*)</pre>', proc.stdout)
    assert match, proc.stderr[-2000:]
    seen = json.loads(match.group(1).replace("&quot;", '"'))
    assert seen["images"] == [True] * 4, seen
    assert seen["svgs"] == [True] * 3, seen
    assert seen["video"]["error"] is None and seen["video"]["readyState"] >= 2 and seen["video"]["width"] == 32, seen
