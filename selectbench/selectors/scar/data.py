"""Build SCAR training quadruples from (instruction, human answer) pairs with any generation engine.

An LLM rewrites each human answer keeping its content (*referenced*), answers the instruction itself (*direct*),
both at temperature 0, and rates every answer 0-9 for helpfulness and correctness. Prompts are our own wording.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from selectbench.errors import SelectbenchError
from selectbench.io import atomic_open, cache_dir, dumps, versions, write_json
from selectbench.models.engines.base import Decoding

PROMPT_VERSION = 1
ASPECTS = ("helpfulness", "correctness")
KINDS = ("human", "referenced", "direct")
CHUNK = 32  # pairs per cached chunk: a killed run keeps every finished chunk

REFERENCED_PROMPT = """\
### Reference answer
{reference}

### What to do
Above is an answer that someone wrote for the instruction below. Write your own response to the instruction that \
carries exactly the same content as that answer: the same facts, the same approach, the same code logic, the same \
advice and the same level of detail. Add nothing and leave nothing out. Phrase and format it the way you naturally \
would, as if you had never seen the answer, and never mention that an answer was given to you.

### Instruction
{instruction}

### Your response
"""

DIRECT_PROMPT = """\
### What to do
Respond to the instruction below as a helpful assistant would: accurate, complete and clear.

### Instruction
{instruction}

### Your response
"""

ASPECT_TEXT = {
    "helpfulness": (
        "Helpfulness: does the answer give the person who wrote the instruction what they asked for? Consider "
        "whether it is on topic, complete, clear and practically useful. An answer that misses the point, stops "
        "early or is hard to use scores low."
    ),
    "correctness": (
        "Correctness: is everything the answer states true, and does any code in it do what was asked without "
        "bugs? Factual errors, wrong reasoning and code that would fail score low; an answer with no mistakes "
        "scores high."
    ),
}

RATING_PROMPT = """\
You are grading an answer to an instruction. Rate one aspect of it on a scale from 0 (worst) to 9 (best).

{aspect_text}

### Instruction
{instruction}

### Answer
{answer}

