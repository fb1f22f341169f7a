"""The settings of a mask-training run, in one place (no torch import: the CLI reads its defaults from here).

:class:`TrainConfig` holds every hyper-parameter with the paper's code's default (DESIGN §2) except ``steps``;
:class:`Selection` says which parameters get a mask (:mod:`maskprobe.learning.selection` applies it). The CLI's flags
are these fields, their defaults these defaults, and a mask file's ``hparams`` / ``selection`` metadata are
:meth:`TrainConfig.hparams` and :meth:`Selection.to_dict`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# defaults shared by several functions, each set once here
DEVICE = "cpu"  # the library's: a notebook gets what it asks for; the CLI's --device is "auto" (commands/options.py)
EVAL_BATCH_SIZE = 1024  # batch size of every evaluation (training's final ones, evaluate, compare's ablation)
CONTROL_SEED = 0  # seed of compare's random-removal controls
PRECISIONS = ("fp32", "tf32", "bf16")  # TrainConfig.precision's values (docs/method.md, "Precision")
REGULARISER = "beta / batch_size * sum(logits)"  # the objective's regulariser, recorded in every mask file's hparams
ADAM_STATES = ("fp32", "bf16")  # TrainConfig.adam_state's values (docs/method.md, "Adam's state in bf16")
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # a seed is a 64-bit signed integer (beyond it, an overflow deep inside torch)


@dataclass(frozen=True)
class Selection:
    """Which parameters are masked (docs/method.md, "What is masked").

    Attributes:
        include: globs of parameter names; when given, exactly the floating parameters matching one are masked.
        exclude: globs of parameter names never masked.
        mask_biases: mask biases too (default False, the paper's).
        mask_norms: mask normalisation-layer gains (default False, measured: masked gains end ~100 % kept in every
            mask, so removing a whole mask removes them all and the inverted removal and P_reuse say nothing;
            docs/method.md "What is masked". True is the paper's code).
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    mask_biases: bool = False
    mask_norms: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "include": list(self.include), "exclude": list(self.exclude)}


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one mask; defaults are the paper's code's except ``steps`` (paper: 20,000).

    Attributes:
        steps: optimiser steps (default 5,000).
        batch_size: examples per step, B (default 128), split into ``samples`` chunks.
        lr: Adam learning rate on the logits (default 1e-2).
        beta: regulariser strength: ``loss += beta / B * sum(logits)`` (default 1e-4).
        samples: mask samples K per step (default 4); the batch must hold at least K examples.
        init: initial logit (default 2.0: keep probability 0.881).
        tau: Gumbel-sigmoid temperature (default 1.0; changes the gradient only).
        clip: gradient-norm clip over the logits (default 1.0).
        seed: data order and mask noise (default 0).
        device: where the run happens (default ``"cpu"``).
        backend: mask-step kernels: ``auto``, ``numba``, ``torch`` or ``compile`` (maskprobe/learning/maskstep.py).
        batched_samples: run the K samples of a step as one ``torch.func.vmap`` over stacked gated weights instead
            of a loop over chunks, where the task's loss allows it and the chunks have equal sizes (the loop
            otherwise); the same noise, the same mask up to float rounding. Default False (docs/benchmarks.md,
            "K samples batched").
        precision: the arithmetic of the task's forward and loss during training: ``fp32`` (the default), ``tf32``
            (CUDA's TF32 matmuls and convolutions for the run; on the CPU the same as fp32, with a warning) or
            ``bf16`` (``torch.autocast`` to bfloat16). The gates, logits, Adam, the regulariser and the final
            evaluations stay fp32 (docs/method.md, "Precision"). Recorded only when not fp32.
        adam_state: the dtype Adam's two moments of the logits are stored in: ``fp32`` (the default) or ``bf16``
            (half the optimiser's memory, 4 bytes per masked weight instead of 8; the update itself is computed in
            fp32). Not with the numba backend (``auto`` picks torch on the CPU) or ``--shard``. Recorded only when
            not fp32.
        eval_batch_size: batch size of the evaluations (default 1024).
        log_every: progress events every this many steps (default 25).
        eval_every: the task metric under the current mask every this many steps, on one evaluation batch
            (default None: ten times per run).
        fixed_from: a mask file whose tensors ``fixed`` are copied into this mask and not trained (the paper's
            class removal keeps the control mask's output layer, so that removal happens in the features);
            default None: every masked tensor is trained.
        fixed: with ``fixed_from``: globs of the tensors held fixed, or ``"output"`` for the output layer's
            (the recorded roles, maskprobe.masks.layout; the default).
        keep: a target instead of a fixed beta (default None: beta is fixed): the fraction of the unmasked metric
            the mask must keep, e.g. 0.95; beta then starts at ``beta`` and a controller moves it during training
            (maskprobe/learning/controller.py, docs/method.md "A target instead of a beta").
        chosen: the settings that were not given and were chosen from the model's size and the device
            (:func:`auto_settings`; default empty: every setting as given). Recorded, never an input.
        selection: which parameters get a mask.
    """

    steps: int = 5000
    batch_size: int = 128
    lr: float = 1e-2
    beta: float = 1e-4
    samples: int = 4
    init: float = 2.0
    tau: float = 1.0
    clip: float = 1.0
    seed: int = 0
    device: str = DEVICE
    backend: str = "auto"
    batched_samples: bool = False
    precision: str = "fp32"
    adam_state: str = "fp32"
    eval_batch_size: int = EVAL_BATCH_SIZE
    log_every: int = 25
    eval_every: int | None = None
    fixed_from: str | None = None
    fixed: tuple[str, ...] = ("output",)
    keep: float | None = None
    chosen: tuple[str, ...] = ()
    selection: Selection = field(default_factory=Selection)

    def hparams(self) -> dict[str, Any]:
        """What a mask file records (and a resumed run must agree on): every field but the selection and the
        progress cadence; ``keep``, ``chosen``, ``precision`` and ``adam_state`` only when set (a fixed-beta fp32
        run records what it always did, and its old mask and state files still match)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("selection", "log_every", "eval_every")}
        d.update(fixed=list(self.fixed), chosen=list(self.chosen))
        unset = {"keep": None, "chosen": [], "precision": "fp32", "adam_state": "fp32"}  # not recorded at these values
        return {k: v for k, v in d.items() if k not in unset or v != unset[k]}

    def check(self) -> None:
        """Refuse settings that would make NaN logits or a different run than the one recorded.

        Raises:
            BadInputError: a non-finite or non-positive setting, a cadence or evaluation batch below 1, or a batch
                smaller than ``samples``, an unknown ``precision``.
        """
        import math

        from .errors import BadInputError

        for name in ("lr", "beta", "init", "tau", "clip"):
            v = getattr(self, name)
            if not math.isfinite(v):
                raise BadInputError(f"--{name} must be a finite number, got {v}")
            if name in ("lr", "tau", "clip") and v <= 0:
                raise BadInputError(f"--{name} must be > 0, got {v}")
            if name == "beta" and v < 0:
                raise BadInputError(f"--beta must be >= 0, got {v}")
        if not SEED_MIN <= self.seed <= SEED_MAX:  # torch's generators and the state file hold 64-bit signed seeds
            raise BadInputError(f"--seed must be an integer from {SEED_MIN} to {SEED_MAX}, got {self.seed}")
        for name in ("steps", "batch_size", "samples"):
            if getattr(self, name) < 1:
                raise BadInputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_batch_size", "log_every"):  # library settings (no flags): 0 would fail after the first step
            if getattr(self, name) < 1:
                raise BadInputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every is not None and self.eval_every < 1:
            raise BadInputError(f"eval_every must be >= 1 (or None: ten times per run), got {self.eval_every}")
        if self.keep is not None and not (0 < self.keep <= 1):
            raise BadInputError(f"--keep must be a fraction of the unmasked metric in (0, 1], got {self.keep}")
        if self.keep is not None and self.beta <= 0:
            raise BadInputError("--keep moves beta by factors from its start: give a --beta > 0 to start from")
        if self.precision not in PRECISIONS:
            raise BadInputError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.adam_state not in ADAM_STATES:
            raise BadInputError(f"--adam-state must be one of {', '.join(ADAM_STATES)}, got {self.adam_state!r}")
        if self.batch_size < self.samples:
            raise BadInputError(
                f"--batch-size {self.batch_size} is smaller than --samples {self.samples}: the batch must hold at least "
                f"K={self.samples} examples, one chunk per mask sample (raise --batch-size or lower --samples)"
            )


# Where beta starts under --keep when --beta is not given: low, because beta rises quickly while the target is kept
# and falls only after the mask has paid for a beta too high (measured on all-MiniLM-L6-v2: starting at the
# default 1e-4 cost the mask its sparsity for the rest of a 500-step run; docs/method.md, "A target instead of a beta")
KEEP_START_BETA = 1e-6

# Settings chosen when not given (``maskprobe train`` without --steps / --batch-size / --lr): by the number of masked
# weights and the device. Small networks keep the paper-like defaults (5,000 steps of 128: the arithmetic FNNs);
# a pretrained transformer of tens of millions of weights gets the recipe measured on all-MiniLM-L6-v2 on a CPU
# (500 steps of 32 at lr 0.05, docs/real-models.md), larger ones fewer steps; a GPU affords more of both.
# (largest masked weight count, steps on the CPU, batch on the CPU, steps on a GPU, batch on a GPU)
AUTO_TIERS = (
    (2_000_000, 5000, 128, 5000, 128),
    (50_000_000, 500, 32, 2000, 64),
    (None, 300, 16, 1000, 32),
)


# A run given neither --beta nor --keep on a model past the first tier (more than 2M masked weights: in practice a
# pretrained network) gets ``--keep DEFAULT_KEEP`` from beta KEEP_START_BETA: the paper's beta 1e-4 left 0.16 % of
# all-MiniLM-L6-v2's weights, while --keep 0.97 found 11.4 % at cosine 0.976, what the hand-tuned recipe found
# (docs/method.md, "Settings chosen for the model"). Small networks keep the paper's fixed beta.
DEFAULT_KEEP = 0.97


def auto_settings(masked: int, device: str, given: TrainConfig, choose: tuple[str, ...]) -> dict[str, Any]:
    """Values for the settings named in ``choose`` (``steps``, ``batch_size``, ``lr``, ``beta``) for a model with
    ``masked`` weights to mask on ``device``; ``lr`` is chosen so that a logit can cross 0 (from ``init``, about
    ``lr`` per step) within the first 8 % of the run (40 steps of 500 at lr 0.05, the MiniLM recipe), never below
    the default; ``beta`` (given neither --beta nor --keep) becomes ``keep=DEFAULT_KEEP`` from
    ``beta=KEEP_START_BETA`` past the first tier and stays the paper's within it. Settings not in ``choose`` stay."""
    tier = next(i for i, (limit, *_) in enumerate(AUTO_TIERS) if limit is None or masked <= limit)
    steps, batch = AUTO_TIERS[tier][1:3] if str(device).startswith("cpu") else AUTO_TIERS[tier][3:]
    out: dict[str, Any] = {}
    if "beta" in choose and tier > 0:
        out["keep"], out["beta"] = DEFAULT_KEEP, KEEP_START_BETA
    if "steps" in choose:
        out["steps"] = steps
    if "batch_size" in choose:
        out["batch_size"] = max(batch, given.samples)
    if "lr" in choose:
        run = out.get("steps", given.steps)
        out["lr"] = max(TrainConfig.lr, round(abs(given.init) / (0.08 * run), 3))
    return out
