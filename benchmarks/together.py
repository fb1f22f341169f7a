"""M masks of one frozen model alone (one after the other) against together (``train --together``), one run.

The masks of a ``--seeds`` sweep of the add task on an add/mul FNN; the same settings both ways; prints one JSON
line: seconds alone, seconds together, the ratio, and the lowest fraction of weights on which a mask agrees with
its twin. A first short run of each way warms up (numba, the compile backend, CUDA) and is not timed.

Run::

    python benchmarks/together.py --device cpu --hidden 256,256,256,256 --masks 4 --steps 200
    python benchmarks/together.py --device cuda --hidden 2000,2000,2000,2000 --masks 10 --steps 500   # benchmarks/gpu.sh
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskprobe.config import TrainConfig  # noqa: E402
from maskprobe.learning.fitting import fit  # noqa: E402
from maskprobe.learning.runs import TrainRequest, train_masks  # noqa: E402
from maskprobe.masks.maskfile import load_masks  # noqa: E402
from maskprobe.tasks import load_task  # noqa: E402
from sample_tasks.arithmetic import AddMulTask  # noqa: E402


def timed(ckpt: Path, hidden: str, out: Path, masks: int, steps: int, device: str, samples: int, together: bool) -> float:
    task = load_task("arith-add", {"hidden": hidden, "eval_size": 256})
    config = TrainConfig(steps=steps, samples=samples, device=device, log_every=max(1, steps // 4), eval_every=steps)
    request = TrainRequest(checkpoint=ckpt, tasks=[task], out=out, config=config, seeds=tuple(range(masks)),
                           force=True, together=together, memory_limit=None)  # fmt: skip
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    train_masks(request)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--hidden", default="256,256,256,256")
    p.add_argument("--masks", type=int, default=4)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--base-steps", type=int, default=300)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = fit(AddMulTask(hidden=args.hidden), seed=0, device=torch.device(args.device),
                   recipe=AddMulTask(hidden=args.hidden).base_recipe().with_steps(args.base_steps))  # fmt: skip
        ckpt = root / "base.pt"
        torch.save({k: v.cpu() for k, v in base.state_dict().items()}, ckpt)
        for together in (False, True):  # warm-up
            timed(ckpt, args.hidden, root / "warm", 2, 3, args.device, args.samples, together)
        alone = timed(ckpt, args.hidden, root / "alone", args.masks, args.steps, args.device, args.samples, False)
        both = timed(ckpt, args.hidden, root / "together", args.masks, args.steps, args.device, args.samples, True)
        agree = []
        for s in range(args.masks):
            a, b = (load_masks(root / w / f"arith-add.seed{s}.safetensors").masks for w in ("alone", "together"))
            agree.append(sum(int((a[n] == b[n]).sum()) for n in a) / sum(t.numel() for t in a.values()))
    print(json.dumps({"device": args.device, "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                      "hidden": args.hidden, "masks": args.masks, "steps": args.steps, "samples": args.samples,
                      "alone_s": round(alone, 2), "together_s": round(both, 2), "together_over_alone": round(both / alone, 3),
                      "min_agreement": round(min(agree), 6)}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
