"""Pool file readers: each streams a file's rows (JSON Lines, JSON, CSV, Parquet, a Hugging Face dataset).

Each reader yields (where, row) pairs; ``where`` is how an error message names the row. A row that cannot be
parsed at all is yielded as a RowError so that skip mode can count it and go on.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from selectbench.data.formats import RowError
from selectbench.errors import InputError, SelectbenchError

BATCH_ROWS = 8192  # rows per Arrow batch, read or written


def read_jsonl(path: Path, progress: Any) -> Iterator[tuple[str, Any]]:
    """JSON Lines: one object per line (blank lines skipped); ``where`` is ``line N``."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            progress.update(len(raw))
            where = f"line {number}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield (
                    where,
                    RowError(None, f"bytes are not valid UTF-8 (byte {err.start} of the line)", "non-UTF-8 bytes"),
                )
                continue
            if not text.strip():
                continue
            try:
                yield where, json.loads(text)
            except json.JSONDecodeError as err:
                yield where, RowError(None, f"malformed JSON ({err.msg} at column {err.colno})", "malformed JSON")


def _utf8_error_line(path: Path, err: UnicodeDecodeError, offset: int = 0) -> int:
    """The 1-based line of the first bad byte, counting from the start of the file."""
    with open(path, "rb") as handle:
        head = handle.read(offset + err.start)
    return head.count(b"\n") + 1


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(
            str(path),
            f"line {_utf8_error_line(path, err)}",
            None,
            "bytes are not valid UTF-8",
            "save the file as UTF-8",
        ) from None


def read_json(path: Path, progress: Any) -> Iterator[tuple[str, Any]]:
    """A JSON list of objects (or ``{"data": [...]}``, or JSON Lines saved as .json); ``where`` is ``row N``."""
    text = _read_text(path)
    progress.update(path.stat().st_size)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # a .json file that is really JSON Lines: common in the wild
            yield from read_jsonl(path, NoProgress())
            return
        raise InputError(
            str(path),
            f"line {err.lineno}",
            None,
            f"malformed JSON ({err.msg} at column {err.colno})",
            "a .json pool is a JSON list of objects (or JSON Lines)",
        ) from None
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        if len(lists) == 1 and len(data) <= 2:  # {"data": [...]} or {"version": ..., "data": [...]}
            data = data[lists[0]]
    if not isinstance(data, list):
        raise InputError(str(path), None, None, f"expected a JSON list of objects, found {type(data).__name__}")
    for number, row in enumerate(data, start=1):
        yield f"row {number}", row


def read_csv(path: Path, progress: Any) -> Iterator[tuple[str, Any]]:
    """CSV with a header row; ``where`` is ``row N (line L)``."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            for number, row in enumerate(reader, start=1):
                yield f"row {number} (line {reader.line_num})", row
    except UnicodeDecodeError:
        # csv reads through a text decoder, so the error's offset is within a buffer: rescan the bytes
        raw = path.read_bytes()
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as full:
            err = full
        line = raw[: err.start].count(b"\n") + 1
        raise InputError(
            str(path), f"line {line}", None, "bytes are not valid UTF-8", "save the file as UTF-8"
        ) from None
    progress.update(path.stat().st_size)


def read_parquet(path: Path, progress: Any) -> Iterator[tuple[str, Any]]:
    """Parquet, read in batches of ``BATCH_ROWS``; ``where`` is ``row N``."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(str(path), None, None, f"not a readable Parquet file ({err})") from None
    number = 0
    for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
        for row in batch.to_pylist():
            number += 1
            yield f"row {number}", row
        progress.update(batch.nbytes)


def read_hf(name: str, split: str, progress: Any) -> Iterator[tuple[str, Any]]:
    """A Hugging Face dataset ``name`` (its ``split``), through ``datasets.load_dataset``; ``where`` is ``row N``."""
    try:
        import datasets

        dataset = datasets.load_dataset(name, split=split)
    except Exception as err:  # the hub client raises many types; all mean "could not get it"
        raise SelectbenchError(
            f"{name}: could not load it as a Hugging Face dataset (split {split!r}): {type(err).__name__}: {err}\n"
            "  a pool is a .jsonl/.json/.parquet/.csv file, a Hugging Face dataset id (needs the hub), or 'demo'"
        ) from None
    for number, row in enumerate(dataset, start=1):
        yield f"row {number}", row


class NoProgress:
    """A progress bar that shows nothing (small files, or progress off)."""

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


#: The file readers by kind (the values of selectbench.data.pool.SUFFIXES).
READERS = {"jsonl": read_jsonl, "json": read_json, "csv": read_csv, "parquet": read_parquet}
