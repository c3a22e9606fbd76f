"""DistillConfig: the dynamic NeRF, its renderer, cameras, guidance, loss weights and optimiser (spec §4–5)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from stages.common.config import StageConfig, SubConfig
from stages.distill.schedules import LinearSchedule, ResolutionSchedule

__all__ = [
    "DistillConfig",
    "FieldConfig",
    "RendererConfig",
    "CameraConfig",
    "GuidanceConfig",
    "LossWeights",
    "OptimizerConfig",
    "MeshConfig",
    "DistillRuntime",
    "ReconstructionConfig",
    "GaussianConfig",
    "OFFICIAL_SDS_NEGATIVE_PROMPT",
]

OFFICIAL_SDS_NEGATIVE_PROMPT = (
    "ugly, bad anatomy, blurry, pixelated obscure, unnatural colors, poor lighting, dull, and unclear, cropped, "
    "lowres, low quality, artifacts, duplicate, morbid, mutilated, poorly drawn face, deformed, dehydrated, "
    "bad proportions"
)
"""The negative prompt of 4Diffusion's SDS guidance (spec §5.1), which differs from the sampling demo's."""


class FieldConfig(SubConfig):
    """f(x, t) = HashGrid3D(x) + HashGrid4D(x, t), two bias-free MLPs (spec §4.1, paper Table 3)."""

    representation: Literal["nerf", "gaussians"] = "nerf"
    """`nerf`: the paper's dynamic NeRF (this section, `renderer`). `gaussians` (ours): 4D Gaussians rasterised as
    whole images (`gaussians`; the hash grid keys and `renderer` are then unused)."""
    backend: Literal["torch", "tcnn", "triton"] = "torch"
    """Hash grid implementation, all with the same parameters and numbers: `torch` (any device), `tcnn` (tinycudann,
    CUDA, built from source) or `triton` (our fused kernels on CUDA; falls back to the torch path on CPU)."""
    num_levels: int = Field(16, ge=1)
    """Resolution levels per grid (Table 3: 16)."""
    features_per_level: int = Field(2, ge=1)
    """Features per level (Table 3: 2); the field's feature width is num_levels·features_per_level."""
    log2_hashmap_size: int = Field(19, ge=4, le=24)
    """log2 of the largest table, entries (Table 3: 19)."""
    base_resolution: int = Field(16, ge=2)
    """Coarsest grid resolution (Table 3: 16)."""
    per_level_scale: float = Field(1.447269237440378, gt=1.0)
    """Resolution growth per level (Table 3: 16 → 4096 over 16 levels)."""
    hidden_dim: int = Field(64, ge=1)
    """Width of the density and colour MLPs (64)."""
    num_hidden_layers: int = Field(1, ge=1)
    """Hidden layers per MLP (1)."""
    blob_density: float = 10.0
    """Scale of the initial density blob `λ·(1 − ‖x‖/r)` ("blob_magic3d": 10)."""
    blob_radius: float = Field(0.5, gt=0.0)
    """Radius r of the initial density blob, world units (0.5)."""
    bbox_radius: float = Field(1.0, gt=0.0)
    """Half side of the scene box [-R, R]^3, world units (1)."""


class RendererConfig(SubConfig):
    """Ray marching with an occupancy grid shared over time (spec §4.2)."""

    num_samples_per_ray: int = Field(256, ge=2)
    """Sets the marching step `2·√3·R / num_samples_per_ray` (256 → 0.01353)."""
    alpha_threshold: float = Field(0.01, ge=0.0, lt=1.0)
    """Samples with a smaller alpha are skipped (nerfacc alpha_thre, 0.01)."""
    early_stop_eps: float = Field(1e-4, ge=0.0, lt=1.0)
    """A ray stops once its transmittance falls below this (nerfacc default 1e-4)."""
    occupancy_resolution: int = Field(32, ge=2)
    """Cells per side of the occupancy grid (32)."""
    occupancy_update_every_steps: int = Field(16, ge=1)
    """Steps between occupancy updates (nerfacc default 16)."""
    occupancy_ema_decay: float = Field(0.95, gt=0.0, le=1.0)
    """Decay of a cell's stored occupancy per update (0.95)."""
    occupancy_threshold: float = Field(0.01, gt=0.0)
    """A cell is occupied above min(this, mean occupancy); occupancy = density × step (0.01)."""
    occupancy_warmup_steps: int = Field(256, ge=0)
    """Before this step every cell is re-evaluated at each update (256)."""


