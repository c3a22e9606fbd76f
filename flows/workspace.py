"""The repository the flow runs in: its locks, the DVC calls the flow makes, and subject registration (no Prefect).

Every config set runs in the repository itself (flows/pipelines.py): one DVC cache, one dvc.lock per pipeline file,
one MLflow store. DVC gives up after 3 s when another DVC process holds the repository's lock, so every DVC call of
the flow goes through `workspace_lock`: an advisory `flock`, waited on, released by the kernel if the holder dies.
The lock covers DVC's bookkeeping only (`dvc status`, `dvc commit`, registration), never a stage's command: the flow
(flows/fourd.py) runs the commands of several subjects at once. `instance_lock` keeps two flow runs from bringing the
same stage instance up to date at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

__all__ = [
    "DvcResult",
    "WorkspaceError",
    "find_repo",
    "instance_lock",
    "register_subject",
    "run_dvc",
    "source_revision",
    "subjects",
    "workspace_lock",
]

log = logging.getLogger(__name__)

LOCK_FILE = Path(".dvc") / "tmp" / "fourd-flow.lock"
DVC = (sys.executable, "-m", "dvc", "--wait-for-lock")
"""How the flow calls DVC: this interpreter's, waiting for the repository lock instead of failing after 3 s."""
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".gif", ".avi", ".mkv", ".m4v")


class WorkspaceError(RuntimeError):
    """A repository, subject or video that cannot be used; the message says what to change."""


@dataclass(frozen=True)
class DvcResult:
    """What one DVC call did: its arguments, exit status and combined output."""

    args: tuple[str, ...]
    returncode: int
    output: str


def find_repo(repo: str | os.PathLike[str] | None = None) -> Path:
    """The repository root: `repo`, else `$FOURD_REPO`, else the checkout this package was imported from."""
    root = Path(repo or os.environ.get("FOURD_REPO") or Path(__file__).resolve().parents[1]).resolve()
    if not (root / "dvc.yaml").is_file() or not (root / ".dvc").is_dir():
        raise WorkspaceError(f"{root} is not a fourd checkout (no dvc.yaml and .dvc/)")
    return root


