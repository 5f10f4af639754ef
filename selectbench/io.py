"""Atomic file writes, the cache folder, JSON helpers and version stamps shared by every stage."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def cache_dir(*parts: str) -> Path:
    """The folder for caches (converted pools, models, scores): ``$SELECTBENCH_CACHE`` or ``~/.cache/selectbench``."""
    root = os.environ.get("SELECTBENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "selectbench"
    )
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path`` and rename it over ``path`` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def nonblank_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` for each line of a UTF-8 text file that is not blank (JSONL readers)."""
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if line.strip():
                yield line_no, line


def dumps(obj: Any) -> str:
    """Compact, key-order-preserving JSON with non-ASCII kept as is (one JSONL line)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write indented JSON atomically."""
    with atomic_open(path) as handle:
        json.dump(obj, handle, ensure_ascii=False, indent=2)
        handle.write("\n")


def versions(*packages: str) -> dict[str, str]:
    """Versions of Python, the platform, selectbench, its core dependencies and ``packages``, plus the git commit."""
    names = ["selectbench", "numpy", "pyarrow", "datasets", *packages]
    found: dict[str, str] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in dict.fromkeys(names):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    commit = git_commit()
    if commit:
        found["selectbench_git"] = commit
    return found


def git_commit() -> str | None:
    """The commit of the selectbench checkout this package runs from, if it is a git checkout."""
    here = Path(__file__).resolve().parent.parent
    if not (here / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
