"""The `fourd` Prefect flow: one input video (or a subject already in params.yaml) through every stage; and
`fourd_batch`, several subjects at once, one `fourd` subflow each, on as many GPUs as the machine has.

Prefect owns *when and where* (retries, parameters, UI, concurrent subflows); DVC owns *whether*: each task brings
one stage instance of the config set's pipeline up to date (flows/update.py: `dvc status` → the dvc.yaml command →
`dvc commit`), so unchanged work is skipped by content hash and the pipeline's dvc.lock records what ran. Every
config set runs in the repository itself (flows/pipelines.py). GPU stages (`flows.GPU_STAGES`) take a slot of the
machine-wide GPU pool (flows/gpus.py). MLflow gets one parent run per flow run, with each stage run as its child
(flows/tracking.py). House style §8.6. Tasks are thin: no stage logic here. The command line, `python -m flows`,
is flows/cli.py.
"""

# No `from __future__ import annotations` here: Prefect builds the flow's parameter schema from the annotations of
# a module it loads by file path (deployments), and string annotations (`Literal[...]`) do not resolve there.
import json
import shlex
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context
from prefect.task_runners import ThreadPoolTaskRunner

from flows import GPU_STAGES
from flows.gpus import gpu_devices
from flows.pipelines import DEFAULT_CONFIG_SET, StageInstance, demo_model_subjects, pipeline_file, stage_instances
from flows.tracking import ParentRun, tracking_uri
from flows.update import StageFailed, TransientStageError, update_stage
from flows.workspace import WorkspaceError, find_repo, register_subject, source_revision, subjects, subprocess_env

__all__ = ["fourd", "fourd_batch", "AUTO_CONFIG_SET", "StageFailed", "TransientStageError"]

AUTO_CONFIG_SET = "auto"
"""`default` when its weights are installed, else `demo` (announced; see `fourd`'s `config_set`)."""
EVAL_WEIGHTS = "weights/eval"
"""eval's networks (weights/README.md). Outside the production configs a run goes on without them, as `make demo`
does: the flow creates the empty folder DVC needs as eval's dependency, and eval skips the metrics they serve."""


def _retry_transient(task, task_run, state) -> bool:  # noqa: ANN001 (Prefect's RetryConditionCallable)
    try:
        state.result()
    except TransientStageError:
        return True
    except BaseException:  # noqa: BLE001 - any other failure is final
        return False
    return False


@task(
    name="stage",
    cache_policy=NO_CACHE,  # DVC decides staleness from content hashes (platform-notes §1.9)
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=_retry_transient,
)
def run_stage(
    repo: str,
    instance: StageInstance,
    env: dict[str, str],
    executor: Literal["local", "docker"] = "local",
    image: str | None = None,
) -> dict[str, Any]:
    """Bring one stage instance up to date (flows/update.py), logging to the task run.

    Returns:
        `update_stage`'s record: `instance`, `ran`, `seconds`, `gpu`, `started`, `finished`.
    """
    return update_stage(Path(repo), instance, env, executor, image, get_run_logger())


def _missing(root: Path, plan: list[StageInstance]) -> list[str]:
    """Dependencies of the plan that are neither on disk nor made by an earlier stage of the plan."""
    return [f"{i.name}: {d}" for i in plan for d in i.deps if not (root / d).exists() and not _made_by(d, plan)]


def _choose_config_set(root: Path, subject: str, config_set: str, stages: list[str] | None, logger) -> tuple:  # noqa: ANN001
    """(config set, plan, notice): `auto` is `default` when nothing is missing, else `demo`, announced loudly."""
    if config_set != AUTO_CONFIG_SET:
        return config_set, stage_instances(root, subject, stages, config_set), None
    plan = stage_instances(root, subject, stages, DEFAULT_CONFIG_SET)
    full = plan if stages is None else stage_instances(root, subject, None, DEFAULT_CONFIG_SET)
    missing = [m for m in _missing(root, full) if m.split(": ", 1)[1].startswith("weights/")]
    if not missing:
        return DEFAULT_CONFIG_SET, plan, None
    trained_on = demo_model_subjects(root)
    notice = (
        f"NO OFFICIAL WEIGHTS: {sorted({m.split(': ')[1] for m in missing})} are missing, so this run uses config "
        f"set `demo`: the small 4DM shipped in weights/demo/fourdm. It was trained on {len(trained_on)} subjects "
        f"only ({'; '.join(trained_on)}): a video of anything else comes out as one of them. For real results install "
        "the official weights (weights/README.md); config_set=default then runs the production configs."
    )
    logger.warning("%s", notice)
    return "demo", stage_instances(root, subject, stages, "demo"), notice


