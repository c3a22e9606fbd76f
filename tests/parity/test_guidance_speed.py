"""benchmarks/parity/guidance_speed.py --smoke: the official guidance step and ours both run (forward and backward to
the renders) on the parity tiny pair; run with `--official-src PATH`, skipped without it."""

from __future__ import annotations


def test_guidance_speed_smoke_times_both_guidance_steps(official, tmp_path):
    from benchmarks.parity import guidance_speed

    src = str(official.src)
    result = guidance_speed.main(
        ["--official-src", src, "--smoke", "--ours-dtype", "float32", "--steps", "2", "--warmup", "0"]
        + ["--json", str(tmp_path / "speed.json")]
    )
    for side in ("official", "ours"):
        assert len(result[side]["step_times_s"]) == 2 and all(t > 0 for t in result[side]["step_times_s"])
    assert result["ratio_official_to_ours"] > 0
    assert "xformers.ops" in result["official_stand_ins"]  # the CPU run uses the parity stand-in attention
