"""``maskprobe train`` end to end vs the engine's bare mask step, and several masks in one run vs one run each.

Measures, in one process run, on the paper's add/mul FNN (``--hidden``, default 2000,2000,2000,2000):

* ``engine``: the bare mask step of ``benchmarks/train_step.py`` (same batch every step, no data, no
  progress) -- the ceiling;
* ``library``: ``maskprobe.learning.training.train_mask`` (fresh data every step, loss read back, progress events);
* ``cli``: ``maskprobe train`` in a subprocess (checkpoint loading, progress lines, mask file), per step:
  the difference between a run of ``2N`` and of ``N`` steps divided by ``N`` (start-up, loading and the
  final evaluation cancel out);
* ``--seeds 0,1`` in one ``maskprobe train`` run vs two runs, wall time (start-up, checkpoint and
  compiled kernels shared).

Run::

    python benchmarks/train_end_to_end.py                     # paper size, K=4, N=20 steps
    python benchmarks/train_end_to_end.py --hidden 256,256,256,256 --steps 100
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
THREADS = 0  # --threads: torch threads here and OMP_NUM_THREADS of the CLI subprocesses (0: leave as is)
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from maskprobe.learning.training import TrainConfig, train_mask  # noqa: E402
from maskprobe.tasks import TaskRef  # noqa: E402
from sample_tasks.arithmetic import AddTask  # noqa: E402


def cli_seconds(ckpt: Path, out: Path, hidden: str, steps: int, samples: int, *extra: str) -> float:
    cmd = [sys.executable, "-m", "maskprobe", "train", str(ckpt), "--task", "arith-add", "--task-arg", f"hidden={hidden}",
           "--task-arg", "eval_size=1000", "--out", str(out), "--steps", str(steps), "--samples", str(samples),
           "--device", "cpu", "--force", *extra]  # fmt: skip
    env = {**os.environ, "CI": "true", **({"OMP_NUM_THREADS": str(THREADS)} if THREADS else {})}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=ROOT)
    return time.perf_counter() - t0


def library_seconds(model: torch.nn.Module, hidden: str, steps: int, samples: int) -> float:
    """Seconds per step of train_mask's loop, from its own progress clock between its first and last report
    (the first steps, which load the compiled kernels and touch fresh buffers, and the evaluation excluded)."""
    events = []
    cfg = TrainConfig(steps=steps, samples=samples, log_every=max(1, steps // 4), eval_batch_size=1000)
    train_mask(model, AddTask(hidden=hidden, eval_size=1000), TaskRef("arith-add", {}), cfg, callback=events.append)
    return (events[-1].elapsed - events[0].elapsed) / (events[-1].step - events[0].step)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", default="2000,2000,2000,2000")
    p.add_argument("--steps", type=int, default=20, help="N (the CLI also runs 2N)")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--threads", type=int, default=0, help="torch threads, also for the CLI runs (0: leave as is)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    global THREADS
    THREADS = args.threads
    if args.threads:
        torch.set_num_threads(args.threads)
    from train_step import interleaved, mask_step

    from sample_tasks.arithmetic import build_fnn, parse_hidden

    torch.manual_seed(0)
    model = build_fnn(42, parse_hidden(args.hidden), 20)
    res: dict = {"hidden": args.hidden, "samples": args.samples, "steps": args.steps, "torch": torch.__version__,
                 "threads": torch.get_num_threads(), "load_before": os.getloadavg(),
                 "command": " ".join(["python", *sys.argv])}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "fnn.pt"
        torch.save(model.state_dict(), ckpt)
        task = AddTask(hidden=args.hidden)
        batch = task.sample(128, torch.Generator().manual_seed(0))
        step, _ = mask_step(model, batch, task.loss, args.samples, "auto")
        res["engine_s_per_step"] = interleaved({"engine": step}, max(5, args.steps // 2), torch.device("cpu"))["engine"]
        res["library_s_per_step"] = library_seconds(model, args.hidden, args.steps, args.samples)
        n = cli_seconds(ckpt, Path(tmp) / "a", args.hidden, args.steps, args.samples)
        n2 = cli_seconds(ckpt, Path(tmp) / "b", args.hidden, 2 * args.steps, args.samples)
        res["cli_s_per_step"] = (n2 - n) / args.steps
        res["cli_run_s"] = {"N": n, "2N": n2}
        one = cli_seconds(ckpt, Path(tmp) / "c", args.hidden, args.steps, args.samples, "--seed", "0")
        two = cli_seconds(ckpt, Path(tmp) / "d", args.hidden, args.steps, args.samples, "--seeds", "0,1")
        res["one_mask_run_s"], res["two_masks_one_run_s"] = one, two
        res["second_mask_cost_vs_second_run"] = (two - one) / one
    for key in ("engine", "library", "cli"):
        v = res[f"{key}_s_per_step"]
        print(f"{key:<8} {1e3 * v:8.1f} ms/step  {1 / v:6.2f} steps/s  x{v / res['engine_s_per_step']:.3f} of engine")
    print(f"one mask, one run: {one:.1f} s; two masks (--seeds 0,1), one run: {two:.1f} s; "
          f"the second mask costs {100 * res['second_mask_cost_vs_second_run']:.0f} % of a second run")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
