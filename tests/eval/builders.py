"""Tiny eval inputs built with the real manifest classes: mvgen predictions, render ground truth, and
random-weight networks of the real architectures saved where `--weights` expects them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from stages.common.artifacts import DistillManifest, MvgenManifest, RenderManifest, ViewSet, load_any_manifest
from stages.common.cameras import OrbitCamera, save_cameras
from stages.common.image_io import VIEW_FRAME_TEMPLATE, write_rgba
from tests.synthetic import disc_alpha

AZIMUTHS = (0.0, 90.0, 180.0, 270.0)
COLOURS = ((235, 120, 40), (40, 160, 90), (60, 80, 220), (200, 60, 160))


def object_frames(num_views: int, source_indices: Sequence[int], size: int = 32) -> np.ndarray:
    """uint8 (V, F, H, W, 4): one coloured disc per view on transparency, its position set by the source index."""
    out = np.zeros((num_views, len(source_indices), size, size, 4), np.uint8)
    for v in range(num_views):
        for f, s in enumerate(source_indices):
            alpha = disc_alpha(size, size, (size * (0.3 + 0.02 * s), size * (0.45 + 0.05 * v)), size * 0.22)
            out[v, f, ..., :3] = np.where(alpha[..., None] > 0, np.array(COLOURS[v % 4], np.uint8), 0)
            out[v, f, ..., 3] = (alpha * 255).astype(np.uint8)
    return out


def _write_view_set(
    directory: Path,
    images: np.ndarray,
    azimuths: Sequence[float],
    source_indices: Sequence[int],
    elevation_deg: float = 0.0,
) -> ViewSet:
    directory.mkdir(parents=True, exist_ok=True)
    for v in range(images.shape[0]):
        for f in range(images.shape[1]):
            write_rgba(directory / VIEW_FRAME_TEMPLATE.format(view=v, frame=f), images[v, f])
    cameras = [OrbitCamera.from_angles(v, a, elevation_deg, 2.0, 40.0) for v, a in enumerate(azimuths)]
    save_cameras(directory / "cameras.json", cameras)
    return ViewSet(
        num_views=images.shape[0],
        num_frames=images.shape[1],
        size_px=images.shape[2],
        frame_template=VIEW_FRAME_TEMPLATE,
        cameras_file="cameras.json",
        source_indices=list(source_indices),
    )


def make_mvgen(
    directory: Path,
    images: np.ndarray,
    *,
    azimuths: Sequence[float] = AZIMUTHS,
    source_indices: Sequence[int],
    subject: str = "tiny",
    elevation_deg: float = 0.0,
) -> MvgenManifest:
    """A valid mvgen artifact holding `images` (V, F, H, W, 4) at the given view azimuths and source frames."""
    views = _write_view_set(directory, images, azimuths[: images.shape[0]], source_indices, elevation_deg)
    manifest = MvgenManifest(
        subject=subject,
        files=views.file_list(),
        config_sha256="0" * 64,
        code_version="test",
        views=views,
        prompt=None,
        fps=8.0,
    )
    manifest.write(directory)
    return manifest


def make_distill(
    directory: Path,
    images: np.ndarray,
    mvgen_dir: Path,
    *,
    source_indices: Sequence[int],
    train_log: Sequence[dict[str, float]] = (),
    subject: str = "tiny",
) -> DistillManifest:
    """A distill artifact whose renders are `images` (V, F, H, W, 4) at the 4 eval azimuths, fitted to `mvgen_dir`,
    with an orbit preview (the renders of view 0 over time) and a training log."""
    import json

    from stages.common.image_io import composite_on_white, write_preview_video

    views = _write_view_set(directory / "renders/orbit", images, AZIMUTHS[: images.shape[0]], source_indices)
    renders = views.model_copy(
        update={
            "frame_template": "renders/orbit/" + views.frame_template,
            "cameras_file": "renders/orbit/" + views.cameras_file,
        }
    )
    write_preview_video(directory / "preview.mp4", [composite_on_white(f) for f in images[0]], 8.0)
    (directory / "train_log.jsonl").write_text("".join(json.dumps(dict(r)) + "\n" for r in train_log))
    manifest = DistillManifest(
        subject=subject,
        files=[*renders.file_list(), "preview.mp4", "train_log.jsonl"],
        config_sha256="0" * 64,
        code_version="test",
        upstream={"mvgen": load_any_manifest(mvgen_dir).sha256(mvgen_dir), "preprocess": "0" * 64},
        renders=renders,
        hash_backend="torch",
        num_steps=len(train_log),
        prompt=None,
        fps=8.0,
    )
    manifest.write(directory)
    return manifest


def make_render(
    directory: Path,
    images: np.ndarray,
    *,
    azimuths: Sequence[float] = AZIMUTHS,
    source_indices: Sequence[int],
    subject: str = "tiny",
) -> RenderManifest:
    """A valid render artifact whose ground-truth views are `images` (V, F, H, W, 4)."""
    gt = _write_view_set(directory / "gt", images, azimuths[: images.shape[0]], source_indices)
    gt = gt.model_copy(update={"frame_template": "gt/" + gt.frame_template, "cameras_file": "gt/" + gt.cameras_file})
    manifest = RenderManifest(
        subject=subject,
        files=gt.file_list(),
        config_sha256="0" * 64,
        code_version="test",
        input_dir="input",
        input_camera=OrbitCamera.from_angles(0, 0.0, 0.0, 2.0, 40.0).model_dump(),
        gt=gt,
        fps=24.0,
        prompt=None,
    )
    manifest.write(directory)
    return manifest


def shuffled_render(
    directory: Path, images: np.ndarray, source_indices: Sequence[int], seed: int = 0, **kwargs
) -> RenderManifest:
    """The same ground truth stored in another view order and another frame order (pairing must not care)."""
    rng = np.random.default_rng(seed)
    view_order = rng.permutation(images.shape[0])
    frame_order = rng.permutation(images.shape[1])
    while images.shape[1] > 1 and (frame_order == np.arange(images.shape[1])).all():
        frame_order = rng.permutation(images.shape[1])
    azimuths = kwargs.pop("azimuths", AZIMUTHS)
    return make_render(
        directory,
        images[view_order][:, frame_order],
        azimuths=[azimuths[v] for v in view_order],
        source_indices=[source_indices[f] for f in frame_order],
        **kwargs,
    )


# ---------------------------------------------------------------------------------------------------------
# Random-weight networks of the real architectures, saved in the layout of stages/eval/README.md.


def tiny_clip_model(kind: str = "clip"):
    """A tiny CLIPModel (or its vision tower with projection) and a matching 32 px image processor."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessorPil,
        CLIPModel,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    torch.manual_seed(0)
    vision = dict(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=32, patch_size=8
    )
    if kind == "clip":
        text = dict(
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=99,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    else:
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**vision, projection_dim=16))
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model.eval(), processor


