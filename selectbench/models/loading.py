"""Load tokenizers and models from model specs, with clear errors when something is missing."""

from __future__ import annotations

from typing import Any

from selectbench.errors import SelectbenchError
from selectbench.models.spec import resolve_model


def load_tokenizer(spec: str) -> Any:
    """The tokenizer of a model spec (alias, local folder, .gguf file or Hugging Face id)."""
    from transformers import AutoTokenizer

    resolved = resolve_model(spec)
    try:
        return AutoTokenizer.from_pretrained(resolved.path)
    except (OSError, ValueError) as err:
        raise SelectbenchError(f"could not load a tokenizer from {spec!r}: {err}") from None


def load_causal_lm(spec: str, *, dtype: str = "float32", device: str | None = None) -> Any:
    """A causal LM from a model spec, in eval mode, on ``device`` (default: CUDA if available, else CPU)."""
    import torch
    from transformers import AutoModelForCausalLM

    resolved = resolve_model(spec)
    try:
        model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=getattr(torch, dtype))
    except (OSError, ValueError) as err:
        raise SelectbenchError(f"could not load a causal language model from {spec!r}: {err}") from None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval()
