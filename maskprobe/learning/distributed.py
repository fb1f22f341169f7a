"""Data-parallel mask training on ``torch.distributed``, launched by ``torchrun`` (docs/distributed.md).

Nothing to configure: ``torchrun --standalone --nproc-per-node N -m maskprobe train ...`` sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR/PORT``; :func:`setup` reads them and joins the group with
``nccl`` on CUDA devices and ``gloo`` on the CPU. Without those variables (or with ``WORLD_SIZE=1``) every
function here is a no-op and the run is the ordinary single-process one.

How the work is split (the same arithmetic as one process with the same flags, so the same seed gives the
same mask at any process count, up to the order of floating-point sums):

* every rank draws the same global batch of ``B`` from the seeded stream and splits it into the ``K`` chunks
  of DESIGN §2; rank ``r`` runs chunks ``r K/R .. (r+1) K/R - 1``, each with the mask sample of that global
  index, so ranks see different data and different noise and ``K`` must be a multiple of ``R``;
* each rank's logit gradient holds its chunks' share of ``mean_k loss_k`` (and, on rank 0 only, the
  regulariser's ``beta / B``); :func:`reduce_gradient` sums them, which is the single-process gradient, and
  the norm clip and Adam then run identically on every rank;
* every step ends with :func:`agree_step`, one small ``all_gather`` that carries each rank's loss, error code
  and stop request, so an exception or a signal on one rank stops every rank at the same step with the same
  exit code instead of leaving the others waiting in a collective.

Only rank 0 prints, writes files and emits JSON (:func:`on_main`).
"""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

from ..errors import EXIT_INTERNAL, EXIT_SIGINT, BadInputError, MaskprobeError, RankFailed

T = TypeVar("T")

# how long a collective may wait for a peer before failing; a step of a large model can be slow, but a
# peer that died is normally detected at once (gloo: connection closed) or by torchrun stopping the group
TIMEOUT_ENV = "MASKPROBE_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800


@dataclass(frozen=True)
class World:
    """Where this process stands: its rank among ``size`` processes (``size == 1``: not distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints, writes files and emits JSON."""
        return self.rank == 0


SINGLE = World()


def detect(env: dict[str, str] | None = None) -> World:
    """The :class:`World` described by torchrun's environment variables (``SINGLE`` when absent or size 1).

    Raises:
        BadInputError: the variables are present but not integers, or the rank is out of range.
    """
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env or "RANK" not in env:
        return SINGLE
    try:
        size, rank = int(env["WORLD_SIZE"]), int(env["RANK"])
        local = int(env.get("LOCAL_RANK", rank))
    except ValueError:
        raise BadInputError("WORLD_SIZE/RANK/LOCAL_RANK must be integers (are you launching with torchrun?)") from None
    if size < 1 or not 0 <= rank < size:
        raise BadInputError(f"RANK={rank} does not fit WORLD_SIZE={size}")
    return World(rank, size, local) if size > 1 else SINGLE


def current() -> World:
    """This process's :class:`World`: the joined group's ranks, or ``SINGLE`` when no group is joined."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return World(dist.get_rank(), dist.get_world_size(), detect().local_rank)


def require_group(world: World | None = None) -> None:
    """``--shard`` needs a torchrun group of two or more processes (``world``: default :func:`current`).

    Raises:
        BadInputError: one process.
    """
    if not (world or current()).distributed:
        raise BadInputError("--shard runs under torchrun with 2 or more processes (docs/distributed.md)")


def setup(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group torchrun describes; returns the world and this rank's device.

    Args:
        device: the resolved ``--device``; ``cuda`` without an index becomes ``cuda:LOCAL_RANK``.

    Raises:
        BadInputError: ``cuda:N`` given under torchrun (every rank would pick the same GPU), or a torchrun
            environment without ``torch.distributed``.
    """
    import torch.distributed as dist

    world = detect()
    if not world.distributed:
        return SINGLE, device
    if not dist.is_available():
        raise BadInputError("this torch build has no torch.distributed; run without torchrun")
    if device.type == "cuda":
        if device.index is not None and device.index != world.local_rank:
            raise BadInputError("under torchrun give --device cuda (or auto): each process takes cuda:LOCAL_RANK")
        device = rank_device(world)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, timeout=timeout, **kwargs)
    return current(), device


def rank_device(world: World, env: dict[str, str] | None = None) -> torch.device:
    """The CUDA device of this rank: ``cuda:LOCAL_RANK`` (one process per GPU, as torchrun starts them).

    Raises:
        BadInputError: the node runs more processes (torchrun's ``LOCAL_WORLD_SIZE``, else this local rank + 1)
            than it has CUDA devices, where CUDA would fail with "invalid device ordinal". Every rank of the node
            raises it before joining the group, so each stops at once with the same line. Processes never share
            a GPU silently: the data-parallel split gives each one a device of its own.
    """
    env = os.environ if env is None else env
    try:
        local_size = max(int(env.get("LOCAL_WORLD_SIZE", "0")), world.local_rank + 1)
    except ValueError:
        local_size = world.local_rank + 1
    count = torch.cuda.device_count()
    if local_size > count:
        raise BadInputError(
            f"{local_size} processes per node but {count} CUDA device(s): start at most {count} "
            f"(torchrun --nproc-per-node {count}), one per GPU, or train with --device cpu"
        )
    return torch.device("cuda", world.local_rank)


