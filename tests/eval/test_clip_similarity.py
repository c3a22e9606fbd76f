"""CLIP-I / CLIP-C embeddings: tiny random-weight CLIP of the real architecture, loaded from local folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stages.common.errors import StageError
from stages.eval.metrics.clip_similarity import cosine_similarity, load_clip
from stages.eval.metrics.weights import MissingWeights
from tests.eval.builders import tiny_clip_model

CPU = torch.device("cpu")


def images(seed: int, n: int = 3, size: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("kind", ["clip", "clip_vision_model"])
def test_embeddings_equal_transformers_get_image_features(tmp_path, kind):
    model, processor = tiny_clip_model(kind)
    model.save_pretrained(tmp_path / "clip")
    processor.save_pretrained(tmp_path / "clip")
    encoder = load_clip(tmp_path, CPU)
    x = images(0)
    got = encoder.embed(x, batch_size=2)

    from PIL import Image

    pixels = processor(images=[Image.fromarray(i) for i in x], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        if kind == "clip":
            want = model.get_image_features(pixel_values=pixels).pooler_output.double()
        else:
            want = model(pixel_values=pixels).image_embeds.double()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_identical_images_have_similarity_one_and_different_ones_less(tiny_weights):
    encoder = load_clip(tiny_weights, CPU)
    x = images(1)
    a, b = encoder.embed(x), encoder.embed(x.copy())
    torch.testing.assert_close(cosine_similarity(a, b), torch.ones(3, dtype=torch.float64))
    c = encoder.embed(255 - x)
    assert (cosine_similarity(a, c) < 1 - 1e-6).all()


def test_missing_folder_or_weights_are_missing_weights(tmp_path):
    with pytest.raises(MissingWeights) as info:
        load_clip(tmp_path, CPU)
    assert info.value.wanted == tmp_path / "clip"
    model, processor = tiny_clip_model()
    model.config.save_pretrained(tmp_path / "clip")
    processor.save_pretrained(tmp_path / "clip")
    with pytest.raises(MissingWeights) as info:
        load_clip(tmp_path, CPU)
    assert info.value.wanted == tmp_path / "clip" / "model.safetensors"


def test_another_model_type_is_an_error(tmp_path):
    model, processor = tiny_clip_model()
    model.save_pretrained(tmp_path / "clip")
    processor.save_pretrained(tmp_path / "clip")
    config = json.loads((tmp_path / "clip" / "config.json").read_text())
    config["model_type"] = "siglip"
    (tmp_path / "clip" / "config.json").write_text(json.dumps(config))
    with pytest.raises(StageError, match="model_type 'siglip'"):
        load_clip(tmp_path, CPU)
