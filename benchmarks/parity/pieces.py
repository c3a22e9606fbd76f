"""The parity comparisons: each function runs one piece on both sides with the same inputs and returns its diffs.

Every function returns `{name: Diff}`: the max absolute difference and the max relative difference
(max |ours − official| / max |official|) of one output. Options named `control_*` perturb OUR side the way a
plausible bug would (the negative controls): with them the same comparison must show a large difference.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from benchmarks.parity.models import TINY, UNET_KWARGS, ModelPair
from benchmarks.parity.official import Official

__all__ = [
    "Diff",
    "diff",
    "vae",
    "image_conditioning",
    "text",
    "guidance",
    "anchor",
    "regularisers",
    "FLOAT_NOISE_REL",
    "CONTROL_MIN_REL",
    "DEVIATIONS",
]

FLOAT_NOISE_REL = 1e-4
"""A difference within float32 noise: max |ours − official| ≤ 1e-4 · max |official| (the schedules differ in the last
bits: the official builds ᾱ in float64 and casts, diffusers in float32)."""
CONTROL_MIN_REL = 1e-2
"""A negative control must move the compared output by at least this relative difference (100× the noise bound)."""
DEVIATIONS = {
    "image_conditioning/composite_uint8": "the official guidance composites the conditioning frames with "
    "`astype(np.uint8)` (truncation); ours rounds (stages.common.image_io.composite_on_white): at most 1 of 255",
    "image_conditioning/penultimate_tokens_own_composite": "the same frames through each side's own composite: "
    "the 1/255 rounding difference above, seen in the image tokens",
}
"""Differences beyond float noise that are deliberate, with why (each entry is a comparison's full name)."""


@dataclass
class Diff:
    max_abs: float
    max_rel: float
    scale: float
    """max |official|: what max_rel is relative to."""

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def diff(ours: torch.Tensor | np.ndarray | float, official: torch.Tensor | np.ndarray | float) -> Diff:
    a = torch.as_tensor(np.asarray(ours) if not torch.is_tensor(ours) else ours).detach().double()
    b = torch.as_tensor(np.asarray(official) if not torch.is_tensor(official) else official).detach().double()
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: ours {tuple(a.shape)}, official {tuple(b.shape)}")
    max_abs = float((a - b).abs().max())
    scale = float(b.abs().max())
    return Diff(max_abs=max_abs, max_rel=max_abs / scale if scale > 0 else float("inf") * max_abs, scale=scale)


# -- VAE ----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def vae(off: Official, pair: ModelPair, seed: int = 0) -> dict[str, Diff]:
    """Official ldm `AutoencoderKL` vs our diffusers `AutoencoderKL` after our key conversion: posterior mean and
    std, the scaled latent z = s·(μ + σ·ε) with the same ε, and the decoder output."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 3, TINY["image_px"], TINY["image_px"], generator=g) * 2 - 1
    official_post = pair.official.encode_first_stage(x)
    ours_post = pair.ours.vae.encode(x).latent_dist
    eps = torch.randn(official_post.mean.shape, generator=g)
    z_official = pair.official.scale_factor * (official_post.mean + official_post.std * eps)
    z_ours = pair.ours.vae.config.scaling_factor * (ours_post.mean + ours_post.std * eps)
    return {
        "encode_mean": diff(ours_post.mean, official_post.mean),
        "encode_std": diff(ours_post.std, official_post.std),
        "latent": diff(z_ours, z_official),
        "decode": diff(
            pair.ours.decode_latents(z_official) * 2 - 1, pair.official.decode_first_stage(z_official).clamp(-1, 1)
        ),
    }


# -- image conditioning ---------------------------------------------------------------------------------------------


def conditioning_frames(seed: int = 0, count: int = 8, size: int = 40) -> list[Image.Image]:
    """RGBA frames with soft alpha edges (the input video after background removal), as PIL images."""
    g = np.random.default_rng(seed)
    rgb = g.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    radius = np.hypot(yy - size / 2, xx - size / 2)
    alpha = np.clip((size * 0.4 - radius) / 4, 0, 1)  # opaque disc, soft rim, transparent corners
    a = np.round(np.broadcast_to(alpha, (count, size, size)) * 255).astype(np.uint8)[..., None]
    return [Image.fromarray(np.concatenate([c, x], axis=2), "RGBA") for c, x in zip(rgb, a, strict=True)]


@torch.no_grad()
def image_conditioning(
    off: Official, pair: ModelPair, *, seed: int = 0, control_hidden_layer: int = -2
) -> dict[str, Diff]:
    """The conditioning frames' path: composite on the background (the guidance's `add_random_background` with the
    white solid background vs our `composite_on_white`), CLIP preprocessing (resize, crop, normalise), the image
    encoder's penultimate tokens, and the resampler's image-prompt tokens.

    control_hidden_layer: which hidden state our side takes (−2 = penultimate, ours; −1 = a missing penultimate
        choice, the negative control).
    """
    from stages.common.image_io import composite_on_white

    frames = conditioning_frames(seed)
    # 1. Background: official PIL path (float, then uint8 truncation) vs ours (rounded).
    official_rgb = np.stack([np.array(off.ldm_util.add_random_background(f, 255.0)) for f in frames])
    ours_rgb = composite_on_white(np.stack([np.array(f) for f in frames]))
    # 2. CLIP preprocessing: open_clip's val transform (the embedder's `preprocess`) vs our feature extractor.
    clip = pair.official.clip_model
    official_pixels = torch.stack([clip.preprocess(Image.fromarray(x)) for x in official_rgb])
    ours_pixels = pair.ours.feature_extractor(images=list(official_rgb), return_tensors="pt").pixel_values
    # 3. Tokens: the official `forward_image` (penultimate block output, ip_mode local_resample) vs ours.
    official_tokens = clip.forward_image(official_rgb)
    hidden = pair.ours.image_encoder(ours_pixels, output_hidden_states=True).hidden_states
    ours_tokens = hidden[control_hidden_layer]
    # 4. Resampler: the official UNet's `image_embed` vs ours, each on its own side's tokens, and on the same ones.
    official_ip = pair.official.model.diffusion_model.image_embed(official_tokens)
    ours_ip = pair.ours.unet.image_embed(ours_tokens)
    return {
        "composite_uint8": diff(ours_rgb.astype(np.float64), official_rgb.astype(np.float64)),
        "clip_pixels": diff(ours_pixels, official_pixels),
        "penultimate_tokens_same_pixels": diff(
            pair.ours.image_encoder(official_pixels, output_hidden_states=True).hidden_states[control_hidden_layer],
            official_tokens,
        ),
        "penultimate_tokens": diff(ours_tokens, official_tokens),
        "penultimate_tokens_own_composite": diff(pair.ours.encode_images(ours_rgb), official_tokens),
        "resampler_same_tokens": diff(pair.ours.unet.image_embed(official_tokens), official_ip),
        "image_prompt_tokens": diff(ours_ip, official_ip),
    }


# -- text ------------------------------------------------------------------------------------------------------------

LONG_PROMPT = " ".join(["a small orange fox with a bushy tail runs across the grass"] * 10)


def text_prompts() -> dict[str, str]:
    from stages.distill.guidance import OFFICIAL_SDS_NEGATIVE_PROMPT

    return {"empty": "", "prompt": "a fox running", "negative": OFFICIAL_SDS_NEGATIVE_PROMPT, "long": LONG_PROMPT}


@torch.no_grad()
def text(off: Official, pair: ModelPair) -> dict[str, Diff]:
    """Token ids and text tokens: the official ImageDream embedder (`open_clip.tokenize`, OpenCLIP penultimate
    block + `ln_final`) vs ours (SD 2.x tokenizer with truncation, the exported 23-of-24-layer CLIPTextModel).
    `long` has more than 77 tokens (truncation)."""
    import open_clip

    out = {}
    for name, prompt in text_prompts().items():
        official_ids = open_clip.tokenize([prompt])
        ours_ids = pair.ours.tokenizer(
            [prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids
        out[f"token_ids/{name}"] = diff(ours_ids.double(), official_ids.double())
        out[f"tokens/{name}"] = diff(pair.ours.encode_text([prompt]), pair.official.clip_model(prompt))
    short = {k: v for k, v in text_prompts().items() if k != "long"}
    cached = sd_prompt_processor(off, pair, list(short.values()))
    for name, prompt in short.items():
        out[f"sd_prompt_processor/{name}"] = diff(pair.ours.encode_text([prompt])[0], cached[prompt])
    return out


def official_long_prompt_error(off: Official, pair: ModelPair) -> str | None:
    """What the official guidance's prompt processor does with a prompt over 77 tokens: the error it raises
    (it pads to 77 without truncating), or None if it accepts it."""
    try:
        sd_prompt_processor(off, pair, [text_prompts()["long"], ""])
    except Exception as err:  # noqa: BLE001 (any failure is the answer)
        return f"{type(err).__name__}: {str(err).splitlines()[0]}"
    return None


def sd_prompt_processor(off: Official, pair: ModelPair, prompts: list[str]) -> dict[str, torch.Tensor]:
    """The official guidance's text path: `StableDiffusionPromptProcessor.spawn_func` on our converted SD-2.x
    folder (tokenizer + text encoder), read back from its cache as the official `load_from_cache` does.

    Raises whatever the official code raises (it tokenises without truncation).
    """
    import tempfile
    from pathlib import Path

    folder = str(pair.workdir / "sd21")
    cache = Path(tempfile.mkdtemp(prefix="fourd-parity-cache-"))
    off.prompt_sd.StableDiffusionPromptProcessor.spawn_func(folder, prompts, str(cache))
    return {p: torch.load(cache / f"{off.prompt_base.hash_prompt(folder, p)}.pt") for p in prompts}


# -- SDS guidance ------------------------------------------------------------------------------------------------


class _TorchProxy(types.ModuleType):
    """`torch` for one official module: the given draws for `randn`/`randn_like` (so both sides use the same
    noise), and float16 mapped to float32 (the official guidance casts the VAE input to half; the harness compares
    in fp32). Everything else is torch."""

    def __init__(self, draws: list[torch.Tensor]) -> None:
        super().__init__("torch")
        self._draws = draws

    def _next(self, shape: torch.Size) -> torch.Tensor:
        value = self._draws.pop(0)
        if tuple(value.shape) != tuple(shape):
            raise RuntimeError(f"the official code drew {tuple(shape)}, the queue holds {tuple(value.shape)}")
        return value.clone()

    def randn(self, *shape, **kwargs):  # noqa: ANN002, ANN003, ANN201
        return self._next(torch.Size(shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape))

    def randn_like(self, x, **kwargs):  # noqa: ANN001, ANN003, ANN201
        return self._next(x.shape).to(x)

    def __getattr__(self, name: str):  # noqa: ANN204
        if name == "float16":
            return torch.float32
        return getattr(torch, name)


@contextmanager
def _official_draws(off: Official, draws: list[torch.Tensor]) -> Iterator[None]:
    import sys

    modules = [off.guidance, sys.modules[off.interface.DiagonalGaussianDistribution.__module__]]
    proxy = _TorchProxy(draws)
    saved = [m.torch for m in modules]
    for m in modules:
        m.torch = proxy
    try:
        yield
    finally:
        for m, t in zip(modules, saved, strict=True):
            m.torch = t
    if draws:
        raise RuntimeError(f"the official code left {len(draws)} queued draws unused")


def official_cameras(off: Official, seed: int) -> dict[str, torch.Tensor]:
    """One batch of the official multi-view camera sampler (`RandomMultiviewCameraIterableDataset.collate`, the
    configs/4diffusion.yaml multi_view settings): c2w (4, 4, 4), elevation, azimuth, distance (4,)."""
    import importlib
    import random

    rm = importlib.import_module("threestudio.data.random_multiview")
    cfg = {
        "batch_size": 4,
        "n_view": 4,
        "width": 64,
        "height": 64,
        "camera_distance_range": [1.1, 1.1],
        "fovy_range": [45, 45],
        "elevation_range": [0, 5],
        "camera_perturb": 0.0,
        "center_perturb": 0.0,
        "up_perturb": 0.0,
        "relative_radius": False,
        "num_frames": 8,
    }
    config = importlib.import_module("threestudio.utils.config")
    dataset = rm.RandomMultiviewCameraIterableDataset(
        config.parse_structured(rm.RandomMultiviewCameraDataModuleConfig, cfg)
    )
    random.seed(seed)
    torch.manual_seed(seed)
    return dataset.collate(None)


def official_guidance(off: Official, model: torch.nn.Module, image_size: int, **attributes) -> types.SimpleNamespace:
    """A minimal `MultiviewVideoDiffusionGuidance` instance whose `__call__` runs as the official one: the attributes
    `configure()` sets (it would load checkpoints), the paper's config (CFG 5, x0 reconstruction with std rescale
    0.2, pixel image prompt, 4 views), and its helper methods bound to it. `attributes` adds or replaces attributes
    (`alphas` on the model's device, `min_step`/`max_step`, `device`)."""
    cls = off.guidance.MultiviewVideoDiffusionGuidance
    fake = types.SimpleNamespace(
        cfg=cls.Config(
            guidance_scale=5.0,
            recon_loss=True,
            recon_std_rescale=0.2,
            ip_mode="pixel",
            n_view=4,
            image_size=image_size,
        ),
        model=model,
        weights_dtype=torch.float32,
        grad_clip_val=None,
        num_train_timesteps=1000,
        **attributes,
    )
    for name in ("get_camera_cond", "encode_images", "append_extra_view"):
        setattr(fake, name, functools.partial(getattr(cls, name), fake))
    return fake


def official_prompt_output(off: Official, text: torch.Tensor, frames: np.ndarray):  # noqa: ANN201
    """The official `PromptProcessorOutput` for text embeddings (prompt, negative) stacked in `text` (2, T, D) and
    the conditioning frames ((F, H, W, 3) uint8 RGB, given as RGBA images); view-dependent prompts off, as the
    official config has them."""
    return off.prompt_base.PromptProcessorOutput(
        text_embeddings=text[:1],
        uncond_text_embeddings=text[1:],
        text_embeddings_vd=text[:1].repeat(4, 1, 1),
        uncond_text_embeddings_vd=text[1:].repeat(4, 1, 1),
        directions=[],
        direction2idx={},
        use_perp_neg=False,
        perp_neg_f_sb=(1, 0.5, -0.606),
        perp_neg_f_fsb=(1, 0.5, 0.967),
        perp_neg_f_fs=(4, 0.5, -2.426),
        perp_neg_f_sf=(4, 0.5, -2.426),
        image=[Image.fromarray(np.concatenate([f, np.full_like(f[..., :1], 255)], axis=2), "RGBA") for f in frames],
    )


def guidance(
    off: Official,
    pair: ModelPair,
    *,
    seed: int = 0,
    timestep: int = 600,
    control_camera_order: bool = False,
    control_guidance_scale: float | None = None,
) -> dict[str, Diff]:
    """The 4D-aware SDS of the official `MultiviewVideoDiffusionGuidance.__call__` (ip_mode pixel, x0
    reconstruction, std rescale 0.2, CFG 5) vs our `FourDMGuidance` for the same renders (8 frames × 4 views),
    cameras (one batch of the official sampler), timestep, noise and posterior draws: the loss and its gradient
    w.r.t. the renders.

    control_camera_order: our side gets the views' azimuths in reverse order (a camera/view ordering bug).
    control_guidance_scale: our side combines with this scale (6 = ε_c + s(ε_c − ε_u); −4 = branches swapped).
    """
    from stages.distill.guidance import FourDMGuidance

    num_frames, num_views, size = 8, 4, TINY["image_px"]
    latent_px, channels = UNET_KWARGS["sample_size"], 4
    g = torch.Generator().manual_seed(seed)
    render_px = size - 4  # renders smaller than the VAE input, as in the 64² and 192² phases: both sides resize
    renders = torch.rand(num_frames, num_views, 3, render_px, render_px, generator=g)  # (F, V, 3, H, W) in [0, 1]
    frames = torch.randint(0, 256, (num_frames, size, size, 3), generator=g, dtype=torch.uint8).numpy()
    prompt, negative = "a fox running", "ugly, blurry"
    cams = official_cameras(off, seed)
    # Our draws, in the order our guidance makes them; the official code gets the same tensors.
    ref_noise = torch.randn(
        num_frames, channels, latent_px, latent_px, generator=torch.Generator().manual_seed(seed + 1)
    )
    gen_seed = seed + 2
    replay = torch.Generator().manual_seed(gen_seed)
    posterior = torch.randn(num_frames * num_views, channels, latent_px, latent_px, generator=replay)
    torch.randint(timestep, timestep + 1, (1,), generator=replay)
    noise = torch.randn(num_frames * num_views, channels, latent_px, latent_px, generator=replay)

    # 1. Official: the guidance's own __call__ on a minimal instance (configure() would load checkpoints).
    cls = off.guidance.MultiviewVideoDiffusionGuidance
    fake = official_guidance(off, pair.official, size, alphas=pair.official.alphas_cumprod)
    text_official = pair.official.clip_model([prompt, negative])
    prompt_utils = official_prompt_output(off, text_official, frames)
    rgb_official = renders.permute(0, 1, 3, 4, 2).reshape(num_frames * num_views, render_px, render_px, 3).clone()
    rgb_official.requires_grad_(True)
    with _official_draws(off, [posterior, noise, ref_noise]):
        out = cls.__call__(
            fake,
            rgb_official,
            prompt_utils,
            cams["elevation"],
            cams["azimuth"],
            cams["camera_distances"],
            cams["c2w"].clone(),
            rgb_as_latents=False,
            timestep=timestep,
            comp_rgb_bg=torch.ones(num_frames * num_views, render_px, render_px, 3),
            frame_idx=0,
            stage_one=False,
        )
    (grad_official,) = torch.autograd.grad(out["loss_sds"], rgb_official)
    grad_official = grad_official.reshape(num_frames, num_views, render_px, render_px, 3).permute(0, 1, 4, 2, 3)

    # 2. Ours.
    scale = 5.0 if control_guidance_scale is None else control_guidance_scale
    ours = FourDMGuidance(pair.ours, guidance_scale=scale, std_rescale=0.2)
    cond = ours.prepare(frames, prompt, negative, torch.Generator().manual_seed(seed + 1))
    azimuths = [float(a) for a in cams["azimuth"]]
    if control_camera_order:
        azimuths = azimuths[::-1]
    rgb_ours = renders.clone().requires_grad_(True)
    result = ours(
        rgb_ours,
        cond,
        azimuths_deg=azimuths,
        elevation_deg=float(cams["elevation"][0]),
        min_step=timestep,
        max_step=timestep,
        generator=torch.Generator().manual_seed(gen_seed),
    )
    (grad_ours,) = torch.autograd.grad(result.loss, rgb_ours)

    from stages.common.cameras import fourdm_camera_vectors

    official_camera = off.camera_utils.normalize_camera(cams["c2w"].clone())
    return {
        "camera_vectors": diff(
            torch.from_numpy(fourdm_camera_vectors(azimuths, float(cams["elevation"][0])))[:4], official_camera
        ),
        "text_tokens": diff(cond.text, text_official),
        "loss": diff(result.loss, out["loss_sds"]),
        "grad_renders": diff(grad_ours, grad_official),
    }


# -- anchor loss and regularisers -------------------------------------------------------------------------------


def _official_lpips(off: Official, seed: int) -> torch.nn.Module:
    """The official `lpipsPyTorch.LPIPS("vgg")` with seeded random VGG16 features and heads (its constructor
    downloads both; the two download calls are replaced by random weights of the same shapes)."""
    import torchvision

    networks = off.lpips_modules.get_network.__globals__
    torch.manual_seed(seed)
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    saved_models, saved_state = networks["models"], off.lpips_modules.get_state_dict
    networks["models"] = types.SimpleNamespace(
        vgg16=lambda weights=None: types.SimpleNamespace(features=features),
        VGG16_Weights=types.SimpleNamespace(IMAGENET1K_V1=None),
    )
    heads = {f"{i}.1.weight": torch.rand(1, c, 1, 1) * 0.1 for i, c in enumerate((64, 128, 256, 512, 512))}
    off.lpips_modules.get_state_dict = lambda net_type, version: heads
    try:
        return off.lpips_modules.LPIPS("vgg", "0.1")
    finally:
        networks["models"], off.lpips_modules.get_state_dict = saved_models, saved_state


def anchor(off: Official, *, seed: int = 0, size: int = 48) -> dict[str, Diff]:
    """The anchor loss of `Fourdiffusion.training_step` (λ_ssim·D-SSIM + λ_lpips·LPIPS, each added twice, with the
    official `ssim` and `lpipsPyTorch.LPIPS`) vs our `anchor_loss_terms` with the weights of configs/distill.yaml,
    value and gradient w.r.t. the render; and the anchor target (the official dataset's white composite + binary
    mask + background vs ours)."""
    from stages.common.lpips import LPIPSVGG
    from stages.distill.config import DistillConfig
    from stages.distill.losses import anchor_loss_terms, anchor_target

    weights = DistillConfig().loss_weights
    official_lpips = _official_lpips(off, seed)
    ours_lpips = LPIPSVGG(input_range="zero_to_one_unscaled", channel_norm="lpips")
    state = {f"net.features.{k}": v for k, v in official_lpips.net.layers.state_dict().items()}
    state.update({f"lin{i}.model.1.weight": official_lpips.lin[i][1].weight for i in range(5)})
    ours_lpips.load_state_dict(state)
    g = torch.Generator().manual_seed(seed)
    render = torch.rand(1, 3, size, size, generator=g)
    # The anchor frame: RGBA from mvgen with soft alpha; official: the dataset's white composite (load_images), then
    # `rgb·mask + bg·(1−mask)` with mask = alpha > 0.5 and the white solid background (training_step).
    rgba = np.array(conditioning_frames(seed, 1, size)[0]).astype(np.float32) / 255.0
    rgb, alpha = rgba[..., :3], rgba[..., 3:]
    loaded = rgb * alpha + 1.0 * (1 - alpha)
    mask = alpha > 0.5
    official_gt = torch.from_numpy(loaded * mask + 1.0 * (1.0 - mask)).permute(2, 0, 1).float()
    ours_gt = anchor_target(np.array(conditioning_frames(seed, 1, size)[0]))
    # Loss on the same target (the official's), official single image (C, H, W) as training_step passes it.
    r_official = render[0].clone().requires_grad_(True)
    lo = off.loss_utils
    official = 0.0
    for _ in range(2):  # training_step adds both terms twice
        official = (
            official
            + 50.0 * (1.0 - lo.ssim(r_official, official_gt))
            + 100.0 * official_lpips(r_official, official_gt).mean()
        )
    (grad_official,) = torch.autograd.grad(official, r_official)
    r_ours = render.clone().requires_grad_(True)
    ours, _ = anchor_loss_terms(
        r_ours,
        official_gt[None],
        ours_lpips,
        lpips_weight=weights.anchor_lpips,
        dssim_weight=weights.anchor_dssim,
        l1_weight=weights.anchor_l1,
    )
    (grad_ours,) = torch.autograd.grad(ours, r_ours)
    return {
        "target": diff(torch.as_tensor(ours_gt), official_gt),
        "loss": diff(ours, official),
        "grad_render": diff(grad_ours[0], grad_official),
    }


def regularisers(off: Official, *, seed: int = 0) -> dict[str, Diff]:
    """Sparsity, opaque and orientation terms: the expressions of `Fourdiffusion.training_step` (with the official
    `binary_cross_entropy` and `dot`) vs our `losses.py` on the same tensors, values and gradients."""
    from stages.distill.losses import opaque_loss, orientation_loss, sparsity_loss

    g = torch.Generator().manual_seed(seed)
    ops = off.ops
    opacity = torch.rand(4, 16, 16, 1, generator=g)
    opacity[0, :4] = 0.0  # rays that miss the object
    opacity[1, :2] = 1.0
    out = {}
    # sparsity: (opacity² + 0.01).sqrt().mean()
    o1, o2 = opacity.clone().requires_grad_(True), opacity.clone().requires_grad_(True)
    official = (o1**2 + 0.01).sqrt().mean()
    ours = sparsity_loss(o2)
    out["sparsity"] = diff(ours, official)
    out["sparsity_grad"] = diff(torch.autograd.grad(ours, o2)[0], torch.autograd.grad(official, o1)[0])
    # opaque: binary_cross_entropy(clamped, clamped)
    o1, o2 = opacity.clone().requires_grad_(True), opacity.clone().requires_grad_(True)
    clamped = o1.clamp(1.0e-3, 1.0 - 1.0e-3)
    official = ops.binary_cross_entropy(clamped, clamped)
    ours = opaque_loss(o2)
    out["opaque"] = diff(ours, official)
    out["opaque_grad"] = diff(torch.autograd.grad(ours, o2)[0], torch.autograd.grad(official, o1)[0])
    # orientation: per-sample weights·relu(n·d)², summed, over #(opacity > 0); ours sums per ray first (renderer).
    num_rays, per_ray = opacity.numel(), 6
    ray_ids = torch.arange(num_rays).repeat_interleave(per_ray)
    weights = torch.rand(num_rays * per_ray, 1, generator=g)
    normal = F.normalize(torch.randn(num_rays * per_ray, 3, generator=g), dim=-1).requires_grad_(True)
    dirs = F.normalize(torch.randn(num_rays * per_ray, 3, generator=g), dim=-1)
    official = (weights.detach() * ops.dot(normal, dirs).clamp_min(0.0) ** 2).sum() / (opacity > 0).sum()
    facing = (normal * dirs).sum(-1).clamp(min=0.0) ** 2  # the renderer's per-sample term
    orient = torch.zeros(num_rays).index_add(0, ray_ids, weights[:, 0].detach() * facing)
    ours = orientation_loss(orient, opacity)
    out["orient"] = diff(ours, official)
    out["orient_grad"] = diff(
        torch.autograd.grad(ours, normal, retain_graph=True)[0], torch.autograd.grad(official, normal)[0]
    )
    return out
