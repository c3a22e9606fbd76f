"""Workspaces, config sets, subject registration and the DVC calls the flow makes (no Prefect in here).

A *workspace* is a directory DVC runs in: the repository itself for the committed configs (config set
`default`), or, for another config set `configs/<name>/`, a copy of the repository at
`out/workspaces/<name>/` whose `configs/<stage>.yaml` are that set's files. dvc.yaml therefore names one
config path per stage (`--config configs/<stage>.yaml`, house style §8.6) and no stage config holds a path,
yet `tiny` or any other set runs under DVC with its own dvc.lock, outputs and `dvc params diff`. The copy
shares the repository's DVC cache, so registered videos and unchanged outputs are not stored twice.

DVC gives up after 3 s when another DVC process holds the repository's lock, so every DVC call of the flow
goes through `workspace_lock`: an advisory `flock` per workspace, waited on, released by the kernel if the
holder dies. The lock covers DVC's bookkeeping only (`dvc status`, `dvc commit`, registration, the workspace
sync), never a stage's command: the flow (flows/fourd.py) runs the commands of several subjects at once in one
workspace, and syncing therefore rewrites only files whose content changed and stages only the files it copies (a
stage's output that is being written, and not yet git-ignored by DVC, stays out of the workspace's git).
`instance_lock` keeps two flow runs from bringing the same stage instance up to date at once. Runs in different
workspaces proceed in parallel.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
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

from flows import STAGE_ORDER
from stages.common.config import load_config_data
from stages.common.errors import StageError

__all__ = [
    "DEFAULT_CONFIG_SET",
    "DvcResult",
    "StageInstance",
    "WorkspaceError",
    "config_set_files",
    "find_repo",
    "instance_lock",
    "prepare_workspace",
    "register_subject",
    "run_dvc",
    "stage_instances",
    "workspace_lock",
]

log = logging.getLogger(__name__)

DEFAULT_CONFIG_SET = "default"
"""The committed `configs/<stage>.yaml`; the flow runs it in the repository itself."""
WORKSPACES_DIR = Path("out") / "workspaces"
"""Where the copies for other config sets live, relative to the repository (git-ignored scratch space)."""
LOCK_FILE = Path(".dvc") / "tmp" / "fourd-flow.lock"
SYNC_RECORD = ".fourd-sync.json"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".gif", ".avi", ".mkv", ".m4v")


class WorkspaceError(RuntimeError):
    """A workspace, config set or subject that cannot be used; the message says what to change."""


@dataclass(frozen=True)
class StageInstance:
    """One DVC stage instance, e.g. `mvgen@fox`, with its rendered command, dependencies and outputs."""

    stage: str
    subject: str
    cmd: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.stage}@{self.subject}"


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
    """Hold the workspace's flow lock (blocking): one DVC call or registration at a time per workspace."""
    return _flock(Path(workspace) / LOCK_FILE)


def instance_lock(workspace: Path, instance: str) -> AbstractContextManager[None]:
    """Hold one stage instance's lock (blocking): two flow runs never bring the same instance up to date at once."""
    return _flock(Path(workspace) / LOCK_FILE.parent / f"fourd-stage-{instance.replace('@', '-at-')}.lock")


def subprocess_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of DVC and the stages: this interpreter's bin first (dvc.yaml says `python -m …`)."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


def run_dvc(
    workspace: Path, args: Sequence[str], env: Mapping[str, str] | None = None, *, lock: bool = True
) -> DvcResult:
    """Run `python -m dvc <args>` in `workspace` (under its lock unless `lock=False`); output is returned."""
    cmd = (sys.executable, "-m", "dvc", *args)
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


def config_set_files(repo: Path, config_set: str) -> dict[str, Path]:
    """`{stage: config file}` of a config set: `configs/<set>/<stage>.yaml`, or `configs/<stage>.yaml` for default.

    A set may hold only some stages; the others keep the committed config (and the flow logs which).
    """
    if config_set == DEFAULT_CONFIG_SET:
        return {s: repo / "configs" / f"{s}.yaml" for s in STAGE_ORDER if (repo / "configs" / f"{s}.yaml").is_file()}
    check_name("config set", config_set)
    folder = repo / "configs" / config_set
    if not folder.is_dir():
        sets = sorted(p.name for p in (repo / "configs").iterdir() if p.is_dir())
        raise WorkspaceError(f"config set {config_set!r}: no folder configs/{config_set}/ (have: default, {sets})")
    return {s: folder / f"{s}.yaml" for s in STAGE_ORDER if (folder / f"{s}.yaml").is_file()}


def _merged_config(path: Path) -> bytes:
    """A set's config file merged onto its base (stages.common.config), as the plain YAML a stage reads."""
    try:
        data = load_config_data(path)
    except StageError as err:
        raise WorkspaceError(str(err)) from None
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode()


