"""Old name of :mod:`nrpm.cli.train`, kept for code (and tests) that import it from here."""

from .cli.train import add_train_parsers, cmd_reprogram, cmd_train, config_from_args, tests_from_args

__all__ = ["add_train_parsers", "cmd_train", "cmd_reprogram", "config_from_args", "tests_from_args"]
