"""Typed, strict, frozen stage configs and their YAML storage (house style §8.5).

A config holds hyperparameters only: no paths, no architecture (that travels with the weights). Unknown keys
and wrong types are errors that name the key; YAML is read with `yaml.safe_load` and written with
`yaml.safe_dump`, so no Python tags, interpolation or resolvers can sneak in.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from stages.common.errors import StageError

__all__ = ["StageConfig", "SubConfig", "load_config", "dump_config", "config_sha256", "flatten_config"]

C = TypeVar("C", bound=BaseModel)

_STRICT = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True, strict=True)


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


def load_config(cls: type[C], path: Path) -> C:
    """Read a stage config from YAML.

    Raises:
        StageError: the file is missing, is not YAML, or does not validate against `cls`.
    """
    path = Path(path)
    if not path.is_file():
        raise StageError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise StageError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    return validate_config(cls, data, source=str(path))


def dump_config(config: BaseModel, path: Path) -> None:
    """Write a config as plain YAML (keys in declaration order) that `load_config` reads back equal."""
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    Path(path).write_text(text, encoding="utf-8")


def config_sha256(config: BaseModel) -> str:
    """Content hash of a config (canonical JSON), recorded in manifests to tie an artifact to its settings."""
    blob = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
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
