"""The parent MLflow run of a pipeline run (a flow run, `make demo`, `make repro`), whose stage runs are its children.

Stages open their own runs (stages/common/tracking.py) and become children through `FOURD_PARENT_RUN_ID`. When the
pipeline run ends, the parent copies each child's latest metrics as `<stage>/<metric>` and its duration as
`<stage>/seconds`, so comparing two parent runs in the MLflow UI compares the stages too. The store is the
project's one store: `$MLFLOW_TRACKING_URI`, else `sqlite:///<repository>/mlflow.db` (what `make mlflow-ui` opens).

    python -m flows.tracking --name demo/fox --config-set demo -- dvc repro pipelines/demo/dvc.yaml:eval@fox
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from stages.common.tracking import EXPERIMENT_KIND, store_lock

__all__ = ["ParentRun", "tracking_uri"]

log = logging.getLogger(__name__)

EXPERIMENT = "fourd"


def tracking_uri(repo: Path) -> str | None:
    """The project's MLflow store, or None when tracking is off (`FOURD_TRACKING=off`)."""
    if os.environ.get("FOURD_TRACKING", "mlflow") == "off":
        return None
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(repo).resolve() / 'mlflow.db'}"


def experiment_id(client: Any, name: str = EXPERIMENT) -> str:
    """The experiment's id (created if needed), tagged so that the UI opens it on its runs."""
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp else client.create_experiment(name)
    if exp is None or EXPERIMENT_KIND[0] not in exp.tags:
        client.set_experiment_tag(exp_id, *EXPERIMENT_KIND)
    return exp_id


class ParentRun:
    """One pipeline run's MLflow run (client API: no process-global active run, so concurrent flows don't mix).

    Every method is a no-op when `uri` is None (tracking off).
    """

    def __init__(
        self, uri: str | None, name: str, tags: Mapping[str, str], params: Mapping[str, str] | None = None
    ) -> None:
        self.run_id: str | None = None
        if uri is None:
            return
        from mlflow import MlflowClient

        try:
            with store_lock(uri):  # a new store is created and migrated once, the experiment created once
                self.client = MlflowClient(tracking_uri=uri)
                experiment = os.environ.get("FOURD_MLFLOW_EXPERIMENT", EXPERIMENT)
                self.experiment_id = experiment_id(self.client, experiment)
            self.run_id = self.client.create_run(self.experiment_id, run_name=name, tags=dict(tags)).info.run_id
            for k, v in (params or {}).items():
                self.client.log_param(self.run_id, k, v)
        except Exception as exc:  # noqa: BLE001 - tracking never decides a flow's result
            log.warning("MLflow tracking failed, the flow goes on untracked (%s: %s)", type(exc).__name__, exc)
            self.run_id = None

    def env(self) -> dict[str, str]:
        """What a stage process needs to become a child of this run."""
        if self.run_id is None:
            return {}
        return {"FOURD_PARENT_RUN_ID": self.run_id, "MLFLOW_TRACKING_URI": self.client.tracking_uri}

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for k, v in tags.items():
            if self.run_id is not None:
                self.client.set_tag(self.run_id, k, v)

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        if self.run_id is None or not metrics:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entities = [Metric(key=k, value=float(v), timestamp=now, step=0) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=entities)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.run_id is not None and Path(path).is_file():
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def children(self) -> list[Any]:
        """The stage runs opened under this run."""
        if self.run_id is None:
            return []
        query = f"tags.mlflow.parentRunId = '{self.run_id}'"
        return self.client.search_runs([self.experiment_id], filter_string=query, max_results=1000)

    def finish(self, status: str = "FINISHED") -> dict[str, float]:
        """Copy the children's metrics and durations into the parent, then end it; returns what was copied."""
        if self.run_id is None:
            return {}
        summary: dict[str, float] = {}
        for child in sorted(self.children(), key=lambda r: r.info.start_time):
            stage = child.data.tags.get("stage", child.info.run_name or child.info.run_id)
            summary.update({f"{stage}/{k}": v for k, v in child.data.metrics.items()})
            if child.info.end_time:
                summary[f"{stage}/seconds"] = round((child.info.end_time - child.info.start_time) / 1000, 2)
        self.log_metrics(summary)
        self.client.set_terminated(self.run_id, status=status)
        return summary


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m flows.tracking --name N -- <command>`: run a command (e.g. `dvc repro …`) under a parent run."""
    p = argparse.ArgumentParser(prog="python -m flows.tracking", description=main.__doc__)
    p.add_argument("--name", help="the parent run's name, e.g. demo/fox")
    p.add_argument("--ui-url", metavar="URL", help="print the runs page of experiment fourd under this UI, and exit")
    p.add_argument("--config-set", default="default", help="recorded as the parent's config_set tag")
    p.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1], help="the fourd checkout")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command after `--`")
    a = p.parse_args(argv)
    if a.ui_url:
        from mlflow import MlflowClient

        uri = tracking_uri(a.repo) or f"sqlite:///{a.repo.resolve() / 'mlflow.db'}"
        print(f"{a.ui_url.rstrip('/')}/#/experiments/{experiment_id(MlflowClient(uri))}/runs")
        return 0
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not a.name or not command:
        p.error("give --name and the command to run after --")
    from flows.workspace import source_revision

    tags = {"stage": "pipeline", "config_set": a.config_set, "git_sha": source_revision(a.repo)}
    tags["command"] = " ".join(command)
    parent = ParentRun(tracking_uri(a.repo), a.name, tags)
    returncode = subprocess.run(command, env={**os.environ, **parent.env()}).returncode
    copied = parent.finish("FINISHED" if returncode == 0 else "FAILED")
    if parent.run_id:
        print(f"MLflow parent run {a.name} ({parent.run_id}): {len(copied)} stage metrics; make mlflow-ui")
    return returncode


if __name__ == "__main__":
    sys.exit(main())
