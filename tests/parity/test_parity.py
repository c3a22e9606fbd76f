"""Our converted pieces compute what the official 4Diffusion code computes (benchmarks/parity, issue #22 item 1).

Run with `pytest tests/parity --official-src PATH`; skipped without it. Each comparison must stay within float noise
(`FLOAT_NOISE_REL`) or be a documented deviation, and each negative control (our side perturbed as a bug would)
must move its output by at least `CONTROL_MIN_REL`.
"""

from __future__ import annotations

import pytest

from benchmarks.parity import pieces
from benchmarks.parity.pieces import CONTROL_MIN_REL, DEVIATIONS, FLOAT_NOISE_REL


def assert_within_noise(piece: str, diffs: dict[str, pieces.Diff]) -> None:
    bad = {name: d for name, d in diffs.items() if d.max_rel > FLOAT_NOISE_REL and f"{piece}/{name}" not in DEVIATIONS}
    assert not bad, f"{piece}: beyond float noise: {bad}"


def test_vae_encode_and_decode_match_the_official_autoencoder(official, pair):
    assert_within_noise("vae", pieces.vae(official, pair))


def test_image_conditioning_matches_preprocessing_penultimate_tokens_and_resampler(official, pair):
    diffs = pieces.image_conditioning(official, pair)
    assert_within_noise("image_conditioning", diffs)
    # open_clip's bicubic resize, reproduced bit for bit (the PIL image processor; the torchvision one is not).
    assert diffs["clip_pixels"].max_abs == 0.0
    assert diffs["composite_uint8"].max_abs <= 1.0  # the documented rounding deviation, at most 1/255


def test_image_conditioning_catches_a_missing_penultimate_layer_choice(official, pair):
    diffs = pieces.image_conditioning(official, pair, control_hidden_layer=-1)
    assert diffs["penultimate_tokens"].max_rel >= CONTROL_MIN_REL
    assert diffs["image_prompt_tokens"].max_rel >= CONTROL_MIN_REL


def test_text_tokens_match_for_empty_negative_and_truncated_prompts(official, pair):
    diffs = pieces.text(official, pair)
    assert {f"tokens/{n}" for n in ("empty", "negative", "long")} <= set(diffs)
    assert_within_noise("text", diffs)


def test_official_sds_prompt_processor_rejects_prompts_over_77_tokens_where_ours_truncates(official, pair):
    error = pieces.official_long_prompt_error(official, pair)
    assert error is not None and "truncation" in error
    assert pair.ours.encode_text([pieces.LONG_PROMPT]).shape[1] == 77


def test_sds_loss_and_gradient_match_the_official_guidance(official, pair):
    diffs = pieces.guidance(official, pair)
    assert_within_noise("guidance", diffs)


@pytest.mark.parametrize(
    "control",
    [{"control_camera_order": True}, {"control_guidance_scale": 6.0}, {"control_guidance_scale": -4.0}],
    ids=["camera-order-reversed", "cfg-cond-plus-scale", "cfg-branches-swapped"],
)
def test_sds_comparison_catches_a_wrong_camera_order_or_cfg_combination(official, pair, control):
    assert pieces.guidance(official, pair, **control)["grad_renders"].max_rel >= CONTROL_MIN_REL


def test_anchor_loss_and_target_match_the_official_training_step(official):
    assert_within_noise("anchor", pieces.anchor(official))


def test_regularisers_match_the_official_formulas(official):
    assert_within_noise("regularisers", pieces.regularisers(official))
