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
from transformers import CLIPImageProcessorPil, CLIPTextModel, CLIPTokenizer, CLIPVisionModel

from stages.common.cameras import fourdm_camera_vectors
from stages.common.errors import StageError
from stages.mvgen.config import OFFICIAL_NEGATIVE_PROMPT
from stages.mvgen.models import FourDMUNet

__all__ = [
    "FourDMPipeline",
    "FourDMPipelineOutput",
    "load_fourdm",
    "predicted_x0",
    "prediction_type",
    "frame_windows",
    "OFFICIAL_NEGATIVE_PROMPT",
    "COMPONENTS",
]

log = logging.getLogger(__name__)


COMPONENTS = {
    "unet": FourDMUNet,
    "vae": AutoencoderKL,
    "scheduler": DDIMScheduler,
    "text_encoder": CLIPTextModel,
    "tokenizer": CLIPTokenizer,
    "image_encoder": CLIPVisionModel,
    "feature_extractor": CLIPImageProcessorPil,
}
"""Sub-folder → class of a FourDM weights folder (`save_pretrained` layout). The image processor is the PIL backend
explicitly: it resizes as open_clip's transform does, bit for bit, while the torchvision backend that
`CLIPImageProcessor` picks whenever torchvision is installed differs by up to 0.015 (benchmarks/parity)."""


def prediction_type(scheduler: DDIMScheduler) -> str:
    """The scheduler's prediction type if 4DM supports it: "epsilon" (4DM's) or "v_prediction" (a demo-model option).

    Raises:
        StageError: any other (e.g. diffusers' "sample").
    """
    value = scheduler.config.prediction_type
    if value not in ("epsilon", "v_prediction"):
        raise StageError(f"scheduler prediction_type {value!r}: 4DM supports epsilon and v_prediction")
    return value


