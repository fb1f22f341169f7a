"""``maskprobe train``: parse the flags into a :class:`maskprobe.learning.runs.TrainRequest`, run it, render the masks.

Data-parallel on several GPUs or nodes: ``torchrun --nproc-per-node N -m maskprobe train ...`` (docs/distributed.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..config import KEEP_START_BETA, Selection, TrainConfig
from .options import (
    METHOD,
    RUNNING,
    WEIGHTS,
    Device,
    Exclude,
    Include,
    Json,
    MaskBiases,
    MaskNorms,
    Model,
    ModelArgs,
    Quiet,
    TaskArgs,
    Tasks,
    Threads,
    Trust,
    in_panel,
)

D = TrainConfig()  # every default comes from the config, once


def train(
    ctx: typer.Context,
    checkpoint: Annotated[
        Path, typer.Argument(metavar="CHECKPOINT", help="Checkpoint file or folder (format detected by content).")
    ],
    task: Tasks,
    out: Annotated[Path, typer.Option("--out", "-o", metavar="PATH", help="Mask file (one task, *.safetensors) or folder.")],
    task_arg: TaskArgs = [],
    model: Model = None,
    model_arg: ModelArgs = [],
    trust_checkpoint: Trust = False,
    steps: Annotated[
        int | None,
        in_panel(METHOD, "N", "Optimiser steps per mask (paper: 20000; default: by model size and device).", min=1),
    ] = None,
    batch_size: Annotated[
        int | None, in_panel(METHOD, "B", "Batch size B, split into K chunks (default: by model size and device).", min=1)
    ] = None,
    lr: Annotated[
        float | None, in_panel(METHOD, "LR", "Adam learning rate on the logits (default: 0.01, more for short runs).")
    ] = None,
    beta: Annotated[
        str,
        in_panel(
            METHOD,
            "BETA",
            "Regulariser strength: loss += beta/B * sum(logits); a comma list (1e-5,1e-4) trains one mask each. "
            "Not given (nor --keep): 1e-4 up to 2M masked weights, --keep 0.97 past them (docs/method.md).",
        ),
    ] = str(D.beta),
    keep: Annotated[
        float | None,
        in_panel(
            METHOD, "FRACTION", "Target instead of a fixed beta: keep this fraction of the unmasked metric (e.g. 0.95).", "--keep"
        ),
    ] = None,
    samples: Annotated[int, in_panel(METHOD, "K", "Mask samples K per step.", "--samples", "-k", min=1)] = D.samples,
    init: Annotated[float, in_panel(METHOD, "LOGIT", "Initial logit (keep probability sigmoid(init)).")] = D.init,
    tau: Annotated[float, in_panel(METHOD, "T", "Gumbel-sigmoid temperature (gradient only).")] = D.tau,
    clip: Annotated[float, in_panel(METHOD, "NORM", "Gradient-norm clip over the logits.")] = D.clip,
    seed: Annotated[int, in_panel(METHOD, "N", "Seed for data order and mask noise.")] = D.seed,
    seeds: Annotated[
        str | None, in_panel(METHOD, "LIST", "Several seeds, one mask each: 0,1,2 or 0-9; replaces --seed.", "--seeds")
    ] = None,
    device: Device = "auto",
    threads: Threads = None,
    include: Include = [],
    exclude: Exclude = [],
    mask_biases: MaskBiases = Selection.mask_biases,
    mask_norms: MaskNorms = Selection.mask_norms,
    fix_from: Annotated[
        Path | None,
        in_panel(
            WEIGHTS, "MASK", "Copy tensors of this mask file into each mask and do not train them (class removal).", "--fix-from"
        ),
    ] = None,
    fix: Annotated[
        list[str],
        in_panel(WEIGHTS, "GLOB", "With --fix-from: the tensors held fixed, globs or 'output' (the default).", "--fix"),
    ] = [],
    allow_mismatch: Annotated[
        bool, in_panel(WEIGHTS, "", "Use a --fix-from mask recorded from another checkpoint.", "--allow-mismatch")
    ] = False,
    backend: Annotated[
        str,
        in_panel(
            RUNNING,
            "NAME",
            "Mask-step kernels: auto (numba on the CPU when installed, compile on CUDA), numba, torch or compile.",
            "--backend",
        ),
    ] = D.backend,
    batched_samples: Annotated[
        bool,
        in_panel(
            RUNNING, "", "Run the K samples as one vmap where the task allows it (docs/benchmarks.md).", "--batched-samples"
        ),
    ] = D.batched_samples,
    precision: Annotated[
        str,
        in_panel(
            RUNNING,
            "NAME",
            "Forward and loss in fp32, tf32 (CUDA TF32 matmuls) or bf16 (autocast); gates, Adam and the final "
            "metric stay fp32 (docs/method.md).",
            "--precision",
        ),
    ] = D.precision,
    adam_state: Annotated[
        str,
        in_panel(
            RUNNING,
            "DTYPE",
            "Adam's moments of the logits in fp32 or bf16 (half the optimiser memory; docs/method.md).",
            "--adam-state",
        ),
    ] = D.adam_state,
    together: Annotated[
        bool,
        in_panel(
            RUNNING,
            "",
            "Train the masks of a sweep (--seeds, --beta) at once, their steps batched where they can be.",
            "--together",
        ),
    ] = False,
    force: Annotated[bool, typer.Option("--force", metavar="", help="Overwrite existing mask files.")] = False,
    resume: Annotated[bool, in_panel(RUNNING, "", "Continue interrupted runs from their .state.pt files.", "--resume")] = False,
    save_every: Annotated[
        int,
        in_panel(
            RUNNING, "N", "Snapshot the state every N steps (a kill loses at most N; 0: on signals only)", "--save-every", min=0
        ),
    ] = 0,
    memory_limit: Annotated[
        str,
        in_panel(
            RUNNING, "SIZE", "Refuse to start above this estimated need, e.g. 8GiB; auto: free memory; off.", "--memory-limit"
        ),
    ] = "auto",
    dry_run: Annotated[
        bool, in_panel(RUNNING, "", "Print the memory estimate per process (1, 2, 4, 8 processes) and exit.", "--dry-run")
    ] = False,
    shard: Annotated[
        bool,
        in_panel(RUNNING, "", "Under torchrun: shard weights, logits and Adam state (FSDP2; docs/distributed.md).", "--shard"),
    ] = False,
    pack_bits: Annotated[
        bool,
        in_panel(RUNNING, "", "Store 8 weights per byte (read by every maskprobe command; docs/mask-format.md).", "--pack-bits"),
    ] = False,
    json_out: Json = False,
    quiet: Quiet = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", metavar="", help="List every parameter tensor, not the summary per block and kind.")
    ] = False,
) -> None:
    """Learn one binary mask per task on the frozen checkpoint and save them as safetensors.

    Data-parallel on several GPUs or nodes: torchrun --nproc-per-node N -m maskprobe train ... (docs/distributed.md)."""
    from .. import console
    from ..devices import set_threads
    from ..errors import BadInputError
    from ..learning import distributed
    from ..learning.memory import parse_size
    from ..learning.runs import TrainRequest, train_masks
    from ..learning.selection import parse_globs
    from ..loading.checkpoints import parse_model_args
    from ..render import dumps
    from ..render.train import memory_plan_table, train_payload
    from ..tasks.args import resolve_tasks

    if fix and fix_from is None:
        raise BadInputError("--fix needs --fix-from MASK (the mask file the fixed tensors come from)")
    if allow_mismatch and fix_from is None:
        raise BadInputError("--allow-mismatch applies to --fix-from MASK: give it, or drop --allow-mismatch")
    set_threads(threads)
    quiet = quiet or not distributed.detect().is_main  # under torchrun only rank 0 prints
    betas = parse_numbers(beta, float, "--beta")
    if keep is not None and ctx.get_parameter_source("beta").name == "DEFAULT":
        betas = [KEEP_START_BETA]  # --keep without --beta: beta starts low and rises (docs/method.md)
    seed_list = parse_numbers(seeds, int, "--seeds") if seeds is not None else [seed]
    selection = Selection(parse_globs(include), parse_globs(exclude), mask_biases, mask_norms)
    chosen = tuple(n for n, v in (("steps", steps), ("batch_size", batch_size), ("lr", lr)) if v is None)
    if lr is None and steps is not None:
        chosen = chosen[:-1]  # a given --steps keeps the default lr (auto lr follows only auto steps)
    if keep is None and ctx.get_parameter_source("beta").name == "DEFAULT":
        chosen += ("beta",)  # past the paper's network sizes this becomes --keep (config.DEFAULT_KEEP)
    config = TrainConfig(steps=steps or D.steps, batch_size=batch_size or D.batch_size, lr=D.lr if lr is None else lr,
                         beta=betas[0], keep=keep, chosen=chosen, samples=samples, init=init, tau=tau,
                         clip=clip, seed=seed_list[0], device=device, backend=backend, selection=selection,
                         batched_samples=batched_samples, precision=precision, adam_state=adam_state,
                         fixed_from=str(fix_from) if fix_from else None, fixed=parse_globs(fix) or D.fixed)  # fmt: skip
    request = TrainRequest(
        checkpoint=checkpoint, tasks=resolve_tasks(task, task_arg), out=out, config=config, seeds=tuple(seed_list),
        betas=tuple(betas), model=model, model_args=parse_model_args(model_arg), trust=trust_checkpoint, force=force,
        resume=resume, save_every=save_every, memory_limit="auto" if memory_limit == "auto" else parse_size(memory_limit),
        shard=shard, pack_bits=pack_bits, dry_run=dry_run, allow_mismatch=allow_mismatch, together=together,
    )  # fmt: skip
    reporter = CliReporter(quiet, tables=not json_out, verbose=verbose, label=request.label)
    with console.Signals() as signals:
        result = train_masks(request, reporter, should_stop=signals)
    if not distributed.current().is_main:
        return
    if result.memory_plan is not None:
        console.print_json(dumps(result.memory_plan)) if json_out else console.out().print(memory_plan_table(result.memory_plan))
    elif json_out:
        console.print_json(dumps(train_payload(result.checkpoint, result.written)))


class CliReporter:
    """The run's :class:`maskprobe.learning.runs.Reporter` on the terminal: the selection table and messages on stderr, a
    progress bar per mask, each mask's tables on stdout as it is written (unless ``--json``)."""

    def __init__(self, quiet: bool, tables: bool, verbose: bool = False, label: Any = None):
        from .. import console
        from ..progress import status_line

        self.err = console.err()
        self.quiet, self.tables, self.verbose = quiet, tables, verbose
        self.label = label or (lambda name, config: name)  # the run's name: TrainRequest.label
        self.status = status_line(self.err, quiet)  # Reporter.status(message): a dim line on stderr unless --quiet

    def selection(self, rows: list[Any], title: str) -> None:
        """One screen per block and kind (render.train.selection_summary); one row per tensor with --verbose."""
        from ..render.train import selection_summary, selection_table

        if self.quiet:
            return
        for item in [selection_table(rows, title=title)] if self.verbose else selection_summary(rows, title=title):
            if isinstance(item, str):
                self.err.print(item, markup=False, highlight=False, soft_wrap=False)
            else:
                self.err.print(item)

    def warning(self, message: str) -> None:
        self.err.print(f"maskprobe: warning: {message}", markup=False, highlight=False)

    def progress(self, task: str, steps: int, start: int) -> Any:
        from ..progress import TrainProgress

        return TrainProgress(self.err, task, steps, start=start, quiet=self.quiet)

    def written(self, result: Any, path: Path) -> None:
        if not self.tables:
            return
        from .. import console
        from ..render import names_fit
        from ..render.train import mask_table, metric_table, train_summary

        o = console.out()
        label = self.label(result.task.name, result.config)
        o.print(names_fit(mask_table(result, label), o.width))  # long tensor names whole, on lines of their own
        o.print(train_summary(result, label), markup=False, highlight=False)
        o.print(metric_table(f"{label}: metrics", [(result.task.name, result.metric_full, result.metric_masked)]))


