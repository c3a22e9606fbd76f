"""No product module (stages/, flows/) over 400 lines: past that a module holds more than one concern, and the
next reader has to find the one they need inside it (house style: one concept per file)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("stages", "flows")
MAX_LINES = 400


def too_long(root: Path, packages: tuple[str, ...], max_lines: int) -> dict[str, int]:
    """{path relative to root: line count} of every .py file under `packages` longer than `max_lines`."""
    counts = {
        path.relative_to(root).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
        for package in packages
        for path in (root / package).rglob("*.py")
    }
    return {path: n for path, n in sorted(counts.items()) if n > max_lines}


def test_too_long_counts_lines(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "ok.py").write_text("x = 1\n" * 400)
    (tmp_path / "pkg" / "sub" / "long.py").write_text("x = 1\n" * 401)
    (tmp_path / "pkg" / "notes.md").write_text("x\n" * 1000)
    assert too_long(tmp_path, ("pkg",), 400) == {"pkg/sub/long.py": 401}


def test_no_product_module_is_over_400_lines():
    assert too_long(REPO, PACKAGES, MAX_LINES) == {}