class CameraConfig(SubConfig):
    """SDS, anchor and output cameras (spec §4.3)."""

    num_views: int = Field(4, ge=1)
    """Views per SDS iteration, 360°/num_views apart (4DM takes 4)."""
    radius: float = Field(1.1, gt=0.0)
    """Camera distance from the origin, world units (1.1)."""
    fov_y_deg: float = Field(45.0, gt=0.0, lt=180.0)
    """Vertical field of view, degrees (45)."""
    elevation_min_deg: float = 0.0
    """Lowest SDS elevation, degrees (0)."""
    elevation_max_deg: float = 5.0
    """Highest SDS elevation, degrees (5)."""
    anchor_view: int = Field(0, ge=0)
    """mvgen view used as the anchor video (0 = azimuth 0, the input view; spec §5.2)."""
    anchor_source: Literal["mvgen", "input"] = "mvgen"
    """Where the anchor video at the input camera comes from. `mvgen` (the paper, spec §5.2): the 4DM's generated
    view at `anchor_view`. `input` (ours): the input video itself (the preprocess frames, which mvgen samples at
    their own size): 4DM is conditioned on it as the front view (azimuth 0, elevation 0) and its view 0 redraws it in
    the same framing, so the input is that view with known rather than generated pixels. Needs `anchor_view` at
    azimuth 0, elevation 0. The paper avoids it because a real video's elevation is unknown."""
    extra_anchor_views: list[int] = Field(default_factory=list)
    """Ours, not the paper's ([] = the paper's anchor loss): more mvgen views used as anchor videos. Each step the
    anchor loss then renders the anchor view and these views at the same random frame and averages its terms over
    them. For the demo (configs/demo/distill.yaml: [1, 2, 3]): its small 4DM gives consistent views, but 150 SDS steps
    cannot carve a field from a fuzzy ball (the paper runs 35000); the 4 generated views reconstruct one in minutes."""


class GuidanceConfig(SubConfig):
    """4D-aware SDS through 4DM (spec §5.1)."""

    guidance_scale: float = Field(5.0, ge=1.0)
    """Classifier-free guidance weight (5)."""
    std_rescale: float = Field(0.2, ge=0.0, le=1.0)
    """Weight r of the x̂0 std rescale (recon_std_rescale 0.2)."""
    negative_prompt: str = OFFICIAL_SDS_NEGATIVE_PROMPT
    """Text of the unconditional branch (the official SDS negative prompt)."""
    fallback_prompt: str = ""
    """Prompt used when the upstream artifacts carry none."""
    min_step_percent: LinearSchedule = LinearSchedule(start_step=0, end_step=5000, start_value=0.98, end_value=0.02)
    """Lower bound of t as a fraction of the 1000 training timesteps (0.98 → 0.02 over steps 0–5000)."""
    max_step_percent: LinearSchedule = LinearSchedule(start_step=0, end_step=5000, start_value=0.98, end_value=0.25)
    """Upper bound of t as a fraction of the 1000 training timesteps (0.98 → 0.25 over steps 0–5000)."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Precision of 4DM (UNet, VAE, encoders). The official run keeps fp32 weights under fp16 autocast; half
    precision here is an explicit speed/memory option."""
    start_step: int = Field(0, ge=0)
    """Ours (0 = the paper): SDS is off before this step, so a reconstruction phase (`reconstruction`) can first fit
    the generated views; the timestep anneal still counts from step 0."""


