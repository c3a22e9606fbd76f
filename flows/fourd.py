"""The `fourd` Prefect flow: one input video (or a subject already in params.yaml) through every stage.

Prefect owns *when and where* (retries, GPU concurrency tag, parameters, UI); DVC owns *whether* (each task
is `dvc repro --single-item <stage>@<subject>`, so unchanged work is skipped by content hash and dvc.lock
records what ran); MLflow gets one parent run per flow run, and each stage run becomes its child through
`FOURD_PARENT_RUN_ID` (stages/common/tracking.py). House style §8.6. Tasks are thin: no stage logic here.

    python -m flows.fourd --video clip.mp4 --prompt "a corgi running"     # one run, no server needed
    python -m flows.fourd --serve                                        # serve the deployment `fourd/serve`
    prefect deployment run fourd/local -p video=/abs/clip.mp4 -p config_set=tiny   # see prefect.yaml
"""

# No `from __future__ import annotations` here: Prefect builds the flow's parameter schema from the annotations of
# a module it loads by file path (deployments), and string annotations (`Literal[...]`) do not resolve there.
import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context

from flows import GPU_STAGES, STAGE_ORDER
from flows.workspace import (
    DEFAULT_CONFIG_SET,
    StageInstance,
    WorkspaceError,
    find_repo,
    prepare_workspace,
    register_subject,
    run_dvc,
    source_revision,
    stage_instances,
    subjects,
    subprocess_env,
    workspace_lock,
)

__all__ = ["fourd", "StageFailed", "TransientStageError"]

DEFAULT_IMAGES = {s: f"fourd/{s}:0.1.0" for s in STAGE_ORDER}
"""Stage images for `executor="docker"` (docker/Dockerfile.<stage>; override with the `images` parameter)."""
_TRANSIENT = ("Unable to acquire lock", "is busy, it is being blocked by", "CUDA out of memory")


class StageFailed(RuntimeError):
    """A stage exited non-zero for a reason a retry would not fix (bad input, missing weights, a bug)."""


class TransientStageError(StageFailed):
    """Another DVC process held the lock, the process was killed, or the GPU was full: worth retrying."""


def _retry_transient(task, task_run, state) -> bool:  # noqa: ANN001 (Prefect's RetryConditionCallable)
    try:
        state.result()
    except TransientStageError:
        return True
    except BaseException:  # noqa: BLE001 - any other failure is final
        return False
    return False


def _raise_for(instance: StageInstance, returncode: int, output: str) -> None:
    tail = "\n".join(output.strip().splitlines()[-25:])
    message = f"{instance.name} failed (exit {returncode}):\n{tail}"
    if returncode < 0 or returncode in (137, 143) or any(t in output for t in _TRANSIENT):
        raise TransientStageError(message)
    raise StageFailed(message)


@task(
    name="stage",
    cache_policy=NO_CACHE,  # DVC decides staleness from content hashes (platform-notes §1.9)
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=_retry_transient,
)
def run_stage(
    workspace: str,
    instance: StageInstance,
    env: dict[str, str],
    executor: Literal["local", "docker"] = "local",
    image: str | None = None,
) -> dict[str, Any]:
    """Bring one stage instance up to date: `dvc repro --single-item`, or its command in `image` + `dvc commit`.

    Returns:
        `{"instance", "ran", "seconds"}`; `ran` is False when DVC found nothing changed.
    """
    logger = get_run_logger()
    ws, start = Path(workspace), time.monotonic()
    if executor == "local":
        res = run_dvc(ws, ["repro", "--single-item", instance.name], env)
        for line in res.output.strip().splitlines():
            logger.info(line)
        if res.returncode != 0:
            _raise_for(instance, res.returncode, res.output)
        ran = f"Running stage '{instance.name}'" in res.output
    elif executor == "docker":
        ran = _run_in_container(ws, instance, env, image or DEFAULT_IMAGES[instance.stage], logger)
    else:
        raise ValueError(f"executor {executor!r}: expected 'local' or 'docker'")
    seconds = round(time.monotonic() - start, 2)
    logger.info("%s %s (%.1f s)", instance.name, "ran" if ran else "was up to date", seconds)
    return {"instance": instance.name, "ran": ran, "seconds": seconds}


def docker_command(workspace: Path, instance: StageInstance, env: dict[str, str], image: str) -> list[str]:
    """`docker run` of the stage's dvc.yaml command in its image: the workspace mounted at the same path."""
    argv = shlex.split(instance.cmd)
    marker = argv.index(f"stages.{instance.stage}")  # `<python> -m stages.<stage> <args>`: the image's entry point
    uri = env.get("MLFLOW_TRACKING_URI", "")
    mounts = {str(workspace)}
    if uri.startswith("sqlite:///"):
        mounts.add(str(Path(uri.removeprefix("sqlite:///")).parent))
    elif uri.startswith("file:"):
        mounts.add(str(Path(uri.removeprefix("file://").removeprefix("file:"))))
    for dep in instance.deps:  # weights folders are symlinks into the repository in a config-set workspace
        p = workspace / dep
        if p.is_symlink():
            mounts.add(str(p.resolve()))
    cmd = ["docker", "run", "--rm", "--user", f"{os.getuid()}:{os.getgid()}", "-w", str(workspace)]
    cmd += ["--network", "host" if uri.startswith("http") else "none"]
    for m in sorted(mounts):
        cmd += ["-v", f"{m}:{m}"]
    for var in (
        "FOURD_PARENT_RUN_ID",
        "FOURD_TRACKING",
        "FOURD_MLFLOW_EXPERIMENT",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_ALLOW_FILE_STORE",
        "CUDA_VISIBLE_DEVICES",
    ):
        if env.get(var):
            cmd += ["-e", f"{var}={env[var]}"]
    if instance.stage in GPU_STAGES:
        cmd += ["--gpus", "all"]
    return [*cmd, image, *argv[marker + 1 :]]


