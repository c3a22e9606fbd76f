"""The demo 4DM: built small, trained from scratch in minutes on one GPU, exported as a FourDM weights folder.

    python -m stages.mvgen.training.demo_model --config configs/demo/demo_model.yaml \
        --data .carry/demo-renders --output runs/demo-model [--minutes 8]

Phase 1 trains the VAE (weighted L1 + KL) on every rendered image and sets its scaling factor to 1/std of the
latents. Phase 2 caches the posterior of every image, the CLIP-vision tokens of every image (random frozen
encoder) and the caption tokens (random frozen text encoder), then trains the whole UNet on eq. 7
(`train_fourdm.denoising_loss`) over windows drawn from memory (`demo_data.sample_windows`), with AdamW, warm-up,
gradient clipping, bf16 autocast and an EMA. What the conditioning carries: the reference video through the VAE
latents of the reference slot (trained VAE, read by 3D self-attention), the same frames through CLIP-vision
tokens (a random but fixed image feature, read by the trained resampler), and the caption (a subject label).

A run stops at its wall-clock budget (`minutes`, counted from process start) or at `unet_steps`, keeping
`reserve_s` to write `checkpoint/` (atomic), `fourdm/` (the EMA weights as a FourDM folder that
`stages.mvgen.load_fourdm` reads), `samples/` (grids of input, ground truth and samples at several CFG scales, and
their PSNR against the ground truth) and `summary.json`; `train_log.jsonl` gets a line every `log_every` steps.
Running again with the same `--output` resumes from `checkpoint/` (a missing `unet_optimizer.safetensors` restarts
AdamW with a warm-up instead).
"""

from __future__ import annotations

import time

_START = time.monotonic()  # the time budget counts from here (process start, before the heavy imports)

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from diffusers import AutoencoderKL, DDIMScheduler  # noqa: E402
from pydantic import ValidationError  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from transformers import (  # noqa: E402
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModel,
)

from stages.common.config import config_sha256, format_validation_error, load_config  # noqa: E402
from stages.common.devices import resolve_device  # noqa: E402
from stages.common.errors import StageError  # noqa: E402
from stages.common.image_io import write_rgba  # noqa: E402
from stages.common.logs import setup_logging  # noqa: E402
from stages.common.tracking import stage_run  # noqa: E402
from stages.mvgen.models import FourDMUNet  # noqa: E402
from stages.mvgen.pipeline_fourdm import FourDMPipeline, load_fourdm, official_scheduler  # noqa: E402
from stages.mvgen.training.demo_config import DemoModelConfig  # noqa: E402
from stages.mvgen.training.demo_data import (  # noqa: E402
    ClipBank,
    clip_stride,
    front_view,
    load_clip_bank,
    sample_windows,
)
from stages.mvgen.training.train_fourdm import denoising_loss, dropout_mask, step_generator  # noqa: E402

__all__ = [
    "run",
    "build_pipeline",
    "write_char_tokenizer",
    "save_checkpoint",
    "load_checkpoint",
    "TrainState",
    "CHECKPOINT",
    "EXPORT",
]

log = logging.getLogger(__name__)

CHECKPOINT, EXPORT, SAMPLES, LOG_FILE, SUMMARY = "checkpoint", "fourdm", "samples", "train_log.jsonl", "summary.json"
VAE_WARMUP = 100
_DTYPES = {"float16": torch.float16, "float32": torch.float32}


# -- building ---------------------------------------------------------------------------------------------------


