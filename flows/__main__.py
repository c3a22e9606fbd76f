"""`python -m flows`: the same command line as `python -m flows.fourd` (flows/cli.py)."""

import sys

from flows.cli import main

sys.exit(main())
