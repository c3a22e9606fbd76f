"""`python -m flows.fourd` with bad input: one `error:` line, exit status 1, no flow run started."""

from __future__ import annotations

import pytest

from tests.flows.builders import REPO

pytest.importorskip("prefect")

from flows.fourd import main  # noqa: E402


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--subject", "../evil"], "subject '../evil': use lowercase letters"),
        (["--subject", "nobody"], "subject 'nobody' is not in params.yaml"),
        (["--video", "/nonexistent/clip.mp4"], "video /nonexistent/clip.mp4 does not exist"),
        (["--subject", "fox", "--config-set", "huge"], "config set 'huge': no folder configs/huge/"),
        (["--subject", "fox", "--bogus"], "unrecognized arguments: --bogus; see python -m flows.fourd --help"),
        (["--subject", "fox", "--parallel", "two"], "argument --parallel: invalid int value: 'two'"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_1(argv, expected, capsys, monkeypatch):
    import flows.fourd as fourd_module

    def no_flow(*args, **kwargs):
        raise AssertionError("a flow run started")

    no_flow.fn = fourd_module.fourd.fn  # main() reads the flow's docstring

    monkeypatch.setattr(fourd_module, "fourd", no_flow)
    monkeypatch.setattr(fourd_module, "fourd_batch", no_flow)
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--repo", str(REPO)])
    assert exc.value.code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
