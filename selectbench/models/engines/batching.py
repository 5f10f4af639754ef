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
    unpadded: bool = False,
) -> list[list[int]]:
    """``indices`` sorted longest first (ties keep their order) and cut into consecutive batches.

    A batch ends before it would exceed ``batch_size`` rows or ``batch_tokens`` padded tokens, counted as rows x
    (its longest sequence + ``extra``; for generation, the new tokens). A sequence longer than the budget gets a
    batch of its own. Sorting first keeps padding small: each batch's rows have similar lengths. With ``unpadded``,
    a batch also ends where the length changes, so no row is padded (sequences cut to one length, as held-out
    answers at ``max_length`` are, still share batches).
    """
    order = sorted(indices, key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current:
            longest = lengths[current[0]] + extra
            full = batch_size is not None and len(current) >= batch_size
            ragged = unpadded and lengths[i] != lengths[current[0]]
            if full or ragged or (len(current) + 1) * longest > batch_tokens:
                batches.append(current)
                current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


# On CPU, tokens per batch of equal-length sequences: batching them needs no padding and no attention mask. The 68
# held-out answers cut at 128 tokens scored in 20-27 s in batches of 16 against 28-30 s one at a time (dev-cpu,
# noisy shared cores; benchmarks/RESULTS.md), with identical losses.
CPU_UNPADDED_BATCH_TOKENS = 2048


def default_batch_tokens(device_type: str) -> int:
    """Padded tokens per forward-only batch (losses, embeddings) on ``device_type``: 8192 on a GPU. On CPU, where
    padding and masked attention cost more than batching saves (``benchmarks/RESULTS.md``, IFD scoring
    throughput), only sequences of one length share a batch (see :func:`forward_batches`)."""
    return 8192 if device_type == "cuda" else CPU_UNPADDED_BATCH_TOKENS


def forward_batches(
    indices: Iterable[int], lengths: Sequence[int], *, device_type: str, batch_tokens: int | None
) -> list[list[int]]:
    """Batches of a forward-only pass (losses, embeddings): ``batch_tokens`` padded tokens when given; else the
    device's default, unpadded on CPU."""
    if batch_tokens is not None:
        return length_batches(indices, lengths, batch_tokens=batch_tokens)
    return length_batches(
        indices, lengths, batch_tokens=default_batch_tokens(device_type), unpadded=device_type != "cuda"
    )
