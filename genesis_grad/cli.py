"""
Command line entry point ``genesis-grad``.

Each application module lists its subcommands in ``COMMANDS`` (``genesis_grad.arguments.Subcommand``): steering's
``train | eval | demo``, ``sysid`` and the diagnostics ``doctor | gradcheck``. This module assembles them; nothing
registers itself on import. Heavy imports (Genesis, torch) happen inside the handlers, so ``genesis-grad --help`` is
instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from genesis_grad import cli_diagnostics
from genesis_grad.arguments import ArgumentParser, Subcommand
from genesis_grad.steering import cli as steering_cli
from genesis_grad.sysid import cli as sysid_cli

COMMANDS: dict[str, Subcommand] = {
    command.name: command for module in (steering_cli, sysid_cli, cli_diagnostics) for command in module.COMMANDS
}


def build_parser() -> argparse.ArgumentParser:
    """The ``genesis-grad`` parser, one subparser per entry of ``COMMANDS``."""
    parser = ArgumentParser(
        prog="genesis-grad", description="Differentiable Genesis rigid-body control: steering training and tools."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        # The list of commands reads in argparse's own style (lower case), each command's page as a sentence.
        description = command.description or command.help[0].upper() + command.help[1:] + "."
        command.add_arguments(sub.add_parser(name, help=command.help, description=description))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run ``genesis-grad`` on ``argv`` (``sys.argv[1:]`` by default) and return the exit status.

    Invalid flags end in a one-line usage error (status 2) at parse time. A reference CSV or policy checkpoint that
    cannot be used ends in one line on stderr and status 2, without a traceback.
    """
    from genesis_grad.steering.errors import InputFileError

    args = build_parser().parse_args(argv)
    try:
        return int(COMMANDS[args.command].run(args) or 0)
    except InputFileError as exc:
        print(f"genesis-grad {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