class LossWeights(SubConfig):
    """Weights of the terms of paper eq. 12 (spec §5.2–5.3), schedules where the official config has them."""

    sds: float = Field(1.0, ge=0.0)
    """4D-aware SDS (lambda_sds 1)."""
    anchor_lpips: float = Field(200.0, ge=0.0)
    """λ1, LPIPS-VGG of the anchor render (200: config 100, added twice)."""
    anchor_dssim: float = Field(100.0, ge=0.0)
    """λ2, D-SSIM of the anchor render (100: config 50, added twice)."""
    anchor_l1: float = Field(0.0, ge=0.0)
    """Our addition, not the paper's (0 = the paper's anchor loss): weight of the pixel L1, mean |I_r − I_a| over
    the anchor render and the anchor frame, both on white, logged as `loss/anchor_l1`. Meant for runs without LPIPS,
    where D-SSIM alone barely constrains colour and brightness; configs/demo/distill.yaml records what it did there."""
    orient: LinearSchedule = LinearSchedule(start_step=0, end_step=5000, start_value=10.0, end_value=1000.0)
    """λ3, orientation of analytic normals (10 → 1000 over steps 0–5000)."""
    sparsity: LinearSchedule = LinearSchedule(start_value=100.0, end_value=100.0)
    """λ4, mean √(opacity² + 0.01) of the SDS renders (100)."""
    opaque: LinearSchedule = LinearSchedule(start_step=10000, end_step=10001, start_value=0.0, end_value=100.0)
    """λ5, binary entropy of the opacity (0 until step 10000, then 100)."""
    reconstruction_rgb: LinearSchedule = LinearSchedule.constant(0.0)
    """Ours (0 = the paper): weight of the reconstruction term's colour MSE (`reconstruction`)."""
    reconstruction_mask: LinearSchedule = LinearSchedule.constant(0.0)
    """Ours (0 = the paper): weight of the reconstruction term's opacity-vs-foreground MSE (`reconstruction`)."""


class OptimizerConfig(SubConfig):
    """AdamW (spec §5.4)."""

    grid_lr: float = Field(1e-2, gt=0.0)
    """Learning rate of both hash grids (1e-2)."""
    mlp_lr: float = Field(1e-3, gt=0.0)
    """Learning rate of the density and colour MLPs (1e-3)."""
    betas: tuple[float, float] = (0.9, 0.99)
    """Adam betas (0.9, 0.99)."""
    eps: float = Field(1e-15, gt=0.0)
    """Adam epsilon (1e-15)."""
    weight_decay: float = Field(0.01, ge=0.0)
    """Decoupled weight decay (torch's AdamW default 0.01, kept by the official config)."""
    final_lr_factor: float = Field(1.0, gt=0.0, le=1.0)
    """Ours (1 = the paper's constant rates): both rates decay exponentially to this fraction of their value at the
    last step, `lr · factor^(step / num_steps)`, so a short fit settles instead of hovering at its step size."""


class MeshConfig(SubConfig):
    """Optional per-timestamp mesh export: marching cubes of the density, colours from the field (README)."""

    enabled: bool = False
    """Write `meshes/mesh_{frame:05d}.{obj,glb}` for every timestamp (off: no mesh files)."""
    formats: tuple[Literal["obj", "glb"], ...] = Field(("obj", "glb"), min_length=1)
    """File formats to write: `obj` (with per-vertex colours) and/or `glb` (glTF 2.0 binary)."""
    resolution: int = Field(128, ge=8, le=1024)
    """Density samples per side of the grid over the scene box (threestudio's default 128; 256 for detail)."""
    threshold: float = Field(25.0, gt=0.0)
    """Density (per world unit) of the surface (threestudio's NeRF default 25; lower it if the mesh has holes)."""


