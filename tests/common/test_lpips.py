"""The shared LPIPS-VGG: torchvision's layout, both reference normalisations, the input range, the one loader.

Agreement with torchmetrics (eval's setting) is tests/eval/test_lpips.py; the anchor loss's use is
tests/distill/test_losses.py. Narrow random VGGs keep these fast.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stages.common.errors import StageError
from stages.common.lpips import (
    BACKBONE_FILE,
    HEADS_FILE,
    LPIPSVGG,
    VGG16_WIDTHS,
    VGG16Features,
    load_lpips_vgg,
    save_lpips_vgg,
)

TINY = (4, 4, 6, 6, 8, 8, 8, 8, 8, 8, 8, 8, 8)

# torchvision.models.vgg16().features: (index, in, out) of each 3×3 conv; ReLU after each, max-pools at 4, 9, 16,
# 23, 30 (torchvision/models/vgg.py cfgs["D"]).
TORCHVISION_VGG16_CONVS = [
    (0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256),
    (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512), (28, 512, 512),
]  # fmt: skip


def tiny_lpips(seed: int = 0, **kwargs) -> LPIPSVGG:
    """A narrow random LPIPS-VGG with non-negative heads (as trained heads are)."""
    torch.manual_seed(seed)
    model = LPIPSVGG(widths=kwargs.pop("widths", TINY), **kwargs)
    for head in model.heads:
        head.model[1].weight.abs_()
    return model


def images(seed: int, n: int = 2, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, 3, size, size, generator=g)
    return a, (a + 0.3 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)


def test_vgg16_features_have_torchvision_keys_and_shapes():
    expected = {}
    for i, cin, cout in TORCHVISION_VGG16_CONVS:
        expected[f"features.{i}.weight"] = (cout, cin, 3, 3)
        expected[f"features.{i}.bias"] = (cout,)
    net = VGG16Features()
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == expected
    assert len(net.features) == 31
    assert [type(net.features[i]).__name__ for i in (4, 9, 16, 23, 30)] == ["MaxPool2d"] * 5
    assert net.taps == [3, 8, 15, 22, 29]  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
    narrow = VGG16Features(TINY)
    assert set(narrow.state_dict()) == set(expected) and narrow.tap_channels == (4, 6, 8, 8, 8)
    taps = narrow(torch.rand(1, 3, 32, 32))
    assert [tuple(t.shape[1:]) for t in taps] == [(4, 32, 32), (6, 16, 16), (8, 8, 8), (8, 4, 4), (8, 2, 2)]


def _reference(model: LPIPSVGG, a: torch.Tensor, b: torch.Tensor, norm) -> torch.Tensor:
    """LPIPS written out from the state dict with functional ops, in float64 (wiring and formula check)."""
    state = {k: v.double() for k, v in model.state_dict().items()}
    shift = torch.tensor([-0.030, -0.088, -0.188]).double().view(1, 3, 1, 1)  # LPIPS' constants, stored as float32
    scale = torch.tensor([0.458, 0.448, 0.450]).double().view(1, 3, 1, 1)
    convs = [i for i, _, _ in TORCHVISION_VGG16_CONVS]

    def taps(x):
        x, out = (x.double() - shift) / scale, []
        for i in convs:
            x = F.relu(F.conv2d(x, state[f"net.features.{i}.weight"], state[f"net.features.{i}.bias"], padding=1))
            if i + 1 in (3, 8, 15, 22, 29):  # the ReLU after conv i is a tap
                out.append(norm(x))
            if i + 2 in (4, 9, 16, 23):
                x = F.max_pool2d(x, 2)
        return out

    total = torch.zeros(a.shape[0], dtype=torch.float64)
    for layer, (ta, tb) in enumerate(zip(taps(a), taps(b), strict=True)):
        w = state[f"lin{layer}.model.1.weight"].view(1, -1, 1, 1)
        total += ((ta - tb) ** 2 * w).sum(1).mean(dim=(1, 2))
    return total


@pytest.mark.parametrize(
    ("channel_norm", "norm"),
    [
        ("lpips", lambda x: x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)),  # PerceptualSimilarity, lpipsPyTorch
        ("torchmetrics", lambda x: x / (x.pow(2).sum(1, keepdim=True) + 1e-8).sqrt()),
    ],
)
def test_each_channel_norm_is_its_reference_formula(channel_norm, norm):
    model = tiny_lpips(1, input_range="zero_to_one_unscaled", channel_norm=channel_norm).double()
    a, b = images(2)
    with torch.no_grad():
        got = model(a.double(), b.double())
    torch.testing.assert_close(got, _reference(model, a, b, norm), rtol=1e-10, atol=0)
    assert (got > 0).all()


def test_the_two_channel_norms_differ_where_taps_are_small():
    """Why channel_norm is a choice. Without biases the taps scale with the first convolution's weights; the
    `lpips` norm (eps outside the root) is then scale invariant down to tiny taps, torchmetrics' is not."""
    a, b = images(3)
    results = {}
    for channel_norm in ("lpips", "torchmetrics"):
        model = tiny_lpips(4, input_range="zero_to_one_unscaled", channel_norm=channel_norm)
        with torch.no_grad():
            for m in model.net.features:
                if isinstance(m, torch.nn.Conv2d):
                    m.bias.zero_()
            full = model(a, b)
            model.net.features[0].weight.mul_(1e-2)
            results[channel_norm] = full, model(a, b)
    lpips_full, lpips_small = results["lpips"]
    torchmetrics_full, torchmetrics_small = results["torchmetrics"]
    torch.testing.assert_close(lpips_small, lpips_full, rtol=1e-3, atol=0)  # measured: 2e-4
    assert ((torchmetrics_small - torchmetrics_full).abs() > 0.1 * torchmetrics_full).all()  # measured: 22 %
    assert ((torchmetrics_full - lpips_full).abs() > 0.01 * lpips_full).all()  # these taps are small already: 10 %


