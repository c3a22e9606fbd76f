from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stages.common.cameras import OrbitCamera
from stages.common.config import load_config
from stages.common.errors import StageError
from stages.common.image_io import read_rgba
from stages.distill import DistillConfig
from stages.distill.guidance import FourDMGuidance
from stages.distill.run import load_anchor_lpips
from stages.distill.schedules import LinearSchedule
from stages.distill.trainer import CHECKPOINT_FILE, AnchorTarget, Trainer, build_field
from tests.distill.tiny import REPO, write_tiny_lpips
from tests.mvgen.tiny import IMAGE_PX, tiny_pipeline

TINY = load_config(DistillConfig, REPO / "configs/tiny/distill.yaml")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trainer")
    guidance = FourDMGuidance(tiny_pipeline(tmp), guidance_scale=5.0, std_rescale=0.2)
    frames = np.random.default_rng(0).integers(0, 256, (4, IMAGE_PX, IMAGE_PX, 3), dtype=np.uint8)
    cond = guidance.prepare(frames, "a fox", "blurry", torch.Generator().manual_seed(0))
    anchor = AnchorTarget(
        torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255, OrbitCamera.from_angles(0, 0.0, 0.0, 1.1, 45.0)
    )
    return guidance, cond, anchor, load_anchor_lpips(write_tiny_lpips(tmp / "lpips"))


def make_trainer(config: DistillConfig, parts) -> Trainer:
    guidance, cond, anchor, lpips = parts
    torch.manual_seed(config.seed)
    return Trainer(config, build_field(config), anchor, guidance=guidance, conditioning=cond, lpips=lpips, device=CPU)


def test_resume_gives_bit_identical_parameters(parts, tmp_path):
    config = TINY.model_copy(
        update={
            "num_steps": 4,
            "checkpoint_every_steps": 1,
            "renderer": TINY.renderer.model_copy(
                update={"occupancy_update_every_steps": 2, "occupancy_warmup_steps": 1}
            ),
        }
    )
    straight = make_trainer(config, parts)
    straight.fit(4)
    first = make_trainer(config, parts)
    first.fit(2, checkpoint_dir=tmp_path)
    del first  # the process "dies" here; only the checkpoint survives
    resumed = make_trainer(config, parts)
    resumed.fit(4, checkpoint_dir=tmp_path)
    assert resumed.step == straight.step == 4
    for (name, a), b in zip(straight.field.state_dict().items(), resumed.field.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(straight.occupancy.occupancy, resumed.occupancy.occupancy)
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    assert not list(Path(tmp_path).glob(".*tmp")) and (tmp_path / CHECKPOINT_FILE).is_file()
    other = make_trainer(config.model_copy(update={"seed": 1}), parts)
    with pytest.raises(StageError, match="another config"):
        other.fit(5, checkpoint_dir=tmp_path)


def test_training_changes_the_field_and_only_trainable_parts(parts):
    trainer = make_trainer(TINY, parts)
    before = {k: v.clone() for k, v in trainer.field.state_dict().items()}
    unet_before = next(parts[0].pipe.unet.parameters()).clone()
    metrics = trainer.train_step()
    assert all(np.isfinite(v) for v in metrics.values())
    assert all(not torch.equal(before[k], v) for k, v in trainer.field.state_dict().items())
    assert torch.equal(unet_before, next(parts[0].pipe.unet.parameters()))


def test_anchor_only_optimisation_fits_the_example_views(tmp_path):
    """The anchor loss alone (no 4DM) makes the field reproduce a real view: the bundled fox's front view."""
    render = REPO / "examples/fox/render"
    from stages.common.artifacts import RenderManifest

    gt = RenderManifest.load(render).gt
    frames = []
    for f in range(2):
        rgba = read_rgba(gt.frame_path(render, 0, f)).astype(np.float32) / 255.0
        image = torch.from_numpy(rgba).permute(2, 0, 1)[None]
        image = torch.nn.functional.interpolate(image, size=(32, 32), mode="area")[0]
        mask = (image[3:] > 0.5).float()
        frames.append(image[:3] * mask + (1 - mask))
    from stages.common.cameras import load_cameras

    camera = load_cameras(render / gt.cameras_file)[0]
    anchor = AnchorTarget(torch.stack(frames), camera)
    lpips = load_anchor_lpips(write_tiny_lpips(tmp_path / "lpips"))
    zero = LinearSchedule.constant(0.0)
    config = TINY.model_copy(
        update={
            "num_steps": 40,
            "optimizer": TINY.optimizer.model_copy(
                update={"grid_lr": 0.05, "mlp_lr": 0.01}
            ),  # few steps: larger steps
            "field": TINY.field.model_copy(
                update={"num_levels": 4, "base_resolution": 8, "log2_hashmap_size": 12, "hidden_dim": 16}
            ),
            "renderer": TINY.renderer.model_copy(update={"num_samples_per_ray": 32}),
            "loss_weights": TINY.loss_weights.model_copy(
                update={
                    "sds": 0.0,
                    "anchor_lpips": 1.0,
                    "anchor_dssim": 1.0,
                    "orient": zero,
                    "sparsity": zero,
                    "opaque": zero,
                }
            ),
        }
    )
    torch.manual_seed(0)
    trainer = Trainer(config, build_field(config), anchor, guidance=None, conditioning=None, lpips=lpips, device=CPU)
    first = trainer.train_step()["psnr/anchor"]
    trainer.fit(40)
    with torch.no_grad():  # deterministic renders of both frames after training
        out = trainer.render([camera], trainer.times.tolist(), 32, stratified=False)
    fitted = out.rgb.reshape(2, 32, 32, 3).permute(0, 3, 1, 2)
    last = float(-10 * torch.log10((fitted - anchor.frames).pow(2).mean()))
    assert last > first + 10.0, (first, last)
