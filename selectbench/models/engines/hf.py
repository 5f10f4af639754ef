"""The transformers engine: one base model loaded once, each LoRA adapter loaded once into one PEFT model beside it
and switched per request; it serves answer losses, generation, first-token log-probabilities and embeddings."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from selectbench.errors import SelectbenchError
from selectbench.models.engines.adapters import checked_adapter
from selectbench.models.engines.base import POOLINGS, Decoding, Texts, cuda_available, identity, scored_positions
from selectbench.models.engines.batching import forward_batches, length_batches
from selectbench.models.engines.local import LocalEngine
from selectbench.models.spec import ResolvedModel

HEAD_ROWS = 2048  # positions per LM-head call when scoring losses: bounds the (positions x vocab) logits in memory


def _bar(total: int, enabled: bool, unit: str, desc: str, smallest: int) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit=unit,
        desc=desc,
        file=sys.stderr,
        disable=not enabled or total < smallest,
        mininterval=1.0,
        smoothing=0.1,
    )


def _padded(sequences: Sequence[Sequence[int]], batch: list[int], pad: int, *, left: bool) -> tuple[Any, Any]:
    """``(ids, attention_mask)`` of one batch, padded to its first (longest) row, on the left or the right."""
    import torch

    width = len(sequences[batch[0]])
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, i in enumerate(batch):
        span = slice(width - len(sequences[i]), width) if left else slice(0, len(sequences[i]))
        ids[row, span] = torch.tensor(list(sequences[i]), dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


@dataclass
class HFEngine(LocalEngine):
    """transformers engine. Generation: prompts sorted by length and generated in left-padded batches. Losses: the
    LM head applied only at the positions whose loss is needed, no Python loop over tokens. Adapters: loaded once
    each with PEFT beside the base weights and switched per call (the base is never reloaded or merged).

    Args:
        model: a model spec (alias, folder, .gguf, hub id) or a resolved one.
        dtype: ``float32`` (default on CPU) or ``bfloat16`` (default on a GPU).
        device: ``cuda``/``cpu``; default CUDA when available.
        batch_size: prompts per generation or judge batch, at most.
        batch_tokens: padded tokens per generation or judge batch (rows x (longest prompt + max_new_tokens)).
        score_batch_tokens: padded tokens per batch of losses and embeddings (rows x longest). Default: 8192 on a
            GPU; on CPU each sequence alone, because there a padded batch (masked attention, padding positions)
            costs more than batching saves (``benchmarks/RESULTS.md``, IFD scoring throughput).
        progress: show progress bars.
    """

    model: str | ResolvedModel
    dtype: str | None = None
    device: str | None = None
    batch_size: int = 16
    batch_tokens: int = 32768
    score_batch_tokens: int | None = None
    progress: bool = True
    name: str = "hf"
    _base: Any = field(default=None, repr=False)
    _peft: Any = field(default=None, repr=False)
    _adapters: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._setup()

    @property
    def resolved_dtype(self) -> str:
        """The dtype the weights are loaded in (``dtype``, or the device's default)."""
        return self.dtype or ("bfloat16" if cuda_available() else "float32")

    def _load(self) -> Any:
        if self._base is None:
            from selectbench.models.loading import load_causal_lm

            self._base = load_causal_lm(self.resolved, dtype=self.resolved_dtype, device=self.device)
        return self._base

    @contextlib.contextmanager
    def _using(self, adapter: str | None) -> Iterator[Any]:
        """The model with ``adapter`` active (None: the base, with every adapter off); ``adapter`` is a checked
        folder path."""
        base = self._load()
        if adapter is None:
            if self._peft is None:
                yield base
            else:
                with self._peft.disable_adapter():
                    yield self._peft
            return
        name = self._adapters.get(adapter)
        if name is None:
            from peft import PeftModel

            name = f"adapter{len(self._adapters)}"
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(base, adapter, adapter_name=name).eval()
            else:
                self._peft.load_adapter(adapter, adapter_name=name)
            self._adapters[adapter] = name
        self._peft.set_adapter(name)
        yield self._peft

    @staticmethod
    def _plain(model: Any) -> Any:
        """The transformers model under a PEFT wrapper (its layers carry the active adapter), or the model."""
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def _score_batches(self, indices: Any, lengths: Sequence[int], device_type: str) -> list[list[int]]:
        return forward_batches(indices, lengths, device_type=device_type, batch_tokens=self.score_batch_tokens)

    # ------------------------------------------------------------------------------------------------ losses

    def answer_losses(
        self, sequences: Sequence[Sequence[int]], starts: Sequence[int], *, adapter: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Summed answer-token NLL and token count per sequence (see :class:`~.base.LossEngine`)."""
        import torch

        n = len(sequences)
        sums, counts = np.zeros(n, dtype=np.float64), np.zeros(n, dtype=np.int64)
        todo = [i for i in range(n) if len(scored_positions(len(sequences[i]), starts[i]))]
        if not todo:
            return sums, counts
        adapter_path = checked_adapter(adapter)
        bar = _bar(len(todo), self.progress, "ex", "scoring", 64)
        with self._using(adapter_path) as wrapped, torch.inference_mode():
            model = self._plain(wrapped)
            backbone, head = model.get_decoder(), model.get_output_embeddings()
            softcap = getattr(model.config, "final_logit_softcapping", None)
            device = next(model.parameters()).device
            pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
            lengths = [len(s) for s in sequences]
            for batch in self._score_batches(todo, lengths, device.type):
                ids, mask = _padded(sequences, batch, pad, left=False)
                # Without padding (the batch is length-sorted, so its last row is its shortest), no mask: attention
                # then takes its plain causal path (much faster on CPU).
                padded = lengths[batch[-1]] < lengths[batch[0]]
                hidden = backbone(
                    input_ids=ids.to(device), attention_mask=mask.to(device) if padded else None
                ).last_hidden_state
                # Token p is predicted by the hidden state at p - 1; gather only those states.
                row_lengths = torch.tensor([lengths[i] for i in batch])
                firsts = torch.tensor([max(starts[i], 1) for i in batch])
                per_row = row_lengths - firsts
                rows = torch.repeat_interleave(torch.arange(len(batch)), per_row)
                offsets = torch.arange(int(per_row.sum())) - torch.repeat_interleave(
                    torch.cumsum(per_row, 0) - per_row, per_row
                )
                targets_pos = torch.repeat_interleave(firsts, per_row) + offsets
                states = hidden[rows.to(device), (targets_pos - 1).to(device)]
                targets = ids[rows, targets_pos].to(device)
                token_nll = torch.empty(len(targets), dtype=torch.float32, device=device)
                for lo in range(0, len(targets), HEAD_ROWS):
                    logits = head(states[lo : lo + HEAD_ROWS]).float()
                    if softcap:
                        logits = torch.tanh(logits / softcap) * softcap
                    token_nll[lo : lo + HEAD_ROWS] = torch.nn.functional.cross_entropy(
                        logits, targets[lo : lo + HEAD_ROWS], reduction="none"
                    )
                row_sums = torch.zeros(len(batch), dtype=torch.float64, device=device)
                row_sums.index_add_(0, rows.to(device), token_nll.double())
                sums[batch] = row_sums.cpu().numpy()
                counts[batch] = per_row.numpy()
                bar.update(len(batch))
        bar.close()
        return sums, counts

    # -------------------------------------------------------------------------------------------- generation

    def generate_ids(
        self, prompts: Sequence[Sequence[int]], decoding: Decoding, adapter: str | None = None
    ) -> list[list[list[int]]]:
        """``decoding.n`` completion id lists per prompt (stop token removed); ``adapter`` is a checked path."""
        import torch
        from transformers import GenerationConfig

        results: list[list[list[int]]] = [[] for _ in prompts]
        if not prompts:
            return results
        pad = self.pad_id()
        config = GenerationConfig(
            max_new_tokens=decoding.max_new_tokens,
            do_sample=not decoding.greedy,
            num_return_sequences=decoding.n,
            eos_token_id=sorted(self.stop_ids),
            pad_token_id=pad,
            **({} if decoding.greedy else {"temperature": decoding.temperature, "top_p": decoding.top_p, "top_k": 0}),
        )
        batches = length_batches(
            range(len(prompts)),
            [len(p) for p in prompts],
            batch_tokens=self.batch_tokens,
            batch_size=self.batch_size,
            extra=decoding.max_new_tokens,
        )
        bar = _bar(len(prompts), self.progress, "prompt", "generating (hf)", 8)
        with self._using(adapter) as model, torch.inference_mode():
            device = next(model.parameters()).device
            for number, batch in enumerate(batches):
                # Left padding: every prompt ends where generation starts.
                ids, mask = _padded(prompts, batch, pad, left=True)
                if not decoding.greedy:
                    torch.manual_seed(decoding.seed + number)
                out = model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
                )
                new = out[:, ids.shape[1] :].tolist()
                for row, i in enumerate(batch):
                    results[i] = [self.cut(new[row * decoding.n + k]) for k in range(decoding.n)]
                bar.update(len(batch))
        bar.close()
        return results

    def first_token_logprobs(
        self, prompts: Sequence[Sequence[int]], token_ids: list[int], adapter: str | None = None
    ) -> list[list[float]]:
        """Log-probabilities of ``token_ids`` right after each prompt (right-padded batches, one forward pass)."""
        import torch

        results: list[list[float]] = [[] for _ in prompts]
        batches = length_batches(
            range(len(prompts)), [len(p) for p in prompts], batch_tokens=self.batch_tokens, batch_size=self.batch_size
        )
        pad = self.pad_id()
        with self._using(adapter) as model, torch.inference_mode():
            device = next(model.parameters()).device
            for batch in batches:
                # Right padding keeps positions 0..len-1 for every row.
                ids, mask = _padded(prompts, batch, pad, left=False)
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                last = torch.tensor([len(prompts[i]) - 1 for i in batch], device=device)
                logprobs = torch.log_softmax(logits[torch.arange(len(batch), device=device), last].float(), dim=-1)
                picked = logprobs[:, token_ids].tolist()
                for row, i in enumerate(batch):
                    results[i] = picked[row]
        return results

    # -------------------------------------------------------------------------------------------- embeddings

    def embed(self, texts_or_ids: Texts, *, adapter: str | None = None, pooling: str = "last") -> np.ndarray:
        """One float32 row per item from the last layer's hidden states (after the final norm): the last token's
        state (``last``, the usual choice for a causal LM, which sees the whole sequence only there) or the mean
        over the sequence's tokens (``mean``). Texts are tokenised with the tokenizer's special tokens."""
        import torch

        if pooling not in POOLINGS:
            raise SelectbenchError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        sequences = self.text_ids(texts_or_ids)
        adapter_path = checked_adapter(adapter)
        rows: list[Any] = [None] * len(sequences)
        bar = _bar(len(sequences), self.progress, "seq", "embedding", 64)
        with self._using(adapter_path) as wrapped, torch.inference_mode():
            model = self._plain(wrapped)
            backbone = model.get_decoder()
            device = next(model.parameters()).device
            lengths = [len(s) for s in sequences]
            for batch in self._score_batches(range(len(sequences)), lengths, device.type):
                ids, mask = _padded(sequences, batch, self.pad_id(), left=False)
                padded = lengths[batch[-1]] < lengths[batch[0]]
                mask = mask.to(device)
                hidden = backbone(
                    input_ids=ids.to(device), attention_mask=mask if padded else None
                ).last_hidden_state.float()
                if pooling == "last":
                    last = torch.tensor([lengths[i] - 1 for i in batch], device=device)
                    pooled = hidden[torch.arange(len(batch), device=device), last]
                else:
                    weights = mask.unsqueeze(-1).float()
                    pooled = (hidden * weights).sum(1) / weights.sum(1)
                for row, i in enumerate(batch):
                    rows[i] = pooled[row].cpu().numpy()
                bar.update(len(batch))
        bar.close()
        width = int(self._plain(self._load()).config.hidden_size)
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, width), dtype=np.float32)

    # ------------------------------------------------------------------------------------------------- admin

    def describe(self) -> dict[str, Any]:
        """Engine, model and options for ``meta.json``."""
        return {
            **identity(self),
            "dtype": self.resolved_dtype,
            "device": self.device or ("cuda" if cuda_available() else "cpu"),
            "batch_size": self.batch_size,
            "batch_tokens": self.batch_tokens,
            **self.template_info(),
        }

    def close(self) -> None:
        """Drop the model (and adapters) from memory."""
        self._base = self._peft = None
        self._adapters.clear()
        import gc

        gc.collect()
