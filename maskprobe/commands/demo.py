"""``maskprobe demo``: the paper's addition/multiplication experiment on a small FNN, end to end.

1. train a ReLU FNN (42-hidden-20) on both operations with the task's base recipe (``arith-both``'s
   ``base_recipe()``, :mod:`maskprobe.learning.fitting`);
2. learn the ``arith-add`` and ``arith-mul`` masks on the frozen network;
3. compare them (:func:`maskprobe.measure.compare.compare`): overlap per layer, removals, P_specialize, P_reuse.

Everything lands in ``--out`` so each step can be rerun with the ordinary commands it prints.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from .options import Device, Json, Quiet, Threads

DEMO_TASKS = ("arith-add", "arith-mul")
DEMO_OUT = Path("maskprobe-demo")


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the demo's checkpoint and masks.")] = DEMO_OUT,
    hidden: Annotated[str, typer.Option(help="Hidden sizes of the FNN (paper: 2000,2000,2000,2000).")] = "256,256,256,256",
    base_steps: Annotated[
        int | None, typer.Option(min=1, help="Steps to train the base network (default: the task's recipe, 10000).")
    ] = None,
    steps: Annotated[int, typer.Option(min=1, help="Steps per mask.")] = 4000,
    beta: Annotated[float, typer.Option(help="Regulariser strength for the masks.")] = 1e-3,
    seed: Annotated[int, typer.Option()] = 0,
    device: Device = "auto",
    threads: Threads = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an earlier demo's files in --out.")] = False,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """The whole story on the paper's addition/multiplication task, on a small FNN (about 100 s of CPU time)."""
    import torch

    from .. import console
    from ..atomic import atomic_write
    from ..config import TrainConfig
    from ..devices import resolve_device, set_threads
    from ..learning.fitting import fit
    from ..learning.training import train_mask
    from ..loading.checkpoints import Checkpoint, identify
    from ..masks.maskfile import save_masks
    from ..measure.compare import compare
    from ..measure.evaluation import evaluate_task
    from ..progress import TrainProgress, status_line
    from ..render import dumps, pct
    from ..tasks.plugins import load_task

    set_threads(threads)
    err = console.err()
    say = status_line(err, quiet)
    dev = resolve_device(device)
    _check_outputs(out, hidden, force)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    args = {"hidden": hidden}
    base_task, _ = load_task("arith-both", args)
    recipe = base_task.base_recipe().with_steps(base_steps)
    say(f"[1/3] training the base network 42-{hidden.replace(',', 'x')}-20 on add+mul for {recipe.steps} steps")
    t_base = time.perf_counter()

    def progress(s: int, loss: float) -> None:  # with the time left: the demo's length depends on the machine
        left = (time.perf_counter() - t_base) / s * (recipe.steps - s) if s else 0.0
        say(f"  base step {s}/{recipe.steps} loss {loss:.4f}" + (f", about {left:.0f} s left" if s < recipe.steps else ""))

    model = fit(base_task, recipe, seed=seed, callback=None if quiet else progress)
    ckpt_path = out / "addmul.pt"
    atomic_write(ckpt_path, lambda tmp: torch.save(model.state_dict(), tmp))
    base_acc = evaluate_task(model, base_task)["accuracy"]
    say(f"  saved {ckpt_path}; accuracy on add+mul {pct(base_acc)} ({time.perf_counter() - t_start:.0f} s)")
    ckpt = Checkpoint(model, ckpt_path, "torch-zip", identify(model))

    config = TrainConfig(steps=steps, beta=beta, seed=seed, device=str(dev))
    paths = []
    for i, name in enumerate(DEMO_TASKS):
        task, ref = load_task(name, args)
        say(f"[2/3] mask {i + 1}/2: {name}, {steps} steps, beta {beta}")
        with TrainProgress(err, name, steps, quiet=quiet) as cb:
            res = train_mask(model, task, ref, config, callback=cb)
        path = save_masks(out / f"{name}.safetensors", res.masks, res.metadata(ckpt.to_dict()))
        say(f"  saved {path}: density {pct(res.density()['total'])}, accuracy {pct(res.metric_full['accuracy'])} "
            f"unmasked, {pct(res.metric_masked['accuracy'])} with the mask")  # fmt: skip
        paths.append(path)

    say("[3/3] comparing the masks and running the removals")
    report = compare(paths, checkpoint=ckpt, device=dev, seed=seed).to_dict()
    elapsed = time.perf_counter() - t_start
    if json_out:
        console.print_json(dumps({**report, "elapsed_s": elapsed, "checkpoint": str(ckpt_path)}))
        return
    from ..render.compare import compare_tables

    o = console.out()
    for item in compare_tables(report, o.width):  # the terminal's width: the compact overlap table at 80 columns
        o.print(item)
    o.print(_story(report), markup=False)
    o.print(f"Done in {elapsed:.0f} s. Rerun the comparison yourself:\n"
            f"  maskprobe compare {paths[0]} {paths[1]} --checkpoint {ckpt_path}\n"
            f"  maskprobe inspect {paths[0]}", markup=False)  # fmt: skip


