"""What a fresh clone has and lacks: the demo deployment and the README's shell commands work as written there."""

from __future__ import annotations

import subprocess

import pytest

pytest.importorskip("prefect")
pytest.importorskip("dvc")

from flows.fourd import fourd  # noqa: E402
from flows.workspace import WorkspaceError  # noqa: E402
from tests.flows.builders import REPO, copy_repository  # noqa: E402


@pytest.mark.usefixtures("prefect_harness", "mlflow_store")
def test_on_a_fresh_clone_the_demo_config_set_needs_no_eval_weights(tmp_path):
    """weights/eval is never in git; the demo runs without it, as `make demo` does, instead of failing at once on
    `missing dependencies … eval@fox: weights/eval`. Asked for eval alone, only its upstream outputs are missing."""
    repo = copy_repository(tmp_path / "repo")
    assert not (repo / "weights" / "eval").exists()
    with pytest.raises(WorkspaceError) as err:
        fourd(subject="fox", stages=["eval"], repo=str(repo))
    first = str(err.value).splitlines()[0]
    assert "missing dependencies of config set demo" in first and "data/demo/distill/fox" in first
    assert "weights/eval" not in first and "weights/demo" not in first, first
    assert (repo / "weights" / "eval").is_dir()


def test_prefect_env_gives_a_new_shell_the_venvs_prefect_and_the_servers_settings(tmp_path):
    """`eval "$(make -s prefect-env)"` in a new shell, then the README's `prefect deployment run …`: the shell needs
    the project venv's `prefect` on PATH (a new shell has none) and the settings of `make prefect-server`."""
    script = 'eval "$(make -s -C "$1" prefect-env)" && printf "%s\\n" "$PATH" "$PREFECT_HOME" "$PREFECT_API_URL"'
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(["bash", "-c", script, "bash", str(REPO)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    path, home, api = proc.stdout.splitlines()
    assert path == f"{REPO / '.venv' / 'bin'}:/usr/bin:/bin"
    assert home == str(REPO / ".prefect") and api == "http://127.0.0.1:4200/api"
