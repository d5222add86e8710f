"""Shared helpers for the tests that drive the command line in-process (tests/ is on pytest's pythonpath)."""

from __future__ import annotations

from nrpm import cli


def run(argv, capsys):
    """(exit status, stdout, stderr) of ``nrpm argv``, whether argparse or the command ends it."""
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_usage_error(code, err, command, *fragments):
    """Exit status 2 with one line 'nrpm COMMAND: error: ...' holding every fragment, and no traceback."""
    assert code == 2, err
    assert err.startswith(f"nrpm {command}: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
