"""Threads on a quiet and on a busy CPU: what ``--threads`` and its default cost.

For each scenario — ``quiet`` (nothing else running) and ``busy`` (one competing process spinning on a core for
the whole measurement) — runs a fresh subprocess per thread setting (1, every core, and the default
``maskprobe.devices.default_threads()`` chooses at start-up) that times mask steps of the paper's FNN
42-2000x4-20 (batch 128, K=4; the calls ``training.run`` makes through ``FusedEngine``) and prints the median
step time; the ratio to the quiet one-thread step is what to read. The busy scenario starts its competitor,
waits ``--settle`` seconds so that the 1-minute load average (which the default reads) has seen it, then
measures.

Run::

    python benchmarks/threads.py                  # quiet and busy
    python benchmarks/threads.py --scenarios busy --steps 15
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, statistics, sys, time, torch
sys.path.insert(0, sys.argv[1])
from maskprobe.devices import default_threads, set_threads
threads = int(sys.argv[2]); steps = int(sys.argv[3])
chosen = set_threads(None if threads == 0 else threads)
import torch.nn.functional as F
from maskprobe.learning.batching import split_batch
from maskprobe.config import TrainConfig
from maskprobe.learning.engine import FusedEngine
from sample_tasks.arithmetic import AddMulTask, build_fnn
model = build_fnn(42, [2000] * 4, 20)
x, y = AddMulTask().sample(128, torch.Generator().manual_seed(0))
loss = lambda m, b: F.cross_entropy(m(b[0]).view(-1, 10), b[1].reshape(-1))
engine = FusedEngine(model, TrainConfig(samples=4))
times = []
for t in range(steps + 2):
    t0 = time.perf_counter()
    with engine.frozen():
        engine.backward(t, split_batch((x, y), 4), range(4), 4, loss)
        engine.update(t, 1e-4 / 128, 1.0)
    if t >= 2:
        times.append(time.perf_counter() - t0)
print(json.dumps({"threads": chosen, "ms": 1e3 * statistics.median(times)}))
"""


def measure(threads: int, steps: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(threads), str(steps)], capture_output=True,
                         text=True, check=True, env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"})  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", default="quiet,busy")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--settle", type=float, default=60.0, help="seconds the competitor runs before the busy measurement")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    settings = [("1 thread", 1), (f"{cores} threads", cores), ("default", 0)]
    results: dict = {"cores": cores, "load_before": list(os.getloadavg()), "scenarios": {}}
    for scenario in args.scenarios.split(","):
        hog = None
        if scenario == "busy":
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(args.settle)
        try:
            rows = {}
            for label, n in settings:
                r = measure(n, args.steps)
                rows[label] = r
                print(f"[{scenario}] {label:<10} ({r['threads']} used): {r['ms']:8.1f} ms/step  load {os.getloadavg()[0]:.2f}",
                      flush=True)  # fmt: skip
            results["scenarios"][scenario] = rows
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
    base = results["scenarios"].get("quiet", {}).get("1 thread", {}).get("ms")
    if base:
        for scenario, rows in results["scenarios"].items():
            print(scenario, {k: f"x{v['ms'] / base:.2f}" for k, v in rows.items()})
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
