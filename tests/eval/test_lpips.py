"""Eval's LPIPS-VGG: known answers, agreement with torchmetrics' maintained LPIPS, missing vs wrong weights.

torchvision cannot be installed beside our torch wheel, so torchmetrics cannot build its own VGG16 here. The
reference test hands torchmetrics our VGG16 `features` (same random weights) in place of
`torchvision.models.vgg16().features`; everything else (input scaling, the slices at torchvision's indices,
channel normalisation, the real learned heads it ships as `lpips_models/vgg.pth`, spatial mean, sum over
layers) is torchmetrics' code. The backbone's layout is pinned against torchvision's key names in
tests/common/test_lpips.py.
"""

from __future__ import annotations

import copy
import os
import shutil

import pytest
import torch

from stages.common.errors import StageError
from stages.common.lpips import VGG16Features
from stages.eval.metrics.lpips import load_lpips
from stages.eval.metrics.weights import MissingWeights


def test_identical_images_give_zero(tiny_weights):
    model = load_lpips(tiny_weights)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(model(x, x.clone()), torch.zeros(2), atol=1e-7)
        assert (model(x, -x) > 0).all()


def _torchmetrics_heads_file() -> str:
    tm = pytest.importorskip("torchmetrics")
    path = os.path.join(os.path.dirname(tm.__file__), "functional", "image", "lpips_models", "vgg.pth")
    if not os.path.isfile(path):
        pytest.skip("this torchmetrics ships no lpips_models/vgg.pth")
    return path


def test_matches_torchmetrics_lpips_with_the_real_learned_heads(tmp_path, monkeypatch):
    heads = _torchmetrics_heads_file()
    import torchmetrics.functional.image.lpips as tm_lpips

    # Our weights folder: a random VGG16 backbone in torchvision's file layout + the real v0.1 heads.
    torch.manual_seed(0)
    backbone = VGG16Features()
    (tmp_path / "lpips").mkdir()
    torch.save(backbone.state_dict(), tmp_path / "lpips" / "vgg16-397923af.pth")
    shutil.copy(heads, tmp_path / "lpips" / "vgg.pth")
    ours = load_lpips(tmp_path)
    assert float(ours.lin3.model[1].weight.abs().sum()) > 0  # the learned heads were loaded

    # torchmetrics' LPIPS with the same backbone standing in for torchvision's (module docstring).
    monkeypatch.setattr(
        tm_lpips, "_get_tv_model_features", lambda net, pretrained=False: copy.deepcopy(backbone.features)
    )
    reference = tm_lpips._LPIPS(pretrained=True, net="vgg", model_path=heads).eval()

    g = torch.Generator().manual_seed(1)
    a = torch.rand(3, 3, 64, 64, generator=g) * 2 - 1
    b = (a + 0.3 * torch.randn(3, 3, 64, 64, generator=g)).clamp(-1, 1)
    with torch.no_grad():
        got, want = ours(a, b), reference(a, b).flatten()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert (got > 0).all()


def test_distance_is_a_weighted_sum_of_normalised_feature_differences(tiny_weights):
    """The math written out once more by hand, layer by layer (a check of the wiring, not of the numbers)."""
    model = load_lpips(tiny_weights)
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1, torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    scale = lambda x: (x - model.shift) / model.scale  # noqa: E731
    total = 0.0
    with torch.no_grad():
        for fa, fb, head in zip(model.net(scale(a)), model.net(scale(b)), model.heads, strict=True):
            na = fa / (fa.pow(2).sum(1, keepdim=True) + 1e-8).sqrt()
            nb = fb / (fb.pow(2).sum(1, keepdim=True) + 1e-8).sqrt()
            w = head.model[1].weight.view(1, -1, 1, 1)
            total += float(((na - nb) ** 2 * w).sum(1).mean())
        assert model(a, b).item() == pytest.approx(total, rel=1e-5)


def test_missing_files_raise_missing_weights(tmp_path):
    with pytest.raises(MissingWeights) as info:
        load_lpips(tmp_path)
    assert info.value.wanted == tmp_path / "lpips" / "vgg16-397923af.pth"
    with pytest.raises(MissingWeights, match="no --weights folder"):
        load_lpips(None)


def test_a_wrong_checkpoint_is_an_error_not_a_skip(tmp_path):
    (tmp_path / "lpips").mkdir()
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "lpips" / "vgg16-397923af.pth")
    heads = {f"lin{i}.model.1.weight": torch.ones(1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))}
    torch.save(heads, tmp_path / "lpips" / "vgg.pth")
    with pytest.raises(StageError, match="vgg16-397923af.pth: not the VGG16 backbone.*missing 25 keys"):
        load_lpips(tmp_path)
