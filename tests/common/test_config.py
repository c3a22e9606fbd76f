from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from stages.common.config import config_sha256, dump_config, flatten_config, load_config
from stages.common.errors import StageError
from stages.preprocess import PreprocessConfig


def write_yaml(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_config_unknown_key_names_the_key(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"sise_px": 64})
    with pytest.raises(StageError, match=r"unknown key 'sise_px'"):
        load_config(PreprocessConfig, path)


def test_config_unknown_nested_key_names_its_path(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"matting": {"backnd": "border"}})
    with pytest.raises(StageError, match=r"unknown key 'matting.backnd'"):
        load_config(PreprocessConfig, path)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"size_px": "big"}, "size_px"),
        ({"size_px": 1.5}, "size_px"),
        ({"size_px": "64"}, "size_px"),  # strict: a string is not an int, even when it looks like one
        ({"use_input_alpha": "yes"}, "use_input_alpha"),
        ({"matting": {"backend": "magic"}}, "matting.backend"),
        ({"num_frames": 0}, "num_frames"),
        ({"margin_frac": 0.5}, "margin_frac"),
    ],
)
def test_config_wrong_type_or_value_names_the_key(tmp_path, data, key):
    path = write_yaml(tmp_path / "c.yaml", data)
    with pytest.raises(StageError, match=rf"'{key}'"):
        load_config(PreprocessConfig, path)


def test_config_int_is_accepted_for_float(tmp_path):
    cfg = load_config(PreprocessConfig, write_yaml(tmp_path / "c.yaml", {"matting": {"border_threshold": 20}}))
    assert cfg.matting.border_threshold == 20.0


def test_config_missing_or_broken_file(tmp_path):
    with pytest.raises(StageError, match="not found"):
        load_config(PreprocessConfig, tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_text("size_px: [1, 2\n")
    with pytest.raises(StageError, match="not valid YAML"):
        load_config(PreprocessConfig, tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(StageError, match="expected a mapping"):
        load_config(PreprocessConfig, tmp_path / "list.yaml")


def test_config_round_trips_through_yaml(tmp_path):
    cfg = PreprocessConfig.model_validate({"size_px": 64, "prompt": "a fox", "matting": {"grabcut_iterations": 1}})
    dump_config(cfg, tmp_path / "config.yaml")
    again = load_config(PreprocessConfig, tmp_path / "config.yaml")
    assert again == cfg
    assert config_sha256(again) == config_sha256(cfg)
    assert "!!python" not in (tmp_path / "config.yaml").read_text()


def test_config_hash_changes_with_any_value():
    assert config_sha256(PreprocessConfig()) != config_sha256(PreprocessConfig(seed=1))


def test_config_is_frozen():
    cfg = PreprocessConfig()
    with pytest.raises(ValidationError):
        cfg.size_px = 3  # type: ignore[misc]


def test_flatten_config_joins_nested_keys():
    flat = flatten_config(PreprocessConfig())
    assert flat["matting.backend"] == "border"
    assert flat["size_px"] == "256"
    assert flat["prompt"] == "null"
