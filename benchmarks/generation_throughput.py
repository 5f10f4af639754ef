"""Generation throughput: the hf engine batched vs one prompt at a time, and the vLLM engine, on the same prompts.

Each case runs in a fresh process (model load and vLLM startup are timed apart from generation). Prompts are the
first N HumanEval problems in the chat format the benchmark uses; decoding is greedy with a fixed max_new_tokens.
Throughput is generated tokens (stop tokens excluded) per second of generation. Also reports the share of prompts
whose greedy outputs are identical between the cases.

    .venv/bin/python benchmarks/generation_throughput.py [--model smollm2-135m-instruct] [--prompts 16]
        [--max-new-tokens 64] [--batch-size 16] [--cases hf-single,hf-batched,vllm] [--threads N] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CASES = ("hf-single", "hf-batched", "vllm")


def run_case(args: argparse.Namespace) -> dict:
    """One case in this process; returns its figures and the generated token ids."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from selectbench.evaluate import humaneval
    from selectbench.models.engines.base import Decoding
    from selectbench.models.engines.factory import make_engine

    engine = "vllm" if args.case == "vllm" else "hf"
    options = {"progress": False}
    if engine == "hf":
        options["batch_size"] = 1 if args.case == "hf-single" else args.batch_size
    else:
        options.update(max_model_len=2048)
    start = time.perf_counter()
    generator = make_engine(engine, args.model, **options)
    problems = humaneval.load_problems(args.prompts)
    prompts = [generator.prompt_ids(humaneval.build_conversation(p)) for p in problems]
    decoding = Decoding(max_new_tokens=args.max_new_tokens)
    if engine == "hf":
        generator._load()
    else:
        generator.llm  # noqa: B018  (starts the engine)
    load_s = time.perf_counter() - start
    # Warm-up on one prompt (first-call allocations), then the timed run over all prompts.
    generator.generate_ids(prompts[:1], Decoding(max_new_tokens=4))
    start = time.perf_counter()
    if args.case == "hf-single":
        outputs = [generator.generate_ids([p], decoding)[0] for p in prompts]
    else:
        outputs = generator.generate_ids(prompts, decoding)
    seconds = time.perf_counter() - start
    tokens = sum(len(o[0]) for o in outputs)
    generator.close()
    return {
        "case": args.case,
        "model": args.model,
        "prompts": len(prompts),
        "prompt_tokens": sum(len(p) for p in prompts),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": options.get("batch_size"),
        "torch_threads": torch.get_num_threads(),
        "load_s": round(load_s, 2),
        "generate_s": round(seconds, 2),
        "new_tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 2),
        "outputs": [o[0] for o in outputs],
    }


def loadavg() -> str:
    """The 1/5/15-minute load averages (other work shares this machine's cores)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    parser.add_argument("--out", help="write the figures as JSON here")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args)))
        return

    results = []
    for case in args.cases.split(","):
        if case not in CASES:
            parser.error(f"unknown case {case!r}; cases: {', '.join(CASES)}")
        before = loadavg()
        command = [sys.executable, __file__, "--case", case, "--model", args.model, "--prompts", str(args.prompts)]
        command += ["--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(args.batch_size)]
        command += ["--threads", str(args.threads)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"case {case} failed")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["load_average_before"], result["load_average_after"] = before, loadavg()
        results.append(result)
        shown = {k: v for k, v in result.items() if k != "outputs"}
        print(json.dumps(shown), flush=True)
    by_case = {r["case"]: r for r in results}
    summary = {}
    if "hf-single" in by_case and "hf-batched" in by_case:
        single, batched = by_case["hf-single"], by_case["hf-batched"]
        summary["hf_batched_speedup"] = round(batched["tokens_per_s"] / single["tokens_per_s"], 2)
        same = sum(a == b for a, b in zip(single["outputs"], batched["outputs"], strict=True))
        summary["hf_batched_equals_single_share"] = same / len(single["outputs"])
    if "vllm" in by_case and "hf-single" in by_case:
        same = sum(a == b for a, b in zip(by_case["vllm"]["outputs"], by_case["hf-single"]["outputs"], strict=True))
        summary["vllm_equals_hf_share"] = same / len(by_case["vllm"]["outputs"])
        summary["vllm_vs_hf_single"] = round(by_case["vllm"]["tokens_per_s"] / by_case["hf-single"]["tokens_per_s"], 2)
    print(json.dumps(summary))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"cases": results, "summary": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