def shutdown() -> None:
    """Leave the process group (a no-op when none was joined)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def sample_share(samples: int, world: World) -> range:
    """The global sample (chunk) indices rank ``world.rank`` runs: a contiguous ``samples / size`` of them.

    Raises:
        BadInputError: ``samples`` is not a multiple of the number of processes.
    """
    if samples % world.size:
        up = -(-samples // world.size) * world.size
        raise BadInputError(
            f"--samples {samples} does not split over {world.size} processes; each process runs whole mask samples, "
            f"so use a multiple of {world.size} (e.g. --samples {up}) or fewer processes"
        )
    per = samples // world.size
    return range(world.rank * per, (world.rank + 1) * per)


def reduce_gradient(grad: Tensor, world: World) -> float:
    """Sum the ranks' logit gradients in place (``grad``: the flat float32 gradient); returns the global norm."""
    if world.distributed:
        import torch.distributed as dist

        _collective(dist.all_reduce, grad, op=dist.ReduceOp.SUM)
    return float(torch.linalg.vector_norm(grad))


def sum_over_ranks(value: float, world: World) -> float:
    """``value`` summed over every rank (float64; a no-op for one process)."""
    if not world.distributed:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    _collective(dist.all_reduce, t, op=dist.ReduceOp.SUM)
    return float(t[0])


def agree_step(world: World, loss: float, error: BaseException | None, stop: bool) -> tuple[float, bool]:
    """End-of-step agreement: every rank learns the summed loss, whether any rank failed or wants to stop.

    Args:
        loss: this rank's share of the task loss (NaN allowed).
        error: the exception this rank hit during the step, if any.
        stop: this rank was asked to stop (SIGINT/SIGTERM).

    Returns:
        ``(global loss, stop)``; ``stop`` is True when any rank asked.

    Raises:
        The rank's own ``error`` on the failing rank(s); :class:`RankFailed` with the lowest failing rank's
        message and exit code on the others. Single process: ``error`` itself.
    """
    if not world.distributed:
        if error is not None:
            raise error
        return loss, stop
    import torch.distributed as dist

    code = _exit_code(error) if error is not None else 0
    mine = torch.tensor([loss, float(code), float(stop)], dtype=torch.float64, device=_collective_device())
    rows = [torch.empty_like(mine) for _ in range(world.size)]
    _collective(dist.all_gather, rows, mine)
    failed = [r for r, row in enumerate(rows) if row[1] != 0]
    if failed:
        messages: list[Any] = [None] * world.size
        _collective(dist.all_gather_object, messages, f"{type(error).__name__}: {error}" if error else "")
        if error is not None:
            _raise_reported(error, world)
        first = failed[0]
        raise RankFailed(f"rank {first} failed: {messages[first]}", int(rows[first][1]))
    total = math.fsum(float(row[0]) for row in rows)
    return total, any(bool(row[2]) for row in rows)


def on_main(world: World, fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on rank 0 only (a file write, say) and make every rank agree on its outcome.

    Returns:
        ``fn()``'s value on rank 0, None elsewhere.

    Raises:
        rank 0's exception on rank 0, :class:`RankFailed` with its exit code on the other ranks.
    """
    if not world.distributed:
        return fn()
    import torch.distributed as dist

    value, error = None, None
    if world.is_main:
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001 - every failure must reach the other ranks before re-raising
            error = exc
    box: list[Any] = [None if error is None else (_exit_code(error), f"{type(error).__name__}: {error}")]
    _collective(dist.broadcast_object_list, box, src=0)
    if error is not None:
        _raise_reported(error, world)
    if box[0] is not None:
        raise RankFailed(f"rank 0 failed: {box[0][1]}", int(box[0][0]))
    return value


def _raise_reported(error: BaseException, world: World) -> None:
    """Re-raise this rank's own error; the CLI keeps quiet about it on ranks other than 0, which report it."""
    if not world.is_main:
        error.reported_by_rank0 = True  # a declared attribute of MaskprobeError; set on a plugin's own exceptions too
    raise error


def _exit_code(error: BaseException) -> int:
    if isinstance(error, MaskprobeError):
        return int(error.exit_code)
    if isinstance(error, KeyboardInterrupt):
        return EXIT_SIGINT
    return EXIT_INTERNAL


def _collective_device() -> torch.device:
    """Where small control tensors live: the current CUDA device under nccl, the CPU under gloo."""
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _collective(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a collective; a peer that vanished (its process died) becomes one clear error, not a traceback."""
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, OSError) as exc:  # DistBackendError / gloo's "Connection closed by peer"
        raise RankFailed(
            f"another process of this run stopped ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "see its own output (torchrun names the failed rank)",
            1,
        ) from None