def _story(report: dict) -> str:
    """The demo's conclusion in three lines, from the report's numbers."""
    from ..render import pct

    ab, s = report["ablation"], report["scores"]
    full, ex, ce = ab["full"], ab["exclusive"], ab["control_exclusive"]
    lines = [f"\nWhat it shows (accuracy, full network: add {pct(full[0])}, mul {pct(full[1])}):"]
    lines += weak_masks(full, ab["kept"], ("add", "mul"))
    for i, name in enumerate(("add", "mul")):
        lines.append(
            f"  removing the weights only the {name} mask uses: add {pct(ex[i][0])}, mul {pct(ex[i][1])}   "
            f"(random removal of as many: add {pct(ce[i][0])}, mul {pct(ce[i][1])})"
        )
    lines.append(
        f"  P_specialize = {s['p_specialize']:.3f} (control {s['p_specialize_control']:.3f}); P_reuse = {s['p_reuse']:.3f}.  "
        "Paper (2000x4 FNN): specialised, little reuse.\n"
    )
    return "\n".join(lines)


WEAK = 0.9  # a mask that keeps less than this share of its task's unmasked metric is named in the story


def weak_masks(full: list[float], kept: list[list[float]], names: tuple[str, ...]) -> list[str]:
    """One line per mask whose own task, with only the mask's weights kept, falls below :data:`WEAK` of its unmasked
    metric: the removals then measure a network the mask no longer fully explains."""
    from ..render import pct

    return [
        f"  note: the {name} mask alone keeps {name} at {pct(kept[i][i])} of {pct(full[i])} unmasked "
        f"({kept[i][i] / full[i]:.0%}): it misses weights {name} uses; more --steps or a smaller --beta keep more"
        for i, name in enumerate(names)
        if full[i] > 0 and kept[i][i] < WEAK * full[i]
    ]


def _check_outputs(out: Path, hidden: str, force: bool) -> None:
    """Refuse before any work: malformed --hidden, --out that is a file, an earlier demo's files without --force."""
    from ..errors import BadInputError

    parts = [h.strip() for h in hidden.split(",")]
    if not parts or not all(h.isdigit() and int(h) > 0 for h in parts):
        raise BadInputError(f"--hidden must be comma-separated positive sizes like 256,256, got {hidden!r}")
    if out.exists() and not out.is_dir():
        raise BadInputError(f"--out {out} exists and is not a folder")
    existing = [p for p in (out / "addmul.pt", *(out / f"{t}.safetensors" for t in DEMO_TASKS)) if p.exists()]
    if existing and not force:
        raise BadInputError(f"{existing[0]} exists; pass --force to overwrite the earlier demo or choose another --out")
