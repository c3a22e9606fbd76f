"""MLflow tracking for stage runs: one run per stage and subject, nested under its pipeline run's parent run.

`FOURD_TRACKING=off` runs a stage untracked (e.g. on a GPU box without MLflow); otherwise MLflow is required.
Every run of the project lands in one store: `MLFLOW_TRACKING_URI`, else `sqlite:///<project>/mlflow.db`, the project
being `$DVC_ROOT` (set by `dvc repro` and the flow) or the checkout this code is in, whatever the working directory
(`tracking_uri`). Heavy files stay with DVC; MLflow gets params, metrics, tags and small artifacts.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from stages.common.artifacts import MANIFEST_FILE, git_sha
from stages.common.config import flatten_config
from stages.common.errors import StageError
from stages.common.pipeline_run import attach_parent, close_parent

__all__ = ["Tracker", "stage_run", "store_lock", "tracking_uri", "EXPERIMENT_ENV", "PARENT_RUN_ENV", "TRACKING_ENV"]

log = logging.getLogger(__name__)

EXPERIMENT_ENV = "FOURD_MLFLOW_EXPERIMENT"
"""MLflow experiment name (default `fourd`)."""
PARENT_RUN_ENV = "FOURD_PARENT_RUN_ID"
"""Set by the Prefect flow: the stage run becomes a child of this run."""
TRACKING_ENV = "FOURD_TRACKING"
"""`mlflow` (default) or `off`."""
_MAX_PARAM_CHARS = 500
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
"""Experiment tag that makes MLflow's UI open the experiment on its runs (not the GenAI traces page)."""


def tracking_uri() -> str:
    """The project's one MLflow store: `$MLFLOW_TRACKING_URI`, else `sqlite:///<project>/mlflow.db`."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    checkout = Path(__file__).resolve().parents[2]
    root = os.environ.get("DVC_ROOT") or (checkout if (checkout / "dvc.yaml").is_file() else Path.cwd())
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def _warn(err: BaseException) -> None:
    first = (str(err).strip().splitlines() or [""])[0]
    log.warning("tracking failed, the stage goes on untracked (%s: %s)", type(err).__name__, first[:300])


class Tracker:
    """What a stage body logs through; every method is a no-op when tracking is off (`run_id is None`).

    Tracking is best-effort: the first MLflow error is one warning, after which this tracker logs nothing more;
    it never changes the stage's result.
    """

    def __init__(self, run_id: str | None) -> None:
        self.run_id = run_id

    def _call(self, method: str, *args: Any, **kwargs: Any) -> None:
        if self.run_id is None:
            return
        import mlflow

        try:
            getattr(mlflow, method)(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any store failure: warn once, then stop tracking
            _warn(err)
            self.run_id = None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log scalar metrics (keys as in metrics.json) at an optional step."""
        self._call("log_metrics", {k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Copy a small file (manifest, preview, report) into the run's artifacts."""
        self._call("log_artifact", str(path), artifact_path=artifact_path)

    def log_manifest(self, directory: Path) -> None:
        """Log the stage's manifest.json."""
        self.log_artifact(Path(directory) / MANIFEST_FILE)


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive `flock` beside a local SQLite store while it is opened (created and migrated on first
    use): stages and flows that start at once never migrate a new store twice. Other stores need no lock."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///").split("?")[0])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def stage_run(
    stage: str, config: BaseModel, *, subject: str, extra_tags: Mapping[str, Any] | None = None
) -> Iterator[Tracker]:
    """Open the MLflow run of one stage execution.

    Sets experiment `fourd` (or `$FOURD_MLFLOW_EXPERIMENT`), run name `<stage>/<subject>`, tags `stage`,
    `subject`, `git_sha` and `dvc_stage=<stage>@<subject>`, the parent run from `$FOURD_PARENT_RUN_ID` (under a
    plain `dvc repro`, its own parent run: stages/common/pipeline_run.py), and logs the flattened config as params.
    An exception inside marks the run FAILED and propagates. Tracking is best-effort: a store that cannot be opened
    or written is one warning and the stage runs untracked.

    Raises:
        StageError: tracking is on but MLflow is not installed, or `FOURD_TRACKING` has an unknown value.
    """
    mode = os.environ.get(TRACKING_ENV, "mlflow")
    if mode == "off":
        log.info("tracking off (%s=off): no MLflow run for %s/%s", TRACKING_ENV, stage, subject)
        yield Tracker(None)
        return
    if mode != "mlflow":
        raise StageError(f"{TRACKING_ENV}={mode!r}: expected 'mlflow' or 'off'")
    try:
        import mlflow
    except ImportError:
        raise StageError(f"MLflow is not installed: pip install mlflow, or set {TRACKING_ENV}=off") from None

    tags = {"stage": stage, "subject": subject, "git_sha": git_sha(), "dvc_stage": f"{stage}@{subject}"}
    tags.update({k: str(v) for k, v in (extra_tags or {}).items()})
    parent = os.environ.get(PARENT_RUN_ENV) or None
    dvc_parent = None  # the parent of a plain `dvc repro`, which this stage keeps up to date (pipeline_run.py)
    try:
        mlflow.set_tracking_uri(tracking_uri())
        with store_lock(mlflow.get_tracking_uri()):
            experiment = mlflow.set_experiment(os.environ.get(EXPERIMENT_ENV, "fourd"))
            if EXPERIMENT_KIND[0] not in experiment.tags:
                mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, *EXPERIMENT_KIND)
            if parent is None:
                client = mlflow.MlflowClient()
                parent = dvc_parent = attach_parent(
                    client, experiment.experiment_id, subject=subject, git_sha=tags["git_sha"]
                )
        nested = parent is not None or mlflow.active_run() is not None
        run = mlflow.start_run(run_name=f"{stage}/{subject}", tags=tags, parent_run_id=parent, nested=nested)
    except Exception as err:  # noqa: BLE001 - tracking never decides a stage's result
        _warn(err)
        yield Tracker(None)
        return
    tracker = Tracker(run.info.run_id)
    tracker._call("log_params", {k: v[:_MAX_PARAM_CHARS] for k, v in flatten_config(config).items()})
    log.info("MLflow run %s (%s/%s) at %s", run.info.run_id, stage, subject, mlflow.get_tracking_uri())
    status = "FINISHED"
    try:
        yield tracker
    except BaseException:
        status = "FAILED"
        raise
    finally:
        try:
            mlflow.end_run(status)
            if dvc_parent is not None:
                close_parent(mlflow.MlflowClient(), dvc_parent, run.info.run_id, status)
        except Exception as err:  # noqa: BLE001
            _warn(err)
