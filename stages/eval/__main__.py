"""`python -m stages.eval --config configs/eval.yaml --prediction <dir> --ground-truth <dir> --output <dir>`."""

from stages.common.cli import cli_main
from stages.eval import EvalConfig, run

raise SystemExit(cli_main(run, EvalConfig))
