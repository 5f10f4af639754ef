"""Resolve model specs and load tokenizers and models, with clear errors when something is missing."""

from __future__ import annotations

from typing import Any

from selectbench.errors import SelectbenchError


def load_tokenizer(spec: str) -> Any:
    """The tokenizer of a model spec (a local folder or a Hugging Face id)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(spec)
    except (OSError, ValueError) as err:
        raise SelectbenchError(f"could not load a tokenizer from {spec!r}: {err}") from None
