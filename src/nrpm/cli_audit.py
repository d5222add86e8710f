"""Old name of :mod:`nrpm.cli.audit`, kept for code (and tests) that import it from here."""

from .cli.audit import add_audit_parser, cmd_audit, cmd_audit_table

__all__ = ["add_audit_parser", "cmd_audit", "cmd_audit_table"]
