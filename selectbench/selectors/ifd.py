"""IFD (Li et al., NAACL 2024; Cherry_LLM) and its presets: Superfiltering (Li et al., ACL 2024) and perplexity.

IFD = loss(answer | prompt) / loss(answer | bare response tag): how little the instruction helps a model predict
the answer. Token accounting, templates and truncation follow ALGORITHMS.md exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from selectbench.errors import SelectbenchError
from selectbench.io import cache_dir, dumps
from selectbench.selectors.base import Budget, ScoreSelector, resolve_budget
from selectbench.selectors.registry import register

if TYPE_CHECKING:
    from selectbench.data import Pool

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
TEMPLATES = ("alpaca", "wiz", "vicuna", "chat", "none")
VARIANTS = ("ifd_loss", "ifd_ppl", "loss_cond")
FILTERS = {
    "drop_above_one": "keep IFD <= 1 (Cherry)",
    "below_one": "keep IFD < 1 (Superfiltering)",
    "none": "keep all",
}
FIELDS = ("loss_cond", "loss_direct", "ifd_loss", "ifd_ppl", "n_answer_tokens")
CHUNK = 256  # examples per cached chunk: a killed run loses at most one chunk of work


def format_prompt(template: str, instruction: str, input_: str, tokenizer: Any = None) -> str:
    """The templated prompt Q; the answer is appended right after it with no separator."""
    has_input = bool(input_.strip())
    if template == "alpaca":
        return (ALPACA_WITH_INPUT if has_input else ALPACA_NO_INPUT).format(instruction=instruction, input=input_)
    if template == "wiz":
        return f"{instruction}\nInput:{input_}\n\n### Response:" if has_input else f"{instruction}\n\n### Response:"
    if template == "vicuna":
        user = f"{instruction}\nInput:\n{input_}" if has_input else instruction
        return f"{VICUNA_SYSTEM} USER: {user} ASSISTANT:"
    if template == "none":
        return f"{instruction}\n{input_}\n" if has_input else f"{instruction}\n"
    if template == "chat":
        from selectbench.models.chat import render_prompt, user_turn

        return render_prompt(
            tokenizer, [{"role": "user", "content": user_turn({"instruction": instruction, "input": input_})}]
        )
    raise SelectbenchError(f"unknown template {template!r}; templates: {', '.join(TEMPLATES)}")


@dataclass(frozen=True)
class Tokenised:
    """Both passes of one example, ready for an engine; ``start`` marks the first scored token."""

    cond_ids: list[int]
    cond_start: int
    direct_ids: list[int]
    direct_start: int
    skip: str | None  # why the example gets no score, or None


def tokenise_example(
    tokenizer: Any, prompt: str, answer: str, direct_context: str, max_length: int, special_in_prompt: bool
) -> Tokenised:
    """Cherry's accounting: the answer starts where the prompt's own tokenisation ends; the conditioned text is
    cut at ``max_length``, the direct text at ``max_length - prompt_len + len(direct context)``, so both passes
    score the same first ``max_length - prompt_len`` answer tokens. No EOS is added or scored."""
    add = not special_in_prompt
    prompt_len = len(tokenizer(prompt, add_special_tokens=add)["input_ids"])
    cond = tokenizer(prompt + answer, add_special_tokens=add)["input_ids"][:max_length]
    context_len = len(tokenizer(direct_context, add_special_tokens=True)["input_ids"])
    direct_budget = max_length - prompt_len + context_len
    direct = tokenizer(direct_context + answer, add_special_tokens=True)["input_ids"][: max(direct_budget, 0)]
    skip = None
    if max_length - prompt_len <= 0:
        skip = "prompt fills max_length"
    elif len(cond) <= max(prompt_len, 1) or len(direct) <= max(context_len, 1):
        skip = "no answer token left"
    return Tokenised(cond, prompt_len, direct, context_len, skip)


@register("ifd")
@dataclass(kw_only=True)
class IFDSelector(ScoreSelector):
    """Instruction-Following Difficulty (Li et al., NAACL 2024): keep the examples whose instruction helps least.

    Scores every example with two forward passes of a causal LM: ``loss_cond`` (answer given the templated
    prompt) and ``loss_direct`` (answer given only the direct context), over the same answer tokens.
    ``ifd_loss = loss_cond / loss_direct`` (default), ``ifd_ppl = exp(loss_cond - loss_direct)``. Selection drops
    IFD > 1, ranks the rest by IFD descending, and takes the budget; a fractional budget applies to the kept pool
    (Cherry) unless ``budget_base="full"``. Unscorable examples are NaN, counted, and never selected.

    Args:
        model: the scorer (model spec). Default: the bundled SmolLM2-135M-Instruct.
        template: prompt template: ``alpaca`` (default), ``wiz``, ``vicuna``, ``chat`` (the scorer's own chat
            template), ``none`` (``{instruction}\\n{input}\\n``).
        direct_context: text before the answer in the direct pass; default ``"### Response:"`` (Cherry v1);
            ``none`` scores the bare answer (BOS + answer).
        max_length: token budget of the conditioned text (Cherry's truncation rule).
        variant: the score: ``ifd_loss`` (default), ``ifd_ppl`` or ``loss_cond``.
        filter: ``drop_above_one`` (default, keep IFD <= 1), ``below_one`` (keep IFD < 1), ``none``.
        budget_base: ``kept`` (default: a fraction of the examples that pass the filter) or ``full``. It applies to
            fractional budgets only: an experiment gives every selector the same count ``k`` (equal budgets).
        engine: ``auto`` (vLLM with a GPU, else transformers), ``hf`` or ``vllm``.
        dtype: model dtype for scoring (``float32`` default).
        batch_tokens: padded tokens per batch for the ``hf`` engine; default 8192 on a GPU, one example per
            batch on CPU (faster there).
    """

    model: str = "smollm2-135m-instruct"
    template: str = "alpaca"
    direct_context: str = "### Response:"
    max_length: int = 512
    variant: str = "ifd_loss"
    filter: str = "drop_above_one"
    budget_base: str = "kept"
    engine: str = "auto"
    dtype: str = "float32"
    batch_tokens: int | None = None

    def __post_init__(self) -> None:
        checks = [
            ("template", TEMPLATES),
            ("variant", VARIANTS),
            ("filter", tuple(FILTERS)),
            ("budget_base", ("kept", "full")),
            ("engine", ("auto", "hf", "vllm")),
        ]
        for name, allowed in checks:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise ValueError(f"max_length must be an integer >= 2, got {self.max_length!r}")

    # ------------------------------------------------------------------------------------------ scoring

    def score(self, pool: Pool) -> np.ndarray:
        """The configured variant per record (NaN where unscorable)."""
        return self.score_fields(pool)[self.variant]

    def score_fields(self, pool: Pool) -> dict[str, np.ndarray]:
        """``score`` plus ``loss_cond``, ``loss_direct``, ``ifd_loss``, ``ifd_ppl``, ``n_answer_tokens`` and
        ``skip`` per record, computed in cached chunks (a killed run resumes where it stopped)."""
        fields = self._scores(pool)
        return {"score": fields[self.variant], **fields}

    def _cache_key(self, pool: Pool) -> str:
        from selectbench.models.spec import resolve_model

        parts = {
            "pool": pool.fingerprint,
            "model": resolve_model(self.model).fingerprint,
            "template": self.template,
            "direct_context": self.direct_context,
            "max_length": self.max_length,
            "dtype": self.dtype,
            "engine": self._engine_name(),
            "direct": self._needs_direct(),
            "version": 1,
        }
        return hashlib.sha256(dumps(parts).encode()).hexdigest()[:24]

    def _needs_direct(self) -> bool:
        return self.variant != "loss_cond"

    def _engine_name(self) -> str:
        from selectbench.models.engines.base import resolve_engine

        return resolve_engine(self.engine, allowed=("auto", "hf", "vllm"))

    def _scores(self, pool: Pool) -> dict[str, np.ndarray]:
        folder = cache_dir("scores", "ifd", self._cache_key(pool))
        n = len(pool)
        chunks = [(lo, min(lo + CHUNK, n)) for lo in range(0, n, CHUNK)]
        missing = [(lo, hi) for lo, hi in chunks if not (folder / f"chunk-{lo:09d}.json").exists()]
        if missing:
            self._compute_chunks(pool, missing, folder)
        merged: dict[str, list[Any]] = {name: [] for name in (*FIELDS, "skip")}
        for lo, _ in chunks:
            part = json.loads((folder / f"chunk-{lo:09d}.json").read_text())
            for name in merged:
                merged[name].extend(part[name])
        out = {
            name: np.asarray([np.nan if v is None else v for v in merged[name]], dtype=np.float64) for name in FIELDS
        }
        out["n_answer_tokens"] = np.nan_to_num(out["n_answer_tokens"]).astype(np.int64)
        out["skip"] = np.asarray(merged["skip"], dtype=object)
        return out

    def _compute_chunks(self, pool: Pool, chunks: list[tuple[int, int]], folder: Path) -> None:
        from tqdm import tqdm

        from selectbench.io import atomic_open
        from selectbench.models.engines.factory import make_engine
        from selectbench.models.loading import load_tokenizer
        from selectbench.models.spec import resolve_model

        model = resolve_model(self.model)  # once for the tokenizer and the engine
        tokenizer = load_tokenizer(model)
        name = self._engine_name()
        if name == "vllm":
            # A scoring engine: LoRA and prefix caching off (see VLLMEngine), eager, a third of the memory.
            options: dict[str, Any] = {
                "max_model_len": self.max_length + 8,
                "gpu_memory_utilization": 0.3,
                "enforce_eager": True,
                "enable_lora": False,
                "enable_prefix_caching": False,
            }
        else:
            options = {"score_batch_tokens": self.batch_tokens}
        engine = make_engine(name, model, dtype=self.dtype, progress=False, **options)
        direct_context = "" if self.direct_context == "none" else self.direct_context
        total = sum(hi - lo for lo, hi in chunks)
        bar = tqdm(
            total=total,
            unit="ex",
            desc=f"ifd scoring ({engine.name})",
            file=sys.stderr,
            disable=total < 64,
            mininterval=1.0,
            smoothing=0.1,
        )
        for lo, hi in chunks:
            records = pool.records(list(range(lo, hi)))
            examples = [
                tokenise_example(
                    tokenizer,
                    format_prompt(self.template, r["instruction"], r["input"], tokenizer),
                    r["response"],
                    direct_context,
                    self.max_length,
                    special_in_prompt=self.template == "chat",
                )
                for r in records
            ]
            ok = [i for i, e in enumerate(examples) if e.skip is None]
            cond_sum, cond_n = engine.answer_losses(
                [examples[i].cond_ids for i in ok], [examples[i].cond_start for i in ok]
            )
            if self._needs_direct():
                dir_sum, dir_n = engine.answer_losses(
                    [examples[i].direct_ids for i in ok], [examples[i].direct_start for i in ok]
                )
            else:
                dir_sum, dir_n = np.full(len(ok), np.nan), np.ones(len(ok))
            part: dict[str, list[Any]] = {name: [None] * (hi - lo) for name in FIELDS}
            part["skip"] = [e.skip for e in examples]
            for j, i in enumerate(ok):
                loss_cond, loss_direct = cond_sum[j] / cond_n[j], dir_sum[j] / dir_n[j]
                part["loss_cond"][i] = float(loss_cond)
                part["n_answer_tokens"][i] = int(cond_n[j])
                if self._needs_direct():
                    part["loss_direct"][i] = float(loss_direct)
                    part["ifd_loss"][i] = float(loss_cond / loss_direct) if loss_direct > 0 else None
                    part["ifd_ppl"][i] = float(math.exp(loss_cond - loss_direct))
            with atomic_open(folder / f"chunk-{lo:09d}.json") as handle:
                json.dump(part, handle)
            bar.update(hi - lo)
        bar.close()

    # ------------------------------------------------------------------------------------------ selecting

    def candidates(self, pool: Pool, scores: np.ndarray, budget: Budget) -> tuple[np.ndarray, int, dict[str, Any]]:
        """Scorable records that pass the IFD filter; a fractional budget counts against them (``kept``)."""
        scorable = ~np.isnan(scores)
        keep = scorable.copy()
        if self.filter == "drop_above_one":
            keep &= np.where(scorable, scores, 0) <= 1.0
        elif self.filter == "below_one":
            keep &= np.where(scorable, scores, 0) < 1.0
        kept = np.flatnonzero(keep)
        base = len(kept) if self.budget_base == "kept" and isinstance(budget, float) else len(pool)
        k = resolve_budget(budget, len(pool)) if base == len(pool) else max(1, math.floor(budget * base))
        info = {
            "n_unscorable": int((~scorable).sum()),
            "n_filtered_out": int((scorable & ~keep).sum()),
            "n_kept": len(kept),
            "filter": self.filter,
            "budget_base": self.budget_base,
        }
        if len(kept) == 0:
            raise SelectbenchError(f"{self.name}: no record passes the filter ({info}); try filter=none")
        return kept, min(k, len(kept)), info

    # ``skip`` says why a record could not be scored; a selection counts the reasons (``unscorable_reasons``).
    info_fields = ("skip",)

    def selection_info(self, pool: Pool, fields: Mapping[str, Any]) -> dict[str, Any]:
        """``unscorable_reasons``: how many records could not be scored, per reason (when ``skip`` is given)."""
        if "skip" not in fields:
            return {}
        skips: dict[str, int] = {}
        for reason in fields["skip"]:
            if reason:
                skips[reason] = skips.get(reason, 0) + 1
        return {"unscorable_reasons": skips}


@register("superfiltering")
@dataclass(kw_only=True)
class SuperfilteringSelector(IFDSelector):
    """Superfiltering (Li et al., ACL 2024): IFD from a small scorer, template ``none``, ``ifd_ppl``, keep IFD < 1.

    The direct pass scores the bare answer; a fractional budget counts against the full pool (as the reference
    code does with Alpaca's size). Default scorer: ``gpt2`` (needs the hub; pass ``model=`` otherwise).
    """

    model: str = "gpt2"
    template: str = "none"
    direct_context: str = "none"
    max_length: int = 1024
    variant: str = "ifd_ppl"
    filter: str = "below_one"
    budget_base: str = "full"


@register("perplexity")
@dataclass(kw_only=True)
class PerplexitySelector(IFDSelector):
    """Perplexity baseline: the answer's loss given the templated prompt (``loss_cond``), highest first.

    One forward pass per example; no IFD filter. A known-weak baseline (Cherry App. B; Superfiltering Table 3).
    """

    variant: str = "loss_cond"
    filter: str = "none"
    budget_base: str = "full"


def ifd_cache_root() -> Path:
    """Where IFD score chunks are cached (``$SELECTBENCH_CACHE/scores/ifd``)."""
    return cache_dir("scores", "ifd")


__all__ = ["IFDSelector", "PerplexitySelector", "SuperfilteringSelector", "format_prompt", "tokenise_example"]