class ReconstructionConfig(SubConfig):
    """Ours, off in the paper's recipe: fit every anchor video (anchor_view and extra_anchor_views) with random ray
    batches over all their frames and pixels (stages/distill/reconstruction.py says why)."""

    rays_per_step: int = Field(0, ge=0)
    """Rays drawn per step over every anchor view × frame × pixel; 0 turns the term off (the paper's recipe). Its
    weights are `loss_weights.reconstruction_rgb` and `loss_weights.reconstruction_mask`. Gaussians render whole
    images instead: rays_per_step / (anchor size)² random (view, frame) images a step, at least one."""
    jitter: bool = False
    """Each ray goes through a uniformly random point of its pixel instead of the pixel's centre, so the field is
    fitted to what a pixel averages over its area rather than to one point of it: renders at a finer resolution than
    the anchor videos then interpolate between pixels instead of repeating each pixel's centre sample."""


class GaussianConfig(SubConfig):
    """Ours, used when `field.representation` is `gaussians` (stages/distill/gaussians/): N Gaussians whose centres
    move along a polynomial in t, started in the anchor masks' visual hull; Adam with 3DGS's per-group rates, all
    decaying by `optimizer.final_lr_factor` (`optimizer.betas`/`eps` apply; no weight decay)."""

    backend: Literal["torch", "gsplat"] = "torch"
    """Rasteriser: `torch` (our dense reference, any device: the CPU path) or `gsplat` (gsplat 1.5.3's CUDA kernels,
    installed separately: `pip install gsplat==1.5.3`); the same images (tests/distill/test_gaussians_gsplat.py)."""
    num_gaussians: int = Field(16384, ge=1)
    """Number of Gaussians N (fixed: no densification)."""
    motion_degree: int = Field(2, ge=0, le=3)
    """K of the centres' motion μ0 + Σ_k c_k t^k (0: static; gaussians/field.py says why low)."""
    means_lr: float = Field(2e-3, gt=0.0)
    """Rate of the centres, times `field.bbox_radius` (3DGS scales it by the scene's extent)."""
    motion_lr: float = Field(2e-3, gt=0.0)
    """Rate of the motion coefficients, times `field.bbox_radius` (they are offsets of the centres)."""
    scales_lr: float = Field(5e-3, gt=0.0)
    """Rate of the log standard deviations (3DGS 0.005)."""
    quats_lr: float = Field(1e-3, gt=0.0)
    """Rate of the rotation quaternions (3DGS 0.001)."""
    opacity_lr: float = Field(5e-2, gt=0.0)
    """Rate of the opacity logits (3DGS 0.05)."""
    colour_lr: float = Field(1e-2, gt=0.0)
    """Rate of the colour logits (DreamGaussian's 0.01 for its colours)."""


class DistillRuntime(SubConfig):
    """How the stage runs, not what it computes: memory and speed knobs with the same results (exact, or within
    float tolerance where sums run in another order; each is parity-tested, performance.md). Not DVC params: they
    come from a run-time file (`--runtime configs/runtime.yaml`, section `distill:`) and stay out of
    `config_sha256`, so changing one neither reruns the stage nor invalidates its checkpoint."""

    march_chunk: int = Field(1 << 22, ge=1024)
    """Candidate samples generated at a time by the no-grad march (memory only, no effect on results)."""
    eval_chunk: int = Field(1 << 21, ge=1024)
    """Points per no-grad field evaluation (pruning pass, deferred renders): memory only, no effect on results."""
    early_stop_block: int = Field(16, ge=0)
    """The pruning pass evaluates each ray's candidates this many at a time and stops at a ray whose transmittance
    fell below early_stop_eps; 0 evaluates every candidate (the reference). Same kept samples either way, less work
    for opaque fields."""
    grad_chunk_samples: int = Field(0, ge=0)
    """0: render with autograd and back-propagate once (the reference; memory grows with the samples). > 0: deferred
    back-propagation: render without autograd, take the losses' gradients w.r.t. the pixels, then re-evaluate the
    same samples with autograd in chunks of whole rays of about this many samples and back-propagate chunk by chunk
    (same gradients within float tolerance; bounded memory; one extra colour-MLP pass)."""
    orient_chunk_samples: int = Field(1 << 17, ge=1)
    """Chunk size of the orientation pass on the deferred path: its double backward through the grids keeps far more
    per sample (torch grids: ~38 KB against ~5 KB), so its chunks are smaller."""
    vae_chunk: int = Field(0, ge=0)
    """0: the VAE encoder keeps one autograd graph for all F·V renders until the SDS loss is back-propagated (its
    activations: ~0.9 GiB per 256² image in fp32, half in 16 bit). > 0: encode without autograd, then re-encode
    this many renders at a time with autograd for the backward (same gradients within float tolerance; memory of
    one chunk; one extra encoder forward)."""
    offload_encoders: bool = False
    """Move 4DM's text and image encoders to the CPU once the conditioning is encoded (frees ~4 GiB of GPU memory
    in fp32; no effect on results)."""