def predicted_x0(prediction_type: str, sample: Tensor, output: Tensor, alpha_bar: Tensor | float) -> Tensor:
    """The clean estimate x̂0 from a UNet output at noise level ᾱ_t, as diffusers' DDIM step computes it: for ε,
    (x_t − √(1−ᾱ)·ε̂)/√ᾱ; for v, √ᾱ·x_t − √(1−ᾱ)·v̂ (defined at ᾱ = 0 too)."""
    alpha_bar = torch.as_tensor(alpha_bar, dtype=sample.dtype, device=sample.device)
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * sample - (1 - alpha_bar).sqrt() * output
    if prediction_type == "epsilon":
        return (sample - (1 - alpha_bar).sqrt() * output) / alpha_bar.sqrt()
    raise StageError(f"prediction_type {prediction_type!r}: 4DM supports epsilon and v_prediction")


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
        feature_extractor: CLIPImageProcessorPil,
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
            except Exception as err:  # noqa: BLE001 - a truncated or foreign file raises anything (SafetensorError, …)
                first = (str(err).strip().splitlines() or [""])[0]
                raise StageError(
                    f"cannot load {name} from {directory / name} ({type(err).__name__}: {first})"
                ) from None
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
        window_frames: int | None = None,
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
            window_frames: frames per 4DM pass (the paper's 8). Longer inputs take several passes (see
                `frame_windows`); None = one pass over all frames.
            generator: torch generator on the pipeline's device, for reproducible samples.
            progress: wraps each pass's denoising loop (e.g. a progress bar).
        """
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (F, H, W, 3), got {images.dtype} {images.shape}")
        device = self.device
        num_frames, num_views = images.shape[0], len(azimuths_deg) + 1  # + reference slot

        # 1. Conditioning per frame, computed once: text, CLIP-vision tokens, clean reference latents, and the
        #    initial noise of every frame (shared by all passes that contain the frame).
        text = self.encode_text([prompt, negative_prompt])  # (2, 77, D): cond, uncond
        image_tokens = self.encode_images(images)  # (F, 257, E)
        ref_latents = self.encode_latents(images, generator)  # (F, C, h, w)
        channels = self.unet.config.in_channels
        size = images.shape[1] // (2 ** (len(self.vae.config.block_out_channels) - 1))
        noise = torch.randn((num_frames, num_views, channels, size, size), generator=generator, device=device)
        cameras = torch.from_numpy(fourdm_camera_vectors(azimuths_deg, elevation_deg)).to(device)  # (V, 16)

        # 2. One pass per window; frames generated by an earlier pass are held to their result (inpainting).
        known: dict[int, Tensor] = {}
        for window in frame_windows(num_frames, window_frames or num_frames):
            fixed = {i: known[f] for i, f in enumerate(window) if f in known}
            result = self._denoise(
                window,
                text,
                image_tokens,
                ref_latents,
                noise,
                cameras,
                fixed,
                num_inference_steps,
                guidance_scale,
                progress,
            )
            for i, f in enumerate(window):
                known.setdefault(f, result[i])
        latents = torch.stack([known[f] for f in range(num_frames)])  # (F, V, C, h, w)

        # 3. Decode the generated slots (the reference slot's prediction is discarded).
        views = latents[:, :-1]  # (F, V−1, C, h, w)
        decoded = self.decode_latents(views.reshape(-1, *views.shape[2:]))  # (F·(V−1), 3, H, W)
        decoded = decoded.reshape(num_frames, num_views - 1, *decoded.shape[1:]).permute(1, 0, 3, 4, 2)
        return FourDMPipelineOutput(images=decoded.cpu().numpy(), latents=latents.reshape(-1, *latents.shape[2:]))

    def _denoise(
        self,
        window: list[int],
        text: Tensor,
        image_tokens: Tensor,
        ref_latents: Tensor,
        noise: Tensor,
        cameras: Tensor,
        fixed: dict[int, Tensor],
        num_inference_steps: int,
        guidance_scale: float,
        progress: Callable[[Sequence], Sequence],
    ) -> Tensor:
        """DDIM (eta 0) over the frames `window`; returns their final latents (len(window), V, C, h, w).

        `fixed` maps a position in the window to final latents from an earlier pass: after every step that
        frame's latents are replaced by its known result noised to the current level, so it ends exactly equal.
        """
        dtype, device = self.dtype, self.device
        num_frames, num_views = len(window), noise.shape[1]
        use_cfg = guidance_scale != 1.0
        branches = 2 if use_cfg else 1

        # Rows ordered (b f v), b = [cond, uncond]; every slot of frame f gets frame f's CLIP tokens.
        tokens = image_tokens[window].repeat_interleave(num_views, dim=0)  # (F·V, 257, E)
        rows = num_frames * num_views
        context = torch.cat([text[b : b + 1].expand(rows, -1, -1) for b in range(branches)]).to(dtype)
        ip_tokens = torch.cat([tokens, torch.zeros_like(tokens)][:branches]).to(dtype)
        ref = ref_latents[window]
        ip_latents = torch.cat([ref, torch.zeros_like(ref)][:branches]).to(dtype)  # uncond: zero pixel latents
        camera = cameras.repeat(num_frames * branches, 1).to(dtype)  # cameras identical in both branches

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        window_noise = noise[window]  # (F, V, C, h, w)
        latents = window_noise.reshape(rows, *noise.shape[2:]) * self.scheduler.init_noise_sigma
        known_pos = sorted(fixed)

        def hold_known(x: Tensor, step: int) -> Tensor:
            if not known_pos:
                return x
            x = x.reshape(num_frames, num_views, *x.shape[1:]).clone()
            for i in known_pos:
                if step + 1 < len(timesteps):  # noised to the level the next step starts from
                    t_next = timesteps[step + 1]
                    x[i] = self.scheduler.add_noise(fixed[i], window_noise[i], t_next.reshape(1))
                else:
                    x[i] = fixed[i]
            return x.reshape(rows, *x.shape[2:])

        if known_pos:  # start from the known frames' own noise at the first level
            start = latents.reshape(num_frames, num_views, *latents.shape[1:])
            for i in known_pos:
                start[i] = self.scheduler.add_noise(fixed[i], window_noise[i], timesteps[:1])
            latents = start.reshape(rows, *latents.shape[1:])
        for step, t in enumerate(progress(timesteps)):
            model_in = latents.to(dtype).repeat(branches, 1, 1, 1)
            eps = self.unet(model_in, t, context, camera, ip_tokens, ip_latents, num_frames, num_views).float()
            if use_cfg:
                eps_cond, eps_uncond = eps.chunk(2)
                eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
            latents = hold_known(self.scheduler.step(eps, t, latents, eta=0.0).prev_sample, step)
        return latents.reshape(num_frames, num_views, *latents.shape[1:])


def frame_windows(num_frames: int, window: int) -> list[list[int]]:
    """Frame indices of each 4DM pass for an input of `num_frames` (paper §3.3, Fig. 5; not in the release).

    The first pass takes frames 0..window−1. Every later pass takes frame 0 (the shared first-frame conditioning,
    already generated) plus the next window−1 frames; the last pass is filled up with the frames just before it,
    so every pass has exactly `window` frames and consecutive passes overlap.
    """
    if window < 2 and num_frames > window:
        raise ValueError("a window needs at least 2 frames (frame 0 plus one new frame) to cover a longer input")
    if num_frames <= window:
        return [list(range(num_frames))]
    windows, end = [list(range(window))], window
    while end < num_frames:
        end = min(num_frames, end + window - 1)
        windows.append([0, *range(end - (window - 1), end)])
    return windows


def load_fourdm(weights_dir: Path, torch_dtype: torch.dtype = torch.float32) -> FourDMPipeline:
    """`FourDMPipeline.from_pretrained` on a local folder (the public entry point for other stages)."""
    return FourDMPipeline.from_pretrained(weights_dir, torch_dtype=torch_dtype)
