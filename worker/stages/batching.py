"""Token-budget batching: group items so padded batches waste little compute.

Items are sorted by length, longest first; then a small dynamic program cuts the
sorted run into batches minimising `padded tokens + overhead per batch`, subject to
`width * count <= max_tokens` and `count <= max_batch`. The per-batch overhead (in
token equivalents) stops it from making many tiny batches to save a little padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

BATCH_OVERHEAD_TOKENS = 96


@dataclass(frozen=True)
class BatchPlan:
    batches: list[list[int]]
    real_tokens: int
    padded_tokens: int

    @property
    def padding_waste(self) -> float:
        """Fraction of computed positions that are padding (0 = none)."""
        return 0.0 if self.padded_tokens == 0 else 1.0 - self.real_tokens / self.padded_tokens


def plan_batches(lengths: Sequence[int], max_tokens: int, max_batch: int, overhead: int = BATCH_OVERHEAD_TOKENS) -> BatchPlan:
    """Index batches over `lengths` (longest first), each within the token budget."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    sizes = [max(1, lengths[i]) for i in order]
    n = len(sizes)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(end - 1, max(-1, end - 1 - max_batch), -1):
            count = end - start
            width = sizes[start]
            if count > 1 and width * count > max_tokens:
                break
            cost = best[start] + width * count + overhead
            if cost < best[end]:
                best[end], cut[end] = cost, start
    batches: list[list[int]] = []
    padded = 0
    end = n
    while end > 0:
        start = cut[end]
        batches.append(order[start:end])
        padded += sizes[start] * (end - start)
        end = start
    batches.reverse()
    return BatchPlan(batches, sum(sizes), padded)
