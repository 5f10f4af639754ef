"""Write and read a selection's artifacts: ``selection.jsonl``, ``meta.json`` and the ``DONE`` marker."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from selectbench.artifacts import SELECTION_FILE, StageFolder
from selectbench.data import Pool
from selectbench.io import dumps, versions
from selectbench.selectors.base import Selection


def selection_line(record: dict[str, Any], rank: int, score: float | None) -> dict[str, Any]:
    """One ``selection.jsonl`` line: the canonical fields, then ``meta`` (the original other columns)."""
    line = {
        "id": record["id"],
        "instruction": record["instruction"],
        "input": record["input"],
        "response": record["response"],
    }
    if "messages" in record:
        line["messages"] = record["messages"]
    meta = dict(record["meta"])
    meta["rank"] = rank
    if score is not None:
        meta["score"] = score
    line["meta"] = meta
    return line


def write_selection(out_dir: str | os.PathLike[str], pool: Pool, selection: Selection, **extra: Any) -> Path:
    """Write ``selection.jsonl`` (selected records in rank order) and ``meta.json``, then ``DONE``.

    Each file is written atomically and ``DONE`` last, so a reader that sees ``DONE`` sees a whole selection,
    and an interrupted write leaves no partial file. ``extra`` entries are added to ``meta.json``.
    """
    stage = StageFolder(out_dir)
    stage.begin()
    scores = selection.scores or [None] * len(selection.indices)
    with stage.open(SELECTION_FILE) as handle:
        step = 4096
        for start in range(0, len(selection.indices), step):
            chunk = selection.indices[start : start + step]
            for offset, record in enumerate(pool.records(chunk)):
                rank = start + offset + 1
                handle.write(dumps(selection_line(record, rank, scores[rank - 1])) + "\n")
    meta = {
        "stage": "select",
        "selector": selection.selector,
        "params": selection.params,
        "seed": selection.seed,
        "budget": {"given": selection.budget, "resolved": selection.k, "selected": len(selection.indices)},
        "pool": {
            "source": pool.source,
            "fingerprint": pool.fingerprint,
            "n": len(pool),
            "format": pool.format,
            "columns": pool.info.get("columns", {}),
            "load": pool.info["report"],
        },
        "info": selection.info,
        "timings": selection.timings,
        **extra,
        "ids": selection.ids,
        "versions": versions(),
    }
    stage.finish(meta)
    return stage.path
