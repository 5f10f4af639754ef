"""The stage layer: one stage folder protocol and one run layout, used by every stage, cache and report.

A stage folder holds a stage's files, each written atomically, then ``meta.json`` (what was done, with what and
for whom), then the ``DONE`` marker, written last. A reader that sees ``DONE`` therefore sees a whole stage, a
killed stage leaves no ``DONE``, and a re-run skips a folder that is done for the same identity. This is the only
module that spells the marker's name or a run folder's path.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from selectbench.io import atomic_open, write_json

DONE_MARKER = "DONE"
META_FILE = "meta.json"


class StageFolder:
    """One stage's folder: files written atomically, ``meta.json``, then ``DONE`` last.

    Args:
        path: the folder (created on :meth:`begin`).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"StageFolder({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def done(self) -> bool:
        """Whether the stage finished: ``DONE`` (and the ``meta.json`` written before it) are there."""
        return (self.path / DONE_MARKER).is_file() and (self.path / META_FILE).is_file()

    def meta(self) -> dict[str, Any] | None:
        """The finished stage's ``meta.json``; None when the stage is not done or its meta is unreadable."""
        if not self.done:
            return None
        try:
            meta = json.loads((self.path / META_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    def finished(self, identity: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """The meta of a stage done for ``identity``, else None.

        Args:
            identity: ``{key: value}`` that the meta must hold; a key may be a dotted path into nested
                mappings (``"pool.fingerprint"``). None or empty: any finished stage.
        """
        meta = self.meta()
        if meta is None:
            return None
        for key, want in (identity or {}).items():
            if lookup(meta, key) != want:
                return None
        return meta

    def begin(self) -> Path:
        """Create the folder and withdraw its ``DONE`` (the stage is being (re)written); returns the path."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.unmark()
        return self.path

    def unmark(self) -> None:
        """Remove ``DONE``: the folder no longer counts as finished."""
        with contextlib.suppress(FileNotFoundError):
            (self.path / DONE_MARKER).unlink()

    @contextlib.contextmanager
    def open(self, name: str, mode: str = "w") -> Iterator[IO[Any]]:
        """Write file ``name`` of the folder atomically (see :func:`selectbench.io.atomic_open`)."""
        with atomic_open(self.path / name, mode) as handle:
            yield handle

    def write_json(self, name: str, obj: Any) -> Path:
        """Write ``name`` as indented JSON, atomically."""
        write_json(self.path / name, obj)
        return self.path / name

    def finish(self, meta: Mapping[str, Any]) -> dict[str, Any]:
        """Write ``meta.json``, then ``DONE``: the stage is finished. Returns the meta."""
        meta = dict(meta)
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.path / META_FILE, meta)
        (self.path / DONE_MARKER).write_text("")
        return meta

    def partial(self) -> StageFolder:
        """A sibling folder (``.NAME.partial``) to build the stage in when its files cannot each be written
        atomically (a model checkpoint); :meth:`replace_with` moves it into place once it is finished."""
        return StageFolder(self.path.parent / f".{self.path.name}.partial")

    def replace_with(self, partial: StageFolder) -> None:
        """Move a finished ``partial`` folder into this folder's place; an old folder goes away after the rename."""
        old = self.path.parent / f".{self.path.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if self.path.exists():
            os.rename(self.path, old)
        os.rename(partial.path, self.path)
        shutil.rmtree(old, ignore_errors=True)


def lookup(meta: Mapping[str, Any], dotted: str) -> Any:
    """``meta["a"]["b"]`` for ``"a.b"``; None where a part is missing."""
    node: Any = meta
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


# ----------------------------------------------------------------------------------------------- run layout

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.csv"
ITEMS_DIR = "items"
REPORT_DIR = "report"
RUNS_DIR = "runs"
SELECTION_FILE = "selection.jsonl"


@dataclass(frozen=True)
class ExperimentLayout:
    """Where an experiment's files live under its folder ``out`` (contract: scripts outside the package read
    these paths)."""

    out: Path

    @property
    def config_file(self) -> Path:
        """``config.json``: the resolved config and versions."""
        return self.out / CONFIG_FILE

    @property
    def results_file(self) -> Path:
        """``results.csv``: one row per run x metric."""
        return self.out / RESULTS_FILE

    @property
    def report(self) -> Path:
        """The report folder."""
        return self.out / REPORT_DIR

    def run(self, run_id: str) -> RunLayout:
        """The folders of one run of the grid."""
        return RunLayout(self.out, run_id)


@dataclass(frozen=True)
class RunLayout:
    """The stage folders of one run: ``runs/<run_id>/{select, finetune, eval/<bench>}`` under ``out``."""

    out: Path
    run_id: str

    @property
    def root(self) -> Path:
        """The run's folder."""
        return self.out / RUNS_DIR / self.run_id

    @property
    def select(self) -> StageFolder:
        """The selection stage."""
        return StageFolder(self.root / "select")

    @property
    def selection_file(self) -> Path:
        """The selected records (``selection.jsonl``)."""
        return self.select.path / SELECTION_FILE

    @property
    def selection_relpath(self) -> str:
        """``selection_file`` relative to ``out``, as results.csv records it."""
        return f"{RUNS_DIR}/{self.run_id}/select/{SELECTION_FILE}"

    @property
    def finetune(self) -> StageFolder:
        """The fine-tuning stage (the adapter or checkpoint)."""
        return StageFolder(self.root / "finetune")

    def eval(self, bench: str) -> StageFolder:
        """The evaluation stage of benchmark ``bench``."""
        return StageFolder(self.root / "eval" / bench)
