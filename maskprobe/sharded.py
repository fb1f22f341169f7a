"""Sharded mask training with FSDP2 (``--shard`` under torchrun), for masks whose state does not fit one device.

Each masked weight gets a parametrization, ``weight = w * gate(logit)``, whose ``logit`` is an
``nn.Parameter`` on the module of the weight it gates; ``fully_shard`` then shards weights and logits alike
(every module that owns a masked weight is its own FSDP unit, then the root). The model is built on the
``meta`` device, sharded, materialised empty on this rank's device and filled from the checkpoint, read
memory-mapped (safetensors' ``safe_open`` or ``torch.load(mmap=True)``), so no rank ever holds the whole
model. Adam (``torch.optim.Adam``) is built after sharding, so its moments are sharded too: per rank
``16 n / R`` bytes of mask state. The final mask gathers each logit (``full_tensor()``) and rank 0 writes the
usual safetensors mask file.

Differences from the data-parallel engine (docs/distributed.md): the noise comes from a per-rank
``torch.Generator`` (seed, rank) instead of the counter hash, so a sharded run is statistically, not
bitwise, equal to a one-process run; there is no ``--resume``; a task that raises on one rank in the
middle of a forward pass leaves the others waiting in FSDP's all-gather until the collective timeout.

Run: ``torchrun --nproc-per-node N -m maskprobe train CKPT --task T --out DIR --shard``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import distributed
from .batching import batch_size_of, split_batch, to_device
from .errors import BadInputError, CheckpointError, Interrupted, NumericalError
from .gates import binarize, gate, uniform_noise
from .masked import MaskedModel
from .selection import select_parameters
from .tasks import Task, TaskRef


class LogitGate(nn.Module):
    """Parametrization ``w -> w * m``: ``m`` a hard Gumbel-sigmoid sample (``mode="sample"``), the final mask
    ``logit > 0`` (``"mask"``), or all ones (``"off"``).

    Args:
        shape: the gated weight's shape; ``logit`` has it too.
        init: initial logit (default 2.0).
        tau: temperature (default 1.0).
    """

    def __init__(self, shape: tuple[int, ...], init: float = 2.0, tau: float = 1.0):
        super().__init__()
        self.logit = nn.Parameter(torch.full(shape, float(init)))
        self.tau = float(tau)
        self.mode = "off"
        self.generator: torch.Generator | None = None

    def forward(self, w: Tensor) -> Tensor:
        if self.mode == "off":
            return w
        if self.mode == "mask":
            return torch.where(self.logit > 0, w, torch.zeros((), dtype=w.dtype, device=w.device))
        return gate(w, self.logit, uniform_noise(self.logit, self.generator), self.tau)


def read_state_mmap(path: str | Path) -> dict[str, Tensor]:
    """A checkpoint's tensors, memory-mapped: safetensors (a file, a sharded ``*.index.json`` set, or the
    weights of a Hugging Face folder) or a ``torch.save`` state dict.

    Raises:
        CheckpointError: another format (TorchScript, pickled modules, ``.bin`` folders) or an unreadable file.
    """
    from .checkpoints import detect_format, torch_load, unwrap_state_dict

    path = Path(path)
    fmt = detect_format(path)
    try:
        if fmt in ("safetensors", "safetensors-sharded", "hf-folder"):
            files = _safetensors_files(path)
            if not files:
                raise CheckpointError(f"{path} holds no *.safetensors weights (--shard does not read .bin folders)")
            from safetensors import safe_open

            state: dict[str, Tensor] = {}
            for file in files:
                with safe_open(str(file), "pt") as f:  # the file is memory-mapped; get_tensor reads from it
                    state.update({k: f.get_tensor(k) for k in f.keys()})
            return state
        if fmt == "torch-zip":
            return unwrap_state_dict(torch_load(path, map_location="cpu", weights_only=True, mmap=True))
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{path} could not be read memory-mapped ({type(exc).__name__}: {exc})") from None
    raise CheckpointError(f"--shard reads single-file safetensors or torch.save state dicts; {path} is {fmt}")


def _safetensors_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint: the file, the shards its index lists (checkpoints.read_shard_index,
    which keeps them inside the folder), or a folder's ``*.safetensors``."""
    from .checkpoints import read_shard_index

    if path.is_file() and not path.name.endswith(".index.json"):
        return [path]
    folder = path if path.is_dir() else path.parent
    if path.is_file() or list(folder.glob("*.safetensors.index.json")):
        return read_shard_index(path)[2]
    return sorted(folder.glob("*.safetensors"))


