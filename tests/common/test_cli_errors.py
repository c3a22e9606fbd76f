"""Everything a user can get wrong on a stage's command line ends in one `error:` line and exit status 1."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest

from stages.common.cli import cli_main
from stages.distill import DistillConfig
from stages.distill import run as distill
from stages.mvgen import MvgenConfig
from stages.mvgen import run as mvgen
from stages.preprocess import PreprocessConfig
from stages.preprocess import run as preprocess

REPO = Path(__file__).resolve().parents[2]


def one_error_line(capsys) -> str:
    """The one `error:` line of stderr (progress bars of the loaders may precede it; no traceback may)."""
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and err[-1] == errors[0] and not any("Traceback" in line for line in err), err
    return errors[0]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--sise-px", "3"], "Unrecognized options: --sise-px, 3 (did you mean --size-px?)"),
        (["--size-px", "abc"], "--size-px: invalid literal for int()"),
        (["--matting.backend", "nope"], "invalid choice 'nope' for argument '--matting.backend'"),
        (["--size-px"], "Missing value for argument '--size-px'"),
        (["--margin-frac", "nan"], "--margin-frac: Input should be a finite number (got nan)"),
    ],
)
def test_a_bad_flag_is_one_error_line_and_exit_1(tmp_path, capsys, flags, expected):
    argv = ["--config", str(REPO / "configs/tiny/preprocess.yaml"), "--input", "x", "--output", str(tmp_path / "o")]
    assert cli_main(preprocess, PreprocessConfig, [*argv, *flags]) == 1
    line = one_error_line(capsys)
    assert expected in line and "--help" in line
    assert not (tmp_path / "o").exists()


def test_a_nan_nested_flag_and_an_infinite_yaml_value_are_refused(tmp_path, capsys):
    args = ["--input", "x", "--preprocess", "y", "--weights", "w", "--lpips", "l", "--output", str(tmp_path / "o")]
    tiny = ["--config", str(REPO / "configs/tiny/distill.yaml")]
    assert cli_main(distill, DistillConfig, [*tiny, *args, "--field.blob-density", "nan"]) == 1
    assert "--field.blob-density: Input should be a finite number (got nan)" in one_error_line(capsys)
    config = tmp_path / "inf.yaml"
    config.write_text((REPO / "configs/distill.yaml").read_text().replace("grid_lr: 0.01", "grid_lr: .inf"))
    assert ".inf" in config.read_text()
    assert cli_main(distill, DistillConfig, ["--config", str(config), *args]) == 1
    assert "'optimizer.grid_lr': Input should be a finite number (got inf)" in one_error_line(capsys)


@pytest.fixture(scope="module")
def tiny_subject(tmp_path_factory) -> dict[str, Path]:
    from stages.common.config import load_config
    from tests.mvgen.tiny import IMAGE_PX, tiny_pipeline
    from tests.synthetic import disc_frames, write_video

    root = tmp_path_factory.mktemp("weights")
    tiny_pipeline(root).save_pretrained(root / "weights")
    write_video(root / "disc.mp4", disc_frames(12, 40, 30, radius=5)[0], fps=12)
    cfg = load_config(PreprocessConfig, REPO / "configs/tiny/preprocess.yaml").model_copy(update={"size_px": IMAGE_PX})
    preprocess(cfg, input_path=root / "disc.mp4", output_dir=root / "pre")
    return {"weights": root / "weights", "pre": root / "pre"}


@pytest.mark.parametrize("damage", ["truncated text_encoder", "truncated image_encoder", "pickled unet"])
def test_a_damaged_weight_file_is_one_error_line_naming_it(tiny_subject, tmp_path, capsys, damage):
    weights = shutil.copytree(tiny_subject["weights"], tmp_path / "weights")
    part = damage.split()[1]
    if damage.startswith("truncated"):
        path = weights / part / "model.safetensors"
        path.write_bytes(path.read_bytes()[:1000])
    else:
        for f in (weights / part).glob("*.safetensors"):
            f.unlink()
        (weights / part / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(print))
    argv = ["--config", str(REPO / "configs/tiny/mvgen.yaml"), "--input", str(tiny_subject["pre"])]
    rc = cli_main(mvgen, MvgenConfig, [*argv, "--weights", str(weights), "--output", str(tmp_path / "o")])
    assert rc == 1
    line = one_error_line(capsys)
    assert f"cannot load {part} from {weights / part}" in line, line
