"""Fixtures of the flow tests: Prefect's test harness (once per session), a repository copy with tiny weights."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.flows.builders import copy_repository, write_tiny_fourdm

for _var, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
}.items():
    os.environ.setdefault(_var, _value)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "docker: needs a Docker engine; selected with RUN_DOCKER_TESTS=1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("RUN_DOCKER_TESTS") != "1":
        for item in items:
            if item.get_closest_marker("docker"):
                item.add_marker(pytest.mark.skip(reason="needs a Docker engine: set RUN_DOCKER_TESTS=1"))


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory):
    """A temporary Prefect server on 127.0.0.1 with its own SQLite database and result storage (≈10 s, once)."""
    from prefect.settings import PREFECT_HOME, PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    with temporary_settings({PREFECT_HOME: home, PREFECT_RESULTS_LOCAL_STORAGE_PATH: home / "storage"}):
        with prefect_test_harness(server_startup_timeout=90):
            yield


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git copy of the repository (as a fresh clone has it) with tiny 4DM weights in weights/fourdm and random
    full-width LPIPS-VGG files in weights/eval/lpips (distill's anchor loss and eval's LPIPS share them; eval
    accepts only VGG16's real shapes)."""
    import torch

    from stages.common.lpips import LPIPSVGG, save_lpips_vgg

    root = copy_repository(tmp_path_factory.mktemp("flow") / "repo")
    write_tiny_fourdm(root / "weights" / "fourdm", root.parent / "scratch")
    torch.manual_seed(0)
    vgg = LPIPSVGG(input_range="minus_one_to_one", channel_norm="torchmetrics")
    for head in vgg.heads:
        head.model[1].weight.abs_()  # trained heads are non-negative
    save_lpips_vgg(vgg, root / "weights" / "eval" / "lpips")
    return root
