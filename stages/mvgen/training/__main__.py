"""`python -m stages.mvgen.training --config <yaml> --data <renders> [--weights <FourDM>] --output <run>`."""

from stages.mvgen.training.cli import main

raise SystemExit(main())
