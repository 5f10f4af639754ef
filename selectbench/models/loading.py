"""Load tokenizers and models from model specs, with clear errors when something is missing."""

from __future__ import annotations

from typing import Any

from selectbench.errors import SelectbenchError
from selectbench.models.spec import ResolvedModel, resolve_model


def _resolved(spec: str | ResolvedModel) -> ResolvedModel:
    return spec if isinstance(spec, ResolvedModel) else resolve_model(spec)


def load_tokenizer(spec: str | ResolvedModel) -> Any:
    """The tokenizer of a model spec (alias, local folder, .gguf file or Hugging Face id) or a resolved spec."""
    from transformers import AutoTokenizer

    resolved = _resolved(spec)
    try:
        return AutoTokenizer.from_pretrained(resolved.path)
    except (OSError, ValueError) as err:
        raise SelectbenchError(f"could not load a tokenizer from {resolved.spec!r}: {err}") from None


def load_causal_lm(spec: str | ResolvedModel, *, dtype: str = "float32", device: str | None = None) -> Any:
    """A causal LM from a model spec (or a resolved one), in eval mode, on ``device`` (default: CUDA if available,
    else CPU)."""
    import torch
    from transformers import AutoModelForCausalLM

    resolved = _resolved(spec)
    try:
        model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=getattr(torch, dtype))
    except (OSError, ValueError) as err:
        raise SelectbenchError(f"could not load a causal language model from {resolved.spec!r}: {err}") from None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval()
