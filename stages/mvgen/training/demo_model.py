"""The demo 4DM: built small, trained from scratch in minutes on one GPU, exported as a FourDM weights folder.

    python -m stages.mvgen.training.demo_model --config configs/demo/demo_model.yaml \
        --data .carry/demo-renders --output runs/demo-model [--minutes 8]

Phase 1 trains the VAE (weighted L1 + KL) on every rendered image and sets its scaling factor to 1/std of the
latents. Phase 2 caches the posterior of every image, the CLIP-vision tokens of every image (random frozen
encoder) and the caption tokens (random frozen text encoder), then trains the whole UNet on eq. 7
(`objective.denoising_loss`) over windows drawn from memory (`demo_data.sample_windows`), with AdamW, warm-up,
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
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import yaml  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from stages.common.config import config_sha256, format_validation_error, load_config  # noqa: E402
from stages.common.devices import resolve_device  # noqa: E402
from stages.common.errors import StageError  # noqa: E402
from stages.common.logs import setup_logging  # noqa: E402
from stages.common.tracking import stage_run  # noqa: E402
from stages.mvgen.pipeline_fourdm import load_fourdm  # noqa: E402
from stages.mvgen.training.camera_check import check_cameras  # noqa: E402
from stages.mvgen.training.demo_build import _DTYPES, build_pipeline, round_to  # noqa: E402
from stages.mvgen.training.demo_checkpoint import (  # noqa: E402
    CHECKPOINT,
    EXPORT,
    LOG_FILE,
    SAMPLES,
    SUMMARY,
    TrainState,
    export_pipeline,
    load_checkpoint,
    load_trained_vae,
    save_checkpoint,
)
from stages.mvgen.training.demo_config import DemoModelConfig  # noqa: E402
from stages.mvgen.training.demo_data import (  # noqa: E402
    load_clip_bank,
)
from stages.mvgen.training.demo_phases import (  # noqa: E402
    TrainLog,
    build_caches,
    fit_scaling_factor,
    latent_statistics,
    train_unet,
    train_vae,
)
from stages.mvgen.training.demo_samples import write_report, write_samples, write_vae_samples  # noqa: E402

__all__ = ["main", "run"]

log = logging.getLogger(__name__)
# -- the run ------------------------------------------------------------------------------------------------------


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
        data_dir: render artifacts with training rings (scripts/render_demo_training_data.py), or one of them;
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
        logger = TrainLog(output_dir / LOG_FILE, cfg.log_every, tracker, _START)
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