def write_tiny_weights(root: Path, metrics: Sequence[str] = ("clip", "lpips", "i3d")) -> Path:
    """Save random-weight CLIP / LPIPS-VGG / I3D files under `root` as the stage expects them; returns root."""
    from stages.common.lpips import LPIPSVGG, lpips_files, save_lpips_vgg
    from stages.eval.metrics.inception_i3d import InceptionI3d

    if "clip" in metrics:
        model, processor = tiny_clip_model()
        model.save_pretrained(root / "clip")
        processor.save_pretrained(root / "clip")
    if "lpips" in metrics:
        torch.manual_seed(1)
        lpips = LPIPSVGG(input_range="minus_one_to_one", channel_norm="torchmetrics")
        for head in lpips.heads:
            torch.nn.init.uniform_(head.model[1].weight, 0.0, 0.1)  # trained heads are non-negative
        backbone_file, _ = lpips_files(save_lpips_vgg(lpips, root / "lpips"))
        backbone = torch.load(backbone_file, weights_only=True)
        backbone["classifier.0.weight"] = torch.zeros(4, 4)  # torchvision's file has the classifier too: ignored
        torch.save(backbone, backbone_file)
    if "i3d" in metrics:
        torch.manual_seed(2)
        i3d = InceptionI3d()
        for module in i3d.modules():
            if isinstance(module, torch.nn.Conv3d):  # He init keeps activations alive through 20+ layers
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        (root / "i3d").mkdir(parents=True, exist_ok=True)
        torch.save(i3d.state_dict(), root / "i3d" / "i3d_pretrained_400.pt")
    return root
