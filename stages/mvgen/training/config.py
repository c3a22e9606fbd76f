"""TrainConfig: how 4DM is trained (spec §2.6–2.7; paper §3.2, A.1), one model for every recipe.

`configs/train_fourdm.yaml` is the paper's recipe (every key); the demo model shipped in weights/demo is an overlay of
it (`configs/demo/train_fourdm.yaml`, the keys it changes). Sections: `model` (the architecture built when no
`--weights` are given), `data` (which windows are drawn), `conditioning`, `vae_phase` (a VAE trained first, for a
built model), `optim`, `schedule`; then export, device and seed. This module imports no model code.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from stages.common.config import StageConfig, SubConfig

__all__ = [
    "TrainConfig",
    "ModelConfig",
    "UNetConfig",
    "VAEConfig",
    "EncoderConfig",
    "DataConfig",
    "ConditioningConfig",
    "VAEPhaseConfig",
    "OptimConfig",
    "ScheduleConfig",
]


class UNetConfig(SubConfig):
    """FourDMUNet's sizes (defaults: the official model's)."""

    model_channels: int = Field(320, ge=8)
    """Channels of the first level."""
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    """Per-level multipliers; latents halve at every level after the first."""
    num_res_blocks: int = Field(2, ge=1)
    """ResBlocks per encoder level."""
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    """Downsampling factors with a spatial transformer."""
    num_head_channels: int = Field(64, ge=4)
    """Channels per attention head."""
    norm_num_groups: int = Field(32, ge=1)
    """GroupNorm groups; must divide model_channels."""
    num_ip_tokens: int = Field(16, ge=1)
    """Image-prompt tokens from the resampler."""
    resampler_depth: int = Field(4, ge=1)
    """Resampler blocks."""
    resampler_heads: int = Field(12, ge=1)
    """Resampler heads."""
    resampler_dim_head: int = Field(64, ge=4)
    """Resampler channels per head."""
    motion_num_heads: int = Field(8, ge=1)
    """Motion-module heads."""
    motion_max_len: int = Field(32, ge=8)
    """Frames the motion modules' positional encoding covers."""


class VAEConfig(SubConfig):
    """AutoencoderKL sizes (defaults: Stable Diffusion's)."""

    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    """Channels per level; n levels downsample by 2^(n−1)."""
    layers_per_block: int = Field(2, ge=1)
    """ResNet layers per level."""
    norm_num_groups: int = Field(32, ge=1)
    """GroupNorm groups; must divide every block's channels."""
    latent_channels: int = Field(4, ge=1)
    """Latent channels (4, as 4DM's UNet expects)."""


class EncoderConfig(SubConfig):
    """A CLIP transformer (text or vision), built with seeded random weights and frozen."""

    hidden_size: int = Field(1024, ge=8)
    """Token width (text: the UNet's context_dim; vision: the resampler's input width)."""
    intermediate_size: int = Field(4096, ge=8)
    """MLP width."""
    num_hidden_layers: int = Field(23, ge=2)
    """Transformer layers (at least 2: 4DM reads the vision model's penultimate hidden state)."""
    num_attention_heads: int = Field(16, ge=1)
    """Attention heads; must divide hidden_size."""


class ModelConfig(SubConfig):
    """The model a run builds when it is given no `--weights` (then trained from scratch, VAE first). With
    `--weights` the architecture and the noise schedule are the weights' and this section is not read."""

    unet: UNetConfig = UNetConfig()
    """The denoiser."""
    vae: VAEConfig = VAEConfig()
    """The autoencoder (trained in the VAE phase)."""
    text_encoder: EncoderConfig = EncoderConfig()
    """CLIP text transformer over a character-level CLIP tokenizer (no BPE merges); captions act as labels."""
    image_encoder: EncoderConfig = EncoderConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32)
    """CLIP vision transformer on `data.size_px` images; its penultimate tokens feed the trained resampler."""
    image_patch_px: int = Field(14, ge=2)
    """Vision transformer patch size ((size_px / patch)² + 1 tokens)."""
    encoder_seed: int = 1234
    """Seed of the random text and vision encoder weights (saved with the checkpoint and the export)."""
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    """What the UNet predicts: ε (4DM's, eq. 7) or v = √ᾱ·ε − √(1−ᾱ)·x0; written into the exported scheduler's
    config, which the sampler and the SDS guidance read."""
    zero_terminal_snr: bool = False
    """Rescale the LDM betas so that ᾱ at t = 999 is 0 (Lin et al. 2024; needs v_prediction) and sample from
    t = 999 ("trailing" spacing). With ᾱ_999 = 0.0047 a 16² latent still shows which side of the subject a view
    holds at every training timestep, so a small UNet never needs its camera input (weights/demo/README.md)."""

    @model_validator(mode="after")
    def _zero_snr_needs_v(self) -> ModelConfig:
        if self.zero_terminal_snr and self.prediction_type != "v_prediction":
            # At ᾱ = 0 the noisy latent is ε itself: an ε target says nothing about x0.
            raise ValueError("zero_terminal_snr needs prediction_type v_prediction")
        return self


