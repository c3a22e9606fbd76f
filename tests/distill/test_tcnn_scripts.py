"""scripts/build_tcnn.sh's source patch and argument checks (CPU; the build itself needs nvcc, see
tests/distill/test_tcnn_backend.py for what the built backend must do)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "scripts" / "build_tcnn.sh"
ASSEMBLE = REPO / "scripts" / "assemble_tcnn.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

# The shape of `tcnn::bytes_to_string` in include/tiny-cuda-nn/common_host.h at the pinned commit (tabs as there),
# between unrelated neighbours that the patch must leave alone.
BEFORE = "inline bool neighbour_before() {\n\treturn true;\n}\n\n"
FUNCTION = (
    "inline std::string bytes_to_string(size_t bytes) {\n"
    '\tstd::array<std::string, 7> suffixes = {{ "B", "KB", "MB", "GB", "TB", "PB", "EB" }};\n\n'
    "\tdouble count = (double)bytes;\n"
    "\tuint32_t i = 0;\n"
    "\tfor (; i < suffixes.size() && count >= 1024; ++i) {\n"
    "\t\tcount /= 1024;\n"
    "\t}\n\n"
    "\tstd::ostringstream oss;\n"
    "\toss.precision(3);\n"
    '\toss << count << " " << suffixes[i];\n'
    "\treturn oss.str();\n"
    "}\n"
)
AFTER = "\ninline std::ostringstream& neighbour_after(std::ostringstream& oss) {\n\treturn oss;\n}\n"
PATCHED_LINE = '\treturn fmt::format("{:.3g} {}", count, suffixes[i]);\n'


def source_tree(root: Path, header: str) -> Path:
    (root / "bindings" / "torch").mkdir(parents=True)
    (root / "bindings" / "torch" / "setup.py").write_text("# stand-in\n")
    (root / "include" / "tiny-cuda-nn").mkdir(parents=True)
    (root / "include" / "tiny-cuda-nn" / "common_host.h").write_text(header)
    return root


def run(*args: str | Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", *map(str, args)], capture_output=True, text=True, env=env, timeout=60)


def test_patch_replaces_the_stream_formatting_once(tmp_path):
    src = source_tree(tmp_path / "tcnn", BEFORE + FUNCTION + AFTER)
    header = src / "include" / "tiny-cuda-nn" / "common_host.h"
    first = run(BUILD, "--patch-only", src)
    assert first.returncode == 0, first.stderr
    assert "patched" in first.stdout
    text = header.read_text()
    # Only the four stream lines changed: the neighbours (one also using ostringstream) are untouched.
    assert text.startswith(BEFORE) and text.endswith(AFTER)
    expected = FUNCTION.split("\tstd::ostringstream oss;\n")[0] + PATCHED_LINE + "}\n"
    assert text == BEFORE + expected + AFTER
    second = run(BUILD, "--patch-only", src)
    assert second.returncode == 0, second.stderr
    assert "already patched" in second.stdout
    assert header.read_text() == text


@pytest.mark.parametrize(
    "header",
    [
        BEFORE + FUNCTION.replace("oss.precision(3)", "oss.precision(4)") + AFTER,  # changed upstream
        BEFORE + AFTER,  # no bytes_to_string at all
    ],
    ids=["changed-body", "no-function"],
)
def test_patch_refuses_a_header_it_was_not_written_for(tmp_path, header):
    src = source_tree(tmp_path / "tcnn", header)
    proc = run(BUILD, "--patch-only", src)
    assert proc.returncode != 0
    assert "bytes_to_string" in proc.stderr
    assert (src / "include" / "tiny-cuda-nn" / "common_host.h").read_text() == header


def test_build_refuses_a_folder_that_is_not_a_tcnn_tree(tmp_path):
    proc = run(BUILD, tmp_path, tmp_path / "site")
    assert proc.returncode != 0 and "not a tiny-cuda-nn source tree" in proc.stderr


def test_build_without_nvcc_stops_with_a_clear_message_after_patching(tmp_path):
    src = source_tree(tmp_path / "tcnn", BEFORE + FUNCTION + AFTER)
    path = ":".join(p for p in ("/usr/bin", "/bin") if os.path.isdir(p))
    if shutil.which("nvcc", path=path) or not shutil.which("python3", path=path):
        pytest.skip("needs a PATH with python3 and without nvcc")
    proc = run(BUILD, src, tmp_path / "site", env={"PATH": path, "HOME": str(tmp_path)})
    assert proc.returncode != 0 and "nvcc not found" in proc.stderr
    assert PATCHED_LINE in (src / "include" / "tiny-cuda-nn" / "common_host.h").read_text()
    assert not (tmp_path / "site").exists()


def test_assemble_refuses_a_non_empty_destination(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    proc = run(ASSEMBLE, tmp_path)
    assert proc.returncode != 0 and "not empty" in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
