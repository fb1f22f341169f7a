"""The ``maskprobe`` command line: one Typer app, one module per command (maskprobe/commands/), exit codes in one
place (:mod:`maskprobe.errors`).

Tables go to stdout, progress and messages to stderr; ``--json`` prints one JSON object on stdout. Nothing heavy
is imported at module level (the command modules import only typer and the torch-free config), so ``maskprobe
--help`` and shell completion stay fast.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from .commands import compare, demo, evaluate, inspect, tasks, train
from .console import results_guard
from .errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_SIGINT, CheckFailed, Interrupted, MaskprobeError, RankFailed

app = typer.Typer(
    name="maskprobe",
    help="Learn binary weight masks per task on a frozen checkpoint and measure functional modularity "
    "(Csordás et al., ICLR 2021).",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion; completion imports nothing heavy
    pretty_exceptions_enable=False,
)

# every command runs with stdout carrying only its results (after parsing, so --help still prints on stdout)
for _command in (train.train, compare.compare, evaluate.evaluate, inspect.inspect, tasks.tasks, demo.demo):
    app.command(_command.__name__)(results_guard(_command))


def _version_callback(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"maskprobe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    pass


def _leave_group() -> None:
    """Leave torch.distributed's group if ``train`` joined one (no torch import otherwise)."""
    dist = sys.modules.get("maskprobe.learning.distributed")
    if dist is not None:
        dist.shutdown()


def _silent_rank(error: BaseException) -> bool:
    """Under torchrun, ranks other than 0 stay silent about errors rank 0 reports too (distributed.py)."""
    return os.environ.get("RANK", "0") != "0" and (isinstance(error, RankFailed) or getattr(error, "reported_by_rank0", False))


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return the exit code (never raises for expected errors)."""
    try:
        return _run(argv)
    finally:
        _leave_group()


def _run(argv: list[str] | None) -> int:
    try:
        code = app(args=argv, prog_name="maskprobe", standalone_mode=False)
        return int(code) if isinstance(code, int) else 0
    except typer.Exit as e:
        return int(getattr(e, "exit_code", 0) or 0)
    except typer.Abort as e:  # click's answer to a KeyboardInterrupt it caught (outside a command's own handler)
        return _interrupted(e.__cause__ or e.__context__)
    except CheckFailed as e:
        print(f"maskprobe: check failed: {e}", file=sys.stderr)
        return e.exit_code
    except Interrupted as e:
        print(f"maskprobe: {e}", file=sys.stderr)
        return e.exit_code
    except MaskprobeError as e:
        if not _silent_rank(e):
            rank = os.environ.get("RANK", "0") if os.environ.get("WORLD_SIZE", "1") != "1" else None
            print(f"maskprobe{f' [rank {rank}]' if rank not in (None, '0') else ''}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        return _interrupted(e)
    except BrokenPipeError:
        return 0
    except Exception as e:
        if hasattr(e, "show") and hasattr(e, "exit_code"):  # click's / typer's usage errors
            return _usage_error(e)
        if os.environ.get("MASKPROBE_DEBUG"):
            raise
        # a bug of ours: one line, the traceback on request
        print(f"maskprobe: internal error: {type(e).__name__}: {e} (set MASKPROBE_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


def _usage_error(error: Exception) -> int:
    """A click/typer usage error as the one ``maskprobe: error:`` line of docs/cli.md (click prints a usage block
    and a boxed or ``Error:`` line), exit 2; ``maskprobe`` alone still prints its help."""
    if type(error).__name__ == "NoArgsIsHelpError":  # click >= 8.2: no arguments, and the app says "show the help"
        error.show(file=sys.stderr)  # type: ignore[attr-defined]
        return int(getattr(error, "exit_code", 2))
    fmt = getattr(error, "format_message", None)
    text = " ".join(str(fmt() if callable(fmt) else error).split()) or type(error).__name__
    ctx = getattr(error, "ctx", None)
    path = getattr(ctx, "command_path", None) or "maskprobe"
    print(f"maskprobe: error: {text} (see '{path} --help')", file=sys.stderr)
    code = getattr(error, "exit_code", 2)
    return int(code) if isinstance(code, int) and code else EXIT_BAD_INPUT


def _interrupted(error: BaseException | None) -> int:
    """One line and 130 (SIGINT) or 143 (SIGTERM) for a signal that stopped the program outside a command."""
    from .errors import EXIT_SIGTERM, signal_name

    signum = getattr(error, "signum", None) or 2
    print(f"maskprobe: interrupted by {signal_name(signum)}", file=sys.stderr)
    return EXIT_SIGTERM if signum == 15 else EXIT_SIGINT


def main() -> None:
    sys.exit(run(sys.argv[1:]))


__all__ = ["app", "run", "main"]