class DataConfig(SubConfig):
    """Training windows (paper §3.2): F frames at a stride from a random start of a random clip, a conditioning
    view m and the 4 orthogonal views b + k·V/4 of an independent b, cameras relative to m."""

    size_px: int = Field(256, ge=8)
    """Image side (renders of another size are resized)."""
    num_frames: int = Field(8, ge=2)
    """Frames per window (paper: 8)."""
    frame_stride: int = Field(4, ge=1)
    """Step between a window's frames (paper: 4)."""
    stride: Literal["exact", "largest_fitting"] = "exact"
    """`exact`: every window at `frame_stride` (a clip too short for it is an error). `largest_fitting`: the largest
    stride ≤ `frame_stride` that fits the clip (clips rendered with 16 or 24 frames)."""
    balance: Literal["clip", "subject"] = "clip"
    """`clip`: every clip equally likely. `subject`: a subject (a caption) first, then one of its clips, so the many
    clips of one asset do not drown the single clip of another."""
    time_reversal: bool = False
    """Play half of the windows backwards (motion augmentation)."""
    focus_clip: str = ""
    """A clip (render artifact name) to draw `focus_fraction` of the windows from as the demo uses it (front view
    in, 0/90/180/270° out); empty = none."""
    focus_fraction: float = Field(0.0, ge=0.0, le=1.0)
    """Share of the windows drawn from `focus_clip`."""
    front_view_only: bool = False
    """Condition every window on its ring's front view (the render stage's input camera) and ask for the views at
    0/90/180/270° from it; the same random draws are made, so clips, frames and time reversal are the default's. A
    CPU experiment (weights/demo/README.md) measured a tiny model learning its cameras this way and not the random
    way."""
    front_view_any_base: bool = False
    """With `front_view_only`: the 4 orthogonal views start at the ring's random view (the SDS of distill asks for 4
    views at any azimuth), still conditioned on the front view. Focus windows keep the front quadruple unless
    `focus_any_base`."""
    focus_any_base: bool = False
    """Focus windows' 4 orthogonal views start at a random view of the ring (still conditioned on the front view),
    so the model learns the focus clip at every quadruple distill asks for (its 8 anchor views at 0° and 45°
    offsets), not only at 0/90/180/270°."""
    in_memory: bool = False
    """`false`: read each window's images from disk every step and encode them with the frozen VAE and CLIP.
    `true`: decode every image once, then (after the VAE phase) cache its posterior, CLIP-vision tokens and the
    captions' text tokens, and draw windows as indices into them (minutes-long runs on small data)."""


class ConditioningConfig(SubConfig):
    """Classifier-free guidance training (eq. 7)."""

    condition_dropout: float = Field(0.1, ge=0.0, le=1.0)
    """Probability that a training window is unconditional: its reference video (the pixel latents of the reference
    slot and the CLIP-vision tokens) zeroed, and with it what `drop_with_reference` names. The paper gives no p;
    0.1 is the usual choice."""
    drop_with_reference: Literal["cameras", "caption"] = "cameras"
    """What an unconditional window loses besides the reference video. `cameras`: the camera vectors are zeroed,
    the caption is kept (our reading of eq. 7). `caption`: the caption becomes the empty string, cameras are kept:
    exactly the unconditional branch of the sampler and of the SDS with an empty negative prompt."""


class VAEPhaseConfig(SubConfig):
    """Phase 1 of a built model (no `--weights`): the VAE on every image (weighted L1 + KL), then its scaling
    factor = 1 / std of the latents. Not run for loaded weights (their VAE is frozen)."""

    steps: int = Field(0, ge=0)
    """VAE optimiser steps (0: none)."""
    batch_size: int = Field(64, ge=1)
    """Images per VAE step."""
    learning_rate: float = Field(5e-4, gt=0.0)
    """AdamW learning rate (100-step warm-up, cosine to a tenth)."""
    kl_weight: float = Field(1e-6, ge=0.0)
    """Weight of the KL term (SD's VAE: 1e-6)."""
    object_weight: float = Field(4.0, ge=0.0)
    """Extra L1 weight on object pixels (alpha > 0): the white background fills most of a render."""
    reuse: str = ""
    """An exported FourDM folder whose VAE and scaling factor a fresh run takes instead of training one (the VAE
    must have `model.vae`'s architecture); ignored on resume."""


