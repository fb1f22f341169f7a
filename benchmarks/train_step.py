"""Mask step vs plain fine-tuning step, measured side by side in one process run.

For each model (the paper's FNN 42-2000x4-20 at batch 128, a small CNN, a small transformer) and device
(CPU; CUDA when present) this times, interleaved round-robin and reported as medians:

* ``plain``: one Adam fine-tuning step of all parameters (``torch.optim.Adam(fused=True)``, the fastest
  torch Adam; ``plain-foreach`` is the default ``Adam()`` for reference);
* ``mask K=k``: maskprobe's mask step with k samples (the batch split into k chunks), exactly the calls
  ``maskprobe.learning.training.train_mask`` makes: ``MaskLogits.sample`` per chunk, the task loss through
  ``functional_call``, ``autograd.grad`` w.r.t. the gated weights, the fused gradient + clip + Adam;
* ``floor K=k`` (unless ``--no-floor``): the same K chunks with plain leaf weights, no gate and no Adam: the
  matrix work any K-sample step must do;
* ``vmap K=k`` (with ``--vmap``): ``FusedEngine`` with ``batched_samples`` (the K samples as one
  ``torch.func.vmap`` over stacked gated weights);

and prints each step's time and its ratio to ``plain``. For the FNN it also measures the gate kernels'
effective bandwidth (bytes they must move / time) against a plain copy of the same size, and the memory the
mask state holds per masked weight.

Run::

    python benchmarks/train_step.py                       # all models, K = 1,2,4,8, CPU (+ CUDA if present)
    python benchmarks/train_step.py --models fnn --samples 1,4 --rounds 21 --json out.json
    python benchmarks/train_step.py --backend torch       # the pure-torch kernels (no numba)
    python benchmarks/train_step.py --devices cuda --backend compile,torch   # the fused kernels vs torch's, one run

With several ``--backend`` names the first is ``mask K=k`` and the others ``mask[NAME] K=k``; ``auto`` is numba on
the CPU (torch without it) and compile on CUDA. The compile backend's step runs as ``train_mask`` runs it there:
nothing read back per step (``MaskLogits.update_lazy``); its bandwidth rows time the compiled passes after a
warm-up that compiles them.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskprobe.learning.batching import split_batch  # noqa: E402
from maskprobe.learning.engine import _sample_grads  # noqa: E402
from maskprobe.learning.masked import MaskedModel, frozen  # noqa: E402
from maskprobe.learning.maskstep import MaskLogits  # noqa: E402
from maskprobe.learning.selection import Selection, select_parameters  # noqa: E402

# ----------------------------------------------------------------------------------------------- models


def fnn(device: torch.device) -> tuple[nn.Module, tuple, Callable]:
    """The paper's add/mul FNN 42-2000x4-20, batch 128, cross-entropy per digit."""
    from sample_tasks.arithmetic import AddMulTask, build_fnn

    model = build_fnn(42, [2000] * 4, 20).to(device)
    x, y = AddMulTask().sample(128, torch.Generator().manual_seed(0))

    def loss(m, batch):
        x, y = batch
        return F.cross_entropy(m(x).view(-1, 10), y.reshape(-1))

    return model, (x.to(device), y.to(device)), loss


def cnn(device: torch.device) -> tuple[nn.Module, tuple, Callable]:
    """A small CNN on 3x32x32 images, 10 classes, batch 128 (~0.2M weights)."""
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    ).to(device)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(128, 3, 32, 32, generator=g).to(device), torch.randint(0, 10, (128,), generator=g).to(device))
    return model, batch, lambda m, b: F.cross_entropy(m(b[0]), b[1])


