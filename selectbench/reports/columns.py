"""The ``results.csv`` columns (the contract every results file follows) and the check of a table against them."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from selectbench.errors import SelectbenchError

KINDS = ("selector", "full", "base")
# Run ids name a folder under items/, so they are one plain path component.
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@=+,-]*$")
METRIC_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+/[^/\s]+$")


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
    Column("n_selected", "int", False, False,
           "optional column: records the run's selection holds; below budget_k when the selector could not fill "
           "the budget (its filter passed too few), and the report marks the row"),
    Column("value_min", "float", False, False,
           "optional column: the least value the metric can take (0 for a share); intervals stay above it"),
    Column("value_max", "float", False, False,
           "optional column: the largest value the metric can take (1 for a share, 100 for a percentage); "
           "intervals stay below it"),
)
# fmt: on
COLUMN_NAMES: tuple[str, ...] = tuple(column.name for column in COLUMNS)
REQUIRED_COLUMNS: tuple[str, ...] = tuple(column.name for column in COLUMNS if column.required)
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def validate_table(frame: pd.DataFrame, where: str) -> pd.DataFrame:
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
        raise SelectbenchError(listing(f"{where}: results do not follow the results.csv contract", problems))
    out = pd.DataFrame({name: typed[name] for name in COLUMN_NAMES})
    for name in ("budget_k", "n", "tokens_trained", "seed", "n_selected"):
        out[name] = out[name].astype("Int64")
    for name in ("value", "stderr", "select_seconds", "train_seconds", "eval_seconds", "value_min", "value_max"):
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
    for name in ("n", "tokens_trained", "stderr", "select_seconds", "train_seconds", "eval_seconds", "n_selected"):
        number = typed[name][-1]
        if not pd.isna(number) and number < 0:
            problems.append(f"{line}: column {name!r} must be >= 0, got {number}")
    low, high, value = typed["value_min"][-1], typed["value_max"][-1], typed["value"][-1]
    if (not math.isnan(low) and value < low) or (not math.isnan(high) and value > high):
        problems.append(f"{line}: value {value} lies outside the metric's range [{low}, {high}]")


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


def filled(value: Any) -> bool:
    """Whether a value fills a cell (None, NaN and "" leave it empty)."""
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and value != ""


def cell_text(value: Any) -> str:
    """A value as results.csv writes it: empty, ``true``/``false``, JSON for dicts and lists, else ``str``."""
    if not filled(value):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def listing(head: str, lines: Sequence[str], limit: int = 20) -> str:
    """An error message: ``head`` and the first ``limit`` problem lines, indented, with a count of the rest."""
    shown = [f"  {line}" for line in lines[:limit]]
    if len(lines) > limit:
        shown.append(f"  ... and {len(lines) - limit} more")
    return head + ":\n" + "\n".join(shown)
