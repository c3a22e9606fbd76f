"""benchmarks/distill_step.py runs end to end (tiny models on the CPU) and reports every figure the GPU run needs."""

from __future__ import annotations

import importlib.util
import json

from tests.distill.tiny import REPO


def test_distill_step_benchmark_smoke_run_reports_phases_floor_and_ratios(tmp_path):
    spec = importlib.util.spec_from_file_location("distill_step", REPO / "benchmarks/distill_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "result.json"
    bench.main(
        [
            "--smoke",
            "--steps",
            "2",
            "--warmup",
            "0",
            "--floor-repeats",
            "1",
            "--grad-chunk-samples",
            "64",
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
    start, late = variant["start_64px"], variant["late_256px"]
    assert (start["sds_px"], late["sds_px"]) == (8, 12)  # the tiny config's first and last sizes
    for phase in (start, late):
        # Every timed step and every part of the floor was measured (on the CPU: small, but never zero).
        assert len(phase["step_times_s"]) == 2 and all(t > 0 for t in phase["step_times_s"])
        assert phase["render_floor"]["render_fwd_bwd_s"] > 0 and phase["floor_s"] > 0
        assert 0 < phase["samples_per_ray"] <= phase["evaluated_per_ray"] <= phase["candidates_per_ray"]
        # --grad-chunk-samples 64 ran the deferred path: the profile has its field backward.
        assert "guidance" in phase["profile_s"] and "sds_field_backward" in phase["profile_s"]
        kernels = phase["kernel_profile"]  # --kernel-profile: the phases as profiler ranges, the top ops
        assert {"guidance", "sds_render", "orient"} <= set(kernels["phases"]) and kernels["launches"] > 0
        assert kernels["top"] and all(k["ms"] > 0 for k in kernels["top"])
    # The opaque sphere stands in for a trained field: fewer samples per ray than the fuzzy start blob.
    assert late["samples_per_ray"] < start["samples_per_ray"]
