"""Bring one DVC stage instance up to date: `dvc repro --single-item <pipeline>:<stage>@<subject>` (no Prefect here).

The flow asks `dvc status` first, so that a stage with nothing to do neither waits for a GPU nor counts as run;
then, on a GPU slot for GPU stages, `dvc --wait-for-lock repro --single-item --no-run-cache` runs it (DVC holds its
repository lock for the bookkeeping only, not while the command runs, so several subjects' stages run at once).
The docker executor is what DVC cannot do (flows/README.md): the dvc.yaml command runs in the stage's image, and
DVC, on the host, only records it (`dvc commit`).
"""

from __future__ import annotations

import json
import logging
import os
import re
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
from flows.workspace import DVC, instance_lock, run_dvc

__all__ = ["DEFAULT_IMAGES", "StageFailed", "TransientStageError", "docker_command", "first_error", "update_stage"]

log = logging.getLogger(__name__)

_SHELL_TOKENS = frozenset({"|", "||", "&&", ";", ">", ">>", "<", "&"})
DEFAULT_IMAGES = {s: f"fourd/{s}:0.1.0" for s in STAGE_ORDER}
"""Stage images for `executor="docker"` (docker/Dockerfile.<stage>; override with the `images` parameter)."""
_TRANSIENT = ("Unable to acquire lock", "is busy, it is being blocked by", "CUDA out of memory")


class StageFailed(RuntimeError):
    """A stage exited non-zero for a reason a retry would not fix (bad input, missing weights, a bug)."""


class TransientStageError(StageFailed):
    """Another DVC process held the lock, the process was killed, or the GPU was full: worth retrying."""


def first_error(output: str) -> str:
    """The line of a command's output that says why it failed: a stage CLI's one `error:` line, else the last line
    naming an error (DVC's own `ERROR: failed to reproduce …` last), else the last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    picks = (
        lambda t: t.startswith("error:"),
        lambda t: ("Error" in t or "error" in t) and not t.startswith("ERROR:"),
        lambda t: t.startswith("ERROR:"),
    )
    for pick in picks:
        found = [t for t in lines if pick(t)]
        if found:
            return found[-1]
    return lines[-1] if lines else "no output"


def _raise_for(instance: StageInstance, returncode: int, output: str) -> None:
    """Raise with the reason on the first line (Prefect's state message and `--watch` show that line)."""
    command = re.search(r"failed to run: .*, exited with (-?\d+)", output)  # dvc repro exits 255; the command's
    returncode = int(command.group(1)) if command else returncode
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
    """`dvc status` → (on a GPU slot for GPU stages) `dvc repro --single-item`, or the docker run and `dvc commit`.

    A missing dependency fails before anything runs; a failed command leaves dvc.lock's entry as it was (DVC
    records only what succeeded); a changed stage always runs (`--no-run-cache`: every run is a tracked MLflow run).

    Args:
        ws: the repository the instance belongs to.
        instance: the stage instance, e.g. distill@fox of pipelines/demo/dvc.yaml.
        env: environment of DVC and of the command (`CUDA_VISIBLE_DEVICES` is set here for GPU stages).
        executor: `local` (`dvc repro`, the dvc.yaml command in this environment) or `docker` (in `image`).
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
    status = run_dvc(ws, ["status", "--json", instance.target], env)
    if status.returncode != 0:
        _raise_for(instance, status.returncode, status.output)
    changed = json.loads(status.output.strip().splitlines()[-1] if status.output.strip() else "{}")
    if not changed:
        return record
    logger.info("%s changed: %s", instance.name, json.dumps(changed.get(instance.target, changed)))
    missing = [d for d in instance.deps if not (ws / d).exists()]
    if missing:
        raise StageFailed(f"{instance.name}: missing dependencies {missing} in {ws} (nothing was run)")
    slot = gpu_slot(instance.name, logger=logger) if instance.stage in GPU_STAGES else nullcontext(None)
    with slot as device:
        record["gpu"] = device
        run_env = dict(env)
        if device is not None:
            run_env["CUDA_VISIBLE_DEVICES"] = device
            logger.info("%s runs on GPU %s", instance.name, device)
        if executor == "docker":
            for out in instance.outs:  # as repro does: the command never sees a previous result
                _remove(ws / out)
            run_env.update({"DVC_ROOT": str(ws), "DVC_STAGE": instance.name})
            cmd = docker_command(ws, instance, run_env, image or DEFAULT_IMAGES[instance.stage], device)
        else:
            cmd = [*DVC, "repro", "--single-item", "--no-run-cache", instance.target]
        logger.info("%s", shlex.join(cmd))
        record["started"] = time.time()
        returncode, output = _stream(cmd, ws, run_env, logger)
        record["finished"] = time.time()
    if returncode != 0:
        _raise_for(instance, returncode, output)
    if executor == "docker":
        commit = run_dvc(ws, ["commit", "--force", instance.target], env)
        for line in commit.output.strip().splitlines():
            logger.info(line)
        if commit.returncode != 0:
            _raise_for(instance, commit.returncode, commit.output)
    record["ran"] = True
    return record


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


def docker_command(
    workspace: Path, instance: StageInstance, env: Mapping[str, str], image: str, device: str | None = None
) -> list[str]:
    """`docker run` of the stage's dvc.yaml command in its image: the workspace mounted at the same path.

    A GPU stage gets `--gpus device=<device>` when the pool assigned one (inside, that GPU is the container's
    only one), else `--gpus all`.
    """
    argv = shlex.split(instance.cmd)
    if f"stages.{instance.stage}" not in argv or _SHELL_TOKENS & set(argv):
        raise StageFailed(f"{instance.name}: dvc.yaml cmd {instance.cmd!r} is not one `python -m stages.<stage>` call")
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
