"""How much memory mask training will need, checked before the first step (docs/reliability.md).

A run that dies of out-of-memory after an hour has wasted the hour; this module estimates the peak from
the parts that scale with the model and the flags, compares it with what the device has free, and
refuses with the flags that would fit. With ``n`` masked weights, ``K`` samples per step and batch ``B``:

====================  ==================================================================================
weights               every parameter and buffer of the module (counted on a GPU; already resident on the CPU)
logits + gradients    ``8 n`` bytes (float32 logits and their ``.grad``)
Adam state            ``8 n`` bytes (``exp_avg`` and ``exp_avg_sq``, float32)
mask samples          ``K n w`` bytes: per sample the gated weight ``w * m`` the layer keeps (``w`` bytes per
                      element of the masked weights); the noise is a hash, recomputed in backward, never stored
backward temporaries  ``24 x`` the largest masked tensor's element count (six float32 temporaries of the
                      gate's backward pass)
gated-weight grads    ``K n w`` bytes: autograd's gradient of every sample's gated weights, alive until the
                      update has read them (then released)
runtime               on the CPU, :data:`CPU_RUNTIME` bytes: the mask kernels' compiled code, thread pools and
                      allocator caches, measured (independent of the model); shown, not checked (below)
end of the run        what the end adds beyond the step's gradients and activations, which are released by then:
                      the final state's copy of the logits (``4 n`` per mask, host memory: counted on the CPU
                      only) and the masked weights of the final evaluation (``n w``); usually 0
activations           ``1.25 s B``: ``s`` = bytes autograd saves for backward per example, measured by one
                      forward pass of a single example with the masked weights requiring gradients
                      (``footprint.saved_bytes_per_example``), plus a quarter for the gradients flowing back;
                      where that cannot run (it fails, or saves nothing), ``2 a B`` with ``a`` = bytes of every
                      leaf module's outputs per example (``footprint.activation_bytes_per_example``)
====================  ==================================================================================

It is an estimate, not a bound (allocator fragmentation, a task's own temporaries and fused kernels move
the true peak either way); ``--memory-limit off`` skips the check. What the check compares with the free memory
is the sum above less the runtime, what training adds for this model; on the CPU ``--dry-run`` also shows the
runtime and ``process now`` (the process's resident memory when the estimate is made: the loaded checkpoint, torch,
the task's data), so that its total is the peak the process reaches, what ``top`` or ``/usr/bin/time`` report.
Measured against such peaks in tests/test_memory.py (``test_the_estimate_is_near_the_measured_peak``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import BadInputError

_UNITS = {"": 1, "b": 1} | {  # k kb kib m mb mib g gb gib t tb tib
    p + suffix: base ** (i + 1) for i, p in enumerate("kmgt") for suffix, base in (("", 1000), ("b", 1000), ("ib", 1024))
}


ACT_FACTOR = 2  # leaf outputs: activations kept for backward + their gradients + slack; docs/reliability.md
# saved tensors: what autograd keeps + the gradients flowing back. Measured: a 4-layer BERT (hidden 256, 122 tokens,
# keep-outputs, batch 32) saves 7.8 MiB per example and peaked 319 MiB above the other parts (1.28 x 248 MiB).
SAVED_FACTOR = 1.25
# what a CPU run adds whatever the model: numba's compiled kernels and LLVM, thread pools, allocator caches.
# Measured: the peak RSS of 2-step CPU runs of the 42-1024x4-20 and 42-2048x4-20 FNNs (3.2M and 12.7M masked
# weights) minus the parts above, fitted as a constant plus the gated-weight gradients (n w): 120 MiB.
CPU_RUNTIME = 120 * 1024**2
BACKWARD_BYTES_PER_ELEMENT = 24  # backward scratch per element of the largest masked tensor (module docstring)


def parse_size(text: str) -> int | None:
    """``"8GiB"``, ``"500MB"``, ``"1.5g"`` or a plain byte count -> bytes; ``"off"`` -> None (no check).

    Raises:
        BadInputError: not a size.
    """
    t = text.strip().lower()
    if t in ("off", "none", "no"):
        return None
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([a-z]*)", t)
    if not m or m.group(2) not in _UNITS:
        raise BadInputError(f"--memory-limit must be a size like 8GiB, 500MB or 'off', got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def human(n: float) -> str:
    """Bytes as a short binary-prefixed string, e.g. ``1.5 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


