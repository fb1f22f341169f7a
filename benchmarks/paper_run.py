"""A short paper-size add/mul run on one device: base network, then one mask per backend, steps/s of the loop.

The paper's FNN (42-2000x4-20, batch 128, K=4, beta 1e-4; DESIGN §2): the base network is trained with the sample
task's recipe for ``--base-steps`` steps on ``--device``, then ``train_mask`` learns the add mask for ``--steps``
steps with each backend. A first short run per backend compiles (the compile backend) and is not timed; the rate
is the loop's own (``StepEvent.steps_per_s`` of the last event). Prints one JSON line per backend.

Run::

    python benchmarks/paper_run.py --device cuda --backends compile,torch      # benchmarks/gpu.sh runs this
    python benchmarks/paper_run.py --device cpu --hidden 64,64 --base-steps 50 --steps 20 --backends compile,torch
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskprobe.config import TrainConfig  # noqa: E402
from maskprobe.learning.fitting import fit  # noqa: E402
from maskprobe.learning.training import train_mask  # noqa: E402
from maskprobe.tasks import TaskRef  # noqa: E402
from sample_tasks.arithmetic import AddMulTask, AddTask  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--hidden", default="2000,2000,2000,2000")
    p.add_argument("--base-steps", type=int, default=2000)
    p.add_argument("--steps", type=int, default=1000, help="mask steps timed per backend")
    p.add_argument("--warmup", type=int, default=10, help="mask steps run first per backend, not timed (compiles)")
    p.add_argument("--backends", default="compile,torch")
    p.add_argument("--samples", type=int, default=4)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    t0 = time.perf_counter()
    base = fit(AddMulTask(hidden=args.hidden, eval_size=1000), seed=0, device=device,
               recipe=AddMulTask(hidden=args.hidden).base_recipe().with_steps(args.base_steps))  # fmt: skip
    if device.type == "cuda":
        torch.cuda.synchronize()
    base_s = time.perf_counter() - t0
    rate = round(args.base_steps / base_s, 1)
    base_info = {"device": str(device), "steps": args.base_steps, "seconds": round(base_s, 2), "steps_per_s": rate}
    print(json.dumps({"base": base_info}))
    task = AddTask(hidden=args.hidden, eval_size=1000)
    for backend in args.backends.split(","):
        events = []
        for steps in (args.warmup, args.steps):
            config = TrainConfig(steps=steps, samples=args.samples, seed=0, device=str(device), backend=backend,
                                 log_every=max(1, steps // 4), eval_every=steps)  # fmt: skip
            t1 = time.perf_counter()
            result = train_mask(base, task, TaskRef("arith-add", {}), config, callback=events.append)
            wall = time.perf_counter() - t1
        last = events[-1]
        print(json.dumps({"backend": result.engine.get("backend"), "device": str(device), "steps": args.steps,
                          "steps_per_s": round(last.steps_per_s, 1), "wall_s": round(wall, 2),
                          "density": round(result.density()["total"], 4), "accuracy_full": result.metric_full.get("accuracy"),
                          "accuracy_masked": result.metric_masked.get("accuracy")}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
