"""The one exception type a stage raises for bad input; the CLI turns it into a one-line error."""

from __future__ import annotations


class StageError(Exception):
    """Bad input, a bad config or an unusable artifact: the message names the culprit and what was expected.

    `cli_main` prints it as one `error:` line and exits with status 1. Bugs raise anything else and keep their
    traceback.
    """
