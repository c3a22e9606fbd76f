"""The eval stage end to end on tiny artifacts: known answers, pairing through shuffled files, skipped metrics,
outputs (metrics.json, per_frame.csv, report.html, manifest), MLflow, the CLI and bad input."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml

from stages.common.cli import cli_main
from stages.common.config import load_config
from stages.eval import EvalConfig, EvalManifest, run
from stages.eval.metrics.psnr_ssim import PSNR_CAP_DB
from tests.eval.builders import make_mvgen, make_render, object_frames, shuffled_render

REPO = Path(__file__).resolve().parents[2]
TINY = load_config(EvalConfig, REPO / "configs/tiny/eval.yaml")
SOURCE = [0, 3, 6, 9]
ALL_METRICS = {"clip_i", "clip_c", "clip_c_ground_truth", "fvd", "fvd_consistent4d", "lpips", "psnr", "ssim"}


def tree_hashes(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def make_pair(root: Path, *, num_views: int = 2, subject: str = "tiny", noise: float = 0.0) -> tuple[Path, Path]:
    """A prediction equal to (or a noisy copy of) a ground truth stored in shuffled view and frame order, with one
    extra ground-truth view (180°) and extra frames the prediction does not show."""
    gt_source = list(range(10))
    gt_images = object_frames(num_views + 1, gt_source)
    gt_images[[0, 1, 2]] = gt_images[[0, 2, 1]]  # views at 0°, 180°, 90° … in file order below
    azimuths = [0.0, 180.0, 90.0, 270.0]
    shuffled_render(root / "gt", gt_images, gt_source, seed=1, subject=subject, azimuths=azimuths)
    pred = gt_images[[0, 2]][:, SOURCE] if num_views == 2 else gt_images[:num_views][:, SOURCE]
    if noise:
        rng = np.random.default_rng(0)
        rgb = pred[..., :3].astype(float) + rng.normal(0, noise, pred[..., :3].shape)
        pred = pred.copy()
        pred[..., :3] = np.clip(rgb, 0, 255).astype(np.uint8)
        pred[..., 3] = np.maximum(pred[..., 3], 128)  # blurred edges: the object's shape changes too
    make_mvgen(root / "pred", pred, azimuths=[0.0, 90.0], source_indices=SOURCE, subject=subject)
    return root / "pred", root / "gt"


@pytest.fixture(scope="module")
def perfect_run(tmp_path_factory, tiny_weights) -> tuple[EvalManifest, Path]:
    """A prediction identical to its ground truth, scored with every network (tracking off: module scope)."""
    root = tmp_path_factory.mktemp("perfect")
    pred, gt = make_pair(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FOURD_TRACKING", "off")
        manifest = run(
            TINY, prediction_dir=pred, ground_truth_dir=gt, output_dir=root / "out", weights_dir=tiny_weights
        )
    return manifest, root / "out"


def test_perfect_prediction_scores_perfectly_through_shuffled_ground_truth(perfect_run):
    manifest, out = perfect_run
    m = manifest.metrics
    assert set(m) == ALL_METRICS and not manifest.skipped
    assert m["clip_i"] == pytest.approx(1.0, abs=1e-9)
    assert m["lpips"] == pytest.approx(0.0, abs=1e-7)
    assert m["psnr"] == PSNR_CAP_DB and manifest.psnr_capped_frames == 2 * len(SOURCE)
    assert m["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert m["fvd"] == pytest.approx(0.0, abs=1e-6) and m["fvd_consistent4d"] == pytest.approx(0.0, abs=1e-9)
    assert m["clip_c"] == pytest.approx(m["clip_c_ground_truth"]) and m["clip_c"] < 1.0
    assert [(p.prediction_view, p.ground_truth_view, p.azimuth_deg) for p in manifest.view_pairs] != []
    gt = yaml.safe_load((out.parent / "gt" / "gt" / "cameras.json").read_text())
    gt_azimuth = {c["view"]: c["azimuth_deg"] for c in gt}
    for pair in manifest.view_pairs:
        assert gt_azimuth[pair.ground_truth_view] == pair.azimuth_deg
    assert manifest.source_indices == SOURCE
    assert "2 (azimuth" in manifest.protocol["unscored_ground_truth_views"] or "azimuth 180" in str(
        manifest.protocol["unscored_ground_truth_views"]
    )
    assert manifest.protocol["fvd_clip_frames"] == 12 and manifest.features_file == "i3d_features.safetensors"
    assert EvalManifest.load(out) == manifest
    assert json.loads((out / "metrics.json").read_text()) == m


def test_per_frame_csv_pairs_each_frame_with_the_ground_truth_frame_of_its_instant(perfect_run):
    manifest, out = perfect_run
    rows = list(csv.DictReader((out / "per_frame.csv").open()))
    assert len(rows) == 2 * len(SOURCE)
    gt_source = json.loads((out.parent / "gt" / "manifest.json").read_text())["gt"]["source_indices"]
    for row in rows:
        assert gt_source[int(row["gt_frame"])] == int(row["source_index"]) == SOURCE[int(row["frame"])]
        assert float(row["psnr"]) == PSNR_CAP_DB and row["psnr_capped"] == "1"
        assert (row["clip_c_next"] == "") == (int(row["source_index"]) == SOURCE[-1])
    assert [int(r["source_index"]) for r in rows[: len(SOURCE)]] == SOURCE


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_report_is_self_contained_html_with_the_papers_rows(perfect_run):
    import base64
    import io

    from PIL import Image

    _, out = perfect_run
    page = (out / "report.html").read_text()
    parser = _Collector()
    parser.feed(page)
    parser.close()
    tags = [t for t, _ in parser.tags]
    assert tags[0] == "html" and "script" not in tags and "link" not in tags
    images = [a["src"] for t, a in parser.tags if t == "img"]
    assert len(images) == 2 and all(s.startswith("data:image/png;base64,") for s in images)
    strip = Image.open(io.BytesIO(base64.b64decode(images[0].split(",", 1)[1])))
    assert strip.size == (len(SOURCE) * (TINY.report_thumb_px + 2), 2 * TINY.report_thumb_px + 2)
    assert not re.search(r"(src|href)=\"https?:", page)
    text = " ".join(parser.text)
    for published in ("0.9310", "417.63", "0.1199", "19.07", "0.9260", "427.34", "17.88"):
        assert published in text
    assert "comparable" in text and "this run: tiny" in text
    metric_rows = [a["data-metric"] for t, a in parser.tags if t == "tr" and "data-metric" in a]
    assert set(metric_rows) == ALL_METRICS


def test_degraded_prediction_scores_worse_and_aggregate_pools_fvd(tmp_path, tiny_weights, perfect_run):
    from safetensors.numpy import load_file

    from stages.eval.aggregate import aggregate, main
    from stages.eval.metrics.fvd import compute_fvd

    pred, gt = make_pair(tmp_path, subject="noisy", noise=40.0)
    m = run(TINY, prediction_dir=pred, ground_truth_dir=gt, output_dir=tmp_path / "out", weights_dir=tiny_weights)
    assert m.metrics["psnr"] < 30 and m.psnr_capped_frames == 0
    assert m.metrics["ssim"] < 0.9 and m.metrics["lpips"] > 1e-4 and m.metrics["clip_i"] < 1 - 1e-6
    assert m.metrics["fvd"] > 1e-3 and m.metrics["fvd_consistent4d"] > 1e-3

    perfect, perfect_dir = perfect_run
    merged = aggregate([perfect_dir, tmp_path / "out"])
    assert merged["num_subjects"] == 2
    assert merged["psnr"] == pytest.approx((PSNR_CAP_DB + m.metrics["psnr"]) / 2)
    assert merged["psnr/noisy"] == m.metrics["psnr"] and merged["lpips/tiny"] == perfect.metrics["lpips"]
    feats = [load_file(str(d / "i3d_features.safetensors")) for d in (perfect_dir, tmp_path / "out")]
    pooled = compute_fvd(
        np.concatenate([f["prediction"] for f in feats]), np.concatenate([f["ground_truth"] for f in feats])
    )
    assert merged["fvd"] == pytest.approx(pooled) and merged["fvd/num_clips"] == 4
    assert merged["fvd_consistent4d"] == pytest.approx((m.metrics["fvd_consistent4d"] + 0.0) / 2, abs=1e-9)

    assert main([str(perfect_dir), str(tmp_path / "out"), "--output", str(tmp_path / "reports" / "metrics.json")]) == 0
    assert json.loads((tmp_path / "reports" / "metrics.json").read_text()) == pytest.approx(merged)
    assert main([str(perfect_dir), str(perfect_dir), "--output", str(tmp_path / "x.json")]) == 1


def test_missing_weights_skip_their_metrics_and_nothing_else(tmp_path, tiny_weights):
    pred, gt = make_pair(tmp_path)
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "lpips").symlink_to(tiny_weights / "lpips", target_is_directory=True)
    m = run(TINY, prediction_dir=pred, ground_truth_dir=gt, output_dir=tmp_path / "out", weights_dir=weights)
    assert set(m.metrics) == {"lpips", "psnr", "ssim"}
    assert set(m.skipped) == ALL_METRICS - {"lpips", "psnr", "ssim"}
    assert m.skipped["clip_i"].wanted == str(weights / "clip") and m.skipped["clip_i"].reason == "weights not found"
    assert m.skipped["fvd"].wanted == str(weights / "i3d" / "i3d_pretrained_400.pt")
    assert set(json.loads((tmp_path / "out" / "metrics.json").read_text())) == {"lpips", "psnr", "ssim"}
    assert m.features_file is None and not (tmp_path / "out" / "i3d_features.safetensors").exists()
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("skipped: weights not found") == 5


def test_mlflow_run_logs_the_same_metrics_and_the_report(tmp_path, mlflow_store):
    import mlflow

    pred, gt = make_pair(tmp_path)
    m = run(TINY, prediction_dir=pred, ground_truth_dir=gt, output_dir=tmp_path / "out")
    assert set(m.metrics) == {"psnr", "ssim"}  # no --weights: only the weight-free metrics
    runs = mlflow.search_runs(experiment_names=["fourd"], output_format="list")
    assert len(runs) == 1
    logged = runs[0]
    assert logged.info.run_name == "eval/tiny" and logged.data.tags["stage"] == "eval"
    assert logged.data.metrics == json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert logged.data.tags["skipped.fvd"].startswith("no --weights folder given")
    client = mlflow.tracking.MlflowClient()
    names = {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert {"report.html", "grid.png", "per_frame.csv", "metrics.json", "manifest.json"} <= names


def test_same_inputs_give_byte_identical_outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("FOURD_TRACKING", "off")
    pred, gt = make_pair(tmp_path)
    run(TINY, prediction_dir=pred, ground_truth_dir=gt, output_dir=tmp_path / "a")
    run(TINY, prediction_dir=pred, ground_truth_dir=gt, output_dir=tmp_path / "b")
    assert tree_hashes(tmp_path / "a") == tree_hashes(tmp_path / "b")


# ---------------------------------------------------------------------------------------------------------
# The CLI: flags named after run()'s parameters; bad input is one error line, exit 1, nothing written.


def cli(args: list[str], capsys) -> tuple[int, list[str]]:
    rc = cli_main(run, EvalConfig, args)
    return rc, capsys.readouterr().err.strip().splitlines()


def test_cli_writes_the_artifact_and_the_dvc_metrics_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FOURD_TRACKING", "off")
    pred, gt = make_pair(tmp_path)
    args = ["--config", str(REPO / "configs/tiny/eval.yaml"), "--prediction", str(pred), "--ground-truth", str(gt)]
    args += ["--output", str(tmp_path / "out"), "--metrics", str(tmp_path / "reports" / "tiny.json")]
    rc, err = cli([*args, "--image-size-px", "48"], capsys)
    assert rc == 0, err
    assert (tmp_path / "reports" / "tiny.json").read_bytes() == (tmp_path / "out" / "metrics.json").read_bytes()
    assert load_config(EvalConfig, tmp_path / "out" / "config.yaml").image_size_px == 48


def make_bad_input(kind: str, tmp_path: Path, tiny_weights: Path) -> list[str]:
    pred, gt = make_pair(tmp_path)
    args = {"--prediction": str(pred), "--ground-truth": str(gt)}
    match kind:
        case "gt_lacks_frames":
            make_render(tmp_path / "gt2", object_frames(3, [0, 3]), source_indices=[0, 3], azimuths=[0, 90, 180])
            args["--ground-truth"] = str(tmp_path / "gt2")
        case "different_views":
            make_render(tmp_path / "gt2", object_frames(2, SOURCE), source_indices=SOURCE, azimuths=[45.0, 135.0])
            args["--ground-truth"] = str(tmp_path / "gt2")
        case "other_subject":
            make_render(tmp_path / "gt2", object_frames(2, SOURCE), source_indices=SOURCE, subject="dog")
            args["--ground-truth"] = str(tmp_path / "gt2")
        case "wrong_image_size":
            from stages.common.image_io import write_rgba

            write_rgba(pred / "v01" / "rgba_00002.png", np.zeros((20, 20, 4), np.uint8))
        case "not_a_prediction":
            args["--prediction"] = str(gt)
        case "ground_truth_not_render":
            args["--ground-truth"] = str(pred)
        case "missing_prediction":
            args["--prediction"] = str(tmp_path / "nope")
        case "broken_weights":
            (tmp_path / "w" / "i3d").mkdir(parents=True)
            (tmp_path / "w" / "i3d" / "i3d_pretrained_400.pt").write_bytes(b"not a checkpoint")
            args["--weights"] = str(tmp_path / "w")
        case "unknown_config_key":
            (tmp_path / "c.yaml").write_text(yaml.safe_dump({"image_size": 512}))
            args["--config"] = str(tmp_path / "c.yaml")
    return [x for kv in args.items() for x in kv]


BAD_INPUTS = {
    "gt_lacks_frames": r"input frames \[6, 9\] that the ground truth does not have",
    "different_views": "prediction view 0 .* has no ground-truth view within 1°",
    "other_subject": "prediction is of subject 'tiny', ground truth of 'dog'",
    "wrong_image_size": "rgba_00002.png: 20x20 px, but the manifest says the mvgen views are 32x32 px",
    "not_a_prediction": "a render artifact .* holds no predicted views",
    "ground_truth_not_render": "schema_id is 'fourd.mvgen/v1', expected 'fourd.render/v1'",
    "missing_prediction": "has no manifest.json",
    "broken_weights": "i3d_pretrained_400.pt: not a readable state dict",
    "unknown_config_key": "unknown key 'image_size'",
}


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_input_is_one_clear_error_and_writes_nothing(kind, tmp_path, capsys, tiny_weights):
    args = make_bad_input(kind, tmp_path, tiny_weights)
    out = tmp_path / "out"
    rc, err = cli([*args, "--output", str(out)], capsys)
    assert rc == 1
    assert sum(line.startswith("error:") for line in err) == 1 and err[-1].startswith("error: ")
    assert re.search(BAD_INPUTS[kind], err[-1]), err[-1]
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "staging left behind"


def test_module_cli_runs(tmp_path):
    """`python -m stages.eval` as DVC will call it (no weights: the weight-free metrics only)."""
    pred, gt = make_pair(tmp_path)
    cmd = [sys.executable, "-m", "stages.eval", "--config", "configs/tiny/eval.yaml", "--prediction", str(pred)]
    cmd += ["--ground-truth", str(gt), "--output", str(tmp_path / "out")]
    env = {**os.environ, "FOURD_TRACKING": "off"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "skipped" in proc.stderr and EvalManifest.load(tmp_path / "out").metrics["ssim"] == pytest.approx(1.0)


def test_report_renders_in_headless_chromium(perfect_run, tmp_path):
    """A real browser draws the page (skipped where no Chromium is installed, e.g. `apt-get install chromium`)."""
    import shutil

    from PIL import Image

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no headless Chromium on this machine")
    _, out = perfect_run
    shot = tmp_path / "report.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}", "--window-size=1000,1400"]
    proc = subprocess.run([*cmd, (out / "report.html").as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (1400, 1000) and (pixels < 128).mean() > 0.005  # text and tables, not a blank page
