"""The documentation site: the command reference made from the argparse parser, and `search docs`.

The reference page is each command's ``--help``, as argparse prints it, at a fixed width: it is
made from `search.cli.build_parser` when the site is built, so it cannot drift from ``--help``.
`search docs` builds the site (Material for MkDocs, strict) or serves it while it is edited; it
needs the ``docs`` extra.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from search.errors import SettingsError

HELP_WIDTH = 100  # columns argparse wraps the reference's help at (COLUMNS when run)
ROOT = Path(__file__).resolve().parent.parent  # where mkdocs.yml is, in a clone of the project


def commands(parser: argparse.ArgumentParser, prefix: str = "search") -> Iterator[tuple[str, str]]:
    """Every command and subcommand with its ``--help`` text, depth first, in the parser's order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", _help(sub)
                yield from commands(sub, f"{prefix} {name}")


def _help(parser: argparse.ArgumentParser) -> str:
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_WIDTH)
    try:
        return parser.format_help()
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous


def reference() -> str:
    """The command reference in Markdown: a section per command, its ``--help`` verbatim."""
    from search.cli import build_parser

    parts = []
    for name, text in commands(build_parser()):
        parts.append(f"## `{name}`\n\n```text\n{text.rstrip()}\n```\n")
    return "\n".join(parts)


def run(serve: bool, site: Path, address: str) -> int:
    """Build the site strictly into ``site``, or serve it at ``address`` while it is edited.

    Raises:
        SettingsError: the docs extra is not installed, or there is no mkdocs.yml to build.
    """
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        raise SettingsError("the documentation needs the docs extra: pip install -e '.[docs]'")
    config = ROOT / "mkdocs.yml"
    if not config.is_file():
        raise SettingsError(f"no {config}: search docs builds the site of a clone of the project")
    mkdocs = [sys.executable, "-m", "mkdocs", "--quiet"]
    if serve:
        command = [*mkdocs, "serve", "--config-file", str(config), "--dev-addr", address]
    else:
        command = [*mkdocs, "build", "--strict", "--config-file", str(config)]
        command += ["--site-dir", str(site.resolve())]
    # Material's banner about its successor would bury the one line that matters.
    environment = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(command, check=False, env=environment).returncode
