"""The paper's SCAN experiment (Csordás et al. 2021, §4.3 / §5, systematic generalization), end to end through
maskprobe's command line, for the LSTM encoder-decoder or the Transformer.

Per seed:

1. a base network trained on SCAN's ``simple`` split (``python -m sample_tasks.scan``);
2. one mask per split, each on that split's **train** set: ``simple`` (the control, "IID" mask), ``jump``,
   ``length``, ``turn-left`` (``maskprobe train --task scan-simple --task scan-jump ...``); ``train --json`` gives
   each split's **test** accuracy of the unmasked network and of the split's own mask (the tasks' ``eval_on=test``);
3. the simple (control) mask scored on the jump, length and turn-left test sets (``maskprobe evaluate --mask``):
   the paper's "before" bars, beside each split's own mask ("after");
4. the overlap of every split's mask with the control mask (``maskprobe compare``, structural);
5. the decoder's output layer (``output.weight``, one row per output token): for each token ``t``, the share of
   the control mask's weights that the jump mask does not keep,

       removed[t] = |{k : C[t, k] and not J[t, k]}| / |{k : C[t, k]}|

   with ``C`` / ``J`` the control / jump masks of that row (the paper code's ``plot_scan_output_token_removed_
   percentage.py``: ``(m_base & ~m_jump).sum(-1) / m_base.sum(-1)``), read from the two mask files with
   ``safetensors``; the same for the turn-left and length masks.

Sizes (``--size``): ``cpu`` (default) the tasks' ``size=cpu`` preset (LSTM 2 x 64, Transformer d_model 64, 2 + 2
layers), the base recipe (2,000 steps) and 2,000 mask steps (500 left the masks too little time to prune and
showed nothing, docs/paper.md; about 20 / 30 CPU minutes per seed for the LSTM / Transformer); ``paper``: the
paper's sizes, its base recipe (25,000 steps, lr 1e-3, batch 256) and 25,000 mask steps. beta: the paper's 3e-5
(LSTM, ``sweeps/scan.yaml``) and 6e-4 (Transformer, ``sweeps/trafo_scan.yaml``) at 25,000 steps, scaled to
``beta * 25000 / steps`` for shorter masks (LSTM 3.75e-4, Transformer 7.5e-3 at 2,000 steps); ``--beta``
overrides. The LSTM's biases stay unmasked as in the paper's code (maskprobe's default selection).

Run::

    python experiments/scan.py --model lstm
    python experiments/scan.py --model transformer --seeds 0-9 --size paper
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.common import (  # noqa: E402
    Runner,
    Steps,
    at_least,
    base_parser,
    cli,
    default_out,
    finish,
    load_json,
    mask_recipe,
    mean_std,
    pm,
    positive_float,
    positive_int,
    run_seeds,
    save_json,
    scaled_beta,
    step_times,
    table,
    task_args,
    threads_for,
    timings,
)

PAPER_BETA, PAPER_STEPS = {"lstm": 3e-5, "transformer": 6e-4}, 25_000
SPLITS = ("simple", "jump", "length", "turn-left")
TASKS = tuple(f"scan-{s}" for s in SPLITS)
TOKENS = ("<eos>", "I_WALK", "I_LOOK", "I_RUN", "I_JUMP", "I_TURN_LEFT", "I_TURN_RIGHT")  # output.weight rows
SIZES = {
    "cpu": {"base": [], "mask_steps": 2000},
    "paper": {"base": ["--size", "paper", "--lr", "1e-3", "--batch-size", "256", "--steps", "25000"], "mask_steps": 25_000},
}


count = at_least(0)  # --eval-size 0: every test command


def key_value(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. hidden=32), got {text!r}")
    if key.strip() in ("hidden", "layers", "embedding", "heads", "ff"):  # 0: the preset's; < 0 ran it, recorded as given
        try:
            ok = int(value) >= 0
        except ValueError:
            ok = False
        if not ok:
            raise argparse.ArgumentTypeError(f"{key.strip()} must be a size >= 1 (or 0: the preset's), got {value.strip()!r}")
    return key.strip(), value.strip()


def removed_share(control: Path, other: Path, layer: str = "output.weight") -> list[float]:
    """Per output token (row of ``layer``): the share of the control mask's weights the other mask does not keep."""
    from safetensors.torch import load_file

    c, o = load_file(str(control))[layer], load_file(str(other))[layer]
    kept = c.sum(1).clamp(min=1)
    return ((c & ~o).sum(1) / kept).tolist()


