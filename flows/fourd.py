"""The `fourd` Prefect flow: one input video (or a subject already in params.yaml) through every stage; and
`fourd_batch`, several subjects at once, one `fourd` subflow each, on as many GPUs as the machine has.

Prefect owns *when and where* (retries, parameters, UI, concurrent subflows); DVC owns *whether*: each task
asks `dvc status <stage>@<subject>`, runs the dvc.yaml command only if something changed, then `dvc commit`s
the instance, so unchanged work is skipped by content hash and dvc.lock records what ran. The workspace lock
(flows/workspace.py) covers those two DVC calls, not the command, so the stages of different subjects run at
the same time in one workspace. GPU stages (`flows.GPU_STAGES`) take a slot of the machine-wide GPU pool
(flows/gpus.py) and run with `CUDA_VISIBLE_DEVICES=<device>`, one stage per GPU, whichever flow run they
belong to. MLflow gets one parent run per flow run, and each stage run becomes its child through
`FOURD_PARENT_RUN_ID` (stages/common/tracking.py). House style §8.6. Tasks are thin: no stage logic here.

    python -m flows.fourd --video clip.mp4 --prompt "a corgi running"     # one run, no server needed
    python -m flows.fourd --video a.mp4 --video b.mp4                     # two subjects at once (one per GPU)
    python -m flows.fourd --subject fox --subject other --parallel 2      # subjects already in params.yaml
    python -m flows.fourd --serve                                        # serve the deployment `fourd/serve`
    prefect deployment run fourd/local -p video=/abs/clip.mp4 -p config_set=tiny   # see prefect.yaml
"""

# No `from __future__ import annotations` here: Prefect builds the flow's parameter schema from the annotations of
# a module it loads by file path (deployments), and string annotations (`Literal[...]`) do not resolve there.
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context
from prefect.task_runners import ThreadPoolTaskRunner

from flows import GPU_STAGES, STAGE_ORDER
from flows.cli_checks import ArgumentParser, check_arguments, fail, store_lock
from flows.gpus import gpu_devices, gpu_slot
from flows.workspace import (
    DEFAULT_CONFIG_SET,
    StageInstance,
    WorkspaceError,
    find_repo,
    instance_lock,
    prepare_workspace,
    register_subject,
    run_dvc,
    source_revision,
    stage_instances,
    subjects,
    subprocess_env,
    workspace_lock,
)

__all__ = ["fourd", "fourd_batch", "update_stage", "StageFailed", "TransientStageError"]

log = logging.getLogger(__name__)

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
    """Bring one stage instance up to date (`update_stage`), logging to the task run.

    Returns:
        `update_stage`'s record: `instance`, `ran`, `seconds`, `gpu`, `started`, `finished`.
    """
    return update_stage(Path(workspace), instance, env, executor, image, get_run_logger())


