"""FVD: the Fréchet distance against closed forms, the Consistent4D variant against its script's numpy-1.x
arithmetic, and I3D (layout of `i3d_pretrained_400.pt`, set vs itself ≈ 0, growing with a shift)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.common.errors import StageError
from stages.eval.metrics.fvd import (
    compute_fvd,
    compute_fvd_consistent4d,
    compute_i3d_features,
    frechet_distance,
    load_i3d,
    prepare_clip,
)
from stages.eval.metrics.inception_i3d import InceptionI3d
from stages.eval.metrics.weights import MissingWeights

CPU = torch.device("cpu")


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    var1, var2 = rng.uniform(0.1, 2, 6), rng.uniform(0.1, 2, 6)
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(var1) - np.sqrt(var2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(want, rel=1e-10)


def test_frechet_distance_of_full_covariances_matches_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    covmean = linalg.sqrtm(s1 @ s2).real
    want = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-8)


def test_fvd_of_a_set_against_itself_is_zero_and_grows_with_a_shift():
    features = np.random.default_rng(2).normal(size=(4, 400))  # 4 clips: a rank-3 covariance in 400-d
    assert compute_fvd(features, features.copy()) == pytest.approx(0.0, abs=1e-6)
    values = [compute_fvd(features + delta, features) for delta in (0.1, 0.5, 1.0)]
    # Equal covariances: only the mean term is left, ‖δ·1‖² = 400 δ².
    np.testing.assert_allclose(values, [400 * 0.01, 400 * 0.25, 400 * 1.0], rtol=1e-6)


def test_fvd_needs_two_clips_a_side():
    with pytest.raises(ValueError, match="at least two clips"):
        compute_fvd(np.zeros((1, 400)), np.zeros((3, 400)))


def test_consistent4d_variant_equals_its_scripts_numpy1_arithmetic():
    """Their `fid_from_feats` on one (1, 400) row: numpy 1.x `np.cov(x, rowvar=False)` kept the single row as one
    variable with 400 observations, a scalar variance (ddof 1); `frechet_distance` then runs on 1×1 matrices."""
    rng = np.random.default_rng(3)
    pred, gt = rng.normal(size=(4, 400)), rng.normal(0.3, 1.5, size=(4, 400))
    mean, per_view = compute_fvd_consistent4d(pred, gt)
    script = []
    for p, g in zip(pred, gt, strict=True):
        var_p, var_g = np.var(p, ddof=1), np.var(g, ddof=1)  # what numpy 1.x np.cov returned for the (1, 400) row
        script.append(frechet_distance(p, np.atleast_2d(var_p), g, np.atleast_2d(var_g)))
    np.testing.assert_allclose(per_view, script, rtol=1e-10)
    assert mean == pytest.approx(np.mean(script))
    assert compute_fvd_consistent4d(pred, pred.copy())[0] == pytest.approx(0.0, abs=1e-9)


def test_i3d_has_the_layout_of_i3d_pretrained_400():
    state = InceptionI3d().state_dict()
    assert len(state) == 344
    assert sum(v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked")) == 12_697_264 + 2 * sum(
        v.numel() for k, v in state.items() if k.endswith("running_mean")
    )
    for key, shape in {
        "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
        "Conv3d_2c_3x3.bn.running_var": (192,),
        "Mixed_3b.b1b.conv3d.weight": (128, 96, 3, 3, 3),
        "Mixed_4f.b3b.conv3d.weight": (128, 528, 1, 1, 1),
        "Mixed_5c.b0.conv3d.weight": (384, 832, 1, 1, 1),
        "logits.conv3d.weight": (400, 1024, 1, 1, 1),
        "logits.conv3d.bias": (400,),
    }.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(".b3a." in k for k in state)


def test_prepare_clip_stretches_short_clips_and_scales_to_unit_range():
    frames = np.random.default_rng(4).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    clip = prepare_clip(frames, 224, 16)
    assert clip.shape == (3, 16, 224, 224) and clip.dtype == torch.float32
    torch.testing.assert_close(clip[:, 0], clip[:, 1])  # each frame twice in a row
    assert not torch.equal(clip[:, 1], clip[:, 2])
    assert prepare_clip(frames, 224, 8).shape[1] == 8
    white, black = np.full((9, 32, 32, 3), 255, np.uint8), np.zeros((9, 32, 32, 3), np.uint8)
    torch.testing.assert_close(prepare_clip(white, 224, 9), torch.ones(3, 9, 224, 224))
    torch.testing.assert_close(prepare_clip(black, 224, 9), -torch.ones(3, 9, 224, 224))


def test_i3d_refuses_clips_it_cannot_pool():
    with pytest.raises(ValueError, match="≥ 9 frames"):
        InceptionI3d()(torch.zeros(1, 3, 8, 224, 224))


def test_fvd_through_i3d_is_zero_for_equal_videos_and_grows_with_a_shift(tiny_weights):
    model = load_i3d(tiny_weights)
    rng = np.random.default_rng(5)
    base = [rng.integers(60, 200, (9, 193, 193, 3), dtype=np.uint8) for _ in range(2)]
    feats = compute_i3d_features(model, [prepare_clip(v, 193, 9) for v in base], CPU)
    assert feats.shape == (2, 400) and feats.dtype == np.float64
    assert compute_fvd(feats, feats.copy()) == pytest.approx(0.0, abs=1e-6)
    # A brightness shift moves the features (the exact growth with a feature shift is tested above).
    shifted = [np.clip(v.astype(int) + 40, 0, 255).astype(np.uint8) for v in base]
    feats_shifted = compute_i3d_features(model, [prepare_clip(v, 193, 9) for v in shifted], CPU)
    assert compute_fvd(feats_shifted, feats) > 0.01 and compute_fvd_consistent4d(feats_shifted, feats)[0] > 0.01


def test_load_i3d_missing_and_wrong_files(tmp_path):
    with pytest.raises(MissingWeights) as info:
        load_i3d(tmp_path)
    assert info.value.wanted == tmp_path / "i3d" / "i3d_pretrained_400.pt"
    (tmp_path / "i3d").mkdir()
    state = InceptionI3d(num_classes=600).state_dict()  # the Kinetics-600 checkpoint is another network
    torch.save(state, tmp_path / "i3d" / "i3d_pretrained_400.pt")
    with pytest.raises(StageError, match="shape mismatches, e.g. logits.conv3d"):
        load_i3d(tmp_path)
