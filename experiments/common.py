"""What the experiment scripts share: seeds, running maskprobe's CLI as subprocesses, mean ± std tables, output.

The scripts talk to maskprobe only through its command line (``python -m maskprobe ... --json``) and the sample
tasks' base-training command lines (``python -m sample_tasks.<task>``), the stable interfaces; they read mask files
with ``maskprobe.masks.maskfile.load_masks`` only where the CLI has no number for what the paper plots.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import Any

from maskprobe.atomic import atomic_write_text
from maskprobe.errors import MaskprobeError

ROOT = Path(__file__).resolve().parents[1]


def seeds_arg(text: str) -> list[int]:
    """``0-9`` / ``0,3,5`` / ``0-2,7`` -> a list of distinct non-negative integers (seeds, classes)."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi) if hi else int(lo)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected integers like 0-9, 0,3,5 or 0-2,7, got {text!r}") from None
        if last < first:
            raise argparse.ArgumentTypeError(f"range {part.strip()!r} runs backwards (write {last}-{first})")
        out += range(first, last + 1)
    if len(set(out)) != len(out):
        raise argparse.ArgumentTypeError(f"{text!r} names a value twice")
    return out


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


positive_int = at_least(1)


def arith_options(p: argparse.ArgumentParser, sizes: Iterable[str], base_help: str) -> None:
    """The model, size and step options of the two arithmetic scripts (addmul.py, double_addition.py)."""
    p.add_argument("--model", choices=("fnn", "lstm"), default="fnn")
    p.add_argument("--size", choices=tuple(sizes), default="cpu")
    p.add_argument("--hidden", help="FNN hidden sizes (overrides --size)")
    p.add_argument("--lstm-size", type=positive_int, help="LSTM units (overrides --size)")
    p.add_argument("--lstm-layers", type=positive_int, default=2)
    p.add_argument("--base-steps", type=positive_int, help=f"base-network steps (default: {base_help})")
    p.add_argument("--mask-steps", type=positive_int, help="steps per mask (overrides --size)")
    p.add_argument("--beta", type=positive_float, help="mask regulariser (default: the paper's, scaled to --mask-steps)")
    p.add_argument("--eval-size", type=positive_int, default=10_000, help="evaluation examples per task (the paper: 10,000)")


def mask_recipe(steps: int, beta: float) -> str:
    """``masks: S steps, beta B, lr 0.01, batch 128, K 4``: the settings of the scripts' masks, the rest read from
    maskprobe's defaults (the scripts pass only --steps and --beta), so the results never name stale numbers."""
    from maskprobe.config import TrainConfig

    c = TrainConfig()
    return f"masks: {steps} steps, beta {beta}, lr {c.lr:g}, batch {c.batch_size}, K {c.samples}"


