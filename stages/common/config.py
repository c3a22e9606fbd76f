"""Typed, strict, frozen stage configs and their YAML storage (house style §8.5).

A config holds hyperparameters only: no paths, no architecture (that travels with the weights). Unknown keys
and wrong types are errors that name the key; YAML is read with `yaml.safe_load` and written with
`yaml.safe_dump`, so no Python tags, interpolation or resolvers can sneak in.

Config sets are overlays: `configs/<stage>.yaml` spells out the paper's recipe, and a set's file
(`configs/demo/distill.yaml`) names its base with `base: ../distill.yaml` and holds only the keys it changes. The
base is read, the overlay deep-merged onto it (mappings merge key by key; lists and scalars are replaced), and the
result validated. `python -m stages.common.config show <file>` prints the merged config and what it changes.

Knobs that change only memory or speed (chunk sizes, offloading) are a stage config's `runtime` section: not part of
`config_sha256`, and read from a separate run-time file (`--runtime configs/runtime.yaml`, one section per stage)
that DVC does not track, so changing one never reruns a stage.

This module imports no model code: reading a config never imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from stages.common.errors import StageError

__all__ = [
    "config_layers",
    "StageConfig",
    "SubConfig",
    "load_config",
    "load_config_data",
    "load_runtime",
    "dump_config",
    "config_sha256",
    "config_changes",
    "flatten_config",
    "BASE_KEY",
    "RUNTIME_FIELD",
]

BASE_KEY = "base"
"""The key by which an overlay names its base file (a path relative to the overlay)."""
RUNTIME_FIELD = "runtime"
"""A stage config's section of memory/speed knobs: results do not depend on it (module docstring)."""

C = TypeVar("C", bound=BaseModel)

_STRICT = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True, strict=True, allow_inf_nan=False)
"""`allow_inf_nan=False`: a NaN or infinite value (`.inf` in YAML, `nan` on the command line) is an error naming the
key, never a run that trains NaN parameters."""


class SubConfig(BaseModel):
    """A nested component config (e.g. `PreprocessConfig.matting`): same strictness as a stage config."""

    model_config = _STRICT


class StageConfig(BaseModel):
    """Base of every `<Stage>Config`: unknown keys fail, instances are immutable, fields are documented.

    Each field carries an attribute docstring (the string literal right under it); it becomes the field's
    description and the CLI `--help` text.
    """

    model_config = _STRICT


def format_validation_error(err: ValidationError, *, source: str) -> str:
    """One line that names every offending key, e.g. `configs/x.yaml: unknown key 'sise_px'`."""
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown key '{key}'")
        elif e["type"] == "missing":
            parts.append(f"missing key '{key}'")
        else:
            parts.append(f"'{key}': {e['msg']} (got {e.get('input')!r})")
    return f"{source}: " + "; ".join(parts)


def validate_config(cls: type[C], data: Any, *, source: str) -> C:
    """Validate plain data (as from YAML or JSON) into `cls`, raising StageError with a one-line message."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise StageError(f"{source}: expected a mapping of config keys, got {type(data).__name__}")
    try:
        # JSON mode: YAML lists may fill tuple fields, but "5" is not an int and 1.5 is not an int.
        return cls.model_validate_json(json.dumps(data))
    except ValidationError as err:
        raise StageError(format_validation_error(err, source=source)) from None
    except (TypeError, ValueError) as err:  # a YAML value JSON cannot carry, e.g. a date
        raise StageError(f"{source}: {err}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise StageError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise StageError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise StageError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], overlay: dict[str, Any], *, source: Path, prefix: str = "") -> dict[str, Any]:
    """`base` with `overlay`'s values: mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in overlay.items():
        name = f"{prefix}{key}"
        if key not in base:
            raise StageError(f"{source}: key '{name}' is not in its base config (misspelt, or not a config key)")
        if isinstance(value, dict) and isinstance(base[key], dict):
            out[key] = _merge(base[key], value, source=source, prefix=f"{name}.")
        else:
            out[key] = value
    return out


def config_layers(path: Path) -> list[Path]:
    """The files a config is made of, base first: `[configs/distill.yaml, configs/demo/distill.yaml]`."""
    layers = [Path(path)]
    while True:
        base = _read_yaml(layers[0]).get(BASE_KEY)
        if base is None:
            return layers
        if not isinstance(base, str):
            raise StageError(f"{layers[0]}: '{BASE_KEY}' must be a path relative to the file, got {base!r}")
        parent = Path(os.path.normpath(layers[0].parent / base))
        if parent.resolve() in {p.resolve() for p in layers}:
            raise StageError(f"{layers[0]}: '{BASE_KEY}: {base}' makes a cycle")
        layers.insert(0, parent)


def load_config_data(path: Path) -> dict[str, Any]:
    """A config file as plain data, its overlays merged onto their bases (not validated)."""
    layers = config_layers(Path(path))
    data = _read_yaml(layers[0])
    for layer in layers[1:]:
        overlay = {k: v for k, v in _read_yaml(layer).items() if k != BASE_KEY}
        data = _merge(data, overlay, source=layer)
    return data


