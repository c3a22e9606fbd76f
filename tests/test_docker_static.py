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
