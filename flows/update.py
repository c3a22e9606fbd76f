"""Bring one DVC stage instance up to date: `dvc status` → its dvc.yaml command → `dvc commit` (no Prefect here).

This is what `dvc repro --single-item <pipeline>:<stage>@<subject>` does, split so that the repository's lock is
held for DVC's bookkeeping only, not while the command runs: `dvc repro` holds that lock for the whole command, so
two subjects could never run at once in one repository (flows/README.md lists what else the flow needs of it).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

from flows import GPU_STAGES, STAGE_ORDER
from flows.gpus import gpu_slot
from flows.pipelines import StageInstance
from flows.workspace import instance_lock, run_dvc, workspace_lock

__all__ = ["DEFAULT_IMAGES", "StageFailed", "TransientStageError", "docker_command", "first_error", "update_stage"]

log = logging.getLogger(__name__)

DEFAULT_IMAGES = {s: f"fourd/{s}:0.1.0" for s in STAGE_ORDER}
"""Stage images for `executor="docker"` (docker/Dockerfile.<stage>; override with the `images` parameter)."""
_TRANSIENT = ("Unable to acquire lock", "is busy, it is being blocked by", "CUDA out of memory")


class StageFailed(RuntimeError):
    """A stage exited non-zero for a reason a retry would not fix (bad input, missing weights, a bug)."""


class TransientStageError(StageFailed):
    """Another DVC process held the lock, the process was killed, or the GPU was full: worth retrying."""


def first_error(output: str) -> str:
    """The line of a command's output that says why it failed: a stage CLI's one `error:` line, else the last line
    naming an error, else the last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for pick in (lambda t: t.startswith("error:") or t.startswith("ERROR:"), lambda t: "Error" in t or "error" in t):
        found = [t for t in lines if pick(t)]
        if found:
            return found[-1]
    return lines[-1] if lines else "no output"


def _raise_for(instance: StageInstance, returncode: int, output: str) -> None:
    """Raise with the reason on the first line (Prefect's state message and `--watch` show that line)."""
    tail = "\n".join(output.strip().splitlines()[-25:])
    message = f"{instance.name} failed (exit {returncode}): {first_error(output)}\n{tail}"
    if returncode < 0 or returncode in (137, 143) or any(t in output for t in _TRANSIENT):
        raise TransientStageError(message)
    raise StageFailed(message)


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
    with instance_lock(ws, instance.target):  # another flow run of the same subject waits, then finds it up to date
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
        status = run_dvc(ws, ["status", "--json", instance.target], env, lock=False)
    if status.returncode != 0:
        _raise_for(instance, status.returncode, status.output)
    changed = json.loads(status.output.strip().splitlines()[-1] if status.output.strip() else "{}")
    if changed:
        logger.info("%s changed: %s", instance.name, json.dumps(changed.get(instance.target, changed)))
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
            commit = run_dvc(ws, ["commit", "--force", instance.target], env, lock=False)
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
    for dep in instance.deps:  # a weights folder may be a link to a folder elsewhere
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