### How to reply
Reason briefly, step by step, about this aspect only. Then finish with one line exactly of the form \
"Final score: N", where N is a whole number from 0 to 9.
"""

_NUMBER = r"(\d+(?:\.\d+)?)"
# Tried in order; the first pattern with an in-range match decides. The explicit "Final score: N" the prompt asks
# for comes first; the others catch judges that answer in their own words.
RATING_PATTERNS = [
    re.compile(r"final\s+(?:score|rating)\s*(?:is|of|:|=)?\s*[*_\"'(\[]*\s*" + _NUMBER, re.IGNORECASE),
    re.compile(r"(?:score|rating)\s*(?:is|of|:|=)\s*[*_\"'(\[]*\s*" + _NUMBER, re.IGNORECASE),
    re.compile(_NUMBER + r"\s*/\s*9(?!\d)"),
    re.compile(_NUMBER + r"\s+out\s+of\s+9(?!\d)", re.IGNORECASE),
]


def parse_rating(text: str) -> float | None:
    """The 0-9 rating in a judge's reply, or None when it cannot be told (never 0 by default).

    The first pattern (``Final score: N``, ``score is N``, ``N/9``, ``N out of 9``) with matches in 0..9
    decides; if those matches disagree, the most frequent value wins, and a tie is None (ambiguous).
    """
    for pattern in RATING_PATTERNS:
        values = [float(m) for m in pattern.findall(text or "")]
        values = [v for v in values if 0.0 <= v <= 9.0]
        if not values:
            continue
        counts = Counter(values).most_common()
        if len(counts) > 1 and counts[0][1] == counts[1][1]:
            return None
        return counts[0][0]
    return None


def referenced_messages(instruction: str, human: str) -> list[dict[str, str]]:
    """The chat asking for the referenced answer (a rewrite keeping the human answer's content)."""
    return [{"role": "user", "content": REFERENCED_PROMPT.format(reference=human, instruction=instruction)}]


def direct_messages(instruction: str) -> list[dict[str, str]]:
    """The chat asking for the direct answer (the model's own)."""
    return [{"role": "user", "content": DIRECT_PROMPT.format(instruction=instruction)}]


def rating_messages(instruction: str, answer: str, aspect: str) -> list[dict[str, str]]:
    """The chat asking the judge to rate one aspect of an answer."""
    text = RATING_PROMPT.format(aspect_text=ASPECT_TEXT[aspect], instruction=instruction, answer=answer)
    return [{"role": "user", "content": text}]


def prompts_fingerprint() -> str:
    """Identifies the prompts (part of the cache key, so edited prompts never reuse old generations)."""
    text = "\0".join([REFERENCED_PROMPT, DIRECT_PROMPT, RATING_PROMPT, *ASPECT_TEXT.values(), str(PROMPT_VERSION)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_pairs(spec: str, *, limit: int | None = None) -> tuple[list[dict[str, Any]], str]:
    """(instruction, human answer) pairs from any pool spec, and the pool's fingerprint.

    The instruction carries the record's input after ``### Input:`` (SCAR's data layout); the human answer is the
    record's response; ``domain`` is kept when the record's meta has one.
    """
    from selectbench.data import load_pool
    from selectbench.selectors.scar.model import ranker_instruction

    pool = load_pool(spec)
    n = len(pool) if limit is None else min(limit, len(pool))
    pairs = []
    for record in pool.records(list(range(n))):
        pair = {
            "id": record["id"],
            "instruction": ranker_instruction(record["instruction"], record["input"]),
            "human": record["response"],
        }
        if isinstance(record["meta"].get("domain"), str):
            pair["domain"] = record["meta"]["domain"]
        pairs.append(pair)
    return pairs, pool.fingerprint


def build_quadruples(
    pairs: list[dict[str, Any]],
    generator: Any,
    judge: Any | None = None,
    *,
    max_new_tokens: int = 1024,
    judge_max_new_tokens: int = 1024,
    cache: Path | None = None,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Generate referenced and direct answers and rate all three answers of every pair.

    Args:
        pairs: ``{"id", "instruction", "human", ["domain"]}`` dicts.
        generator: a :class:`selectbench.models.engines.base.Generator` (writes the answers; greedy).
        judge: the Generator that rates (default: ``generator``); greedy.
        max_new_tokens: tokens per generated answer.
        judge_max_new_tokens: tokens per judge reply.
        cache: a folder for finished chunks (resume after a kill); None keeps nothing.
        progress: show a progress bar over pairs.

    Returns:
        ``(quadruples, raw)``: rows in the format of ``scar_train.jsonl`` (unparseable ratings are None), and per
        row the judges' raw replies.
    """
    from tqdm import tqdm

    judge = judge or generator
    rows: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []
    bar = tqdm(total=len(pairs), unit="pair", desc="scar build-data", file=sys.stderr, disable=not progress)
    for lo in range(0, len(pairs), CHUNK):
        chunk = pairs[lo : lo + CHUNK]
        path = None if cache is None else cache / f"chunk-{lo:09d}.json"
        if path is not None and path.exists():
            part = json.loads(path.read_text(encoding="utf-8"))
        else:
            part = _build_chunk(chunk, generator, judge, max_new_tokens, judge_max_new_tokens)
            if path is not None:
                with atomic_open(path) as handle:
                    json.dump(part, handle, ensure_ascii=False)
        rows.extend(part["rows"])
        raw.extend(part["raw"])
        bar.update(len(chunk))
    bar.close()
    return rows, raw


def _build_chunk(
    chunk: list[dict[str, Any]], generator: Any, judge: Any, max_new_tokens: int, judge_max_new_tokens: int
) -> dict[str, list[dict[str, Any]]]:
    def first(completions: list[list[str]]) -> list[str]:
        return [c[0] if c else "" for c in completions]

    answer, rate = Decoding(max_new_tokens=max_new_tokens), Decoding(max_new_tokens=judge_max_new_tokens)  # greedy
    referenced = first(generator.generate([referenced_messages(p["instruction"], p["human"]) for p in chunk], answer))
    direct = first(generator.generate([direct_messages(p["instruction"]) for p in chunk], answer))
    answers = [
        {"human": p["human"], "referenced": r.strip(), "direct": d.strip()}
        for p, r, d in zip(chunk, referenced, direct, strict=True)
    ]
    requests = [(i, kind, aspect) for i in range(len(chunk)) for kind in KINDS for aspect in ASPECTS]
    replies = first(
        judge.generate(
            [rating_messages(chunk[i]["instruction"], answers[i][kind], aspect) for i, kind, aspect in requests], rate
        )
    )
    ratings: list[dict[str, dict[str, float | None]]] = [{k: {} for k in KINDS} for _ in chunk]
    raw: list[dict[str, Any]] = [{"id": p["id"], "judge": {k: {} for k in KINDS}} for p in chunk]
    for (i, kind, aspect), reply in zip(requests, replies, strict=True):
        ratings[i][kind][aspect] = parse_rating(reply)
        raw[i]["judge"][kind][aspect] = reply
    rows = []
    for p, a, r in zip(chunk, answers, ratings, strict=True):
        row = {"id": p["id"], "instruction": p["instruction"]}
        if "domain" in p:
            row["domain"] = p["domain"]
        rows.append({**row, **a, "ratings": r})
    return {"rows": rows, "raw": raw}


def build_data(
    pairs_spec: str,
    out: str | os.PathLike[str],
    *,
    engine: str = "auto",
    model: str,
    judge_model: str | None = None,
    options: dict[str, Any] | None = None,
    max_new_tokens: int = 1024,
    judge_max_new_tokens: int = 1024,
    limit: int | None = None,
    generator: Any = None,
    judge: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """``selectbench scar build-data``: read pairs, build quadruples, write ``out`` and its sidecars.

    Writes ``out`` (JSON Lines in the format of ``scar_train.jsonl``), ``out + ".raw.jsonl"`` (the judges' replies)
    and, last, ``out + ".meta.json"`` (engine, models, prompts fingerprint, decoding, counts of missing ratings,
    versions). Finished chunks are cached, so a killed run resumes. An API key is read from the environment by
    the engine and never written: options hold only the *name* of its variable.

    Args:
        pairs_spec: any pool spec (file, HF id, ``demo``): instruction (+ input) and response = the human answer.
        out: the output ``.jsonl`` file.
        engine: ``auto``, ``hf``, ``vllm`` or ``openai``.
        model: the model that writes the referenced and direct answers (and judges, unless ``judge_model``).
        judge_model: another model for the ratings (same engine and options).
        options: engine options (``base_url``, ``api_key_env``, ``batch_size``, ...).
        max_new_tokens, judge_max_new_tokens: generation lengths.
        limit: only the first ``limit`` pairs.
        generator, judge: ready Generator objects to use instead of building them (for tests and library use).
        progress: progress bars.
    """
    out = Path(out)
    pairs, fingerprint = load_pairs(pairs_spec, limit=limit)
    if not pairs:
        raise SelectbenchError(f"scar build-data: no pairs in {pairs_spec}")
    options = dict(options or {})
    for key in ("api_key", "key"):
        if key in options:
            raise SelectbenchError(
                "scar build-data: never pass an API key as an option; put it in an environment variable and pass "
                "its name as api_key_env=NAME"
            )
    owned = []
    if generator is None:
        from selectbench.models.engines.factory import make_engine

        generator = make_engine(engine, model, **options)
        owned.append(generator)
    if judge is None and judge_model is not None and judge_model != model:
        from selectbench.models.engines.factory import make_engine

        judge = make_engine(engine, judge_model, **options)
        owned.append(judge)
    judge = judge or generator
    identity = {
        "pairs": fingerprint,
        "limit": limit,
        "generator": _fingerprint(generator),
        "judge": _fingerprint(judge),
        "prompts": prompts_fingerprint(),
        "max_new_tokens": max_new_tokens,
        "judge_max_new_tokens": judge_max_new_tokens,
    }
    key = hashlib.sha256(dumps(identity).encode()).hexdigest()[:24]
    start = time.perf_counter()
    try:
        rows, raw = build_quadruples(
            pairs,
            generator,
            judge,
            max_new_tokens=max_new_tokens,
            judge_max_new_tokens=judge_max_new_tokens,
            cache=cache_dir("scar-build", key),
            progress=progress,
        )
    finally:
        for engine_object in owned:
            engine_object.close()
    raw_path = Path(f"{out}.raw.jsonl")
    meta_path = Path(f"{out}.meta.json")
    meta_path.unlink(missing_ok=True)
    with atomic_open(raw_path) as handle:
        handle.writelines(dumps(r) + "\n" for r in raw)
    with atomic_open(out) as handle:
        handle.writelines(dumps(r) + "\n" for r in rows)
    missing = {
        f"{kind}.{aspect}": sum(r["ratings"][kind][aspect] is None for r in rows)
        for kind in KINDS
        for aspect in ASPECTS
    }
    meta = {
        "stage": "scar-build-data",
        "pairs": {"source": pairs_spec, "fingerprint": fingerprint, "n": len(rows), "limit": limit},
        "engine": engine,
        "generator": _describe(generator),
        "judge": _describe(judge),
        "decoding": {
            "temperature": 0.0,
            "top_p": 1.0,
            "max_new_tokens": max_new_tokens,
            "judge_max_new_tokens": judge_max_new_tokens,
        },
        "prompts": {"version": PROMPT_VERSION, "fingerprint": prompts_fingerprint()},
        "missing_ratings": missing,
        "outputs": {"quadruples": str(out), "raw": str(raw_path)},
        "cache_key": key,
        "timings": {"total": time.perf_counter() - start},
        "versions": versions("torch", "transformers"),
    }
    write_json(meta_path, meta)
    return meta


def _fingerprint(generator: Any) -> str:
    value = getattr(generator, "fingerprint", None)
    return str(value) if value is not None else f"{type(generator).__name__}:{getattr(generator, 'model', '?')}"


def _describe(generator: Any) -> dict[str, Any]:
    describe = getattr(generator, "describe", None)
    info = describe() if callable(describe) else {"model": getattr(generator, "model", None)}
    return {k: v for k, v in dict(info).items() if "key" not in k.lower() or k == "api_key_env"}


__all__ = [
    "build_data",
    "build_quadruples",
    "direct_messages",
    "load_pairs",
    "parse_rating",
    "rating_messages",
    "referenced_messages",
]