class OptimConfig(SubConfig):
    """What trains and how (AdamW)."""

    mode: Literal["paper", "scratch"] = "paper"
    """`paper`: ImageDream frozen, only the motion modules train (spec §2.6). `scratch`: the whole UNet trains.
    The VAE (after its phase) and the CLIP encoders stay frozen."""
    learning_rate: float = Field(1e-4, gt=0.0)
    """AdamW learning rate (paper: 1e-4)."""
    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW weight decay (not given by the paper)."""
    warmup_steps: int = Field(0, ge=0)
    """Linear learning-rate warm-up (0: none); also after a resume without optimiser state."""
    grad_clip: float = Field(0.0, ge=0.0)
    """Gradient norm clip (0: none)."""
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0)
    """Exponential moving average of the trained weights (0 = off); the EMA weights are what gets exported."""
    ema_warmup: bool = False
    """Warm the EMA up: decay min(ema_decay, (1 + n)/(10 + n)) at step n, so early weights fade fast."""
    mixed_precision: Literal["no", "bf16"] = "no"
    """bf16 autocast of the forward passes on CUDA (fp32 master weights; CPU runs in fp32)."""
    gradient_checkpointing: bool = False
    """Recompute each UNet block's activations in the backward pass (less memory, ~1/3 more compute)."""
    compile_unet: bool = False
    """Train through `torch.compile(unet)` (same parameters)."""
    moments_dtype: Literal["float32", "bfloat16"] = "float32"
    """Precision of the AdamW moments in the checkpoint: float32 resumes bit for bit; bfloat16 halves the file."""


class ScheduleConfig(SubConfig):
    """How long, how big, and what is written along the way."""

    steps: int = Field(30000, ge=1)
    """UNet optimiser steps to reach over all runs (paper: 30k)."""
    batch_size: int = Field(32, ge=1)
    """Windows per optimiser step over all GPUs, gradient accumulation included (paper: 32)."""
    micro_batch_size: int = Field(1, ge=1)
    """Windows per forward pass on one GPU; batch_size must be a multiple of micro_batch_size × GPUs."""
    minutes: float = Field(0.0, ge=0.0)
    """Wall-clock budget of one run from process start (0: none): training stops `reserve_s` before it."""
    reserve_s: float = Field(0.0, ge=0.0)
    """Seconds of the budget kept for the final checkpoint, samples and export."""
    checkpoint_every: int = Field(500, ge=1)
    """Steps between atomic checkpoints (one is also written when a run ends)."""
    log_every: int = Field(10, ge=1)
    """Steps between loss logs (train_log.jsonl, MLflow)."""
    sample_every: int = Field(500, ge=0)
    """Steps between sample grids of one fixed window (`samples/step_<n>.png`; 0 = none)."""
    sample_steps: int = Field(20, ge=1)
    """DDIM steps of the sample grids."""
    sample_guidance_scales: tuple[float, ...] = (3.0,)
    """CFG scales of the sample grids, one sample row each (1 = conditional branch only)."""
    final_report: bool = False
    """At the end: sample grids of every subject with their PSNR against the ground truth, the camera check and
    `report.md` (the demo model's card numbers)."""


class TrainConfig(StageConfig):
    """Train 4DM on render-stage training rings: from FourDM weights (`--weights`) or built from `model`."""

    model: ModelConfig = ModelConfig()
    """Architecture of a model built from scratch (no `--weights`)."""
    data: DataConfig = DataConfig()
    """Which windows are drawn."""
    conditioning: ConditioningConfig = ConditioningConfig()
    """Condition dropout."""
    vae_phase: VAEPhaseConfig = VAEPhaseConfig()
    """The VAE phase of a built model."""
    optim: OptimConfig = OptimConfig()
    """Optimiser, EMA, precision."""
    schedule: ScheduleConfig = ScheduleConfig()
    """Steps, batch, budget, logs, checkpoints, samples."""
    export_dtype: Literal["float16", "float32"] = "float32"
    """Precision of the exported weights (float16 halves the size; loaders upcast). A built model's frozen VAE and
    encoders are held at this precision while the UNet trains, so training sees what ships."""
    export_only: bool = False
    """Train nothing: rebuild `<output>/fourdm` from `<output>/checkpoint` with this machine's libraries."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train."""
    seed: int = 0
    """Seed of window sampling, noise and dropout (each step derives its own generators from it, so a resumed run
    draws what an uninterrupted one would) and of a built model's initialisation."""
