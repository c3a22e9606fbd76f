"""The trainer's command line (argparse, not tyro: the GPU machine has only torch, transformers and the carried
wheels).

    python -m stages.mvgen.training --config configs/train_fourdm.yaml --data <renders> [--weights <FourDM>] \
        --output <run> [--minutes M] [--export-only] [--set section.key=VALUE ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from stages.common.config import load_config, validate_config
from stages.common.errors import StageError
from stages.common.logs import setup_logging
from stages.mvgen.training.config import TrainConfig

__all__ = ["main", "parse_config"]


def parse_config(path: Path, sets: list[str], minutes: float | None = None, export_only: bool = False) -> TrainConfig:
    """The config at `path` (an overlay merged onto its base) with `--set section.key=VALUE` overrides (YAML values).

    Raises:
        StageError: an override that names no config key, or a value that does not validate.
    """
    data = load_config(TrainConfig, path).model_dump(mode="json")
    for item in sets:
        key, sep, value = item.partition("=")
        *sections, name = key.split(".")
        target = data
        for section in sections:
            target = target.get(section) if isinstance(target, dict) else None
        if not sep or not isinstance(target, dict) or name not in target or isinstance(target[name], dict):
            raise StageError(f"--set {item!r}: expected KEY=VALUE with KEY a config key such as schedule.steps")
        target[name] = yaml.safe_load(value)
    if minutes is not None:
        data["schedule"]["minutes"] = minutes
    if export_only:
        data["export_only"] = True
    return validate_config(TrainConfig, data, source="command line")


def main(argv: list[str] | None = None) -> int:
    """Returns 0, or 1 after printing one `error:` line."""
    from stages.mvgen.training.train import run  # the model code, after the arguments parse

    p = argparse.ArgumentParser(
        prog="python -m stages.mvgen.training",
        description="Train (or resume) 4DM and export it to <output>/fourdm (stages/mvgen/training/README.md).",
    )
    p.add_argument("--config", type=Path, default=Path("configs/train_fourdm.yaml"), help="TrainConfig YAML")
    p.add_argument("--data", type=Path, default=None, help="render artifacts with training rings")
    p.add_argument("--weights", type=Path, default=None, help="FourDM weights to start from (else: built)")
    p.add_argument("--output", type=Path, required=True, help="run folder (resumes from its checkpoint/)")
    p.add_argument("--minutes", type=float, default=None, help="override schedule.minutes (time budget)")
    p.add_argument("--export-only", action="store_true", help="rebuild <output>/fourdm from <output>/checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key (YAML value)")
    args = p.parse_args(argv)
    setup_logging()
    try:
        config = parse_config(args.config, args.set, args.minutes, args.export_only)
        run(config, data_dir=args.data, weights_dir=args.weights, output_dir=args.output)
    except StageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
