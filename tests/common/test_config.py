from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from stages.common.config import (
    config_layers,
    config_sha256,
    dump_config,
    flatten_config,
    load_config,
    load_runtime,
)
from stages.common.config import main as config_main
from stages.common.errors import StageError
from stages.distill.config import DistillConfig, DistillRuntime
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


def write_base_and_overlay(tmp_path: Path, overlay: dict) -> Path:
    """configs/preprocess.yaml (every key) and configs/set/preprocess.yaml (`base:` plus `overlay`)."""
    (tmp_path / "set").mkdir()
    dump_config(PreprocessConfig(size_px=128, matting={"grabcut_iterations": 3}), tmp_path / "preprocess.yaml")
    return write_yaml(tmp_path / "set" / "preprocess.yaml", {"base": "../preprocess.yaml", **overlay})


def test_overlay_is_merged_onto_its_base_key_by_key(tmp_path):
    path = write_base_and_overlay(tmp_path, {"num_frames": 4, "matting": {"work_size_px": 96}})
    cfg = load_config(PreprocessConfig, path)
    # The overlay's values; the base's for everything else, nested mappings merged key by key.
    assert cfg.num_frames == 4 and cfg.matting.work_size_px == 96
    assert cfg.size_px == 128 and cfg.matting.grabcut_iterations == 3
    assert cfg == PreprocessConfig(size_px=128, num_frames=4, matting={"grabcut_iterations": 3, "work_size_px": 96})
    assert [p.name for p in config_layers(path)] == ["preprocess.yaml", "preprocess.yaml"]
    assert config_layers(path)[0] == tmp_path / "preprocess.yaml"


def test_overlay_replaces_lists_and_is_validated_after_merging(tmp_path):
    (tmp_path / "set").mkdir()
    dump_config(DistillConfig(), tmp_path / "distill.yaml")
    write_yaml(tmp_path / "set" / "distill.yaml", {"base": "../distill.yaml", "sds_resolution": {"sizes_px": [16]}})
    with pytest.raises(StageError, match="sds_resolution"):  # 3 milestones' worth of sizes are now 1: invalid
        load_config(DistillConfig, tmp_path / "set" / "distill.yaml")
    write_yaml(
        tmp_path / "set" / "distill.yaml",
        {"base": "../distill.yaml", "sds_resolution": {"milestones": [], "sizes_px": [16]}},
    )
    assert load_config(DistillConfig, tmp_path / "set" / "distill.yaml").sds_resolution.sizes_px == [16]


def test_overlay_key_absent_from_its_base_names_the_key(tmp_path):
    path = write_base_and_overlay(tmp_path, {"matting": {"work_size": 96}})
    with pytest.raises(StageError, match="'matting.work_size' is not in its base"):
        load_config(PreprocessConfig, path)


def test_overlay_with_a_missing_or_cyclic_base_is_an_error(tmp_path):
    write_yaml(tmp_path / "a.yaml", {"base": "missing.yaml", "seed": 1})
    with pytest.raises(StageError, match="not found"):
        load_config(PreprocessConfig, tmp_path / "a.yaml")
    write_yaml(tmp_path / "a.yaml", {"base": "b.yaml", "seed": 1})
    write_yaml(tmp_path / "b.yaml", {"base": "a.yaml", "seed": 2})
    with pytest.raises(StageError, match="cycle"):
        load_config(PreprocessConfig, tmp_path / "a.yaml")


def test_config_hash_ignores_the_runtime_section():
    base = DistillConfig()
    chunked = base.model_copy(update={"runtime": DistillRuntime(grad_chunk_samples=1 << 20, march_chunk=1 << 16)})
    assert chunked.runtime != base.runtime
    assert config_sha256(chunked) == config_sha256(base)
    assert config_sha256(base.model_copy(update={"num_steps": 3})) != config_sha256(base)


def test_runtime_file_section_validates_into_the_runtime_class(tmp_path):
    path = write_yaml(tmp_path / "runtime.yaml", {"distill": {"grad_chunk_samples": 64}, "mvgen": {}})
    assert load_runtime(DistillConfig, path, "distill") == DistillRuntime(grad_chunk_samples=64)
    assert load_runtime(DistillConfig, path, "absent") == DistillRuntime()
    write_yaml(path, {"distill": {"grad_chunk": 64}})
    with pytest.raises(StageError, match="unknown key 'grad_chunk'"):
        load_runtime(DistillConfig, path, "distill")
    with pytest.raises(StageError, match="no 'runtime' section"):
        load_runtime(PreprocessConfig, path, "preprocess")


def test_show_prints_the_merged_config_and_its_changes(tmp_path, capsys):
    path = write_base_and_overlay(tmp_path, {"num_frames": 4, "matting": {"work_size_px": 96}})
    assert config_main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    merged = yaml.safe_load(out)  # the comment lines are YAML comments: the output is the merged config
    assert merged == PreprocessConfig(
        size_px=128, num_frames=4, matting={"grabcut_iterations": 3, "work_size_px": 96}
    ).model_dump(mode="json")
    changes = [line for line in out.splitlines() if line.startswith("#   ")]
    assert changes == ["#   num_frames: 8 -> 4", "#   matting.work_size_px: 384 -> 96"]
    assert "# changes against" in out and "preprocess.yaml: 2" in out


def test_show_fails_with_one_line_on_a_bad_overlay(tmp_path, capsys):
    path = write_base_and_overlay(tmp_path, {"num_frame": 4})
    assert config_main(["show", str(path)]) == 1
    assert capsys.readouterr().err.startswith("error: ")


@pytest.mark.parametrize(
    ("name", "bad_key"),
    [("demo/train_fourdm.yaml", "schedule.steps"), ("demo-gpu/distill_gaussians.yaml", "gaussians.num_gaussians")],
)
def test_show_validates_training_and_recipe_overlays(tmp_path, capsys, name, bad_key):
    """`show` validates a 4DM training overlay and a stage's recipe overlay (distill_gaussians.yaml) against their
    config classes: a value the class refuses (a count of -1) is one error line, not a printed config."""
    import shutil

    repo_configs = Path(__file__).resolve().parents[2] / "configs"
    for src in repo_configs.rglob("*.yaml"):
        dst = tmp_path / src.relative_to(repo_configs)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    overlay = tmp_path / name
    assert config_main(["show", str(overlay)]) == 0
    capsys.readouterr()
    section, key = bad_key.split(".")
    data = yaml.safe_load(overlay.read_text())
    data.setdefault(section, {})[key] = -1
    overlay.write_text(yaml.safe_dump(data))
    assert config_main(["show", str(overlay)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and key in err
