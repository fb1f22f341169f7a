"""The paper's class-removal experiment (Csordás et al. 2021, §4, CIFAR-10 there), on scikit-learn's bundled
8x8 digits, end to end through maskprobe's command line.

Per seed: a base CNN on all ten classes (``python -m sample_tasks.digits``), a control mask on every class
(``maskprobe train --task digits``), one removal mask per class ``c`` trained on the data without ``c`` with the
control's output layer copied and frozen (``--task-arg removed=c --fix-from control.safetensors``, the paper's
``keep_last_layer``), and one comparison of the control with every removal mask on the checkpoint (``maskprobe
compare --checkpoint``), whose ``ablation.class_removal`` holds, per removal mask, the relative drop of every
class's accuracy (only that mask kept, against the control mask). Then mean ± std over seeds of, per class:

* the removed class's relative drop, beside the largest drop of any other class (the paper: the removed class
  breaks, the others mostly survive);
* the removal mask's density and its share of the control mask's weights.

Sizes: ``cpu`` (default; 16-channel CNN, base 1,500 steps, masks 1,500 steps, beta 1e-4) or ``paper`` (masks
20,000 steps; the digits CNN is far smaller than the paper's CIFAR network either way). ``--classes 0-9``
chooses the removed classes.

Run::

    python experiments/class_removal.py                   # 3 seeds, all ten classes
    python experiments/class_removal.py --seeds 0-9 --classes 0,3,8
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.common import (  # noqa: E402
    Runner,
    Steps,
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
    seeds_arg,
    step_times,
    table,
    threads_for,
    timings,
)

SIZES = {"cpu": {"base_steps": 1500, "mask_steps": 1500}, "paper": {"base_steps": 1500, "mask_steps": 20_000}}


def one_seed(runner: Runner, seed: int, out: Path, classes: list[int], flags: list[str], base_steps: int,
             force: bool) -> dict:  # fmt: skip
    d = out / f"seed{seed}"
    (d / "masks").mkdir(parents=True, exist_ok=True)
    steps = Steps(d, out, force)
    ckpt = d / "base.pt"
    base = ["sample_tasks.digits", "--out", ckpt, "--seed", seed, "--steps", base_steps]
    if steps.todo("base", base, [ckpt]):
        runner.run(base, step=(d, "base"))
        steps.done("base")
    control = d / "masks" / "control.safetensors"
    trains = {}
    cmd = ["maskprobe", "train", ckpt, "--task", "digits", *flags, "--seed", seed, "--out", control, "--json", "-q",
           "--force"]  # fmt: skip
    if steps.todo("control", cmd, [control]):
        trains["control"] = runner.run(cmd, json_out=True, step=(d, "control"))
        steps.done("control")
    removal = [d / "masks" / f"without-{c}.safetensors" for c in classes]
    for c, path in zip(classes, removal, strict=True):
        cmd = ["maskprobe", "train", ckpt, "--task", "digits", "--task-arg", f"removed={c}", "--task-arg",
               f"name=without-{c}", "--fix-from", control, *flags, "--seed", seed, "--out", path, "--json", "-q",
               "--force"]  # fmt: skip
        if steps.todo(f"without-{c}", cmd, [path], after=("base", "control")):
            trains[f"without-{c}"] = runner.run(cmd, json_out=True, step=(d, f"without-{c}"))
            steps.done(f"without-{c}")
    path = d / "compare.json"
    cmd = ["maskprobe", "compare", control, *removal, "--checkpoint", ckpt, "--seed", seed, "--json", "-q",
           "--min-density", "0"]  # fmt: skip
    if steps.todo("compare", cmd, [path], after=("base", "control", *(f"without-{c}" for c in classes))):
        save_json(path, runner.run(cmd, json_out=True, step=(d, "compare")))
        steps.done("compare")
    return {"seed": seed, "compare": load_json(path), "timings": timings(d)}


def main(argv: list[str] | None = None) -> None:
    p = base_parser(__doc__.split("\n")[0], "runs/class-removal-<size>/")
    p.add_argument("--size", choices=tuple(SIZES), default="cpu")
    p.add_argument("--classes", type=seeds_arg, default=seeds_arg("0-9"), help="the classes removed, one mask each")
    p.add_argument("--base-steps", type=positive_int, help="base-network steps (overrides --size)")
    p.add_argument("--mask-steps", type=positive_int, help="steps per mask (overrides --size)")
    p.add_argument("--beta", type=positive_float, default=1e-4, help="mask regulariser")
    args = p.parse_args(argv)
    args.out = default_out(args, f"class-removal-{args.size}")
    started = time.perf_counter()
    preset = SIZES[args.size]
    steps = args.mask_steps or preset["mask_steps"]
    base_steps = args.base_steps or preset["base_steps"]
    flags = ["--steps", steps, "--beta", args.beta]
    args.out.mkdir(parents=True, exist_ok=True)
    runner = Runner(args.out, threads_for(args))
    runs = run_seeds(args.seeds, args.jobs, lambda s: one_seed(runner, s, args.out, args.classes, flags, base_steps, args.force))
    fields = {
        "experiment": "class_removal",
        "size": args.size,
        "classes": args.classes,
        "mask_steps": steps,
        "base_steps": base_steps,
        "beta": args.beta,
    }
    extra = [f"Digits CNN (16 channels), base {base_steps} steps; {mask_recipe(steps, args.beta)}; "
             "removal masks with --fix-from the control (output layer copied, frozen)."]  # fmt: skip
    finish("Class removal (digits)", args, started, runner, runs, fields, extra, report(runs, args.classes), full_score)


HEADER = ["class removed", "its relative drop (%)", "largest drop of another class (%)", "mask density (%)",
          "share of the control's weights (%)"]  # fmt: skip


def full_score(run: dict) -> dict[str, float]:
    """The unmasked network's accuracy over every class (``finish``'s base-network check)."""
    return {"digits": run["compare"]["ablation"]["full"][0]}


def report(runs: list[dict], classes: list[int]) -> str:
    rows = []
    gaps = []
    for c in classes:
        entries, dens, share = [], [], []
        for r in runs:
            cmp = r["compare"]
            cr = {e["mask"]: e for e in cmp["ablation"].get("class_removal", [])}
            e = cr.get(f"without-{c}")
            if e is None:
                continue
            entries.append(e)
            labels = [m["label"] for m in cmp["masks"]]
            i = labels.index(f"without-{c}")
            dens.append(cmp["masks"][i]["density"])
            total = cmp["total"]
            share.append(total["intersection"][0][i] / max(total["counts"][0], 1))
        gaps.append([e["removed_drop"] - e["largest_other_drop"] for e in entries])
        rows.append([c, pm(e["removed_drop"] for e in entries), pm(e["largest_other_drop"] for e in entries),
                     pm(dens), pm(share)])  # fmt: skip
    full = [r["compare"]["ablation"]["full"][0] for r in runs]
    kept = [r["compare"]["ablation"]["kept"][0][0] for r in runs]
    ctrl_density = [r["compare"]["masks"][0]["density"] for r in runs]
    flat = [g for row in gaps for g in row]
    m, _ = mean_std(flat)
    out = [
        "## Per removed class",
        "",
        table(HEADER, rows),
        "",
        "Relative drop of a class's accuracy with only the removal mask kept, against the control mask, evaluated on "
        "every class (docs/metrics.md, 'Class removal').",
        "",
        f"Unmasked network: {pm(full)} % accuracy; the control mask alone: {pm(kept)} % at density {pm(ctrl_density)} %. "
        f"Removed-class drop minus the largest other drop, over every class and seed: mean {100 * m:.1f} points; "
        f"positive in {sum(g > 0 for g in flat)} of {len(flat)} masks.",
        "",
    ]
    per_seed = [[r["seed"], step_times(r["timings"], ("base", "control", "compare"))] for r in runs]
    out += ["## Per seed", "", table(["seed", "CPU seconds: base / control mask / compare"], per_seed)]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    cli(main)