def update_stage(
    ws: Path,
    instance: StageInstance,
    env: Mapping[str, str],
    executor: Literal["local", "docker"] = "local",
    image: str | None = None,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
) -> dict[str, Any]:
    """`dvc status` (locked) → the stage's command, on a GPU slot for GPU stages (unlocked) → `dvc commit` (locked).

    What `dvc repro --single-item` would do, except that the workspace lock is not held while the command runs,
    so other subjects' stages run meanwhile: a missing dependency fails before the command; the outputs are
    removed first (the command never sees a previous result, and a file linked from the cache is never written
    through); a failed command commits nothing, so dvc.lock never claims its output; dependencies that changed
    while the command ran (a concurrent workspace sync) fail the run as transient (a retry redoes it with them).
    Unlike repro, a changed stage is always run: DVC's run cache is written by the commit but not restored from.

    Args:
        ws: the workspace (DVC repository) the instance belongs to.
        instance: the stage instance, e.g. distill@fox.
        env: environment of DVC and of the command (`CUDA_VISIBLE_DEVICES` is set here for GPU stages).
        executor: `local` (the dvc.yaml command in this environment) or `docker` (in `image`).
        image: the stage image (docker; default `DEFAULT_IMAGES[stage]`).
        logger: where DVC's and the command's output go.

    Returns:
        `{"instance", "ran", "seconds", "gpu", "started", "finished"}`: `ran` is False when DVC found nothing
        changed; `gpu` the device the command had (None for CPU stages or without GPUs); `started`/`finished`
        the command's wall-clock times (epoch seconds; None when it did not run).

    Raises:
        StageFailed: a missing dependency, a failed command or DVC call; TransientStageError when a retry may fix it.
        ValueError: an unknown executor.
    """
    if executor not in ("local", "docker"):
        raise ValueError(f"executor {executor!r}: expected 'local' or 'docker'")
    logger = logger or log
    start = time.monotonic()
    with instance_lock(ws, instance.name):  # another flow run of the same subject waits, then finds it up to date
        record = _update(ws, instance, env, executor, image, logger)
    record["seconds"] = round(time.monotonic() - start, 2)
    where = f" on GPU {record['gpu']}" if record["gpu"] is not None else ""
    status_word = "ran" if record["ran"] else "was up to date"
    logger.info("%s %s%s (%.1f s)", instance.name, status_word, where, record["seconds"])
    return record


def _update(
    ws: Path, instance: StageInstance, env: Mapping[str, str], executor: str, image: str | None, logger
) -> dict[str, Any]:  # noqa: ANN001
    record: dict[str, Any] = {"instance": instance.name, "ran": False, "gpu": None, "started": None, "finished": None}
    with workspace_lock(ws):
        status = run_dvc(ws, ["status", "--json", instance.name], env, lock=False)
    if status.returncode != 0:
        _raise_for(instance, status.returncode, status.output)
    changed = json.loads(status.output.strip().splitlines()[-1] if status.output.strip() else "{}")
    if changed:
        logger.info("%s changed: %s", instance.name, json.dumps(changed.get(instance.name, changed)))
        missing = [d for d in instance.deps if not (ws / d).exists()]
        if missing:
            raise StageFailed(f"{instance.name}: missing dependencies {missing} in {ws} (nothing was run)")
        before = _fingerprint(ws, instance)
        for out in instance.outs:
            _remove(ws / out)
        slot = gpu_slot(instance.name, logger=logger) if instance.stage in GPU_STAGES else nullcontext(None)
        with slot as device:
            record["gpu"] = device
            run_env = {**env, "DVC_ROOT": str(ws), "DVC_STAGE": instance.name}
            if device is not None:
                run_env["CUDA_VISIBLE_DEVICES"] = device
                logger.info("%s runs on GPU %s", instance.name, device)
            if executor == "docker":
                cmd = docker_command(ws, instance, run_env, image or DEFAULT_IMAGES[instance.stage], device)
            else:
                cmd = _local_command(instance)
            logger.info("%s", shlex.join(cmd))
            record["started"] = time.time()
            returncode, output = _stream(cmd, ws, run_env, logger)
            record["finished"] = time.time()
        if returncode != 0:
            _raise_for(instance, returncode, output)
        with workspace_lock(ws):
            if _fingerprint(ws, instance) != before:
                raise TransientStageError(f"{instance.name}: its dependencies changed while it ran; not committed")
            commit = run_dvc(ws, ["commit", "--force", instance.name], env, lock=False)
        for line in commit.output.strip().splitlines():
            logger.info(line)
        if commit.returncode != 0:
            _raise_for(instance, commit.returncode, commit.output)
        record["ran"] = True
    return record


_SHELL_TOKENS = frozenset({"|", "||", "&&", ";", ">", ">>", "<", "&"})


def _local_command(instance: StageInstance) -> list[str]:
    """The dvc.yaml command as an argument list (run without a shell, from the workspace)."""
    argv = shlex.split(instance.cmd)
    if not argv or _SHELL_TOKENS & set(argv):
        raise StageFailed(f"{instance.name}: dvc.yaml cmd {instance.cmd!r} needs a shell; the flow runs one command")
    return argv


