"""The paper's addition/multiplication experiment (Csordás et al. 2021, §3.1, its Table of "Full, +, ¬+, *, ¬*"),
end to end through maskprobe's command line, for an FNN or the paper's LSTM.

Per seed: a base network trained on both operations (``python -m sample_tasks.arithmetic``), one mask for
addition and one for multiplication (``maskprobe train --task arith-add --task arith-mul``), and the comparison on
the checkpoint (``maskprobe compare --checkpoint``). Then mean ± std over seeds of:

* the paper's table: rows = the task scored (addition, multiplication); columns = the unmasked network (Full),
  only the add mask kept (+, ``ablation.kept[add][task]``), the add mask removed (¬+, ``ablation.inverted``),
  and the same for the mul mask;
* P_specialize beside its random control (docs/metrics.md) and the exclusive-removal drops it comes from;
* the hidden-layer IoU of the two masks beside the IoU of random masks of the same per-layer sizes.

Sizes (``--size``): ``cpu`` (default; minutes on 2 cores) or ``paper``:

=========  ================================  ================================
size       fnn                               lstm
=========  ================================  ================================
cpu        42-256x4-20, masks 2,000 steps    2 x 128 LSTM, masks 1,000 steps
paper      42-2000x4-20, masks 20,000 steps  2 x 256 LSTM, masks 20,000 steps
=========  ================================  ================================

beta: the paper's sweeps use 1e-4 for both models (``sweeps/addmul_feedforward_big.yaml``, ``addmul_rnn.yaml``)
with 20,000 mask steps; shorter masks get ``1e-4 * 20000 / steps`` (the same total push of the regulariser), so
1e-3 at 2,000 steps (the FNN; ``maskprobe demo`` uses 1e-3 at 4,000) and 2e-3 at 1,000 (the LSTM). ``--beta``
overrides. The LSTM's biases stay unmasked as in the paper's
code (``bias_no_mask``): maskprobe's default selection leaves ``nn.LSTM``'s ``bias_ih``/``bias_hh`` out.

Run::

    python experiments/addmul.py --model fnn                 # 3 seeds, cpu sizes
    python experiments/addmul.py --model lstm --seeds 0-9 --size paper
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.common import (  # noqa: E402
    Runner,
    arith_options,
    base_parser,
    cli,
    default_out,
    finish,
    mask_recipe,
    overlap_row,
    pm,
    run_seeds,
    scaled_beta,
    step_times,
    table,
    threads_for,
    two_mask_seed,
)

PAPER_BETA, PAPER_STEPS = 1e-4, 20_000
SIZES = {
    "cpu": {"fnn": {"hidden": "256,256,256,256", "mask_steps": 2000}, "lstm": {"lstm_size": 128, "mask_steps": 1000}},
    "paper": {"fnn": {"hidden": "2000,2000,2000,2000", "mask_steps": 20_000}, "lstm": {"lstm_size": 256, "mask_steps": 20_000}},
}
TASKS = ("arith-add", "arith-mul")


def main(argv: list[str] | None = None) -> None:
    p = base_parser(__doc__.split("\n")[0], "runs/addmul-<model>-<size>/")
    arith_options(p, SIZES, "the task's base recipe, 10,000")
    args = p.parse_args(argv)
    args.out = default_out(args, f"addmul-{args.model}-{args.size}")
    started = time.perf_counter()
    preset = SIZES[args.size][args.model]
    steps = args.mask_steps or preset["mask_steps"]
    beta = args.beta if args.beta is not None else scaled_beta(PAPER_BETA, PAPER_STEPS, steps)
    targs: dict = {"model": args.model, "eval_size": args.eval_size}
    base = ["sample_tasks.arithmetic", "--model", args.model]
    if args.model == "fnn":
        targs["hidden"] = args.hidden or preset["hidden"]
        base += ["--hidden", targs["hidden"]]
    else:
        targs["lstm_size"], targs["lstm_layers"] = args.lstm_size or preset["lstm_size"], args.lstm_layers
        base += ["--lstm-size", targs["lstm_size"], "--lstm-layers", targs["lstm_layers"]]
    if args.base_steps:
        base += ["--steps", args.base_steps]
    train_flags = ["--steps", steps, "--beta", beta]
    args.out.mkdir(parents=True, exist_ok=True)
    runner = Runner(args.out, threads_for(args))
    runs = run_seeds(
        args.seeds,
        args.jobs,
        lambda s: two_mask_seed(runner, s, args.out, base, TASKS, targs, train_flags, {"": []}, args.force),
    )
    fields = {
        "experiment": "addmul",
        "model": args.model,
        "size": args.size,
        "task_args": targs,
        "mask_steps": steps,
        "beta": beta,
    }
    extra = [f"Model: {args.model} {targs}; {mask_recipe(steps, beta)}."]
    finish("Addition / multiplication", args, started, runner, runs, fields, extra, report(runs), full_scores)


def full_scores(run: dict) -> dict[str, float]:
    """The unmasked network's accuracy per task (the base-network check of ``finish``)."""
    return dict(zip(TASKS, run["compare"][""]["ablation"]["full"], strict=True))


