"""DemoModelConfig: the small 4DM shipped in weights/demo (architecture, data, VAE and UNet training, time budget).

The architecture is the real one at reduced width: `FourDMUNet` (spatial transformers with 3D attention over the
5 slots, IP-Adapter-Plus resampler, camera embedding, motion modules), a diffusers `AutoencoderKL`, a
`CLIPTextModel` with a `CLIPTokenizer` and a `CLIPVisionModel` with a `CLIPImageProcessor`. Defaults are the
shipped model's (`configs/demo/demo_model.yaml`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from stages.common.config import StageConfig, SubConfig

__all__ = ["DemoModelConfig", "DemoUNetConfig", "DemoVAEConfig", "DemoEncoderConfig"]


class DemoUNetConfig(SubConfig):
    """FourDMUNet at reduced width (the official values in brackets)."""

    model_channels: int = Field(32, ge=8)
    """Channels of the first level (320)."""
    channel_mult: tuple[int, ...] = (1, 2, 2)
    """Per-level multipliers (1, 2, 4, 4); three levels on 16² latents: 16, 8, 4."""
    num_res_blocks: int = Field(1, ge=1)
    """ResBlocks per encoder level (2)."""
    attention_resolutions: tuple[int, ...] = (1, 2, 4)
    """Downsampling factors with a spatial transformer ((4, 2, 1)): every level here."""
    num_head_channels: int = Field(32, ge=4)
    """Channels per attention head (64)."""
    norm_num_groups: int = Field(8, ge=1)
    """GroupNorm groups (32); must divide model_channels."""
    num_ip_tokens: int = Field(8, ge=1)
    """Image-prompt tokens from the resampler (16)."""
    resampler_depth: int = Field(1, ge=1)
    """Resampler blocks (4)."""
    resampler_heads: int = Field(2, ge=1)
    """Resampler heads (12)."""
    resampler_dim_head: int = Field(32, ge=4)
    """Resampler channels per head (64)."""
    motion_num_heads: int = Field(4, ge=1)
    """Motion-module heads (8)."""
    motion_max_len: int = Field(32, ge=8)
    """Frames the motion modules' positional encoding covers (32)."""


class DemoVAEConfig(SubConfig):
    """AutoencoderKL trained from scratch on the renders."""

    block_out_channels: tuple[int, ...] = (32, 64, 128)
    """Channels per level; n levels downsample by 2^(n−1): 3 levels = ÷4, so 64² images give 16² latents."""
    layers_per_block: int = Field(1, ge=1)
    """ResNet layers per level (SD: 2)."""
    norm_num_groups: int = Field(8, ge=1)
    """GroupNorm groups (SD: 32); must divide every block's channels."""
    latent_channels: int = Field(4, ge=1)
    """Latent channels (4, as 4DM's UNet expects by default)."""


class DemoEncoderConfig(SubConfig):
    """A CLIP transformer (text or vision) at small size, seeded random weights, frozen."""

    hidden_size: int = Field(64, ge=8)
    """Token width (text: the UNet's context_dim; vision: the resampler's input width)."""
    intermediate_size: int = Field(128, ge=8)
    """MLP width."""
    num_hidden_layers: int = Field(2, ge=2)
    """Transformer layers (at least 2: 4DM reads the vision model's penultimate hidden state)."""
    num_attention_heads: int = Field(4, ge=1)
    """Attention heads; must divide hidden_size."""


