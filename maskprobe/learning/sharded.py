"""Sharded mask training with FSDP2 (``--shard`` under torchrun), for masks whose state does not fit one device.

Each masked weight gets a parametrization, ``weight = w * gate(logit)``, whose ``logit`` is an
``nn.Parameter`` on the module of the weight it gates; ``fully_shard`` then shards weights and logits alike
(every module that owns a masked weight is its own FSDP unit, then the root). The model is built on the
``meta`` device, sharded, materialised empty on this rank's device and filled from the checkpoint as
:func:`maskprobe.loading.checkpoints.load_checkpoint` opened and checked it (``meta=True``: memory-mapped,
safetensors' ``safe_open`` or ``torch.load(mmap=True)``, fitted once), so no rank ever holds the whole model.
Adam's moments live beside each rank's shard of the logits: per rank ``16 n / R`` bytes of mask state. The final
mask gathers each logit (``full_tensor()``) and rank 0 writes the usual safetensors mask file.

The step is the fused engine's (:class:`ShardedEngine` runs inside :func:`maskprobe.learning.training.run`, the one
training loop): the same hash noise for (seed, step, sample, tensor), the same regulariser, clip and Adam
arithmetic, so ``--shard`` learns the same mask as one process up to the order of floating-point sums.
Differences (docs/distributed.md): there is no ``--resume``; a task that raises on one rank in the middle of a
forward pass leaves the others waiting in FSDP's all-gather until the collective timeout.

Run: ``torchrun --nproc-per-node N -m maskprobe train CKPT --task T --out DIR --shard``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import BadInputError, CheckpointError, Interrupted
from ..measure.evaluation import evaluate_task
from ..tasks.contract import Task, TaskRef
from . import distributed, kernels
from .gates import binarize, gate
from .masked import MaskedModel, run_mode
from .maskstep import BETAS, DEFAULTS, EPS, NOISE, clip_factor
from .selection import select_parameters


class LogitGate(nn.Module):
    """Parametrization ``w -> w * m``: ``m`` a hard Gumbel-sigmoid sample (``mode="sample"``), the final mask
    ``logit > 0`` (``"mask"``), or all ones (``"off"``).

    The sample is :func:`maskprobe.learning.gates.gate` with the fused engine's hash noise for (seed, step, sample,
    tensor index): FSDP gathers the whole logit before the forward pass, so element ``i`` gets the same uniform
    as in one process, and ``--shard`` draws the same masks as a one-process run with the same seed.

    Args:
        shape: the gated weight's shape; ``logit`` has it too.
        index: the tensor's position among the masked tensors (part of its noise key).
        init: initial logit (default 2.0).
        tau: temperature (default 1.0).
        seed: the run's seed.
    """

    def __init__(
        self, shape: tuple[int, ...], index: int = 0, init: float = DEFAULTS.init, tau: float = DEFAULTS.tau, seed: int = 0
    ):
        super().__init__()
        self.logit = nn.Parameter(torch.full(shape, float(init)))
        self.index, self.tau, self.seed = int(index), float(tau), int(seed)
        self.mode = "off"
        self.step = self.sample = 0  # set by ShardedEngine before each chunk

    def forward(self, w: Tensor) -> Tensor:
        if self.mode == "off":
            return w
        if self.mode == "mask":
            return torch.where(self.logit > 0, w, torch.zeros((), dtype=w.dtype, device=w.device))
        key = kernels.noise_key(self.seed, self.step, self.sample, self.index)
        u = kernels.uniform_torch(self.logit.numel(), key, w.device).view(self.logit.shape)
        return gate(w, self.logit, u, self.tau)


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Build a module with its parameters on ``meta`` and its buffers real: buffers that are not saved in
    checkpoints (rotary frequencies, masks) are computed in ``__init__`` and must survive; a parameter
    exists for real only while its own module's ``__init__`` runs."""
    register = nn.Module.register_parameter

    def on_meta(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(self, name, param)
        if param is not None:
            self._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def build_sharded(
    build: Callable[[], nn.Module],
    state: dict[str, Tensor],
    names_of: Callable[[nn.Module], list[str]],
    *,
    device: torch.device,
    init: float = DEFAULTS.init,
    tau: float = DEFAULTS.tau,
    seed: int = 0,
) -> tuple[nn.Module, dict[str, LogitGate]]:
    """Build on ``meta``, gate the selected weights, ``fully_shard``, materialise on ``device``, load ``state``
    (``{name: tensor}`` under the module's own names, as ``Checkpoint.tensors()`` gives them: fitted when opened).

    Returns:
        the sharded root module and ``{weight name: its LogitGate}`` (names as in the unmasked model).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.nn.utils import parametrize

    with _parameters_on_meta():
        model = build()
    kept = {n: b.detach().clone() for n, b in model.named_buffers() if b.device.type != "meta"}
    with torch.device("meta"):
        names = names_of(model)
        if not names:
            raise BadInputError("no parameters to mask")
        for p in model.parameters():
            p.requires_grad_(False)
        gates: dict[str, LogitGate] = {}
        owners: dict[int, nn.Module] = {}
        for index, name in enumerate(names):
            owner_name, _, attr = name.rpartition(".")
            owner = model.get_submodule(owner_name)
            gates[name] = LogitGate(tuple(getattr(owner, attr).shape), index, init, tau, seed)
            parametrize.register_parametrization(owner, attr, gates[name], unsafe=True)
            owners[id(owner)] = owner
    # the mesh on the run's device: fully_shard's default mesh is on the machine's accelerator, which put the
    # shards of a --device cpu run on cuda:0 (and rank 1 on a missing cuda:1) wherever a GPU was present
    mesh = init_device_mesh(device.type, (distributed.current().size,))
    for owner in owners.values():  # one FSDP unit per module that owns a masked weight, then the root
        fully_shard(owner, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.to_empty(device=device)
    with torch.no_grad():  # to_empty left every buffer uninitialised: put back what __init__ computed
        buffers = dict(model.named_buffers())
        for n, value in kept.items():
            buffers[n].copy_(value)
    renamed = {_parametrized_name(k, gates): v for k, v in state.items()}
    expected = {k for k in model.state_dict() if not k.endswith(".logit")}
    missing, unexpected = sorted(expected - set(renamed)), sorted(set(renamed) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"the checkpoint does not fit the architecture (missing: {', '.join(missing[:4]) or '-'}; "
            f"unexpected: {', '.join(unexpected[:4]) or '-'})"
        )
    set_model_state_dict(model, renamed, options=StateDictOptions(full_state_dict=True, strict=False))
    with torch.no_grad():
        for g in gates.values():
            g.logit.fill_(float(init))
    return model, gates


def _parametrized_name(name: str, gates: dict[str, LogitGate]) -> str:
    if name not in gates:
        return name
    owner, _, attr = name.rpartition(".")
    return f"{owner + '.' if owner else ''}parametrizations.{attr}.original"


class ShardedEngine:
    """The engine of ``--shard`` for :func:`maskprobe.learning.training.run`: FSDP2 shards weights, logits and Adam's
    moments over the ranks; every rank calls every method (each one may run collectives).

    The update is the fused engine's arithmetic on each rank's shard: the regulariser's ``beta / B`` added to the
    logit gradients (each element lives on one rank: counted once), the global norm clip, and
    :func:`maskprobe.learning.kernels.adam_step` (the same formulas as the torch backend).
    """

    def __init__(self, checkpoint: Any, config: Any):
        if config.fixed_from:
            raise BadInputError("--fix-from does not run with --shard yet: train those masks without --shard")
        if config.adam_state != "fp32":
            raise BadInputError("--adam-state bf16 does not run with --shard yet: each rank keeps fp32 moments of its shard")
        self.world = distributed.current()
        self.device = torch.device(config.device)
        self.config = config
        self.model, self.gates = build_sharded(
            checkpoint.build, checkpoint.tensors(), lambda m: select_parameters(m, config.selection), device=self.device,
            init=config.init, tau=config.tau, seed=config.seed,
        )  # fmt: skip
        self.logits = [g.logit for g in self.gates.values()]
        self.moments = [(torch.zeros_like(p.to_local()), torch.zeros_like(p.to_local())) for p in self.logits]
        self.adam_step = 0
        self.numel = sum(g.logit.numel() for g in self.gates.values())
        self.build = checkpoint.build

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        with run_mode(self.model):  # the frozen model's mode, as the fused engine's (recurrent modules: masked.py)
            _set_mode(self.gates, "sample")
            try:
                yield
            finally:
                _set_mode(self.gates, "off")

    def backward(self, step: int, chunks: Any, share: range, k: int, loss_of: Callable[[Any, Any], Tensor]) -> float:
        local = 0.0
        for j in share:
            for g in self.gates.values():
                g.step, g.sample = step, j
            loss = loss_of(MaskedModel(self.model, {}), chunks[j]) / k
            (loss * self.world.size).backward()  # FSDP averages over ranks: the sum over ranks is mean_k loss_k
            local += float(loss.detach())
        return local

    def update(self, step: int, reg: float, clip: float) -> float:
        with torch.no_grad():
            grads = [torch.zeros_like(p.to_local()) if p.grad is None else p.grad.to_local() for p in self.logits]
            for g in grads:
                g.add_(reg)
            local_sq = sum(float(g.double().square().sum()) for g in grads)
            norm = math.sqrt(distributed.sum_over_ranks(local_sq, self.world))
            if math.isfinite(norm):
                self.adam_step += 1
                scale = clip_factor(norm, clip)
                for p, g, (m, v) in zip(self.logits, grads, self.moments, strict=True):
                    kernels.adam_step(p.to_local(), g, m, v, lr=self.config.lr, b1=BETAS[0], b2=BETAS[1], eps=EPS,
                                      t=self.adam_step, scale=scale)  # fmt: skip
        for p in self.logits:
            p.grad = None
        return norm

    def logit_sum(self) -> float:
        return distributed.sum_over_ranks(sum(float(p.to_local().double().sum()) for p in self.logits), self.world)

    def finite(self) -> bool:
        bad = sum(int((~torch.isfinite(p.to_local())).sum()) for p in self.logits)
        return distributed.sum_over_ranks(float(bad), self.world) == 0

    def nonfinite_gradient(self) -> str | None:
        return None  # the gradients are gone after update(); the message names the step

    def density(self) -> float:
        kept = sum(int(binarize(p.to_local()).sum()) for p in self.logits)
        return distributed.sum_over_ranks(float(kept), self.world) / self.numel

    def snapshot(self, step: int, history: list[list[float]]) -> Any:
        from .engine import seed_bytes
        from .statefile import TrainState

        return TrainState(step, {}, {}, seed_bytes(self.config.seed), list(history))  # no resume under --shard

    def masks(self) -> dict[str, Tensor]:
        return {n: binarize(g.logit.full_tensor().detach()).cpu() for n, g in self.gates.items()}

    def evaluate(self, task: Any, masks: Any, batch_size: int, batches: int | None = None) -> dict:
        _set_mode(self.gates, "off" if masks is None else "mask")
        try:
            return evaluate_task(self.model, task, device=self.device, batch_size=batch_size, batches=batches)
        finally:
            _set_mode(self.gates, "sample")

    def info(self) -> dict[str, str]:
        out = {"backend": "fsdp2", "noise": NOISE, "processes": str(self.world.size)}
        if self.config.batched_samples:  # said, not silently ignored: the sharded step runs its samples in a loop
            out["samples"] = "loop (--shard has no vmap path)"
        return out

    def layers(self) -> list[dict[str, str]]:
        from ..masks.layout import model_layout

        with torch.device("meta"):  # the unsharded structure: names and shapes only, no memory
            return model_layout(self.build(), list(self.gates)).to_list()


def train_mask_sharded(
    checkpoint: Any,
    task: Task,
    task_ref: TaskRef,
    config: Any,
    *,
    callback: Callable[[Any], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Any:
    """Learn one mask with FSDP2 across the torchrun group (every rank calls it): :func:`maskprobe.learning.training.run`
    with a :class:`ShardedEngine`.

    Args:
        checkpoint: a :class:`maskprobe.loading.checkpoints.Checkpoint` opened with ``meta=True`` (single-file or
            sharded safetensors, a Hugging Face folder's safetensors, or a ``torch.save`` state dict): its ``build``
            gives the architecture, its ``tensors()`` the weights, read memory-mapped from that one opening.
        config: a :class:`maskprobe.config.TrainConfig`; ``samples`` must be a multiple of the process count.

    Raises:
        Interrupted: ``should_stop`` returned True on some rank (a sharded run keeps no resumable state yet).
        NumericalError, BadInputError, CheckpointError, PluginError: as for one process.
    """
    from .training import run

    distributed.require_group()
    result = run(ShardedEngine(checkpoint, config), task, task_ref, config, callback=callback, should_stop=should_stop)
    if not result.completed:
        where = f"step {result.steps_run}/{config.steps} of {task.name}"
        raise Interrupted(f"interrupted at {where}; --shard keeps no state to resume")
    return result


def _set_mode(gates: dict[str, LogitGate], mode: str) -> None:
    for g in gates.values():
        g.mode = mode
