"""Config sets and their DVC pipelines, and the stage instances the flow brings up to date.

`dvc.yaml` is the production pipeline: `configs/<stage>.yaml`, `weights/fourdm`, outputs under `data/<stage>/`.
A config set (`tiny`, `demo`, `demo-gpu`) is the same DAG with the set's stage configs (`configs/<set>/<stage>.yaml`
where the set has one, else the production file), its weights, and its outputs under `data/<set>/` and
`reports/<set>/`: the pipeline file `pipelines/<set>/dvc.yaml`, generated from `dvc.yaml` by

    python -m flows.pipelines            # rewrite pipelines/<set>/dvc.yaml from dvc.yaml
    python -m flows.pipelines --check    # exit 1 when one is stale (tests/flows/test_pipelines.py runs this)

Every set runs in the repository itself (one DVC cache, one MLflow store, the project's own git commit), with its
own `pipelines/<set>/dvc.lock`; `dvc repro pipelines/demo/dvc.yaml` runs a set by hand. The render stage is not part
of a set: it turns 3D assets into inputs, which every set shares (`dvc.yaml`'s `render@<asset>`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from flows import STAGE_ORDER

__all__ = [
    "CONFIG_SETS",
    "demo_model_subjects",
    "DEFAULT_CONFIG_SET",
    "ConfigSet",
    "StageInstance",
    "pipeline_file",
    "render_set_pipeline",
    "stage_instances",
]

DEFAULT_CONFIG_SET = "default"
"""The production configs `configs/<stage>.yaml`, run by the root `dvc.yaml`."""
ROOT_PIPELINE = "dvc.yaml"
SHARED_STAGES = ("render",)
"""Stages only the root pipeline has: their outputs are inputs of every set."""


@dataclass(frozen=True)
class ConfigSet:
    """What a config set changes besides its stage configs."""

    about: str
    """One line: what the set is for."""
    weights: Mapping[str, str] = field(default_factory=dict)
    """Weights folders it uses instead of the production ones (`weights/fourdm` → `weights/demo/fourdm`)."""
    unused_deps: tuple[str, ...] = ()
    """Production dependencies its configs never read (the demo's anchor loss has no LPIPS term)."""


_DEMO_WEIGHTS = {"weights/fourdm": "weights/demo/fourdm"}
CONFIG_SETS: dict[str, ConfigSet] = {
    "tiny": ConfigSet("tiny models at 32 px for tests and quick checks (a tiny 4DM in weights/fourdm)"),
    "demo": ConfigSet(
        "the small 4DM shipped in weights/demo on a CPU (make demo; no downloads)",
        weights=_DEMO_WEIGHTS,
        unused_deps=("weights/eval/lpips",),
    ),
    "demo-gpu": ConfigSet(
        "the demo model on a GPU with the production hash grids",
        weights=_DEMO_WEIGHTS,
        unused_deps=("weights/eval/lpips",),
    ),
    "fast": ConfigSet("the fast recipe with the official weights: 8 mvgen views, reconstruction then SDS (minutes)"),
}
"""Every config set besides `default`; each has a folder `configs/<set>/` and a pipeline `pipelines/<set>/dvc.yaml`."""


class PipelineError(RuntimeError):
    """An unknown config set, stage or subject; the message says what exists."""


def pipeline_file(config_set: str) -> str:
    """The pipeline of a config set, relative to the repository: `dvc.yaml` or `pipelines/<set>/dvc.yaml`."""
    if config_set == DEFAULT_CONFIG_SET:
        return ROOT_PIPELINE
    if config_set not in CONFIG_SETS:
        raise PipelineError(f"config set {config_set!r}: expected one of {[DEFAULT_CONFIG_SET, *CONFIG_SETS]}")
    return f"pipelines/{config_set}/dvc.yaml"


def demo_model_subjects(repo: Path) -> list[str]:
    """The captions of the subjects the shipped demo model was trained on (weights/demo/training/summary.json)."""
    import json

    summary = Path(repo) / "weights" / "demo" / "training" / "summary.json"
    try:
        return list(json.loads(summary.read_text())["data"]["subjects"])
    except (OSError, KeyError, ValueError):
        return ["unknown: weights/demo/training/summary.json is missing"]


def render_set_pipeline(repo: Path, config_set: str) -> str:
    """The text of `pipelines/<set>/dvc.yaml`: the root pipeline's stages rewritten for the set (see module doc)."""
    spec = CONFIG_SETS[config_set]
    stages = yaml.safe_load((Path(repo) / ROOT_PIPELINE).read_text())["stages"]

    def own(name: str) -> bool:
        return (Path(repo) / "configs" / config_set / name).is_file()

    def rewrite(token: str, stage: str) -> str:
        if token == f"configs/{stage}.yaml" and own(f"{stage}.yaml"):  # the set's overlay (it names its base)
            return f"configs/{config_set}/{stage}.yaml"
        if token == "configs/runtime.yaml" and own("runtime.yaml"):
            return f"configs/{config_set}/runtime.yaml"
        if token in spec.weights:
            return spec.weights[token]
        if token.startswith("data/") and not token.startswith("data/raw/"):  # data/raw: registered videos, shared
            return f"data/{config_set}/{token.removeprefix('data/')}"
        if token.startswith("reports/eval/"):
            return f"reports/{config_set}/{token.removeprefix('reports/eval/')}"
        return token

    out: dict[str, dict] = {}
    for name, stage in stages.items():
        if name in SHARED_STAGES:
            continue
        do = stage["do"]
        new: dict[str, object] = {"wdir": "../.."}  # every command runs from the repository root, as dvc.yaml's
        new["cmd"] = " ".join(rewrite(t, name) for t in do["cmd"].split())
        new["deps"] = [rewrite(d, name) for d in do["deps"] if d not in spec.unused_deps]
        # The base and the set's overlay are both the stage's params: a change to either reruns it.
        params = [next(iter(p)) for p in do.get("params", [])]
        params += [rewrite(p, name) for p in params if rewrite(p, name) != p]
        new["params"] = [{p: None} for p in params]
        new["outs"] = [rewrite(o, name) for o in do["outs"]]
        if "metrics" in do:
            new["metrics"] = [{rewrite(k, name): v for k, v in m.items()} for m in do["metrics"]]
        out[name] = {"foreach": stage["foreach"], "do": new}
    header = (
        f"# Config set {config_set}: {spec.about}.\n"
        "# Generated from dvc.yaml by `python -m flows.pipelines` (do not edit): the same stages with the set's\n"
        f"# configs (configs/{config_set}/), weights and outputs (data/{config_set}/, reports/{config_set}/), run from"
        " the repository root.\n"
    )
    body = yaml.safe_dump({"vars": ["../../params.yaml"], "stages": out}, sort_keys=False, width=100)
    return header + body


@dataclass(frozen=True)
class StageInstance:
    """One DVC stage instance, e.g. `mvgen@fox` of `pipelines/tiny/dvc.yaml`, as DVC resolved it."""

    stage: str
    subject: str
    cmd: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    pipeline: str = ROOT_PIPELINE
    """The dvc.yaml it belongs to, relative to the repository."""

    @property
    def name(self) -> str:
        return f"{self.stage}@{self.subject}"

    @property
    def target(self) -> str:
        """What `dvc status` / `dvc commit` take: `<pipeline>:<stage>@<subject>`."""
        return f"{self.pipeline}:{self.name}"


def stage_instances(
    repo: Path, subject: str, stages: Sequence[str] | None = None, config_set: str = DEFAULT_CONFIG_SET
) -> list[StageInstance]:
    """The stage instances of `subject` in `STAGE_ORDER`, resolved by DVC: those whose `foreach` holds it.

    So `render` (always the root pipeline's) appears only for subjects in `assets:`, `eval` only for subjects with
    a ground truth in `evaluate:`.
    """
    from dvc.repo import Repo
    from dvc.stage.exceptions import StageNotFound

    unknown = set(stages or ()) - set(STAGE_ORDER)
    if unknown:
        raise PipelineError(f"unknown stages {sorted(unknown)}; the pipeline has {list(STAGE_ORDER)}")
    own = pipeline_file(config_set)
    out = []
    repo = Path(repo).resolve()
    with Repo(str(repo)) as dvc_repo:
        for stage in STAGE_ORDER:
            if stages is not None and stage not in stages:
                continue
            pipeline = ROOT_PIPELINE if stage in SHARED_STAGES else own
            try:
                (resolved,) = dvc_repo.stage.collect(f"{repo / pipeline}:{stage}@{subject}")  # paths: from the cwd
            except StageNotFound:  # not in this stage's foreach collection (or no such stage)
                continue
            out.append(
                StageInstance(
                    stage,
                    subject,
                    " ".join(resolved.cmd.split()),
                    tuple(d.def_path for d in resolved.deps),
                    tuple(o.def_path for o in resolved.outs),
                    pipeline,
                )
            )
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.pipelines [--check]`: write (or check) every `pipelines/<set>/dvc.yaml`."""
    p = argparse.ArgumentParser(prog="python -m flows.pipelines", description=main.__doc__)
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 naming each stale pipeline file")
    p.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1], help="the fourd checkout")
    a = p.parse_args(argv)
    stale = []
    for name in CONFIG_SETS:
        path = a.repo / pipeline_file(name)
        text = render_set_pipeline(a.repo, name)
        if path.is_file() and path.read_text() == text:
            continue
        stale.append(str(path.relative_to(a.repo)))
        if not a.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if a.check and stale:
        print(f"stale: {stale}; run python -m flows.pipelines", file=sys.stderr)
        return 1
    print(("stale: " if a.check else "wrote: ") + (", ".join(stale) or "nothing") if stale else "up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