@dataclass
class MemoryEstimate:
    """Bytes each part of a training step needs on ``device``; see the module docstring for the formulas."""

    device: str
    masked: int
    weights: int
    logits: int
    optimizer: int
    samples: int
    backward: int
    end: int  # bytes the end of the run allocates: the final logits' copy (CPU) and the evaluation's masked weights
    activations: int
    activation_per_example: int
    batch_size: int
    num_samples: int
    grads: int = 0
    runtime: int = 0
    act_factor: float = ACT_FACTOR
    resident: int = 0  # the process's resident bytes when estimated (CPU); neither it nor runtime is in ``total``
    largest: int = 0  # elements of the largest masked tensor (sharded runs gather it whole)
    masks: int = 1

    @property
    def fixed(self) -> int:
        """What does not shrink with the batch size or the number of samples."""
        return self.weights + self.logits + self.optimizer + self.backward

    @property
    def per_sample(self) -> int:
        """Bytes of one more sample per step: its gated weights and their gradient (every mask's)."""
        return (self.samples + self.grads) // self.num_samples if self.num_samples else 0

    @property
    def finish(self) -> int:
        """What the end of the run adds beyond the step's gradients and activations, released by then."""
        return max(0, self.end - self.grads - self.activations)

    def total_for(self, samples: int, batch_size: int) -> int:
        """:attr:`total` with ``samples`` samples per step and batch ``batch_size`` (the refusal's suggestions)."""
        grads = self.grads // self.num_samples * samples if self.num_samples else 0
        acts = int(self.act_factor * self.activation_per_example * batch_size * self.masks)
        return self.fixed + samples * self.per_sample + acts + max(0, self.end - grads - acts)

    @property
    def peak(self) -> int:
        """The process's expected peak: what it holds now and the runtime (CPU) plus :attr:`total`."""
        return self.resident + self.runtime + self.total

    @property
    def total(self) -> int:
        return self.fixed + self.samples + self.grads + self.activations + self.finish

    def parts(self) -> dict[str, int]:
        return {
            "weights": self.weights,
            "logits+grad": self.logits,
            "adam": self.optimizer,
            "mask samples": self.samples,
            "backward scratch": self.backward,
            "gated grads": self.grads,
            "end of run": self.finish,
            "activations": self.activations,
        }


def estimate(
    module: nn.Module,
    names: list[str],
    *,
    device: torch.device | str,
    batch_size: int,
    samples: int,
    act_per_example: int,
    act_factor: float = ACT_FACTOR,
    masks: int = 1,
    state_bytes: int = 4,
) -> MemoryEstimate:
    """The estimate for masking ``names`` of ``module`` with batch ``batch_size`` and ``samples`` samples per step.

    ``act_per_example`` is what :func:`~maskprobe.learning.footprint.activation_bytes_per_example` measured
    (``act_factor`` :data:`ACT_FACTOR`), or :func:`~maskprobe.learning.footprint.saved_bytes_per_example`
    (``act_factor`` :data:`SAVED_FACTOR`). ``masks`` masks trained at once
    (``--together``) each hold their logits, Adam state, samples, gradients and activations, and their samples are
    copied once more into the one stacked input of the shared forward (``w`` bytes per weight and sample).
    ``state_bytes``: the bytes of each of Adam's two moments per weight (2 with ``--adam-state bf16``)."""
    device = torch.device(device)
    params = dict(module.named_parameters())
    n = sum(params[m].numel() for m in names)
    largest = max((params[m].numel() for m in names), default=0)
    wbytes = sum(params[m].numel() * params[m].element_size() for m in names) / n if n else 4
    resident = sum(p.numel() * p.element_size() for p in module.parameters())
    resident += sum(b.numel() * b.element_size() for b in module.buffers())
    k = max(1, min(samples, batch_size))
    on_cpu = device.type == "cpu"
    return MemoryEstimate(
        device=str(device),
        masked=n,
        weights=0 if device.type == "cpu" else resident,  # on the CPU the loaded checkpoint is already in memory
        logits=8 * n * masks,
        optimizer=2 * state_bytes * n * masks,
        samples=int(k * n * wbytes * (2 if masks > 1 else 1) * masks),
        backward=BACKWARD_BYTES_PER_ELEMENT * largest,
        end=int((4 * masks if on_cpu else 0) * n + n * wbytes),
        activations=int(act_factor * act_per_example * batch_size * masks),
        activation_per_example=act_per_example,
        batch_size=batch_size,
        num_samples=k,
        grads=int(k * n * wbytes * masks),
        runtime=CPU_RUNTIME if on_cpu else 0,
        resident=resident_bytes() if on_cpu else 0,
        act_factor=act_factor,
        largest=largest,
        masks=masks,
    )