def _stream(cmd: list[str], cwd: Path, env: Mapping[str, str], logger) -> tuple[int, str]:  # noqa: ANN001
    """Run `cmd`, logging each line of its combined output as it comes; returns the exit status and the output."""
    lines: list[str] = []
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as exc:
        return 127, f"cannot start {cmd[0]}: {exc}"
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip("\n")
        lines.append(line)
        logger.info(line)
    return proc.wait(), "\n".join(lines)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _fingerprint(ws: Path, instance: StageInstance) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of every file of the instance's dependencies and its `--config` file."""
    argv = shlex.split(instance.cmd)
    paths = list(instance.deps) + ([argv[argv.index("--config") + 1]] if "--config" in argv[:-1] else [])
    out = []
    for rel in paths:
        p = ws / rel
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p] if p.is_file() else []
        for f in files:
            if f.suffix == ".pyc" or "__pycache__" in f.parts:  # .dvcignore'd: stages write them as they run
                continue
            st = f.stat()
            out.append((f.relative_to(ws).as_posix(), st.st_size, st.st_mtime_ns))
    return out


def docker_command(
    workspace: Path, instance: StageInstance, env: Mapping[str, str], image: str, device: str | None = None
) -> list[str]:
    """`docker run` of the stage's dvc.yaml command in its image: the workspace mounted at the same path.

    A GPU stage gets `--gpus device=<device>` when the pool assigned one (inside, that GPU is the container's
    only one), else `--gpus all`.
    """
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
    passed = ["FOURD_PARENT_RUN_ID", "FOURD_TRACKING", "FOURD_MLFLOW_EXPERIMENT", "MLFLOW_TRACKING_URI"]
    passed += ["MLFLOW_ALLOW_FILE_STORE", "DVC_ROOT", "DVC_STAGE"]
    if device is None:  # with --gpus device=<id> the container sees that GPU as its device 0
        passed.append("CUDA_VISIBLE_DEVICES")
    for var in passed:
        if env.get(var):
            cmd += ["-e", f"{var}={env[var]}"]
    if instance.stage in GPU_STAGES:
        cmd += ["--gpus", "all" if device is None else f"device={device}"]
    return [*cmd, image, *argv[marker + 1 :]]


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

        try:
            with store_lock(uri):  # a new store is created and migrated once, the experiment created once
                self.client = MlflowClient(tracking_uri=uri)
                experiment = os.environ.get("FOURD_MLFLOW_EXPERIMENT", "fourd")
                exp = self.client.get_experiment_by_name(experiment)
                exp_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
            self.run_id = self.client.create_run(exp_id, run_name=name, tags=tags).info.run_id
            for k, v in params.items():
                self.client.log_param(self.run_id, k, v)
        except Exception as exc:  # noqa: BLE001 - tracking never decides a flow's result
            log.warning("MLflow tracking failed, the flow goes on untracked (%s: %s)", type(exc).__name__, exc)
            self.run_id = None

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

    GPU stages wait for a free slot of the machine's GPU pool (flows/gpus.py) and run on that device alone, so
    flow runs in flight at once (a served deployment's, `fourd_batch`'s subflows) share the GPUs one per stage.

    Args:
        video: a video file (or folder of frames) to register as a new subject: copied to data/raw/<subject>/,
            `dvc add`-ed and listed in params.yaml. Omit it to run a subject already in params.yaml.
        subject: the subject name (default: the video's file name); required when `video` is omitted.
        prompt: text prompt for a new video (else preprocess uses the stage's fallbacks).
        fps: frame rate of a frame folder (ignored for video files).
        config_set: `default` (configs/<stage>.yaml, run in the repository) or the name of a folder
            configs/<name>/ (e.g. `tiny`), run in its own workspace out/workspaces/<name>/.
        stages: run only these stages (their upstream outputs must be up to date); default all.
        executor: `local` (each stage's dvc.yaml command in this environment) or `docker` (each stage in its image
            from docker/); DVC's status and commit run here either way.
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
    parent.set_tag("gpus", ",".join(f"{r['instance']}:{r['gpu']}" for r in results if r["gpu"] is not None))
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
        f"| {s} | {'ran' if r['ran'] else 'up to date'} | {_gpu_cell(r)} | {r['seconds']} | `{r['output']}` |"
        for s, r in summary["stages"].items()
    )
    metrics = "\n".join(f"| {k} | {v:.4g} |" for k, v in summary["metrics"].items())
    md = (
        f"# fourd: {summary['subject']} (config set {summary['config_set']})\n\n"
        f"Workspace `{summary['workspace']}`; MLflow run `{summary['mlflow_run_id']}` "
        f"at `{summary['mlflow_tracking_uri']}`.\n\n"
        f"| stage | status | GPU | seconds | output |\n|---|---|---|---|---|\n{rows}\n"
        + (f"\n| metric | value |\n|---|---|\n{metrics}\n" if metrics else "")
    )
    create_markdown_artifact(md, key=f"fourd-{summary['subject']}", description="where the results are")
    print(md)


def _gpu_cell(record: Mapping[str, Any]) -> str:
    return "-" if record.get("gpu") is None else str(record["gpu"])


@task(name="subject", cache_policy=NO_CACHE)
def _subject_run(subject: str, options: dict[str, Any]) -> dict[str, Any]:
    """One subject's `fourd` as a subflow (a task, so that the batch's thread pool runs several at once)."""
    return fourd(subject=subject, **options)


@flow(name="fourd-batch", log_prints=True)
def fourd_batch(
    videos: list[str] | None = None,
    subjects: list[str] | None = None,
    prompts: list[str] | None = None,
    fps: float = 0.0,
    config_set: str = DEFAULT_CONFIG_SET,
    stages: list[str] | None = None,
    executor: Literal["local", "docker"] = "local",
    images: dict[str, str] | None = None,
    repo: str | None = None,
    parallel: int | None = None,
) -> dict[str, Any]:
    """Run several subjects at once: new videos are registered one after the other, then each subject's `fourd`
    runs as a subflow, at most `parallel` at a time; GPU stages share the machine's GPU pool (flows/gpus.py).

    Args:
        videos: videos (or frame folders) to register as new subjects, named after their files.
        subjects: subjects already in params.yaml to run as well.
        prompts: one prompt per video (same order), or none.
        fps: frame rate of frame folders among `videos`.
        config_set: as `fourd` (all subjects share the workspace of this set).
        stages: as `fourd`.
        executor: as `fourd`.
        images: as `fourd`.
        repo: as `fourd`.
        parallel: subjects in flight at once (default: the pool's number of GPUs, at least 1).

    Returns:
        `{"subjects": {name: fourd's summary, or {"error": message}}, "order", "parallel", "gpus", "wall_seconds"}`.

    Raises:
        WorkspaceError: nothing to run, prompts that do not pair with the videos, or parallel < 1.
        RuntimeError: after every subject finished, when one of them failed (the summary names it).
    """
    logger = get_run_logger()
    start = time.monotonic()
    videos, prompts = list(videos or []), list(prompts or [])
    if prompts and len(prompts) != len(videos):
        raise WorkspaceError(f"{len(prompts)} prompts for {len(videos)} videos: give one per video, or none")
    devices = gpu_devices()
    parallel = parallel if parallel is not None else max(1, len(devices))
    if parallel < 1:
        raise WorkspaceError(f"parallel {parallel}: at least 1 subject must run at a time")
    root = find_repo(repo)
    paired: list[str | None] = list(prompts) if prompts else [None] * len(videos)
    names = [register_subject(root, Path(v), None, p or None, fps) for v, p in zip(videos, paired, strict=True)]
    order = list(dict.fromkeys([*names, *(subjects or [])]))
    if not order:
        raise WorkspaceError("give videos to register and/or subjects in params.yaml")
    logger.info("%d subjects, %d at a time, GPUs %s: %s", len(order), parallel, list(devices) or "none", order)
    options = {"config_set": config_set, "stages": stages, "executor": executor, "images": images, "repo": str(root)}
    with ThreadPoolTaskRunner(max_workers=parallel) as runner:
        futures = {
            s: runner.submit(_subject_run.with_options(name=f"subject-{s}"), {"subject": s, "options": options})
            for s in order
        }
        for f in futures.values():
            f.wait()
    results: dict[str, Any] = {}
    for s, f in futures.items():
        try:
            results[s] = f.state.result()
        except Exception as exc:  # noqa: BLE001 - reported per subject; the batch fails below
            results[s] = {"error": f"{type(exc).__name__}: {exc}"}
    summary = {
        "subjects": results,
        "order": order,
        "parallel": parallel,
        "gpus": list(devices),
        "config_set": config_set,
        "wall_seconds": round(time.monotonic() - start, 2),
    }
    _batch_report(summary)
    failed = [s for s, r in results.items() if "error" in r]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(order)} subjects failed: {failed} (see the summary above)")
    return summary