def positive_float(text: str) -> float:
    """An argparse type: a finite float >= 0 (beta)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def save_json(path: Path, data: Any, **dump: Any) -> None:
    """Write ``data`` as JSON atomically (a temporary file, then a rename): a killed run or a full disk leaves the
    old file or none, never half a file that the next run would take for a finished step."""
    atomic_write_text(path, json.dumps(data, **dump) + "\n")


def load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise StepFailed(f"{path} is not valid JSON ({e}); delete it to redo that step, or rerun with --force") from None


class StepFailed(RuntimeError):
    """A command of the protocol exited non-zero; the message is one line, the stderr is in ``commands.log``."""


class Steps:
    """What each step of one seed folder was made with, in ``<folder>/steps.json``: a step's output is reused only
    when it was made with the command line asked for now, from earlier steps made with theirs.

    A step's *settings* are its command line (the output folder written ``<out>``, so a moved folder still
    matches) and the settings of the steps it reads (``after``; default: every step declared before it).
    """

    def __init__(self, folder: Path, out: Path, force: bool):
        self.path, self.out, self.force = folder / "steps.json", out, force
        self.recorded: dict[str, dict[str, str]] = load_json(self.path) if self.path.exists() else {}
        self.current: dict[str, dict[str, str]] = {}

    def todo(self, name: str, argv: Sequence[Any], outputs: Sequence[Path], after: Sequence[str] | None = None) -> bool:
        """True: run the step (``--force``, or an output is missing); False: reuse its outputs.

        Raises:
            StepFailed: the outputs exist but were made with other settings, or with none recorded.
        """
        import hashlib

        command = " ".join(str(a) for a in argv).replace(str(self.out), "<out>")
        deps = list(self.current) if after is None else list(after)
        key = hashlib.sha256("\n".join([command, *(self.current[d]["settings"] for d in deps)]).encode()).hexdigest()
        self.current[name] = {"command": command, "settings": key[:16]}
        if self.force or not all(Path(p).exists() for p in outputs):
            return True
        old = self.recorded.get(name)
        if old is not None and old.get("settings") == self.current[name]["settings"]:
            return False
        if old is None:
            why = f"{self.path} records no settings for it"
        elif old.get("command") != command:
            why = f"other settings ({_first_difference(str(old.get('command')), command)})"
        else:
            why = f"the same command but from earlier steps made with other settings ({', '.join(deps)})"
        raise StepFailed(
            f"{outputs[0]} was made with {why}; rerun with --force to redo it with these settings, or give another --out"
        )

    def done(self, name: str) -> None:
        """Record that ``name`` ran with its current settings (after its outputs were written)."""
        self.recorded[name] = self.current[name]
        save_json(self.path, self.recorded, indent=1)


def _first_difference(old: str, new: str) -> str:
    """``"--steps 30, now --steps 77"``: the first option whose value differs between two command lines."""
    a, b = old.split(), new.split()
    i = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
    start = i - 1 if i > 0 and a[i - 1 : i] == b[i - 1 : i] and a[i - 1].startswith("--") else i
    was, now = " ".join(a[start : i + 1]) or "(nothing)", " ".join(b[start : i + 1]) or "(nothing)"
    return f"was {was}, now {now}"


def cli(main: Callable[[], None]) -> None:
    """Run a script's ``main`` the way maskprobe's own commands end: a failed step, an unwritable folder or Ctrl-C
    give one line on stderr and a non-zero exit, not a traceback; finished steps stay on disk, so the same command
    continues where it stopped."""
    try:
        main()
    except StepFailed as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print("interrupted: the finished steps are kept; run the same command again to continue", file=sys.stderr)
        raise SystemExit(130) from None
    except OSError as e:
        print(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        raise SystemExit(1) from None
    except MaskprobeError as e:  # maskprobe.atomic's one-line write errors (full disk, no permission)
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def base_parser(description: str, out: str) -> argparse.ArgumentParser:
    """The options every script shares; ``out``: the default output folder as shown in ``--help``."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seeds", type=seeds_arg, default=seeds_arg("0-2"), help="one base network per seed (the paper: 0-9)")
    p.add_argument("--out", type=Path, help=f"results, tables, checkpoints, masks (default: {out})")
    p.add_argument("--jobs", type=positive_int, default=1, help="seeds run in parallel (each with --threads torch threads)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per subprocess (0: cores / jobs)")
    p.add_argument("--force", action="store_true", help="redo every step, even those whose output exists")
    return p


def default_out(args: argparse.Namespace, name: str) -> Path:
    """``--out`` as given, else ``runs/<name>/`` in the repository."""
    return args.out if args.out is not None else ROOT / "runs" / name


def machine() -> dict[str, Any]:
    """``lscpu``'s model name, the cores, Python and torch versions."""
    model = platform.processor()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(), "torch": version("torch")}


