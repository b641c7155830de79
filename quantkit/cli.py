"""The ``quantkit`` command line.

Every command belongs to the :class:`QuantkitGroup` ``main``, which turns a :class:`QuantkitError`
or an OS error (missing file, permission denied, disk full) into one line
``quantkit: error: <message>`` on stderr and exit status 2. Commands import numba, torch and
other heavy modules inside their bodies, never at module level, so start-up stays fast.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import click

from . import __version__
from .errors import QuantkitError

EXIT_USER_ERROR = 2


# Commands that live in their own module, ``quantkit/commands/<name>.py``, each defining a click
# command of that name; imported only when invoked (or listed), so start-up stays fast.
LAZY_COMMANDS = ("convert", "quantize", "imatrix", "scorecard", "inspect", "demo")


class QuantkitGroup(click.Group):
    """A click group whose commands report user errors in one line and exit with status 2."""

    def list_commands(self, ctx):
        lazy = [n for n in LAZY_COMMANDS if importlib.util.find_spec(f"quantkit.commands.{n}") is not None]
        return sorted(set(super().list_commands(ctx)) | set(lazy))

    def get_command(self, ctx, name):
        if name in LAZY_COMMANDS and name not in self.commands:
            try:
                module = importlib.import_module(f"quantkit.commands.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"quantkit.commands.{name}":
                    raise
                return None
            return getattr(module, name)
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except QuantkitError as e:
            fail(str(e))
        except BrokenPipeError:  # output piped into e.g. head, which has exited: stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise click.exceptions.Exit(1) from None
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            fail(f"{where}{e.strerror or e}")


def fail(message: str):
    """Print ``quantkit: error: <message>`` (first line only) to stderr and exit with status 2."""
    lines = str(message).strip().splitlines() or ["unknown error"]
    click.echo(f"quantkit: error: {lines[0]}", err=True)
    raise click.exceptions.Exit(EXIT_USER_ERROR)


@click.group(cls=QuantkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="quantkit")
def main():
    """Quantize and convert model weights to GGUF, byte for byte as llama.cpp does."""


if __name__ == "__main__":
    main()
