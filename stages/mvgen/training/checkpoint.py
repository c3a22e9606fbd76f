"""The trainer's files: its resumable checkpoint (atomic), a trained VAE a built model can start from, the exported
FourDM folder."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from stages.common.errors import StageError
from stages.mvgen.pipeline_fourdm import FourDMPipeline
from stages.mvgen.training.build import round_to

CHECKPOINT, EXPORT, SAMPLES, LOG_FILE, SUMMARY = "checkpoint", "fourdm", "samples", "train_log.jsonl", "summary.json"

log = logging.getLogger(__name__)

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
    params: dict[str, nn.Parameter],
    ema: dict[str, Tensor] | None,
    optimizer: torch.optim.Optimizer | None,
    state: TrainState,
    config_sha: str,
    *,
    built: bool,
    frozen_dtype: torch.dtype = torch.float32,
    moments_dtype: torch.dtype = torch.float32,
) -> None:
    """Write `directory` through a temp folder and a rename: a kill at any moment leaves the old or the new one.

    Files: `state.json`; for a built model (`built`) `encoders.safetensors` (in `frozen_dtype`) and `vae.safetensors`
    (float32 while it trains, then `frozen_dtype`); once the UNet trains `unet.safetensors` (the trained UNet
    parameters `params`), `unet_ema.safetensors` (float32) and `unet_optimizer.safetensors` (AdamW moments keyed by
    parameter name, in `moments_dtype`: float32 resumes bit for bit). Frozen modules are held at the export
    precision (`round_to`), so storing them in it loses nothing.
    """
    directory = Path(directory)
    tmp, old = directory.with_name(f".{directory.name}.tmp"), directory.with_name(f".{directory.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cpu = lambda d, t=torch.float32: {k: v.detach().to(t).cpu().contiguous() for k, v in d.items()}  # noqa: E731
    if built:
        vae_dtype = frozen_dtype if state.scaling_factor is not None else torch.float32
        save_file(cpu(pipe.vae.state_dict(), vae_dtype), str(tmp / "vae.safetensors"))
        save_file(cpu(_encoder_state(pipe), frozen_dtype), str(tmp / "encoders.safetensors"))
    if state.unet_step > 0:
        save_file(cpu(params), str(tmp / "unet.safetensors"))
        if ema is not None:
            save_file(cpu(ema), str(tmp / "unet_ema.safetensors"))
        if optimizer is not None:
            names = {id(p): n for n, p in params.items()}
            moments = {}
            for group in optimizer.param_groups:
                for p in group["params"]:
                    s = optimizer.state.get(p)
                    if s:
                        name = names[id(p)]
                        moments[f"{name}.exp_avg"] = s["exp_avg"].detach().to(moments_dtype).cpu().contiguous()
                        moments[f"{name}.exp_avg_sq"] = s["exp_avg_sq"].detach().to(moments_dtype).cpu().contiguous()
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
    params: dict[str, nn.Parameter],
    ema: dict[str, Tensor] | None,
    optimizer: torch.optim.Optimizer | None,
    *,
    built: bool,
) -> TrainState | None:
    """Restore `save_checkpoint`'s files into `pipe` (the UNet's `params`; a built model's VAE and encoders), `ema`
    and `optimizer`; None when `directory` holds none.

    Returns the state; its `unet_step` > 0 with no optimizer file means AdamW restarts (the caller warms up).

    Raises:
        StageError: the files do not match this model (another architecture, or other trained parameters: mode).
    """
    directory = Path(directory)
    if not (directory / "state.json").is_file():
        return None
    meta = json.loads((directory / "state.json").read_text())
    device = pipe.device

    def restore(module: nn.Module, state: dict[str, Tensor], what: str, strict: bool = True) -> None:
        try:
            module.load_state_dict(state, strict=strict)
        except RuntimeError as err:
            raise StageError(f"{directory}: {what} does not match the configured model ({err})") from None

    if built:
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
        saved = load_file(str(raw if raw.is_file() else averaged))
        buffers = {n for n, _ in pipe.unet.named_buffers()}
        if set(params) - set(saved) or set(saved) - set(params) - buffers:
            raise StageError(f"{directory} holds other trained UNet weights than this run (mode or model changed)")
        if raw.is_file():
            restore(pipe.unet, saved, raw.name, strict=False)
        else:  # a slim resume pack: training goes on from the EMA weights
            log.info("%s has no %s: training resumes from the EMA weights", directory, raw.name)
            with torch.no_grad():
                for k, v in saved.items():
                    params[k].copy_(v.to(device))
        if ema is not None:
            averaged_state = (
                load_file(str(averaged)) if averaged.is_file() else {k: p.detach() for k, p in params.items()}
            )
            for k in ema:
                ema[k].copy_(averaged_state[k].to(device))
        opt_file = directory / "unet_optimizer.safetensors"
        if optimizer is not None and opt_file.is_file():
            moments = load_file(str(opt_file))
            for name, p in params.items():
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
        raise StageError(f"vae_phase.reuse {folder}: no exported VAE there (expected {weights} and {config})")
    theirs = json.loads(config.read_text())
    ours = dict(pipe.vae.config)
    keys = ("block_out_channels", "layers_per_block", "latent_channels", "norm_num_groups", "sample_size")
    norm = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    differ = {k: (theirs.get(k), ours.get(k)) for k in keys if norm(theirs.get(k)) != norm(ours.get(k))}
    if differ:
        raise StageError(f"vae_phase.reuse {folder}: the VAE differs from the configured one (theirs, ours): {differ}")
    try:
        pipe.vae.load_state_dict({k: v.to(torch.float32) for k, v in load_file(str(weights)).items()})
    except RuntimeError as err:
        raise StageError(
            f"vae_phase.reuse {folder}: {weights.name} does not match the configured VAE ({err})"
        ) from None
    round_to(pipe.vae, dtype)
    scaling = float(theirs["scaling_factor"])
    pipe.vae.register_to_config(scaling_factor=scaling)
    log.info("VAE and scaling factor %.5f from %s (phase 1 skipped)", scaling, vae_dir)
    return scaling


def export_pipeline(pipe: FourDMPipeline, ema: dict[str, Tensor] | None, directory: Path, dtype: torch.dtype) -> None:
    """Save the pipeline with the EMA UNet weights (`ema`: some or all UNet parameters) as a FourDM folder
    (`load_fourdm`) in `dtype`, atomically."""
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
