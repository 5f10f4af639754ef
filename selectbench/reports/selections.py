"""What the runs selected: ids, response lengths and scores read from their selection.jsonl, and overlaps."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from selectbench.errors import SelectbenchError
from selectbench.io import nonblank_lines
from selectbench.reports.results import Results


@dataclass(frozen=True)
class SelectedRecords:
    """One selection.jsonl: ids in rank order, response lengths in words, and scores (NaN where none)."""

    ids: tuple[str, ...]
    lengths: np.ndarray
    scores: np.ndarray


def read_selection(path: Path) -> SelectedRecords:
    """Read a selection.jsonl (as ``selectbench select`` writes it).

    Raises:
        SelectbenchError: the file is missing or a line is not a selected record.
    """
    if not path.is_file():
        raise SelectbenchError(f"{path}: selection file not found (results.csv's selection_path points here)")
    stat = path.stat()
    return _read_selection(path.resolve(), stat.st_mtime_ns, stat.st_size)


# Keyed on modification time and size too, so a selection rewritten in the same process is read again.
@functools.lru_cache(maxsize=256)
def _read_selection(path: Path, mtime_ns: int, size: int) -> SelectedRecords:
    from selectbench.selectors.baselines import count_words

    ids, lengths, scores = [], [], []
    for line_no, line in nonblank_lines(path):
        try:
            record = json.loads(line)
            ids.append(str(record["id"]))
            lengths.append(count_words(record["response"]))
            score = (record.get("meta") or {}).get("score")
            scores.append(float(score) if score is not None else np.nan)
        except (ValueError, KeyError, TypeError) as err:
            raise SelectbenchError(f"{path}, line {line_no}: expected a selected record with id and response") from err
    return SelectedRecords(tuple(ids), np.asarray(lengths, dtype=np.float64), np.asarray(scores, dtype=np.float64))


def run_selections(results: Results, budget_k: int | None = None) -> dict[str, list[SelectedRecords]]:
    """{label: one SelectedRecords per seed} for the runs that point to a selection, ordered by label then seed.

    With ``budget_k``, only the selector runs at that budget; without it, every run with a selection (the
    full-pool reference included, when its row points to one).
    """
    frame = results.frame
    runs = frame.drop_duplicates(subset=["source", "run_id"])
    runs = runs[runs["selection_path"] != ""]
    if budget_k is not None:
        runs = runs[(runs["kind"] == "selector") & (runs["budget_k"] == budget_k)]
    out: dict[str, list[SelectedRecords]] = {}
    for row in runs.sort_values(["kind", "label", "seed"]).to_dict("records"):
        out.setdefault(row["label"], []).append(read_selection(results.selection_file(row)))  # type: ignore[arg-type]
    return out


def jaccard(a: tuple[str, ...] | set[str], b: tuple[str, ...] | set[str]) -> float:
    """|A & B| / |A | B| of two id collections (1.0 for two empty ones)."""
    a, b = set(a), set(b)
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def overlap_matrix(selections: dict[str, list[SelectedRecords]]) -> pd.DataFrame:
    """Mean Jaccard overlap between selectors' selections (one budget), as a labels x labels frame.

    Off the diagonal: the mean over every pair of seeds (one run of each selector). On the diagonal: the mean
    over pairs of distinct seeds of that selector (how stable it is across seeds), 1.0 when it ran one seed.
    """
    labels = list(selections)
    matrix = np.ones((len(labels), len(labels)))
    for i, a in enumerate(labels):
        for j, b in enumerate(labels):
            if i == j:
                runs = selections[a]
                pairs = [jaccard(x.ids, y.ids) for n, x in enumerate(runs) for y in runs[n + 1 :]]
                matrix[i, j] = float(np.mean(pairs)) if pairs else 1.0
            else:
                matrix[i, j] = float(np.mean([jaccard(x.ids, y.ids) for x in selections[a] for y in selections[b]]))
    return pd.DataFrame(matrix, index=labels, columns=labels)
