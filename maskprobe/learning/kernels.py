"""Elementwise kernels of the mask step: counter-based noise, hard gate, fused straight-through gradient, Adam.

Two implementations of the same arithmetic:

* ``numba`` (CPU, optional extra ``fast``): one multithreaded pass per kernel, the noise recomputed from a
  counter-based hash in the backward pass instead of stored;
* ``torch`` (any device, always available): the same formulas as separate tensor ops; slower, used when
  numba is absent, on GPUs, and by the tests as the reference.

Given the same keep probabilities ``p`` both give bitwise-identical gated weights and gradients (only IEEE
``+ - * /`` on float32, in the same order, no fused multiply-add).

Noise. Element ``i`` of a tensor, for a 64-bit key (seed, step, sample, tensor), gets 32 hash bits
``h = fmix32(fmix32((i mod 2^32) xor k1) xor k2)`` (MurmurHash3's finaliser, a bijection), and the uniform
``u = (floor(h / 2^9) + 0.5) / 2^23`` in the open interval (0, 1), exact in float32. A weight is kept iff
``u > 1 - p`` with ``p = sigmoid(l)``, i.e. iff ``l + log(u) - log(1 - u) > 0``: the hard Gumbel-sigmoid
sample of DESIGN §2, ``P(keep) = p`` up to the 2^-23 grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

MASK32 = 0xFFFFFFFF
_C1 = 0x85EBCA6B
_C2 = 0xC2B2AE35
_GRID = 2.0**-23

try:  # the fast CPU path is optional; everything works (slower) without it
    import numba as _numba
    import numpy as np
except ImportError:  # pragma: no cover - exercised only where numba is absent
    _numba = None


def numba_available() -> bool:
    """True when the numba CPU kernels can be used."""
    return _numba is not None


def splitmix64(x: int) -> int:
    """SplitMix64 finaliser (a bijection on 64-bit ints); turns structured counters into well-mixed keys."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def noise_key(seed: int, step: int, sample: int, tensor: int) -> tuple[int, int]:
    """The two 32-bit hash keys of one (seed, step, sample, tensor); every field changes every draw."""
    x = splitmix64(seed & 0xFFFFFFFFFFFFFFFF)
    for field in (step, sample, tensor):
        x = splitmix64(x ^ (field & 0xFFFFFFFFFFFFFFFF))
    return x & MASK32, (x >> 32) & MASK32


# ---------------------------------------------------------------------------------------------------------
# torch reference implementation (any device)


def _fmix32_torch(h: Tensor) -> Tensor:
    # int64 holds 32-bit values; products wrap modulo 2^64 and the mask keeps the low 32 bits
    h = h ^ (h >> 16)
    h = (h * _C1) & MASK32
    h = h ^ (h >> 13)
    h = (h * _C2) & MASK32
    return h ^ (h >> 16)


def uniform_torch(n: int, key: tuple[int, int], device: torch.device | str = "cpu") -> Tensor:
    """The hash uniforms of elements ``0..n-1`` for ``key`` (float32, shape ``(n,)``)."""
    i = torch.arange(n, dtype=torch.int64, device=device) & MASK32
    h = _fmix32_torch(_fmix32_torch(i ^ key[0]) ^ key[1])
    return ((h >> 9).to(torch.float32) + 0.5) * _GRID


def gate_forward_torch(w: Tensor, p: Tensor, key: tuple[int, int], out: Tensor) -> Tensor:
    """``out = w`` where ``u > 1 - p`` else 0 (all flat, same length); returns ``out``."""
    u = uniform_torch(w.numel(), key, w.device)
    torch.where(u > (1.0 - p), w, torch.zeros((), dtype=w.dtype, device=w.device), out=out)
    return out


def _soft_torch(p: Tensor, logits: Tensor, u: Tensor, tau: float) -> Tensor:
    if tau == 1.0:
        a = p * u
        return a / (a + (1.0 - p) * (1.0 - u))
    return torch.sigmoid((logits + (torch.log(u) - torch.log1p(-u))) / tau)


def gate_backward_torch(
    w: Tensor,
    p: Tensor,
    logits: Tensor,
    grads: Sequence[Tensor | None],
    keys: Sequence[tuple[int, int]],
    tau: float,
    reg: float,
    out: Tensor,
) -> float:
    """``out = sum_k grads[k] * w * s_k (1 - s_k) / tau + reg``; returns ``sum(out**2)`` (float64).

    ``grads[k]`` is the loss gradient w.r.t. sample k's gated weight (None: the sample did not use it).
    ``out`` may be ``p`` itself (all reads of ``p`` happen before the write).
    """
    acc = torch.zeros_like(p)
    for g, key in zip(grads, keys, strict=True):
        if g is None:
            continue
        s = _soft_torch(p, logits, uniform_torch(w.numel(), key, w.device), tau)
        ds = s * (1.0 - s)
        if tau != 1.0:
            ds = ds / tau
        acc = acc + (g * w) * ds
    torch.add(acc, reg, out=out)
    return float(out.double().square().sum())


