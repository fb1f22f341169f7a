"""The ``maskprobe`` command line: parse, call the library, render. Exit codes: :mod:`maskprobe.errors`.

Tables go to stdout, progress and messages to stderr; ``--json`` prints one JSON object on stdout.
Nothing heavy is imported at module level, so ``maskprobe --help`` and shell completion stay fast.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .errors import EXIT_INTERNAL, EXIT_SIGINT, BadInputError, CheckFailed, Interrupted, MaskprobeError, RankFailed

app = typer.Typer(
    name="maskprobe",
    help="Learn binary weight masks per task on a frozen checkpoint and measure functional modularity "
    "(Csordás et al., ICLR 2021).",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion; completion imports nothing heavy
    pretty_exceptions_enable=False,
)

Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of tables.")]
TaskOpt = Annotated[list[str], typer.Option("--task", "-t", help="Task: entry-point name, module:Class or file.py:Class.")]
TaskArgOpt = Annotated[list[str], typer.Option("--task-arg", help="key=value for the tasks (typed from their __init__).")]
ModelOpt = Annotated[
    str | None, typer.Option("--model", help="Architecture factory package.module:function for weights-only checkpoints.")
]
ModelArgOpt = Annotated[list[str], typer.Option("--model-arg", help="key=value passed to the --model factory.")]
TrustOpt = Annotated[
    bool, typer.Option("--trust-checkpoint", help="Allow unpickling arbitrary objects (runs code from the file!).")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]


_RESULTS: list[Any] = []  # while a command runs: the stream its results go to (see _results_only_on_stdout)


def real_stdout() -> Any:
    """The stream for a command's results (tables, JSON): the real stdout even while sys.stdout points to stderr."""
    return _RESULTS[-1] if _RESULTS else sys.stdout


def _stdout():
    from rich.console import Console

    file = real_stdout()
    return Console(file=file, highlight=False, soft_wrap=False, width=None if file.isatty() else 160)


@contextlib.contextmanager
def _results_only_on_stdout():
    """While a command runs, stdout carries its results only: ``sys.stdout`` and, in a real process, fd 1 point to
    stderr (a plugin's ``print``, a C library's output), and the renderer writes to a duplicate of the real stdout,
    so that ``--json`` stays one JSON document whatever a task plugin prints."""
    real = sys.stdout
    try:
        fd = real.fileno()
    except (AttributeError, OSError, ValueError):  # pytest's capture, a StringIO: no descriptor to move
        fd = None
    saved = None
    stream = real
    if fd == 1:
        real.flush()
        saved = os.dup(1)
        raw = io.BufferedWriter(io.FileIO(saved, "w", closefd=False))  # a stream, not a file: nothing to write atomically
        stream = io.TextIOWrapper(raw, encoding=getattr(real, "encoding", None) or "utf-8", errors="replace")
        os.dup2(2, 1)
    _RESULTS.append(stream)
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout = real
        _RESULTS.pop()
        try:
            stream.flush()
        finally:
            if saved is not None:
                os.dup2(saved, 1)
                os.close(saved)


def _results_guard(command: Any) -> Any:
    @functools.wraps(command)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        with _results_only_on_stdout():
            return command(*args, **kwargs)

    return guarded


def _stderr():
    from .progress import err_console

    return err_console()


