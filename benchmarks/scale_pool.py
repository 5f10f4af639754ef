"""Scale benchmark: load a synthetic 1,000,000-row JSONL pool and run `random` and `longest` on it.

Each case runs in a fresh process with an empty cache (a cold load converts the JSONL to Arrow), and again
with the conversion cached (warm). Prints wall time and peak RSS per case.

    .venv/bin/python benchmarks/scale_pool.py [--rows 1000000] [--workdir benchmarks/out]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

VOCAB = (
    "the of and to in is that for it as with was on be by this are from at or an which not have has one "
    "model data train select pool score style answer question python function value list return error time "
    "user result code test example first each more when what how can will about there use their other"
).split()

CASE = """
import resource, sys, time
start = time.perf_counter()
from selectbench.data import load_pool
from selectbench.selectors import make_selector
pool = load_pool(sys.argv[1])
loaded = time.perf_counter()
selector = make_selector(sys.argv[2], **({"unit": sys.argv[3]} if sys.argv[3] != "-" else {}))
selection = selector.select(pool, 1000, seed=0)
done = time.perf_counter()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{len(pool)} {loaded - start:.2f} {done - loaded:.2f} {done - start:.2f} {rss:.0f}")
"""


def make_pool(path: Path, rows: int, seed: int = 0) -> None:
    """A deterministic Alpaca-format JSONL pool; response lengths from 5 to 400 words, skewed short."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(rows):
            n_instruction = rng.randint(5, 30)
            n_response = min(400, int(rng.expovariate(1 / 80)) + 5)
            row = {
                "instruction": " ".join(rng.choices(VOCAB, k=n_instruction)).capitalize() + "?",
                "input": "" if i % 3 else " ".join(rng.choices(VOCAB, k=rng.randint(3, 40))),
                "output": " ".join(rng.choices(VOCAB, k=n_response)) + ".",
            }
            handle.write(json.dumps(row) + "\n")


def run_case(pool: Path, selector: str, unit: str, cache: Path) -> dict:
    env = {**os.environ, "SELECTBENCH_CACHE": str(cache)}
    out = subprocess.run(
        [sys.executable, "-c", CASE, str(pool), selector, unit], capture_output=True, text=True, env=env, check=True
    )
    n, load_s, select_s, total_s, rss_mib = out.stdout.split()
    return {
        "rows": int(n),
        "load_s": float(load_s),
        "select_s": float(select_s),
        "total_s": float(total_s),
        "peak_rss_mib": float(rss_mib),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    pool = args.workdir / f"synthetic-{args.rows}.jsonl"
    if not pool.exists():
        start = time.perf_counter()
        make_pool(pool, args.rows)
        print(f"wrote {pool} ({pool.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - start:.0f} s")
    cases = [("random", "-"), ("longest", "chars"), ("longest", "words")]
    print(f"{'case':<18} {'cache':<5} {'load s':>7} {'select s':>8} {'total s':>8} {'peak RSS MiB':>12}")
    for selector, unit in cases:
        cache = args.workdir / "cache"
        shutil.rmtree(cache, ignore_errors=True)
        for state in ("cold", "warm"):
            r = run_case(pool, selector, unit, cache)
            name = selector if unit == "-" else f"{selector}({unit})"
            print(
                f"{name:<18} {state:<5} {r['load_s']:>7.1f} {r['select_s']:>8.1f} {r['total_s']:>8.1f} "
                f"{r['peak_rss_mib']:>12.0f}",
                flush=True,
            )
    shutil.rmtree(args.workdir / "cache", ignore_errors=True)
    print(f"machine: {os.cpu_count()} cores, {resource.getpagesize()}-byte pages, Python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