def hf_architecture(path: str | Path) -> Callable[[], nn.Module]:
    """The architecture of a Hugging Face folder from its ``config.json`` (weights not loaded; needs ``transformers``).

    Raises:
        CheckpointError: transformers is not installed.
    """
    try:
        import transformers
    except ImportError:
        raise CheckpointError(f"{path} is a Hugging Face folder; install the extra: pip install 'maskprobe[hf]'") from None

    def build() -> nn.Module:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
        archs = getattr(config, "architectures", None) or []
        cls = (getattr(transformers, archs[0], None) if archs else None) or transformers.AutoModel
        return cls._from_config(config) if hasattr(cls, "_from_config") else cls.from_config(config)

    return build


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
    init: float = 2.0,
    tau: float = 1.0,
) -> tuple[nn.Module, dict[str, LogitGate]]:
    """Build on ``meta``, gate the selected weights, ``fully_shard``, materialise on ``device``, load ``state``.

    Returns:
        the sharded root module and ``{weight name: its LogitGate}`` (names as in the unmasked model).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
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
        for name in names:
            owner_name, _, attr = name.rpartition(".")
            owner = model.get_submodule(owner_name)
            gates[name] = LogitGate(tuple(getattr(owner, attr).shape), init, tau)
            parametrize.register_parametrization(owner, attr, gates[name], unsafe=True)
            owners[id(owner)] = owner
    for owner in owners.values():  # one FSDP unit per module that owns a masked weight, then the root
        fully_shard(owner)
    fully_shard(model)
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


def train_mask_sharded(
    build: Callable[[], nn.Module],
    checkpoint: str | Path,
    task: Task,
    task_ref: TaskRef,
    config: Any,
    *,
    callback: Callable[[Any], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Any:
    """Learn one mask with FSDP2 across the torchrun group (every rank calls it).

    Args:
        build: builds the architecture (called under ``torch.device("meta")``).
        checkpoint: single-file safetensors or ``torch.save`` state dict.
        config: a :class:`maskprobe.training.TrainConfig`; ``samples`` must be a multiple of the process count.
        callback: gets a :class:`maskprobe.training.StepEvent` every ``config.log_every`` steps (rank 0 only).
        should_stop: polled every step on every rank; when any rank says stop, all raise ``Interrupted``
            at the same step (a sharded run keeps no resumable state yet).

    Returns:
        a :class:`maskprobe.training.MaskResult`; its masks are complete on every rank.

    Raises:
        NumericalError: NaN/inf loss or gradient norm (every rank, same step).
        Interrupted: ``should_stop`` returned True on some rank.
        BadInputError, CheckpointError, PluginError: as for one process.
    """
    from .training import MaskResult, StepEvent, TrainState, _scalar_loss, _seed_bytes, _task_loss, evaluate_task

    world = distributed.current()
    device = torch.device(config.device)
    model, gates = build_sharded(
        build,
        read_state_mmap(checkpoint),
        lambda m: select_parameters(m, config.selection),
        device=device,
        init=config.init,
        tau=config.tau,
    )
    logits = [g.logit for g in gates.values()]
    optimizer = torch.optim.Adam(logits, lr=config.lr)  # after sharding: its moments are sharded too
    for i, g in enumerate(gates.values()):  # per-rank, per-tensor noise streams
        g.generator = torch.Generator(device).manual_seed(config.seed * 1_000_003 + world.rank * 10_007 + i)
    numel = sum(g.logit.numel() for g in gates.values())
    batches: Iterator[Any] = iter(task.batches("train", config.batch_size, torch.Generator().manual_seed(config.seed)))
    history: list[list[float]] = []
    last_loss, t0, step = float("nan"), time.perf_counter(), 0
    model.eval()
    _set_mode(gates, "sample")
    try:
        while step < config.steps:
            batch = next(batches)
            bsz = batch_size_of(batch)
            k = max(1, min(config.samples, bsz))
            chunks = split_batch(batch, k)
            local = 0.0
            for j in distributed.sample_share(k, world):
                # FSDP averages gradients over ranks; scale by R so that the sum over ranks is mean_k loss_k
                loss = _scalar_loss(task, _task_loss(task, MaskedModel(model, {}), to_device(chunks[j], device), step)) / k
                (loss * world.size).backward()
                local += float(loss.detach())
            summed, stop = distributed.agree_step(world, local, None, should_stop is not None and should_stop())
            if stop:
                raise Interrupted(f"interrupted at step {step}/{config.steps} of {task.name}; --shard keeps no state to resume")
            reg = config.beta / bsz
            with torch.no_grad():
                for p in logits:
                    p.grad.add_(reg)  # each rank adds it to the shard it owns: counted once
            total = torch.nn.utils.clip_grad_norm_(logits, config.clip)  # the norm over all shards
            norm = float(_global(total))
            last_loss = summed + reg * float(_full_sum(logits))
            if not (math.isfinite(last_loss) and math.isfinite(norm)):  # the same on every rank: both are global
                raise NumericalError(f"task {task.name!r}: loss {last_loss} / gradient norm {norm} at step {step + 1}")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % config.log_every == 0 or step == config.steps:
                density = _full_positive(logits) / numel
                history.append([step, last_loss, density])
                if callback is not None and world.is_main:
                    callback(StepEvent(task.name, step, config.steps, last_loss, density, time.perf_counter() - t0))
        masks = {n: binarize(g.logit.full_tensor().detach()).cpu() for n, g in gates.items()}
        _set_mode(gates, "off")
        metric_full = evaluate_task(model, task, device=device, batch_size=config.eval_batch_size)
        _set_mode(gates, "mask")
        metric_masked = evaluate_task(model, task, device=device, batch_size=config.eval_batch_size)
    finally:
        _set_mode(gates, "off")
    state = TrainState(step, {}, {}, _seed_bytes(config.seed), history)
    result = MaskResult(task, task_ref, config, masks, state, last_loss, metric_full, metric_masked, True)
    result.engine = {"backend": "fsdp2", "noise": "torch.Generator(seed, rank, tensor)", "processes": str(world.size)}
    return result


def _set_mode(gates: dict[str, LogitGate], mode: str) -> None:
    for g in gates.values():
        g.mode = mode


def _global(t: Tensor) -> Tensor:
    """A reduction of a sharded DTensor as a plain tensor (a collective); plain tensors pass through."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _full_sum(logits: list[Tensor]) -> float:
    """Sum of all logits across shards (a collective)."""
    return sum(float(_global(p.detach().sum())) for p in logits)


def _full_positive(logits: list[Tensor]) -> int:
    """How many logits are > 0 across shards (a collective)."""
    return sum(int(_global((p.detach() > 0).sum())) for p in logits)
