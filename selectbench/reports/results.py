"""The tidy ``results.csv``: writing and reading it (its columns: :mod:`selectbench.reports.columns`), the per-item
files beside it, and loading several runs into one."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from selectbench.errors import SelectbenchError
from selectbench.io import atomic_open, nonblank_lines
from selectbench.reports.columns import COLUMN_NAMES, COLUMNS, cell_text, filled, listing, validate_table

RESULTS_FILE = "results.csv"
ITEMS_DIR = "items"
# Labels shown for the two reference kinds wherever a selector name would go.
REFERENCE_LABELS = {"full": "full pool", "base": "base model"}
# Relative tolerance between a row's value and the (weighted) mean of its item values.
ITEM_MEAN_RTOL = 1e-6


# Values that must agree across every run put into one comparison (base rows have no recipe).
COMPARED = ("recipe_hash", "eval_config_hash", "model", "pool_fingerprint")


@dataclass(frozen=True)
class ItemValues:
    """Per-item values of one metric of one run, sorted by item id: ``value`` weighted by ``weight``."""

    ids: np.ndarray
    values: np.ndarray
    weights: np.ndarray

    @property
    def mean(self) -> float:
        """The weighted mean, which equals the run's ``value`` in results.csv."""
        return float(np.sum(self.values * self.weights) / np.sum(self.weights))


@dataclass
class Results:
    """Validated rows of one or more run folders, merged.

    Attributes:
        frame: one row per run x metric, the ``COLUMNS`` typed (missing optional columns are empty), plus
            ``source`` (the run folder, as given) and ``label`` (the selector label, or the reference's label).
        run_dirs: the run folders, in the order given.
        notes: things a reader of the report should know (a run found in several folders, kept from the first).
    """

    frame: pd.DataFrame
    run_dirs: list[Path]
    notes: list[str] = field(default_factory=list)
    _items: dict[tuple[str, str, str], dict[str, ItemValues]] = field(default_factory=dict, repr=False)

    def items(self, source: str, run_id: str, metric: str) -> ItemValues | None:
        """The per-item values behind one row, or None when the run wrote no items file for that benchmark."""
        bench = metric.split("/", 1)[0]
        key = (source, run_id, bench)
        if key not in self._items:
            self._items[key] = read_items(items_path(source, run_id, bench))
        return self._items[key].get(metric)

    def selection_file(self, row: Mapping[str, Any]) -> Path | None:
        """The selection.jsonl a row points to, or None when it has none."""
        rel = row.get("selection_path") or ""
        return Path(row["source"], rel) if rel else None


def items_path(run_dir: str | os.PathLike[str], run_id: str, bench: str) -> Path:
    """(contract) Where a run's per-item values of one benchmark live: ``<run_dir>/items/<run_id>/<bench>.jsonl``.

    Each line is ``{"item": ID, "metric": "<bench>/<name>", "value": V}`` plus an optional ``"weight": W > 0``
    (default 1). The row's ``value`` in results.csv must equal ``sum(w * v) / sum(w)`` over the metric's lines, so a
    token-weighted mean (heldout NLL) writes the per-item mean NLL as ``value`` and its token count as ``weight``.
    Every run of one comparison lists the same item ids for a metric.
    """
    return Path(run_dir, ITEMS_DIR, run_id, f"{bench}.jsonl")


def write_items(run_dir: str | os.PathLike[str], run_id: str, bench: str, lines: Iterable[Mapping[str, Any]]) -> Path:
    """Write a run's per-item values of one benchmark atomically (the format is in ``items_path``).

    Raises:
        SelectbenchError: a line lacks ``item``, ``metric`` or ``value``, has other keys, or a metric outside
            ``bench``.
    """
    from selectbench.io import dumps

    lines = [dict(line) for line in lines]
    problems = []
    for n, line in enumerate(lines, 1):
        keys = set(line)
        if not {"item", "metric", "value"} <= keys <= {"item", "metric", "value", "weight"}:
            problems.append(f"line {n}: keys {sorted(keys)}; expected item, metric, value and optionally weight")
        elif not str(line["metric"]).startswith(f"{bench}/"):
            problems.append(f"line {n}: metric {line['metric']!r} is not a {bench}/... metric")
    if problems:
        raise SelectbenchError(listing(f"per-item results of {run_id}/{bench}", problems))
    path = items_path(run_dir, run_id, bench)
    with atomic_open(path) as handle:
        handle.writelines(dumps(line) + "\n" for line in lines)
    return path


