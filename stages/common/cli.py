"""`cli_main`: the one CLI every stage shares (house style §8.3).

    python -m stages.<stage> --config configs/<stage>.yaml [--runtime configs/runtime.yaml] --input … --output …
        [--<field> value …]

The path flags come from the keyword-only parameters of the stage's `run` (`input_path` → `--input`,
`output_dir` → `--output`, `weights_dir` → `--weights`, `subject` → `--subject`); every other flag is a
config field (tyro, with the YAML config as the default). `--runtime` (stages whose config has a `runtime`
section) reads the memory/speed knobs from a run-time file's `<stage>:` section (stages.common.config). Bad input
exits 1 with one `error:` line.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import re
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import tyro
from pydantic import ValidationError

from stages.common.cli_errors import flag_errors_as_stage_error
from stages.common.config import RUNTIME_FIELD, StageConfig, format_validation_error, load_config, load_runtime
from stages.common.errors import StageError
from stages.common.logs import setup_logging

__all__ = ["cli_main"]

log = logging.getLogger(__name__)


def _flag(param: str) -> str:
    return "--" + re.sub(r"_(dir|path)$", "", param).replace("_", "-")


def _arg_docs(fn: Callable[..., Any]) -> dict[str, str]:
    """`{param: description}` from the `Args:` section of a Google-style docstring."""
    docs: dict[str, str] = {}
    in_args, current = False, None
    for line in (inspect.getdoc(fn) or "").splitlines():
        if line.strip() == "Args:":
            in_args = True
            continue
        if in_args:
            if line and not line.startswith(" "):
                break
            m = re.match(r"^\s{4}(\w+)(?: \(.*?\))?:\s*(.*)$", line)
            if m:
                current = m.group(1)
                docs[current] = m.group(2)
            elif current and line.strip():
                docs[current] += " " + line.strip()
    return docs


def _path_params(run_fn: Callable[..., Any]) -> list[tuple[str, type, bool]]:
    """Keyword-only parameters of `run`: (name, str or Path, required)."""
    hints = typing.get_type_hints(run_fn)
    out = []
    for p in inspect.signature(run_fn).parameters.values():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        hint = hints.get(p.name, str)
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) else ()
        kind = Path if hint is Path or Path in args else str
        out.append((p.name, kind, p.default is inspect.Parameter.empty))
    return out


def _refuse_overlapping_paths(kwargs: dict[str, Any]) -> None:
    """An output folder must neither hold nor lie inside another path of the command (an input, the weights, a
    checkpoint folder): replacing the output would destroy it (`--input X/frames --output X`)."""
    if not isinstance(kwargs.get("output_dir"), Path):
        return
    out = kwargs["output_dir"].resolve()
    for name, value in kwargs.items():
        if name == "output_dir" or not isinstance(value, Path):
            continue
        other = value.resolve()
        if other == out or other.is_relative_to(out) or out.is_relative_to(other):
            raise StageError(
                f"--output {kwargs['output_dir']} and {_flag(name)} {value} overlap: the output folder is replaced as "
                "a whole, so it may neither hold nor lie inside another path (nothing was written)"
            )


def cli_main(
    run_fn: Callable[..., Any],
    config_cls: type[StageConfig],
    argv: Sequence[str] | None = None,
    prog: str | None = None,
) -> int:
    """Parse the command line, load and override the config, call `run_fn`; returns the exit status.

    `prog` names the command in --help (default `python -m stages.<stage>`).
    """
    setup_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    params = _path_params(run_fn)
    docs = _arg_docs(run_fn)
    stage = run_fn.__module__.split(".")[1] if run_fn.__module__.startswith("stages.") else run_fn.__module__

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path, default=None)
    has_runtime = RUNTIME_FIELD in config_cls.model_fields
    if has_runtime:
        pre.add_argument("--runtime", type=Path, default=None)
    for name, _, _ in params:
        pre.add_argument(_flag(name), dest=name, default=None)
    known, rest = pre.parse_known_args(argv)

    lines = [
        (f"Run the {stage} stage. " if prog is None else "") + (inspect.getdoc(run_fn) or "").splitlines()[0],
        "",
        f"  --config PATH   YAML config ({config_cls.__name__}); flags below override its values",
    ]
    if has_runtime:
        lines.append(f"  --runtime PATH  its `{stage}:` section sets the memory/speed knobs `runtime.*`")
    for name, kind, required in params:
        metavar = "PATH" if kind is Path else "TEXT"
        need = "required" if required else "optional"
        lines.append(f"  {_flag(name)} {metavar}   ({need}) {docs.get(name, '')}".rstrip())
    description = "\n".join(lines)
    prog = prog or f"python -m stages.{stage}"
    if any(a in ("-h", "--help") for a in rest):
        tyro.cli(config_cls, args=["--help"], prog=prog, description=description)
        return 0  # pragma: no cover - tyro exits

    try:
        config = load_config(config_cls, known.config) if known.config else config_cls()
        if has_runtime and known.runtime is not None:
            # The section is named after the stage the config class belongs to (stages.<stage>.config).
            runtime = load_runtime(config_cls, known.runtime, config_cls.__module__.split(".")[1])
            config = config.model_copy(update={RUNTIME_FIELD: runtime})
        try:
            with flag_errors_as_stage_error(f"see {prog} --help"):
                config = tyro.cli(config_cls, default=config, args=rest, prog=prog, description=description)
        except ValidationError as err:
            raise StageError(format_validation_error(err, source="command line")) from None
        kwargs: dict[str, Any] = {}
        for name, kind, required in params:
            value = getattr(known, name)
            if value is None:
                if required:
                    raise StageError(f"missing required argument {_flag(name)}")
                continue
            kwargs[name] = Path(value) if kind is Path else value
        _refuse_overlapping_paths(kwargs)
        run_fn(config, **kwargs)
    except StageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
