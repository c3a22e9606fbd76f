"""GPU checks of the distill iteration at full size (RUN_GPU_TESTS=1 on a CUDA machine; issue #6's GPU part).

Full-size architectures with random weights: 4DM as benchmarks/mvgen_sampling.py builds it, the paper's hash grids,
full-width LPIPS-VGG, 4 views × 8 frames. Run from the repository root.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from stages.common.cameras import OrbitCamera
from stages.common.config import load_config, load_runtime
from stages.common.lpips import LPIPSVGG
from stages.distill import DistillConfig
from stages.distill.guidance import FourDMGuidance
from stages.distill.trainer import AnchorTarget, Trainer, build_field

REPO = Path(__file__).resolve().parents[2]  # not tests.distill.tiny: it imports PyAV, which the GPU python may lack

PRODUCTION = load_config(DistillConfig, REPO / "configs/distill.yaml")
PRODUCTION = PRODUCTION.model_copy(
    update={"runtime": load_runtime(DistillConfig, REPO / "configs/runtime.yaml", "distill")}
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@pytest.fixture(scope="module")
def pipeline():
    """One full-size 4DM (built once), cast to the dtype asked for; LPIPS-VGG; random input frames."""
    spec = importlib.util.spec_from_file_location("mvgen_sampling", REPO / "benchmarks/mvgen_sampling.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pipe = module.build_full_size_pipeline(torch.float32).to(torch.device("cuda"))
    lpips = LPIPSVGG(input_range="zero_to_one_unscaled", channel_norm="lpips").cuda()
    frames = (np.random.default_rng(0).random((8, 256, 256, 3)) * 255).astype(np.uint8)

    def parts(config: DistillConfig, anchor_px: int = 256):
        pipe.to(dtype=DTYPES[config.guidance.dtype])
        guidance = FourDMGuidance(pipe, guidance_scale=5.0, std_rescale=0.2)
        if next(pipe.text_encoder.parameters()).device.type != "cuda":  # an earlier trainer offloaded them
            pipe.text_encoder.cuda()
            pipe.image_encoder.cuda()
        cond = guidance.prepare(frames, "a fox", config.guidance.negative_prompt, torch.Generator().manual_seed(0))
        anchor_frames = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
        anchor_frames = torch.nn.functional.interpolate(anchor_frames, size=(anchor_px, anchor_px), mode="area")
        anchor = AnchorTarget(anchor_frames, OrbitCamera.from_angles(0, 0.0, 0.0, 1.1, 45.0))
        return guidance, cond, anchor, lpips

    return parts


def trainer_for(config: DistillConfig, parts) -> Trainer:
    guidance, cond, anchor, lpips = parts
    torch.manual_seed(config.seed)
    field = build_field(config).cuda()
    return Trainer(
        config, field, anchor, guidance=guidance, conditioning=cond, lpips=lpips, device=torch.device("cuda")
    )


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", pytest.param("torch", marks=pytest.mark.slow)])
def test_full_size_iteration_runs_at_the_64px_start_and_at_256px(pipeline, backend):
    config = PRODUCTION.model_copy(update={"field": PRODUCTION.field.model_copy(update={"backend": backend})})
    if backend == "torch":  # its double backward keeps ~38 KB a sample: the production 1 M chunk needs ~38 GB
        runtime = config.runtime.model_copy(update={"orient_chunk_samples": 1 << 17})
        config = config.model_copy(update={"runtime": runtime})
    trainer = trainer_for(config, pipeline(config))
    before = {k: v.clone() for k, v in trainer.field.state_dict().items()}
    for step in (0, max(config.sds_resolution.milestones) + 1):
        trainer.step = step
        torch.cuda.reset_peak_memory_stats()
        metrics = trainer.train_step()
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"{backend} step {step} ({config.sds_resolution(step)}²): peak {peak:.1f} GiB, {metrics}")
        assert all(np.isfinite(v) for v in metrics.values()), metrics
        assert {"loss/sds", "loss/sparsity", "loss/orient", "loss/anchor_lpips", "loss/anchor_dssim"} <= set(metrics)
    assert "loss/opaque" in metrics  # on after step 10000
    assert all(not torch.equal(before[k], v) for k, v in trainer.field.state_dict().items())


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_deferred_iteration_matches_the_direct_iteration_on_the_gpu(pipeline, backend):
    """Full-size field and 4DM in fp32 (TF32 off), 32² SDS renders so that the direct path fits: same losses, same
    gradients within float tolerance (scatter-adds in another order)."""
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        base = PRODUCTION.model_copy(
            update={
                "field": PRODUCTION.field.model_copy(update={"backend": backend}),
                "sds_resolution": PRODUCTION.sds_resolution.model_copy(update={"sizes_px": [32, 32, 32]}),
                "guidance": PRODUCTION.guidance.model_copy(update={"dtype": "float32"}),
                "runtime": PRODUCTION.runtime.model_copy(update={"offload_encoders": False}),
            }
        )
        parts = pipeline(base, anchor_px=64)
        runs = []
        # The direct run chunks the VAE encoder and the deferred one does not, so that both fit and both options
        # are compared with their references.
        for grad_chunk, vae_chunk in ((0, 8), (1 << 16, 0)):
            runtime = base.runtime.model_copy(
                update={"grad_chunk_samples": grad_chunk, "orient_chunk_samples": 1 << 14, "vae_chunk": vae_chunk}
            )
            trainer = trainer_for(base.model_copy(update={"runtime": runtime}), parts)
            seen = []
            step = trainer.optimizer.step

            def recording_step(*args, _trainer=trainer, _seen=seen, _step=step, **kwargs):
                _seen.append({n: p.grad.clone() for n, p in _trainer.field.named_parameters()})
                return _step(*args, **kwargs)

            trainer.optimizer.step = recording_step
            runs.append((trainer.train_step(), seen[0]))
        (m_direct, g_direct), (m_deferred, g_deferred) = runs
        for name, value in m_direct.items():
            assert m_deferred[name] == pytest.approx(value, rel=1e-3, abs=1e-5), name
        for name, g in g_direct.items():
            assert g.abs().max() > 0, name
            torch.testing.assert_close(g_deferred[name], g, rtol=1e-3, atol=1e-4 * float(g.abs().max()), msg=name)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