def read_items(path: Path) -> dict[str, ItemValues]:
    """Read one items file into {metric: ItemValues}; a missing file gives {}."""
    if not path.exists():
        return {}
    by_metric: dict[str, dict[str, tuple[float, float]]] = {}
    problems: list[str] = []
    for line_no, line in nonblank_lines(path):
        try:
            row = json.loads(line)
            item, metric, value = str(row["item"]), str(row["metric"]), float(row["value"])
            weight = float(row.get("weight", 1.0))
        except (ValueError, KeyError, TypeError) as err:
            problems.append(f"line {line_no}: expected {{'item', 'metric', 'value'[, 'weight']}} ({err})")
            continue
        if not math.isfinite(value) or not (math.isfinite(weight) and weight > 0):
            problems.append(f"line {line_no}: value must be finite and weight > 0, got {value} and {weight}")
            continue
        seen = by_metric.setdefault(metric, {})
        if item in seen:
            problems.append(f"line {line_no}: item {item!r} appears twice for {metric}")
        seen[item] = (value, weight)
    if problems:
        raise SelectbenchError(listing(f"{path}: bad per-item results", problems))
    out = {}
    for metric, seen in by_metric.items():
        ids = sorted(seen)
        out[metric] = ItemValues(
            ids=np.asarray(ids, dtype=object),
            values=np.asarray([seen[i][0] for i in ids], dtype=np.float64),
            weights=np.asarray([seen[i][1] for i in ids], dtype=np.float64),
        )
    return out


def results_file(run_dir: str | os.PathLike[str]) -> Path:
    """``run_dir/results.csv``; a path to a ``.csv`` file is taken as the file itself."""
    path = Path(run_dir)
    return path if path.suffix == ".csv" else path / RESULTS_FILE


