"""The ``nrpm`` command line: ``nrpm demo | eval | train | reprogram | audit | audit-table | audit-compare``.

One module per command (``demo``, ``evaluate``, ``train``, ``audit``), the arguments they share in ``args``,
and the parser and exit statuses in ``main``. ``python -m nrpm.cli`` (and ``torchrun -m nrpm.cli``) runs it.
"""

from .main import build_parser, main

__all__ = ["main", "build_parser"]
