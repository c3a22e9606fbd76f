"""benchmarks/production_run.py --smoke: every stage runs, distill is SIGKILLed in its last phase and resumes from
its checkpoint, and every artifact loads as the next stage would load it."""

from __future__ import annotations

import importlib.util
import json

import pytest

from stages.common.artifacts import DistillManifest, EvalManifest, MvgenManifest, PreprocessManifest
from tests.distill.tiny import REPO


@pytest.mark.timeout(900)  # five stage processes and two distill runs on a shared CPU
def test_production_run_smoke_kills_resumes_and_leaves_valid_artifacts(tmp_path):
    spec = importlib.util.spec_from_file_location("production_run", REPO / "benchmarks/production_run.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    work, out = tmp_path / "work", tmp_path / "result.json"
    result = bench.main(["--smoke", "--workdir", str(work), "--json", str(out)])
    assert "error" not in result, result.get("error")
    assert json.loads(out.read_text())["kill_resume"] == result["kill_resume"]

    # The first distill process was killed by SIGKILL after a step past its last checkpoint, before any output.
    assert result["parts"]["distill_killed"]["rc"] == -9
    kr = result["kill_resume"]
    assert kr["checkpoint_step"] < kr["killed_after_step"] and kr["output_absent_after_kill"]
    # The rerun resumed from that checkpoint (not from step 0) and finished the schedule.
    assert kr["resumed_first_step"] == kr["checkpoint_step"] + 1
    assert f"at step {kr['checkpoint_step']}" in kr["resumed_log_line"]
    steps = [json.loads(line) for line in (work / "distill_steps.jsonl").read_text().splitlines()]
    killed_pid, resumed_pid = result["parts"]["distill_killed"]["pid"], result["parts"]["distill_resumed"]["pid"]
    killed = [r["step"] for r in steps if r["event"] == "step" and r["pid"] == killed_pid]
    resumed = [r["step"] for r in steps if r["event"] == "step" and r["pid"] == resumed_pid]
    assert killed == list(range(1, kr["killed_after_step"] + 1))
    assert resumed == list(range(kr["checkpoint_step"] + 1, resumed[-1] + 1))

    # Every phase of the compressed schedule ran: the three resolutions, the opacity loss on in the last one only.
    sizes = [r["sds_px"] for r in steps if r["event"] == "step"]
    assert sorted(set(sizes)) == [8, 12, 16] and sizes == sorted(sizes[: len(killed)]) + sizes[len(killed) :]
    assert {r["sds_px"] for r in steps if r["event"] == "step" and r["opaque_on"]} == {16}

    # Each artifact loads as the next stage loads it (schema, file list, sizes), with the whole run's step count.
    assert PreprocessManifest.load(work / "preprocess").num_frames == 4
    assert MvgenManifest.load(work / "mvgen").views.num_views == 4
    distill = DistillManifest.load(work / "distill")
    assert distill.num_steps == resumed[-1]
    assert distill.meshes is not None and len(distill.meshes.file_list()) == 2 * distill.renders.num_frames
    assert (work / "distill" / distill.preview_file).stat().st_size > 0
    evaluation = EvalManifest.load(work / "eval")
    assert evaluation.skipped == {} and {"psnr", "lpips", "clip_i", "fvd"} <= set(evaluation.metrics)