class DemoModelConfig(StageConfig):
    """Build the small 4DM and train it from scratch (VAE, then UNet) on render-stage training rings."""

    size_px: int = Field(64, ge=16)
    """Image side the model works at (renders are resized to it when they differ)."""
    unet: DemoUNetConfig = DemoUNetConfig()
    """The denoiser."""
    vae: DemoVAEConfig = DemoVAEConfig()
    """The autoencoder."""
    text_encoder: DemoEncoderConfig = DemoEncoderConfig()
    """CLIP text transformer over a character-level CLIP tokenizer (no BPE merges: the real vocabulary cannot be
    downloaded here); captions act as subject labels."""
    image_encoder: DemoEncoderConfig = DemoEncoderConfig()
    """CLIP vision transformer on `size_px` images; its penultimate tokens feed the trained resampler."""
    image_patch_px: int = Field(8, ge=2)
    """Vision transformer patch size ((size_px / patch)² + 1 tokens)."""
    encoder_seed: int = 1234
    """Seed of the random text and vision encoder weights (frozen; saved with the checkpoint and the export)."""

    num_frames: int = Field(8, ge=2)
    """Frames per training window (4DM: 8)."""
    max_frame_stride: int = Field(3, ge=1)
    """Largest step between a window's frames. 3 = the demo input's spacing (preprocess keeps every 3rd of 24
    frames at 8 fps); clips too short for it use the largest stride that fits."""
    time_reversal: bool = True
    """Play half of the windows backwards (motion augmentation)."""
    focus_clip: str = ""
    """A clip (render artifact name, e.g. `fox-survey`) to draw `focus_fraction` of the windows from exactly as the
    demo uses it (front view in, 0/90/180/270 out); empty = none. A weighting of the training data toward the demo
    subject, stated in the model card."""
    focus_fraction: float = Field(0.0, ge=0.0, le=1.0)
    """Share of the windows drawn from `focus_clip`."""
    front_view_only: bool = False
    """Condition every window on its ring's front view (the render stage's input camera) and ask for the views at
    0/90/180/270° from it: how the demo uses the model. The paper's recipe (False) draws the conditioning view and
    the view quadruple at random, so a camera (relative to the conditioning view) places a view only together with
    what the reference shows; a CPU experiment (weights/demo/README.md) measured a tiny model that learns its cameras
    within 600 steps this way and not in 1200 steps the random way. Ours, a demo-model option."""
    front_view_any_base: bool = False
    """With `front_view_only`: the 4 orthogonal views start at a random view of the ring (any of its 16 azimuths,
    22.5° apart) instead of the front view, still conditioned on the front view. The demo's mvgen asks for
    0/90/180/270°, but the SDS of distill asks for 4 views at a random azimuth offset every step (threestudio's
    cameras): a model that has seen only the front quadruple gets cameras it never saw there. Focus windows keep
    the front quadruple."""
    condition_dropout: float = Field(0.1, ge=0.0, le=1.0)
    """Probability of an unconditional window: reference latents and CLIP tokens zeroed and the caption emptied,
    cameras kept: exactly what the sampler's and SDS's unconditional branch feeds with an empty negative
    prompt (the demo configs use one). The paper's recipe (configs/train_fourdm.yaml) zeroes cameras, keeps text."""

    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    """What the UNet predicts: ε (4DM's, eq. 7) or v = √ᾱ·ε − √(1−ᾱ)·x0. Written into the exported scheduler's
    config, which the sampler (diffusers DDIM) and the SDS guidance read."""
    zero_terminal_snr: bool = False
    """Rescale the LDM schedule's betas so that ᾱ at t = 999 is exactly 0 (Lin et al. 2024, "Common Diffusion
    Noise Schedules and Sample Steps are Flawed"; needs v_prediction), and sample from t = 999 ("trailing" DDIM
    spacing). Why (measured on the shipped model, `camera_check` and weights/demo/README.md): with the official
    schedule ᾱ_999 = 0.0047, a 16² latent still shows which side of the subject a view holds at every training
    timestep, so the UNet learns to read the view from its noisy latent and never needs its camera input; sampling
    starts from pure noise, where nothing tells the views apart but the camera. With ᾱ_999 = 0 the training sees
    views with no trace of their content, which only the camera (and the reference) can place."""

    vae_from: str = ""
    """An exported demo FourDM folder (e.g. weights/demo/fourdm) whose trained VAE and scaling factor a fresh run
    takes instead of training its own (phase 1 is skipped; the VAE must have this config's architecture). Saves
    the VAE phase (~2.6 min of an 8-minute H100 run) when only the UNet recipe changes. Ignored on resume: the
    checkpoint already holds the VAE."""
    vae_steps: int = Field(3000, ge=0)
    """VAE optimiser steps (phase 1)."""
    vae_batch_size: int = Field(64, ge=1)
    """Images per VAE step."""
    vae_learning_rate: float = Field(5e-4, gt=0.0)
    """AdamW learning rate of the VAE."""
    vae_kl_weight: float = Field(1e-6, ge=0.0)
    """Weight of the KL term (SD's VAE: 1e-6); the latents are rescaled to unit std afterwards."""
    vae_object_weight: float = Field(4.0, ge=0.0)
    """Extra L1 weight on object pixels (alpha > 0): the white background fills ~95% of a render."""

    unet_steps: int = Field(100000, ge=1)
    """UNet optimiser steps to reach over all runs; a run also stops at its time budget (`minutes`)."""
    batch_size: int = Field(32, ge=1)
    """Training windows per UNet step (each 8 frames × 5 slots)."""
    learning_rate: float = Field(4e-4, gt=0.0)
    """AdamW learning rate of the UNet (constant after warm-up; the EMA does the averaging)."""
    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW weight decay of the UNet."""
    warmup_steps: int = Field(300, ge=0)
    """Linear learning-rate warm-up, also after a resume without optimiser state."""
    grad_clip: float = Field(1.0, gt=0.0)
    """Gradient norm clip."""
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    """EMA of the UNet weights (warmed up as min(decay, (1+n)/(10+n))); the EMA weights are exported."""
    compile_unet: bool = False
    """Train through `torch.compile(unet)` (same parameters; compile time counts against the budget)."""
    mixed_precision: Literal["no", "bf16"] = "bf16"
    """bf16 autocast of the forward passes on CUDA (ignored on CPU)."""
    checkpoint_every: int = Field(1000, ge=1)
    """UNet steps between atomic checkpoints (one is also written when a run ends)."""
    log_every: int = Field(50, ge=1)
    """Steps between loss log lines (train_log.jsonl, MLflow)."""

    sample_steps: int = Field(50, ge=1)
    """DDIM steps of the sample grids."""
    sample_guidance_scales: tuple[float, ...] = (1.0, 3.0, 5.0)
    """CFG scales of the sample grids (1 = conditional branch only)."""
    minutes: float = Field(8.0, gt=0.0)
    """Wall-clock budget of one run, from process start: training stops early enough to write samples, the
    checkpoint and the export in time."""
    reserve_s: float = Field(45.0, ge=0.0)
    """Seconds of the budget kept for the final checkpoint, sample grids and export."""
    export_only: bool = False
    """Train nothing: rebuild the model from `<output>/checkpoint` and write `<output>/fourdm` with this machine's
    libraries (e.g. after a GPU run elsewhere); needs no data."""
    export_dtype: Literal["float16", "float32"] = "float16"
    """Precision of the exported weights (float16 halves the shipped size; loaders upcast)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train."""
    seed: int = 0
    """Seed of window sampling, noise, dropout and the UNet/VAE initialisation."""

    @model_validator(mode="after")
    def _zero_snr_needs_v(self) -> DemoModelConfig:
        if self.zero_terminal_snr and self.prediction_type != "v_prediction":
            # At ᾱ = 0 the noisy latent is ε itself: an ε target says nothing about x0 (and x0 = (x_t − √(1−ᾱ)ε)/√ᾱ
            # divides by zero).
            raise ValueError("zero_terminal_snr needs prediction_type v_prediction")
        return self
