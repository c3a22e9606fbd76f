from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stages.common.errors import StageError
from stages.mvgen.conversion import convert, load_checkpoint, sd_vae
from stages.mvgen.conversion.keys import (
    diffusers_vae_to_ldm,
    fourdm_checkpoint_to_unet,
    fourdm_to_imagedream_unet,
    index_renames,
    ldm_vae_to_diffusers,
)
from stages.mvgen.pipeline_fourdm import load_fourdm
from tests.mvgen.tiny import IMAGE_PX, tiny_pipeline, tiny_unet

REPO = Path(__file__).resolve().parents[2]
KEYS = REPO.parent / "shared" / "fixtures" / "official-keys"


def test_official_vae_names_map_onto_diffusers_autoencoder():
    path = KEYS / "imagedream_vae.json"
    if not path.is_file():
        pytest.skip("official key fixture not available")
    official = json.loads(path.read_text())
    with torch.device("meta"):
        vae = sd_vae()
        fake = {k: torch.empty(v) for k, v in official.items()}
    mapped = ldm_vae_to_diffusers(fake)
    assert {k: list(v.shape) for k, v in mapped.items()} == {k: list(v.shape) for k, v in vae.state_dict().items()}
    back = diffusers_vae_to_ldm(mapped)
    assert {k: list(v.shape) for k, v in back.items()} == official


def write_official_files(pipe, root: Path) -> dict[str, Path]:
    """Our tiny pipeline written the way the official release ships it."""
    unet = pipe.unet
    motion = unet.motion_module_names()
    state = fourdm_to_imagedream_unet(unet.state_dict(), motion, index_renames(unet))
    state.update(diffusers_vae_to_ldm(pipe.vae.state_dict(), num_levels=len(pipe.vae.config.block_out_channels)))
    root.mkdir(parents=True, exist_ok=True)
    torch.save(state, root / "sd-v2.1-base-4view-ipmv.pt")
    prefixes = tuple(m + "." for m in motion)
    motion_state = {"module." + k: v for k, v in unet.state_dict().items() if k.startswith(prefixes)}
    torch.save({"state_dict": motion_state}, root / "4dm.ckpt")
    pipe.text_encoder.save_pretrained(root / "sd21" / "text_encoder")
    pipe.tokenizer.save_pretrained(root / "sd21" / "tokenizer")
    pipe.image_encoder.save_pretrained(root / "clip")
    pipe.feature_extractor.save_pretrained(root / "clip")
    return {
        "imagedream": root / "sd-v2.1-base-4view-ipmv.pt",
        "fourdm": root / "4dm.ckpt",
        "text_encoder": root / "sd21",
        "image_encoder": root / "clip",
    }


def sample(pipe, seed=0):
    images = (np.random.default_rng(seed).random((2, IMAGE_PX, IMAGE_PX, 3)) * 255).astype(np.uint8)
    return pipe(images, "a fox", num_inference_steps=2, generator=torch.Generator().manual_seed(seed)).images


def fresh_tiny(levels=(32, 64)):
    return dict(unet=tiny_unet(seed=123), vae=sd_vae(block_out_channels=levels, layers_per_block=1))


def test_converter_round_trip_is_exact(tmp_path):
    pipe = tiny_pipeline(tmp_path)
    files = write_official_files(pipe, tmp_path / "official")
    convert(**files, output=tmp_path / "weights", **fresh_tiny())
    loaded = load_fourdm(tmp_path / "weights")
    for name in ("unet", "vae", "text_encoder", "image_encoder"):
        ours, theirs = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    np.testing.assert_array_equal(sample(loaded), sample(pipe))
    assert loaded.scheduler.config.steps_offset == 1 and loaded.vae.config.scaling_factor == 0.18215


def test_converter_without_fourdm_keeps_identity_motion_modules(tmp_path):
    pipe = tiny_pipeline(tmp_path)
    files = write_official_files(pipe, tmp_path / "official")
    files["fourdm"] = None
    convert(**files, output=tmp_path / "weights", **fresh_tiny())
    unet = load_fourdm(tmp_path / "weights").unet
    for name in unet.motion_module_names():
        assert unet.get_submodule(name).temporal_transformer.proj_out.weight.abs().sum() == 0


@pytest.mark.parametrize("damage", ["missing", "unexpected", "mis-shaped"])
def test_converter_refuses_and_names_bad_keys(tmp_path, damage):
    pipe = tiny_pipeline(tmp_path)
    files = write_official_files(pipe, tmp_path / "official")
    state = torch.load(files["imagedream"], weights_only=True)
    key = "model.diffusion_model.time_embed.0.weight"
    match damage:
        case "missing":
            del state[key]
        case "unexpected":
            state["model.diffusion_model.surprise.weight"] = torch.zeros(1)
        case "mis-shaped":
            state[key] = torch.zeros(3, 3)
    torch.save(state, files["imagedream"])
    with pytest.raises(StageError, match=rf"{damage} keys: .*(time_embed.0.weight|surprise.weight)"):
        convert(**files, output=tmp_path / "weights", **fresh_tiny())
    assert not (tmp_path / "weights").exists()


def test_converter_refuses_a_4dm_checkpoint_without_motion_modules(tmp_path):
    pipe = tiny_pipeline(tmp_path)
    files = write_official_files(pipe, tmp_path / "official")
    torch.save({"state_dict": {}}, files["fourdm"])
    with pytest.raises(StageError, match="lacks .* motion-module keys"):
        convert(**files, output=tmp_path / "weights", **fresh_tiny())


class PickledThing:
    """An arbitrary object: torch.load(weights_only=True) must refuse it."""


def test_checkpoint_loading_errors(tmp_path):
    with pytest.raises(StageError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(StageError, match="corrupt|refused"):
        load_checkpoint(tmp_path / "junk.pt")
    good = tmp_path / "good.pt"
    torch.save({"a": torch.ones(2)}, good)
    good.write_bytes(good.read_bytes()[:-40])  # truncated
    with pytest.raises(StageError, match="corrupt|refused"):
        load_checkpoint(good)
    torch.save({"state_dict": {}, "obj": PickledThing()}, tmp_path / "pickled.ckpt")
    with pytest.raises(StageError, match="weights_only"):
        load_checkpoint(tmp_path / "pickled.ckpt")


def test_fourdm_checkpoint_unwraps_ddp_names():
    state = fourdm_checkpoint_to_unet({"state_dict": {"module.a.b": 1, "c": 2}})
    assert state == {"a.b": 1, "c": 2}


def test_conversion_cli_reports_errors_in_one_line(tmp_path, capsys):
    from stages.mvgen.conversion.__main__ import main

    rc = main(
        [
            "--imagedream",
            str(tmp_path / "x.pt"),
            "--text-encoder",
            str(tmp_path),
            "--image-encoder",
            str(tmp_path),
            "--output",
            str(tmp_path / "w"),
        ]
    )
    assert rc == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: checkpoint not found")


def test_conversion_cli_bad_flag_is_one_error_line_and_exit_1(capsys):
    from stages.mvgen.conversion.__main__ import main

    for argv, expected in (
        (["--imagedream", "x.pt"], "required: --text-encoder"),
        (["--imagedream", "x", "--text-encoder", "t", "--image-encoder", "i", "--output", "o", "--bogus"], "--bogus"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 1 and len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