class _Signals:
    """Turn SIGINT/SIGTERM into a flag the training loop polls at step boundaries."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. inside a test runner thread)
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __call__(self) -> bool:
        return self.signum is not None

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


@app.command()
def train(
    checkpoint: Annotated[
        Path, typer.Argument(metavar="CHECKPOINT", help="Checkpoint file or folder (format detected by content).")
    ],
    task: TaskOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Mask file (one task, *.safetensors) or folder.")],
    task_arg: TaskArgOpt = [],
    model: ModelOpt = None,
    model_arg: ModelArgOpt = [],
    trust_checkpoint: TrustOpt = False,
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps per mask (paper: 20000).")] = 5000,
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size B, split into K chunks.")] = 128,
    lr: Annotated[float, typer.Option(help="Adam learning rate on the logits.")] = 1e-2,
    beta: Annotated[
        str,
        typer.Option(help="Regulariser strength: loss += beta/B * sum(logits); a comma list (1e-5,1e-4) trains one mask each."),
    ] = "1e-4",
    samples: Annotated[int, typer.Option("--samples", "-k", min=1, help="Mask samples K per step.")] = 4,
    init: Annotated[float, typer.Option(help="Initial logit (keep probability sigmoid(init)).")] = 2.0,
    tau: Annotated[float, typer.Option(help="Gumbel-sigmoid temperature (gradient only).")] = 1.0,
    clip: Annotated[float, typer.Option(help="Gradient-norm clip over the logits.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed for data order and mask noise.")] = 0,
    seeds: Annotated[
        str | None, typer.Option("--seeds", help="Comma list of seeds (0,1,2): one mask per seed in this run; replaces --seed.")
    ] = None,
    backend: Annotated[
        str, typer.Option("--backend", help="Mask-step kernels: auto (numba on the CPU when installed), numba or torch.")
    ] = "auto",
    device: DeviceOpt = "auto",
    include: Annotated[
        list[str], typer.Option("--include", help="Glob(s) of parameter names to mask (replaces the default rule).")
    ] = [],
    exclude: Annotated[list[str], typer.Option("--exclude", help="Glob(s) of parameter names not to mask.")] = [],
    mask_biases: Annotated[bool, typer.Option("--mask-biases", help="Mask biases too.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing mask files.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue interrupted runs from their .state.pt files.")] = False,
    save_every: Annotated[
        int,
        typer.Option("--save-every", min=0, help="Snapshot the state every N steps (a kill loses at most N; 0: on signals only)"),
    ] = 0,
    memory_limit: Annotated[
        str,
        typer.Option("--memory-limit", help="Refuse to start above this estimated need, e.g. 8GiB; auto: free memory; off."),
    ] = "auto",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the memory estimate per process (1, 2, 4, 8 processes) and exit.")
    ] = False,
    shard: Annotated[
        bool, typer.Option("--shard", help="Under torchrun: shard weights, logits and Adam state (FSDP2; docs/distributed.md).")
    ] = False,
    pack_bits: Annotated[
        bool, typer.Option("--pack-bits", help="Store 8 weights per byte (read by every maskprobe command; docs/mask-format.md).")
    ] = False,
    json_out: Json = False,
    quiet: QuietOpt = False,
) -> None:
    """Learn one binary mask per task on the frozen checkpoint and save them as safetensors.

    Data-parallel on several GPUs or nodes: torchrun --nproc-per-node N -m maskprobe train ... (docs/distributed.md)."""
    params = dict(locals())
    from .commands.train import run_train

    run_train(**params)


@app.command()
def compare(
    masks: Annotated[
        list[Path] | None, typer.Argument(metavar="MASK...", help="Two or more mask files over the same checkpoint.")
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", "-c", help="Run the functional ablation on this checkpoint.")
    ] = None,
    task: Annotated[
        list[str], typer.Option("--task", "-t", help="Task per mask, in order (default: from each mask's metadata).")
    ] = [],
    task_arg: TaskArgOpt = [],
    model: ModelOpt = None,
    model_arg: ModelArgOpt = [],
    trust_checkpoint: TrustOpt = False,
    keep_io: Annotated[
        bool, typer.Option("--keep-io", help="Paper's 'first full mask' variant: never remove input/output layer weights.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the random-removal controls.")] = 0,
    device: DeviceOpt = "auto",
    allow_mismatch: Annotated[
        bool, typer.Option("--allow-mismatch", help="Compare masks recorded from different checkpoints.")
    ] = False,
    io_layer: Annotated[
        list[str], typer.Option("--io-layer", help="Glob of the input/output layers' tensors (default: first and last weight).")
    ] = [],
    group: Annotated[
        list[str],
        typer.Option("--group", help="'task': several files per task, mean ± std over runs; or NAME=GLOB per task (no MASK)."),
    ] = [],
    min_specialize: Annotated[
        list[str], typer.Option("--min-specialize", help="Exit 1 if P_specialize < X; TASK=X: that task's S_i.")
    ] = [],
    max_reuse: Annotated[list[str], typer.Option("--max-reuse", help="Exit 1 if P_reuse > X; A:B=X: R[A->B].")] = [],
    max_iou: Annotated[list[str], typer.Option("--max-iou", help="Exit 1 if any pair's total IoU > X; A:B=X: that pair.")] = [],
    max_iomin: Annotated[list[str], typer.Option("--max-iomin", help="Exit 1 if any pair's total IoMin > X; A:B=X.")] = [],
    min_density: Annotated[list[str], typer.Option("--min-density", help="Exit 1 if a mask's density < X; TASK=X.")] = [],
    baseline: Annotated[
        Path | None, typer.Option("--baseline", help="A previous compare JSON: report what moved and by how much.")
    ] = None,
    max_regression: Annotated[
        float | None, typer.Option("--max-regression", help="With --baseline: exit 1 if P_specialize fell or P_reuse rose more.")
    ] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write PNG figures into this folder (the plot extra).")] = None,
    output_format: Annotated[str, typer.Option("--format", help="table, json or markdown (CI job summaries).")] = "table",
    json_out: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Per-layer overlap of masks against chance; with --checkpoint, ablations and specialization/reuse scores.

    Exit codes: 0 all checks hold, 1 a check failed (one FAIL line each on stderr), 2 bad input.
    """
    params = dict(locals())
    params["masks"] = masks or []
    from .commands.compare import run_compare

    run_compare(**params)


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(metavar="CHECKPOINT", help="Checkpoint file or folder.")],
    task: TaskOpt,
    mask: Annotated[Path | None, typer.Option("--mask", "-m", help="Apply this mask (keep only its weights).")] = None,
    invert: Annotated[bool, typer.Option("--invert", help="Remove the mask's weights instead of keeping only them.")] = False,
    task_arg: TaskArgOpt = [],
    model: ModelOpt = None,
    model_arg: ModelArgOpt = [],
    trust_checkpoint: TrustOpt = False,
    device: DeviceOpt = "auto",
    allow_mismatch: Annotated[
        bool, typer.Option("--allow-mismatch", help="Use a mask recorded from another checkpoint.")
    ] = False,
    json_out: Json = False,
) -> None:
    """The task metrics on the checkpoint, unmasked or under a mask."""
    params = dict(locals())
    from .commands.evaluate import run_evaluate

    run_evaluate(**params)


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(metavar="PATH", help="A checkpoint or a mask file.")],
    include: Annotated[list[str], typer.Option("--include", help="Selection globs, as for train.")] = [],
    exclude: Annotated[list[str], typer.Option("--exclude", help="Selection globs, as for train.")] = [],
    mask_biases: Annotated[bool, typer.Option("--mask-biases")] = False,
    task: Annotated[list[str], typer.Option("--task", "-t", help="Task whose build_model() gives the architecture.")] = [],
    task_arg: TaskArgOpt = [],
    model: ModelOpt = None,
    model_arg: ModelArgOpt = [],
    trust_checkpoint: TrustOpt = False,
    json_out: Json = False,
) -> None:
    """What a checkpoint or mask file holds: format, parameters, what would be masked, metadata."""
    params = dict(locals())
    from .commands.inspect import run_inspect

    run_inspect(**params)


