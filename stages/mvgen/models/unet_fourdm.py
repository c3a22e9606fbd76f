"""FourDMUNet: ImageDream's multi-view UNet (SD-2.1-base layout) + 21 motion modules, loading the official weights.

Spec §2.1–2.4b. Batch rows are ordered `(b f v)`: b = batch/CFG branch, f = video frame, v = view slot, the last
slot of every frame being ImageDream's reference ("pixel controller") slot. Per slot:
- time embedding + camera embedding (a zero camera for the reference slot still passes the biases);
- text tokens (77) ++ resampled image-prompt tokens (16) as cross-attention context;
- the reference slot's latent is replaced by the clean latent of that frame's input image (`ip_latents`).
3D self-attention groups the V slots of a frame; motion modules attend across the F frames of each slot.

Parameter names are the LDM names of the official checkpoints (`input_blocks.1.1.transformer_blocks.0.attn2.to_k_ip`,
`middle_block.2.temporal_transformer...`), so `4dm.ckpt` loads with no renaming and the ImageDream checkpoint with
the four index renames of spec §2.2 (see `stages.mvgen.conversion`).
"""

from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from stages.mvgen.models.attention import SpatialTransformer3D
from stages.mvgen.models.motion_module import VanillaTemporalModule
from stages.mvgen.models.resampler import Resampler
from stages.mvgen.models.resnet import Downsample, GroupNorm32, ResBlock, Upsample

__all__ = ["FourDMUNet", "timestep_embedding"]


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding, cosines first (LDM `timestep_embedding`): (N,) → (N, dim) float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1) if dim % 2 else emb


class UNetBlock(nn.Sequential):
    """A sequence of layers, each called with what it needs (`TimestepEmbedSequential` of the LDM code)."""

    def forward(self, x: Tensor, emb: Tensor, context: Tensor, num_frames: int, num_views: int) -> Tensor:  # type: ignore[override]
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer3D):
                x = layer(x, context, num_views)
            elif isinstance(layer, VanillaTemporalModule):
                x = layer(x, num_frames, num_views)
            else:
                x = layer(x)
        return x


