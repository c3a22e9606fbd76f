"""CLIP-I and CLIP-C: cosine similarities of CLIP image embeddings (spec §6.1–6.2; peers-and-eval §2.2).

- CLIP-I: prediction vs ground truth at the same view and frame, averaged over frames, then views.
- CLIP-C: consecutive frames of one video (frame f vs f+1), averaged over pairs, then views (the paper leaves
  the pairing open; consecutive frames is spec §6.2's reading). Reported for the prediction, and for the
  ground truth as the value a perfect prediction would get.

Embedding as the Consistent4D script: the image (already composited on white and resized to 512²) goes
through `CLIPImageProcessor` (shortest side → 224 bicubic, centre crop, CLIP mean/std; the PIL backend,
`CLIPImageProcessorPil`, as transformers 4.x's default processor was) and `get_image_features`, i.e. the
vision tower's pooled output through `visual_projection`.

Weights: `<weights>/clip/`, a transformers `save_pretrained` folder of `openai/clip-vit-base-patch32`
(`config.json`, `model.safetensors`, `preprocessor_config.json`), either the whole `CLIPModel` (model_type
`clip`) or its `CLIPVisionModelWithProjection` (`clip_vision_model`); loaded with `local_files_only=True`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from stages.common.errors import StageError
from stages.common.logs import progress
from stages.eval.metrics.weights import MissingWeights, require

__all__ = ["CLIP_DIR", "ClipImageEncoder", "clip_weight_dir", "load_clip", "cosine_similarity"]

CLIP_DIR = "clip"


class ClipImageEncoder:
    """CLIP image embeddings of RGB uint8 images, as the Consistent4D script computes them (module docstring)."""

    def __init__(self, model: nn.Module, processor, device: torch.device) -> None:
        self.model = model.to(device).eval().requires_grad_(False)
        self.processor = processor
        self.device = device
        self.name = str(getattr(model.config, "_name_or_path", "") or "clip")

    @torch.no_grad()
    def embed(self, images: np.ndarray, batch_size: int = 8) -> Tensor:
        """Embed images.

        Args:
            images: uint8 (N, H, W, 3) RGB.
            batch_size: images per forward pass.

        Returns:
            float64 (N, D) embeddings, not normalised.
        """
        out = []
        for start in progress(range(0, len(images), batch_size), desc="CLIP embeddings", unit="batch"):
            batch = [Image.fromarray(img) for img in images[start : start + batch_size]]
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
            pooled = self.model.vision_model(pixel_values=pixels).pooler_output  # (B, hidden)
            out.append(self.model.visual_projection(pooled).double().cpu())  # (B, D)
        return torch.cat(out)


def cosine_similarity(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cosine similarity of (N, D) embeddings → (N,)."""
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def clip_weight_dir(weights_dir: Path | None) -> Path:
    """The folder CLIP loads from (module docstring), whether or not it exists."""
    return Path(weights_dir or "<weights>") / CLIP_DIR


def load_clip(weights_dir: Path | None, device: torch.device) -> ClipImageEncoder:
    """Load CLIP's image tower and its image processor from `<weights_dir>/clip/`.

    Raises:
        MissingWeights: the folder or its config/weights/processor files are absent.
        StageError: the folder holds another kind of model.
    """
    from transformers import CLIPImageProcessorPil, CLIPModel, CLIPVisionModelWithProjection

    folder = clip_weight_dir(weights_dir)
    require(weights_dir, folder, folder / "config.json", folder / "preprocessor_config.json")
    model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    match model_type:
        case "clip":
            cls = CLIPModel
        case "clip_vision_model":
            cls = CLIPVisionModelWithProjection
        case _:
            raise StageError(
                f"{folder}/config.json: model_type {model_type!r}; expected 'clip' or 'clip_vision_model'"
            )
    if not any((folder / name).is_file() for name in ("model.safetensors", "pytorch_model.bin")):
        raise MissingWeights(folder / "model.safetensors")
    try:
        model, info = cls.from_pretrained(folder, local_files_only=True, output_loading_info=True)
        processor = CLIPImageProcessorPil.from_pretrained(folder, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file raises anything (SafetensorError, …)
        first = (str(err).strip().splitlines() or [""])[0]
        raise StageError(f"{folder}: cannot load CLIP ({type(err).__name__}: {first})") from None
    # A key missing from the checkpoint would be left at its random initialisation: refuse, never score with it.
    bad = [k for k in info.get("missing_keys", []) if k.startswith(("vision_model.", "visual_projection."))]
    bad += [str(k) for k in info.get("mismatched_keys", [])]
    if bad:
        raise StageError(f"{folder}: checkpoint does not fill the CLIP image tower (e.g. {bad[:3]})")
    return ClipImageEncoder(model, processor, device)
