"""A realistic finished run folder for the report tests: results.csv, per-item results and selection files.

The grid: a 60-record labelled pool; random (seeds 0, 1, 2), longest and ifd at budgets 0.1 (k=6) and 0.25
(k=15); the full pool and the base model as references. Every number the tests check is written literally here.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np

from selectbench.data.labels import intrinsic_metrics
from selectbench.reports.results import write_items, write_results

POOL_SIZE = 60
BUDGETS = {6: "0.1", 15: "0.25"}
RECIPE, EVAL, MODEL, POOL_FP = "r-3f2a9c41", "e-77b1d0aa", "smollm2-135m-instruct", "fp-5d1e0b"
N_PROBLEMS = 20

# Selected pool indices in rank order: p00 is the longest response, lengths fall with the index.
SELECTIONS = {
    ("longest", 6, 0): list(range(0, 6)),
    ("ifd", 6, 0): list(range(3, 9)),
    ("random", 6, 0): list(range(10, 16)),
    ("random", 6, 1): list(range(12, 18)),
    ("random", 6, 2): [0, 1, 20, 21, 22, 23],
    ("longest", 15, 0): list(range(0, 15)),
    ("ifd", 15, 0): list(range(5, 20)),
    ("random", 15, 0): list(range(20, 35)),
    ("random", 15, 1): list(range(25, 40)),
    ("random", 15, 2): list(range(40, 55)),
}
# HumanEval problems passed (of 20), per run.
PASSED = {
    ("longest", 6, 0): 5,
    ("ifd", 6, 0): 6,
    ("random", 6, 0): 3,
    ("random", 6, 1): 4,
    ("random", 6, 2): 5,
    ("longest", 15, 0): 8,
    ("ifd", 15, 0): 7,
    ("random", 15, 0): 5,
    ("random", 15, 1): 6,
    ("random", 15, 2): 7,
    ("full", None, 0): 9,
    ("base", None, 0): 2,
}
# Token-weighted held-out NLL per run (lower is better).
NLL = {
    ("longest", 6, 0): 1.85,
    ("ifd", 6, 0): 1.78,
    ("random", 6, 0): 1.81,
    ("random", 6, 1): 1.79,
    ("random", 6, 2): 1.83,
    ("longest", 15, 0): 1.74,
    ("ifd", 15, 0): 1.71,
    ("random", 15, 0): 1.76,
    ("random", 15, 1): 1.75,
    ("random", 15, 2): 1.77,
    ("full", None, 0): 1.62,
    ("base", None, 0): 2.10,
}
# AlpacaEval win rate with no per-item file: (value, stderr or None).
WIN_RATE = {
    ("longest", 6, 0): (0.16, 0.03),
    ("ifd", 6, 0): (0.13, None),
    ("random", 6, 0): (0.10, 0.02),
    ("random", 6, 1): (0.14, 0.02),
    ("random", 6, 2): (0.12, 0.02),
    ("full", None, 0): (0.21, 0.03),
    ("base", None, 0): (0.05, 0.02),
}
SELECT_SECONDS = {"random": 0.01, "longest": 0.05, "ifd": 40.0}


def pool_records() -> list[dict]:
    """60 records; p<i>'s response has 120 - 2i words; every fourth is flawed; the style changes every 7 records."""
    records = []
    for i in range(POOL_SIZE):
        words = " ".join(f"w{j % 17}" for j in range(120 - 2 * i))
        records.append(
            {
                "id": f"p{i:02d}",
                "instruction": f"Task {i}: explain item {i}.",
                "input": "",
                "response": words,
                "meta": {
                    "quality": "flawed" if i % 4 == 3 else "good",
                    "style": ("human", "referenced", "direct")[(i // 7) % 3],
                },
            }
        )
    return records


def run_id(selector: str, k: int | None, seed: int) -> str:
    """The run id of one grid cell, as the fixture names it."""
    return selector if k is None else f"{selector}-b{BUDGETS[k]}-s{seed}"


def _write_selection(root: Path, rel: str, records: list[dict], indices: list[int], selector: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for rank, i in enumerate(indices, 1):
            meta = {**records[i]["meta"], "rank": rank}
            if selector == "longest":
                meta["score"] = float(120 - 2 * i)
            elif selector == "ifd":
                meta["score"] = round(0.95 - 0.01 * rank - 0.001 * i, 4)
            record = {k: records[i][k] for k in ("id", "instruction", "input", "response")}
            handle.write(json.dumps({**record, "meta": meta}) + "\n")


def _items(root: Path, rid: str, bench: str, lines: list[dict]) -> None:
    write_items(root, rid, bench, lines)


def make_run(
    root: Path,
    *,
    selectors: tuple[str, ...] = ("random", "longest", "ifd"),
    recipe_hash: str = RECIPE,
    eval_config_hash: str = EVAL,
    with_items: bool = True,
) -> Path:
    """Write a finished run folder under ``root`` and return it."""
    root.mkdir(parents=True, exist_ok=True)
    records = pool_records()
    _write_selection(root, "select/full/selection.jsonl", records, list(range(POOL_SIZE)), "full")
    rows = []
    cells = [key for key in PASSED if key[0] in (*selectors, "full", "base")]
    for selector, k, seed in cells:
        kind = selector if selector in ("full", "base") else "selector"
        rid = run_id(selector, k, seed)
        indices = SELECTIONS.get((selector, k, seed), list(range(POOL_SIZE)) if kind == "full" else [])
        rel = ""
        if kind == "selector":
            rel = f"select/{selector}/k{k}/s{seed}/selection.jsonl"
            _write_selection(root, rel, records, indices, selector)
        elif kind == "full":
            rel = "select/full/selection.jsonl"
        tokens = sum(120 - 2 * i for i in indices) * 13 // 10 * 2
        base = {
            "run_id": rid,
            "selector": selector,
            "budget": BUDGETS[k] if k else "",
            "budget_k": k if k else (POOL_SIZE if kind == "full" else None),
            "seed": seed,
            "kind": kind,
            "recipe_hash": recipe_hash if kind != "base" else "",
            "eval_config_hash": eval_config_hash,
            "tokens_trained": tokens if kind != "base" else 0,
            "select_seconds": SELECT_SECONDS.get(selector, 0.0) if kind == "selector" else None,
            "train_seconds": round(tokens / 50, 2) if kind != "base" else None,
            "eval_seconds": 95.5,
            "selection_path": rel,
            "model": MODEL,
            "pool_fingerprint": POOL_FP,
        }
        passed = PASSED[selector, k, seed]
        p = passed / N_PROBLEMS
        rows.append(
            {
                **base,
                "metric": "humaneval/pass@1",
                "value": p,
                "stderr": math.sqrt(p * (1 - p) / N_PROBLEMS),
                "n": N_PROBLEMS,
                "higher_is_better": True,
            }
        )
        rows.append(
            {
                **base,
                "metric": "heldout-nll/nll",
                "value": NLL[selector, k, seed],
                "stderr": None,
                "n": 12,
                "higher_is_better": False,
            }
        )
        if (selector, k, seed) in WIN_RATE:
            value, stderr = WIN_RATE[selector, k, seed]
            rows.append(
                {
                    **base,
                    "metric": "alpacaeval/win_rate",
                    "value": value,
                    "stderr": stderr,
                    "n": 70,
                    "higher_is_better": True,
                }
            )
        if kind != "base":
            labels = intrinsic_metrics(records[i] for i in indices)
            rows.append(
                {
                    **base,
                    "metric": "intrinsic/share_good",
                    "value": labels["share_good"],
                    "n": len(indices),
                    "higher_is_better": True,
                }
            )
            rows.append(
                {
                    **base,
                    "metric": "intrinsic/style_consistency",
                    "value": labels["dominant_style_share"],
                    "n": len(indices),
                    "higher_is_better": True,
                }
            )
        if with_items:
            rng = np.random.default_rng(zlib.crc32(rid.encode()))
            passes = np.zeros(N_PROBLEMS)
            passes[rng.permutation(N_PROBLEMS)[:passed]] = 1.0
            _items(
                root,
                rid,
                "humaneval",
                [
                    {"item": f"HumanEval/{i}", "metric": "humaneval/pass@1", "value": float(v)}
                    for i, v in enumerate(passes)
                ],
            )
            # Per-item mean NLL and answer-token counts whose token-weighted mean is exactly the run's value.
            weights = rng.integers(20, 80, size=12).astype(float)
            noise = rng.normal(0, 0.3, size=12)
            noise -= np.sum(noise * weights) / np.sum(weights)
            _items(
                root,
                rid,
                "heldout-nll",
                [
                    {
                        "item": f"oe-{i}",
                        "metric": "heldout-nll/nll",
                        "value": NLL[selector, k, seed] + float(e),
                        "weight": float(w),
                    }
                    for i, (e, w) in enumerate(zip(noise, weights, strict=True))
                ],
            )
    write_results(rows, root / "results.csv")
    return root