class FourDMUNet(ModelMixin, ConfigMixin):
    """The 4DM denoiser. Defaults are the official full size (1,394,882,180 parameters with motion modules).

    Args:
        in_channels / out_channels: latent channels (4).
        model_channels: channels of the first level (320).
        channel_mult: per-level multipliers (1, 2, 4, 4).
        num_res_blocks: ResBlocks per level (2).
        attention_resolutions: downsampling factors that get a spatial transformer (4, 2, 1).
        num_head_channels: channels per attention head (64).
        transformer_depth: blocks per spatial transformer (1).
        context_dim: text/image token width (1024, OpenCLIP ViT-H).
        camera_dim: flattened camera matrix size (16).
        num_ip_tokens: image-prompt tokens from the resampler (16).
        ip_embedding_dim: CLIP-vision hidden size fed to the resampler (1280).
        resampler_depth / resampler_heads / resampler_dim_head: resampler shape (4, 12, 64).
        ip_weight: weight of the image-prompt cross-attention (1.0).
        use_motion_module: append the 21 motion modules (False gives the ImageDream UNet).
        motion_num_heads: motion-module heads (8).
        motion_max_len: frames the positional encoding covers (32).
        norm_num_groups: GroupNorm groups everywhere (32).
        sample_size: latent side the model was trained at (32); informational.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 4,
        model_channels: int = 320,
        channel_mult: tuple[int, ...] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        attention_resolutions: tuple[int, ...] = (4, 2, 1),
        num_head_channels: int = 64,
        transformer_depth: int = 1,
        context_dim: int = 1024,
        camera_dim: int = 16,
        num_ip_tokens: int = 16,
        ip_embedding_dim: int = 1280,
        resampler_depth: int = 4,
        resampler_heads: int = 12,
        resampler_dim_head: int = 64,
        ip_weight: float = 1.0,
        use_motion_module: bool = True,
        motion_num_heads: int = 8,
        motion_max_len: int = 32,
        norm_num_groups: int = 32,
        sample_size: int = 32,
    ) -> None:
        super().__init__()
        self.gradient_checkpointing = False
        """Recompute each block's activations in the backward pass (`enable_gradient_checkpointing()`)."""
        groups = norm_num_groups
        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.camera_embed = nn.Sequential(nn.Linear(camera_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.image_embed = Resampler(
            dim=context_dim,
            depth=resampler_depth,
            dim_head=resampler_dim_head,
            heads=resampler_heads,
            num_queries=num_ip_tokens,
            embedding_dim=ip_embedding_dim,
            output_dim=context_dim,
        )

        def transformer(ch: int) -> SpatialTransformer3D:
            heads = ch // num_head_channels
            return SpatialTransformer3D(
                ch, heads, num_head_channels, transformer_depth, context_dim, num_ip_tokens, ip_weight, groups
            )

        def motion(ch: int) -> list[nn.Module]:
            return [VanillaTemporalModule(ch, motion_num_heads, motion_max_len, groups)] if use_motion_module else []

        # 1. Encoder: conv_in, then per level ResBlock [+ ST3D] [+ MM] × num_res_blocks and a Downsample.
        self.input_blocks = nn.ModuleList([UNetBlock(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        skip_channels, ch, ds = [model_channels], model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mult * model_channels, groups)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(transformer(ch))
                layers += motion(ch)
                self.input_blocks.append(UNetBlock(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(UNetBlock(Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2
        # 2. Middle: ResBlock, ST3D, [MM], ResBlock (the MM shifts the second ResBlock to index 3).
        self.middle_block = UNetBlock(
            ResBlock(ch, emb_dim, ch, groups), transformer(ch), *motion(ch), ResBlock(ch, emb_dim, ch, groups)
        )
        # 3. Decoder: per level (num_res_blocks + 1) × ResBlock on the skip concat [+ ST3D] [+ MM] [+ Upsample].
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, model_channels * mult, groups)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(transformer(ch))
                layers += motion(ch)
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(UNetBlock(*layers))
        conv_out = nn.Conv2d(model_channels, out_channels, 3, padding=1)
        nn.init.zeros_(conv_out.weight)
        nn.init.zeros_(conv_out.bias)
        self.out = nn.Sequential(GroupNorm32(groups, ch), nn.SiLU(), conv_out)

    def motion_module_names(self) -> list[str]:
        """Prefixes of the motion modules, e.g. `input_blocks.1.2` (21 at full size)."""
        return [name for name, m in self.named_modules() if isinstance(m, VanillaTemporalModule)]

    def freeze_spatial_layers(self) -> None:
        """Train only the motion modules (4DM training, spec §2.6): everything else stops taking gradients."""
        for name, param in self.named_parameters():
            param.requires_grad_(".temporal_transformer." in f".{name}")

    def forward(
        self,
        sample: Tensor,
        timestep: Tensor,
        encoder_hidden_states: Tensor,
        camera: Tensor,
        image_hidden_states: Tensor,
        ip_latents: Tensor | None,
        num_frames: int,
        num_views: int,
    ) -> Tensor:
        """Predict noise (ε) for every slot.

        Args:
            sample: (B·F·V, C, h, w) noisy latents, rows ordered (b f v); the last slot of each frame is the
                reference slot.
            timestep: (B·F·V,) or scalar diffusion timesteps.
            encoder_hidden_states: (B·F·V, 77, context_dim) text tokens.
            camera: (B·F·V, camera_dim) flattened c2w, zeros for the reference slot.
            image_hidden_states: (B·F·V, 257, ip_embedding_dim) CLIP-vision penultimate tokens (zeros for the
                unconditional branch; the resampler still runs on them, as the official code does).
            ip_latents: (B·F, C, h, w) clean latents written into the reference slots, or None to leave them.
            num_frames: F.
            num_views: V, reference slot included (5 for 4DM).

        Returns:
            (B·F·V, out_channels, h, w) predicted noise.
        """
        n = sample.shape[0]
        if n % (num_frames * num_views):
            raise ValueError(f"batch {n} is not a multiple of frames×views = {num_frames}×{num_views}")
        if ip_latents is not None:
            sample = sample.clone()
            sample.view(n // num_views, num_views, *sample.shape[1:])[:, -1] = ip_latents.to(sample.dtype)
        timestep = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(n)
        emb = self.time_embed(timestep_embedding(timestep, self.config.model_channels).to(sample.dtype))
        emb = emb + self.camera_embed(camera.to(sample.dtype))
        context = torch.cat([encoder_hidden_states, self.image_embed(image_hidden_states.to(sample.dtype))], dim=1)

        if self.gradient_checkpointing and torch.is_grad_enabled():
            # Each block's activations are recomputed in the backward pass (non-reentrant: gradients also reach
            # the inputs that need none, and the RNG state is replayed).
            def run(block: UNetBlock, h: Tensor) -> Tensor:
                return checkpoint(block, h, emb, context, num_frames, num_views, use_reentrant=False)
        else:

            def run(block: UNetBlock, h: Tensor) -> Tensor:
                return block(h, emb, context, num_frames, num_views)

        skips = []
        h = sample
        for block in self.input_blocks:
            h = run(block, h)
            skips.append(h)
        h = run(self.middle_block, h)
        for block in self.output_blocks:
            h = run(block, torch.cat([h, skips.pop()], dim=1))
        return self.out(h)
