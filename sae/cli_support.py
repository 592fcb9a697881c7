"""Command lines generated from typed config dataclasses (the field docstrings become `--help`).

Each subcommand is a dataclass (its docstring is the description, each field's docstring the help of
its flag) and a function that takes an instance of it. `simple_parsing` (a dependency of sae-lens) turns
the dataclass into argparse arguments, so the CLI and the Python API never drift apart.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import simple_parsing

from .cli_errors import KNOWN, describe_failure


@dataclass(frozen=True)
class Command:
    """One subcommand: its config dataclass and the function that runs it."""

    name: str
    config: type
    run: Callable[[Any], Any]
    help: str
    deprecated: str = ""
    """For an old name kept as an alias: the command to use instead (a one-line notice is printed)."""


def build_parser(prog: str, description: str, commands: Sequence[Command]) -> simple_parsing.ArgumentParser:
    parser = simple_parsing.ArgumentParser(
        prog=prog,
        description=description,
        add_option_string_dash_variants=simple_parsing.DashVariant.DASH,
        formatter_class=_PercentSafeFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in commands:
        p = sub.add_parser(
            cmd.name,
            help=cmd.help,
            description=(cmd.config.__doc__ or cmd.help).strip(),
            add_option_string_dash_variants=simple_parsing.DashVariant.DASH,
            formatter_class=_PercentSafeFormatter,
        )
        p.add_arguments(cmd.config, dest="config")
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    return parser


_DEBUG_HELP = "on an error, also show its traceback"


class _PercentSafeFormatter(simple_parsing.SimpleHelpFormatter):
    """argparse %-formats every help string, so a literal "%" in a field docstring ("30 % more") would crash
    `--help`; stray ones are doubled before formatting (argparse's own "%(name)s" placeholders stay)."""

    def _expand_help(self, action: argparse.Action) -> str:
        original = action.help
        if isinstance(original, str):
            action.help = re.sub(r"%(?!\()", "%%", original)
        try:
            return super()._expand_help(action)
        finally:
            action.help = original


def run_cli(
    prog: str, description: str, commands: Sequence[Command], argv: Sequence[str] | None = None
) -> int:
    """Parse `argv`, configure logging, run the chosen command. A known failure (`sae.cli_errors`) becomes
    one line on stderr and exit code 2 (`--debug` adds its traceback); Ctrl-C exits with 130."""
    parser = build_parser(prog, description, commands)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    chosen = next(c for c in commands if c.name == args.command)
    if chosen.deprecated:
        print(f"{prog} {chosen.name} is deprecated; use `{chosen.deprecated}`", file=sys.stderr)
    try:
        chosen.run(args.config)
    except KNOWN as err:
        message = describe_failure(err)
        if message is None:
            raise
        if args.debug:
            traceback.print_exc()
        print(f"{prog} {chosen.name}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog} {chosen.name}: interrupted; finished outputs are kept", file=sys.stderr)
        return 130
    return 0
