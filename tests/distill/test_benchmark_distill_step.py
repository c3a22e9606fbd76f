"""benchmarks/distill_step.py runs end to end (tiny models on the CPU) and reports every figure the GPU run needs."""

from __future__ import annotations

import importlib.util
import json

import yaml

from tests.distill.tiny import REPO


def load_benchmark():
    spec = importlib.util.spec_from_file_location("distill_step", REPO / "benchmarks/distill_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_distill_step_benchmark_smoke_run_reports_phases_floor_and_ratios(tmp_path):
    bench = load_benchmark()
    out = tmp_path / "result.json"
    bench.main(
        [
            "--smoke",
            "--min-phase-steps",
            "1",
            "--steps",
            "2",
            "--warmup",
            "0",
            "--floor-repeats",
            "1",
            "--grad-chunk-samples",
            "256",
            "--vae-chunk",
            "3",
            "--kernel-profile",
            "--json",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    assert result["floor_unet"]["unet_forward_s"] > 0 and result["floor_vae"]["vae_encoder_fwd_bwd_s"] > 0
    (variant,) = result["variants"]
    assert variant["late_field"]["kind"] == "sphere"
    start, late = variant["phases"]  # the tiny config: step 0 at 8 px; step 1 at 12 px with the opacity loss on
    assert (start["steps"], start["sds_px"], start["opaque_on"]) == ([0, 1], 8, False)
    assert (late["steps"], late["sds_px"], late["opaque_on"]) == ([1, 2], 12, True)
    assert variant["total_s"] > 0
    for phase in (start, late):
        # Every timed step and every part of the floor was measured (on the CPU: small, but never zero).
        assert len(phase["step_times_s"]) == 2 and all(t > 0 for t in phase["step_times_s"])
        assert phase["render_floor"]["render_fwd_bwd_s"] > 0 and phase["floor_s"] > 0
        assert 0 < phase["samples_per_ray"] <= phase["evaluated_per_ray"] <= phase["candidates_per_ray"]
        # --grad-chunk-samples 256 ran the deferred path: the profile has its field backward.
        assert "guidance" in phase["profile_s"] and "sds_field_backward" in phase["profile_s"]
        kernels = phase["kernel_profile"]  # --kernel-profile: the phases as profiler ranges, the top ops
        assert {"guidance", "sds_render", "orient"} <= set(kernels["phases"]) and kernels["launches"] > 0
        assert kernels["top"] and all(k["ms"] > 0 for k in kernels["top"])
    # The opaque sphere stands in for a trained field: fewer samples per ray than the fuzzy start blob.
    assert late["samples_per_ray"] < start["samples_per_ray"]


def write_fast_recipe(path):
    """The tiny config as the fast recipe runs it: no resolution milestones, the reconstruction term over the 4 mvgen
    views from step 0, SDS from step 2 (`guidance.start_step`), the paper's ramps off."""
    overlay = {
        "base": str(REPO / "configs/tiny/distill.yaml"),
        "num_steps": 4,
        "sds_resolution": {"milestones": [], "sizes_px": [8]},
        "reconstruction": {"rays_per_step": 64},
        "cameras": {"extra_anchor_views": [1, 2, 3]},
        "guidance": {"start_step": 2},
        "loss_weights": {
            "anchor_lpips": 0.0,
            "anchor_dssim": 0.0,
            "reconstruction_rgb": {"start_value": 1000.0, "end_value": 1000.0},
            "reconstruction_mask": {"start_value": 100.0, "end_value": 100.0},
            "orient": {"start_value": 0.0, "end_value": 0.0},
            "sparsity": {"start_value": 0.0, "end_value": 0.0},
            "opaque": {"end_value": 0.0},
        },
    }
    path.write_text(yaml.safe_dump(overlay))
    return path


def test_distill_step_benchmark_times_the_phases_of_a_recipe_without_milestones_and_with_late_sds(tmp_path):
    bench = load_benchmark()
    config = write_fast_recipe(tmp_path / "fast.yaml")
    argv = ["--smoke", "--config", str(config), "--steps", "1", "--warmup", "0", "--floor-repeats", "1"]
    result = bench.main([*argv, "--min-phase-steps", "1", "--json", str(tmp_path / "result.json")])
    (variant,) = result["variants"]
    recon, sds = variant["phases"]  # split where SDS switches on, at guidance.start_step
    assert (recon["steps"], recon["sds_on"], recon["reconstruction_on"]) == ([0, 2], False, True)
    assert (sds["steps"], sds["sds_on"], sds["reconstruction_on"]) == ([2, 4], True, True)
    for phase in (recon, sds):  # each phase really ran its terms: reconstruction rays every step, SDS in the second
        assert phase["s_per_step"] > 0 and phase["reconstruction_samples"] > 0
    assert recon["samples_per_ray"] == 0 and sds["samples_per_ray"] > 0
    # The floor (UNet + VAE + SDS render) belongs to the phase with SDS only.
    assert "render_floor" not in recon and "floor_s" not in recon and sds["floor_s"] > 0
    assert result["num_steps"] == 4 and variant["total_s"] > 0

    # Phases shorter than --min-phase-steps join the next: one phase over the whole run, timed where SDS is on.
    result = bench.main([*argv, "--min-phase-steps", "3", "--json", str(tmp_path / "joined.json")])
    (phase,) = result["variants"][0]["phases"]
    assert (phase["steps"], phase["timed_at"], phase["sds_on"]) == ([0, 4], 2, True)


def test_distill_step_benchmark_without_sds_builds_no_4dm(tmp_path):
    bench = load_benchmark()
    config = write_fast_recipe(tmp_path / "no_sds.yaml")
    overlay = yaml.safe_load(config.read_text())
    overlay["loss_weights"]["sds"] = 0.0
    config.write_text(yaml.safe_dump(overlay))
    argv = ["--smoke", "--config", str(config), "--steps", "1", "--warmup", "0", "--floor-repeats", "1"]
    result = bench.main([*argv, "--min-phase-steps", "1", "--json", str(tmp_path / "result.json")])
    (phase,) = result["variants"][0]["phases"]  # the demo-gpu recipe: one phase, reconstruction only
    assert (phase["steps"], phase["sds_on"], phase["reconstruction_on"]) == ([0, 4], False, True)
    assert phase["s_per_step"] > 0 and phase["reconstruction_samples"] > 0
    assert "floor_unet" not in result and "floor_vae" not in result
