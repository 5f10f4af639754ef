"""Load a pool from a file or a Hugging Face dataset id into a memory-mapped Arrow table of canonical records.

Rows are read as a stream, validated, converted and written to an Arrow file in the cache, so a large pool is
never held as Python objects; later loads of the same unchanged file reuse the converted copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from selectbench.data import formats
from selectbench.data.formats import Format, RowError
from selectbench.data.readers import BATCH_ROWS, READERS, NoProgress, read_hf
from selectbench.errors import InputError, SelectbenchError
from selectbench.io import cache_dir, dumps, write_json

LOADER_VERSION = 2  # bump when conversion changes, so cached conversions are redone
DEMO_DIR = Path(__file__).parent / "demo"
ALIASES = {"demo": DEMO_DIR / "pool.jsonl"}
SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
}
SCHEMA = pa.schema([(name, pa.string()) for name in ("id", "instruction", "input", "response", "messages", "meta")])


@dataclass
class LoadReport:
    """What loading saw: rows read, rows kept, and rows skipped by reason (with ``on_invalid='skip'``)."""

    rows_read: int = 0
    rows_kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """One line, e.g. ``kept 98 of 100 rows; skipped 2 (1 empty response, 1 duplicate id)``."""
        line = f"kept {self.rows_kept} of {self.rows_read} rows"
        if self.skipped:
            reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items(), key=lambda kv: -kv[1]))
            line += f"; skipped {sum(self.skipped.values())} ({reasons})"
        return line


class Pool:
    """Canonical records in a memory-mapped Arrow file.

    Columns are ``id``, ``instruction``, ``input``, ``response``, ``messages`` (JSON text or null) and ``meta``
    (JSON text). Index it for one record as a dict, or use :meth:`column` for whole columns without Python objects.
    """

    def __init__(self, arrow_path: Path, info: Mapping[str, Any]) -> None:
        self.path = arrow_path
        self.info = dict(info)
        with pa.memory_map(str(arrow_path)) as source:
            self.table: pa.Table = pa.ipc.open_stream(source).read_all()
        self._ids: list[str] | None = None

    @property
    def fingerprint(self) -> str:
        """sha256 over the canonical records, in order: the same content gives the same fingerprint anywhere."""
        return self.info["fingerprint"]

    @property
    def source(self) -> str:
        """The path or dataset id the pool was loaded from."""
        return self.info["source"]

    @property
    def format(self) -> str:
        """The recognised input shape (``alpaca``, ``messages``, ...)."""
        return self.info["format"]

    @property
    def report(self) -> LoadReport:
        """Rows read, kept and skipped."""
        return LoadReport(**self.info["report"])

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, index: int) -> dict[str, Any]:
        return _decode(self.table.slice(index, 1).to_pylist()[0])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.table.to_batches(BATCH_ROWS):
            yield from (_decode(row) for row in batch.to_pylist())

    def __repr__(self) -> str:
        return f"Pool({self.source!r}, n={len(self)}, format={self.format!r}, fingerprint={self.fingerprint!r})"

    @property
    def ids(self) -> list[str]:
        """Record ids in pool order."""
        if self._ids is None:
            self._ids = self.table.column("id").to_pylist()
        return self._ids

    def column(self, name: str) -> pa.ChunkedArray:
        """A whole column as Arrow (no Python objects): ``id``, ``instruction``, ``input``, ``response``, ..."""
        return self.table.column(name)

    def texts(self, name: str) -> list[str]:
        """A whole text column as Python strings (materialises it: prefer :meth:`column` on large pools)."""
        return self.table.column(name).to_pylist()

    def records(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """The records at ``indices``, in that order, with ``meta`` and ``messages`` decoded."""
        return [_decode(row) for row in self.table.take(pa.array(indices, type=pa.int64())).to_pylist()]

    @property
    def dataset(self) -> Any:
        """The same Arrow file as a Hugging Face ``datasets.Dataset`` (memory-mapped)."""
        import datasets

        return datasets.Dataset.from_file(str(self.path))


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    row["meta"] = json.loads(row["meta"]) if row["meta"] else {}
    if row["messages"] is None:
        del row["messages"]
    else:
        row["messages"] = json.loads(row["messages"])
    return row


# ---------------------------------------------------------------------------------------------------- loading


def resolve_pool_source(spec: str | os.PathLike[str]) -> tuple[str, Path | None, str | None]:
    """Where a pool spec points: ``(display name, local path or None, HF split or None)``.

    An alias or an existing path is local; so is anything with a pool file suffix (it then fails as a missing
    file). Otherwise ``name``, ``owner/name`` or ``owner/name:split`` is a Hugging Face dataset id.
    """
    text = str(spec)
    if text in ALIASES:
        return text, ALIASES[text], None
    path = Path(text).expanduser()
    if path.exists() or path.suffix.lower() in SUFFIXES:
        return text, path, None
    name, _, split = text.partition(":")
    if re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) and not name.startswith("."):
        return text, None, split or "train"
    return text, path, None


def parse_columns(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    """``"instruction=question,response=answer"`` -> ``{"instruction": "question", "response": "answer"}``."""
    if not spec:
        return {}
    pairs = spec.items() if isinstance(spec, Mapping) else (p.split("=", 1) for p in spec.split(","))
    columns: dict[str, str] = {}
    for pair in pairs:
        if len(pair) != 2 or not pair[0].strip() or not pair[1].strip():
            raise SelectbenchError(f"--columns: expected FIELD=COLUMN pairs separated by commas, got {spec!r}")
        key, value = pair[0].strip(), pair[1].strip()
        if key not in ("id", "instruction", "input", "response"):
            raise SelectbenchError(f"--columns: unknown field {key!r}; fields are id, instruction, input, response")
        columns[key] = value
    if columns.keys() - {"id"} and not {"instruction", "response"} <= columns.keys():
        raise SelectbenchError("--columns: map both instruction and response (input and id are optional)")
    return columns


def load_pool(
    spec: str | os.PathLike[str],
    *,
    columns: str | Mapping[str, str] | None = None,
    on_invalid: str = "error",
    progress: bool = True,
) -> Pool:
    """Load, validate and convert a pool, reusing the cached conversion when the source has not changed.

    Args:
        spec: a ``.jsonl``/``.json``/``.parquet``/``.csv`` file, a Hugging Face dataset id (``name`` or
            ``name:split``), or ``demo`` (the bundled demo corpus).
        columns: column mapping, e.g. ``"instruction=question,response=answer,id=uid"``; needed for unknown shapes.
        on_invalid: ``"error"`` (default): the first bad row stops loading with a message naming file, row and
            field; ``"skip"``: bad rows are dropped and counted by reason in ``pool.report``.
        progress: show a progress bar for large files.

    Raises:
        InputError: bad data (with ``on_invalid="error"``), or an unreadable file.
        SelectbenchError: an unknown format, a bad option, or a dataset id that cannot be loaded.
    """
    if on_invalid not in ("error", "skip"):
        raise SelectbenchError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
    mapping = parse_columns(columns)
    name, path, split = resolve_pool_source(spec)
    if path is not None:
        kind, key_parts = _check_file(name, path)
        stat = path.stat()
        key_parts += [stat.st_size, stat.st_mtime_ns]
    else:
        kind, key_parts = "hf", [name, split]
    key = hashlib.sha256(dumps([LOADER_VERSION, kind, *key_parts, mapping, on_invalid]).encode()).hexdigest()[:24]
    folder = cache_dir("pools", key)
    arrow_path, info_path = folder / "pool.arrow", folder / "pool.json"
    if arrow_path.exists() and info_path.exists():
        return Pool(arrow_path, json.loads(info_path.read_text()))

    bar = _progress_bar(name, path) if progress else NoProgress()
    try:
        rows = read_hf(name.partition(":")[0], split or "train", bar) if kind == "hf" else READERS[kind](path, bar)
        info = _convert(rows, name, mapping, on_invalid, arrow_path)
    finally:
        bar.close()
    write_json(info_path, info)
    return Pool(arrow_path, info)


def pool_from_records(rows: Iterable[Mapping[str, Any]], *, name: str = "<records>", **options: Any) -> Pool:
    """Build a pool from in-memory rows of any recognised shape (for tests, notebooks and plug-in authors)."""
    rows = list(rows)
    mapping = parse_columns(options.get("columns"))
    key = hashlib.sha256(dumps([LOADER_VERSION, "records", rows, mapping]).encode()).hexdigest()[:24]
    folder = cache_dir("pools", key)
    arrow_path = folder / "pool.arrow"
    info = _convert(
        ((f"row {i}", r) for i, r in enumerate(rows, 1)), name, mapping, options.get("on_invalid", "error"), arrow_path
    )
    return Pool(arrow_path, info)


def _check_file(name: str, path: Path) -> tuple[str, list[Any]]:
    if not path.exists():
        hint = "check the path" if name not in ALIASES else "the demo corpus is missing from this install"
        raise InputError(name, None, None, "no such file", hint)
    if path.is_dir():
        raise InputError(name, None, None, "is a folder; expected a .jsonl, .json, .parquet or .csv file")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise InputError(
            name,
            None,
            None,
            f"unknown file type {path.suffix or '(no suffix)'!r}",
            "use .jsonl, .json, .parquet or .csv",
        )
    if not os.access(path, os.R_OK):
        raise InputError(name, None, None, "cannot be read (permission denied)")
    return kind, [str(path.resolve())]


def _progress_bar(name: str, path: Path | None) -> Any:
    if path is None or path.stat().st_size < 32 * 2**20:
        return NoProgress()
    from tqdm import tqdm

    return tqdm(
        total=path.stat().st_size,
        unit="B",
        unit_scale=True,
        desc=f"loading {Path(name).name}",
        file=sys.stderr,
        mininterval=0.5,
    )


def _convert(
    rows: Iterable[tuple[str, Any]], name: str, mapping: Mapping[str, str], on_invalid: str, arrow_path: Path
) -> dict[str, Any]:
    """Validate and convert rows, streaming them into ``arrow_path`` (atomically); return the pool info."""
    report = LoadReport()
    digest = hashlib.sha256()
    fmt: Format | None = (
        Format("mapped", (), formats.FORMATS["mapped"].convert, "") if mapping.keys() - {"id"} else None
    )
    id_column = mapping.get("id", "id")
    explicit_ids: set[str] = set()
    hash_ids: Counter[str] = Counter()
    batch: dict[str, list[Any]] = {column: [] for column in SCHEMA.names}

    tmp = arrow_path.with_name(f".{arrow_path.name}.{os.getpid()}.tmp")
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, SCHEMA) as writer:
            for where, row in rows:
                report.rows_read += 1
                try:
                    if isinstance(row, RowError):
                        raise row
                    if fmt is None:
                        fmt = _detect(row)
                    record = formats.to_record(row, fmt, mapping, id_column)
                    _settle_id(record, explicit_ids, hash_ids, id_column)
                except RowError as err:
                    if on_invalid == "error":
                        hint = err.hint or "or pass --on-invalid skip to drop bad rows"
                        raise InputError(name, where, err.field, err.problem, hint) from None
                    report.skipped[err.reason] = report.skipped.get(err.reason, 0) + 1
                    continue
                report.rows_kept += 1
                messages = dumps(record["messages"]) if record["messages"] is not None else None
                values = (
                    record["id"],
                    record["instruction"],
                    record["input"],
                    record["response"],
                    messages,
                    dumps(record["meta"]),
                )
                digest.update(dumps(values).encode("utf-8") + b"\n")
                for column, value in zip(SCHEMA.names, values, strict=True):
                    batch[column].append(value)
                if len(batch["id"]) >= BATCH_ROWS:
                    writer.write_batch(pa.record_batch(batch, schema=SCHEMA))
                    batch = {column: [] for column in SCHEMA.names}
            if batch["id"]:
                writer.write_batch(pa.record_batch(batch, schema=SCHEMA))
        if report.rows_kept == 0:
            detail = f" ({report.summary()})" if report.rows_read else ""
            raise InputError(name, None, None, f"no usable rows{detail}")
        os.replace(tmp, arrow_path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return {
        "source": name,
        "format": fmt.name if fmt else None,
        "columns": dict(mapping),
        "fingerprint": "sha256:" + digest.hexdigest()[:16],
        "n": report.rows_kept,
        "report": {"rows_read": report.rows_read, "rows_kept": report.rows_kept, "skipped": report.skipped},
    }


def _detect(row: Any) -> Format:
    """The format of the first usable row decides the format of the file."""
    if not isinstance(row, Mapping):
        raise RowError(
            None, f"expected an object (a row with named fields), found {type(row).__name__}", "not an object"
        )
    fmt = formats.detect_format(row.keys())
    if fmt is None:
        raise RowError(
            None,
            f"unknown format: columns {sorted(row.keys())} match no known shape",
            "unknown format",
            "known shapes:\n" + formats.known_formats() + "\n  or name the columns with --columns",
        )
    return fmt


def _settle_id(record: dict[str, Any], explicit: set[str], hashed: Counter[str], id_column: str) -> None:
    """Explicit ids must be unique; content-hash ids of exact duplicate rows get an occurrence suffix (``#2``)."""
    if record["id"] is not None:
        if record["id"] in explicit:
            raise RowError(id_column, f"duplicate id {record['id']!r}", "duplicate id")
        explicit.add(record["id"])
        return
    base = formats.content_id(record["instruction"], record["input"], record["response"])
    hashed[base] += 1
    record["id"] = base if hashed[base] == 1 else f"{base}#{hashed[base]}"
