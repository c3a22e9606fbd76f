"""The one trainer's config layout and the behaviour it pins by known answers (no model, milliseconds):

- configs/train_fourdm.yaml spells every key; each config set's training file is an overlay holding only changes;
- the window sampler's draw order for a seed (the windows both data paths train on);
- an in-memory micro-batch's loss equals eq. 7 computed here from the documented generator protocol."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from diffusers import DDIMScheduler

from stages.common.cameras import fourdm_camera_vectors
from stages.common.config import config_layers, load_config
from stages.mvgen.pipeline_fourdm import official_scheduler
from stages.mvgen.training.bank import ClipBank
from stages.mvgen.training.batches import Caches, MemoryBatches
from stages.mvgen.training.cli import parse_config
from stages.mvgen.training.config import TrainConfig
from stages.mvgen.training.objective import step_generator
from stages.mvgen.training.windows import ClipTable, WindowSpec, draw_window

REPO = Path(__file__).resolve().parents[2]
OVERLAYS = ["configs/demo/train_fourdm.yaml", "configs/tiny/train_fourdm.yaml", "configs/tiny/train_fourdm_demo.yaml"]


def leaves(data: object, prefix: str = "") -> dict[str, object]:
    if not isinstance(data, dict):
        return {prefix: data}
    return {k: v for key, value in data.items() for k, v in leaves(value, f"{prefix}{key}.").items()}


def test_the_papers_file_spells_every_key():
    path = REPO / "configs/train_fourdm.yaml"
    spelled = leaves(yaml.safe_load(path.read_text()))
    assert spelled.keys() == leaves(load_config(TrainConfig, path).model_dump(mode="json")).keys()


@pytest.mark.parametrize("name", OVERLAYS)
def test_training_config_sets_are_overlays_of_the_paper_holding_only_their_changes(name):
    path = REPO / name
    layers = config_layers(path)
    assert layers[0] == REPO / "configs/train_fourdm.yaml" and layers[-1] == path
    load_config(TrainConfig, path)  # the merged config validates
    base = leaves(parse_config(layers[-2], []).model_dump(mode="json"))
    overlay = leaves({k: v for k, v in yaml.safe_load(path.read_text()).items() if k != "base"})
    for key, value in overlay.items():
        assert base[key] != value, f"{name}: {key} repeats its base's value {value!r}"


# Three clips of 8 views (24, 10, 16 frames); subjects: clips 0 and 1 are subject 1, clip 2 is subject 0.
TABLE = ClipTable([24, 10, 16], [8, 8, 8], [1, 1, 0], ["a", "b", "c"])


def draws(spec: WindowSpec) -> list[tuple]:
    gen = step_generator(0, 1)
    return [(w.clip, w.frames, w.mono, w.ring) for w in (draw_window(TABLE, spec, gen) for _ in range(4))]


def test_window_draw_order_for_a_seed_is_pinned():
    # The paper's recipe: any clip, exact stride, random conditioning view and quadruple.
    assert [(c, f, r) for c, f, _, r in draws(WindowSpec(4, 3))] == [
        (0, [5, 8, 11, 14], [2, 4, 6, 0]),
        (0, [9, 12, 15, 18], [4, 6, 0, 2]),
        (1, [0, 3, 6, 9], [1, 3, 5, 7]),
        (2, [4, 7, 10, 13], [6, 0, 2, 4]),
    ]
    # The demo's: subject-balanced, the largest stride ≤ 3 that fits (clip 1: 10 frames → stride 3).
    assert draws(WindowSpec(4, 3, "largest_fitting", "subject")) == [
        (0, [9, 12, 15, 18], 2, [0, 2, 4, 6]),
        (2, [2, 5, 8, 11], 4, [5, 7, 1, 3]),
        (1, [0, 3, 6, 9], 0, [1, 3, 5, 7]),
        (2, [6, 9, 12, 15], 1, [1, 3, 5, 7]),
    ]
    # The shipped demo model's: focus clip, time reversal, front view (4) in, any quadruple out.
    spec = WindowSpec(4, 3, "largest_fitting", "subject", True, 2, 0.5, True, True)
    assert draws(spec) == [
        (2, [14, 11, 8, 5], 4, [4, 6, 0, 2]),
        (2, [15, 12, 9, 6], 4, [4, 6, 0, 2]),
        (2, [10, 7, 4, 1], 4, [4, 6, 0, 2]),
        (2, [0, 3, 6, 9], 4, [4, 6, 0, 2]),
    ]


def fake_unet(noisy, t, text, cameras, tokens, ref, frames, slots):  # noqa: ANN001, ARG001
    """Its output reads every conditioning input, so the loss depends on what condition dropout zeroes."""
    return noisy + (cameras.sum(1) + tokens.mean((1, 2)) + text.mean((1, 2)))[:, None, None, None]


@pytest.mark.parametrize("drop", ["cameras", "caption"])
def test_an_in_memory_micro_batch_loss_is_eq7_of_the_documented_draws(drop):
    B, F, C, h = 3, 2, 4, 2  # windows, frames, latent channels, latent side
    n = 8 * (24 + 10 + 16)
    g = torch.Generator().manual_seed(7)
    caches = Caches(
        mean=torch.randn(n, C, h, h, generator=g),
        std=torch.rand(n, C, h, h, generator=g),
        tokens=torch.randn(n, 3, 5, generator=g),
        text=torch.randn(3, 77, 6, generator=g),  # subjects 0, 1, then the empty caption
    )
    bank = ClipBank(
        rgb=np.zeros((n, 1, 1, 3), np.uint8), alpha=np.zeros((n, 1, 1), np.uint8), names=TABLE.names,
        captions=["cube", "cube", "ball"], num_views=TABLE.num_views, num_frames=TABLE.num_frames,
        elevations=[10.0] * 3, offsets=[0, 8 * 24, 8 * 34], subjects=TABLE.subjects, subject_captions=["ball", "cube"],
    )  # fmt: skip
    config = parse_config(
        REPO / "configs/tiny/train_fourdm_demo.yaml",
        [f"data.num_frames={F}", f"schedule.micro_batch_size={B}", "schedule.batch_size=3", "seed=5",
         "conditioning.condition_dropout=0.5", f"conditioning.drop_with_reference={drop}",
         "model.prediction_type=v_prediction"],
    )  # fmt: skip
    scheduler = DDIMScheduler(**{**official_scheduler().config, "prediction_type": "v_prediction"})
    pipe = SimpleNamespace(device=torch.device("cpu"), scheduler=scheduler, unet=None)
    loss = MemoryBatches(pipe, bank, caches, config).loss(step=4, index=0, denoiser=fake_unet)

    # Eq. 7 from the documented protocol: windows and dropout from step_generator(seed, step, 0); posterior
    # samples of the views then of the reference, ε and t from the generator of (seed, step, 1).
    gen = step_generator(5, 4, 0)
    spec = WindowSpec(F, 3, "largest_fitting", "subject", time_reversal=True)
    windows = [draw_window(TABLE, spec, gen) for _ in range(B)]
    keep = (torch.rand(B, generator=gen) >= 0.5).float()
    assert 0 < keep.sum() < B  # both kinds of window in this batch
    dev = torch.Generator().manual_seed(hash((5, 4, 1)) % (2**63))
    views = torch.tensor([[[bank.index(w.clip, v, f) for v in w.ring] for f in w.frames] for w in windows])
    cond = torch.tensor([[bank.index(w.clip, w.mono, f) for f in w.frames] for w in windows])
    x0 = caches.mean[views] + caches.std[views] * torch.randn((B, F, 4, C, h, h), generator=dev)
    torch.randn((B, F, C, h, h), generator=dev)  # the reference's sample: not in the views' loss
    eps = torch.randn((B, F, 5, C, h, h), generator=dev)[:, :, :4]
    t = torch.randint(0, 1000, (B,), generator=dev)
    a = scheduler.alphas_cumprod[t].reshape(B, 1, 1, 1, 1, 1)
    cameras = torch.stack([torch.from_numpy(fourdm_camera_vectors(w.azimuths, 10.0)) for w in windows])
    subject = torch.tensor([TABLE.subjects[w.clip] for w in windows])
    if drop == "cameras":
        cameras = cameras * keep[:, None, None]
    else:
        subject = torch.where(keep.bool(), subject, 2)
    shift = cameras[:, :4].sum(-1)[:, None, :] + (caches.tokens[cond].mean((2, 3)) * keep[:, None])[:, :, None]
    shift = shift + caches.text[subject].mean((1, 2))[:, None, None]  # (B, F, 4)
    out = a.sqrt() * x0 + (1 - a).sqrt() * eps + shift[..., None, None, None]
    target = a.sqrt() * eps - (1 - a).sqrt() * x0
    torch.testing.assert_close(loss, ((out - target) ** 2).mean(), rtol=1e-5, atol=1e-6)
