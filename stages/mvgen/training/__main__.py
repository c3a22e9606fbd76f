"""`python -m stages.mvgen.training --config configs/train_fourdm.yaml --data <dir> --weights <dir> --output <dir>`."""

from stages.common.cli import cli_main
from stages.mvgen.training import TrainConfig, run

raise SystemExit(cli_main(run, TrainConfig, prog="python -m stages.mvgen.training"))