def _batch_report(summary: dict[str, Any]) -> None:
    rows = []
    for subject, res in summary["subjects"].items():
        if "error" in res:
            rows.append(f"| {subject} | - | failed | - | - | {res['error'].splitlines()[0][:200]} |")
            continue
        for stage, r in res["stages"].items():
            rows.append(
                f"| {subject} | {stage} | {'ran' if r['ran'] else 'up to date'} | {_gpu_cell(r)} | {r['seconds']} | |"
            )
    md = (
        f"# fourd batch: {len(summary['subjects'])} subjects, {summary['parallel']} at a time "
        f"(config set {summary['config_set']}, GPUs {', '.join(summary['gpus']) or 'none'})\n\n"
        f"Wall time {summary['wall_seconds']} s.\n\n"
        "| subject | stage | status | GPU | seconds | error |\n|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    create_markdown_artifact(md, key="fourd-batch", description="each subject's stages and the batch wall time")
    print(md)


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.fourd`: run one subject, several at once, or `--serve` the deployment `fourd/serve`.

    One `--video` and/or one `--subject` (and no `--parallel`) is the single-subject flow `fourd`, as always:
    `--subject` then names the video. Several `--video`s or `--subject`s, or `--parallel`, run `fourd_batch`:
    each video is registered under its file name and every `--subject` is one already in params.yaml.
    """
    p = ArgumentParser(
        prog="python -m flows.fourd",
        description=(fourd.fn.__doc__ or "").split("\n")[0] + " Several --video/--subject: " + "fourd_batch.",
    )
    p.add_argument("--video", action="append", default=[], help="video or frame folder (repeat for several)")
    p.add_argument("--subject", action="append", default=[], help="subject name (repeat for several)")
    p.add_argument("--prompt", action="append", default=[], help="prompt of the video (one per --video)")
    p.add_argument("--fps", type=float, default=0.0)
    p.add_argument("--config-set", default=DEFAULT_CONFIG_SET)
    p.add_argument("--stages", nargs="+", choices=STAGE_ORDER)
    p.add_argument("--executor", choices=("local", "docker"), default="local")
    p.add_argument("--repo")
    p.add_argument("--parallel", type=int, help="subjects at once (default: number of GPUs, at least 1)")
    p.add_argument("--serve", action="store_true", help="serve deployment fourd/serve (runs until Ctrl-C)")
    p.add_argument("--limit", type=int, help="flow runs the served deployment runs at once (default max(2, GPUs))")
    p.add_argument("--summary-json", type=Path, help="also write the returned summary to this file")
    a = p.parse_args(argv)
    if a.serve:
        fourd.serve(name="serve", limit=a.limit or max(2, len(gpu_devices())))
        return 0
    single = len(a.video) <= 1 and len(a.subject) <= 1 and len(a.prompt) <= 1 and a.parallel is None
    try:
        check_arguments(a.repo, a.video, a.subject, a.config_set, single=single)
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
