"""Shared fixtures: an isolated cache, a CLI runner that uses real subprocesses, and small pool files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own selectbench cache, so converted pools never leak between tests."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("SELECTBENCH_CACHE", str(cache))
    return cache


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``selectbench ARGS`` in a real subprocess (the same interpreter) and capture its output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "selectbench", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=600,
    )


def write_jsonl(path: Path, rows: list) -> Path:
    """Write rows as JSON Lines (each row as given: dicts, or raw strings written verbatim)."""
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return path


def alpaca_rows(n: int = 12) -> list[dict]:
    """Alpaca-style rows with distinct, varied responses."""
    return [
        {
            "instruction": f"Explain topic number {i}.",
            "input": "" if i % 2 else f"Context {i}",
            "output": " ".join(["word"] * (i % 7 + 1)) + f" end{i}.",
        }
        for i in range(n)
    ]


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A word-level tokenizer trained on the fly and saved as a transformers tokenizer folder (no downloads)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = ["alpha beta gamma delta", "the quick brown fox", "selectbench tiny tokenizer"]
    tokenizer.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>", "<pad>"]))
    folder = tmp_path_factory.mktemp("tokenizer")
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    ).save_pretrained(folder)
    return folder