def _run_in_container(ws: Path, instance: StageInstance, env: dict[str, str], image: str, logger) -> bool:  # noqa: ANN001
    with workspace_lock(ws):
        status = run_dvc(ws, ["status", "--json", instance.name], env, lock=False)
        if status.returncode != 0:
            _raise_for(instance, status.returncode, status.output)
        changed = json.loads(status.output.strip().splitlines()[-1] or "{}")
        if not changed:
            return False
        cmd = docker_command(ws, instance, env, image)
        logger.info("%s", shlex.join(cmd))
        proc = subprocess.run(cmd, cwd=ws, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output = proc.stdout.decode(errors="replace")
        for line in output.strip().splitlines():
            logger.info(line)
        if proc.returncode != 0:
            _raise_for(instance, proc.returncode, output)
        commit = run_dvc(ws, ["commit", "--force", instance.name], env, lock=False)
        if commit.returncode != 0:
            _raise_for(instance, commit.returncode, commit.output)
    return True


def _tracking_uri(repo: Path) -> str:
    # One store for every workspace: the stages' default would be ./mlflow.db of the directory DVC runs in.
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo / 'mlflow.db'}"


class _ParentRun:
    """The flow's MLflow run (client API: no process-global active run, so concurrent flows don't mix)."""

    def __init__(self, uri: str | None, name: str, tags: dict[str, str], params: dict[str, str]) -> None:
        self.run_id: str | None = None
        if uri is None:
            return
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        experiment = os.environ.get("FOURD_MLFLOW_EXPERIMENT", "fourd")
        exp = self.client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(exp_id, run_name=name, tags=tags).info.run_id
        for k, v in params.items():
            self.client.log_param(self.run_id, k, v)

    def __getattr__(self, name: str):  # noqa: ANN204 - forwards log_* to the client with the run id, no-op when off
        if self.run_id is None:
            return lambda *a, **k: None
        return lambda *a, **k: getattr(self.client, name)(self.run_id, *a, **k)


@flow(name="fourd", log_prints=True)
def fourd(
    video: str | None = None,
    subject: str | None = None,
    prompt: str | None = None,
    fps: float = 0.0,
    config_set: str = DEFAULT_CONFIG_SET,
    stages: list[str] | None = None,
    executor: Literal["local", "docker"] = "local",
    images: dict[str, str] | None = None,
    repo: str | None = None,
) -> dict[str, Any]:
    """Run one subject through the pipeline; returns where its results are.

    Args:
        video: a video file (or folder of frames) to register as a new subject: copied to data/raw/<subject>/,
            `dvc add`-ed and listed in params.yaml. Omit it to run a subject already in params.yaml.
        subject: the subject name (default: the video's file name); required when `video` is omitted.
        prompt: text prompt for a new video (else preprocess uses the stage's fallbacks).
        fps: frame rate of a frame folder (ignored for video files).
        config_set: `default` (configs/<stage>.yaml, run in the repository) or the name of a folder
            configs/<name>/ (e.g. `tiny`), run in its own workspace out/workspaces/<name>/.
        stages: run only these stages (their upstream outputs must be up to date); default all.
        executor: `local` (dvc repro in this environment) or `docker` (each stage in its image from docker/).
        images: stage → image for the docker executor (default fourd/<stage>:0.1.0).
        repo: the fourd checkout (default $FOURD_REPO, else the one this code was imported from).
    """
    logger = get_run_logger()
    root = find_repo(repo)
    if video is not None:
        subject = register_subject(root, Path(video), subject, prompt, fps)
    elif subject is None:
        raise WorkspaceError("give a video to register, or the subject name of one in params.yaml")
    ws = prepare_workspace(root, config_set)
    if subject not in subjects(ws):
        raise WorkspaceError(f"subject {subject!r} is not in params.yaml (have {sorted(subjects(ws))})")
    plan = stage_instances(ws, subject, stages)
    missing = [f"{i.name}: {d}" for i in plan for d in i.deps if not (ws / d).exists() and not _made_by(d, plan)]
    if missing:
        raise WorkspaceError(
            "missing dependencies (weights are never downloaded; see the stage READMEs):\n  " + "\n  ".join(missing)
        )
    logger.info("subject %s in %s (config set %s): %s", subject, ws, config_set, [i.name for i in plan])

    tracking = os.environ.get("FOURD_TRACKING", "mlflow") != "off"
    uri = _tracking_uri(root) if tracking else None
    ctx = get_run_context()
    flow_run = getattr(ctx, "flow_run", None)
    parent = _ParentRun(
        uri,
        name=f"fourd/{subject}",
        tags={
            "subject": subject,
            "stage": "flow",
            "config_set": config_set,
            "git_sha": source_revision(root),
            "workspace": str(ws),
            "executor": executor,
            "prefect_flow_run_id": str(flow_run.id) if flow_run else "",
            "prefect_flow_run_name": str(flow_run.name) if flow_run else "",
        },
        params={
            "subject": subject,
            "config_set": config_set,
            "video": video or "",
            "stages": ",".join(i.stage for i in plan),
        },
    )
    env = subprocess_env({"MLFLOW_TRACKING_URI": uri} if uri else {})
    if parent.run_id:
        env["FOURD_PARENT_RUN_ID"] = parent.run_id

    results: list[dict[str, Any]] = []
    try:
        for inst in plan:
            tags = ["gpu"] if inst.stage in GPU_STAGES else []
            results.append(
                run_stage.with_options(name=inst.stage, tags=tags)(
                    str(ws), inst, env, executor, (images or {}).get(inst.stage)
                )
            )
    except BaseException:
        parent.set_terminated(status="FAILED")
        raise

    metrics = _eval_metrics(ws, plan)
    summary = {
        "subject": subject,
        "config_set": config_set,
        "workspace": str(ws),
        "stages": {
            r["instance"].split("@")[0]: {**r, "output": str(ws / i.outs[0]) if i.outs else None}
            for r, i in zip(results, plan, strict=True)
        },
        "metrics": metrics,
        "mlflow_run_id": parent.run_id,
        "mlflow_tracking_uri": uri,
    }
    if metrics:
        parent.log_batch(metrics=_metric_entities(metrics))
    parent.set_tag("stages_ran", ",".join(r["instance"] for r in results if r["ran"]))
    parent.set_tag("stages_up_to_date", ",".join(r["instance"] for r in results if not r["ran"]))
    if (ws / "dvc.lock").is_file():
        parent.log_artifact(str(ws / "dvc.lock"))
    parent.set_terminated(status="FINISHED")
    _report(summary)
    return summary


