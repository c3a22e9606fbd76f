"""A machine-wide pool of GPU slots for the flow's GPU stages (no torch and no Prefect in here).

A GPU stage run holds one device for as long as its command runs: `gpu_slot()` takes a free device with a
non-blocking `flock` on `<lock dir>/<device>.lock`, polling every device until one is free, and the flow starts
the stage with `CUDA_VISIBLE_DEVICES=<device>`. The slots are files, so every flow process of the machine
shares them (the subflows of `fourd_batch`, the runs of a served deployment, a second `python -m flows`),
and the kernel frees a slot when the process holding it dies. The holder writes its pid, label and start time
into the lock file, so a waiting stage logs whom it waits for, and `python -m flows.gpus` lists the holders.

Devices, first match wins:
- `$FOURD_GPUS`: a comma list of `CUDA_VISIBLE_DEVICES` values ("0,1", or GPU UUIDs); "none" or "" = no
  assignment;
- the flow process's `$CUDA_VISIBLE_DEVICES` (its entries, up to the first invalid one, as CUDA reads it);
- the GPUs `nvidia-smi -L` lists (indices 0..n-1) when nvidia-smi exists;
- none: the slot yields None and stages run without assignment (as on a CPU machine).

The lock directory is `$FOURD_GPU_LOCK_DIR`, default `<tempdir>/fourd-gpus-<uid>`: processes of one user share
the pool; point every user's `FOURD_GPU_LOCK_DIR` at one writable folder to share it across users.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = ["GpuConfigError", "gpu_devices", "gpu_slot", "holders", "lock_dir", "parse_gpu_list"]

log = logging.getLogger(__name__)

_DEVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:._/-]{0,127}$")
"""A CUDA_VISIBLE_DEVICES entry: an index, a GPU-/MIG- UUID (MIG ones hold '/'), no spaces or commas."""
POLL_S = 0.25
"""Seconds between two looks at the slots while every device is taken."""
WAIT_LOG_EVERY_S = 60.0
"""A stage still waiting logs again after this many seconds."""


class GpuConfigError(ValueError):
    """A FOURD_GPUS (or CUDA_VISIBLE_DEVICES) value that names no usable device list."""


def parse_gpu_list(value: str, source: str = "FOURD_GPUS") -> tuple[str, ...]:
    """The devices of a comma list such as "0,1" ("none" or blank: no devices).

    Args:
        value: the variable's value.
        source: the variable's name, for the error message.

    Returns:
        The device ids in the order given (no duplicates).

    Raises:
        GpuConfigError: an empty entry, an entry with spaces or other characters CUDA_VISIBLE_DEVICES cannot
            hold, or a device named twice.
    """
    text = value.strip()
    if text.lower() in ("", "none"):
        return ()
    devices = [part.strip() for part in text.split(",")]
    for dev in devices:
        if not dev:
            raise GpuConfigError(f"{source}={value!r}: empty entry; write device ids separated by commas, e.g. 0,1")
        if not _DEVICE.match(dev):
            raise GpuConfigError(
                f"{source}={value!r}: {dev!r} is not a device id (an index such as 0, or a GPU-/MIG- UUID); "
                "write e.g. 0,1, or none for no assignment"
            )
    dupes = sorted({d for d in devices if devices.count(d) > 1})
    if dupes:
        raise GpuConfigError(f"{source}={value!r}: {dupes} named more than once (one slot per device)")
    return tuple(devices)


def _visible_devices(value: str) -> tuple[str, ...]:
    """CUDA_VISIBLE_DEVICES as CUDA reads it: entries up to the first invalid one (e.g. -1 hides all)."""
    out: list[str] = []
    for part in value.split(","):
        dev = part.strip()
        if not _DEVICE.match(dev) or dev.startswith("-"):
            break
        out.append(dev)
    return tuple(dict.fromkeys(out))


def _nvidia_smi_count() -> int:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return 0
    try:
        proc = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("nvidia-smi -L failed (%s): GPU stages run without a device assignment", exc)
        return 0
    if proc.returncode != 0:
        log.warning("nvidia-smi -L exited %d: GPU stages run without a device assignment", proc.returncode)
        return 0
    return sum(1 for line in proc.stdout.splitlines() if re.match(r"^GPU \d+:", line))


def gpu_devices(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The devices of the pool: `FOURD_GPUS`, else `CUDA_VISIBLE_DEVICES`, else nvidia-smi's GPUs, else none.

    Args:
        env: the environment to read (default os.environ).

    Raises:
        GpuConfigError: FOURD_GPUS is malformed.
    """
    env = os.environ if env is None else env
    if "FOURD_GPUS" in env:
        return parse_gpu_list(env["FOURD_GPUS"])
    if "CUDA_VISIBLE_DEVICES" in env:
        return _visible_devices(env["CUDA_VISIBLE_DEVICES"])
    return tuple(str(i) for i in range(_nvidia_smi_count()))