def check_name(kind: str, name: str) -> str:
    if not _NAME.match(name):
        raise WorkspaceError(f"{kind} {name!r}: use lowercase letters, digits, '-' and '_' (at most 64)")
    return name


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` (blocking; the kernel releases it if the holder dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def workspace_lock(workspace: Path) -> AbstractContextManager[None]:
    """Hold the repository's flow lock (blocking): one DVC call or registration at a time."""
    return _flock(Path(workspace) / LOCK_FILE)


def instance_lock(workspace: Path, target: str) -> AbstractContextManager[None]:
    """Hold one stage instance's lock (blocking): two flow runs never bring the same instance up to date at once."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", target)
    return _flock(Path(workspace) / LOCK_FILE.parent / f"fourd-stage-{safe}.lock")


def subprocess_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of DVC and the stages: this interpreter's bin first (dvc.yaml says `python -m …`)."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


def run_dvc(
    workspace: Path, args: Sequence[str], env: Mapping[str, str] | None = None, *, lock: bool = True
) -> DvcResult:
    """Run `python -m dvc <args>` in `workspace` (under the flow's lock unless `lock=False`); output is returned."""
    cmd = (*DVC, *args)
    log.info("%s: dvc %s", workspace, " ".join(args))

    def call() -> DvcResult:
        proc = subprocess.run(
            cmd, cwd=workspace, env=dict(env or subprocess_env()), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        return DvcResult(tuple(args), proc.returncode, proc.stdout.decode(errors="replace"))

    if not lock:
        return call()
    with workspace_lock(workspace):
        return call()


def _dvc_ok(workspace: Path, args: Sequence[str], *, lock: bool = True) -> str:
    res = run_dvc(workspace, args, lock=lock)
    if res.returncode != 0:
        raise WorkspaceError(f"dvc {' '.join(args)} failed in {workspace} (exit {res.returncode}):\n{res.output}")
    return res.output


def source_revision(repo: Path) -> str:
    """`<sha>[-dirty]` of the repository (`unknown` outside git)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()

    try:
        sha, dirty = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def _params(workspace: Path) -> dict:
    return yaml.safe_load((workspace / "params.yaml").read_text()) or {}


def subjects(workspace: Path) -> dict[str, dict]:
    return dict(_params(workspace).get("subjects") or {})


def _sha256(path: Path) -> str:
    """Content hash of a file, or of a folder's files (names and bytes; a folder's prompt.txt left out)."""
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if f.is_file() and not (path.is_dir() and f.relative_to(path).as_posix() == "prompt.txt"):
            h.update(f.relative_to(path).as_posix().encode() if path.is_dir() else b"")
            h.update(f.read_bytes())
    return h.hexdigest()


def register_subject(
    repo: Path, video: Path, subject: str | None = None, prompt: str | None = None, fps: float = 0.0
) -> str:
    """Add a video (or frame folder) as a subject: copy to `data/raw/<subject>/`, `dvc add` it, list it in params.yaml.

    The copy is `data/raw/<subject>/video<ext>`, or `data/raw/<subject>/frames/` for a folder (its frames keep
    their names), with the prompt, when given, in `prompt.txt` where preprocess reads it: beside the video, or
    inside the frame folder (replacing the folder's own). A video that already lies in `data/raw/<subject>/` is
    registered in place. No file of the user's is ever deleted or overwritten: registering the same content again
    is a no-op; other content under an existing name is an error. params.yaml keeps its comments (ruamel round
    trip).

    Returns:
        The subject name (default: the video's file or folder name, lowercased and sanitised).
    """
    repo, video = Path(repo).resolve(), Path(video).expanduser().resolve()
    if not video.exists():
        raise WorkspaceError(f"video {video} does not exist")
    if video.is_file() and video.suffix.lower() not in VIDEO_SUFFIXES:
        raise WorkspaceError(f"video {video}: expected one of {VIDEO_SUFFIXES} or a folder of frames")
    if video.is_dir() and fps <= 0:
        raise WorkspaceError(f"{video} is a folder of frames: give its frame rate (fps > 0)")
    name = check_name("subject", subject or re.sub(r"[^a-z0-9_-]+", "-", video.stem.lower()).strip("-"))
    raw = repo / "data" / "raw" / name
    # A video already inside data/raw/<name>/ is registered where it lies: nothing is copied, moved or deleted.
    in_place = video == raw or video.is_relative_to(raw)
    target = video if in_place else raw / (f"video{video.suffix.lower()}" if video.is_file() else "frames")
    # A registered video is an arbitrary clip: preprocess recentres it (`framing: keep` is for rendered inputs).
    entry = {"input": target.relative_to(repo).as_posix(), "fps": float(fps), "framing": "recenter"}
    # Where preprocess looks for the prompt: beside a video file, inside a frame folder (stages/preprocess/run.py).
    prompt_file = (target if video.is_dir() else target.parent) / "prompt.txt"

    from ruamel.yaml import YAML  # DVC's own YAML library: keeps params.yaml's comments

    with workspace_lock(repo):
        rt = YAML()
        rt.preserve_quotes = True
        params_path = repo / "params.yaml"
        params = rt.load(params_path.read_text())
        existing = (params.get("subjects") or {}).get(name)
        if existing is not None:
            same_input = dict(existing).get("input") == entry["input"] and target.exists()
            if same_input and (in_place or _sha256(target) == _sha256(video)) and _prompt_matches(prompt_file, prompt):
                log.info("subject %s is already registered with this video", name)
                return name
            raise WorkspaceError(
                f"subject {name!r} already exists in params.yaml with other input; pick another subject name"
            )
        if not in_place:
            if target.exists() and _sha256(target) != _sha256(video):
                raise WorkspaceError(
                    f"{target.relative_to(repo)} already exists and differs from {video}; move it away or pick "
                    "another subject name (params.yaml and data/raw/ are left as they are)"
                )
            raw.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                partial = target.with_name(f".{target.name}.partial")
                if partial.is_dir():
                    shutil.rmtree(partial)
                if video.is_file():
                    shutil.copyfile(video, partial)
                else:
                    shutil.copytree(video, partial)
                os.replace(partial, target)  # a copy cut short never looks like the registered video
        if prompt and not _prompt_matches(prompt_file, prompt):
            if in_place and prompt_file.exists():
                raise WorkspaceError(f"{prompt_file} holds another prompt; edit it or leave out the prompt")
            prompt_file.write_text(prompt.strip() + "\n")
        _dvc_ok(repo, ["add", raw.relative_to(repo).as_posix()], lock=False)
        if params.get("subjects") is None:
            params["subjects"] = {}
        params["subjects"][name] = entry
        with open(params_path, "w") as fh:
            rt.dump(params, fh)
    log.info("registered subject %s: %s (dvc add data/raw/%s)", name, entry["input"], name)
    return name


def _prompt_matches(path: Path, prompt: str | None) -> bool:
    if not prompt:
        return True
    return path.is_file() and path.read_text().strip() == prompt.strip()