@app.command()
def tasks(
    check: Annotated[
        str | None,
        typer.Option("--check", help="Run this task (name, module:Class or file.py:Class) through the contract checks."),
    ] = None,
    task_arg: TaskArgOpt = [],
    json_out: Json = False,
) -> None:
    """List the task plugins found (entry-point group maskprobe.tasks), or check one with --check NAME (exit 3 if broken)."""
    params = dict(locals())
    from .commands.tasks import run_tasks

    run_tasks(**params)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the demo's checkpoint and masks.")] = Path(
        "maskprobe-demo"
    ),
    hidden: Annotated[str, typer.Option(help="Hidden sizes of the FNN (paper: 2000,2000,2000,2000).")] = "256,256,256,256",
    base_steps: Annotated[int, typer.Option(min=1, help="Steps to train the base network.")] = 10000,
    steps: Annotated[int, typer.Option(min=1, help="Steps per mask.")] = 4000,
    beta: Annotated[float, typer.Option(help="Regulariser strength for the masks.")] = 1e-3,
    seed: Annotated[int, typer.Option()] = 0,
    device: DeviceOpt = "auto",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an earlier demo's files in --out.")] = False,
    json_out: Json = False,
    quiet: QuietOpt = False,
) -> None:
    """The whole story on the paper's addition/multiplication task, on a small FNN (about a minute on an idle 2-core machine)."""
    params = dict(locals())
    from .commands.demo import run_demo

    run_demo(**params)


# every command, once: stdout carries only its results (after parsing, so --help still prints on stdout)
for _info in app.registered_commands:
    _info.callback = _results_guard(_info.callback)


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
    dist = sys.modules.get("maskprobe.distributed")
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
    except typer.Abort:
        print("maskprobe: aborted", file=sys.stderr)
        return EXIT_SIGINT
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
    except KeyboardInterrupt:
        print("maskprobe: interrupted", file=sys.stderr)
        return EXIT_SIGINT
    except BrokenPipeError:
        return 0
    except Exception as e:
        if hasattr(e, "show") and hasattr(e, "exit_code"):  # click's / typer's usage errors
            e.show(file=sys.stderr)
            return int(e.exit_code)
        if os.environ.get("MASKPROBE_DEBUG"):
            raise
        # a bug of ours: one line, the traceback on request
        print(f"maskprobe: internal error: {type(e).__name__}: {e} (set MASKPROBE_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


def main() -> None:
    sys.exit(run(sys.argv[1:]))


__all__ = ["app", "run", "main", "real_stdout", "BadInputError"]
