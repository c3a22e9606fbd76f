from __future__ import annotations

from pathlib import Path

import pytest

from stages.common.cli import cli_main
from stages.common.config import load_config
from stages.distill.config import DistillConfig, DistillRuntime
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


def test_cli_bad_override_type_is_one_line_error(tmp_path, capsys):
    rc = cli_main(run, PreprocessConfig, ["--input", "x", "--output", str(tmp_path), "--size-px", "big"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("error: --size-px: invalid literal for int()")


def test_cli_runtime_file_sets_the_runtime_section_and_flags_still_override(tmp_path):
    seen = {}

    def fake_run(config: DistillConfig, *, input_dir: Path, output_dir: Path):
        """Record what the CLI passes."""
        seen["config"] = config

    runtime = tmp_path / "runtime.yaml"
    runtime.write_text("distill:\n  grad_chunk_samples: 4096\n  march_chunk: 65536\npreprocess: {}\n")
    args = ["--config", str(REPO / "configs/tiny/distill.yaml"), "--input", "m", "--output", str(tmp_path)]
    assert cli_main(fake_run, DistillConfig, [*args, "--runtime", str(runtime), "--runtime.march-chunk", "8192"]) == 0
    base = load_config(DistillConfig, REPO / "configs/tiny/distill.yaml")
    assert seen["config"] == base.model_copy(
        update={"runtime": DistillRuntime(grad_chunk_samples=4096, march_chunk=8192)}
    )
    # Without --runtime: the defaults, whatever a config file says elsewhere.
    assert cli_main(fake_run, DistillConfig, args) == 0
    assert seen["config"].runtime == DistillRuntime()


def test_cli_bad_runtime_file_is_one_line_error(tmp_path, capsys):
    runtime = tmp_path / "runtime.yaml"
    runtime.write_text("distill:\n  grad_chunk: 1\n")
    args = ["--config", str(REPO / "configs/tiny/distill.yaml"), "--runtime", str(runtime)]

    def never_run(config: DistillConfig, *, output_dir: Path):
        """Must not be called."""
        raise AssertionError("ran with a bad runtime file")

    assert cli_main(never_run, DistillConfig, [*args, "--output", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: ")
