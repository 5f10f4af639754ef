"""Intrinsic metrics of a selection from a labelled pool (the demo corpus): quality share, style, length spread."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from selectbench.selectors.baselines import count_words


def intrinsic_metrics(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Label-based summary of selected records.

    Uses ``meta.quality`` (``good``/``flawed``) and ``meta.style`` where present; records without a label are
    left out of that metric (it is None when no record has the label).

    Returns:
        ``n``; ``share_good``; ``dominant_style`` and ``dominant_style_share`` (style consistency: 1.0 means one
        style throughout); ``length_mean``, ``length_median``, ``length_std`` and ``length_iqr`` of response
        lengths in words (the ``longest`` selector's measure).
    """
    records = list(records)
    qualities = [r["meta"].get("quality") for r in records if r.get("meta", {}).get("quality") in ("good", "flawed")]
    styles = Counter(r["meta"]["style"] for r in records if r.get("meta", {}).get("style"))
    lengths = np.asarray([count_words(r["response"]) for r in records], dtype=np.float64)
    dominant, count = styles.most_common(1)[0] if styles else (None, 0)
    q1, median, q3 = np.percentile(lengths, [25, 50, 75]) if len(lengths) else (np.nan,) * 3
    return {
        "n": len(records),
        "share_good": (qualities.count("good") / len(qualities)) if qualities else None,
        "dominant_style": dominant,
        "dominant_style_share": (count / sum(styles.values())) if styles else None,
        "length_mean": float(lengths.mean()) if len(lengths) else None,
        "length_median": float(median) if len(lengths) else None,
        "length_std": float(lengths.std()) if len(lengths) else None,
        "length_iqr": float(q3 - q1) if len(lengths) else None,
    }
