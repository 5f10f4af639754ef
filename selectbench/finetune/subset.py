"""The subset a fine-tuning run trains on: loading it, its chat rows, its token lengths, and fitting them to
max_length."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selectbench.artifacts import SELECTION_FILE, StageFolder
from selectbench.errors import SelectbenchError
from selectbench.finetune.config import FinetuneConfig

if TYPE_CHECKING:
    from selectbench.data import Pool


def load_subset(subset: str | os.PathLike[str] | Pool) -> Pool:
    """The examples to fine-tune on: a Pool, a selection folder (``selection.jsonl`` + ``DONE``), or a pool file.

    Raises:
        SelectbenchError: the subset is missing, unfinished or empty.
    """
    from selectbench.data import Pool, load_pool

    if isinstance(subset, Pool):
        pool = subset
    else:
        path = Path(subset)
        if path.is_dir():
            if not (path / SELECTION_FILE).exists():
                raise SelectbenchError(
                    f"subset {str(subset)!r}: folder has no selection.jsonl; pass a folder written by "
                    "`selectbench select` or a pool file (.jsonl, .json, .parquet, .csv)"
                )
            if not StageFolder(path).done:
                raise SelectbenchError(
                    f"subset {str(subset)!r}: the selection is unfinished (no DONE marker); "
                    "re-run `selectbench select`"
                )
            path = path / SELECTION_FILE
        if path.is_file() and not path.read_bytes().strip():
            raise SelectbenchError(f"subset {str(path)!r} is empty: there is nothing to fine-tune on")
        pool = load_pool(str(path) if path.exists() else str(subset))
    if len(pool) == 0:
        raise SelectbenchError(f"subset {pool.source!r} is empty: there is nothing to fine-tune on")
    return pool


def conversation_rows(pool: Pool) -> list[dict[str, Any]]:
    """TRL's conversational prompt/completion rows: every turn but the last is the prompt, the last (the response
    being selected) is the completion, so loss falls on that response only. Formatting goes through
    :mod:`selectbench.models.chat`, exactly as evaluation does."""
    from selectbench.models.chat import record_messages

    rows = []
    for record in pool:
        messages = record_messages(record)
        if messages[-1].get("role") != "assistant" or len(messages) < 2:
            raise SelectbenchError(
                f"subset {pool.source!r}, record {record['id']!r}: a conversation must end with an assistant turn "
                f"(the response to train on) after at least one user turn; it ends with {messages[-1].get('role')!r}"
            )
        rows.append({"prompt": messages[:-1], "completion": messages[-1:]})
    return rows


def load_chat_tokenizer(model: str, *, say: bool = True) -> tuple[Any, bool]:
    """The model's tokenizer, given the plain template if it has none (said on stderr unless ``say`` is False);
    returns (tokenizer, fell_back)."""
    from selectbench.models.chat import ensure_chat_template
    from selectbench.models.loading import load_tokenizer

    tokenizer = load_tokenizer(model)
    fell_back = ensure_chat_template(tokenizer)
    if fell_back and say:
        print(
            f"note: {model} has no chat template; using selectbench's plain template "
            "('### User:' / '### Assistant:' turns, see README), the same one evaluation uses",
            file=sys.stderr,
        )
    return tokenizer, fell_back


def token_lengths(tokenizer: Any, rows: Sequence[dict[str, Any]], *, prompts: bool = False) -> list[int]:
    """Untruncated length in tokens of each row (prompt + completion), tokenised as TRL tokenises it; with
    ``prompts=True``, the length of the prompt alone (with the assistant header that opens the response)."""
    lengths = []
    for row in rows:
        if prompts:
            ids = tokenizer.apply_chat_template(
                row["prompt"], tokenize=True, return_dict=True, add_generation_prompt=True
            )
        else:
            ids = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True, return_dict=True)
        lengths.append(len(ids["input_ids"]))
    return lengths


def measure_subset(subset: str | os.PathLike[str] | Pool, model: str, config: FinetuneConfig) -> dict[str, int]:
    """What one pass over a subset trains on under ``config``'s max_length and overlong rule, without a model.

    The runner uses it to set ``match_tokens`` from a reference subset (e.g. ``epochs * tokens``).

    Returns:
        ``{"examples", "tokens", "over_max_length"}``: examples kept, their tokens (prompt + response,
        truncated, no padding), and how many were longer than max_length.
    """
    pool = load_subset(subset)
    tokenizer, _ = load_chat_tokenizer(model)
    rows = conversation_rows(pool)
    lengths, prompt_lengths = token_lengths(tokenizer, rows), token_lengths(tokenizer, rows, prompts=True)
    limit = config.max_length
    over = sum(n > limit for n in lengths)
    if config.overlong == "truncate":  # kept if a response token survives truncation
        kept = [min(n, limit) for n, p in zip(lengths, prompt_lengths, strict=True) if p < limit]
    else:
        kept = [n for n in lengths if n <= limit]
    return {"examples": len(kept), "tokens": sum(kept), "over_max_length": over}


def suggest_max_length(lengths: Sequence[int]) -> int:
    """A max_length that keeps about 95% of examples whole: that percentile, rounded up to a multiple of 64."""
    ordered = sorted(lengths)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return 64 * math.ceil(p95 / 64)


def fit_length(dataset: Any, config: FinetuneConfig, *, say: bool = True) -> tuple[Any, dict[str, Any]]:
    """Apply max_length (truncate or drop) to TRL's tokenised dataset; error when nothing trainable is left."""
    lengths = [len(ids) for ids in dataset["input_ids"]]
    n, limit = len(lengths), config.max_length
    over = [i for i, length in enumerate(lengths) if length > limit]
    everything = (
        f"all {n} examples are longer than max_length={limit} tokens (shortest {min(lengths)}, median "
        f"{sorted(lengths)[n // 2]}, longest {max(lengths)})"
    )
    advice = f"--set max_length={suggest_max_length(lengths)} keeps about 95% of them whole"
    if len(over) == n and config.overlong == "drop":
        raise SelectbenchError(f"{everything}, so overlong=drop leaves nothing to train on; {advice}")
    info: dict[str, Any] = {"examples": n, "over_max_length": len(over), "overlong": config.overlong, "dropped": 0}
    if not over:
        return dataset, info
    if config.overlong == "drop":
        keep = [i for i, length in enumerate(lengths) if length <= limit]
        info["dropped"] = n - len(keep)
        note = f"dropped (overlong=drop; {len(keep)} left)"
        dataset = dataset.select(keep)
    else:
        dataset = dataset.map(
            lambda row: {"input_ids": row["input_ids"][:limit], "labels": row["labels"][:limit]},
            desc="truncating to max_length",
        )
        # A prompt that fills max_length leaves no response token to learn from.
        empty = [i for i, labels in enumerate(dataset["labels"]) if all(label == -100 for label in labels)]
        if len(empty) == n:
            raise SelectbenchError(
                f"every example's prompt fills max_length={limit} tokens, so no response token is left to train "
                f"on; raise it, e.g. --set max_length={suggest_max_length(lengths)}"
            )
        if empty:
            dataset = dataset.select(sorted(set(range(n)) - set(empty)))
        info["dropped"] = len(empty)
        note = "truncated (overlong=truncate)" + (
            f"; {len(empty)} had no response left within max_length and were dropped" if empty else ""
        )
    if say and len(over) == n:
        # Truncation still trains on every example (the start of each); a longest-response subset under a short
        # shared max_length legitimately lands here, so it is a warning, not an error.
        print(f"warning: {everything}: every one is {note}; {advice}", file=sys.stderr)
    elif say:
        print(f"note: {len(over)} of {n} examples are longer than max_length={limit} tokens: {note}", file=sys.stderr)
    info["examples"] = n - info["dropped"]
    return dataset, info
