from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stages.mvgen.models import FourDMUNet
from stages.mvgen.models.motion_module import VanillaTemporalModule
from tests.mvgen.tiny import randomize_zero_layers, tiny_unet

KEYS = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "official-keys"
F, V = 3, 5  # frames, view slots (4 views + reference)


def official(name: str) -> dict[str, list[int]]:
    path = KEYS / name
    if not path.is_file():
        pytest.skip(f"fixture {path} not available")
    return json.loads(path.read_text())


def test_full_size_unet_has_exactly_the_official_4dm_keys_and_shapes():
    with torch.device("meta"):
        unet = FourDMUNet()
    ours = {k: list(v.shape) for k, v in unet.state_dict().items()}
    assert ours == official("fourdm_unet.json")
    assert sum(p.numel() for p in unet.parameters()) == 1_394_882_180
    assert len(unet.motion_module_names()) == 21
    from stages.mvgen.conversion.keys import FOURDM_INDEX_RENAMES, index_renames

    assert index_renames(unet) == FOURDM_INDEX_RENAMES  # the official table, derived from the layout


def test_full_size_without_motion_modules_is_the_imagedream_unet():
    with torch.device("meta"):
        unet = FourDMUNet(use_motion_module=False)
    prefix = "model.diffusion_model."
    ours = {prefix + k: list(v.shape) for k, v in unet.state_dict().items()}
    assert ours == official("imagedream_unet.json")
    assert sum(p.numel() for p in unet.parameters()) == 941_672_900


