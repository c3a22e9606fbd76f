"""The MLflow parent run of a plain `dvc repro`: the stages of one subject in one `dvc repro` share a parent run.

A flow, `make demo` and `make repro` open the parent run themselves and pass it down in `FOURD_PARENT_RUN_ID`
(flows/tracking.py). A stage that DVC runs (DVC sets `DVC_STAGE` for its command) without that variable finds the
`dvc` process above it and attaches to the parent run keyed by that process (host, pid, start time) and the
stage's subject, creating it under the store lock when it is the first such stage to run. So
`dvc repro pipelines/<set>/dvc.yaml` gives one parent per subject and invocation, named `<set>/<subject>` like a
flow's, two `dvc repro` running at once give separate parents, and a stage run by hand gives none.

No process outlives the last stage to close the parent, so each stage does the parent's bookkeeping as it ends: as
the flows' parent does, it copies its latest metrics as `<stage>/<metric>` and its duration as `<stage>/seconds`,
and marks the parent FINISHED, or FAILED when the stage failed (DVC stops at the first failure). A stage that
starts under it marks it RUNNING again.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

__all__ = ["DVC_STAGE_ENV", "PIPELINE_KEY_TAG", "attach_parent", "close_parent", "dvc_process"]

DVC_STAGE_ENV = "DVC_STAGE"
"""Set by DVC for a stage's command: the stage's address, e.g. `pipelines/demo/dvc.yaml:eval@fox`."""
PIPELINE_KEY_TAG = "fourd.dvc_process"
"""Tag of a `dvc repro` parent run: `<host>:<pid>:<start time>:<subject>`, the dvc process and the subject."""


def _is_dvc(cmdline: list[str]) -> bool:
    """`dvc …`, `python …/bin/dvc …` or `python -m dvc …`."""
    names = [Path(arg).name for arg in cmdline[:2]]
    if names[:1] == ["dvc"]:
        return True
    return (
        names[:1] != [] and names[0].startswith("python") and (names[1:2] == ["dvc"] or cmdline[1:3] == ["-m", "dvc"])
    )


def dvc_process() -> Any | None:
    """The nearest `dvc` process above this one (a `psutil.Process`), or None."""
    try:
        import psutil  # a dependency of DVC, so present wherever DVC runs the stage
    except ImportError:
        return None
    try:
        for proc in psutil.Process().parents():
            if _is_dvc(proc.cmdline()):
                return proc
    except psutil.Error:
        return None
    return None


def _config_set(proc: Any) -> str:
    """The config set of the dvc.yaml the stage belongs to: `pipelines/<set>/dvc.yaml` → `<set>`, else `default`."""
    address = os.environ.get(DVC_STAGE_ENV, "")
    dvcfile = address.rpartition(":")[0] if ":" in address else "dvc.yaml"
    try:
        path = (Path(proc.cwd()) / dvcfile).resolve()
        parts = path.relative_to(Path(os.environ.get("DVC_ROOT") or proc.cwd()).resolve()).parts
    except Exception:  # noqa: BLE001 - OSError, ValueError, psutil.Error: the tag is informative only
        return "unknown"
    return parts[1] if len(parts) == 3 and parts[0] == "pipelines" else "default"


def attach_parent(client: Any, experiment_id: str, *, subject: str, git_sha: str) -> str | None:
    """The id of the parent run of this `dvc repro` and subject (created by its first stage), or None outside DVC.

    Call it under the store lock: the search and the creation are one step for every process using the store.
    """
    if not os.environ.get(DVC_STAGE_ENV):
        return None
    proc = dvc_process()
    if proc is None:
        return None
    key = f"{socket.gethostname()}:{proc.pid}:{proc.create_time():.2f}:{subject}"
    query = f"tags.`{PIPELINE_KEY_TAG}` = '{key}'"
    found = client.search_runs([experiment_id], filter_string=query, max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    config_set = _config_set(proc)
    tags = {"stage": "pipeline", "subject": subject, "config_set": config_set, "git_sha": git_sha}
    tags.update({"command": " ".join(proc.cmdline())[:5000], PIPELINE_KEY_TAG: key})
    name = f"{config_set}/{subject}"
    return client.create_run(experiment_id, start_time=int(time.time() * 1000), tags=tags, run_name=name).info.run_id


def close_parent(client: Any, parent_id: str, child_id: str, status: str) -> None:
    """Copy the ended child's latest metrics and duration into the parent, and set the parent's status."""
    from mlflow.entities import Metric

    child = client.get_run(child_id)
    prefix = child.data.tags.get("stage") or child.info.run_name
    summary = {f"{prefix}/{k}": v for k, v in child.data.metrics.items()}
    if child.info.end_time:
        summary[f"{prefix}/seconds"] = round((child.info.end_time - child.info.start_time) / 1000, 2)
    now = int(time.time() * 1000)
    client.log_batch(parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in summary.items()])
    client.set_terminated(parent_id, status=status, end_time=now)