def adam_step(
    logits: Tensor, grad: Tensor, m: Tensor, v: Tensor, *, lr: float, b1: float, b2: float, eps: float, t: int, scale: float
) -> None:
    """One Adam step (torch.optim.Adam's formulas) on ``grad * scale``, in place on ``logits``, ``m`` and ``v``.

    The torch backend's update, and the sharded engine's on each rank's shard. Moments stored in another dtype
    (``--adam-state bf16``) are updated in fp32 copies and stored back rounded."""
    if m.dtype != torch.float32:
        m32, v32 = m.float(), v.float()
        adam_step(logits, grad, m32, v32, lr=lr, b1=b1, b2=b2, eps=eps, t=t, scale=scale)
        m.copy_(m32)
        v.copy_(v32)
        return
    g = grad * scale
    m.lerp_(g, 1.0 - b1)
    v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
    step_size = lr / (1.0 - b1**t)
    denom = (v.sqrt() / math.sqrt(1.0 - b2**t)).add_(eps)
    logits.addcdiv_(m, denom, value=-step_size)


def adam_torch(
    logits: Tensor, grad: Tensor, m: Tensor, v: Tensor, *, lr: float, b1: float, b2: float, eps: float, t: int, scale: float
) -> float:
    """:func:`adam_step`, then ``grad := sigmoid(logits)`` (the fused engine's work buffer holds p again).

    Returns ``sum(logits)`` after the update (the next step's regulariser).
    """
    adam_step(logits, grad, m, v, lr=lr, b1=b1, b2=b2, eps=eps, t=t, scale=scale)
    torch.sigmoid(logits, out=grad)
    return float(logits.sum())


# ---------------------------------------------------------------------------------------------------------
# numba implementation (CPU)

if _numba is not None:
    _f32 = np.float32
    _U32 = np.uint32
    _U64 = np.uint64
    _BLOCK = 8192  # elements per work item: big enough to amortise the loop, small enough to stay in L2

    @_numba.njit(inline="always")
    def _fmix32(h):
        # every step cast back to uint32 so that LLVM keeps 32-bit lanes (twice the 64-bit throughput)
        h = _U32(h ^ (h >> _U32(16)))
        h = _U32(h * _U32(_C1))
        h = _U32(h ^ (h >> _U32(13)))
        h = _U32(h * _U32(_C2))
        return _U32(h ^ (h >> _U32(16)))

    @_numba.njit(inline="always")
    def _uniform(i, k1, k2):
        h = _fmix32(_U32(_fmix32(_U32(_U32(i) ^ k1)) ^ k2))
        return (_f32(h >> _U32(9)) + _f32(0.5)) * _f32(_GRID)

    @_numba.njit(fastmath={"reassoc", "nsz", "contract"}, inline="always")
    def _sumsq(x, lo, hi):
        # reassociation lets LLVM vectorise the reduction; it only touches the norm, never the gradient
        s = _f32(0.0)
        for i in range(lo, hi):
            s += x[i] * x[i]
        return s

    # Serial loops over whole (sliced) arrays, threads come from ``_run``. error_model="numpy" drops the
    # division-by-zero branches of Python semantics, which otherwise keep LLVM from vectorising (5x slower).
    _jit = _numba.njit(cache=True, nogil=True, error_model="numpy")

    @_jit
    def _nb_gate_forward(w, p, k1, k2, out, base):
        for i in range(w.size):
            u = _uniform(i + base, k1, k2)
            out[i] = w[i] if u > _f32(1.0) - p[i] else _f32(0.0)

    @_numba.njit(inline="always")
    def _ds(pi, u):
        a = pi * u
        s = a / (a + (_f32(1.0) - pi) * (_f32(1.0) - u))
        return s * (_f32(1.0) - s)

    @_jit
    def _nb_gate_backward(w, p, grads, k1s, k2s, reg, out, base):
        n = w.size
        nblocks = (n + _BLOCK - 1) // _BLOCK
        total = 0.0
        pb = np.empty(_BLOCK, dtype=np.float32)
        for b in range(nblocks):
            # unsigned indices: numba then skips negative-index wrap-around and LLVM vectorises the loops
            lo = _U64(b * _BLOCK)
            hi = _U64(min(b * _BLOCK + _BLOCK, n))
            # ``out`` may be ``p`` itself (the step's work buffer): keep this block's p aside first
            for i in range(lo, hi):
                pb[i - lo] = p[i]
            g = grads[0]
            k1 = k1s[0]
            k2 = k2s[0]
            for i in range(lo, hi):
                out[i] = (g[i] * w[i]) * _ds(pb[i - lo], _uniform(i + base, k1, k2))
            for k in range(1, len(grads)):
                g = grads[k]
                k1 = k1s[k]
                k2 = k2s[k]
                for i in range(lo, hi):
                    out[i] = out[i] + (g[i] * w[i]) * _ds(pb[i - lo], _uniform(i + base, k1, k2))
            for i in range(lo, hi):
                out[i] = out[i] + reg
            total += _sumsq(out, lo, hi)
        return total

    @_jit
    def _nb_adam(logits, grad, m, v, step_size, bc2, c1, c2, b2, eps, scale):
        for i in range(logits.size):
            g = grad[i] * scale
            mi = m[i] + c1 * (g - m[i])
            vi = v[i] * b2 + c2 * (g * g)
            m[i] = mi
            v[i] = vi
            logits[i] = logits[i] - step_size * (mi / (math.sqrt(vi) / bc2 + eps))