class TinyLM(nn.Module):
    """2-layer pre-norm transformer LM, d=256, 4 heads, vocabulary 1000, no dropout (~1.6M masked weights)."""

    def __init__(self, vocab: int = 1000, d: int = 256, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        causal = torch.triu(torch.full((n, n), float("-inf"), device=tokens.device), 1)
        return self.head(self.blocks(self.embed(tokens), mask=causal, is_causal=True))


def transformer(device: torch.device) -> tuple[nn.Module, tuple, Callable]:
    """:class:`TinyLM`, batch 32 sequences of 64 tokens, next-token cross-entropy."""
    model = TinyLM().to(device)
    tokens = torch.randint(0, 1000, (32, 65), generator=torch.Generator().manual_seed(0)).to(device)

    def loss(m, batch):
        (t,) = batch
        return F.cross_entropy(m(t[:, :-1]).reshape(-1, 1000), t[:, 1:].reshape(-1))

    return model, (tokens,), loss


MODELS = {"fnn": fnn, "cnn": cnn, "transformer": transformer}

# ------------------------------------------------------------------------------------------------ steps


def plain_step(model: nn.Module, batch, loss_fn, fused: bool) -> Callable[[], None]:
    params = [p for p in model.parameters()]
    opt = torch.optim.Adam(params, lr=1e-4, fused=fused) if fused else torch.optim.Adam(params, lr=1e-4)

    def step() -> None:
        for p in params:
            p.requires_grad_(True)
        loss = loss_fn(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def mask_step(
    model: nn.Module, batch, loss_fn, k: int, backend: str, include: tuple[str, ...] = ()
) -> tuple[Callable[[], None], MaskLogits]:
    """The body of ``train_mask``'s loop (beta 1e-4, clip 1.0), without its bookkeeping."""
    params = dict(model.named_parameters())
    weights = {n: params[n].detach() for n in select_parameters(model, Selection(include=include))}
    engine = MaskLogits(weights, backend=backend)
    bsz = batch[0].shape[0]
    counter = [0]

    def step() -> None:
        t = counter[0]
        with frozen(model):
            total = torch.zeros((), device=batch[0].device)
            samples = []
            for j, chunk in enumerate(split_batch(batch, k)):
                gated = engine.sample(t, j)
                samples.append(gated)
                total = total + loss_fn(MaskedModel(model, gated), chunk) / k
            grads = _sample_grads(total, samples)
            if engine.fused:  # train_mask keeps the loss on the device (engine.lazy) and reads it at progress lines
                loss = torch.stack([total.detach(), total.detach()]).double()
                engine.update_lazy(t, grads, 1e-4 / bsz, 1.0, loss)
            else:
                float(total.detach())  # train_mask reads the loss every step (NaN check, progress)
                engine.update(t, grads, 1e-4 / bsz, 1.0)  # the production update path
        counter[0] += 1

    return step, engine


def floor_step(model: nn.Module, batch, loss_fn, k: int, include: tuple[str, ...] = ()) -> Callable[[], None]:
    """The chunked-matmul floor: the same K chunks, each with its own leaf copy of the masked weights (the original
    tensors, detached), forward and ``autograd.grad`` w.r.t. them; no gate, no gradient kernel, no Adam."""
    params = dict(model.named_parameters())
    names = select_parameters(model, Selection(include=include))

    def step() -> None:
        with frozen(model):
            leaves = [{n: params[n].detach().requires_grad_(True) for n in names} for _ in range(k)]
            total = torch.zeros((), device=batch[0].device)
            for j, chunk in enumerate(split_batch(batch, k)):
                total = total + loss_fn(MaskedModel(model, leaves[j]), chunk) / k
            float(total.detach())
            torch.autograd.grad(total, [t for leaf in leaves for t in leaf.values()])

    return step


def engine_step(model: nn.Module, batch, loss_fn, k: int, backend: str, batched: bool, include=()) -> Callable[[], None]:
    """One step through :class:`maskprobe.learning.engine.FusedEngine` (``backward`` + ``update``, as ``training.run`` calls
    them), with ``batched_samples`` on or off."""
    from maskprobe.config import TrainConfig
    from maskprobe.learning.engine import FusedEngine

    cfg = TrainConfig(samples=k, backend=backend, batched_samples=batched, device=str(batch[0].device),
                      selection=Selection(include=tuple(include)))  # fmt: skip
    engine = FusedEngine(model, cfg)
    bsz = batch[0].shape[0]
    counter = [0]

    def step() -> None:
        t = counter[0]
        with engine.frozen():
            engine.backward(t, split_batch(batch, k), range(k), k, loss_fn)
            engine.update(t, 1e-4 / bsz, 1.0)
        if batched and not engine.batched:
            raise RuntimeError(f"vmap fell back to the loop: {engine.fallback}")
        counter[0] += 1

    return step


def timed(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def interleaved(variants: dict[str, Callable[[], None]], rounds: int, device: torch.device, warmup: int = 2) -> dict[str, float]:
    """Median seconds per variant, the variants run round-robin so that machine noise hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(warmup + rounds):
        for name, fn in variants.items():
            t = timed(fn, device)
            if r >= warmup:
                times[name].append(t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_model(
    name: str, device: torch.device, samples: list[int], rounds: int, backend: str, include=(), floor=True, vmap=False,
    others: tuple[str, ...] = (),
) -> dict:  # fmt: skip
    model, batch, loss_fn = MODELS[name](device)
    chosen = set(select_parameters(model, Selection(include=tuple(include))))
    masked = sum(p.numel() for n, p in model.named_parameters() if n in chosen)
    variants = {"plain": plain_step(model, batch, loss_fn, fused=True)}
    variants["plain-foreach"] = plain_step(model, batch, loss_fn, fused=False)
    engines = {}
    for k in samples:
        variants[f"mask K={k}"], engines[k] = mask_step(model, batch, loss_fn, k, backend, tuple(include))
        for other in others:
            variants[f"mask[{other}] K={k}"] = mask_step(model, batch, loss_fn, k, other, tuple(include))[0]
        if floor:
            variants[f"floor K={k}"] = floor_step(model, batch, loss_fn, k, tuple(include))
        if vmap and k > 1:
            try:
                variants[f"vmap K={k}"] = engine_step(model, batch, loss_fn, k, backend, True, include)
                variants[f"vmap K={k}"]()
            except Exception as exc:  # noqa: BLE001 - reported, not timed
                print(f"  [{name}] vmap K={k} not timed: {type(exc).__name__}: {str(exc)[:200]}")
                variants.pop(f"vmap K={k}", None)
    med = interleaved(variants, rounds, device)
    base = med["plain"]
    return {
        "model": name,
        "device": str(device),
        "backend": engines[samples[0]].backend,
        "masked_weights": masked,
        "batch": int(batch[0].shape[0]),
        "ms": {v: 1e3 * t for v, t in med.items()},
        "ratio": {v: t / base for v, t in med.items()},
        "mask_bytes_per_weight": {k: sum(e.memory_bytes(k).values()) / e.numel for k, e in engines.items()},
        "state_bytes_per_weight": engines[samples[0]].memory_bytes(1)["state"] / engines[samples[0]].numel,
    }


def bench_bandwidth(device: torch.device, rounds: int, backend: str) -> dict:
    """Gate kernels on the FNN's weights vs a plain copy of the same size (one run, interleaved)."""
    model, _, _ = fnn(device)
    params = dict(model.named_parameters())
    weights = {n: params[n].detach() for n in select_parameters(model)}
    engine = MaskLogits(weights, backend=backend)
    n = engine.numel
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    fake = [{name: torch.randn_like(w) for name, w in weights.items()}]
    variants = {
        "copy": lambda: dst.copy_(src),
        "gate forward": lambda: engine.sample(0, 0),
        "gate backward": lambda: engine.gradient(0, fake, 1e-6),
        "adam": lambda: engine.adam(1.0),
    }
    if engine.fused:  # the passes the compile backend's step runs, nothing read back
        variants["gate backward"] = lambda: engine._gradient_fused(0, fake, 1e-6)
        variants["adam"] = lambda: engine._adam_fused(0, 1.0, None)
    med = interleaved(variants, rounds, device)
    # bytes each must move at the least: copy r+w 8; forward reads w and p, writes w*m: 12;
    # backward reads w, p, dL/d(w*m), writes dL/dl: 16; Adam reads l, g, m, v, writes l, m, v, p: 32
    need = {"copy": 8, "gate forward": 12, "gate backward": 16, "adam": 32}
    out = {"numel": n, "ms": {}, "GB_per_s": {}, "fraction_of_copy": {}}
    copy_bw = need["copy"] * n / med["copy"]
    for v, t in med.items():
        bw = need[v] * n / t
        out["ms"][v] = 1e3 * t
        out["GB_per_s"][v] = bw / 1e9
        out["fraction_of_copy"][v] = bw / copy_bw
    return out


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    try:
        import numba

        info["numba"] = numba.__version__
    except ImportError:
        info["numba"] = None
    try:
        info["cpu"] = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    info["cpus"] = len(__import__("os").sched_getaffinity(0))
    info["load_before"] = [round(x, 2) for x in __import__("os").getloadavg()]
    if torch.cuda.is_available():
        info["cuda"] = torch.cuda.get_device_name()
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="fnn,cnn,transformer")
    p.add_argument("--samples", default="1,2,4,8", help="K values")
    p.add_argument("--rounds", type=int, default=11, help="timed rounds per variant (after 2 warm-up rounds)")
    p.add_argument("--devices", default="auto", help="cpu, cuda or auto (cpu, and cuda when present)")
    p.add_argument("--backend", default="auto", help="mask-step kernels: auto, numba, torch, compile; several: a,b (compared)")
    p.add_argument("--threads", type=int, default=0, help="torch (and numba) threads; 0 = leave as is")
    p.add_argument("--no-bandwidth", action="store_true")
    p.add_argument("--no-floor", action="store_true", help="skip the chunked-matmul floor (K leaf copies, no gate)")
    p.add_argument("--vmap", action="store_true", help="also time FusedEngine with batched_samples (torch.func.vmap)")
    p.add_argument("--include", action="append", default=[], help="mask only these parameters (globs, as train)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        try:
            import numba

            numba.set_num_threads(args.threads)
        except ImportError:
            pass
    devices = ["cpu", "cuda"] if args.devices == "auto" else args.devices.split(",")
    devices = [torch.device(d) for d in devices if d != "cuda" or torch.cuda.is_available()]
    samples = [int(k) for k in args.samples.split(",")]
    results = {"machine": machine(), "command": " ".join(["python", *sys.argv]), "models": [], "bandwidth": {}}
    print(json.dumps(results["machine"]))
    for dev in devices:
        names = [b for b in args.backend.split(",") if dev.type == "cpu" or b != "numba"] or ["auto"]
        backend, others = names[0], tuple(names[1:])
        for b in names if not args.no_bandwidth else ():
            bw = bench_bandwidth(dev, args.rounds, b)
            results["bandwidth"][str(dev) if b == backend else f"{dev} {b}"] = bw
            print(f"\n[{dev}] {b}: elementwise kernels on {bw['numel']:,} weights (median ms, GB/s, fraction of copy)")
            for v in bw["ms"]:
                print(f"  {v:<14} {bw['ms'][v]:8.2f} ms  {bw['GB_per_s'][v]:6.1f} GB/s  {bw['fraction_of_copy'][v]:5.2f}")
        for name in args.models.split(","):
            r = bench_model(name, dev, samples, args.rounds, backend, args.include, not args.no_floor, args.vmap, others)
            results["models"].append(r)
            print(f"\n[{dev}] {name}: {r['masked_weights']:,} masked weights, batch {r['batch']}, backend {r['backend']}")
            for v in r["ms"]:
                print(f"  {v:<20} {r['ms'][v]:8.2f} ms  x{r['ratio'][v]:.2f}")
            print(f"  mask state {r['state_bytes_per_weight']:.1f} B/weight; with K gated copies: "
                  + ", ".join(f"K={k}: {b:.1f}" for k, b in r["mask_bytes_per_weight"].items()))  # fmt: skip
    results["load_after"] = [round(x, 2) for x in __import__("os").getloadavg()]
    print(f"\nload average before {results['machine']['load_before']}, after {results['load_after']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
