from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stages.common.errors import StageError
from stages.preprocess.config import MattingConfig
from stages.preprocess.matting import matte_frames, rembg_model_file
from tests.synthetic import disc_frames


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("grabcut_iterations", [0, 3])
def test_border_backend_recovers_a_disc_on_a_plain_background(grabcut_iterations):
    frames, alphas = disc_frames(3, 120, 90, radius=16)
    rng = np.random.default_rng(0)
    noisy = [np.clip(f.astype(int) + rng.integers(-4, 5, f.shape), 0, 255).astype(np.uint8) for f in frames]
    got = matte_frames(
        noisy, MattingConfig(grabcut_iterations=grabcut_iterations, work_size_px=64), seed=0, weights_dir=None
    )
    for a, truth in zip(got, alphas, strict=True):
        assert a.shape == truth.shape and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
        assert iou(a > 0.5, truth > 0) > 0.9


def test_border_backend_fills_holes_and_drops_specks():
    frames, alphas = disc_frames(1, 120, 90, radius=20)
    img = frames[0].copy()
    truth = alphas[0] > 0
    cy, cx = [int(v.mean()) for v in np.nonzero(truth)]
    img[cy - 3 : cy + 3, cx - 3 : cx + 3] = frames[0][0, 0]  # background-coloured hole inside the object
    img[5:7, 100:102] = (255, 255, 255)  # a speck far away
    got = matte_frames([img], MattingConfig(grabcut_iterations=0), seed=0, weights_dir=None)[0] > 0.5
    assert got[cy, cx] and not got[6, 101]
    assert iou(got, truth) > 0.95


def test_border_backend_is_deterministic_for_a_seed():
    frames, _ = disc_frames(2, 80, 60, radius=12)
    cfg = MattingConfig(grabcut_iterations=2)
    a = matte_frames(frames, cfg, seed=3, weights_dir=None)
    b = matte_frames(frames, cfg, seed=3, weights_dir=None)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_rembg_missing_model_says_which_file_where(tmp_path):
    frames, _ = disc_frames(1, 32, 32)
    with pytest.raises(StageError) as exc:
        matte_frames(frames, MattingConfig(backend="rembg"), seed=0, weights_dir=tmp_path / "w")
    msg = str(exc.value)
    assert str(tmp_path / "w" / "u2net.onnx") in msg and "u2net.onnx" in msg and "download" in msg
    assert rembg_model_file("u2netp", None) == Path("weights/rembg/u2netp.onnx")


def make_tiny_u2net_onnx(path: Path) -> None:
    """An ONNX graph with U^2-Net's interface (1×3×320×320 in, 1×1×320×320 saliency first out).

    Its "saliency" is the normalised red channel minus the blue one: a real model file rembg loads and runs.
    """
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    starts = helper.make_tensor("s", TensorProto.INT64, [1], [0])
    ends = helper.make_tensor("e", TensorProto.INT64, [1], [1])
    starts2 = helper.make_tensor("s2", TensorProto.INT64, [1], [2])
    ends2 = helper.make_tensor("e2", TensorProto.INT64, [1], [3])
    axes = helper.make_tensor("ax", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("Slice", ["input.1", "s", "e", "ax"], ["red"]),
        helper.make_node("Slice", ["input.1", "s2", "e2", "ax"], ["blue"]),
        helper.make_node("Sub", ["red", "blue"], ["d1"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_u2net",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 320, 320])],
        [helper.make_tensor_value_info("d1", TensorProto.FLOAT, [1, 1, 320, 320])],
        initializer=[starts, ends, starts2, ends2, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_rembg_backend_runs_a_local_model_file(tmp_path):
    pytest.importorskip("rembg")
    make_tiny_u2net_onnx(tmp_path / "u2net.onnx")
    frames, alphas = disc_frames(2, 96, 72, radius=14)
    got = matte_frames(frames, MattingConfig(backend="rembg"), seed=0, weights_dir=tmp_path)
    for a, truth in zip(got, alphas, strict=True):
        assert a.shape == truth.shape
        assert iou(a > 0.5, truth > 0) > 0.85


def test_rembg_corrupt_model_is_a_clear_error(tmp_path):
    pytest.importorskip("rembg")
    (tmp_path / "u2net.onnx").write_bytes(b"not an onnx file")
    frames, _ = disc_frames(1, 32, 32)
    with pytest.raises(StageError, match="cannot load rembg model"):
        matte_frames(frames, MattingConfig(backend="rembg"), seed=0, weights_dir=tmp_path)
