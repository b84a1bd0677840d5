"""Dropout whose masks come from a counter hash instead of a Bernoulli sampler, for CPU training.

On two CPU cores ``F.dropout`` spends most of its time drawing random numbers: a profile of a translation training
step put its ``bernoulli_`` at 13 % of the step, about a hundred times an elementwise multiply of the same tensor
(docs/benchmarks.md, general-domain translation). Here a mask element is kept when a 32-bit hash of its flat index
falls at or above ``p``; the hash is a handful of vectorised integer operations:

- per call, two 32-bit values are drawn from torch's default generator: an odd multiplier ``a`` and an offset ``b``,
  so ``torch.manual_seed`` makes the masks reproducible and every call gets a fresh mask;
- element ``i`` hashes ``a * i + b`` (mod 2**32) through the ``lowbias32`` integer finaliser (two multiply-xorshift
  rounds with logical shifts), and its top 24 bits are compared with ``p * 2**24``.

Kept elements are scaled by ``1 / (1 - p)`` as ``F.dropout`` does, and the gradient is the same mask times the same
scale. ``hashed_dropout()`` swaps it in for ``torch.nn.functional.dropout`` (which transformers' layers call) for the
duration of a ``with`` block; outside training mode, at ``p == 0``, on non-CPU tensors and for non-float inputs it
calls the original.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
import torch.nn.functional as F

_M1 = 0x7FEB352D
_M2 = 0x846CA68B - (1 << 32)  # 0x846ca68b as a signed 32-bit value
_ORIGINAL = F.dropout
_LOCK = threading.Lock()
_depth = 0
_LOCAL = threading.local()


def _scratch(numel: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A counter ``0..numel-1`` and two int32 work buffers, kept per thread: a fresh 1 MiB tensor per operation cost
    about as much as the operation itself."""
    bufs = getattr(_LOCAL, "bufs", None)
    if bufs is None or bufs[0].numel() < numel:
        size = max(numel, 1 << 16)
        bufs = (torch.arange(size, dtype=torch.int32), torch.empty(size, dtype=torch.int32),
                torch.empty(size, dtype=torch.int32))
        _LOCAL.bufs = bufs
    return bufs[0][:numel], bufs[1][:numel], bufs[2][:numel]


def _xorshift(x: torch.Tensor, tmp: torch.Tensor, bits: int) -> None:
    """``x ^= x >> bits`` as unsigned 32-bit arithmetic (torch shifts int32 arithmetically: mask the sign copies)."""
    torch.bitwise_right_shift(x, bits, out=tmp)
    tmp.bitwise_and_((1 << (32 - bits)) - 1)
    x.bitwise_xor_(tmp)


def _keep_ints(numel: int, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """An int32 view holding 1 where an element is kept (probability ``1 - p``, to 2**-24) and 0 where dropped; it
    lives in a per-thread buffer that the next call overwrites."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    draws = torch.randint(-(1 << 31), (1 << 31) - 1, (2,), dtype=torch.int64, generator=generator).tolist()
    counter, x, tmp = _scratch(numel)
    torch.mul(counter, int(draws[0]) | 1, out=x)  # wraps mod 2**32: a Weyl sequence with a random odd step
    x.add_(int(draws[1]))
    _xorshift(x, tmp, 16)
    x.mul_(_M1)
    _xorshift(x, tmp, 15)
    x.mul_(_M2)
    _xorshift(x, tmp, 16)
    torch.bitwise_right_shift(x, 8, out=tmp)
    tmp.bitwise_and_(0xFFFFFF)  # the hash's 24 high bits, in [0, 2**24)
    tmp.sub_(int(round(p * (1 << 24))))  # negative where dropped
    tmp.bitwise_right_shift_(31)  # -1 where dropped, 0 where kept
    return tmp.add_(1)


def keep_mask(numel: int, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A flat boolean mask of ``numel`` elements, each True with probability ``1 - p`` (to 2**-24)."""
    return _keep_ints(numel, p, generator).bool()


def dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """``F.dropout`` with hashed masks; same signature, same expectation, same scaling."""
    if not training or p == 0.0 or input.device.type != "cpu" or not input.is_floating_point() or input.numel() == 0:
        return _ORIGINAL(input, p, training, inplace)
    if p == 1.0:
        return input.mul_(0.0) if inplace else input * 0.0
    # _keep_ints raises ValueError for p outside [0, 1]
    scale = _keep_ints(input.numel(), p, None).to(input.dtype).mul_(1.0 / (1.0 - p)).view(input.shape)
    return input.mul_(scale) if inplace else input * scale


@contextlib.contextmanager
def hashed_dropout(enabled: bool = True) -> Iterator[None]:
    """Within the block, ``torch.nn.functional.dropout`` is :func:`dropout` (nested blocks are fine; the original is
    back when the outermost one exits, also on an exception)."""
    global _depth
    if not enabled:
        yield
        return
    with _LOCK:
        _depth += 1
        F.dropout = dropout
    try:
        yield
    finally:
        with _LOCK:
            _depth -= 1
            if _depth == 0:
                F.dropout = _ORIGINAL
