"""What the local backends (hf, vllm) share: the resolved model, its tokenizer and chat template, stop tokens, and
the conversation -> token ids -> text steps around each backend's own id-level operations."""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from selectbench.errors import SelectbenchError
from selectbench.models.engines.adapters import checked_adapter
from selectbench.models.engines.base import Conversation, Decoding, Texts
from selectbench.models.spec import ResolvedModel, resolve_model


class LocalEngine:
    """Base of the hf and vllm engines. Subclasses are dataclasses with a ``model`` field (a spec or a
    :class:`ResolvedModel`) and call :meth:`_setup` from ``__post_init__``; they implement ``generate_ids`` and
    ``first_token_logprobs`` on token ids."""

    model: str
    name: str
    resolved: ResolvedModel

    def _setup(self) -> None:
        from selectbench.models.chat import ensure_chat_template
        from selectbench.models.loading import load_tokenizer

        # The spec is resolved (and its weights fingerprinted) once, here; everything after uses `resolved`.
        model: Any = self.model
        self.resolved = model if isinstance(model, ResolvedModel) else resolve_model(model)
        self.model = self.resolved.spec
        self.tokenizer = load_tokenizer(self.resolved)
        # A model without its own template gets the documented plain one, exactly as fine-tuning does.
        self.plain_template = ensure_chat_template(self.tokenizer)

    @property
    def fingerprint(self) -> str:
        """The model's weight fingerprint (see :func:`selectbench.models.spec.resolve_model`)."""
        return self.resolved.fingerprint

    @cached_property
    def stop_ids(self) -> frozenset[int]:
        """End-of-turn tokens: the tokenizer's EOS and the model's ``generation_config`` EOS ids. Both engines stop
        on exactly this set, so their greedy outputs are comparable. (Looked up when first needed: scoring losses
        does not need a stop token.)"""
        ids: set[int] = set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        config = Path(self.resolved.path) / "generation_config.json"
        if config.is_file():
            eos = json.loads(config.read_text()).get("eos_token_id")
            for token in eos if isinstance(eos, list) else [eos]:
                if token is not None:
                    ids.add(int(token))
        if not ids:
            raise SelectbenchError(
                f"model {self.resolved.path}: its tokenizer has no EOS token, so generation could not stop"
            )
        return frozenset(ids)

    def pad_id(self) -> int:
        """The padding token: the tokenizer's, else the smallest stop token."""
        pad = self.tokenizer.pad_token_id
        return int(pad) if pad is not None else min(self.stop_ids)

    def prompt_ids(self, conversation: Conversation) -> list[int]:
        """The token ids that ask for the next assistant turn (chat template, no extra special tokens: the template
        places them, as ``apply_chat_template(tokenize=True)`` does during fine-tuning)."""
        from selectbench.models.chat import render_prompt

        text = render_prompt(self.tokenizer, list(conversation))
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def text_ids(self, texts_or_ids: Texts) -> list[list[int]]:
        """Token ids per item: a text is tokenised with the tokenizer's special tokens; an id list is kept."""
        out = []
        for item in texts_or_ids:
            ids = self.tokenizer(item)["input_ids"] if isinstance(item, str) else [int(t) for t in item]
            if not ids:
                raise SelectbenchError(f"{self.name} engine: cannot embed an empty sequence (item {len(out)})")
            out.append(ids)
        return out

    def cut(self, ids: Sequence[int]) -> list[int]:
        """Completion ids up to (not including) the first stop token."""
        out = []
        for token in ids:
            if token in self.stop_ids:
                break
            out.append(int(token))
        return out

    def template_info(self) -> dict[str, Any]:
        """How prompts are built and cut, for ``describe()``: the chat template used and the stop tokens."""
        return {"plain_chat_template": self.plain_template, "stop_token_ids": sorted(self.stop_ids)}

    def decode(self, ids: Sequence[int]) -> str:
        """Completion text; both engines decode ids with this same call, so equal ids give equal text."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def generate_ids(
        self, prompts: Sequence[Sequence[int]], decoding: Decoding, adapter: str | None = None
    ) -> list[list[list[int]]]:
        """``decoding.n`` completion id lists per prompt (stop token removed)."""
        raise NotImplementedError

    def first_token_logprobs(
        self, prompts: Sequence[Sequence[int]], token_ids: list[int], adapter: str | None = None
    ) -> list[list[float]]:
        """Log-probabilities of ``token_ids`` right after each prompt."""
        raise NotImplementedError

    def generate(
        self, conversations: Sequence[Conversation], decoding: Decoding, *, adapter: str | None = None
    ) -> list[list[str]]:
        """One list of ``decoding.n`` completions per conversation (see :class:`~.base.Generator`)."""
        adapter_path = checked_adapter(adapter)
        prompts = [self.prompt_ids(c) for c in conversations]
        ids = self.generate_ids(prompts, decoding, adapter_path)
        return [[self.decode(c) for c in per_prompt] for per_prompt in ids]

    def next_token_logprobs(
        self, conversations: Sequence[Conversation], token_ids: Sequence[int], *, adapter: str | None = None
    ) -> list[list[float]]:
        """Log-probabilities of each of ``token_ids`` as the first token of the assistant turn, per conversation
        (how a local judge's verdict is read from its next-token distribution)."""
        adapter_path = checked_adapter(adapter)
        prompts = [self.prompt_ids(c) for c in conversations]
        return self.first_token_logprobs(prompts, [int(t) for t in token_ids], adapter_path)
