"""The tidy ``results.csv`` contract: its columns, the per-item files beside it, and loading several runs into one."""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from selectbench.errors import SelectbenchError
from selectbench.io import atomic_open

RESULTS_FILE = "results.csv"
ITEMS_DIR = "items"
KINDS = ("selector", "full", "base")
# Labels shown for the two reference kinds wherever a selector name would go.
REFERENCE_LABELS = {"full": "full pool", "base": "base model"}
# Run ids name a folder under items/, so they are one plain path component.
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@=+,-]*$")
METRIC_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+/[^/\s]+$")
# Relative tolerance between a row's value and the (weighted) mean of its item values.
ITEM_MEAN_RTOL = 1e-6


@dataclass(frozen=True)
class Column:
    """One ``results.csv`` column.

    Attributes:
        name: the header.
        type: ``str``, ``int``, ``float`` or ``bool`` (``true``/``false``).
        required: the column must be in the file (the optional ones may be left out entirely).
        filled: every cell must hold a value (otherwise an empty cell means "not applicable" or "unknown").
        doc: what it holds.
    """

    name: str
    type: str
    required: bool
    filled: bool
    doc: str


# (contract) The columns of results.csv, in the order write_results writes them. One row per run x metric.
# fmt: off
COLUMNS: tuple[Column, ...] = (
    Column("run_id", "str", True, True,
           "unique id of one run (a fine-tuned model, or the base model) in this file; one path component of "
           "letters, digits and _ . @ = + , - (it names the folder items/<run_id>/)"),
    Column("selector", "str", True, True,
           "the selector's label in reports, distinct per parameter set (e.g. 'ifd', 'ifd-ppl'); 'full' on "
           "kind=full rows and 'base' on kind=base rows"),
    Column("budget", "str", True, False, "the budget as given in the config ('0.1', '50'); empty for full and base"),
    Column("budget_k", "int", True, False,
           "the budget resolved to a count of records (>= 1); must be filled for kind=selector; the pool size for "
           "kind=full; empty for base"),
    Column("seed", "int", True, True, "the run's seed (selection and fine-tuning); 0 for the base model"),
    Column("kind", "str", True, True, "selector | full (fine-tuned on the whole pool) | base (the model untouched)"),
    Column("metric", "str", True, True,
           "<benchmark>/<name>, e.g. humaneval/pass@1, heldout-nll/nll, alpacaeval/win_rate, alpacaeval/lc_win_rate, "
           "intrinsic/share_good, intrinsic/style_consistency"),
    Column("value", "float", True, True, "the metric's value for this run; finite; with items, their weighted mean"),
    Column("stderr", "float", True, False,
           "standard error of value over eval items, as the benchmark computes it; empty when unknown"),
    Column("n", "int", True, True, "eval items behind value (selected records for intrinsic/* metrics)"),
    Column("higher_is_better", "bool", True, True, "true or false; the same on every row of a metric"),
    Column("recipe_hash", "str", True, False,
           "hash of the resolved fine-tuning recipe; must be filled unless kind=base"),
    Column("eval_config_hash", "str", True, True,
           "hash of the resolved evaluation config (benchmarks, item subsets, decoding, judge)"),
    Column("tokens_trained", "int", True, False, "tokens fine-tuning trained on; 0 or empty for the base model"),
    Column("select_seconds", "float", True, False, "wall time of scoring + selection; empty when not applicable"),
    Column("train_seconds", "float", True, False, "wall time of fine-tuning; empty for the base model"),
    Column("eval_seconds", "float", True, False, "wall time of the run's evaluation (all benchmarks together)"),
    Column("selection_path", "str", True, False,
           "the run's selection.jsonl, relative to the folder holding results.csv; empty for the base model (and "
           "for full, unless it points to a selection.jsonl of the whole pool)"),
    Column("model", "str", True, True, "the base model spec fine-tuned (or evaluated, for kind=base)"),
    Column("pool_fingerprint", "str", False, False,
           "optional column: the pool's fingerprint; runs on different pools are not compared"),
    Column("params", "str", False, False,
           "optional column: the selector's params as JSON (sorted keys); one label must not carry two params"),
)
# fmt: on
COLUMN_NAMES: tuple[str, ...] = tuple(column.name for column in COLUMNS)
REQUIRED_COLUMNS: tuple[str, ...] = tuple(column.name for column in COLUMNS if column.required)
# Values that must agree across every run put into one comparison (base rows have no recipe).
COMPARED = ("recipe_hash", "eval_config_hash", "model", "pool_fingerprint")
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


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
        raise SelectbenchError(_listing(f"per-item results of {run_id}/{bench}", problems))
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
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
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
        raise SelectbenchError(_listing(f"{path}: bad per-item results", problems))
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
    names = [c.name for c in COLUMNS if c.required or any(_filled(row.get(c.name)) for row in rows)]
    text_rows = [{name: _cell(row.get(name)) for name in names} for row in rows]
    frame = pd.DataFrame(text_rows, columns=names, dtype=str)
    _validate(frame, str(path))
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
    return _validate(frame, str(path))


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
        problems.append(_listing(f"runs with different {what} cannot be compared", lines))
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
        raise SelectbenchError(_listing("per-item results do not match results.csv", problems))


