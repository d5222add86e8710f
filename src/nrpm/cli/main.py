"""The ``nrpm`` parser and entry point, with the one mapping of outcomes to exit statuses:

0 success; 1 only for an audit that found a failing check; 2 for bad input or usage (one line
``nrpm CMD: error: ...``, no traceback); 130 on Ctrl-C. A closed stdout pipe (``nrpm ... | head``) ends quietly.
"""

from __future__ import annotations

import os
import sys

from .._io import OutputFolderInUse
from .args import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, Parser, with_flags
from .audit import add_audit_parser
from .certify import add_certify_parser
from .demo import add_demo_parser
from .evaluate import add_eval_parser
from .train import add_train_parsers

__all__ = ["build_parser", "parse_args", "main"]


def build_parser() -> Parser:
    from .. import __version__

    parser = Parser(prog="nrpm", description="Robustness reprogramming (NRPM) for PyTorch models")
    parser.add_argument("--version", action="version", version=f"nrpm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_demo_parser(sub)
    add_eval_parser(sub)
    add_train_parsers(sub)
    add_audit_parser(sub)
    add_certify_parser(sub)
    parser.commands = dict(sub.choices)
    return parser


def parse_args(argv=None):
    """The parsed arguments; an argument no option takes is the subcommand's error (``nrpm audit: error: ...``)."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def _one_line(error: BaseException) -> str:
    """The error as one line; an OSError with its file (``[Errno 13] ...: 'x'`` reads worse)."""
    if isinstance(error, OSError) and error.strerror and error.filename:
        text = f"{error.strerror}: {error.filename}"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def _quiet_stdout() -> None:
    """After a closed stdout pipe: point stdout at /dev/null, so that the flush at exit cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (e.g. captured)
        sys.stdout = open(os.devnull, "w")


def main(argv=None) -> int:
    """Run ``nrpm`` with ``argv`` (default sys.argv[1:]); returns the exit status (argparse errors exit 2 itself)."""
    args = parse_args(argv)
    try:
        status = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's flush at exit
        return status
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_OK
    except KeyboardInterrupt:
        # what was saved, and how to continue: only where the run writes somewhere (--out)
        hint = getattr(args, "interrupt_hint", None) if getattr(args, "out", None) else None
        print(f"nrpm {args.command}: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, TypeError, OSError, OutputFolderInUse) as error:
        # ValueError: bad values (UsageError included), unreadable checkpoints, results of other settings;
        # OSError: missing or unwritable files; OutputFolderInUse: another run writes into --out.
        # Other exceptions are bugs, and keep their traceback.
        # the library names its arguments (checkpoint=PATH); here they are said as this command's flags
        print(f"nrpm {args.command}: error: {with_flags(_one_line(error))}", file=sys.stderr)
        return EXIT_USAGE