MAX_VALUES = 1000  # --seeds/--beta values per run (one mask each; 0-1000000 would only print nothing for minutes)


def parse_numbers(text: str | None, kind: type, flag: str) -> list:
    """``"0,1,2"`` or ``"0-9"`` (integers) -> a list of ``kind``; a one-line error for anything else or a repeat."""
    from ..errors import BadInputError

    values: list = []
    try:
        for part in (p.strip() for p in str(text).split(",")):
            if not part:
                continue
            lo, dash, hi = part.partition("-") if kind is int else (part, "", "")
            if dash and lo:
                if int(hi) < int(lo):
                    raise ValueError(part)
                if int(hi) - int(lo) + 1 + len(values) > MAX_VALUES:  # one mask each: refused before a list is built
                    raise BadInputError(f"{flag} {part} asks for {int(hi) - int(lo) + 1:,} masks; at most {MAX_VALUES:,} per run")
                values += list(range(int(lo), int(hi) + 1))
            else:
                values.append(kind(part))
    except ValueError:
        form = "0,1,2 or 0-9" if kind is int else "1e-5,1e-4"
        raise BadInputError(f"{flag} takes a comma-separated list of numbers ({form}), got {text!r}") from None
    if not values:
        raise BadInputError(f"{flag} is empty")
    if len(values) > MAX_VALUES:
        raise BadInputError(f"{flag} asks for {len(values):,} masks; at most {MAX_VALUES:,} per run")
    if len(set(values)) != len(values):
        raise BadInputError(f"{flag} repeats a value: {text!r}")
    shown = [f"{v:g}" if kind is float else str(v) for v in values]  # how a mask's file and label name it (jobs())
    alike = [v for v, s in zip(values, shown, strict=True) if shown.count(s) > 1]
    if alike:
        raise BadInputError(
            f"{flag} values {alike[0]!r} and {alike[1]!r} differ only beyond 6 significant digits: their masks would have "
            f"one name ({flag.lstrip('-').rstrip('s')}{shown[values.index(alike[0])]}); give values that differ sooner"
        )
    return values
