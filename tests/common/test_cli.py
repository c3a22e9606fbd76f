from __future__ import annotations

from pathlib import Path

import pytest

from stages.common.cli import cli_main
from stages.common.config import load_config
from stages.preprocess import PreprocessConfig, run
from stages.preprocess.config import MattingConfig

REPO = Path(__file__).resolve().parents[2]


def test_help_lists_every_field_with_its_doc(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(run, PreprocessConfig, ["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--config", "--input", "--output", "--subject", "--weights"):
        assert flag in text
    for cls, prefix in ((PreprocessConfig, ""), (MattingConfig, "matting.")):
        for name, field in cls.model_fields.items():
            if name == "matting":
                continue
            assert f"--{prefix}{name.replace('_', '-')}" in text, name
            first_words = " ".join(field.description.split()[:3])
            assert first_words in text, (name, first_words)


def test_cli_overrides_beat_the_yaml(tmp_path, monkeypatch):
    seen = {}

    def fake_run(config: PreprocessConfig, *, input_path: Path, output_dir: Path, subject: str | None = None):
        """Record what the CLI passes."""
        seen.update(config=config, input_path=input_path, output_dir=output_dir, subject=subject)

    rc = cli_main(
        fake_run,
        PreprocessConfig,
        [
            "--config",
            str(REPO / "configs/preprocess.yaml"),
            "--input",
            "v.mp4",
            "--output",
            str(tmp_path),
            "--size-px",
            "64",
            "--matting.backend",
            "rembg",
        ],
    )
    assert rc == 0
    base = load_config(PreprocessConfig, REPO / "configs/preprocess.yaml")
    assert seen["config"] == base.model_copy(
        update={"size_px": 64, "matting": base.matting.model_copy(update={"backend": "rembg"})}
    )
    assert seen["input_path"] == Path("v.mp4") and seen["subject"] is None


def test_cli_missing_required_path_is_one_line_error(tmp_path, capsys):
    rc = cli_main(run, PreprocessConfig, ["--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err[-1] == "error: missing required argument --input"


def test_cli_bad_override_type_exits_nonzero(tmp_path):
    with pytest.raises(SystemExit) as exc:
        cli_main(run, PreprocessConfig, ["--input", "x", "--output", str(tmp_path), "--size-px", "big"])
    assert exc.value.code != 0
