"""`python -m stages.render --config configs/render.yaml --input <asset.glb|folder> --output <dir>`."""

from stages.common.cli import cli_main
from stages.render import RenderConfig, run

raise SystemExit(cli_main(run, RenderConfig))