def report(runs: list[dict]) -> str:
    """The markdown tables (accuracies in %)."""
    ab = [r["compare"][""]["ablation"] for r in runs]
    sc = [r["compare"][""]["scores"] for r in runs]
    rows = []
    for j, name in enumerate(("Addition", "Multiplication")):
        cells = [pm(a["full"][j] for a in ab)]
        for i in range(2):
            cells += [pm(a["kept"][i][j] for a in ab), pm(a["inverted"][i][j] for a in ab)]
        rows.append([name, *cells])
    out = ["## Accuracy (%)", "", table(["task scored", "Full", "+", "¬+", "*", "¬*"], rows), ""]
    out += ["Columns: the unmasked network; only the add mask kept (+) or removed (¬+); the same for the mul mask (*, ¬*).", ""]
    ex = [a["drops"]["exclusive"] for a in ab]
    ce = [a["drops"]["control_exclusive"] for a in ab]
    hid = [r["compare"][""]["summary"].get("hidden", {}).get("pooled") for r in runs]  # none with one hidden layer
    dens = [[m["density"] for m in r["compare"][""]["masks"]] for r in runs]
    scores = [
        ["P_specialize", pm((s["p_specialize"] for s in sc), 1, 3), pm((s["p_specialize_control"] for s in sc), 1, 3)],
        ["S_add", pm((s["specialization"][0] for s in sc), 1, 3), ""],
        ["S_mul", pm((s["specialization"][1] for s in sc), 1, 3), ""],
        ["drop of add, add-exclusive weights removed", pm(e[0][0] for e in ex), pm(c[0][0] for c in ce)],
        ["drop of mul, add-exclusive weights removed", pm(e[0][1] for e in ex), pm(c[0][1] for c in ce)],
        ["drop of mul, mul-exclusive weights removed", pm(e[1][1] for e in ex), pm(c[1][1] for c in ce)],
        ["drop of add, mul-exclusive weights removed", pm(e[1][0] for e in ex), pm(c[1][0] for c in ce)],
        overlap_row("hidden-layer IoU (add, mul)", hid, "iou"),
        overlap_row("hidden-layer IoMin (add, mul)", hid, "iomin"),
        ["density add / mul mask (%)", f"{pm(d[0] for d in dens)} / {pm(d[1] for d in dens)}", ""],
        ["P_reuse", pm((s["p_reuse"] for s in sc), 1, 3), ""],
    ]
    out += ["## Specialization and overlap", "", table(["", "measured", "random control / chance"], scores), ""]
    out += [
        "Drops are relative (docs/metrics.md), in %; the control removes a random set of the same size per layer. "
        "IoU/IoMin are pooled over the hidden layers; chance = independent random masks of the same per-layer sizes.",
        "",
    ]
    per_seed = [
        [
            r["seed"],
            " / ".join(f"{100 * v:.1f}" for v in r["compare"][""]["ablation"]["full"]),
            f"{r['compare']['']['scores']['p_specialize']:.3f}",
            step_times(r["timings"], ("base", "masks", "compare")),
        ]
        for r in runs
    ]
    header = ["seed", "full add / mul (%)", "P_specialize", "CPU seconds: base / masks / compare"]
    out += ["## Per seed", "", table(header, per_seed)]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    cli(main)