def lock_dir(env: Mapping[str, str] | None = None) -> Path:
    """`$FOURD_GPU_LOCK_DIR`, else `<tempdir>/fourd-gpus-<uid>` (created, private to the user)."""
    env = os.environ if env is None else env
    path = Path(env.get("FOURD_GPU_LOCK_DIR") or Path(tempfile.gettempdir()) / f"fourd-gpus-{os.getuid()}")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def _lock_path(directory: Path, device: str) -> Path:
    return directory / (re.sub(r"[^A-Za-z0-9._-]", "_", device) + ".lock")


def _try_take(path: Path) -> int | None:
    """An open descriptor holding `path`'s exclusive flock, or None when another holder has it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def _read_holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def holders(devices: Sequence[str] | None = None, directory: Path | None = None) -> dict[str, dict | None]:
    """`{device: holder}` of the pool now: the holder's pid, label and start time, or None when the slot is free."""
    devices = gpu_devices() if devices is None else tuple(devices)
    directory = lock_dir() if directory is None else directory
    out: dict[str, dict | None] = {}
    for dev in devices:
        path = _lock_path(directory, dev)
        fd = _try_take(path)
        if fd is not None:
            os.close(fd)
            out[dev] = None
        else:
            out[dev] = _read_holder(path)
    return out


def _describe(busy: Mapping[str, dict | None]) -> str:
    now = time.time()
    parts = []
    for dev, h in busy.items():
        if h:
            parts.append(f"GPU {dev}: {h.get('label') or '?'} (pid {h.get('pid')}, {now - h.get('since', now):.0f} s)")
        else:
            parts.append(f"GPU {dev}: busy")
    return "; ".join(parts)


@contextmanager
def gpu_slot(
    label: str = "",
    devices: Sequence[str] | None = None,
    *,
    directory: Path | None = None,
    poll_s: float = POLL_S,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
) -> Iterator[str | None]:
    """Hold one free device of the pool for the block; waits (polling every device) while all are taken.

    Args:
        label: what holds the slot (e.g. `distill@fox`), written into the lock file and logged.
        devices: the pool (default `gpu_devices()`).
        directory: the lock directory (default `lock_dir()`).
        poll_s: seconds between two looks while every device is taken.
        logger: where waiting and taking are logged (default this module's logger).

    Yields:
        The device id to put in CUDA_VISIBLE_DEVICES, or None when the pool has no devices.
    """
    logger = logger or log
    devices = gpu_devices() if devices is None else tuple(devices)
    if not devices:
        yield None
        return
    directory = lock_dir() if directory is None else Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    start = next_log = time.monotonic()
    while True:
        for dev in devices:
            path = _lock_path(directory, dev)
            fd = _try_take(path)
            if fd is not None:
                break
        else:
            now = time.monotonic()
            if now >= next_log:
                busy = {d: _read_holder(_lock_path(directory, d)) for d in devices}
                state = "waiting" if next_log == start else f"still waiting after {now - start:.0f} s"
                logger.info("%s: every GPU is taken, %s (%s)", label or "GPU slot", state, _describe(busy))
                next_log = now + WAIT_LOG_EVERY_S
            time.sleep(poll_s)
            continue
        break
    waited = time.monotonic() - start
    if waited >= poll_s:
        logger.info("%s: GPU %s after waiting %.1f s", label or "GPU slot", dev, waited)
    try:
        record = json.dumps({"pid": os.getpid(), "label": label, "since": time.time()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        yield dev
    finally:
        try:
            os.ftruncate(fd, 0)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.gpus`: the pool's devices and who holds them; `--count` prints the number of slots (≥ 1)."""
    p = argparse.ArgumentParser(prog="python -m flows.gpus", description=(main.__doc__ or "").split(";")[0])
    p.add_argument("--count", action="store_true", help="print max(1, number of devices) (Prefect's gpu tag limit)")
    a = p.parse_args(argv)
    try:
        devices = gpu_devices()
    except GpuConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if a.count:
        print(max(1, len(devices)))
        return 0
    if not devices:
        print("no GPUs: stages run without CUDA_VISIBLE_DEVICES assignment")
        return 0
    print(f"lock dir {lock_dir()}")
    for dev, h in holders(devices).items():
        print(f"GPU {dev}: " + ("free" if h is None else _describe({dev: h}).split(": ", 1)[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
