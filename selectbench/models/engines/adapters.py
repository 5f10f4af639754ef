"""LoRA adapters as engines take them: the folder check, the content fingerprint, and vLLM's request id."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from selectbench.errors import SelectbenchError


def check_adapter(adapter: str | os.PathLike[str]) -> Path:
    """An adapter folder as written by PEFT (``adapter_config.json`` inside), or a clear error."""
    path = Path(adapter).expanduser()
    if not path.is_dir():
        raise SelectbenchError(
            f"adapter {str(adapter)!r}: no such folder; pass the folder that `selectbench finetune` wrote "
            "(it holds adapter_config.json)"
        )
    if not (path / "adapter_config.json").is_file():
        raise SelectbenchError(
            f"adapter {str(adapter)!r}: folder has no adapter_config.json (not a PEFT LoRA adapter); a fully "
            "fine-tuned checkpoint is passed as --model instead"
        )
    return path.resolve()


def checked_adapter(adapter: str | os.PathLike[str] | None) -> str | None:
    """The adapter's resolved folder as a string (None stays None): the key engines serve it under."""
    return None if adapter is None else str(check_adapter(adapter))


def adapter_fingerprint(adapter: str | os.PathLike[str] | None) -> str | None:
    """Content fingerprint of an adapter folder (None for the base model)."""
    if adapter is None:
        return None
    from selectbench.models.spec import folder_fingerprint

    return folder_fingerprint(check_adapter(adapter))


def adapter_rank(adapter: str | os.PathLike[str]) -> int:
    """The LoRA rank ``r`` in the adapter's ``adapter_config.json`` (0 if absent)."""
    return int(json.loads((Path(adapter) / "adapter_config.json").read_text()).get("r", 0))


def lora_id(adapter: str) -> int:
    """vLLM's id for an adapter: a unique positive int, derived from the path so it is stable across calls."""
    return int(hashlib.sha256(adapter.encode()).hexdigest()[:7], 16) + 1


def lora_request(adapter: str | None) -> Any:
    """A ``vllm.lora.request.LoRARequest`` for the adapter folder (None for the base model)."""
    if adapter is None:
        return None
    from vllm.lora.request import LoRARequest

    return LoRARequest(adapter, lora_id(adapter), adapter)