def _made_by(dep: str, plan: list[StageInstance]) -> bool:
    return any(dep == o or dep.startswith(o.rstrip("/") + "/") for i in plan for o in i.outs)


def _eval_metrics(ws: Path, plan: list[StageInstance]) -> dict[str, float]:
    for inst in plan:
        if inst.stage == "eval":
            files = [o for o in inst.outs if o.endswith(".json")]
            cmd = shlex.split(inst.cmd)
            files += [cmd[cmd.index("--metrics") + 1]] if "--metrics" in cmd else []
            for f in files:
                if (ws / f).is_file():
                    data = json.loads((ws / f).read_text())
                    return {k: float(v) for k, v in data.items() if isinstance(v, int | float)}
    return {}


def _metric_entities(metrics: dict[str, float]) -> list:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(key=k, value=v, timestamp=now, step=0) for k, v in metrics.items()]


def _report(summary: dict[str, Any]) -> None:
    rows = "\n".join(
        f"| {s} | {'ran' if r['ran'] else 'up to date'} | {r['seconds']} | `{r['output']}` |"
        for s, r in summary["stages"].items()
    )
    metrics = "\n".join(f"| {k} | {v:.4g} |" for k, v in summary["metrics"].items())
    md = (
        f"# fourd: {summary['subject']} (config set {summary['config_set']})\n\n"
        f"Workspace `{summary['workspace']}`; MLflow run `{summary['mlflow_run_id']}` "
        f"at `{summary['mlflow_tracking_uri']}`.\n\n| stage | status | seconds | output |\n|---|---|---|---|\n{rows}\n"
        + (f"\n| metric | value |\n|---|---|\n{metrics}\n" if metrics else "")
    )
    create_markdown_artifact(md, key=f"fourd-{summary['subject']}", description="where the results are")
    print(md)


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.fourd`: run the flow once, or `--serve` it as deployment `fourd/serve`."""
    p = argparse.ArgumentParser(prog="python -m flows.fourd", description=(fourd.fn.__doc__ or "").split("\n")[0])
    p.add_argument("--video")
    p.add_argument("--subject")
    p.add_argument("--prompt")
    p.add_argument("--fps", type=float, default=0.0)
    p.add_argument("--config-set", default=DEFAULT_CONFIG_SET)
    p.add_argument("--stages", nargs="+", choices=STAGE_ORDER)
    p.add_argument("--executor", choices=("local", "docker"), default="local")
    p.add_argument("--repo")
    p.add_argument("--serve", action="store_true", help="serve deployment fourd/serve (runs until Ctrl-C)")
    a = p.parse_args(argv)
    if a.serve:
        fourd.serve(name="serve", limit=2)
        return 0
    summary = fourd(a.video, a.subject, a.prompt, a.fps, a.config_set, a.stages, a.executor, None, a.repo)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
