"""A per-item cache of generations keyed by model, adapter, benchmark, engine and decoding, so a benchmark can be
re-scored (or run with a larger ``--limit``) without generating again."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selectbench.io import cache_dir, dumps
from selectbench.models.engines.adapters import adapter_fingerprint
from selectbench.models.engines.base import Conversation, Decoding, Generator


class GenerationCache:
    """Completions stored per item in an append-only JSONL file: one line ``{"key", "completions"}`` per item.

    The file is named by everything that decides the completions (model and adapter fingerprints, benchmark,
    engine, decoding) and each line by the conversation's hash, so a run with a larger ``--limit`` reuses the
    items an earlier run generated, and a killed run keeps every finished chunk. A torn last line is ignored.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._items: dict[str, list[str]] = {}
        if path.exists():
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    with contextlib.suppress(json.JSONDecodeError, KeyError, TypeError):
                        row = json.loads(line)
                        self._items[row["key"]] = row["completions"]

    def get(self, key: str) -> list[str] | None:
        """The cached completions for an item key, or None."""
        return self._items.get(key)

    def put(self, items: dict[str, list[str]]) -> None:
        """Append items (one whole line each, flushed to disk before returning)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write("".join(dumps({"key": k, "completions": v}) + "\n" for k, v in items.items()))
            handle.flush()
            os.fsync(handle.fileno())
        self._items.update(items)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def generation_cache_key(
    generator: Generator, adapter: str | None, bench: str, decoding: Decoding
) -> tuple[str, dict[str, Any]]:
    """The cache file key and the parts it hashes (recorded in ``meta.json``)."""
    parts = {
        "model": generator.fingerprint,
        "adapter": adapter_fingerprint(adapter),
        "bench": bench,
        "engine": generator.name,
        "decoding": decoding.as_dict(),
    }
    return _digest(parts)[:24], parts


def cached_generate(
    generator: Generator,
    conversations: Sequence[Conversation],
    *,
    bench: str,
    decoding: Decoding,
    adapter: str | None = None,
    chunk: int = 128,
) -> tuple[list[list[str]], dict[str, Any]]:
    """Completions for every conversation, generating only those the cache lacks (in chunks, each saved as soon as
    it is done).

    Returns:
        ``(completions, info)``: one list of ``decoding.n`` strings per conversation, and what happened (cache file
        and key parts, items found in the cache, items generated, seconds, conversations per second where known).
    """
    key, parts = generation_cache_key(generator, adapter, bench, decoding)
    cache = GenerationCache(cache_dir("generations") / f"{key}.jsonl")
    item_keys = [_digest(list(c))[:32] for c in conversations]
    missing = list(dict.fromkeys(k for k in item_keys if cache.get(k) is None))
    by_key = {k: i for i, k in reversed(list(enumerate(item_keys)))}
    start = time.perf_counter()
    for lo in range(0, len(missing), chunk):
        keys = missing[lo : lo + chunk]
        outputs = generator.generate([conversations[by_key[k]] for k in keys], decoding, adapter=adapter)
        cache.put(dict(zip(keys, outputs, strict=True)))
    seconds = time.perf_counter() - start
    missing_set = set(missing)
    completions = [list(cache.get(k) or []) for k in item_keys]
    info = {
        "cache_file": str(cache.path),
        "key": parts,
        "items": len(conversations),
        "from_cache": sum(1 for k in item_keys if k not in missing_set),
        "generated": len(missing),
        "seconds": round(seconds, 3),
    }
    if missing and math.isfinite(seconds) and seconds > 0:
        info["conversations_per_s"] = round(len(missing) / seconds, 3)
    return completions, info
