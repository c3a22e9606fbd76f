"""`python -m stages.distill --config configs/distill.yaml --input <mvgen dir> --preprocess <dir> --weights <4DM dir>
--lpips <LPIPS dir> --output <dir> [--checkpoint <dir>]`."""

from stages.common.cli import cli_main
from stages.distill import DistillConfig, run

raise SystemExit(cli_main(run, DistillConfig))
