"""Markers, environment gates and shared fixtures (house style §8.9)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The distill hash grid's Triton kernels run on CPU in Triton's interpreter. Triton reads TRITON_INTERPRET when its
# own library functions are decorated, i.e. at import, so it is set here, before anything imports triton; the
# GPU run (RUN_GPU_TESTS=1) compiles them for CUDA instead.
if os.environ.get("RUN_GPU_TESTS") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--official-src",
        default=None,
        help="checkout of aejion/4Diffusion: runs tests/parity against it (skipped without it)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_gpu = os.environ.get("RUN_GPU_TESTS") == "1"
    run_slow = os.environ.get("RUN_SLOW") == "1"
    for item in items:
        if item.get_closest_marker("gpu"):
            if not run_gpu:
                item.add_marker(pytest.mark.skip(reason="needs CUDA: set RUN_GPU_TESTS=1 on a GPU machine"))
        elif run_gpu:
            item.add_marker(pytest.mark.skip(reason="RUN_GPU_TESTS=1 selects only gpu tests"))
        if item.get_closest_marker("slow") and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: set RUN_SLOW=1"))
        if item.get_closest_marker("weights") and not (REPO / "weights").is_dir():
            item.add_marker(pytest.mark.skip(reason="needs real checkpoints under weights/"))


@pytest.fixture(autouse=True)
def _isolated_tracking(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test logs to its own MLflow file store, so the real tracking code runs and nothing leaks."""
    return isolate_tracking(tmp_path_factory.mktemp("mlruns"), monkeypatch)


def isolate_tracking(store: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point MLflow at the file store `store` (for what `monkeypatch` holds) and clear the flows' tracking variables.

    A module-scoped fixture that runs stages calls it too: it is set up before the test's own store exists."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    # stage_run sets MLflow's process-wide URI; each test starts from its own store whatever an earlier one set.
    import mlflow

    mlflow.set_tracking_uri(store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    for var in ("FOURD_TRACKING", "FOURD_PARENT_RUN_ID", "FOURD_MLFLOW_EXPERIMENT"):
        monkeypatch.delenv(var, raising=False)
    return store


@pytest.fixture
def mlflow_store(_isolated_tracking: Path) -> Path:
    """The MLflow file store of this test."""
    return _isolated_tracking