def _visible_files(repo: Path) -> list[str]:
    """Files git tracks or would track (ignored ones, e.g. data outputs, weights, venvs, excluded)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo, capture_output=True
    )
    if out.returncode != 0:
        raise WorkspaceError(f"{repo}: git ls-files failed: {out.stderr.decode(errors='replace').strip()}")
    return sorted({f for f in out.stdout.decode().split("\0") if f and (repo / f).is_file()})


def _git(workspace: Path, *args: str) -> str:
    cmd = ["git", "-c", "user.name=fourd flow", "-c", "user.email=fourd@localhost", "-c", "commit.gpgsign=false"]
    proc = subprocess.run([*cmd, *args], cwd=workspace, capture_output=True, text=True)
    if proc.returncode != 0:
        raise WorkspaceError(f"git {' '.join(args)} in {workspace}: {proc.stderr.strip()}")
    return proc.stdout


def source_revision(repo: Path) -> str:
    """`<sha>[-dirty]` of the repository (`unknown` outside git)."""
    try:
        sha = _git(repo, "rev-parse", "HEAD").strip()
        dirty = _git(repo, "status", "--porcelain", "--untracked-files=no").strip()
    except WorkspaceError:
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def prepare_workspace(repo: Path, config_set: str) -> Path:
    """The directory to run DVC in for `config_set`, synchronised with the repository.

    `default` is the repository itself. Another set gets `out/workspaces/<set>/`: the repository's visible
    files (code, dvc.yaml, params.yaml, .dvc files, examples) are copied in, except `dvc.lock`, which stays
    the workspace's own; the set's files replace `configs/<stage>.yaml`; files removed from the repository are
    removed from the copy; `weights/<name>` are symlinked; the DVC cache is the repository's; `.dvc` files
    (registered videos) are checked out; the copy is committed to its own git repository (DVC needs one).
    """
    repo = Path(repo).resolve()
    files = config_set_files(repo, config_set)
    if config_set == DEFAULT_CONFIG_SET:
        return repo
    ws = repo / WORKSPACES_DIR / config_set
    ws.mkdir(parents=True, exist_ok=True)
    # The workspace's lock, then the repository's (never the other way round): the copy is a consistent snapshot,
    # never one taken halfway through a registration (a video copied, not yet `dvc add`-ed and git-ignored).
    with workspace_lock(ws), workspace_lock(repo):
        record_path = ws / SYNC_RECORD
        previous = set(json.loads(record_path.read_text())) if record_path.is_file() else set()
        copied = [f for f in _visible_files(repo) if f != "dvc.lock" and not f.startswith(f"{WORKSPACES_DIR}/")]
        for rel in sorted(previous - set(copied)):
            (ws / rel).unlink(missing_ok=True)
        # The set's files, merged onto their bases, go straight to configs/<stage>.yaml (its run-time file to
        # configs/runtime.yaml): a file a stage of another subject may be reading right now is written only when its
        # content changes, never first with the committed config.
        sources: dict[str, Path | bytes] = {rel: repo / rel for rel in copied}
        sources |= {f"configs/{s}.yaml": _merged_config(src) for s, src in files.items()}
        if (repo / "configs" / config_set / "runtime.yaml").is_file():
            sources["configs/runtime.yaml"] = repo / "configs" / config_set / "runtime.yaml"
        for rel, src in sources.items():
            dst = ws / rel
            data = src if isinstance(src, bytes) else src.read_bytes()
            if not dst.is_file() or dst.read_bytes() != data:
                dst.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(src, bytes):
                    dst.write_bytes(src)
                else:
                    shutil.copy2(src, dst)
        kept = [s for s in STAGE_ORDER if s not in files and (repo / "configs" / f"{s}.yaml").is_file()]
        if kept:
            log.info("config set %s has no file for %s: they run with configs/<stage>.yaml", config_set, kept)
        record_path.write_text(json.dumps(copied))
        if (repo / "weights").is_dir():
            (ws / "weights").mkdir(exist_ok=True)
            for entry in (repo / "weights").iterdir():
                link = ws / "weights" / entry.name
                if not link.is_symlink() and not link.exists():
                    link.symlink_to(entry)
        if not (ws / ".git").exists():
            _git(ws, "init", "-q")
        # The repository's cache: outputs and registered videos are stored once, and checkouts link from it.
        _dvc_ok(ws, ["cache", "dir", "--local", str(repo / ".dvc" / "cache")], lock=False)
        _commit_sync(ws, [*copied, *sorted(previous - set(copied))], f"fourd workspace {config_set}", repo)
        dvc_files = (
            [str(p.relative_to(ws)) for p in sorted((ws / "data").rglob("*.dvc"))] if (ws / "data").is_dir() else []
        )
        if dvc_files:
            _dvc_ok(ws, ["checkout", *dvc_files], lock=False)
    return ws


def _commit_sync(ws: Path, paths: Sequence[str], message: str, repo: Path) -> None:
    """Commit what the sync copied or removed, plus DVC's own files (dvc.lock, the outputs' .gitignore).

    Not `git add -A`: a stage of another subject may be writing its output right now (untracked until its
    `dvc commit` adds it to a .gitignore), and git must never track an output DVC is about to own.
    """
    tracked = set(_git(ws, "ls-files", "-z").split("\0"))
    ignores = _git(ws, "ls-files", "-z", "--cached", "--others", "--exclude-standard", ":(glob)**/.gitignore")
    dvc_files = ["dvc.lock", *filter(None, ignores.split("\0"))]
    wanted = [p for p in dict.fromkeys([*paths, *dvc_files]) if p in tracked or (ws / p).is_file()]
    ignored = subprocess.run(  # untracked paths the workspace's .gitignore files exclude (`git add` refuses them)
        ["git", "check-ignore", "-z", "--stdin"], cwd=ws, input="\0".join(wanted).encode(), capture_output=True
    )
    if ignored.returncode not in (0, 1):
        raise WorkspaceError(f"git check-ignore in {ws}: {ignored.stderr.decode(errors='replace').strip()}")
    skip = set(ignored.stdout.decode().split("\0"))
    wanted = [p for p in wanted if p not in skip]
    proc = subprocess.run(
        ["git", "add", "-A", "--pathspec-from-file=-", "--pathspec-file-nul"],
        cwd=ws,
        input="\0".join(wanted).encode(),
        capture_output=True,
    )
    if proc.returncode != 0:
        raise WorkspaceError(f"git add in {ws}: {proc.stderr.decode(errors='replace').strip()}")
    if _git(ws, "diff", "--cached", "--name-only").strip():
        _git(ws, "commit", "-q", "--no-verify", "-m", f"{message} from {source_revision(repo)}")


def _params(workspace: Path) -> dict:
    return yaml.safe_load((workspace / "params.yaml").read_text()) or {}


def _dvc_stages(workspace: Path) -> dict:
    return yaml.safe_load((workspace / "dvc.yaml").read_text())["stages"]


def _render(template: object, key: str, item: object, params: Mapping[str, object]) -> object:
    """Interpolate `${key}`, `${item}`, `${item.x}` and `${a.b}` as DVC does for the subset dvc.yaml uses."""
    if isinstance(template, list):
        return [_render(t, key, item, params) for t in template]
    if isinstance(template, dict):
        return {_render(k, key, item, params): _render(v, key, item, params) for k, v in template.items()}
    if not isinstance(template, str):
        return template

    def lookup(m: re.Match[str]) -> str:
        head, *rest = m.group(1).split(".")
        value: object = {"key": key, "item": item}.get(head, params.get(head))
        for part in rest:
            value = value[part] if isinstance(value, Mapping) else None
        if value is None:
            raise WorkspaceError(f"dvc.yaml: cannot resolve ${{{m.group(1)}}} for {key}")
        return str(value)

    return re.sub(r"\$\{([\w.]+)\}", lookup, template)


def stage_instances(workspace: Path, subject: str, stages: Sequence[str] | None = None) -> list[StageInstance]:
    """The DVC stage instances of `subject`, in `STAGE_ORDER`: those whose `foreach` collection holds it.

    So `render` appears only for subjects in `assets:`, `eval` only for subjects with a ground truth, and a
    stage added to dvc.yaml (distill) joins once it is in `STAGE_ORDER`.
    """
    params, dvc_stages = _params(workspace), _dvc_stages(workspace)
    unknown = set(stages or ()) - set(STAGE_ORDER)
    if unknown:
        raise WorkspaceError(f"unknown stages {sorted(unknown)}; the pipeline has {list(STAGE_ORDER)}")
    out = []
    for stage in STAGE_ORDER:
        if stages is not None and stage not in stages or stage not in dvc_stages:
            continue
        spec = dvc_stages[stage]
        m = re.fullmatch(r"\$\{(\w+)\}", str(spec.get("foreach", "")))
        collection = params.get(m.group(1)) if m else None
        if not isinstance(collection, Mapping) or subject not in collection:
            continue
        do = _render(spec["do"], subject, collection[subject], params)
        outs = tuple(str(next(iter(o))) if isinstance(o, dict) else str(o) for o in do.get("outs", []))
        out.append(StageInstance(stage, subject, " ".join(do["cmd"].split()), tuple(map(str, do["deps"])), outs))
    return out


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
                    "another subject name (nothing was changed)"
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
