"""`python -m flows`: run the `fourd` flow for one subject, `fourd_batch` for several,
or serve the deployment `fourd/serve`. The flows themselves are in flows/fourd.py."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flows import STAGE_ORDER
from flows.cli_checks import ArgumentParser, check_arguments, fail
from flows.fourd import AUTO_CONFIG_SET, fourd, fourd_batch
from flows.gpus import gpu_devices
from flows.pipelines import CONFIG_SETS, DEFAULT_CONFIG_SET

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    """The command line, every option documented."""
    sets = ", ".join(f"{name} ({spec.about})" for name, spec in CONFIG_SETS.items())
    p = ArgumentParser(
        prog="python -m flows",
        description=(
            "Run videos through preprocess → mvgen → distill → eval (render for 3D assets, eval for subjects with a "
            "ground truth). One --video and/or one --subject runs the flow `fourd`; several, or --parallel, run "
            "`fourd_batch`, one subflow per subject. Results land in data/ (data/<set>/ for a config set), MLflow "
            "runs in ./mlflow.db (make mlflow-ui)."
        ),
    )
    p.add_argument(
        "--video", action="append", default=[], help="a video file or frame folder to register (repeatable)"
    )
    p.add_argument(
        "--subject",
        action="append",
        default=[],
        help="with one --video: its subject name (default: the file name); else a subject of params.yaml (repeatable)",
    )
    p.add_argument("--prompt", action="append", default=[], help="text prompt of each --video, in order (optional)")
    p.add_argument("--fps", type=float, default=0.0, help="frame rate of frame folders (ignored for video files)")
    p.add_argument(
        "--config-set",
        default=AUTO_CONFIG_SET,
        help=(
            f"{DEFAULT_CONFIG_SET} (configs/<stage>.yaml, the official weights), {sets}, or {AUTO_CONFIG_SET} "
            f"(default): {DEFAULT_CONFIG_SET} when its weights are installed, else demo, announced in the log"
        ),
    )
    p.add_argument(
        "--stages", nargs="+", choices=STAGE_ORDER, help="run only these stages (upstream outputs must be up to date)"
    )
    p.add_argument(
        "--executor",
        choices=("local", "docker"),
        default="local",
        help="local: each dvc.yaml command here; docker: each stage in its image fourd/<stage>:0.1.0",
    )
    p.add_argument("--repo", help="the fourd checkout (default $FOURD_REPO, else the one this code is in)")
    p.add_argument("--parallel", type=int, help="subjects at once (default: number of GPUs, at least 1)")
    p.add_argument("--serve", action="store_true", help="serve deployment fourd/serve (runs until Ctrl-C)")
    p.add_argument("--limit", type=int, help="flow runs the served deployment runs at once (default max(2, GPUs))")
    p.add_argument("--summary-json", type=Path, help="also write the returned summary to this file")
    p.add_argument(
        "--why", action="store_true", help="print why the latest failed fourd flow run failed (its state message)"
    )
    return p


def last_failure() -> str | None:
    """The name and state message of the latest failed or crashed `fourd` flow run on the Prefect API, or None."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    failed = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.FAILED, StateType.CRASHED]))
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["fourd"])),
            flow_run_filter=FlowRunFilter(state=failed),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=1,
        )
    if not runs or runs[0].state is None:
        return None
    return f"{runs[0].name}: {runs[0].state.name}: {runs[0].state.message}"


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if a.why:
        print(last_failure() or "no failed fourd flow run")
        return 0
    if a.serve:
        fourd.serve(name="serve", limit=a.limit or max(2, len(gpu_devices())))
        return 0
    single = len(a.video) <= 1 and len(a.subject) <= 1 and len(a.prompt) <= 1 and a.parallel is None
    try:
        check_arguments(a.repo, a.video, a.subject, a.config_set, single=single, auto_config_set=AUTO_CONFIG_SET)
        if single:
            video, subject, prompt = (a.video or [None])[0], (a.subject or [None])[0], (a.prompt or [None])[0]
            summary = fourd(video, subject, prompt, a.fps, a.config_set, a.stages, a.executor, None, a.repo)
        else:
            summary = fourd_batch(
                a.video, a.subject, a.prompt, a.fps, a.config_set, a.stages, a.executor, None, a.repo, a.parallel
            )
    except RuntimeError as exc:  # WorkspaceError, StageFailed, a failed batch: Prefect has logged the run
        fail(str(exc))
    print(json.dumps(summary, indent=2))
    if a.summary_json:
        a.summary_json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
