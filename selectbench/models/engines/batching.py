"""The one length-batching rule of every hf path (losses, generation, judge log-probabilities, embeddings)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def length_batches(
    indices: Iterable[int],
    lengths: Sequence[int],
    *,
    batch_tokens: int,
    batch_size: int | None = None,
    extra: int = 0,
) -> list[list[int]]:
    """``indices`` sorted longest first (ties keep their order) and cut into consecutive batches.

    A batch ends before it would exceed ``batch_size`` rows or ``batch_tokens`` padded tokens, counted as rows x
    (its longest sequence + ``extra``; for generation, the new tokens). A sequence longer than the budget gets a
    batch of its own. Sorting first keeps padding small: each batch's rows have similar lengths.
    """
    order = sorted(indices, key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current:
            longest = lengths[current[0]] + extra
            full = batch_size is not None and len(current) >= batch_size
            if full or (len(current) + 1) * longest > batch_tokens:
                batches.append(current)
                current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def default_batch_tokens(device_type: str) -> int:
    """Padded tokens per forward-only batch (losses, embeddings) on ``device_type``: 8192 on a GPU; 1 (each
    sequence alone, unpadded) on CPU, where padding and masked attention cost more than batching saves
    (``benchmarks/RESULTS.md``, IFD scoring throughput)."""
    return 8192 if device_type == "cuda" else 1