def write_results(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Validate rows against ``COLUMNS`` and write them atomically as results.csv, columns in contract order.

    A row may leave out the keys of columns that can be empty; optional columns that no row fills are not
    written. None and NaN become empty cells, booleans ``true``/``false``, dicts and lists JSON.

    Raises:
        SelectbenchError: a row has an unknown column or a bad value, or leaves a must-fill column empty (all
            problems at once).
    """
    rows = [dict(row) for row in rows]
    unknown = sorted({key for row in rows for key in row} - set(COLUMN_NAMES))
    if unknown:
        raise SelectbenchError(
            f"results rows have unknown columns {unknown}; valid columns: {', '.join(COLUMN_NAMES)}"
        )
    names = [c.name for c in COLUMNS if c.required or any(filled(row.get(c.name)) for row in rows)]
    text_rows = [{name: cell_text(row.get(name)) for name in names} for row in rows]
    frame = pd.DataFrame(text_rows, columns=names, dtype=str)
    validate_table(frame, str(path))
    with atomic_open(path) as handle:
        writer = csv.DictWriter(handle, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        writer.writerows(text_rows)
    return Path(path)


def read_results(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read and validate one results.csv: typed columns, every problem reported at once.

    Raises:
        SelectbenchError: the file is missing or any row breaks the contract (file, line, column and problem).
    """
    path = Path(path)
    if not path.is_file():
        raise SelectbenchError(
            f"{path}: no such file; a run folder holds results.csv once `selectbench run` has aggregated it"
        )
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise SelectbenchError(f"{path}: not a readable CSV file ({err})") from err
    return validate_table(frame, str(path))


def load_results(run_dirs: Sequence[str | os.PathLike[str]]) -> Results:
    """Read several run folders' results.csv into one comparison.

    Refuses runs that cannot be compared: a different fine-tuning recipe, evaluation config, base model or pool
    (any of ``COMPARED`` that differs, base-model rows aside for the recipe), or one selector label with two
    different params. The same run (kind, selector, budget_k, seed, metric) found in several folders is kept from
    the first folder and the others are dropped with a note, so shared references are not counted twice.

    Raises:
        SelectbenchError: a file is missing or invalid, or the runs differ in what must agree (naming the runs
            and the values).
    """
    if not run_dirs:
        raise SelectbenchError("no run folders given; pass at least one folder holding results.csv")
    frames = []
    for run_dir in run_dirs:
        frame = read_results(results_file(run_dir))
        frame.insert(0, "source", str(results_file(run_dir).parent))
        frames.append(frame)
    merged = pd.concat(frames, ignore_index=True)
    _check_comparable(merged)
    merged, notes = _drop_duplicate_runs(merged)
    merged["label"] = [
        REFERENCE_LABELS.get(kind, selector) for kind, selector in zip(merged["kind"], merged["selector"], strict=True)
    ]
    results = Results(frame=merged.reset_index(drop=True), run_dirs=[Path(d) for d in run_dirs], notes=notes)
    _check_items(results)
    return results


def _check_comparable(frame: pd.DataFrame) -> None:
    problems = []
    for name in COMPARED:
        rows = frame if name != "recipe_hash" else frame[frame["kind"] != "base"]
        rows = rows[rows[name] != ""]
        values = rows.groupby(name, sort=True)
        if values.ngroups <= 1:
            continue
        what = {"recipe_hash": "fine-tuning recipes", "eval_config_hash": "evaluation configs"}.get(name, name)
        lines = []
        for value, group in values:
            runs = sorted({f"{src} ({rid})" for src, rid in zip(group["source"], group["run_id"], strict=True)})
            shown = ", ".join(runs[:4]) + (f" and {len(runs) - 4} more" if len(runs) > 4 else "")
            lines.append(f"{name}={value}: {shown}")
        problems.append(listing(f"runs with different {what} cannot be compared", lines))
    if "params" in frame:
        for selector, group in frame[frame["params"] != ""].groupby("selector"):
            distinct = sorted(set(group["params"]))
            if len(distinct) > 1:
                problems.append(
                    f"selector {selector!r} has different params in these runs: "
                    + "; ".join(f"{p} in {sorted(set(group[group['params'] == p]['source']))}" for p in distinct)
                    + " (give each parameter set its own selector label)"
                )
    if problems:
        raise SelectbenchError("\n".join(problems) + "\nReport such runs separately, or re-run them with one setup.")


def _drop_duplicate_runs(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One run (kind, selector, budget_k, seed) found in several folders is taken from the first folder only."""
    cell = ["kind", "selector", "budget_k", "seed"]
    runs = frame.drop_duplicates(subset=[*cell, "source"])
    keep = pd.Series(True, index=frame.index)
    notes = []
    for key, group in runs.groupby(cell, dropna=False, sort=True):
        sources = list(dict.fromkeys(group["source"]))
        if len(sources) < 2:
            continue
        kind, selector, budget_k, seed = key
        same = (frame["kind"] == kind) & (frame["selector"] == selector) & (frame["seed"] == seed)
        same &= frame["budget_k"].isna() if pd.isna(budget_k) else frame["budget_k"] == budget_k
        keep &= ~(same.fillna(False) & (frame["source"] != sources[0]))
        label = REFERENCE_LABELS.get(kind, selector) + ("" if pd.isna(budget_k) else f" k={budget_k}")
        notes.append(f"{label} seed {seed} is in several runs; kept {sources[0]}, dropped {', '.join(sources[1:])}")
    return frame[keep], notes


def _check_items(results: Results) -> None:
    """Every items file agrees with its rows, and every run of a metric lists the same items."""
    problems = []
    ids_of_metric: dict[str, tuple[np.ndarray, str]] = {}
    for row in results.frame.itertuples(index=False):
        if row.metric.startswith("intrinsic/"):
            continue
        items = results.items(row.source, row.run_id, row.metric)
        if items is None:
            continue
        where = str(items_path(row.source, row.run_id, row.metric.split("/", 1)[0]))
        if not math.isclose(items.mean, row.value, rel_tol=ITEM_MEAN_RTOL, abs_tol=1e-9):
            problems.append(
                f"{where}: the mean of {len(items.ids)} item values for {row.metric} is {items.mean!r}, but "
                f"results.csv has value={row.value!r} for run {row.run_id}"
            )
        first = ids_of_metric.setdefault(row.metric, (items.ids, where))
        if len(first[0]) != len(items.ids) or not np.array_equal(first[0], items.ids):
            problems.append(
                f"{where}: its {row.metric} items differ from those in {first[1]} "
                f"({len(items.ids)} vs {len(first[0])} items); every run must be evaluated on the same items"
            )
    if problems:
        raise SelectbenchError(listing("per-item results do not match results.csv", problems))
