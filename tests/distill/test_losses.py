from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from stages.common.errors import StageError
from stages.common.lpips import HEADS_FILE
from stages.distill.losses import anchor_loss, opaque_loss, sparsity_loss, ssim
from stages.distill.run import load_anchor_lpips
from stages.distill.schedules import LinearSchedule, ResolutionSchedule
from tests.distill.tiny import TINY_VGG_WIDTHS, write_tiny_lpips


def test_ssim_map_matches_skimage_gaussian_ssim_away_from_the_border():
    rng = np.random.default_rng(0)
    a = rng.random((3, 40, 40))
    b = np.clip(a + 0.2 * rng.standard_normal(a.shape), 0, 1)
    ours = ssim(torch.tensor(a[None], dtype=torch.float64), torch.tensor(b[None], dtype=torch.float64), full=True)[0]
    for c in range(3):
        _, ref = structural_similarity(
            a[c], b[c], data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, full=True
        )
        # 3DGS zero-pads, skimage reflects: only the 5-pixel border differs.
        np.testing.assert_allclose(ours[c, 5:-5, 5:-5].numpy(), ref[5:-5, 5:-5], rtol=0, atol=1e-10)
    assert float(ssim(torch.tensor(a[None]), torch.tensor(a[None]))) == pytest.approx(1.0)


def test_anchor_loss_weights_lpips_and_dssim(tmp_path):
    lpips = load_anchor_lpips(write_tiny_lpips(tmp_path))
    torch.manual_seed(0)
    a, b = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32, requires_grad=True)
    total, parts = anchor_loss(b, a, lpips, lpips_weight=200.0, dssim_weight=100.0)
    assert float(total.detach()) == pytest.approx(200 * parts["anchor_lpips"] + 100 * parts["anchor_dssim"], rel=1e-5)
    total.backward()
    assert b.grad is not None and b.grad.abs().sum() > 0
    same, parts = anchor_loss(a, a, lpips, lpips_weight=200.0, dssim_weight=100.0)
    assert parts["anchor_lpips"] == pytest.approx(0.0, abs=1e-7) and float(same) == pytest.approx(0.0, abs=1e-5)


def test_lpips_reads_the_backbone_width_from_the_file_and_names_missing_or_wrong_files(tmp_path):
    model = load_anchor_lpips(write_tiny_lpips(tmp_path / "ok"))
    assert [m.out_channels for m in model.net.features if isinstance(m, torch.nn.Conv2d)] == list(TINY_VGG_WIDTHS)
    with pytest.raises(StageError, match="LPIPS weights not found: .*vgg16-397923af.pth"):
        load_anchor_lpips(tmp_path / "absent")
    broken = write_tiny_lpips(tmp_path / "broken")
    torch.save({"lin0.model.1.weight": torch.ones(1, 3, 1, 1)}, broken / HEADS_FILE)
    with pytest.raises(StageError, match="vgg.pth: not the LPIPS heads"):
        load_anchor_lpips(broken)


def test_opacity_regularisers():
    o = torch.tensor([0.0, 0.5, 1.0])
    assert float(sparsity_loss(o)) == pytest.approx(float(np.mean(np.sqrt(np.array([0, 0.25, 1]) + 0.01))))
    entropy = -(0.5 * np.log(0.5) * 2)
    ends = -(1e-3 * np.log(1e-3) + (1 - 1e-3) * np.log(1 - 1e-3))
    assert float(opaque_loss(o)) == pytest.approx((entropy + 2 * ends) / 3, rel=1e-5)


def test_schedules_match_threestudio_semantics():
    orient = LinearSchedule(start_step=0, end_step=5000, start_value=10.0, end_value=1000.0)  # [0, 10, 1000, 5000]
    assert [orient(s) for s in (0, 2500, 5000, 9000)] == [10.0, 505.0, 1000.0, 1000.0]
    opaque = LinearSchedule(start_step=10000, end_step=10001, start_value=0.0, end_value=100.0)
    assert [opaque(s) for s in (0, 10000, 10001)] == [0.0, 0.0, 100.0]
    assert LinearSchedule.constant(100.0)(123) == 100.0
    sizes = ResolutionSchedule()
    assert [sizes(s) for s in (0, 4999, 5000, 9999, 10000, 35000)] == [64, 64, 192, 192, 256, 256]
    with pytest.raises(ValueError):
        ResolutionSchedule(milestones=[5000], sizes_px=[64])
    with pytest.raises(ValueError):
        LinearSchedule(start_step=10, end_step=5, start_value=0.0, end_value=1.0)
