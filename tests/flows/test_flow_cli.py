"""`python -m flows` with bad input: one `error:` line, exit status 1, no flow run started."""

from __future__ import annotations

import pytest

from tests.flows.builders import REPO

pytest.importorskip("prefect")

from flows.cli import main  # noqa: E402


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--subject", "../evil"], "subject '../evil': use lowercase letters"),
        (["--subject", "nobody"], "subject 'nobody' is not in params.yaml"),
        (["--video", "/nonexistent/clip.mp4"], "video /nonexistent/clip.mp4 does not exist"),
        (["--subject", "fox", "--config-set", "huge"], "config set 'huge': expected one of"),
        (["--subject", "fox", "--bogus"], "unrecognized arguments: --bogus; see python -m flows --help"),
        (["--subject", "fox", "--parallel", "two"], "argument --parallel: invalid int value: 'two'"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_1(argv, expected, capsys, monkeypatch):
    import flows.cli as cli_module

    def no_flow(*args, **kwargs):
        raise AssertionError("a flow run started")

    monkeypatch.setattr(cli_module, "fourd", no_flow)
    monkeypatch.setattr(cli_module, "fourd_batch", no_flow)
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--repo", str(REPO)])
    assert exc.value.code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
