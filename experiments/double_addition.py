"""The paper's double-addition experiment (Csordás et al. 2021, §3.3, weight reuse; its Table of "Full, Pair 1,
¬Pair 1, Pair 2, ¬Pair 2"), end to end through maskprobe's command line, for an FNN or the paper's LSTM.

Per seed: a base network trained on both pairs (``python -m sample_tasks.double_addition``), one mask per pair
(``maskprobe train --task dadd-pair1 --task dadd-pair2``), and the comparison on the checkpoint, twice: the plain
removals and the paper's "first full mask" variant that never removes input/output-layer weights (``--keep-io``;
the paper's code copies the control mask there, maskprobe keeps them whole). Then mean ± std over seeds of:

* the paper's table: rows = the pair scored; columns = the unmasked network (Full), only pair 1's mask kept
  (Pair 1, ``ablation.kept``), pair 1's mask removed (¬Pair 1, ``ablation.inverted``), the same for pair 2;
* P_reuse, ``mean R_ij``, ``R_ij = max(0, Dinv[i][j] - Dctrl[i][j])`` (how much pair j needs pair i's weights
  beyond a random removal of the same size; docs/metrics.md), plain and with ``--keep-io``;
* the hidden-layer IoU / IoMin of the two masks beside chance (the input and output layers are per pair, so
  disjoint by construction for the FNN).

The FNN runs once per pair with the other pair's inputs zeroed; the LSTM gets all 80 inputs at each of 6 steps
and answers both pairs at the last (the paper's "together" mode); see sample_tasks/double_addition.py.

Sizes (``--size``): ``cpu`` (default) FNN 80-256x4-40 with 2,000 mask steps, LSTM 2 x 128 with 1,000 mask
steps; ``paper`` FNN 80-2000x4-40, LSTM 2 x 256 with the paper's base recipe (Adam 1e-3, constant, 20,000
steps: at the CPU size the LSTM leaves tens digits unlearned, docs/paper.md), 20,000 mask steps. beta: the
paper's sweeps use 4e-4 for the FNN (``sweeps/tuple_feedforward_big.yaml``) and 1e-4 for the LSTM
(``tuple_rnn.yaml``) at 20,000 steps; shorter masks get ``beta * 20000 / steps`` (FNN 4e-3 at 2,000 steps, LSTM
2e-3 at 1,000). ``--beta`` overrides.

Run::

    python experiments/double_addition.py --model fnn
    python experiments/double_addition.py --model lstm --seeds 0-9 --size paper
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

PAPER_BETA, PAPER_STEPS = {"fnn": 4e-4, "lstm": 1e-4}, 20_000
SIZES = {
    "cpu": {"fnn": {"hidden": "256,256,256,256", "mask_steps": 2000}, "lstm": {"lstm_size": 128, "mask_steps": 1000}},
    "paper": {
        "fnn": {"hidden": "2000,2000,2000,2000", "mask_steps": 20_000},
        # the paper's base recipe (Adam 1e-3, constant, 20,000 steps): the CPU recipe leaves tens digits unlearned
        "lstm": {"lstm_size": 256, "mask_steps": 20_000, "base": ["--steps", 20_000, "--lr", 1e-3, "--schedule", "constant"]},
    },
}
TASKS = ("dadd-pair1", "dadd-pair2")
VARIANTS = {"": [], "keep_io": ["--keep-io"]}


def main(argv: list[str] | None = None) -> None:
    p = base_parser(__doc__.split("\n")[0], "runs/dadd-<model>-<size>/")
    arith_options(p, SIZES, "the task's base recipe")
    args = p.parse_args(argv)
    args.out = default_out(args, f"dadd-{args.model}-{args.size}")
    started = time.perf_counter()
    preset = SIZES[args.size][args.model]
    steps = args.mask_steps or preset["mask_steps"]
    beta = args.beta if args.beta is not None else scaled_beta(PAPER_BETA[args.model], PAPER_STEPS, steps)
    targs: dict = {"model": args.model, "eval_size": args.eval_size}
    base = ["sample_tasks.double_addition", "--model", args.model]
    if args.model == "fnn":
        targs["hidden"] = args.hidden or preset["hidden"]
        base += ["--hidden", targs["hidden"]]
    else:
        targs["lstm_size"], targs["lstm_layers"] = args.lstm_size or preset["lstm_size"], args.lstm_layers
        base += ["--lstm-size", targs["lstm_size"], "--lstm-layers", targs["lstm_layers"]]
    base += preset.get("base", [])
    if args.base_steps:
        base += ["--steps", args.base_steps]
    train_flags = ["--steps", steps, "--beta", beta]
    args.out.mkdir(parents=True, exist_ok=True)
    runner = Runner(args.out, threads_for(args))
    runs = run_seeds(
        args.seeds,
        args.jobs,
        lambda s: two_mask_seed(runner, s, args.out, base, TASKS, targs, train_flags, VARIANTS, args.force),
    )
    fields = {
        "experiment": "double_addition",
        "model": args.model,
        "size": args.size,
        "task_args": targs,
        "mask_steps": steps,
        "beta": beta,
    }
    extra = [f"Model: {args.model} {targs}; {mask_recipe(steps, beta)}."]
    finish("Double addition", args, started, runner, runs, fields, extra, report(runs), full_scores)


def full_scores(run: dict) -> dict[str, float]:
    """The unmasked network's accuracy per pair (the base-network check of ``finish``)."""
    return dict(zip(TASKS, run["compare"][""]["ablation"]["full"], strict=True))