def test_zero_to_one_input_is_fed_unscaled_and_the_range_is_checked():
    signed = tiny_lpips(5, input_range="minus_one_to_one", channel_norm="lpips")
    unit = tiny_lpips(5, input_range="zero_to_one_unscaled", channel_norm="lpips")
    a, b = images(6)
    with torch.no_grad():
        assert torch.equal(unit(a, b), signed(a, b))  # spec §5.2: no rescaling to [-1, 1]
        assert not torch.allclose(unit(a, b), signed(a * 2 - 1, b * 2 - 1))
        unit(a, (b + 1e-6).clamp(max=1.0 + 1e-6))  # rounding just above 1 is accepted
        with pytest.raises(ValueError, match=r"zero_to_one_unscaled.*\(\[0, 1\]\) got values in \[-0\.99"):
            unit(a * 2 - 1, b)
        with pytest.raises(ValueError, match="minus_one_to_one"):
            signed(a * 3, b)
        with pytest.raises(ValueError, match="batches of one shape"):
            unit(a, b[:1])
    with pytest.raises(ValueError, match="input_range"):
        LPIPSVGG(input_range="zero_to_one", channel_norm="lpips")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="channel_norm"):
        LPIPSVGG(input_range="minus_one_to_one", channel_norm="l2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="13 convolutions"):
        LPIPSVGG(input_range="minus_one_to_one", channel_norm="lpips", widths=(4,) * 12)


def test_frozen_zero_for_identical_images_gradients_reach_the_images_only():
    model = tiny_lpips(7, input_range="zero_to_one_unscaled", channel_norm="lpips")
    a, b = images(8)
    assert torch.allclose(model(a, a.clone()), torch.zeros(2), atol=1e-7)
    render = b.clone().requires_grad_(True)
    model(render, a).sum().backward()
    assert render.grad is not None and render.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    with torch.no_grad():
        before = model(b, a)
        model.train()  # lpips' dropout slot is an identity: the mode changes nothing
        assert torch.equal(model(b, a), before)


def test_save_and_load_round_trip_with_the_files_widths(tmp_path):
    model = tiny_lpips(9, input_range="zero_to_one_unscaled", channel_norm="lpips")
    folder = save_lpips_vgg(model, tmp_path / "lpips")
    assert sorted(p.name for p in folder.iterdir()) == sorted([BACKBONE_FILE, HEADS_FILE])
    assert set(torch.load(folder / HEADS_FILE, weights_only=True)) == {f"lin{i}.model.1.weight" for i in range(5)}
    loaded = load_lpips_vgg(folder, input_range="zero_to_one_unscaled", channel_norm="lpips", widths=None)
    assert loaded.net.widths == TINY and not loaded.training
    a, b = images(10)
    with torch.no_grad():
        assert torch.equal(loaded(a, b), model(a, b))


def test_loader_accepts_torchvision_extras_and_a_state_dict_wrapper(tmp_path):
    folder = save_lpips_vgg(tiny_lpips(11, input_range="minus_one_to_one", channel_norm="torchmetrics"), tmp_path)
    backbone = torch.load(folder / BACKBONE_FILE, weights_only=True)
    torch.save({"state_dict": {**backbone, "classifier.0.weight": torch.zeros(4, 4)}}, folder / BACKBONE_FILE)
    model = load_lpips_vgg(folder, input_range="minus_one_to_one", channel_norm="torchmetrics", widths=TINY)
    assert torch.equal(model.net.features[0].weight, backbone["features.0.weight"])


def test_loader_names_missing_corrupt_and_wrong_files(tmp_path):
    kwargs = dict(input_range="minus_one_to_one", channel_norm="torchmetrics")
    with pytest.raises(StageError, match=f"LPIPS weights not found: .*{BACKBONE_FILE}.*download.pytorch.org"):
        load_lpips_vgg(tmp_path / "absent", **kwargs)
    folder = save_lpips_vgg(tiny_lpips(12, **kwargs), tmp_path / "tiny")

    # Narrow files where VGG16's widths are required: a shape mismatch naming the backbone file.
    with pytest.raises(StageError, match=f"{BACKBONE_FILE}: not the VGG16 backbone.*shape mismatches"):
        load_lpips_vgg(folder, **kwargs, widths=VGG16_WIDTHS)

    (folder / HEADS_FILE).write_bytes(b"not a torch file")
    with pytest.raises(StageError, match=f"{HEADS_FILE}: not a readable state dict"):
        load_lpips_vgg(folder, **kwargs, widths=None)
    torch.save({"lin0.model.1.weight": [1.0]}, folder / HEADS_FILE)
    with pytest.raises(StageError, match="expected a mapping of parameter names to tensors"):
        load_lpips_vgg(folder, **kwargs, widths=None)
    heads = {f"lin{i}.model.1.weight": torch.ones(1, c, 1, 1) for i, c in enumerate((4, 6, 8, 8, 8))}
    torch.save({**heads, "lin5.model.1.weight": torch.ones(1, 8, 1, 1)}, folder / HEADS_FILE)
    with pytest.raises(StageError, match=f"{HEADS_FILE}: not the LPIPS heads.*1 unexpected keys"):
        load_lpips_vgg(folder, **kwargs, widths=None)

    backbone = torch.load(folder / BACKBONE_FILE, weights_only=True)
    torch.save({k: v for k, v in backbone.items() if not k.startswith("features.28.")}, folder / BACKBONE_FILE)
    with pytest.raises(StageError, match="expected VGG16's 13 `features.\\*` convolutions, found 12"):
        load_lpips_vgg(folder, **kwargs, widths=None)