def load_config(cls: type[C], path: Path) -> C:
    """Read a stage config from YAML, merging an overlay onto its base (module docstring).

    Raises:
        StageError: a file is missing or is not YAML, an overlay key is not in its base, or the merged config does
            not validate against `cls`.
    """
    return validate_config(cls, load_config_data(Path(path)), source=str(path))


def load_runtime(cls: type[C], path: Path, stage: str) -> BaseModel:
    """The `runtime` section of `cls` from a run-time file's `<stage>:` section (absent: the defaults).

    Raises:
        StageError: `cls` has no runtime section, the file is missing or invalid, or a key is unknown.
    """
    field = cls.model_fields.get(RUNTIME_FIELD)
    runtime_cls = field.annotation if field is not None else None
    if not (isinstance(runtime_cls, type) and issubclass(runtime_cls, BaseModel)):
        raise StageError(f"{cls.__name__} has no '{RUNTIME_FIELD}' section")
    data = _read_yaml(Path(path)).get(stage) or {}
    return validate_config(runtime_cls, data, source=f"{path} ({stage})")


def config_changes(base: Any, merged: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """`[(dotted key, base value, merged value)]` for every leaf where `merged` differs from `base`."""
    if isinstance(base, dict) and isinstance(merged, dict):
        out = []
        for key in merged:
            out += config_changes(base.get(key), merged[key], f"{prefix}{key}.")
        return out
    return [] if base == merged else [(prefix.rstrip("."), base, merged)]


def dump_config(config: BaseModel, path: Path) -> None:
    """Write a config as plain YAML (keys in declaration order) that `load_config` reads back equal."""
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    Path(path).write_text(text, encoding="utf-8")


def config_sha256(config: BaseModel) -> str:
    """Content hash of a config (canonical JSON), recorded in manifests to tie an artifact to its settings; the
    `runtime` section is left out (results do not depend on it)."""
    exclude = {RUNTIME_FIELD} if RUNTIME_FIELD in type(config).model_fields else None
    blob = json.dumps(config.model_dump(mode="json", exclude=exclude), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def flatten_config(config: BaseModel) -> dict[str, str]:
    """`{"matting.backend": "border", ...}`: nested fields joined by dots, values as strings (MLflow params)."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = json.dumps(value) if isinstance(value, (list, type(None), bool)) else str(value)

    walk("", config.model_dump(mode="json"))
    return out


_CONFIG_MODULES = {"train_fourdm": "stages.mvgen.training.config"}
"""Config file names (or their prefix before `_`) whose config class lives outside `stages.<name>.config`."""


def _config_class(path: Path) -> type[StageConfig] | None:
    """The config class of `configs/[<set>/]<name>.yaml`: the StageConfig of `stages.<stage>.config`, where <stage>
    is the file's stem up to its first `_` (no stage name has one; `distill_gaussians.yaml` is a distill recipe), and
    4DM training's TrainConfig for `train_fourdm*.yaml`."""
    import importlib

    stem = Path(path).stem
    name = next((k for k in _CONFIG_MODULES if stem == k or stem.startswith(k + "_")), None)
    try:
        module = importlib.import_module(
            _CONFIG_MODULES[name] if name is not None else f"stages.{stem.split('_')[0]}.config"
        )
    except ModuleNotFoundError:
        return None
    found = [
        v
        for v in vars(module).values()
        if isinstance(v, type) and issubclass(v, StageConfig) and v.__module__ == module.__name__
    ]
    return found[0] if len(found) == 1 else None


def show(path: Path) -> str:
    """The merged config of `path` as YAML, validated when its stage config class is known, then its changes
    against its base file (`python -m stages.common.config show <file>`)."""
    layers = config_layers(Path(path))
    merged = load_config_data(Path(path))
    cls = _config_class(Path(path))
    if cls is not None:
        merged = validate_config(cls, merged, source=str(path)).model_dump(mode="json")
        if RUNTIME_FIELD in merged:
            merged.pop(RUNTIME_FIELD)
    lines = [f"# {path}" + (f" merged onto {', '.join(map(str, layers[:-1]))}" if len(layers) > 1 else "")]
    lines.append(yaml.safe_dump(merged, sort_keys=False, allow_unicode=True).rstrip())
    if len(layers) > 1:
        base = load_config_data(layers[-2])
        if cls is not None:
            base = validate_config(cls, base, source=str(layers[-2])).model_dump(mode="json")
        changes = config_changes(base, merged)
        lines.append(f"# changes against {layers[-2]}: {len(changes)}")
        lines += [f"#   {key}: {json.dumps(old)} -> {json.dumps(new)}" for key, old, new in changes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m stages.common.config", description="Print a config file merged onto its base, and its changes."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    show_cmd = sub.add_parser("show", help="the merged config and its changes against the base")
    show_cmd.add_argument("path", type=Path, nargs="+")
    args = parser.parse_args(argv)
    try:
        print("\n\n".join(show(p) for p in args.path))
    except StageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