def report(runs: list[dict]) -> str:
    ab = [r["compare"][""]["ablation"] for r in runs]
    rows = []
    for j, name in enumerate(("Pair 1", "Pair 2")):
        cells = [pm(a["full"][j] for a in ab)]
        for i in range(2):
            cells += [pm(a["kept"][i][j] for a in ab), pm(a["inverted"][i][j] for a in ab)]
        rows.append([name, *cells])
    out = ["## Accuracy (%)", "", table(["pair scored", "Full", "Pair 1", "¬Pair 1", "Pair 2", "¬Pair 2"], rows), ""]
    out += ["Columns: the unmasked network; only pair 1's mask kept (Pair 1) or removed (¬Pair 1); the same for pair 2.", ""]
    lines = []
    for variant, label in (("", "plain"), ("keep_io", "--keep-io (I/O layers never removed)")):
        c = [r["compare"][variant] for r in runs]
        a = [x["ablation"] for x in c]
        s = [x["scores"] for x in c]
        lines += [
            [f"P_reuse, {label}", pm((x["p_reuse"] for x in s), 1, 3), ""],
            [f"R[pair 1 -> pair 2], {label}", pm((x["reuse"][0][1] for x in s), 1, 3), ""],
            [f"R[pair 2 -> pair 1], {label}", pm((x["reuse"][1][0] for x in s), 1, 3), ""],
            [f"drop of pair 2, pair 1's mask removed, {label}", pm(x["drops"]["inverted"][0][1] for x in a),
             pm(x["drops"]["control"][0][1] for x in a)],
            [f"drop of pair 1, pair 2's mask removed, {label}", pm(x["drops"]["inverted"][1][0] for x in a),
             pm(x["drops"]["control"][1][0] for x in a)],
        ]  # fmt: skip
    hid = [r["compare"][""]["summary"].get("hidden", {}).get("pooled") for r in runs]  # none with one hidden layer
    tot = [r["compare"][""]["summary"]["all"]["pooled"] for r in runs]
    dens = [[m["density"] for m in r["compare"][""]["masks"]] for r in runs]
    lines += [
        overlap_row("hidden-layer IoU (pair 1, pair 2)", hid, "iou"),
        overlap_row("hidden-layer IoMin", hid, "iomin"),
        overlap_row("all-layer IoU", tot, "iou"),
        ["density pair 1 / pair 2 mask (%)", f"{pm(d[0] for d in dens)} / {pm(d[1] for d in dens)}", ""],
    ]
    out += ["## Reuse and overlap", "", table(["", "measured", "random control / chance"], lines), ""]
    out += [
        "Drops are relative (docs/metrics.md), in %; the control removes a random set of the same size per layer. "
        "IoU/IoMin pooled over the layers named; chance = independent random masks of the same per-layer sizes.",
        "",
    ]
    per_seed = [
        [
            r["seed"],
            " / ".join(f"{100 * v:.1f}" for v in r["compare"][""]["ablation"]["full"]),
            f"{r['compare']['']['scores']['p_reuse']:.3f}",
            step_times(r["timings"], ("base", "masks", "compare", "comparekeep_io")),
        ]
        for r in runs
    ]
    header = ["seed", "full pair 1 / pair 2 (%)", "P_reuse", "CPU seconds: base / masks / compare / compare --keep-io"]
    out += ["## Per seed", "", table(header, per_seed)]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    cli(main)
