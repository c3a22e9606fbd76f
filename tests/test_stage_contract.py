"""The stage contract, for every implemented stage: a tiny run gives a manifest that validates, whose files
exist, whose config.yaml round-trips, and a second run with the same seed gives byte-identical files."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from stages.common.artifacts import CONFIG_FILE, MANIFEST_FILE, Manifest
from stages.common.config import StageConfig, config_sha256, load_config
from tests.synthetic import disc_frames, write_video

REPO = Path(__file__).resolve().parents[1]


def run_preprocess(tmp: Path, output_dir: Path) -> tuple[Manifest, type[Manifest], StageConfig]:
    from stages.common.artifacts import PreprocessManifest
    from stages.preprocess import PreprocessConfig, run

    video = tmp / "tiny.mp4"
    if not video.exists():
        frames, _ = disc_frames(12, 80, 60, radius=9)
        write_video(video, frames, fps=12)
    config = load_config(PreprocessConfig, REPO / "configs/tiny/preprocess.yaml")
    return run(config, input_path=video, output_dir=output_dir, subject="tiny"), PreprocessManifest, config


def run_mvgen(tmp: Path, output_dir: Path) -> tuple[Manifest, type[Manifest], StageConfig]:
    from stages.common.artifacts import MvgenManifest
    from stages.mvgen import MvgenConfig, run
    from stages.preprocess import PreprocessConfig
    from stages.preprocess import run as preprocess
    from tests.mvgen.tiny import IMAGE_PX, tiny_pipeline

    if not (tmp / "weights").exists():
        tiny_pipeline(tmp).save_pretrained(tmp / "weights")
        frames, _ = disc_frames(12, 80, 60, radius=9)
        write_video(tmp / "mv.mp4", frames, fps=12)
        cfg = load_config(PreprocessConfig, REPO / "configs/tiny/preprocess.yaml").model_copy(
            update={"size_px": IMAGE_PX}
        )
        preprocess(cfg, input_path=tmp / "mv.mp4", output_dir=tmp / "pre", subject="tiny")
    config = load_config(MvgenConfig, REPO / "configs/tiny/mvgen.yaml")
    return (
        run(config, input_dir=tmp / "pre", weights_dir=tmp / "weights", output_dir=output_dir),
        MvgenManifest,
        config,
    )


def run_distill(tmp: Path, output_dir: Path) -> tuple[Manifest, type[Manifest], StageConfig]:
    from stages.common.artifacts import DistillManifest
    from stages.distill import DistillConfig, run
    from tests.distill.tiny import make_upstream

    root = tmp / "distill_upstream"
    if not root.exists():
        root.mkdir()
        make_upstream(root)
    config = load_config(DistillConfig, REPO / "configs/tiny/distill.yaml")
    manifest = run(
        config,
        input_dir=root / "mvgen",
        preprocess_dir=root / "pre",
        weights_dir=root / "weights",
        lpips_dir=root / "lpips",
        output_dir=output_dir,
    )
    return manifest, DistillManifest, config


def run_eval(tmp: Path, output_dir: Path) -> tuple[Manifest, type[Manifest], StageConfig]:
    from stages.eval import EvalConfig, EvalManifest, run
    from tests.eval.builders import make_mvgen, make_render, object_frames

    if not (tmp / "eval_prediction").exists():
        source = [0, 3, 6, 9]
        images = object_frames(4, source)
        make_mvgen(tmp / "eval_prediction", images, source_indices=source)
        make_render(tmp / "eval_ground_truth", images, source_indices=source)
    config = load_config(EvalConfig, REPO / "configs/tiny/eval.yaml")
    manifest = run(
        config,
        prediction_dir=tmp / "eval_prediction",
        ground_truth_dir=tmp / "eval_ground_truth",
        output_dir=output_dir,
    )
    return manifest, EvalManifest, config


def run_render(tmp: Path, output_dir: Path) -> tuple[Manifest, type[Manifest], StageConfig]:
    pytest.importorskip("bpy")  # the render venv only (stages/render/requirements.txt)
    from stages.common.artifacts import RenderManifest
    from stages.render import RenderConfig, run
    from tests.render.gltf_assets import write_box_gltf

    asset = tmp / "box.gltf"
    if not asset.exists():
        write_box_gltf(asset, keyframes=[(0.0, (0.0, 0.0, -0.5)), (1.0, (0.3, 0.2, 0.5))])
    config = load_config(RenderConfig, REPO / "configs/tiny/render.yaml")
    return run(config, input_path=asset, output_dir=output_dir, subject="tiny"), RenderManifest, config


TinyRun = Callable[[Path, Path], tuple[Manifest, type[Manifest], StageConfig]]
TINY_RUNS: dict[str, TinyRun] = {
    "preprocess": run_preprocess,
    "render": run_render,
    "mvgen": run_mvgen,
    "distill": run_distill,
    "eval": run_eval,
}


def hashes(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("stage", sorted(TINY_RUNS))
def test_stage_contract(stage, tmp_path):
    manifest, cls, config = TINY_RUNS[stage](tmp_path, tmp_path / "a")
    loaded = cls.load(tmp_path / "a")
    assert loaded == manifest and loaded.stage == stage and loaded.schema_id.startswith(f"fourd.{stage}/v")
    listed = set(loaded.files) | {MANIFEST_FILE}
    assert listed == set(hashes(tmp_path / "a")), "every file is listed, and nothing else is there"
    assert CONFIG_FILE in loaded.files
    assert load_config(type(config), tmp_path / "a" / CONFIG_FILE) == config
    assert loaded.config_sha256 == config_sha256(config)
    TINY_RUNS[stage](tmp_path, tmp_path / "b")
    assert hashes(tmp_path / "a") == hashes(tmp_path / "b")


def test_every_implemented_stage_has_a_contract_test():
    from tests.test_repo_consistency import IMPLEMENTED

    assert set(IMPLEMENTED) == set(TINY_RUNS)