def _validate(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """Check the columns and every cell; return a typed copy. All problems are raised together."""
    columns = list(frame.columns)
    unknown = [c for c in columns if c not in COLUMN_NAMES]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if unknown or missing:
        parts = []
        if missing:
            parts.append(f"missing required columns {missing}")
        if unknown:
            parts.append(f"unknown columns {unknown}")
        raise SelectbenchError(
            f"{where}: {'; '.join(parts)}; results.csv columns are: {', '.join(COLUMN_NAMES)} (required: "
            f"{', '.join(REQUIRED_COLUMNS)})"
        )
    frame = frame.copy()
    for name in COLUMN_NAMES:
        if name not in frame:
            frame[name] = ""
        frame[name] = frame[name].astype(str).str.strip()
    problems: list[str] = []
    typed: dict[str, list[Any]] = {c.name: [] for c in COLUMNS}
    for i, row in enumerate(frame.to_dict("records")):
        line = f"line {i + 2}"
        for column in COLUMNS:
            typed[column.name].append(_parse(row[column.name], column, line, problems))
        _check_row(row, typed, line, problems)
    if frame.empty:
        problems.append("no rows")
    if not problems:
        _check_table(frame, typed, problems)
    if problems:
        raise SelectbenchError(_listing(f"{where}: results do not follow the results.csv contract", problems))
    out = pd.DataFrame({name: typed[name] for name in COLUMN_NAMES})
    for name in ("budget_k", "n", "tokens_trained", "seed"):
        out[name] = out[name].astype("Int64")
    for name in ("value", "stderr", "select_seconds", "train_seconds", "eval_seconds"):
        out[name] = out[name].astype(np.float64)
    out["higher_is_better"] = out["higher_is_better"].astype(bool)
    return out


def _parse(text: str, column: Column, line: str, problems: list[str]) -> Any:
    if text == "":
        if column.filled:
            problems.append(f"{line}: column {column.name!r} is empty; expected {column.type} ({column.doc})")
        return {"float": math.nan, "int": pd.NA}.get(column.type, "")
    try:
        if column.type == "int":
            number = float(text)
            if not number.is_integer():
                raise ValueError
            return int(number)
        if column.type == "float":
            number = float(text)
            if not math.isfinite(number):
                raise ValueError
            return number
        if column.type == "bool":
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError
    except ValueError:
        expected = {"int": "an integer", "float": "a finite number", "bool": "true or false"}[column.type]
        problems.append(f"{line}: column {column.name!r} must be {expected}, got {text!r}")
        return {"float": math.nan, "int": pd.NA, "bool": False}[column.type]
    return text


def _check_row(row: Mapping[str, str], typed: Mapping[str, list[Any]], line: str, problems: list[str]) -> None:
    kind, run_id, metric = row["kind"], row["run_id"], row["metric"]
    if kind not in KINDS:
        problems.append(f"{line}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if run_id and not RUN_ID_PATTERN.match(run_id):
        problems.append(f"{line}: run_id {run_id!r} must be one path component (letters, digits, _ . @ = + , -)")
    if metric and not METRIC_PATTERN.match(metric):
        problems.append(f"{line}: metric must look like '<benchmark>/<name>' (e.g. humaneval/pass@1), got {metric!r}")
    if kind == "selector":
        k = typed["budget_k"][-1]
        if row["budget"] == "" or pd.isna(k) or k < 1:
            problems.append(f"{line}: a selector run needs budget (as given) and budget_k >= 1")
        if row["selector"] in ("full", "base"):
            problems.append(f"{line}: selector label {row['selector']!r} is reserved for kind={row['selector']}")
    elif kind in ("full", "base") and row["selector"] != kind:
        problems.append(f"{line}: kind={kind} rows must have selector={kind!r}, got {row['selector']!r}")
    if kind in ("selector", "full") and row["recipe_hash"] == "":
        problems.append(f"{line}: recipe_hash is empty; every fine-tuned run records its recipe hash")
    for name in ("n", "tokens_trained", "stderr", "select_seconds", "train_seconds", "eval_seconds"):
        number = typed[name][-1]
        if not pd.isna(number) and number < 0:
            problems.append(f"{line}: column {name!r} must be >= 0, got {number}")


def _check_table(frame: pd.DataFrame, typed: Mapping[str, list[Any]], problems: list[str]) -> None:
    seen: dict[tuple[str, str], int] = {}
    for i, (run_id, metric) in enumerate(zip(frame["run_id"], frame["metric"], strict=True)):
        if (run_id, metric) in seen:
            problems.append(
                f"line {i + 2}: run {run_id} has metric {metric} twice (first on line {seen[run_id, metric]})"
            )
        seen.setdefault((run_id, metric), i + 2)
    directions: dict[str, set[bool]] = {}
    for metric, better in zip(frame["metric"], typed["higher_is_better"], strict=True):
        directions.setdefault(metric, set()).add(better)
    for metric, found in directions.items():
        if len(found) > 1:
            problems.append(f"metric {metric}: higher_is_better is true on some rows and false on others")
    runs = pd.DataFrame({c: typed[c] for c in ("run_id", "selector", "kind", "seed", "budget_k")})
    for run_id, group in runs.groupby("run_id"):
        if len(group.astype(str).drop_duplicates()) > 1:
            problems.append(f"run {run_id}: selector, kind, seed and budget_k must be the same on all of its rows")


def _filled(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and value != ""


def _cell(value: Any) -> str:
    if not _filled(value):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _listing(head: str, lines: Sequence[str], limit: int = 20) -> str:
    shown = [f"  {line}" for line in lines[:limit]]
    if len(lines) > limit:
        shown.append(f"  ... and {len(lines) - limit} more")
    return head + ":\n" + "\n".join(shown)