def inputs(unet: FourDMUNet, batch: int = 1, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    n = batch * F * V
    cfg = unet.config
    return dict(
        sample=torch.randn(n, 4, 8, 8, generator=g),
        timestep=torch.full((n,), 500),
        encoder_hidden_states=torch.randn(n, 7, cfg.context_dim, generator=g),
        camera=torch.randn(n, 16, generator=g),
        image_hidden_states=torch.randn(n, 5, cfg.ip_embedding_dim, generator=g),
        ip_latents=torch.randn(batch * F, 4, 8, 8, generator=g),
        num_frames=F,
        num_views=V,
    )


def test_zero_initialised_motion_modules_leave_the_imagedream_unet_unchanged():
    fourdm = tiny_unet(use_motion_module=True)
    randomize_zero_layers(fourdm)
    for name in fourdm.motion_module_names():  # a fresh motion module: proj_out is zero
        mm = fourdm.get_submodule(name).temporal_transformer.proj_out
        torch.nn.init.zeros_(mm.weight)
        torch.nn.init.zeros_(mm.bias)
    imagedream = tiny_unet(use_motion_module=False)
    mm_prefixes = tuple(n + "." for n in fourdm.motion_module_names())
    from stages.mvgen.conversion.keys import fourdm_to_imagedream_unet, imagedream_unet_to_fourdm, index_renames

    # Same weights through the official index renames, in both directions.
    renames = index_renames(fourdm)
    official_names = fourdm_to_imagedream_unet(fourdm.state_dict(), fourdm.motion_module_names(), renames)
    stripped = {k[len("model.diffusion_model.") :]: v for k, v in official_names.items()}
    imagedream.load_state_dict(stripped, strict=True)
    assert set(imagedream_unet_to_fourdm(official_names, renames)) == {
        k for k in fourdm.state_dict() if not k.startswith(mm_prefixes)
    }
    x = inputs(fourdm)
    with torch.no_grad():
        torch.testing.assert_close(fourdm(**x), imagedream(**x), rtol=0, atol=0)
        randomize_zero_layers(fourdm, seed=5)  # now the motion modules act …
        assert not torch.allclose(fourdm(**x), imagedream(**x), atol=1e-4)  # … and the output changes


def test_freeze_leaves_only_motion_modules_trainable():
    unet = tiny_unet()
    unet.freeze_spatial_layers()
    trainable = {n for n, p in unet.named_parameters() if p.requires_grad}
    assert trainable and all(".temporal_transformer." in f".{n}" for n in trainable)
    assert len(trainable) == 26 * len(unet.motion_module_names())  # 26 parameters per module (spec §2.3)


def permute_frames(x: dict, order: list[int]) -> dict:
    out = dict(x)
    for key in ("sample", "timestep", "encoder_hidden_states", "camera", "image_hidden_states"):
        t = x[key]
        out[key] = t.reshape(F, V, *t.shape[1:])[order].reshape(t.shape)
    out["ip_latents"] = x["ip_latents"][order]
    return out


def test_without_motion_modules_frames_are_independent_and_permute():
    unet = tiny_unet(use_motion_module=False)
    randomize_zero_layers(unet)
    x = inputs(unet)
    order = [2, 0, 1]
    with torch.no_grad():
        y = unet(**x)
        y_perm = unet(**permute_frames(x, order))
    torch.testing.assert_close(y_perm, y.reshape(F, V, 4, 8, 8)[order].reshape(y.shape), atol=1e-5, rtol=1e-5)


def test_3d_attention_mixes_views_of_a_frame_and_motion_modules_mix_frames():
    unet = tiny_unet()
    randomize_zero_layers(unet)
    x = inputs(unet)
    with torch.no_grad():
        y = unet(**x).reshape(F, V, 4, 8, 8)
        x2 = dict(x)
        x2["sample"] = x["sample"].clone().reshape(F, V, 4, 8, 8)
        x2["sample"][0, 2] += 1.0  # change view 2 of frame 0 only
        x2["sample"] = x2["sample"].reshape(x["sample"].shape)
        y2 = unet(**x2).reshape(F, V, 4, 8, 8)
    assert (y2[0, 0] - y[0, 0]).abs().max() > 1e-4, "3D attention: another view of the same frame matters"
    assert (y2[1, 0] - y[1, 0]).abs().max() > 1e-4, "motion modules: the same view in another frame matters"


def reference_motion_module(mm: VanillaTemporalModule, x: torch.Tensor, frames: int, views: int) -> torch.Tensor:
    """Per (batch, view, pixel) loop over the frame sequence: the official layout, written the slow way."""
    tt = mm.temporal_transformer
    n, c, h, w = x.shape
    b = n // (frames * views)
    normed = tt.proj_in(tt.norm(x).permute(0, 2, 3, 1))  # (n, h, w, c)
    out = torch.empty_like(normed)
    for bi in range(b):
        for v in range(views):
            rows = [bi * frames * views + f * views + v for f in range(frames)]
            for i in range(h):
                for j in range(w):
                    seq = normed[rows, i, j][None]  # (1, F, C)
                    out[rows, i, j] = tt.proj_out(tt.transformer_blocks[0](seq))[0]
    return out.permute(0, 3, 1, 2) + x


def test_motion_module_keeps_view_and_frame_order_through_the_fold():
    torch.manual_seed(0)
    mm = VanillaTemporalModule(32, heads=4, max_len=8)
    randomize_zero_layers(mm)
    x = torch.randn(2 * F * V, 32, 3, 2)
    torch.testing.assert_close(mm(x, F, V), reference_motion_module(mm, x, F, V), atol=1e-5, rtol=1e-5)


def test_motion_module_rejects_more_frames_than_positions():
    mm = VanillaTemporalModule(32, heads=4, max_len=2)
    with pytest.raises(ValueError, match="exceed"):
        mm(torch.randn(3 * V, 32, 2, 2), 3, V)


def test_save_and_load_pretrained_round_trip(tmp_path):
    unet = tiny_unet()
    randomize_zero_layers(unet)
    unet.save_pretrained(tmp_path / "unet")
    again = FourDMUNet.from_pretrained(tmp_path / "unet", local_files_only=True)
    assert json.loads(again.to_json_string()) | {"_name_or_path": None} == json.loads(unet.to_json_string()) | {
        "_name_or_path": None
    }
    x = inputs(unet, batch=2)
    with torch.no_grad():
        torch.testing.assert_close(again(**x), unet(**x), rtol=0, atol=0)


def test_batch_must_fold_into_frames_and_views():
    unet = tiny_unet()
    x = inputs(unet)
    x["num_frames"] = 4
    with pytest.raises(ValueError, match="multiple"):
        unet(**x)


def test_channels_last_gives_the_same_prediction():
    unet = tiny_unet()
    randomize_zero_layers(unet)
    x = inputs(unet)
    with torch.no_grad():
        reference = unet(**x)
        unet.to(memory_format=torch.channels_last)
        x["sample"] = x["sample"].contiguous(memory_format=torch.channels_last)
        fast = unet(**x)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-4)