# Threads. numba's own parallel loops would run on a second OpenMP runtime beside torch's, and on a machine
# with few cores the two pools' spinning workers starve each other (measured: 5-10x slower steps on 2
# cores). So the kernels are serial, release the GIL, and large tensors are split over a plain thread pool
# (torch.get_num_threads() ranges) whose idle workers sleep instead of spinning.
_PARALLEL_MIN = 1 << 18  # elements; below this one thread is faster than handing work over
_pool: Any = None


def _ranges(n: int) -> list[tuple[int, int]]:
    parts = max(1, torch.get_num_threads()) if n >= _PARALLEL_MIN else 1
    step = -(-n // parts)
    step = max(8192, -(-step // 8192) * 8192)  # whole blocks (at least one: a tensor of 0 elements is one empty range)
    return [(lo, min(lo + step, n)) for lo in range(0, n, step)] or [(0, 0)]


def _run(call: Any, n: int) -> list[Any]:
    """``call(lo, hi)`` over ``0..n`` in ranges: all but the first on the pool, the first here."""
    global _pool
    ranges = _ranges(n)
    if len(ranges) > 1 and (_pool is None or _pool._max_workers < len(ranges) - 1):
        from concurrent.futures import ThreadPoolExecutor

        _pool = ThreadPoolExecutor(max_workers=len(ranges) - 1, thread_name_prefix="maskprobe-kernel")
    futures = [_pool.submit(_retrying, call, lo, hi) for lo, hi in ranges[1:]]
    first = _retrying(call, *ranges[0])
    return [first, *(f.result() for f in futures)]


def _retrying(call: Any, lo: int, hi: int) -> Any:
    # numba's on-disk cache can be caught half-written by another process compiling the same kernel (seen
    # once while several test runs started at the same time); a second attempt reloads or recompiles it
    try:
        return call(lo, hi)
    except Exception:  # noqa: BLE001 - retried once, then raised
        import time

        time.sleep(0.5)
        return call(lo, hi)


def _np(t: Tensor):
    return t.detach().numpy()


def gate_forward_numba(w: Tensor, p: Tensor, key: tuple[int, int], out: Tensor) -> Tensor:
    """numba version of :func:`gate_forward_torch` (CPU, contiguous float32, flat)."""
    W, P, out_ = _np(w), _np(p), _np(out)
    k1, k2 = np.uint32(key[0]), np.uint32(key[1])
    _run(lambda lo, hi: _nb_gate_forward(W[lo:hi], P[lo:hi], k1, k2, out_[lo:hi], np.uint64(lo)), w.numel())
    return out


def gate_backward_numba(
    w: Tensor,
    p: Tensor,
    logits: Tensor,
    grads: Sequence[Tensor | None],
    keys: Sequence[tuple[int, int]],
    tau: float,
    reg: float,
    out: Tensor,
) -> float:
    """numba version of :func:`gate_backward_torch` (``tau == 1`` only; others use the torch path)."""
    used = [(g, k) for g, k in zip(grads, keys, strict=True) if g is not None]
    if tau != 1.0 or not used:
        return gate_backward_torch(w, p, logits, grads, keys, tau, reg, out)
    G = [_np(g.reshape(-1)) for g, _ in used]
    k1s = np.array([k[0] for _, k in used], dtype=np.uint32)
    k2s = np.array([k[1] for _, k in used], dtype=np.uint32)
    W, P, out_, r = _np(w), _np(p), _np(out), np.float32(reg)

    def call(lo: int, hi: int) -> float:
        return _nb_gate_backward(W[lo:hi], P[lo:hi], tuple(g[lo:hi] for g in G), k1s, k2s, r, out_[lo:hi], np.uint64(lo))

    return float(sum(_run(call, w.numel())))


def adam_numba(
    logits: Tensor, grad: Tensor, m: Tensor, v: Tensor, *, lr: float, b1: float, b2: float, eps: float, t: int, scale: float
) -> float:
    """numba version of :func:`adam_torch`."""
    f = np.float32
    consts = (f(lr / (1.0 - b1**t)), f(math.sqrt(1.0 - b2**t)), f(1.0 - b1), f(1.0 - b2), f(b2), f(eps), f(scale))
    L, G, M, V = _np(logits), _np(grad), _np(m), _np(v)
    _run(lambda lo, hi: _nb_adam(L[lo:hi], G[lo:hi], M[lo:hi], V[lo:hi], *consts), logits.numel())
    torch.sigmoid(logits, out=grad)
    return float(logits.sum())
