"""`python -m flows`: the command line of the flows (flows/cli.py)."""

import sys

from flows.cli import main

sys.exit(main())
