"""`python -m stages.preprocess --config configs/preprocess.yaml --input <video|folder> --output <dir>`."""

from stages.common.cli import cli_main
from stages.preprocess import PreprocessConfig, run

raise SystemExit(cli_main(run, PreprocessConfig))