class DistillConfig(StageConfig):
    """Optimise a dynamic NeRF from the mvgen anchor videos and 4DM guidance (paper §3.3, spec §4–5)."""

    num_steps: int = Field(35000, ge=1)
    """Optimisation steps (35000)."""
    sds_resolution: ResolutionSchedule = ResolutionSchedule()
    """Side of the SDS renders over the steps (64 / 192 / 256 at 0 / 5000 / 10000)."""
    field: FieldConfig = FieldConfig()
    """The 4D representation."""
    renderer: RendererConfig = RendererConfig()
    """Ray marching and the occupancy grid."""
    cameras: CameraConfig = CameraConfig()
    """Camera distributions."""
    guidance: GuidanceConfig = GuidanceConfig()
    """4DM score distillation."""
    loss_weights: LossWeights = LossWeights()
    """Weights of the loss terms."""
    reconstruction: ReconstructionConfig = ReconstructionConfig()
    """The reconstruction term (ours; off in the paper's recipe)."""
    optimizer: OptimizerConfig = OptimizerConfig()
    """AdamW settings."""
    gaussians: GaussianConfig = GaussianConfig()
    """The 4D Gaussians (ours), when `field.representation` is `gaussians`."""
    output_size_px: int = Field(256, ge=8)
    """Side of the written renders (eval views, input view, preview), pixels."""
    preview_segments: int = Field(8, ge=1)
    """Orbit preview: this many segments of F frames at a fixed azimuth then F frames turning 360°/segments while
    time plays (the official test trajectory: 8 segments, 128 frames for F = 8)."""
    mesh: MeshConfig = MeshConfig()
    """Per-timestamp mesh export (off by default)."""
    log_every_steps: int = Field(50, ge=1)
    """Steps between MLflow metric logs."""
    validate_every_steps: int = Field(1000, ge=1)
    """Steps between validation renders (logged to MLflow)."""
    checkpoint_every_steps: int = Field(500, ge=1)
    """Steps between atomic checkpoints (only when the run has a `--checkpoint` folder)."""
    seed: int = 23
    """Seed of every random draw (cameras, timesteps, noise, samples); the official run uses 23."""
    deterministic: bool = False
    """Use torch's deterministic kernels: bit-identical reruns (multi-threaded CPU and CUDA scatter-adds otherwise
    vary in the last bits), at some speed cost on the GPU. configs/tiny sets it."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to run; `cuda` without a GPU is an error."""
    runtime: DistillRuntime = DistillRuntime()
    """Memory and speed knobs (`DistillRuntime`): from `--runtime`, never from the stage's config file."""

    @model_validator(mode="after")
    def _gaussians_have_no_density(self) -> DistillConfig:
        """A Gaussian field has no density field: no marching-cubes meshes, no analytic normals to orient."""
        if self.field.representation == "gaussians":
            if self.mesh.enabled:
                raise ValueError(
                    "mesh.enabled needs field.representation nerf (a Gaussian field has no density to mesh)"
                )
            if max(self.loss_weights.orient.start_value, self.loss_weights.orient.end_value) > 0:
                raise ValueError(
                    "loss_weights.orient needs field.representation nerf (Gaussians have no density "
                    "normals): set its start_value and end_value to 0"
                )
        return self
