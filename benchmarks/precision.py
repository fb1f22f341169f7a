"""How much do ``--precision bf16`` and ``--adam-state bf16`` change the mask? Agreement with fp32's, against two
fp32 seeds' (issue 23 items 6 and 7).

Trains the add/mul FNN (42-256x4-20, the base recipe, seed 0), then the ``arith-mul`` mask on it at each
precision and seed (``maskprobe.learning.training.train_mask``, the defaults but ``--steps``), and prints one
markdown table (docs/method.md, "Precision: ``--precision``"): each mask's density and accuracy (the final
evaluation, always fp32), and for pairs of masks the fraction of weights on which they agree and the IoU of the
kept weights. The pair fp32 seed 0 / fp32 seed 1 is the reference: how much two fp32 runs differ anyway.

Run::

    python benchmarks/precision.py                       # bf16 vs fp32, seeds 0 and 1, 2,000 steps (~2 min, 1 core)
    python benchmarks/precision.py --beta 1e-3                           # a sparser mask
    python benchmarks/precision.py --precisions fp32,tf32 --device cuda   # on a GPU (unmeasured so far)
    python benchmarks/precision.py --precisions fp32,fp32/adam-bf16      # Adam's moments stored in bf16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HIDDEN = "256,256,256,256"


def agreement(a: dict, b: dict) -> tuple[float, float]:
    """(fraction of weights on which masks ``a`` and ``b`` agree, IoU of their kept weights)."""
    same = kept_both = kept_either = total = 0
    for name, ma in a.items():
        ma, mb = ma.bool(), b[name].bool()
        same += int((ma == mb).sum())
        kept_both += int((ma & mb).sum())
        kept_either += int((ma | mb).sum())
        total += ma.numel()
    return same / total, kept_both / kept_either if kept_either else 1.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precisions", default="fp32,bf16",
                   help="comma list of PRECISION or PRECISION/adam-STATE (--adam-state); the first is the reference")  # fmt: skip
    p.add_argument("--seeds", default="0,1", help="comma list of mask seeds")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--beta", type=float, default=1e-4)
    p.add_argument("--base-steps", type=int, default=None, help="the base recipe's steps (default: its 10,000)")
    p.add_argument("--base", type=Path, default=None, help="a trained base state dict (default: train one)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from maskprobe.config import TrainConfig
    from maskprobe.learning.training import evaluate_task, train_mask
    from maskprobe.tasks import TaskRef
    from sample_tasks.arithmetic import AddMulTask, MulTask, train_base

    precisions = args.precisions.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.base is not None:
        model = AddMulTask(hidden=HIDDEN).build_model()
        model.load_state_dict(torch.load(args.base, map_location="cpu", weights_only=True))
    else:
        model = train_base(AddMulTask(hidden=HIDDEN), steps=args.base_steps, seed=0)
    task = MulTask(hidden=HIDDEN)
    ref = TaskRef("arith-mul", {"hidden": HIDDEN})
    print(f"base network: arith-mul accuracy {evaluate_task(model, task)['accuracy']:.4f}", file=sys.stderr)

    masks, rows = {}, []
    for prec in precisions:
        for seed in seeds:
            precision, _, state = prec.partition("/adam-")
            config = TrainConfig(steps=args.steps, beta=args.beta, seed=seed, precision=precision,
                                 adam_state=state or "fp32", device=args.device)  # fmt: skip
            r = train_mask(model, task, ref, config)
            masks[prec, seed] = {n: m.cpu() for n, m in r.masks.items()}
            rows.append((f"{prec} seed {seed}", r.density()["total"], r.metric_masked["accuracy"]))
            print(f"{prec} seed {seed}: done", file=sys.stderr)

    print(f"arith-mul masks on the 42-256x4-20 FNN, {args.steps} steps, beta {args.beta:g}, {args.device}\n")
    print("| mask | density | accuracy (fp32 evaluation) |\n|---|---|---|")
    for name, density, acc in rows:
        print(f"| {name} | {100 * density:.2f} % | {acc:.4f} |")
    print("\n| pair | weights agreeing | IoU of kept weights |\n|---|---|---|")
    first = precisions[0]
    pairs = [((first, s), (prec, s)) for prec in precisions[1:] for s in seeds]
    pairs += [((prec, a), (prec, b)) for prec in precisions for i, a in enumerate(seeds) for b in seeds[i + 1 :]]
    for x, y in pairs:
        agree, iou = agreement(masks[x], masks[y])
        print(f"| {x[0]} seed {x[1]} / {y[0]} seed {y[1]} | {100 * agree:.2f} % | {iou:.4f} |")


if __name__ == "__main__":
    main()
