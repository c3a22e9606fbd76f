"""FourDMPipeline: sample 4 orthogonal views × F frames from 4DM, conditioned on a monocular video + text.

Spec §2.4b–2.5. DDIM (100 steps, eta 0), classifier-free guidance 5 as `uncond + s·(cond − uncond)`; the
unconditional branch is the official negative prompt, zero CLIP-vision tokens (still passed through the
resampler) and zero reference latents; cameras are the same in both branches.

Deliberate difference from the official demo (spec §2.8, quirk 1): every slot of frame f receives the CLIP tokens
of input frame f (the SDS guidance's ordering), not the demo's `(5f+n) mod 8` frame.

Components are loaded from local folders only (`load_fourdm`), never from a hub.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler
from torch import Tensor
from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionModel

from stages.common.cameras import fourdm_camera_vectors
from stages.common.errors import StageError
from stages.mvgen.models import FourDMUNet

__all__ = ["FourDMPipeline", "FourDMPipelineOutput", "load_fourdm", "OFFICIAL_NEGATIVE_PROMPT", "COMPONENTS"]

log = logging.getLogger(__name__)

OFFICIAL_NEGATIVE_PROMPT = (
    "uniform low no texture ugly, boring, bad anatomy, blurry, pixelated,  obscure, unnatural colors, poor lighting,"
    " dull, and unclear."
)
"""The negative prompt of the official 4DM demo (spec §2.5), double space included."""

COMPONENTS = {
    "unet": FourDMUNet,
    "vae": AutoencoderKL,
    "scheduler": DDIMScheduler,
    "text_encoder": CLIPTextModel,
    "tokenizer": CLIPTokenizer,
    "image_encoder": CLIPVisionModel,
    "feature_extractor": CLIPImageProcessor,
}
"""Sub-folder → class of a FourDM weights folder (`save_pretrained` layout)."""


def official_scheduler() -> DDIMScheduler:
    """The LDM schedule of spec §2.5 as a diffusers DDIM scheduler (timesteps 991, 981, …, 1 for 100 steps)."""
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        clip_sample=False,
        set_alpha_to_one=False,
        timestep_spacing="leading",
    )


@dataclass
class FourDMPipelineOutput:
    """Result of one sample.

    Attributes:
        images: float32 (V, F, H, W, 3) in [0, 1], views in the order of `azimuths_deg`.
        latents: (F·(V+1), C, h, w) final latents, rows ordered (f v), reference slot last.
    """

    images: np.ndarray
    latents: Tensor


class FourDMPipeline:
    """4DM sampler. Holds the components; `__call__` samples; `save_pretrained`/`from_pretrained` use local folders."""

    def __init__(
        self,
        unet: FourDMUNet,
        vae: AutoencoderKL,
        scheduler: DDIMScheduler,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        image_encoder: CLIPVisionModel,
        feature_extractor: CLIPImageProcessor,
    ) -> None:
        self.unet, self.vae, self.scheduler = unet, vae, scheduler
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.image_encoder, self.feature_extractor = image_encoder, feature_extractor
        for module in (unet, vae, text_encoder, image_encoder):
            module.eval().requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> FourDMPipeline:
        """Move the networks; `dtype` applies to the UNet, VAE and encoders alike."""
        for module in (self.unet, self.vae, self.text_encoder, self.image_encoder):
            module.to(device=device, dtype=dtype)
        return self

    # -- persistence ------------------------------------------------------------------------------------------

    def save_pretrained(self, directory: Path) -> None:
        """One sub-folder per component plus `model_index.json` naming their classes."""
        directory = Path(directory)
        for name in COMPONENTS:
            getattr(self, name).save_pretrained(directory / name)
        index = {name: cls.__name__ for name, cls in COMPONENTS.items()}
        (directory / "model_index.json").write_text(json.dumps({"_class_name": "FourDMPipeline", **index}, indent=2))

    @classmethod
    def from_pretrained(cls, directory: Path, torch_dtype: torch.dtype = torch.float32) -> FourDMPipeline:
        """Load every component from `directory/<component>` (local files only).

        Raises:
            StageError: the folder or a component is missing or unreadable.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise StageError(f"4DM weights folder not found: {directory} (see stages/mvgen/README.md)")
        missing = [name for name in COMPONENTS if not (directory / name).is_dir()]
        if missing:
            raise StageError(
                f"4DM weights folder {directory} lacks {', '.join(missing)}; convert the official "
                "checkpoints with `python -m stages.mvgen.conversion` (stages/mvgen/README.md)"
            )
        parts = {}
        for name, klass in COMPONENTS.items():
            kwargs: dict = {"local_files_only": True} if name not in ("scheduler",) else {}
            if name in ("unet", "vae", "text_encoder", "image_encoder"):
                kwargs["torch_dtype"] = torch_dtype
            try:
                parts[name] = klass.from_pretrained(directory / name, **kwargs)
            except (OSError, ValueError, RuntimeError, json.JSONDecodeError) as err:
                raise StageError(f"cannot load {name} from {directory / name}: {err}") from None
        return cls(**parts)

    # -- conditioning -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> Tensor:
        """Text tokens (N, 77, D): the SD-2.1 encoder's last hidden state (= OpenCLIP penultimate + LN, spec §2.1)."""
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        return self.text_encoder(tokens.input_ids.to(self.device)).last_hidden_state

    @torch.no_grad()
    def encode_images(self, images: np.ndarray) -> Tensor:
        """CLIP-vision penultimate hidden states (F, 257, 1280) of uint8 (F, H, W, 3) RGB frames."""
        pixels = self.feature_extractor(images=list(images), return_tensors="pt").pixel_values
        out = self.image_encoder(pixels.to(self.device, self.image_encoder.dtype), output_hidden_states=True)
        return out.hidden_states[-2]

    @torch.no_grad()
    def encode_latents(self, images: np.ndarray, generator: torch.Generator | None) -> Tensor:
        """VAE latents (F, C, h, w) of uint8 frames: `(x/255 − 0.5)·2`, posterior sample × scaling factor."""
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (F, 3, H, W)
        posterior = self.vae.encode(x.to(self.device, self.vae.dtype)).latent_dist
        return posterior.sample(generator=generator) * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: Tensor) -> Tensor:
        """(N, C, h, w) latents → (N, 3, H, W) images in [0, 1]."""
        images = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return (images.float() / 2 + 0.5).clamp(0, 1)

    # -- sampling ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        images: np.ndarray,
        prompt: str,
        *,
        negative_prompt: str = OFFICIAL_NEGATIVE_PROMPT,
        azimuths_deg: Sequence[float] = (0.0, 90.0, 180.0, 270.0),
        elevation_deg: float = 0.0,
        num_inference_steps: int = 100,
        guidance_scale: float = 5.0,
        generator: torch.Generator | None = None,
        progress: Callable[[Sequence], Sequence] = lambda it: it,
    ) -> FourDMPipelineOutput:
        """Sample `len(azimuths_deg)` views × F frames.

        Args:
            images: uint8 (F, H, W, 3) input frames composited on white, H = W = the VAE's resolution (256).
            prompt: text describing the object.
            negative_prompt: text of the unconditional branch.
            azimuths_deg: view azimuths in our convention (0 = the input view).
            elevation_deg: shared elevation of the views.
            num_inference_steps: DDIM steps (100 in the paper).
            guidance_scale: CFG weight s in `uncond + s·(cond − uncond)`; 1 gives the conditional branch.
            generator: torch generator on the pipeline's device, for reproducible samples.
            progress: wraps the denoising loop (e.g. a progress bar).
        """
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (F, H, W, 3), got {images.dtype} {images.shape}")
        device, dtype = self.device, self.dtype
        num_frames, num_views = images.shape[0], len(azimuths_deg) + 1  # + reference slot
        use_cfg = guidance_scale != 1.0

        # 1. Conditioning per frame: text tokens, CLIP-vision tokens, clean reference latents.
        text = self.encode_text([prompt] + ([negative_prompt] if use_cfg else []))  # (1 or 2, 77, D)
        image_tokens = self.encode_images(images)  # (F, 257, E)
        ref_latents = self.encode_latents(images, generator)  # (F, C, h, w)

        # 2. Rows ordered (b f v): b = [cond, uncond]; every slot of frame f gets frame f's tokens.
        def per_slot(x: Tensor) -> Tensor:  # (F, ...) → (F·V, ...)
            return x.repeat_interleave(num_views, dim=0)

        cond_tokens = per_slot(image_tokens)
        cameras = torch.from_numpy(fourdm_camera_vectors(azimuths_deg, elevation_deg)).to(device, dtype)
        cameras = cameras.repeat(num_frames, 1)  # (F·V, 16)
        rows = num_frames * num_views
        ctx = [text[0:1].expand(rows, -1, -1)]
        ip = [cond_tokens]
        ip_latents = [ref_latents]
        if use_cfg:
            ctx.append(text[1:2].expand(rows, -1, -1))
            ip.append(torch.zeros_like(cond_tokens))
            ip_latents.append(torch.zeros_like(ref_latents))
        branches = len(ctx)
        context, ip_tokens = torch.cat(ctx).to(dtype), torch.cat(ip).to(dtype)
        ip_lat, camera = torch.cat(ip_latents).to(dtype), cameras.repeat(branches, 1)

        # 3. Denoise all views and frames jointly (DDIM, eta 0).
        channels, size = (
            self.unet.config.in_channels,
            images.shape[1] // (2 ** (len(self.vae.config.block_out_channels) - 1)),
        )
        latents = torch.randn((rows, channels, size, size), generator=generator, device=device, dtype=torch.float32)
        latents = latents * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        for t in progress(self.scheduler.timesteps):
            model_in = latents.to(dtype).repeat(branches, 1, 1, 1)
            eps = self.unet(model_in, t, context, camera, ip_tokens, ip_lat, num_frames, num_views).float()
            if use_cfg:
                eps_cond, eps_uncond = eps.chunk(2)
                eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
            latents = self.scheduler.step(eps, t, latents, eta=0.0).prev_sample

        # 4. Decode the generated slots (the reference slot's prediction is discarded).
        views = latents.reshape(num_frames, num_views, *latents.shape[1:])[:, :-1]  # (F, V−1, C, h, w)
        decoded = self.decode_latents(views.reshape(-1, *latents.shape[1:]))  # (F·(V−1), 3, H, W)
        decoded = decoded.reshape(num_frames, num_views - 1, *decoded.shape[1:]).permute(1, 0, 3, 4, 2)
        return FourDMPipelineOutput(images=decoded.cpu().numpy(), latents=latents)


def load_fourdm(weights_dir: Path, torch_dtype: torch.dtype = torch.float32) -> FourDMPipeline:
    """`FourDMPipeline.from_pretrained` on a local folder (the public entry point for other stages)."""
    return FourDMPipeline.from_pretrained(weights_dir, torch_dtype=torch_dtype)
