"""CLI of the converter; see stages/mvgen/README.md for where to download each file."""

from __future__ import annotations

import sys
from pathlib import Path

from stages.common.cli_errors import ArgumentParser
from stages.common.errors import StageError
from stages.common.logs import setup_logging
from stages.mvgen.conversion.convert import convert


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m stages.mvgen.conversion", description=__doc__)
    parser.add_argument("--imagedream", type=Path, required=True, help="sd-v2.1-base-4view-ipmv.pt")
    parser.add_argument("--fourdm", type=Path, default=None, help="4dm.ckpt (omit: zero motion modules)")
    parser.add_argument(
        "--text-encoder",
        type=Path,
        required=True,
        help="stable-diffusion-2-1-base folder (text_encoder/ + tokenizer/)",
    )
    parser.add_argument(
        "--image-encoder",
        type=Path,
        required=True,
        help="CLIP-ViT-H-14-laion2B-s32B-b79K folder (config.json, weights, preprocessor_config.json)",
    )
    parser.add_argument("--output", type=Path, required=True, help="output folder, e.g. weights/fourdm")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        convert(
            imagedream=args.imagedream,
            fourdm=args.fourdm,
            text_encoder=args.text_encoder,
            image_encoder=args.image_encoder,
            output=args.output,
        )
    except StageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