@flow(name="fourd", log_prints=True)
def fourd(
    video: str | None = None,
    subject: str | None = None,
    prompt: str | None = None,
    fps: float = 0.0,
    config_set: str = AUTO_CONFIG_SET,
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
        config_set: `default` (configs/<stage>.yaml, the official weights, dvc.yaml), a set of flows/pipelines.py
            (`demo`: the small 4DM shipped in weights/demo; `tiny`; `demo-gpu`), or `auto`: `default` when its
            weights are installed, else `demo`, announced in the log, the summary and the MLflow run.
        stages: run only these stages (their upstream outputs must be up to date); default all.
        executor: `local` (each stage's dvc.yaml command in this environment) or `docker` (each stage in its image
            from docker/); DVC's status and commit run here either way.
        images: stage → image for the docker executor (default fourd/<stage>:0.1.0).
        repo: the fourd checkout (default $FOURD_REPO, else the one this code was imported from).
    """
    logger = get_run_logger()
    try:
        return _fourd(logger, video, subject, prompt, fps, config_set, stages, executor, images, repo)
    except Exception as exc:
        # The reason on one line where the user looks: `prefect deployment run --watch` streams the flow's log.
        logger.error("fourd failed: %s", (str(exc).strip().splitlines() or [type(exc).__name__])[0])
        raise


def _fourd(logger, video, subject, prompt, fps, config_set, stages, executor, images, repo) -> dict[str, Any]:  # noqa: ANN001
    root = find_repo(repo)
    if video is not None:
        subject = register_subject(root, Path(video), subject, prompt, fps)
    elif subject is None:
        raise WorkspaceError("give a video to register, or the subject name of one in params.yaml")
    if subject not in subjects(root):
        raise WorkspaceError(f"subject {subject!r} is not in params.yaml (have {sorted(subjects(root))})")
    requested = config_set
    config_set, plan, notice = _choose_config_set(root, subject, config_set, stages, logger)
    if config_set != DEFAULT_CONFIG_SET and not (root / EVAL_WEIGHTS).exists():
        logger.info("no %s: eval skips the metrics whose networks are absent (weights/README.md)", EVAL_WEIGHTS)
        (root / EVAL_WEIGHTS).mkdir(parents=True)
    missing = _missing(root, plan)
    if missing:
        raise WorkspaceError(
            f"missing dependencies of config set {config_set}: {', '.join(missing)} (weights are never downloaded: "
            "weights/README.md; config_set=demo runs the shipped demo model)"
        )
    logger.info(
        "subject %s, config set %s (%s): %s", subject, config_set, pipeline_file(config_set), [i.name for i in plan]
    )

    ctx = get_run_context()
    flow_run = getattr(ctx, "flow_run", None)
    parent = ParentRun(
        tracking_uri(root),
        name=f"fourd/{subject}",
        tags={
            "subject": subject,
            "stage": "flow",
            "config_set": config_set,
            "config_set_requested": requested,
            "pipeline": pipeline_file(config_set),
            "git_sha": source_revision(root),
            "executor": executor,
            "prefect_flow_run_id": str(flow_run.id) if flow_run else "",
            "prefect_flow_run_name": str(flow_run.name) if flow_run else "",
            **({"notice": notice[:5000]} if notice else {}),
        },
        params={
            "subject": subject,
            "config_set": config_set,
            "video": video or "",
            "stages": ",".join(i.stage for i in plan),
        },
    )
    env = subprocess_env(parent.env())

    results: list[dict[str, Any]] = []
    try:
        for inst in plan:
            tags = ["gpu"] if inst.stage in GPU_STAGES else []
            results.append(
                run_stage.with_options(name=inst.stage, tags=tags)(
                    str(root), inst, env, executor, (images or {}).get(inst.stage)
                )
            )
    except BaseException:
        parent.finish("FAILED")
        raise

    metrics = _eval_metrics(root, plan)
    summary = {
        "subject": subject,
        "config_set": config_set,
        "pipeline": pipeline_file(config_set),
        "notice": notice,
        "stages": {
            r["instance"].split("@")[0]: {**r, "output": str(root / i.outs[0]) if i.outs else None}
            for r, i in zip(results, plan, strict=True)
        },
        "metrics": metrics,
        "mlflow_run_id": parent.run_id,
        "mlflow_tracking_uri": tracking_uri(root),
    }
    parent.log_metrics(metrics)
    parent.set_tags(
        {
            "stages_ran": ",".join(r["instance"] for r in results if r["ran"]),
            "stages_up_to_date": ",".join(r["instance"] for r in results if not r["ran"]),
            "gpus": ",".join(f"{r['instance']}:{r['gpu']}" for r in results if r["gpu"] is not None),
        }
    )
    parent.log_artifact(root / Path(pipeline_file(config_set)).with_suffix(".lock"))
    parent.finish("FINISHED")
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


def _report(summary: dict[str, Any]) -> None:
    rows = "\n".join(
        f"| {s} | {'ran' if r['ran'] else 'up to date'} | {_gpu_cell(r)} | {r['seconds']} | `{r['output']}` |"
        for s, r in summary["stages"].items()
    )
    metrics = "\n".join(f"| {k} | {v:.4g} |" for k, v in summary["metrics"].items())
    notice = f"**{summary['notice']}**\n\n" if summary.get("notice") else ""
    md = (
        f"# fourd: {summary['subject']} (config set {summary['config_set']})\n\n{notice}"
        f"Pipeline `{summary['pipeline']}`; MLflow run `{summary['mlflow_run_id']}` "
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
    config_set: str = AUTO_CONFIG_SET,
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
        config_set: as `fourd` (decided per subject).
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
