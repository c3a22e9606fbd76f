"""`python -m stages.mvgen --config configs/mvgen.yaml --input <preprocess dir> --weights <dir> --output <dir>`."""

from stages.common.cli import cli_main
from stages.mvgen import MvgenConfig, run

raise SystemExit(cli_main(run, MvgenConfig))
