from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from stages.common.errors import StageError
from stages.common.lpips import HEADS_FILE
from stages.distill.losses import (
    anchor_l1,
    anchor_loss,
    anchor_loss_terms,
    anchor_target,
    load_anchor_lpips,
    opaque_loss,
    sparsity_loss,
    ssim,
)
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


def test_anchor_target_composites_soft_edges_on_white_before_the_binary_mask():
    # Black pixels at alpha 255, 191 (0.75), 128 (0.502) and 127 (0.498): 4Diffusion's dataset composites on white
    # when it loads the frame, then training_step keeps pixels with alpha > 0.5 and whitens the rest.
    rgba = np.zeros((1, 4, 4), dtype=np.uint8)
    rgba[0, :, 3] = [255, 191, 128, 127]
    target = anchor_target(rgba)
    assert target.shape == (3, 1, 4) and target.dtype == torch.float32
    expected = torch.tensor([0.0, 1 - 191 / 255, 1 - 128 / 255, 1.0])
    torch.testing.assert_close(target[:, 0], expected.expand(3, 4), rtol=0, atol=1e-6)


def test_anchor_l1_known_answers():
    """L1 of identical images is 0; of a known difference its mean absolute value; weighted into the total."""
    torch.manual_seed(0)
    a = torch.rand(1, 3, 16, 16)
    assert float(anchor_l1(a, a)) == 0.0
    render = torch.full((1, 3, 16, 16), 0.25)
    target = render.clone()
    target[..., :8, :] = 0.75  # half the pixels differ by 0.5, the other half by 0
    assert float(anchor_l1(render, target)) == pytest.approx(0.25, abs=1e-7)
    total, parts = anchor_loss_terms(render, target, None, lpips_weight=0.0, dssim_weight=100.0, l1_weight=8.0)
    assert float(parts["anchor_l1"]) == pytest.approx(0.25, abs=1e-7)
    assert parts["anchor_l1"].ndim == 0 and not parts["anchor_l1"].requires_grad  # detached 0-d, no host sync
    dssim = float(1.0 - ssim(render, target))
    assert float(total) == pytest.approx(100.0 * dssim + 8.0 * 0.25, rel=1e-6)
    same, parts = anchor_loss_terms(target, target, None, lpips_weight=0.0, dssim_weight=100.0, l1_weight=8.0)
    assert float(parts["anchor_l1"]) == 0.0 and float(same) == pytest.approx(0.0, abs=1e-5)


def test_anchor_l1_weight_zero_is_the_papers_loss_exactly(tmp_path):
    """l1_weight 0: the same total and the same gradients, bit for bit, as λ1·LPIPS + λ2·D-SSIM; no anchor_l1 log."""
    lpips = load_anchor_lpips(write_tiny_lpips(tmp_path))
    torch.manual_seed(1)
    target = torch.rand(1, 3, 32, 32)
    for lpips_weight in (0.0, 200.0):
        render = torch.rand(1, 3, 32, 32, requires_grad=True)
        total, parts = anchor_loss_terms(
            render, target, lpips, lpips_weight=lpips_weight, dssim_weight=100.0, l1_weight=0.0
        )
        (grad,) = torch.autograd.grad(total, render)
        reference = 100.0 * (1.0 - ssim(render, target))
        if lpips_weight > 0:
            reference = lpips_weight * lpips(render, target).mean() + reference
        (ref_grad,) = torch.autograd.grad(reference, render)
        assert torch.equal(total, reference) and torch.equal(grad, ref_grad)
        assert "anchor_l1" not in parts
        if lpips_weight > 0:
            _, floats = anchor_loss(render, target, lpips, lpips_weight=lpips_weight, dssim_weight=100.0)
            assert "anchor_l1" not in floats


def test_anchor_l1_gradient_reaches_the_render():
    """d(λ·mean|r − t|)/dr = λ·sign(r − t)/numel, in both anchor loss functions."""
    torch.manual_seed(2)
    target = torch.rand(1, 3, 8, 8)
    render = (target + torch.where(torch.rand(1, 3, 8, 8) > 0.5, 0.1, -0.1)).requires_grad_(True)
    total, _ = anchor_loss_terms(render, target, None, lpips_weight=0.0, dssim_weight=0.0, l1_weight=3.0)
    (grad,) = torch.autograd.grad(total, render)
    expected = 3.0 * torch.sign(render.detach() - target) / render.numel()
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-9)
    with_l1, _ = anchor_loss_terms(render, target, None, lpips_weight=0.0, dssim_weight=100.0, l1_weight=3.0)
    without, _ = anchor_loss_terms(render, target, None, lpips_weight=0.0, dssim_weight=100.0)
    (g_with,) = torch.autograd.grad(with_l1, render)
    (g_without,) = torch.autograd.grad(without, render)
    torch.testing.assert_close(g_with - g_without, expected, rtol=0, atol=1e-7)


def test_anchor_loss_reports_the_l1_term(tmp_path):
    lpips = load_anchor_lpips(write_tiny_lpips(tmp_path))
    torch.manual_seed(3)
    a, b = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    total, parts = anchor_loss(b, a, lpips, lpips_weight=200.0, dssim_weight=100.0, l1_weight=5.0)
    assert parts["anchor_l1"] == pytest.approx(float((b - a).abs().mean()), rel=1e-6)
    expected = 200 * parts["anchor_lpips"] + 100 * parts["anchor_dssim"] + 5 * parts["anchor_l1"]
    assert float(total) == pytest.approx(expected, rel=1e-5)


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
