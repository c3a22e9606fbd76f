"""benchmarks/train_scaling.py end to end on CPU processes (gloo): the script's plumbing, not its timings."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from tests.mvgen.test_training import make_training_render
from tests.mvgen.tiny import IMAGE_PX, tiny_pipeline

REPO = Path(__file__).resolve().parents[2]


def test_train_scaling_smoke_on_cpu(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("train_scaling", REPO / "benchmarks/train_scaling.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tiny_pipeline(tmp_path).save_pretrained(tmp_path / "weights")
    make_training_render(tmp_path / "data")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "scaling.json"
    sets = [f"size_px={IMAGE_PX}", "num_frames=3", "frame_stride=2", "batch_size=2"]
    argv = ["--cpu", "--cases", "demo", "--gpus", "1", "2", "--steps", "2", "--data", str(tmp_path / "data")]
    argv += ["--demo-weights", str(tmp_path / "weights"), "--work", str(tmp_path / "work"), "--json", str(out)]
    for s in sets:
        argv += ["--set", s]
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    demo = result["cases"]["demo"]
    one, two = demo["runs"]
    assert demo["overrides"]["batch_size"] == demo["config"]["batch_size"] == 2  # the JSON says what ran
    assert (one["gpus"], one["accumulation"], two["gpus"], two["accumulation"]) == (1, 2, 2, 1)
    assert len(one["losses"]) == len(two["losses"]) == 2 and one["clips_per_s"] > 0
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)  # same global batches
    assert demo["loss_curve"]["1_vs_2"]["max_abs_diff"] < 1e-4
    assert demo["speedup"]["1_vs_2"] > 0 and "1_vs_2" in demo["scaling_efficiency"]