def one_seed(runner: Runner, args: Any, seed: int, targs: dict, base: list, train_flags: list) -> dict[str, Any]:
    d = args.out / f"seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    steps = Steps(d, args.out, args.force)
    ckpt = d / "base.pt"
    base_cmd = [*base, "--out", ckpt, "--seed", seed, "--eval-size", args.eval_size]
    if steps.todo("base", base_cmd, [ckpt]):
        runner.run(base_cmd, step=(d, "base"))
        steps.done("base")
    masks = {s: d / "masks" / f"scan-{s}.safetensors" for s in SPLITS}
    files = {name: d / f"{name}.json" for name in ("train", "evaluate", "compare")}
    cmd = ["maskprobe", "train", ckpt, *(x for t in TASKS for x in ("--task", t)), *task_args(targs), *train_flags]
    cmd += ["--seed", seed, "--out", d / "masks", "--json", "--quiet", "--force"]
    if steps.todo("masks", cmd, [files["train"], *masks.values()]):
        save_json(files["train"], runner.run(cmd, json_out=True, step=(d, "masks")))
        steps.done("masks")
    cmd = ["maskprobe", "evaluate", ckpt, *(x for t in TASKS[1:] for x in ("--task", t)), *task_args(targs)]
    cmd += ["--mask", masks["simple"], "--json"]
    if steps.todo("evaluate", cmd, [files["evaluate"]], after=("base", "masks")):
        save_json(files["evaluate"], runner.run(cmd, json_out=True, step=(d, "evaluate")))
        steps.done("evaluate")
    cmd = ["maskprobe", "compare", *masks.values(), "--json", "--quiet"]
    if steps.todo("compare", cmd, [files["compare"]], after=("masks",)):
        save_json(files["compare"], runner.run(cmd, json_out=True, step=(d, "compare")))
        steps.done("compare")
    train = load_json(files["train"])
    evaluate = load_json(files["evaluate"])
    by_task = {m["task"]: m for m in train["masks"]}
    control_on = {r["task"]: r["masked"] for r in evaluate["results"]}
    control_on["scan-simple"] = by_task["scan-simple"]["metric_masked"]
    metrics = {
        "unmasked": {t: by_task[t]["metric_full"] for t in TASKS},
        "own_mask": {t: by_task[t]["metric_masked"] for t in TASKS},
        "control_mask": {t: control_on[t] for t in TASKS},
    }
    return {
        "seed": seed,
        **{k: {t: m["accuracy"] for t, m in v.items()} for k, v in metrics.items()},
        **{f"{k}_token": {t: m["token_accuracy"] for t, m in v.items()} for k, v in metrics.items()},
        "density": {t: by_task[t]["density"] for t in TASKS},
        "removed_from_control": {s: removed_share(masks["simple"], masks[s]) for s in SPLITS[1:]},
        "train": train,
        "evaluate": evaluate,
        "compare": load_json(files["compare"]),
        "timings": timings(d),
    }


