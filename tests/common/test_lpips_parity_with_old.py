"""The shared LPIPS-VGG (stages.common.lpips) against the two implementations it replaces, bit for bit.

Temporary: this file goes with the old modules (stages/eval/metrics/lpips.py's network, stages/distill/lpips.py).
"""

from __future__ import annotations

import pytest
import torch

from stages.common.lpips import load_lpips_vgg
from stages.distill.lpips import load_lpips_vgg as old_distill_load
from stages.eval.metrics.lpips import load_lpips as old_eval_load
from tests.distill.tiny import write_tiny_lpips
from tests.eval.builders import write_tiny_weights


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_eval_call_site_numbers_are_unchanged(tmp_path, dtype):
    write_tiny_weights(tmp_path, metrics=("lpips",))  # full-width random VGG16, random non-negative heads
    old = old_eval_load(tmp_path).to(dtype)
    new = load_lpips_vgg(tmp_path / "lpips", input_range="minus_one_to_one", channel_norm="torchmetrics").to(dtype)
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 48, 48, generator=g, dtype=dtype) * 2 - 1
    b = (a + 0.3 * torch.randn(3, 3, 48, 48, generator=g, dtype=dtype)).clamp(-1, 1)
    with torch.no_grad():
        want, got = old(a, b), new(a, b)
    assert want.shape == got.shape == (3,) and (want > 0).all()
    assert torch.equal(got, want)


@pytest.mark.parametrize("full_width", [False, True])
def test_distill_call_site_numbers_and_gradients_are_unchanged(tmp_path, full_width):
    if full_width:
        from stages.distill.lpips import LPIPS_FILES, LPIPSVGG

        torch.manual_seed(3)
        vgg = LPIPSVGG()
        torch.save({f"features.{k}": v for k, v in vgg.features.state_dict().items()}, tmp_path / LPIPS_FILES[0])
        heads = {f"lin{i}.model.1.weight": h.weight.abs() for i, h in enumerate(vgg.lin)}
        torch.save(heads, tmp_path / LPIPS_FILES[1])
        folder = tmp_path
    else:
        folder = write_tiny_lpips(tmp_path, seed=5)
    old = old_distill_load(folder)
    new = load_lpips_vgg(folder, input_range="zero_to_one_unscaled", channel_norm="lpips", widths=None)
    g = torch.Generator().manual_seed(1)
    target = torch.rand(2, 3, 40, 40, generator=g)
    render_old = torch.rand(2, 3, 40, 40, generator=g).requires_grad_(True)
    render_new = render_old.detach().clone().requires_grad_(True)
    want, got = old(render_old, target), new(render_new, target).mean()
    assert want > 0 and torch.equal(got, want)
    want.backward()
    got.backward()
    assert render_old.grad.abs().sum() > 0 and torch.equal(render_new.grad, render_old.grad)
