from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.common.errors import StageError
from stages.mvgen.alpha import alpha_from_white
from stages.mvgen.pipeline_fourdm import FourDMPipeline, load_fourdm, official_scheduler
from tests.mvgen.tiny import IMAGE_PX, tiny_pipeline


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> FourDMPipeline:
    return tiny_pipeline(tmp_path_factory.mktemp("tiny"))


def frames(num=2, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random((num, IMAGE_PX, IMAGE_PX, 3)) * 255).astype(np.uint8)


def sample(pipe, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", 2)
    return pipe(frames(), "a fox", generator=torch.Generator().manual_seed(seed), **kwargs)


def test_sample_shapes_and_range(pipe):
    out = sample(pipe)
    assert out.images.shape == (4, 2, IMAGE_PX, IMAGE_PX, 3) and out.images.dtype == np.float32
    assert 0.0 <= out.images.min() and out.images.max() <= 1.0
    assert out.latents.shape == (2 * 5, 4, IMAGE_PX // 2, IMAGE_PX // 2)


def test_same_seed_same_sample_other_seed_other_sample(pipe):
    np.testing.assert_array_equal(sample(pipe, 3).images, sample(pipe, 3).images)
    assert np.abs(sample(pipe, 3).images - sample(pipe, 4).images).max() > 1e-3


def test_guidance_scale_one_is_the_conditional_branch(pipe):
    """s = 1 skips the unconditional branch; s → 1 through the two-branch path must agree with it."""
    single = sample(pipe, guidance_scale=1.0)
    double = sample(pipe, guidance_scale=1.0 + 1e-6)
    np.testing.assert_allclose(double.images, single.images, atol=1e-4)
    assert np.abs(sample(pipe, guidance_scale=5.0).images - single.images).max() > 1e-3


def test_conditioning_paths_all_matter(pipe):
    base = sample(pipe).images
    other_prompt = pipe(frames(), "a red car", generator=torch.Generator().manual_seed(0), num_inference_steps=2)
    other_frames = pipe(frames(seed=9), "a fox", generator=torch.Generator().manual_seed(0), num_inference_steps=2)
    other_elev = sample(pipe, elevation_deg=30.0).images
    for changed in (other_prompt.images, other_frames.images, other_elev):
        assert np.abs(changed - base).max() > 1e-4


def test_scheduler_is_the_official_ddim_schedule():
    s = official_scheduler()
    s.set_timesteps(100)
    assert s.timesteps[0].item() == 991 and s.timesteps[-1].item() == 1 and len(s.timesteps) == 100
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    torch.testing.assert_close(s.alphas_cumprod.double(), torch.cumprod(1 - betas, 0), atol=1e-6, rtol=1e-5)


def test_pipeline_save_and_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "w")
    np.testing.assert_array_equal(sample(load_fourdm(tmp_path / "w")).images, sample(pipe).images)


def test_missing_weights_are_a_clear_error(tmp_path):
    with pytest.raises(StageError, match="not found"):
        load_fourdm(tmp_path / "nope")
    (tmp_path / "w" / "unet").mkdir(parents=True)
    with pytest.raises(StageError, match="lacks vae"):
        load_fourdm(tmp_path / "w")


def test_bad_frames_are_rejected(pipe):
    with pytest.raises(ValueError, match="uint8"):
        pipe(frames().astype(np.float32), "x", num_inference_steps=1)


def test_alpha_from_white_round_trips_onto_white():
    rng = np.random.default_rng(0)
    rgb = rng.random((8, 8, 3)).astype(np.float32)
    rgb[:2] = 1.0  # white background rows
    rgba = alpha_from_white(rgb, 0.03, 0.12)
    assert (rgba[:2, :, 3] == 0).all()
    a = rgba[..., 3:].astype(np.float32) / 255
    back = rgba[..., :3].astype(np.float32) / 255 * a + (1 - a)
    assert np.abs(back - rgb)[2:].max() < 0.03


def test_frame_windows_cover_long_inputs_with_frame_zero_shared():
    from stages.mvgen.pipeline_fourdm import frame_windows

    assert frame_windows(8, 8) == [list(range(8))]
    assert frame_windows(5, 8) == [list(range(5))]
    assert frame_windows(12, 8) == [list(range(8)), [0, 5, 6, 7, 8, 9, 10, 11]]
    windows = frame_windows(20, 8)
    assert windows == [list(range(8)), [0, *range(8, 15)], [0, *range(13, 20)]]
    assert all(len(w) == 8 and w[0] == 0 for w in windows)
    assert sorted({f for w in windows for f in w}) == list(range(20))
    with pytest.raises(ValueError):
        frame_windows(5, 1)


def test_windowed_sampling_continues_from_the_frames_of_the_earlier_pass(pipe):
    """5 frames in windows of 3 are two passes, [0, 1, 2] then [0, 3, 4]. The second sees input frames 0, 3 and 4
    only, yet its new frames follow input frames 1 and 2 through frame 0, held to the first pass's result."""

    def sample_windows(images: np.ndarray):
        generator = torch.Generator().manual_seed(0)
        return pipe(images, "a fox", num_inference_steps=3, window_frames=3, generator=generator)

    base = frames(num=5)
    changed = base.copy()
    changed[1:3] = frames(num=2, seed=9)  # frames 1 and 2 differ; 0, 3 and 4 are the same
    a, b = sample_windows(base), sample_windows(changed)
    assert a.images.shape == (4, 5, IMAGE_PX, IMAGE_PX, 3)
    assert not np.allclose(a.images[:, 1:3], b.images[:, 1:3])
    assert not np.allclose(a.images[:, 0], b.images[:, 0])  # the first pass's frame 0 depends on frames 1 and 2 …
    assert not np.allclose(a.images[:, 3:], b.images[:, 3:])  # … and the second pass continues from it


def test_a_window_as_long_as_the_input_is_one_pass(pipe):
    one = sample(pipe, 7)
    windowed = pipe(
        frames(), "a fox", num_inference_steps=2, window_frames=8, generator=torch.Generator().manual_seed(7)
    )
    np.testing.assert_array_equal(windowed.images, one.images)