class Runner:
    """Runs the command lines as subprocesses in the repository root. Every command is appended, with its exit
    code, wall time and CPU time (user + system of that process, from ``os.wait4``), to ``<out>/commands.jsonl``
    (kept across reruns, so a rerun that skips finished steps still accounts for them) and, with its stderr, to
    ``<out>/commands.log``."""

    def __init__(self, out: Path, threads: int):
        self.out = out
        self.threads = threads
        self._lock = open(out / ".lock", "a")  # held while this process runs: one run per output folder
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StepFailed(f"another run is writing into {out}: wait for it to end, or give another --out") from None
        self.lock = threading.Lock()
        self.commands: list[dict[str, Any]] = []

    def run(
        self,
        argv: Sequence[str],
        *,
        json_out: bool = False,
        skip_if: Path | None = None,
        step: tuple[Path, str] | None = None,
    ) -> Any:
        """``argv[0]`` is a module (``maskprobe``, ``sample_tasks.scan``): run ``python -m argv...``. Returns the
        parsed stdout with ``json_out``, else the stdout. ``skip_if``: an output file that, when it exists, means
        the step is done (returns None). ``step = (seed folder, name)`` records the wall and CPU seconds under
        ``name`` in ``<seed folder>/timings.json``."""
        if skip_if is not None and skip_if.exists():
            return None
        cmd = [sys.executable, "-m", *map(str, argv)]
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "CI": "true", "PYTHONPATH": str(ROOT)}
        t0 = time.perf_counter()
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=ROOT, env=env)
            try:
                _, status, usage = os.wait4(proc.pid, 0)
            except KeyboardInterrupt:  # the child got the same SIGINT: let maskprobe save what it learned
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                raise
            proc.returncode = rc = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read().decode(), err.read().decode()
        seconds, cpu = time.perf_counter() - t0, usage.ru_utime + usage.ru_stime
        shown = "python -m " + " ".join(shlex.quote(str(a)) for a in argv)
        record = {"command": shown, "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1), "rc": rc}
        with self.lock:
            self.commands.append(record)
            with open(self.out / "commands.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            with open(self.out / "commands.log", "a") as log:
                log.write(f"$ {shown}\n# rc {rc}, {seconds:.1f} s, CPU {cpu:.1f} s\n{stderr[-4000:]}\n")
            if step is not None:
                path = step[0] / "timings.json"
                timings = load_json(path) if path.exists() else {}
                timings[step[1]] = {"seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1)}
                save_json(path, timings)
        print(f"  [{seconds:6.0f} s, CPU {cpu:6.0f} s] {shown}", file=sys.stderr, flush=True)
        if rc != 0:
            last = next((line for line in reversed(stderr.splitlines()) if line.strip()), "no output")
            raise StepFailed(f"{shown} exited with {rc}: {last.strip()} (full stderr: {self.out / 'commands.log'})")
        return json.loads(stdout) if json_out else stdout


def timings(seed_dir: Path) -> dict[str, dict[str, float]]:
    """The recorded wall / CPU seconds of a seed's steps (``Runner.run(step=...)``)."""
    path = seed_dir / "timings.json"
    return load_json(path) if path.exists() else {}


def step_times(recorded: dict[str, dict[str, float]], steps: Sequence[str]) -> str:
    """``"61 / 120 / 15"``: the CPU seconds of ``steps`` from a seed's timings (``?`` where not recorded)."""
    return " / ".join(f"{recorded[s]['cpu_seconds']:.0f}" if s in recorded else "?" for s in steps)


def totals(out: Path) -> dict[str, float]:
    """Wall and CPU seconds summed over every command ever recorded in ``<out>/commands.jsonl``."""
    path = out / "commands.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return {"commands": len(rows), "seconds": round(sum(r["seconds"] for r in rows), 1),
            "cpu_seconds": round(sum(r.get("cpu_seconds", 0.0) for r in rows), 1)}  # fmt: skip


def run_seeds(seeds: Iterable[int], jobs: int, one: Callable[[int], dict[str, Any]]) -> list[dict[str, Any]]:
    """``one(seed)`` for every seed, ``jobs`` at a time; results in seed order."""
    seeds = list(seeds)
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        return list(pool.map(one, seeds))


def threads_for(args: argparse.Namespace) -> int:
    return args.threads if args.threads > 0 else max(1, (os.cpu_count() or 1) // max(1, args.jobs))


def mean_std(values: Iterable[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1, as the paper's ``StatTracker``; 0 for one value); NaN and None
    are left out."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not xs:
        return math.nan, math.nan
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd


def pm(values: Iterable[float | None], scale: float = 100.0, digits: int = 1) -> str:
    """``"93.1 ± 2.0"`` (percent by default)."""
    m, sd = mean_std(values)
    if math.isnan(m):
        return "n/a"
    return f"{m * scale:.{digits}f} ± {sd * scale:.{digits}f}"


def overlap_row(label: str, pooled: list[dict | None], key: str, i: int = 0, j: int = 1) -> list[str]:
    """``[label, measured, chance]`` for ``key`` (``iou`` / ``iomin``) of masks i, j in compare's pooled summaries;
    a None summary (a network with one hidden layer has no hidden-to-hidden layer) gives n/a."""
    if any(x is None for x in pooled):
        return [label, "n/a (no such layer: one hidden layer?)", ""]
    return [label, pm((x[key][i][j] for x in pooled), 1, 3), pm((x[f"chance_{key}"][i][j] for x in pooled), 1, 3)]


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_outputs(out: Path, name: str, results: dict[str, Any], markdown: str) -> None:
    """``<out>/<name>.json`` (everything) and ``<out>/<name>.md`` (the tables)."""
    out.mkdir(parents=True, exist_ok=True)
    save_json(out / f"{name}.json", results, indent=1)
    atomic_write_text(out / f"{name}.md", markdown.rstrip() + "\n")
    print(markdown)
    print(f"\nwrote {out / (name + '.json')} and {out / (name + '.md')}", file=sys.stderr)


def task_args(pairs: dict[str, Any]) -> list[str]:
    """``{"model": "lstm"}`` -> ``["--task-arg", "model=lstm"]``."""
    return [x for k, v in pairs.items() for x in ("--task-arg", f"{k}={v}")]


def scaled_beta(paper_beta: float, paper_steps: int, steps: int) -> float:
    """The paper's beta at the paper's mask steps, scaled to keep ``beta * steps`` (the regulariser's total push on
    a logit under Adam) when the masks train for fewer steps: ``paper_beta * paper_steps / steps``."""
    return float(f"{paper_beta * paper_steps / steps:.3g}")


def two_mask_seed(
    runner: Runner,
    seed: int,
    out: Path,
    base: list[str],
    tasks: Sequence[str],
    targs: dict[str, Any],
    train_flags: list[str],
    compare_variants: dict[str, list[str]],
    force: bool,
) -> dict[str, Any]:
    """One seed of a two-mask experiment, all through the command lines: train the base network (``base`` is the
    sample task's command line without ``--out``/``--seed``), train one mask per task (``maskprobe train --json``),
    and compare them on the checkpoint (``maskprobe compare --checkpoint --json``), once per ``compare_variants``
    entry (name -> extra flags, e.g. ``{"": [], "keep_io": ["--keep-io"]}``)."""
    d = out / f"seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    steps = Steps(d, out, force)
    ckpt = d / "base.pt"
    cmd = [*base, "--out", ckpt, "--seed", seed]
    if steps.todo("base", cmd, [ckpt]):
        runner.run(cmd, step=(d, "base"))
        steps.done("base")
    masks = [d / "masks" / f"{t}.safetensors" for t in tasks]
    train_json = d / "train.json"
    cmd = ["maskprobe", "train", ckpt, *(x for t in tasks for x in ("--task", t)), *task_args(targs)]
    cmd += [*train_flags, "--seed", seed, "--out", d / "masks", "--json", "--quiet", "--force"]
    if steps.todo("masks", cmd, [train_json, *masks]):
        save_json(train_json, runner.run(cmd, json_out=True, step=(d, "masks")))
        steps.done("masks")
    compares = {}
    for name, flags in compare_variants.items():
        path = d / f"compare{'-' + name if name else ''}.json"
        cmd = ["maskprobe", "compare", *masks, "--checkpoint", ckpt, "--seed", seed, *flags, "--json", "--quiet"]
        if steps.todo(f"compare{name}", cmd, [path], after=("base", "masks")):
            save_json(path, runner.run(cmd, json_out=True, step=(d, f"compare{name}")))
            steps.done(f"compare{name}")
        compares[name] = load_json(path)
    return {"seed": seed, "train": load_json(train_json), "compare": compares, "timings": timings(d)}


def unlearned(runs: list[dict[str, Any]], scores: Callable[[dict[str, Any]], dict[str, float]],
              floor: float = 0.9) -> list[dict[str, Any]]:  # fmt: skip
    """The seeds whose base network failed what the masks are measured against: ``scores(run)`` gives the unmasked
    network's accuracy per task; every one below ``floor`` is listed (a mask of a task the network never learned
    measures nothing, and its removals cannot drop it)."""
    out = []
    for run in runs:
        low = {k: v for k, v in scores(run).items() if v < floor}
        if low:
            out.append({"seed": run["seed"], "below": low, "floor": floor})
    return out


def unlearned_lines(failed: list[dict[str, Any]]) -> list[str]:
    lines = []
    for f in failed:
        low = ", ".join(f"{k} {100 * v:.1f} %" for k, v in f["below"].items())
        lines.append(
            f"**Warning: seed {f['seed']}'s base network did not learn its tasks** (unmasked: {low}; below "
            f"{100 * f['floor']:.0f} %). Its numbers are in the tables below and measure nothing about modularity; "
            "rerun with more base steps (`--base-steps`) or leave the seed out."
        )
    return lines


def finish(title: str, args: argparse.Namespace, started: float, runner: Runner, runs: list[dict[str, Any]],
           fields: dict[str, Any], extra: Sequence[str], markdown: str,
           scores: Callable[[dict[str, Any]], dict[str, float]] | None = None) -> None:  # fmt: skip
    """Write ``results.json`` (``fields``, the seeds, the machine, the times, every command and run) and
    ``results.md`` (the header, ``extra`` lines, a warning per seed whose base network is below 90 % on a task by
    ``scores(run)``, then ``markdown``) into ``args.out``; the warnings also go to stderr."""
    failed = unlearned(runs, scores) if scores is not None else []
    for line in unlearned_lines(failed):
        print(line.replace("**", ""), file=sys.stderr)
    results = {
        **fields,
        "seeds": args.seeds,
        "machine": machine(),
        "wall_seconds_this_invocation": round(time.perf_counter() - started, 1),
        "totals": totals(args.out),
        "unlearned": failed,
        "commands": runner.commands,
        "runs": runs,
    }
    warnings = [line for w in unlearned_lines(failed) for line in ("", w)]
    head = "\n".join(header_lines(title, args, started, [*extra, *warnings]))
    write_outputs(args.out, "results", results, head + "\n" + markdown)


def header_lines(title: str, args: argparse.Namespace, started: float, extra: Sequence[str] = ()) -> list[str]:
    m = machine()
    t = totals(args.out)
    argv = " ".join(shlex.quote(a) for a in sys.argv[1:])
    return [
        f"# {title}",
        "",
        f"Command: `python {Path(sys.argv[0]).as_posix()} {argv}`".replace(str(ROOT) + "/", ""),
        f"Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, torch {m['torch']}; "
        f"{args.jobs} job(s) x {threads_for(args)} thread(s). All {t['commands']} commands (over every invocation that "
        f"wrote into the output folder): CPU {t['cpu_seconds'] / 60:.1f} min, wall {t['seconds'] / 60:.1f} min summed over "
        f"commands; this invocation's wall time {time.perf_counter() - started:.0f} s.",
        f"Seeds: {', '.join(map(str, args.seeds))} (mean ± sample std over seeds).",
        *extra,
        "",
    ]
