"""The training order: which examples a run trains on, in which order (seeded, matched, optionally grouped)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from selectbench.finetune.config import FinetuneConfig

GROUP_WINDOW_STEPS = 64  # length grouping sorts within windows of this many optimizer steps, then shuffles steps


def training_order(lengths: Sequence[int], config: FinetuneConfig) -> tuple[list[int], dict[str, Any]]:
    """The sequence of example indices the run trains on, in order, and how it was matched.

    A seeded shuffle per epoch, repeated as often as needed; cut to ``epochs`` passes, ``match_steps`` optimizer
    steps, or the first ``match_tokens`` tokens (the example that crosses the budget is kept); then, with
    ``batching=length``, sorted by length within windows of optimizer steps whose order is shuffled again. The
    cut comes before grouping, so grouping changes which examples share a step, never which are trained.
    """
    n = len(lengths)
    rng = random.Random(config.seed)
    order: list[int] = []

    def extend() -> None:
        epoch = list(range(n))
        rng.shuffle(epoch)
        order.extend(epoch)

    if config.matching == "epochs":
        total = max(1, round(config.epochs * n))
        while len(order) < total:
            extend()
        order = order[:total]
        target: dict[str, Any] = {"epochs": config.epochs}
    elif config.matching == "steps":
        total = config.match_steps * config.batch_size
        while len(order) < total:
            extend()
        order = order[:total]
        target = {"steps": config.match_steps}
    else:
        budget, seen, cut = config.match_tokens, 0, 0
        while seen < budget:
            if cut == len(order):
                extend()
            seen += lengths[order[cut]]
            cut += 1
        order = order[:cut]
        target = {"tokens": budget}
    if config.batching == "length":
        window = GROUP_WINDOW_STEPS * config.batch_size
        grouped: list[int] = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: -lengths[i])
            steps = [chunk[i : i + config.batch_size] for i in range(0, len(chunk), config.batch_size)]
            # The last step of the run may be partial; keep it last so every other step is full.
            head, tail = (steps[:-1], steps[-1:]) if start + window >= len(order) else (steps, [])
            rng.shuffle(head)
            grouped.extend(i for step in head + tail for i in step)
        order = grouped
    return order, target
