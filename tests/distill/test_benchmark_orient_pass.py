"""benchmarks/orient_pass.py runs end to end (tiny grids on the CPU, Triton interpreted, 8² renders) and reports its
figures."""

from __future__ import annotations

import importlib.util
import json

import pytest

from stages.distill.fields import hash_grid_triton as ht
from tests.distill.tiny import REPO


@pytest.mark.skipif(not ht.triton_available(), reason="triton is not installed")
def test_orient_pass_benchmark_smoke_run_reports_parts_chunks_and_kernels(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    spec = importlib.util.spec_from_file_location("orient_pass", REPO / "benchmarks/orient_pass.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "result.json"
    argv = ["--smoke", "--backend", "triton", "--size", "8", "--chunks", "100000", "--compare-all-gradients"]
    bench.main([*argv, "--repeats", "1", "--warmup", "0", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["hash_backend"] == "triton" and result["samples"] > 64 and result["rays"] == 4 * 8 * 8
    rows = result["chunks"]
    assert [(r["orient_chunk_samples"], r["skip"], r["num_chunks"]) for r in rows] == [(100000, b, 1) for b in (1, 0)]
    assert all(r["backward_s"] > 0 and r["pass_s"] > 0 for r in rows)
    assert result["march_s"] > 0 and result["single_backward_s"] > 0
    assert result["profile"]["top"] and result["profile"]["total_kernel_ms"] > 0
    assert ht._engine_will_run is bench._engine_will_run  # the comparison row's patch is undone
