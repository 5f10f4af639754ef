"""Fine-tuning benchmark: the recipe's training throughput against raw forward+backward on the same tokens, and
the wall time to fine-tune SmolLM2-135M with LoRA on demo examples.

For each batching mode the recipe trains one pass over the first N demo examples (TRL SFTTrainer, LoRA, the
default recipe otherwise); its tokens/s counts real tokens (prompt + response, no padding) over the time in
``trainer.train()``. The raw baselines run the same LoRA model over exactly the same token sequences in a plain
loop of forward + backward (no optimizer, no data pipeline): one sequence at a time (no padding at all), and in
the recipe's own micro-batches (padded to the longest). The ratio recipe / best raw is the overhead figure. A
third baseline runs the 1-by-1 loop through the fused LM head TRL patches in (on CPU it scores every position and
computes entropy and top-1 inside its autograd function): what TRL's own ``compute_loss`` would cost, which the
recipe replaces on CPU.

    .venv/bin/python benchmarks/finetune_throughput.py [--examples 50] [--throughput-examples 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def raw_pass(model, batches: list[list[tuple[list[int], list[int]]]], pad_id: int, fused: bool = False) -> float:
    """Seconds for forward + backward over ``batches`` of (input_ids, labels), each padded to its longest; with
    ``fused``, through the LM head TRL patches in (the recipe's loss path) instead of the model's own loss."""
    import torch

    model.train()
    start = time.perf_counter()
    for batch in batches:
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), pad_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (seq, lab) in enumerate(batch):
            ids[row, : len(seq)], labels[row, : len(seq)], mask[row, : len(seq)] = (
                torch.tensor(seq), torch.tensor(lab), 1,
            )  # fmt: skip
        extra = {"fused_lm_head": True} if fused else {}
        loss = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False, **extra).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def _step_timer_class() -> type:
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """From the start of the first optimizer step to the end of the last: the recipe without its one-off
        setup (optimizer creation, dataloader, device placement)."""

        first_begin: float | None = None
        last_end: float = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            if self.first_begin is None:
                self.first_begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.last_end = time.perf_counter()

    return StepTimer


def make_step_timer():
    """A StepTimer (the class is built on first use: transformers is heavy)."""
    return _step_timer_class()()


def measure(
    model_spec: str, pool, batching: str, max_length: int, batch_size: int, micro: int | None, workdir: Path
) -> dict:
    """One recipe pass and both raw passes over the same tokens."""
    from selectbench.finetune import FinetuneConfig
    from selectbench.finetune.recipe import prepare_training

    config = FinetuneConfig.from_overrides(
        {"epochs": 1, "max_length": max_length, "batch_size": batch_size, "batching": batching}
        | ({"micro_batch_size": micro} if micro else {})
    )
    run = prepare_training(pool, model_spec, config, workdir, progress=False)
    trainer = run.trainer
    tokens = sum(run.lengths[i] for i in run.order)
    model = trainer.model
    pad_id = trainer.processing_class.pad_token_id
    if batching == "packing":
        # A packed row holds several examples; the raw baselines run the examples it holds, unpacked.
        sequences = []
        for i in run.order:
            row, offset = run.data[i], 0
            for n in row["seq_lengths"]:
                sequences.append((row["input_ids"][offset : offset + n], row["labels"][offset : offset + n]))
                offset += n
    else:
        sequences = [(run.data[i]["input_ids"], run.data[i]["labels"]) for i in run.order]
    micro_batches = [sequences[k : k + run.micro_batch_size] for k in range(0, len(sequences), run.micro_batch_size)]

    # Both sides start warm: kernels, thread pools and the allocator see two sequences before any timing.
    raw_pass(model, [[s] for s in sequences[:2]], pad_id)
    timer = make_step_timer()
    trainer.add_callback(timer)
    start = time.perf_counter()
    trainer.train()
    recipe_s = time.perf_counter() - start

    single_s = raw_pass(model, [[s] for s in sequences], pad_id)
    fused_s = raw_pass(model, [[s] for s in sequences], pad_id, fused=True)
    # With one sequence per micro-batch the batched baseline is the 1-by-1 one: not run twice.
    batched_s = raw_pass(model, micro_batches, pad_id) if run.micro_batch_size > 1 else single_s
    padded = sum(max(len(ids) for ids, _ in b) * len(b) for b in micro_batches)
    return {
        "batching": batching,
        "micro_batch_size": run.micro_batch_size,
        "steps": trainer.state.global_step,
        "tokens": tokens,
        "padding_share": None if batching == "packing" else 1 - tokens / padded,
        "recipe_tok_s": tokens / recipe_s,
        "recipe_steps_tok_s": tokens / (timer.last_end - timer.first_begin),
        "raw_single_tok_s": tokens / single_s,
        "raw_batched_tok_s": tokens / batched_s,
        "raw_single_trl_head_tok_s": tokens / fused_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--examples", type=int, default=50, help="the first N demo examples, for the wall time")
    parser.add_argument(
        "--throughput-examples", type=int, default=16, help="the first N demo examples, for tokens/s (a rate)"
    )
    parser.add_argument("--skip-wall", action="store_true", help="only the throughput comparison")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--micro-batch-size", type=int, default=None, help="default: the recipe's (1 on CPU)")
    parser.add_argument("--batching", default="length", help="comma-separated batching modes (length,random,packing)")
    parser.add_argument("--repeats", type=int, default=3, help="throughput passes per mode (medians reported)")
    parser.add_argument("--out", default="benchmarks/out/finetune_throughput.json")
    args = parser.parse_args()

    import torch
    import transformers

    from selectbench.data import load_pool, pool_from_records
    from selectbench.finetune import FinetuneConfig, finetune

    transformers.logging.set_verbosity_error()
    demo = load_pool("demo")

    def first(n: int):
        rows = demo.records(range(n))
        return pool_from_records(
            [
                {"id": r["id"], "instruction": r["instruction"], "input": r["input"], "output": r["response"]}
                for r in rows
            ]
        )

    load_before = os.getloadavg()
    results: dict = {
        "model": args.model,
        "examples": args.examples,
        "throughput_examples": args.throughput_examples,
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "loadavg_before": load_before,
    }
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_wall:
            # Wall time of the real thing: finetune() end to end (model load, tokenising, training, saving).
            config = FinetuneConfig.from_overrides({"epochs": 1, "max_length": args.max_length})
            start = time.perf_counter()
            meta = finetune(first(args.examples), args.model, config, Path(tmp) / "run", progress=True)
            results["finetune_wall_s"] = time.perf_counter() - start
            results["finetune_train_s"] = meta["timings"]["train_s"]
            results["finetune_steps"] = meta["trained"]["steps"]
            results["finetune_tokens"] = meta["trained"]["tokens"]
            results["finetune_tok_s"] = meta["timings"]["tokens_per_s"]
            results["finetune_loadavg_after"] = os.getloadavg()
            print(json.dumps({k: v for k, v in results.items() if k.startswith("finetune")}), file=sys.stderr)
        pool = first(args.throughput_examples)

        rows = []
        for batching in args.batching.split(","):
            shape = (args.max_length, args.batch_size, args.micro_batch_size)
            runs = [
                measure(args.model, pool, batching, *shape, Path(tmp) / f"{batching}{i}") for i in range(args.repeats)
            ]
            row = dict(runs[0])
            keys = ("recipe_tok_s", "recipe_steps_tok_s", "raw_single_tok_s", "raw_batched_tok_s")
            for key in (*keys, "raw_single_trl_head_tok_s"):
                row[key] = statistics.median(r[key] for r in runs)
            # Each pass's recipe and raw timings run back to back, so their ratio cancels most of the drift in
            # machine load between passes: report the median of the per-pass ratios.
            ratios = [r["recipe_tok_s"] / max(r["raw_single_tok_s"], r["raw_batched_tok_s"]) for r in runs]
            steps_ratios = [r["recipe_steps_tok_s"] / max(r["raw_single_tok_s"], r["raw_batched_tok_s"]) for r in runs]
            row["ratios"], row["steps_ratios"] = ratios, steps_ratios
            row["ratio_vs_best_raw"] = statistics.median(ratios)
            row["steps_ratio_vs_best_raw"] = statistics.median(steps_ratios)
            row["ratio_vs_raw_trl_head"] = statistics.median(
                r["recipe_tok_s"] / r["raw_single_trl_head_tok_s"] for r in runs
            )
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    results["modes"] = rows
    results["loadavg_after"] = os.getloadavg()

    if not args.skip_wall:
        print(f"\nfinetune() on {args.examples} demo examples, max_length {args.max_length}, 1 epoch, LoRA:")
        print(
            f"  wall {results['finetune_wall_s']:.1f} s (training {results['finetune_train_s']:.1f} s, "
            f"{results['finetune_steps']} steps, {results['finetune_tokens']} tokens, "
            f"{results['finetune_tok_s']:.0f} tokens/s)"
        )
    print(f"\nthroughput on the first {args.throughput_examples} demo examples (median of {args.repeats}):")
    print(
        "\n| batching | micro-batch | padding | recipe tok/s (train() / steps only) | raw 1-by-1 tok/s | "
        "raw batched tok/s | recipe / raw (train() / steps only) | raw 1-by-1 via TRL's LM head tok/s | "
        "recipe / that |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        padding = "-" if row["padding_share"] is None else f"{100 * row['padding_share']:.0f}%"
        cells = [row["batching"], row["micro_batch_size"], padding]
        cells.append(f"{row['recipe_tok_s']:.0f} / {row['recipe_steps_tok_s']:.0f}")
        cells += [f"{row[key]:.0f}" for key in ("raw_single_tok_s", "raw_batched_tok_s")]
        cells.append(f"{100 * row['ratio_vs_best_raw']:.0f}% / {100 * row['steps_ratio_vs_best_raw']:.0f}%")
        cells += [f"{row['raw_single_trl_head_tok_s']:.0f}", f"{100 * row['ratio_vs_raw_trl_head']:.0f}%"]
        print("| " + " | ".join(map(str, cells)) + " |")
    threads = results["torch_threads"]
    print(f"\nload average before {load_before}, after {results['loadavg_after']}; torch threads {threads}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
