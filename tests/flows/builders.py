"""Builders for the flow tests: a git copy of the repository, and tiny 4DM weights at configs/tiny's 32 px."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def copy_repository(dst: Path) -> Path:
    """Copy what git sees (tracked + untracked, not ignored) into `dst`, as a fresh clone would have it, and commit."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, files.split("\0")):
        if (REPO / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dst / rel)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dst, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=dst, check=True)
    return dst


def write_tiny_fourdm(directory: Path, scratch: Path) -> Path:
    """A tiny random FourDM folder (`save_pretrained`) that samples 32-px views, the size configs/tiny gives."""
    from stages.mvgen.pipeline_fourdm import FourDMPipeline
    from tests.mvgen.tiny import randomize_zero_layers, tiny_pipeline, tiny_unet

    base = tiny_pipeline(scratch)
    unet = tiny_unet(0, sample_size=16)  # the tiny VAE halves once: 16² latents = 32² frames
    randomize_zero_layers(unet, 1)
    parts = (base.vae, base.scheduler, base.text_encoder, base.tokenizer, base.image_encoder, base.feature_extractor)
    FourDMPipeline(unet, *parts).save_pretrained(directory)
    return directory
