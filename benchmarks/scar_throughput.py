"""SCAR ranker scoring throughput: length-sorted batching against unsorted batching, same model and pool.

Scores every record of the pool (default: the demo pool, 411 records) with a minilm-l6 StyleRanker, alternating
unsorted and sorted runs so that other load on the machine hits both alike. Reports examples/s (median over
repeats) and the padded tokens each order feeds the encoder (a load-independent measure of wasted work).

    .venv/bin/python benchmarks/scar_throughput.py [--pool demo] [--ranker DIR] [--batch-size 32] [--repeats 3]

Without --ranker, a minilm-l6 ranker with freshly initialised heads is used: its cost is exactly that of a trained
one (same architecture), and nothing has to be trained first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def padded_tokens(ins: list[list[int]], ans: list[list[int]], order: list[int], batch_size: int) -> int:
    """Tokens the encoder processes (padding included) when batching in ``order``."""
    total = 0
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        total += len(chunk) * (max(len(ins[i]) for i in chunk) + max(len(ans[i]) for i in chunk))
    return total


def main() -> int:
    """Run the benchmark and print a JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", default="demo")
    parser.add_argument("--ranker", help="a ranker checkpoint folder (default: minilm-l6 with fresh heads)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="also write the summary JSON here")
    args = parser.parse_args()

    import torch

    from selectbench.data import load_pool
    from selectbench.selectors.scar.model import (
        batch_order,
        load_ranker,
        new_ranker,
        ranker_instruction,
        score_tokenized,
        tokenize_texts,
    )

    pool = load_pool(args.pool)
    records = pool.records(list(range(len(pool))))
    if args.ranker:
        loaded = load_ranker(args.ranker, device="cpu")
        model, tokenizer = loaded.model, loaded.tokenizer
    else:
        torch.manual_seed(0)
        model, tokenizer = new_ranker("minilm-l6")
        model.eval()
    ins = tokenize_texts(
        tokenizer, [ranker_instruction(r["instruction"], r["input"]) for r in records], args.max_length
    )
    ans = tokenize_texts(tokenizer, [r["response"] for r in records], args.max_length)
    real = sum(len(x) for x in ins) + sum(len(x) for x in ans)
    runs: dict[str, list[float]] = {"unsorted": [], "sorted": []}
    results = {}
    for _ in range(args.repeats):
        for name in ("unsorted", "sorted"):
            start = time.perf_counter()
            scores = score_tokenized(
                model, tokenizer, ins, ans, batch_size=args.batch_size, sort_by_length=name == "sorted", device="cpu"
            )
            runs[name].append(len(records) / (time.perf_counter() - start))
            results[name] = scores
    diff = float(abs(results["sorted"] - results["unsorted"]).max())
    summary = {
        "pool": args.pool,
        "n": len(records),
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "examples_per_s": {k: round(statistics.median(v), 2) for k, v in runs.items()},
        "examples_per_s_all": {k: [round(x, 2) for x in v] for k, v in runs.items()},
        "speedup": round(statistics.median(runs["sorted"]) / statistics.median(runs["unsorted"]), 2),
        "real_tokens": real,
        "padded_tokens": {
            name: padded_tokens(ins, ans, batch_order(ins, ans, sort_by_length=name == "sorted"), args.batch_size)
            for name in ("unsorted", "sorted")
        },
        "max_abs_score_difference": diff,
        "load_average": os.getloadavg(),
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