def main(argv: list[str] | None = None) -> None:
    p = base_parser(__doc__.split("\n")[0], "runs/scan-<model>-<size>/")
    p.add_argument("--model", choices=("lstm", "transformer"), default="lstm")
    p.add_argument("--size", choices=tuple(SIZES), default="cpu")
    p.add_argument("--base-steps", type=positive_int, help="base-network steps (default: the base recipe's)")
    p.add_argument("--mask-steps", type=positive_int, help="steps per mask (overrides --size)")
    p.add_argument("--beta", type=positive_float, help="mask regulariser (default: the paper's, scaled to --mask-steps)")
    p.add_argument("--eval-size", type=count, default=1000, help="test commands scored per split, a seeded subset (0: all)")
    p.add_argument(
        "--arch", action="append", type=key_value, default=[], metavar="KEY=VALUE", help="architecture override: hidden=32"
    )
    args = p.parse_args(argv)
    args.out = default_out(args, f"scan-{args.model}-{args.size}")
    started = time.perf_counter()
    preset = SIZES[args.size]
    steps = args.mask_steps or preset["mask_steps"]
    beta = args.beta if args.beta is not None else scaled_beta(PAPER_BETA[args.model], PAPER_STEPS, steps)
    arch = dict(args.arch)
    targs: dict = {"model": args.model, "size": args.size, "eval_size": args.eval_size, **arch}
    base = ["sample_tasks.scan", "--model", args.model, *preset["base"], *(x for k, v in arch.items() for x in (f"--{k}", v))]
    if args.base_steps:
        base += ["--steps", args.base_steps]
    train_flags = ["--steps", steps, "--beta", beta]
    args.out.mkdir(parents=True, exist_ok=True)
    runner = Runner(args.out, threads_for(args))
    runs = run_seeds(args.seeds, args.jobs, lambda s: one_seed(runner, args, s, targs, base, train_flags))
    fields = {
        "experiment": "scan",
        "model": args.model,
        "size": args.size,
        "task_args": targs,
        "mask_steps": steps,
        "beta": beta,
        "tokens": TOKENS,
    }
    extra = [f"Model: {targs}; {mask_recipe(steps, beta)}."]
    finish(f"SCAN ({args.model})", args, started, runner, runs, fields, extra, report(runs), simple_score)


def simple_score(run: dict) -> dict[str, float]:
    """The unmasked network on the simple split's test set, the one it was trained for (``finish``'s check)."""
    return {"scan-simple": run["unmasked"]["scan-simple"]}


def report(runs: list[dict]) -> str:
    rows, tok = [], []
    for t in TASKS:
        own = pm(r["own_mask"][t] for r in runs) if t != "scan-simple" else "(the control)"
        rows.append([t, pm(r["unmasked"][t] for r in runs), pm(r["control_mask"][t] for r in runs), own])
        tok.append([t, *(pm(r[k][t] for r in runs) for k in ("unmasked_token", "control_mask_token", "own_mask_token"))])
    out = ["## Test-set accuracy (%, exact sequence, greedy)", ""]
    out += [table(["split (its test set)", "unmasked network", "control (simple) mask", "the split's own mask"], rows), ""]
    out += ["The control mask is trained on the simple split's train set; each split's own mask on that split's train set.", ""]
    out += ["Token accuracy (%, per target position, greedy):", ""]
    out += [table(["split (its test set)", "unmasked network", "control (simple) mask", "the split's own mask"], tok), ""]
    shares = []
    for s in SPLITS[1:]:
        cells = [pm((r["removed_from_control"][s][k] for r in runs), digits=0) for k in range(len(TOKENS))]
        shares.append([f"{s} mask", *cells])
    out += ["## Output layer: control-mask weights absent from the split's mask, per output token (%)", ""]
    out += [table(["", *TOKENS], shares), ""]
    out += ["removed[t] = |C_t AND NOT M_t| / |C_t| over row t of `output.weight` (C: control mask, M: the split's mask).", ""]
    ov = []
    for i, t in enumerate(TASKS):
        dens = pm(r["density"][t] for r in runs)
        iou = [r["compare"]["summary"]["all"]["pooled"] for r in runs]
        if i == 0:
            ov.append([t, dens, "", ""])
        else:
            ov.append([t, dens, pm((x["iou"][0][i] for x in iou), 1, 3), pm((x["chance_iou"][0][i] for x in iou), 1, 3)])
    out += ["## Masks", "", table(["mask", "density (%)", "IoU with control mask", "chance"], ov), ""]
    per_seed = []
    for r in runs:
        times = step_times(r["timings"], ("base", "masks", "evaluate", "compare"))
        per_seed.append([r["seed"], f"{100 * r['unmasked']['scan-simple']:.1f}", times])
    out += ["## Per seed", "", table(["seed", "unmasked, simple test (%)", "CPU s: base / masks / evaluate / compare"], per_seed)]
    m, _ = mean_std(r["removed_from_control"]["jump"][TOKENS.index("I_JUMP")] for r in runs)
    out += ["", f"I_JUMP row, jump mask: {100 * m:.0f} % of the control mask's weights removed (mean over seeds)."]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    cli(main)
