"""Oracle mvgen: given the ground truth's own 4 views of every shared animated asset as its anchor videos (no SDS),
distill must reproduce them. A 4D reconstruction from 4 clean orthogonal videos is the easy half of the stage.

The fixtures are render-stage renders of the shared assets (tests/distill/make_oracle_fixtures.py says how they were
made), 4 GT views × 8 frames at 32², fitted with the demo's recipe (configs/demo/distill.yaml) without SDS, for
NUM_STEPS steps: two thirds of the demo's 240, its learning rates decaying over the shorter run. The weakest asset
(parrot) reaches 32.3 dB there (35.1 dB at 240 steps), every other one 33.9 dB or more.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stages.common.cameras import OrbitCamera
from stages.common.config import load_config
from stages.distill import DistillConfig
from stages.distill.trainer import AnchorTarget, Trainer, build_field
from tests.distill.tiny import REPO

FIXTURES = sorted((Path(__file__).parent / "fixtures").glob("oracle_*.npz"))
NUM_STEPS = 160
CAMERAS = [OrbitCamera.from_angles(v, a, 0.0, 1.1, 45.0) for v, a in enumerate((0.0, 90.0, 180.0, 270.0))]


def test_every_shared_animated_asset_has_a_fixture():
    names = {f.stem.removeprefix("oracle_") for f in FIXTURES}
    assert names == {"fox", "flamingo", "parrot", "robotexpressive", "alpaca_animated"}


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.stem.removeprefix("oracle_"))
def test_reconstruction_reproduces_the_ground_truth_views(fixture):
    data = np.load(fixture)
    rgb = torch.from_numpy(data["rgb"]).float().permute(0, 1, 4, 2, 3) / 255.0  # (4, F, 3, S, S)
    mask = (torch.from_numpy(data["alpha"]).float()[:, :, None] > 127).float()  # (4, F, 1, S, S)
    videos = rgb * mask + (1.0 - mask)
    size = videos.shape[-1]
    config = load_config(DistillConfig, REPO / "configs/demo/distill.yaml")
    weights = config.loss_weights.model_copy(update={"sds": 0.0})
    config = config.model_copy(update={"num_steps": NUM_STEPS, "loss_weights": weights})
    anchor = AnchorTarget(videos[0], CAMERAS[0], videos[1:], CAMERAS[1:], masks=mask)
    torch.manual_seed(config.seed)
    cpu = torch.device("cpu")
    trainer = Trainer(config, build_field(config), anchor, guidance=None, conditioning=None, lpips=None, device=cpu)
    trainer.fit(config.num_steps)
    with torch.no_grad():
        renders = [trainer.render(CAMERAS, [float(t)], size, stratified=False).rgb for t in trainer.times]
    fitted = torch.stack([r.reshape(4, size, size, 3) for r in renders], 1).permute(0, 1, 4, 2, 3)  # (4, F, 3, S, S)
    psnr = float(-10 * torch.log10((fitted - videos).pow(2).mean()))
    assert psnr >= 30.0, psnr