def memory_plan(est: MemoryEstimate, processes: int = 1) -> dict[str, Any]:
    """Per-process memory of one run in each mode, from a one-process :class:`MemoryEstimate`.

    Data-parallel with ``R`` processes: each process holds the whole model, all logits, their gradient and
    Adam's moments (``16 n`` bytes, not sharded), but only ``K/R`` mask samples and the activations of
    ``B/R`` examples. Sharded (``--shard``, FSDP2): each process holds ``1/R`` of the weights and of the
    ``16 n`` bytes, plus what one chunk's forward and backward keep whole: the gated weight of one sample and its
    gradient (``2 n w``), two gathered FSDP units (``2 x`` the largest masked tensor) and the activations
    of ``B/K`` examples. Shown for ``processes`` (under torchrun) or for 2, 4 and 8 (otherwise).

    Returns:
        a JSON-able dict (``schema`` ``maskprobe.memory/1``): ``masked`` weights, ``state_bytes`` (``16 n``),
        and ``modes``: one entry per process count with ``parts`` (bytes by part) and ``total``.
    """
    counts = [1, processes] if processes > 1 else [1, 2, 4, 8]
    modes = []
    for r in counts:
        k_each = -(-est.num_samples // r)  # --samples must be a multiple of r: rounded up
        parts = est.parts()
        parts["mask samples"] = est.samples // est.num_samples * k_each if est.num_samples else 0
        parts["gated grads"] = est.grads // est.num_samples * k_each if est.num_samples else 0
        parts["activations"] = est.activations // r
        modes.append(_mode("one process" if r == 1 else "data-parallel", r, k_each, parts))
    k = max(1, est.num_samples)
    largest = est.largest
    wbytes = est.samples / (k * est.masked) if est.masked else 4  # per-element bytes of a masked weight
    for r in counts[1:]:
        parts = est.parts()  # parts not named here (e.g. end-of-run evaluation) are counted unchanged
        parts.update(
            {
                "weights": est.weights // r + int(2 * largest * wbytes),
                "logits+grad": est.logits // r,
                "adam": est.optimizer // r,
                # one sample in flight (a chunk's backward runs before the next), and its float32 noise: the sharded
                # gate keeps it for backward (maskprobe/learning/sharded.py), the one-process engine recomputes it
                "mask samples": est.samples // k + 4 * est.masked,
                "gated grads": est.grads // k,
                "activations": est.activations // k,
            }
        )
        modes.append(_mode("sharded", r, -(-est.num_samples // r), parts))
    for mode in modes if est.resident or est.runtime else ():  # CPU: so that the total is the process's peak
        mode["parts"].update({"runtime": est.runtime, "process now": est.resident})
        mode["total"] += est.runtime + est.resident
    return {
        "schema": "maskprobe.memory/1",
        "device": est.device,
        "masked": est.masked,
        "state_bytes": est.logits + est.optimizer,
        "batch_size": est.batch_size,
        "samples": est.num_samples,
        "activation_per_example": est.activation_per_example,
        "modes": modes,
    }


def _mode(name: str, processes: int, samples: int, parts: dict[str, int]) -> dict[str, Any]:
    return {"mode": name, "processes": processes, "samples_per_process": samples, "parts": parts, "total": sum(parts.values())}


def resident_bytes() -> int:
    """This process's resident memory (``/proc/self/statm``), 0 where unknown."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return 0


def suggestions(est: MemoryEstimate, budget: int) -> list[str]:
    """Flag changes that bring ``est`` under ``budget`` bytes (empty when nothing but fewer weights would)."""
    out = []
    k, batch = est.num_samples, est.batch_size
    # largest batch with the same samples (at least one example per sample)
    if k <= (b := _largest_batch(est, k, batch - 1, budget)):
        out.append(f"--batch-size {b}")
    # fewest samples with the same batch
    fewer = next((j for j in range(k - 1, 0, -1) if est.total_for(j, batch) <= budget), None)
    if fewer is not None:
        out.append(f"--samples {fewer}")
    if not out and (b := _largest_batch(est, 1, batch, budget)):
        out.append(f"--samples 1 --batch-size {b}")
    return out


def _largest_batch(est: MemoryEstimate, samples: int, most: int, budget: int) -> int:
    """The largest batch up to ``most`` whose total with ``samples`` fits ``budget`` (0: none); totals grow with the batch."""
    lo, hi = 0, most
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if est.total_for(samples, mid) <= budget else (lo, mid - 1)
    return lo


def check_fits(est: MemoryEstimate, budget: int | None) -> None:
    """Refuse a run whose estimate exceeds ``budget`` bytes (None: no check).

    Raises:
        BadInputError: one line with the estimate, its biggest parts, the budget and the flags that would fit.
    """
    if budget is None or est.total <= budget:
        return
    parts = ", ".join(f"{k} {human(v)}" for k, v in sorted(est.parts().items(), key=lambda kv: -kv[1]) if v)
    fixes = suggestions(est, budget)
    if fixes:
        hint = "these would fit: " + " or ".join(fixes)
    else:
        hint = (
            f"the weights, logits and Adam state of {est.masked:,} masked weights alone need {human(est.fixed)}; mask fewer "
            "(--include/--exclude), use a device with more memory, or shard the logits under torchrun"
        )
    raise BadInputError(
        f"training would need about {human(est.total)} on {est.device} ({parts}) but only {human(budget)} is available; "
        f"{hint} (--memory-limit off skips this check)"
    )