def write_char_tokenizer(directory: Path) -> CLIPTokenizer:
    """A CLIP tokenizer over single characters (byte alphabet, no BPE merges), written to `directory`.

    Vocabulary: the 256 byte characters of CLIP's byte encoder, the same with the end-of-word mark, then
    `<|startoftext|>` (512) and `<|endoftext|>` (513); 77 positions as CLIP.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    codes = printable + [256 + i for i in range(256 - len(printable))]
    chars = [chr(c) for c in codes]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": 2 * len(chars), "<|endoftext|>": 2 * len(chars) + 1})
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=77)


def vae_factor(cfg: DemoModelConfig) -> int:
    return 2 ** (len(cfg.vae.block_out_channels) - 1)


def build_pipeline(cfg: DemoModelConfig, tokenizer_dir: Path) -> FourDMPipeline:
    """The untrained demo 4DM: UNet and VAE initialised from `cfg.seed`, CLIP encoders from `cfg.encoder_seed`.

    Raises:
        StageError: sizes that do not fit together (image side vs VAE and UNet levels, heads vs widths).
    """
    factor, levels = vae_factor(cfg), len(cfg.unet.channel_mult)
    latent = cfg.size_px // factor
    if cfg.size_px % factor or latent % 2 ** (levels - 1):
        raise StageError(f"size_px {cfg.size_px} does not divide into the VAE (÷{factor}) and UNet levels ({levels})")
    if cfg.size_px % cfg.image_patch_px:
        raise StageError(f"image_patch_px {cfg.image_patch_px} does not divide size_px {cfg.size_px}")
    u, v, te, ie = cfg.unet, cfg.vae, cfg.text_encoder, cfg.image_encoder
    try:
        torch.manual_seed(cfg.seed)
        unet = FourDMUNet(
            model_channels=u.model_channels,
            channel_mult=tuple(u.channel_mult),
            num_res_blocks=u.num_res_blocks,
            attention_resolutions=tuple(u.attention_resolutions),
            num_head_channels=u.num_head_channels,
            context_dim=te.hidden_size,
            num_ip_tokens=u.num_ip_tokens,
            ip_embedding_dim=ie.hidden_size,
            resampler_depth=u.resampler_depth,
            resampler_heads=u.resampler_heads,
            resampler_dim_head=u.resampler_dim_head,
            motion_num_heads=u.motion_num_heads,
            motion_max_len=u.motion_max_len,
            norm_num_groups=u.norm_num_groups,
            sample_size=latent,
        )
        torch.manual_seed(cfg.seed + 1)
        n = len(v.block_out_channels)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * n,
            up_block_types=["UpDecoderBlock2D"] * n,
            block_out_channels=list(v.block_out_channels),
            layers_per_block=v.layers_per_block,
            latent_channels=v.latent_channels,
            norm_num_groups=v.norm_num_groups,
            sample_size=cfg.size_px,
            scaling_factor=1.0,
        )
    except ValueError as err:  # GroupNorm groups, head counts
        raise StageError(f"demo model config: {err}") from None
    tokenizer = write_char_tokenizer(tokenizer_dir)
    torch.manual_seed(cfg.encoder_seed)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=te.hidden_size,
            intermediate_size=te.intermediate_size,
            num_hidden_layers=te.num_hidden_layers,
            num_attention_heads=te.num_attention_heads,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    torch.manual_seed(cfg.encoder_seed + 1)
    vision = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=ie.hidden_size,
            intermediate_size=ie.intermediate_size,
            num_hidden_layers=ie.num_hidden_layers,
            num_attention_heads=ie.num_attention_heads,
            image_size=cfg.size_px,
            patch_size=cfg.image_patch_px,
        )
    )
    processor = CLIPImageProcessor(
        size={"shortest_edge": cfg.size_px}, crop_size={"height": cfg.size_px, "width": cfg.size_px}
    )
    return FourDMPipeline(unet, vae, demo_scheduler(cfg), text, tokenizer, vision, processor)


def demo_scheduler(cfg: DemoModelConfig) -> DDIMScheduler:
    """The official LDM schedule (`official_scheduler`), with the config's prediction type and, when asked, betas
    rescaled to zero terminal SNR and "trailing" timestep spacing (sampling then starts at t = 999)."""
    # The constructor, not from_config: from_config ignores keys its source config marks as defaults.
    config = {k: v for k, v in official_scheduler().config.items() if not k.startswith("_")}
    config["prediction_type"] = cfg.prediction_type
    if cfg.zero_terminal_snr:
        config.update(rescale_betas_zero_snr=True, timestep_spacing="trailing", steps_offset=0)
    return DDIMScheduler(**config)


def round_to(module: nn.Module, dtype: torch.dtype) -> None:
    """Round a frozen module's float tensors to `dtype` in place (kept in their own dtype), so training sees
    exactly the weights that ship in the `dtype` export."""
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            if t.is_floating_point():
                t.copy_(t.to(dtype).to(t.dtype))


# -- checkpoints --------------------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """What a run resumes from (besides the weights): phase progress and the VAE scaling factor."""

    vae_step: int = 0
    unet_step: int = 0
    scaling_factor: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    windows: int = 0
    """Training windows the UNet has seen over all runs."""


def _encoder_state(pipe: FourDMPipeline) -> dict[str, Tensor]:
    state = {f"text_encoder.{k}": v for k, v in pipe.text_encoder.state_dict().items()}
    state.update({f"image_encoder.{k}": v for k, v in pipe.image_encoder.state_dict().items()})
    return state


def save_checkpoint(
    directory: Path,
    pipe: FourDMPipeline,
    ema: dict[str, Tensor] | None,
    optimizer: torch.optim.Optimizer | None,
    state: TrainState,
    config_sha: str,
    frozen_dtype: torch.dtype = torch.float32,
) -> None:
    """Write `directory` through a temp folder and a rename: a kill at any moment leaves the old or the new one.

    Files: `state.json`, `encoders.safetensors` (in `frozen_dtype`), `vae.safetensors` (float32 while it trains,
    then `frozen_dtype`), and once the UNet trains `unet.safetensors`, `unet_ema.safetensors` (float32) and
    `unet_optimizer.safetensors` (AdamW moments in bfloat16, keyed by name). Frozen modules are held at the
    export precision (`round_to`), so storing them in it loses nothing.
    """
    directory = Path(directory)
    tmp, old = directory.with_name(f".{directory.name}.tmp"), directory.with_name(f".{directory.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cpu = lambda d, t=torch.float32: {k: v.detach().to(t).cpu().contiguous() for k, v in d.items()}  # noqa: E731
    vae_frozen = state.scaling_factor is not None
    save_file(cpu(pipe.vae.state_dict(), frozen_dtype if vae_frozen else torch.float32), str(tmp / "vae.safetensors"))
    save_file(cpu(_encoder_state(pipe), frozen_dtype), str(tmp / "encoders.safetensors"))
    if state.unet_step > 0:
        save_file(cpu(pipe.unet.state_dict()), str(tmp / "unet.safetensors"))
        if ema is not None:
            save_file(cpu(ema), str(tmp / "unet_ema.safetensors"))
        if optimizer is not None:
            names = {id(p): n for n, p in pipe.unet.named_parameters()}
            moments = {}
            for group in optimizer.param_groups:
                for p in group["params"]:
                    s = optimizer.state.get(p)
                    if s:
                        name = names[id(p)]
                        moments[f"{name}.exp_avg"] = s["exp_avg"].detach().to(torch.bfloat16).cpu().contiguous()
                        moments[f"{name}.exp_avg_sq"] = s["exp_avg_sq"].detach().to(torch.bfloat16).cpu().contiguous()
                        moments[f"{name}.step"] = torch.as_tensor(s["step"], dtype=torch.float32).reshape(1).cpu()
            save_file(moments, str(tmp / "unet_optimizer.safetensors"))
    meta = {
        "vae_step": state.vae_step,
        "unet_step": state.unet_step,
        "scaling_factor": state.scaling_factor,
        "windows": state.windows,
        "seconds": state.seconds,
        "config_sha256": config_sha,
    }
    (tmp / "state.json").write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    directory: Path,
    pipe: FourDMPipeline,
    ema: dict[str, Tensor] | None,
    optimizer: torch.optim.Optimizer | None,
) -> TrainState | None:
    """Restore `save_checkpoint`'s files into `pipe`, `ema` and `optimizer`; None when `directory` holds none.

    Returns the state; its `unet_step` > 0 with no optimizer file means AdamW restarts (the caller warms up).

    Raises:
        StageError: the files do not match this model (another config's architecture).
    """
    directory = Path(directory)
    if not (directory / "state.json").is_file():
        return None
    meta = json.loads((directory / "state.json").read_text())
    device = pipe.device

    def restore(module: nn.Module, state: dict[str, Tensor], what: str) -> None:
        try:
            module.load_state_dict(state)
        except RuntimeError as err:
            raise StageError(f"{directory}: {what} does not match the configured model ({err})") from None

    restore(pipe.vae, load_file(str(directory / "vae.safetensors")), "vae.safetensors")
    encoders = load_file(str(directory / "encoders.safetensors"))
    for name in ("text_encoder", "image_encoder"):
        sub = {k[len(name) + 1 :]: v for k, v in encoders.items() if k.startswith(f"{name}.")}
        restore(getattr(pipe, name), sub, f"encoders.safetensors ({name})")
    state = TrainState(
        vae_step=int(meta["vae_step"]),
        unet_step=int(meta["unet_step"]),
        scaling_factor=meta["scaling_factor"],
        seconds=dict(meta.get("seconds", {})),
        windows=int(meta.get("windows", 0)),
    )
    if state.scaling_factor is not None:
        pipe.vae.register_to_config(scaling_factor=float(state.scaling_factor))
    if state.unet_step > 0:
        raw, averaged = directory / "unet.safetensors", directory / "unet_ema.safetensors"
        if not raw.is_file() and not averaged.is_file():
            raise StageError(f"{directory}: UNet step {state.unet_step} but neither {raw.name} nor {averaged.name}")
        if raw.is_file():
            restore(pipe.unet, load_file(str(raw)), raw.name)
        else:  # a slim resume pack (scripts/install_demo_model.sh): training goes on from the EMA weights
            log.info("%s has no %s: training resumes from the EMA weights", directory, raw.name)
            with torch.no_grad():
                for k, v in load_file(str(averaged)).items():
                    pipe.unet.get_parameter(k).copy_(v.to(device))
        if ema is not None:
            saved = (
                load_file(str(averaged))
                if averaged.is_file()
                else {k: p.detach() for k, p in pipe.unet.named_parameters()}
            )
            for k in ema:
                ema[k].copy_(saved[k].to(device))
        opt_file = directory / "unet_optimizer.safetensors"
        if optimizer is not None and opt_file.is_file():
            moments = load_file(str(opt_file))
            for name, p in pipe.unet.named_parameters():
                if f"{name}.exp_avg" in moments:
                    optimizer.state[p] = {
                        "step": moments[f"{name}.step"].reshape(()).clone(),
                        "exp_avg": moments[f"{name}.exp_avg"].to(device, torch.float32),
                        "exp_avg_sq": moments[f"{name}.exp_avg_sq"].to(device, torch.float32),
                    }
        elif optimizer is not None:
            log.info("%s has no optimizer state: AdamW restarts with a %s", directory, "warm-up")
    log.info("resumed from %s: VAE step %d, UNet step %d", directory, state.vae_step, state.unet_step)
    return state


def load_trained_vae(pipe: FourDMPipeline, folder: Path, dtype: torch.dtype) -> float:
    """Load the VAE of an exported demo FourDM folder into `pipe` (held at `dtype`, as a frozen VAE is) and return
    its scaling factor.

    Raises:
        StageError: no VAE there, or one of another architecture.
    """
    folder = Path(folder)
    vae_dir = folder / "vae" if (folder / "vae").is_dir() else folder
    weights, config = vae_dir / "diffusion_pytorch_model.safetensors", vae_dir / "config.json"
    if not weights.is_file() or not config.is_file():
        raise StageError(f"vae_from {folder}: no exported VAE there (expected {weights} and {config})")
    theirs = json.loads(config.read_text())
    ours = dict(pipe.vae.config)
    keys = ("block_out_channels", "layers_per_block", "latent_channels", "norm_num_groups", "sample_size")
    norm = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    differ = {k: (theirs.get(k), ours.get(k)) for k in keys if norm(theirs.get(k)) != norm(ours.get(k))}
    if differ:
        raise StageError(f"vae_from {folder}: the VAE differs from the configured one (theirs, ours): {differ}")
    try:
        pipe.vae.load_state_dict({k: v.to(torch.float32) for k, v in load_file(str(weights)).items()})
    except RuntimeError as err:
        raise StageError(f"vae_from {folder}: {weights.name} does not match the configured VAE ({err})") from None
    round_to(pipe.vae, dtype)
    scaling = float(theirs["scaling_factor"])
    pipe.vae.register_to_config(scaling_factor=scaling)
    log.info("VAE and scaling factor %.5f from %s (phase 1 skipped)", scaling, vae_dir)
    return scaling


# -- phase 1: the VAE ---------------------------------------------------------------------------------------------


def _images(bank_rgb: Tensor, idx: Tensor) -> Tensor:
    """uint8 (M, H, W, 3) on device → float (N, 3, H, W) in [−1, 1]."""
    return bank_rgb[idx].permute(0, 3, 1, 2).float() / 127.5 - 1.0


def vae_loss(vae: nn.Module, x: Tensor, object_mask: Tensor, cfg: DemoModelConfig, generator: torch.Generator):
    """Weighted L1 reconstruction (1 + w on object pixels) + kl_weight · KL; returns (loss, parts)."""
    posterior = vae.encode(x).latent_dist
    noise = torch.randn(posterior.mean.shape, generator=generator, device=generator.device).to(x)
    recon = vae.decode(posterior.mean + posterior.std * noise).sample
    weight = 1.0 + cfg.vae_object_weight * object_mask
    l1 = (weight * (recon.float() - x).abs()).mean()
    kl = posterior.kl().mean()
    return l1 + cfg.vae_kl_weight * kl, {"l1": l1.detach(), "kl": kl.detach()}


def train_vae(
    pipe: FourDMPipeline,
    rgb: Tensor,
    alpha: Tensor,
    cfg: DemoModelConfig,
    state: TrainState,
    deadline: float,
    logger: _Log,
) -> None:
    """Phase 1 up to `cfg.vae_steps` or the deadline (cosine learning rate after a 100-step warm-up)."""
    vae, device = pipe.vae, pipe.device
    vae.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_learning_rate, weight_decay=0.0)
    autocast = _autocast(cfg, device)
    t0 = time.monotonic()
    for step in range(state.vae_step, cfg.vae_steps):
        if time.monotonic() > deadline:
            break
        gen = step_generator(cfg.seed + 1, step)
        idx = torch.randint(rgb.shape[0], (cfg.vae_batch_size,), generator=gen).to(device)
        x = _images(rgb, idx)
        mask = (alpha[idx] > 0).float()[:, None]
        warm = min(1.0, (step + 1) / VAE_WARMUP)
        cosine = 0.5 * (1 + math.cos(math.pi * step / max(1, cfg.vae_steps)))
        for group in optimizer.param_groups:
            group["lr"] = cfg.vae_learning_rate * warm * (0.1 + 0.9 * cosine)
        with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            loss, parts = vae_loss(vae, x, mask, cfg, _device_generator(device, cfg.seed + 1, step))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        state.vae_step = step + 1
        logger.add("vae", state.vae_step, loss, parts, optimizer.param_groups[0]["lr"])
    state.seconds["vae"] = state.seconds.get("vae", 0.0) + time.monotonic() - t0
    vae.eval().requires_grad_(False)


@torch.no_grad()
def latent_statistics(pipe: FourDMPipeline, rgb: Tensor, batch: int = 256) -> tuple[Tensor, Tensor]:
    """Posterior mean and std (unscaled) of every image: two (M, C, h, w) float32 tensors on the device."""
    means, stds = [], []
    for start in range(0, rgb.shape[0], batch):
        idx = torch.arange(start, min(start + batch, rgb.shape[0]), device=rgb.device)
        posterior = pipe.vae.encode(_images(rgb, idx).to(pipe.vae.dtype)).latent_dist
        means.append(posterior.mean.float())
        stds.append(posterior.std.float())
    return torch.cat(means), torch.cat(stds)


def fit_scaling_factor(mean: Tensor, std: Tensor, seed: int) -> float:
    """1 / std of posterior samples over all images and latent elements (SD's recipe for 0.18215)."""
    gen = torch.Generator(device=mean.device).manual_seed(seed)
    z = mean + std * torch.randn(mean.shape, generator=gen, device=mean.device)
    return float(1.0 / z.float().std())


# -- phase 2: the UNet --------------------------------------------------------------------------------------------


@dataclass
class Caches:
    """Everything phase 2 reads per step, on the device: scaled posterior mean/std per image, CLIP-vision tokens per
    image, text tokens per subject caption plus the empty caption (last row)."""

    mean: Tensor
    std: Tensor
    tokens: Tensor
    text: Tensor


@torch.no_grad()
def build_caches(
    pipe: FourDMPipeline, bank: ClipBank, rgb: Tensor, batch: int = 512, index: Tensor | None = None
) -> Caches:
    """Caches of every image of the bank, or of the images `index` (1-D, rows in that order) only."""
    images = bank.rgb
    if index is not None:
        rgb, images = rgb[index.to(rgb.device)].to(pipe.device), bank.rgb[index.cpu().numpy()]
    mean, std = latent_statistics(pipe, rgb)
    scale = pipe.vae.config.scaling_factor
    tokens = torch.cat(
        [pipe.encode_images(images[s : s + batch]).float() for s in range(0, len(images), batch)]
    )  # (M, T, E)
    text = pipe.encode_text([*bank.subject_captions, ""]).float()  # (S + 1, 77, D)
    return Caches(mean=mean * scale, std=std * scale, tokens=tokens, text=text)


def unet_step_loss(
    pipe: FourDMPipeline,
    bank: ClipBank,
    caches: Caches,
    cfg: DemoModelConfig,
    step: int,
    denoiser: nn.Module | None = None,
) -> Tensor:
    """Eq. 7 on one batch of windows drawn for `step` (a pure function of seed and step); `denoiser` is the UNet
    to call (e.g. a `torch.compile` of `pipe.unet`, sharing its parameters)."""
    device = pipe.device
    gen = step_generator(cfg.seed, step)
    focus = bank.names.index(cfg.focus_clip) if cfg.focus_clip else None
    w = sample_windows(
        bank,
        cfg.batch_size,
        cfg.num_frames,
        cfg.max_frame_stride,
        gen,
        cfg.time_reversal,
        focus,
        cfg.focus_fraction,
        cfg.front_view_only,
        cfg.front_view_any_base,
    )
    keep = (~dropout_mask(cfg.batch_size, cfg.condition_dropout, gen)).to(device)
    dev_gen = _device_generator(device, cfg.seed, step)
    views, cond = w.views.to(device), w.condition.to(device)

    def sample(idx: Tensor) -> Tensor:
        noise = torch.randn((*idx.shape, *caches.mean.shape[1:]), generator=dev_gen, device=device)
        return caches.mean[idx] + caches.std[idx] * noise

    x0 = sample(views)  # (B, F, 4, C, h, w)
    ref = sample(cond) * keep[:, None, None, None, None]  # (B, F, C, h, w)
    tokens = caches.tokens[cond] * keep[:, None, None, None]  # (B, F, T, E)
    empty = caches.text.shape[0] - 1
    text = caches.text[torch.where(keep, w.captions.to(device), empty)]  # (B, 77, D)
    return denoising_loss(
        denoiser or pipe.unet,
        pipe.scheduler,
        x0,
        ref,
        tokens,
        text,
        w.cameras.to(device),
        dev_gen,
        _autocast(cfg, device),
    )


def train_unet(
    pipe: FourDMPipeline,
    bank: ClipBank,
    caches: Caches,
    cfg: DemoModelConfig,
    state: TrainState,
    optimizer: torch.optim.Optimizer,
    ema: dict[str, Tensor],
    warm_from: int,
    deadline: float,
    logger: _Log,
    on_checkpoint,
) -> None:
    """Phase 2 up to `cfg.unet_steps` or the deadline; learning rate warms up from step `warm_from`."""
    unet = pipe.unet
    unet.train().requires_grad_(True)
    params = dict(unet.named_parameters())
    denoiser = torch.compile(unet) if cfg.compile_unet else unet
    t0 = time.monotonic()
    for step in range(state.unet_step, cfg.unet_steps):
        if time.monotonic() > deadline:
            break
        lr = cfg.learning_rate * min(1.0, (step - warm_from + 1) / max(1, cfg.warmup_steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = unet_step_loss(pipe, bank, caches, cfg, step, denoiser)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
        optimizer.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            keys = list(ema)
            torch._foreach_lerp_([ema[k] for k in keys], [params[k].detach() for k in keys], 1.0 - decay)
        state.unet_step = step + 1
        state.windows += cfg.batch_size
        logger.add("unet", state.unet_step, loss, {"grad_norm": grad_norm}, lr)
        if state.unet_step % cfg.checkpoint_every == 0:
            state.seconds["unet"] = state.seconds.get("unet", 0.0) + time.monotonic() - t0
            t0 = time.monotonic()
            on_checkpoint()
    state.seconds["unet"] = state.seconds.get("unet", 0.0) + time.monotonic() - t0
    unet.eval().requires_grad_(False)


# -- export and samples -------------------------------------------------------------------------------------------


def export_pipeline(pipe: FourDMPipeline, ema: dict[str, Tensor] | None, directory: Path, dtype: torch.dtype) -> None:
    """Save the pipeline with the EMA UNet weights as a FourDM folder (`load_fourdm`), atomically."""
    directory = Path(directory)
    unet = copy.deepcopy(pipe.unet)
    if ema is not None:
        unet.load_state_dict({**unet.state_dict(), **ema})
    parts = {name: copy.deepcopy(getattr(pipe, name)) for name in ("vae", "text_encoder", "image_encoder")}
    out = FourDMPipeline(
        unet, parts["vae"], copy.deepcopy(pipe.scheduler), parts["text_encoder"], pipe.tokenizer,
        parts["image_encoder"],
        pipe.feature_extractor,
    )  # fmt: skip
    out.to("cpu", dtype)
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    out.save_pretrained(tmp)
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)


def eval_windows(bank: ClipBank, num_frames: int, max_stride: int) -> list[tuple[int, int, list[int]]]:
    """One sample window per subject: its longest clip (name order on ties), the view nearest azimuth 0 as
    the conditioning view (the demo input's), frames from 0 at the clip's stride: (clip, view, frames)."""
    out = []
    for k in range(len(bank.subject_captions)):
        members = [c for c in range(len(bank.names)) if bank.subjects[c] == k]
        clips = sorted((-bank.num_frames[c], bank.names[c], c) for c in members)
        c = clips[0][2]
        nv = bank.num_views[c]
        view = front_view(nv)
        stride = clip_stride(bank.num_frames[c], num_frames, max_stride)
        out.append((c, view, [i * stride for i in range(num_frames)]))
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of float images in [0, 1]."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 100.0 if mse == 0 else 10.0 * math.log10(1.0 / mse)


def write_samples(pipe: FourDMPipeline, bank: ClipBank, cfg: DemoModelConfig, directory: Path) -> dict:
    """Grids (rows: input; per view ground truth then one row per CFG scale) and PSNR vs the ground truth."""
    directory.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, dict[str, float]] = {}
    for c, view, frames in eval_windows(bank, cfg.num_frames, cfg.max_frame_stride):
        nv = bank.num_views[c]
        cond = bank.rgb[[bank.index(c, view, f) for f in frames]]  # (F, H, W, 3)
        truth = (
            np.stack(
                [bank.rgb[[bank.index(c, (view + k * nv // 4) % nv, f) for f in frames]] for k in range(4)]
            ).astype(np.float32)
            / 255.0
        )  # (4, F, H, W, 3)
        rows = [cond.astype(np.float32) / 255.0]
        samples = {}
        for scale in cfg.sample_guidance_scales:
            out = pipe(
                cond,
                bank.captions[c],
                negative_prompt="",
                elevation_deg=bank.elevations[c],
                num_inference_steps=cfg.sample_steps,
                guidance_scale=scale,
                generator=torch.Generator(pipe.device).manual_seed(cfg.seed),
            )
            samples[scale] = out.images
            metrics.setdefault(bank.names[c], {})[f"psnr_cfg{scale:g}"] = psnr(out.images, truth)
        for k in range(4):
            rows.append(truth[k])
            rows += [samples[s][k] for s in cfg.sample_guidance_scales]
        grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
        grid = (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)
        write_rgba(directory / f"{bank.names[c]}.png", np.dstack([grid, np.full(grid.shape[:2], 255, np.uint8)]))
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


@torch.no_grad()
def write_vae_samples(pipe: FourDMPipeline, rgb: Tensor, directory: Path, count: int = 16) -> float:
    """Originals over reconstructions (posterior means) of `count` evenly spaced images; returns their PSNR."""
    directory.mkdir(parents=True, exist_ok=True)
    idx = torch.linspace(0, rgb.shape[0] - 1, count, device=rgb.device).round().long()
    x = _images(rgb, idx)
    recon = pipe.vae.decode(pipe.vae.encode(x.to(pipe.vae.dtype)).latent_dist.mean).sample.float()
    a, b = (((t.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy() for t in (x, recon))
    grid = np.concatenate([np.concatenate(list(a), axis=1), np.concatenate(list(b), axis=1)], axis=0)
    grid = (grid * 255).round().astype(np.uint8)
    write_rgba(directory / "vae_reconstructions.png", np.dstack([grid, np.full(grid.shape[:2], 255, np.uint8)]))
    return psnr(b, a)


def write_report(output_dir: Path, summary: dict) -> None:
    """`report.md`: the numbers of the model card (data, sizes, steps, loss curve, sample PSNRs) from the run."""
    rows = (
        [json.loads(line) for line in (output_dir / LOG_FILE).read_text().splitlines()]
        if (output_dir / LOG_FILE).is_file()
        else []
    )
    lines = [
        "# Demo 4DM training run",
        "",
        f"Device {summary['device']}, torch {summary['torch']}; this run {summary['run_wall_s']} s wall.",
        f"Data: {len(summary['data']['clips'])} clips of {len(summary['data']['subjects'])} subjects "
        f"({', '.join(summary['data']['subjects'])}), {summary['data']['images']} images at "
        f"{summary['data']['size_px']}².",
        "Parameters: " + ", ".join(f"{k} {v:,}" for k, v in summary["parameters"].items()) + ".",
        f"VAE: {summary['vae']['steps']} steps, reconstruction PSNR {summary['vae']['recon_psnr_db']:.2f} dB "
        f"(16 images, `samples/vae_reconstructions.png`), scaling factor {summary['vae']['scaling_factor']:.5f}.",
        f"UNet: {summary['unet']['steps']} steps in all ({summary['unet']['steps_this_run']} in this run at "
        f"{summary['unet']['steps_per_s_this_run']} steps/s), {summary['unet']['windows_seen']:,} windows of 8 "
        "frames × 5 slots.",
        f"Seconds: {summary['seconds']}.",
        f"Recipe of this run: {summary.get('recipe', 'not recorded')}.",
        "",
        "## Loss (mean over each logging interval)",
        "",
        "| phase | step | loss |",
        "|---|---|---|",
    ]
    for phase in ("vae", "unet"):
        sel = [r for r in rows if r["phase"] == phase]
        picks = (
            sorted({0, len(sel) // 10, len(sel) // 4, len(sel) // 2, 3 * len(sel) // 4, len(sel) - 1}) if sel else []
        )
        lines += [f"| {phase} | {sel[i]['step']} | {sel[i]['loss']:.4f} |" for i in picks if 0 <= i < len(sel)]
    lines += ["", "## Samples (PSNR in dB against the ground-truth views; grids in samples/)", ""]
    scales = sorted({k for m in summary["samples"].values() for k in m})
    lines += ["| clip | " + " | ".join(scales) + " |", "|---" * (len(scales) + 1) + "|"]
    for clip, m in summary["samples"].items():
        lines.append(f"| {clip} | " + " | ".join(f"{m[k]:.2f}" for k in scales) + " |")
    if summary.get("camera_check"):
        recipe = summary.get("recipe", {})
        front = recipe.get("front_view_only", False)
        any_base = front and recipe.get("front_view_any_base", False)
        flags = (" --front-view" if front else "") + (" --any-base" if any_base else "")
        kind = "v" if recipe.get("prediction_type") == "v_prediction" else "ε"
        lines += [
            "",
            f"## Camera check (`python -m stages.mvgen.training.camera_check{flags}`: "
            f"{kind}-MSE of 8 training windows{' conditioned on the front view' if front else ''} with",
            "the true cameras vs each view given the next view's camera; ~0 % means the camera input is unused)",
            "",
            "| t | true | rotated | relative gap | x̂0 error, own view | x̂0 error, next view |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['t']} | {r['mse_true']:.5f} | {r['mse_rotated']:.5f} | {r['relative_gap']:+.2%} | "
            f"{r['x0_own']:.4f} | {r['x0_other']:.4f} |"
            for r in summary["camera_check"]
        ]
    (output_dir / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


# -- the run ------------------------------------------------------------------------------------------------------


class _Log:
    """Averages losses over `every` steps; appends JSON lines to train_log.jsonl and logs to MLflow."""

    def __init__(self, path: Path, every: int, tracker) -> None:
        self.path, self.every, self.tracker = path, every, tracker
        self.losses: list[Tensor | float] = []
        self.parts: dict[str, list[float]] = {}
        self.last: dict[str, float] = {}

    def add(self, phase: str, step: int, loss: Tensor | float, parts: dict, lr: float) -> None:
        self.losses.append(loss.detach() if isinstance(loss, Tensor) else loss)
        for k, v in parts.items():
            self.parts.setdefault(k, []).append(v.detach() if isinstance(v, Tensor) else v)
        if step % self.every:
            return
        mean = lambda xs: float(torch.stack([torch.as_tensor(x).float().cpu() for x in xs]).mean())  # noqa: E731
        row = {"phase": phase, "step": step, "loss": mean(self.losses), "lr": lr}
        row.update({k: mean(v) for k, v in self.parts.items()})
        row["elapsed_s"] = round(time.monotonic() - _START, 2)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        self.tracker.log_metrics({f"{phase}/{k}": v for k, v in row.items() if k not in ("phase", "step")}, step=step)
        self.last[phase] = row["loss"]
        log.info("%s step %d: loss %.4f (lr %.2e, %.0f s)", phase, step, row["loss"], lr, row["elapsed_s"])
        self.losses, self.parts = [], {}


def _autocast(cfg: DemoModelConfig, device: torch.device) -> torch.dtype | None:
    return torch.bfloat16 if cfg.mixed_precision == "bf16" and device.type == "cuda" else None


def _device_generator(device: torch.device, seed: int, step: int) -> torch.Generator:
    """Noise and timesteps of one step on the device: a pure function of (seed, step) (int tuples hash stably)."""
    return torch.Generator(device).manual_seed(hash((seed, step, 1)) % (2**63))


def _export_from_checkpoint(cfg: DemoModelConfig, output_dir: Path) -> Path:
    """`export_only`: checkpoint/ → fourdm/ on the CPU."""
    with tempfile.TemporaryDirectory() as tok_dir:
        pipe = build_pipeline(cfg, Path(tok_dir))
    ema = {k: p.detach().clone() for k, p in pipe.unet.named_parameters()}
    state = load_checkpoint(output_dir / CHECKPOINT, pipe, ema, None)
    if state is None or state.unet_step == 0 or state.scaling_factor is None:
        raise StageError(f"{output_dir / CHECKPOINT}: no checkpoint with a trained UNet to export")
    export_pipeline(pipe, ema, output_dir / EXPORT, _DTYPES[cfg.export_dtype])
    log.info("exported %s (UNet step %d) from %s", output_dir / EXPORT, state.unet_step, output_dir / CHECKPOINT)
    return output_dir / EXPORT


def run(config: DemoModelConfig, *, output_dir: Path, data_dir: Path | None = None) -> Path:
    """Train (or resume) the demo 4DM and export it to `<output>/fourdm`.

    Args:
        output_dir: run folder: checkpoint/, fourdm/, samples/, train_log.jsonl, summary.json.
        data_dir: render artifacts with training rings (scripts/render_demo_training_data.sh), or one of them;
            not needed with `export_only`.

    Returns:
        the exported FourDM folder.

    Raises:
        StageError: no usable training data, a config that does not fit together, or a checkpoint of another model.
    """
    cfg = config
    deadline = _START + 60.0 * cfg.minutes
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    output_dir = Path(output_dir)
    if cfg.export_only:
        return _export_from_checkpoint(cfg, output_dir)
    if data_dir is None:
        raise StageError("--data is required to train (only export_only works without it)")
    output_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    bank = load_clip_bank(Path(data_dir), cfg.size_px, cfg.num_frames)
    if cfg.focus_clip and cfg.focus_clip not in bank.names:
        raise StageError(f"focus_clip {cfg.focus_clip!r} is not among the clips of {data_dir}: {bank.names}")
    load_s = time.monotonic() - t0
    log.info(
        "data: %d clips, %d subjects, %d images at %d² (%.1f s)",
        len(bank.names), len(bank.subject_captions), len(bank.rgb), cfg.size_px, load_s,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tok_dir:
        pipe = build_pipeline(cfg, Path(tok_dir)).to(device)
    frozen = _DTYPES[cfg.export_dtype]
    round_to(pipe.text_encoder, frozen)
    round_to(pipe.image_encoder, frozen)
    ema = {k: p.detach().clone() for k, p in pipe.unet.named_parameters()}
    optimizer = torch.optim.AdamW(pipe.unet.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sha = config_sha256(cfg)
    state = load_checkpoint(output_dir / CHECKPOINT, pipe, ema, optimizer)
    if state is None:
        state = TrainState()
        if cfg.vae_from:
            state.scaling_factor = load_trained_vae(pipe, Path(cfg.vae_from), frozen)
            state.vae_step = cfg.vae_steps
    had_optimizer_state = bool(optimizer.state)
    rgb = torch.from_numpy(bank.rgb).to(device)
    alpha = torch.from_numpy(bank.alpha).to(device)
    counts = {
        n: sum(p.numel() for p in getattr(pipe, n).parameters())
        for n in ("unet", "vae", "text_encoder", "image_encoder")
    }
    log.info("parameters: %s", counts)
    summary: dict = {}
    with stage_run("mvgen-demo-train", cfg, subject="demo") as tracker:
        logger = _Log(output_dir / LOG_FILE, cfg.log_every, tracker)
        checkpoint = lambda: save_checkpoint(output_dir / CHECKPOINT, pipe, ema, optimizer, state, sha, frozen)  # noqa: E731
        # Phase 1: the VAE, then its scaling factor.
        if state.vae_step < cfg.vae_steps:
            train_vae(pipe, rgb, alpha, cfg, state, deadline - cfg.reserve_s, logger)
            checkpoint()
        if state.vae_step < cfg.vae_steps:
            log.warning(
                "time budget spent in the VAE phase (step %d of %d): rerun to resume",
                state.vae_step,
                cfg.vae_steps,
            )
            return output_dir / EXPORT
        round_to(pipe.vae, frozen)  # from here on the VAE is frozen at the shipped precision
        vae_psnr = write_vae_samples(pipe, rgb, output_dir / SAMPLES)
        t1 = time.monotonic()
        if state.scaling_factor is None:
            mean, std = latent_statistics(pipe, rgb)
            state.scaling_factor = fit_scaling_factor(mean, std, cfg.seed)
            pipe.vae.register_to_config(scaling_factor=state.scaling_factor)
            del mean, std
        caches = build_caches(pipe, bank, rgb)
        cache_s = time.monotonic() - t1
        log.info(
            "caches in %.1f s; scaling factor %.5f; VAE reconstruction PSNR %.2f dB",
            cache_s,
            state.scaling_factor,
            vae_psnr,
        )
        # Phase 2: the UNet.
        warm_from = state.unet_step if not had_optimizer_state else 0
        start_step = state.unet_step
        t2 = time.monotonic()
        train_unet(
            pipe, bank, caches, cfg, state, optimizer, ema, warm_from, deadline - cfg.reserve_s, logger, checkpoint
        )  # fmt: skip
        unet_s = time.monotonic() - t2
        checkpoint()
        # Export, then sample from the exported folder (the loader the stages use).
        export_pipeline(pipe, ema, output_dir / EXPORT, _DTYPES[cfg.export_dtype])
        del caches
        exported = load_fourdm(output_dir / EXPORT).to(device)
        metrics = write_samples(exported, bank, cfg, output_dir / SAMPLES)
        for name in metrics:
            tracker.log_metrics({f"samples/{name}/{k}": v for k, v in metrics[name].items()}, step=state.unet_step)
        from stages.mvgen.training.camera_check import check_cameras  # imports this module

        cameras = check_cameras(
            exported,
            bank,
            windows=8,
            num_frames=cfg.num_frames,
            max_stride=cfg.max_frame_stride,
            seed=cfg.seed,
            front_view_only=cfg.front_view_only,  # the windows this model trains on
            any_base=cfg.front_view_any_base,
        )
        tracker.log_metrics({f"camera_check/relative_gap_t{r['t']}": r["relative_gap"] for r in cameras})
        steps_run = state.unet_step - start_step
        summary = {
            "config_sha256": sha,
            "data": {
                "clips": bank.names,
                "subjects": bank.subject_captions,
                "images": len(bank.rgb),
                "size_px": cfg.size_px,
                "load_s": round(load_s, 2),
            },
            "parameters": counts,
            "recipe": {
                "batch_size": cfg.batch_size,
                "learning_rate": cfg.learning_rate,
                "condition_dropout": cfg.condition_dropout,
                "focus_clip": cfg.focus_clip,
                "focus_fraction": cfg.focus_fraction,
                "vae_from": cfg.vae_from,
                "front_view_only": cfg.front_view_only,
                "front_view_any_base": cfg.front_view_any_base,
                "prediction_type": cfg.prediction_type,
                "zero_terminal_snr": cfg.zero_terminal_snr,
                "compile_unet": cfg.compile_unet,
            },
            "vae": {"steps": state.vae_step, "scaling_factor": state.scaling_factor, "recon_psnr_db": vae_psnr},
            "unet": {
                "steps": state.unet_step,
                "steps_this_run": steps_run,
                "steps_per_s_this_run": round(steps_run / unet_s, 3) if unet_s > 0 else None,
                "windows_seen": state.windows,
                "last_logged_loss": logger.last.get("unet"),
            },
            "seconds": {**{k: round(v, 1) for k, v in state.seconds.items()}, "caches": round(cache_s, 1)},
            "samples": metrics,
            "camera_check": cameras,
            "run_wall_s": round(time.monotonic() - _START, 1),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__,
        }
        (output_dir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
        write_report(output_dir, summary)
    wall = time.monotonic() - _START
    log.info("exported %s after %d UNet steps (%.0f s wall)", output_dir / EXPORT, state.unet_step, wall)
    return output_dir / EXPORT


def main(argv: list[str] | None = None) -> int:
    """The command line (argparse, not tyro: the GPU machine has only torch, transformers and the carried wheels).

    Returns:
        0, or 1 after printing one `error:` line.
    """
    p = argparse.ArgumentParser(
        prog="python -m stages.mvgen.training.demo_model",
        description="Train (or resume) the demo 4DM and export it to <output>/fourdm.",
    )
    p.add_argument("--config", type=Path, default=Path("configs/demo/demo_model.yaml"), help="DemoModelConfig YAML")
    p.add_argument("--data", type=Path, default=None, help="render artifacts with training rings")
    p.add_argument("--output", type=Path, required=True, help="run folder (resumes from its checkpoint/)")
    p.add_argument("--minutes", type=float, default=None, help="override the config's wall-clock budget")
    p.add_argument("--export-only", action="store_true", help="rebuild <output>/fourdm from <output>/checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field (YAML value)")
    args = p.parse_args(argv)
    setup_logging()
    try:
        cfg = load_config(DemoModelConfig, args.config)
        data = json.loads(cfg.model_dump_json())
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep or key not in DemoModelConfig.model_fields:
                raise StageError(f"--set {item!r}: expected KEY=VALUE with KEY a top-level field of DemoModelConfig")
            data[key] = yaml.safe_load(value)
        if args.minutes is not None:
            data["minutes"] = args.minutes
        if args.export_only:
            data["export_only"] = True
        try:
            cfg = DemoModelConfig.model_validate_json(json.dumps(data))
        except ValidationError as err:
            raise StageError(format_validation_error(err, source="command line")) from None
        run(cfg, data_dir=args.data, output_dir=args.output)
    except StageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
