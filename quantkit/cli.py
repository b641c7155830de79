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
from .errors import MESSAGE_LIMIT, QuantkitError

EXIT_USER_ERROR = 2


# Commands that live in their own module, ``quantkit/commands/<name>.py``, each defining a click
# command of that name; imported only when invoked (or listed), so start-up stays fast.
LAZY_COMMANDS = ("convert", "quantize", "imatrix", "scorecard", "inspect", "demo", "lora")
# commands whose process runs quantkit's kernels and no torch: set up for that before they load
# (quantkit.quants.prepare_kernel_process)
KERNEL_COMMANDS = ("convert", "quantize", "lora")


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

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.exceptions.NoArgsIsHelpError:  # bare ``quantkit``: click prints the help
            raise
        except click.UsageError as e:  # an option of the group itself, e.g. ``quantkit --bogus``
            fail(usage_message(e))

    def resolve_command(self, ctx, args):
        name, command, rest = super().resolve_command(ctx, args)
        if name in KERNEL_COMMANDS and not ctx.resilient_parsing and not {"-h", "--help"} & set(rest):
            # loaded by name, as the commands are: numpy and numba load only for commands that run kernels
            importlib.import_module("quantkit.quants").prepare_kernel_process()
        return name, command, rest

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:  # a command's arguments: a file where a folder is expected, ...
            fail(usage_message(e))
        except QuantkitError as e:
            fail(str(e))
        except BrokenPipeError:  # output piped into e.g. head, which has exited: stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise click.exceptions.Exit(1) from None
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            fail(f"{where}{e.strerror or e}")


def usage_message(error: click.UsageError) -> str:
    """Click's usage error in one line (click itself prints the usage, a hint and the error over several)."""
    command = error.ctx.command_path if error.ctx is not None else "quantkit"
    return f"{command}: {error.format_message()} (see {command} --help)"


def one_line(message: str) -> str:
    """The first line of ``message``, non-printable characters (control characters, the surrogates of
    undecodable bytes in a file name) escaped, cut to MESSAGE_LIMIT characters."""
    lines = str(message).strip().splitlines() or ["unknown error"]
    line = "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in lines[0])
    return line if len(line) <= MESSAGE_LIMIT else line[: MESSAGE_LIMIT - 3] + "..."


def fail(message: str):
    """Print ``quantkit: error: <message>`` (one line, see :func:`one_line`) to stderr and exit with status 2."""
    click.echo(f"quantkit: error: {one_line(message)}", err=True)
    raise click.exceptions.Exit(EXIT_USER_ERROR)


@click.group(cls=QuantkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="quantkit")
def main():
    """Quantize and convert model weights to GGUF, byte for byte as llama.cpp does."""


if __name__ == "__main__":
    main()
