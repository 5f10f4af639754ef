"""The SCAR style ranker (``StyleRanker``), its checkpoint layout (official-compatible), strict loading and scoring.

Imports torch at module level: import this module only where a ranker is actually built or loaded.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from selectbench.errors import SelectbenchError

MODEL_TYPE = "style_ranker"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "pytorch_model.bin"
SAFETENSORS_FILE = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model")
DEFAULT_LINEAR_DIM = 512  # every released SCAR checkpoint uses L = 512
# What a hub checkpoint needs: the config, the weights, the tokenizer files (never the duplicate safetensors).
HUB_PATTERNS = ["*.json", WEIGHTS_FILE, "*.txt", "*.model"]


class StyleRanker(nn.Module):
    """SCAR's ranker: one shared encoder embeds the instruction and the answer separately; two MLP heads.

    * e(text): the encoder's ``pooler_output`` if it has one, else the first (CLS) token state.
    * v_p (presentation): masked max-pool over the answer's last hidden states.
    * v_c (composition / instructional surprisal): ``relation_network([e(instruction); e(answer)])``,
      Linear(2H->L) -> ReLU -> Linear(L->H).
    * score: ``output_layer([v_c; v_p])``, Linear(2H->L) -> ReLU -> Linear(L->1); unbounded.

    Module names (``encoder``, ``relation_network``, ``output_layer``) match the official checkpoints.

    Args:
        encoder: a transformers encoder (``AutoModel``) whose ``config.hidden_size`` is ``hidden_dim``.
        hidden_dim: H, the encoder width.
        linear_dim: L, the width of both MLPs' hidden layer.
        encoder_name: the encoder's model spec, recorded in the checkpoint config.
    """

    def __init__(self, encoder: nn.Module, hidden_dim: int, linear_dim: int, encoder_name: str) -> None:
        super().__init__()
        width = getattr(getattr(encoder, "config", None), "hidden_size", hidden_dim)
        if width != hidden_dim:
            raise SelectbenchError(
                f"ranker hidden_dim is {hidden_dim} but encoder {encoder_name!r} has hidden_size {width}; "
                "hidden_dim must be the encoder's width"
            )
        self.encoder = encoder
        self.hidden_dim = hidden_dim
        self.linear_dim = linear_dim
        self.encoder_name = encoder_name
        self.relation_network = nn.Sequential(
            nn.Linear(2 * hidden_dim, linear_dim), nn.ReLU(), nn.Linear(linear_dim, hidden_dim)
        )
        self.output_layer = nn.Sequential(nn.Linear(2 * hidden_dim, linear_dim), nn.ReLU(), nn.Linear(linear_dim, 1))

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(e, last_hidden_state)`` of one batch of texts."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out.last_hidden_state
        pooled = getattr(out, "pooler_output", None)
        return (pooled if pooled is not None else hidden[:, 0]), hidden

    def forward(
        self,
        instruction_input_ids: torch.Tensor,
        instruction_attention_mask: torch.Tensor,
        answer_input_ids: torch.Tensor,
        answer_attention_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(score (B,), v_c (B, H), v_p (B, H))`` for a batch of (instruction, answer) pairs."""
        e_instruction, _ = self.embed(instruction_input_ids, instruction_attention_mask)
        e_answer, answer_hidden = self.embed(answer_input_ids, answer_attention_mask)
        # -1e9 as in the reference; clamped to the dtype's range so half precision does not overflow.
        fill = max(-1e9, torch.finfo(answer_hidden.dtype).min)
        padding = answer_attention_mask.unsqueeze(-1) == 0
        v_p = answer_hidden.masked_fill(padding, fill).max(dim=1).values
        v_c = self.relation_network(torch.cat([e_instruction, e_answer], dim=-1))
        score = self.output_layer(torch.cat([v_c, v_p], dim=-1)).view(-1)  # view(-1): a batch of one stays 1-D
        return score, v_c, v_p

    def checkpoint_config(self) -> dict[str, Any]:
        """The ``config.json`` of this ranker: the official fields plus the encoder's own config (so a saved
        checkpoint rebuilds its encoder with no network)."""
        return {
            "model_type": MODEL_TYPE,
            "architectures": ["StyleRanker"],
            "encoder_name": self.encoder_name,
            "hidden_dim": self.hidden_dim,
            "linear_dim": self.linear_dim,
            "encoder_config": self.encoder.config.to_dict(),
        }


@dataclass
class LoadedRanker:
    """A ranker ready to score: the model (eval mode), its tokenizer, where it came from, and a fingerprint."""

    model: StyleRanker
    tokenizer: Any
    folder: Path
    fingerprint: str
    config: dict[str, Any]
    device: str
    ignored_buffers: list[str]


def pick_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else is passed through."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def new_ranker(
    encoder_spec: str, *, linear_dim: int = DEFAULT_LINEAR_DIM, trust_remote_code: bool = False
) -> tuple[StyleRanker, Any]:
    """A fresh ranker on a pretrained encoder (heads randomly initialised) and the encoder's tokenizer."""
    from transformers import AutoModel, AutoTokenizer

    from selectbench.models.spec import resolve_model

    resolved = resolve_model(encoder_spec)
    try:
        encoder = AutoModel.from_pretrained(resolved.path, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(resolved.path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise SelectbenchError(f"could not load encoder {encoder_spec!r}: {_first_line(err)}") from None
    ranker = StyleRanker(encoder, encoder.config.hidden_size, linear_dim, encoder_spec)
    return ranker, tokenizer


def save_ranker(model: StyleRanker, tokenizer: Any, folder: str | os.PathLike[str], **extra: Any) -> Path:
    """Write a checkpoint in the official layout: ``config.json``, ``pytorch_model.bin`` and the tokenizer files.

    Every file is written under a temporary name and renamed into place. ``extra`` keys are added to the config.
    """
    from selectbench.io import write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = folder / f".{WEIGHTS_FILE}.{os.getpid()}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, folder / WEIGHTS_FILE)
    tokenizer.save_pretrained(folder)
    write_json(folder / CONFIG_FILE, {**model.checkpoint_config(), **extra})
    return folder


def ranker_folder(spec: str | os.PathLike[str]) -> Path:
    """A local checkpoint folder for ``spec``: the folder itself, or a Hugging Face id downloaded through the hub
    cache (needs network unless already cached)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    text = str(spec)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise SelectbenchError(
            f"ranker {text!r}: not a checkpoint folder and not a Hugging Face id (owner/name). Pass a folder "
            "written by `selectbench scar train`, or an official checkpoint such as lizhuang144/scar-gte-base"
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=text, allow_patterns=HUB_PATTERNS))
    except Exception as err:  # the hub raises many types (offline, 404, auth); all mean the same to the user
        raise SelectbenchError(
            f"ranker {text!r}: could not fetch it from the Hugging Face hub ({_first_line(err)}). Without network, "
            "pass a local checkpoint folder (ranker=DIR) or leave ranker unset for the bundled-data ranker"
        ) from None


def load_ranker(
    spec: str | os.PathLike[str], *, device: str = "auto", trust_remote_code: bool = False
) -> LoadedRanker:
    """Load a ranker checkpoint strictly: every learned weight must be in the file and every key in the file must
    belong to the model (the reference loads with ``strict=False``, which leaves random layers on a mismatch).

    Buffers that transformers recomputes at construction (``position_ids``, ``token_type_ids``) are the only keys
    allowed to be absent or extra: they hold no learned values and their persistence differs across versions.

    Args:
        spec: a checkpoint folder or a Hugging Face id (official: ``lizhuang144/scar-gte-base``, ...).
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda``, ...
        trust_remote_code: allow the encoder's own modelling code from the hub (the gte encoders need it).

    Raises:
        SelectbenchError: the folder is not a style-ranker checkpoint, or its weights do not match the model.
    """
    from selectbench.models.spec import folder_fingerprint

    folder = ranker_folder(spec)
    config = read_ranker_config(folder)
    model = _build_skeleton(config, trust_remote_code=trust_remote_code)
    state = _read_state(folder)
    ignored = _check_keys(model, state, folder)
    state = {k: v for k, v in state.items() if k not in ignored}
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise SelectbenchError(f"ranker {folder}: weights do not fit the model: {_first_line(err)}") from None
    tokenizer = _load_tokenizer(folder, config, trust_remote_code)
    chosen = pick_device(device)
    model.to(chosen).eval()
    return LoadedRanker(model, tokenizer, folder, folder_fingerprint(folder), config, chosen, sorted(ignored))


def read_ranker_config(folder: Path) -> dict[str, Any]:
    """The checkpoint's ``config.json``, checked to be a style ranker with the official fields."""
    path = folder / CONFIG_FILE
    if not path.exists():
        raise SelectbenchError(f"ranker {folder}: no {CONFIG_FILE} (not a style-ranker checkpoint folder)")
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("model_type") != MODEL_TYPE:
        raise SelectbenchError(
            f"ranker {folder}: config.json has model_type {config.get('model_type')!r}, expected {MODEL_TYPE!r}"
        )
    missing = [k for k in ("encoder_name", "hidden_dim", "linear_dim") if k not in config]
    if missing:
        raise SelectbenchError(f"ranker {folder}: config.json lacks {', '.join(missing)}")
    return config


def _build_skeleton(config: dict[str, Any], *, trust_remote_code: bool) -> StyleRanker:
    """The model with the checkpoint's architecture; every weight is overwritten by the checkpoint."""
    from transformers import AutoConfig, AutoModel

    name = config["encoder_name"]
    encoder_config = dict(config.get("encoder_config") or {})
    try:
        if encoder_config and "auto_map" not in encoder_config:
            encoder_cfg = AutoConfig.for_model(encoder_config.pop("model_type"), **encoder_config)
        else:
            from selectbench.models.spec import resolve_model

            encoder_cfg = AutoConfig.from_pretrained(resolve_model(name).path, trust_remote_code=trust_remote_code)
        encoder = AutoModel.from_config(encoder_cfg, trust_remote_code=trust_remote_code)
    except ValueError as err:
        hint = "" if trust_remote_code else "; if the encoder needs its own code (gte), pass trust_remote_code=true"
        raise SelectbenchError(f"could not build the ranker's encoder {name!r}: {_first_line(err)}{hint}") from None
    except OSError as err:
        raise SelectbenchError(
            f"could not fetch the config of the ranker's encoder {name!r}: {_first_line(err)}"
        ) from None
    return StyleRanker(encoder, int(config["hidden_dim"]), int(config["linear_dim"]), name)


def _read_state(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / WEIGHTS_FILE).exists():
        try:
            return torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        except Exception as err:  # a truncated or foreign file: say which file
            raise SelectbenchError(f"ranker {folder}: cannot read {WEIGHTS_FILE}: {_first_line(err)}") from None
    if (folder / SAFETENSORS_FILE).exists():
        from safetensors.torch import load_file

        return load_file(folder / SAFETENSORS_FILE)
    raise SelectbenchError(f"ranker {folder}: no {WEIGHTS_FILE} (or {SAFETENSORS_FILE}) with the ranker's weights")


def _check_keys(model: StyleRanker, state: dict[str, torch.Tensor], folder: Path) -> set[str]:
    """Raise on any missing or unexpected learned key; return the recomputed-buffer keys to ignore."""
    expected = set(model.state_dict())
    buffers = {name for name, _ in model.named_buffers()}
    missing = sorted(k for k in expected - set(state) if k not in buffers)
    unexpected = sorted(k for k in set(state) - expected if k not in buffers)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(
                f"missing {len(missing)} key(s): {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}"
            )
        if unexpected:
            more = " ..." if len(unexpected) > 8 else ""
            parts.append(f"unexpected {len(unexpected)} key(s): {', '.join(unexpected[:8])}{more}")
        raise SelectbenchError(
            f"ranker {folder}: {WEIGHTS_FILE} does not match a StyleRanker on encoder {model.encoder_name!r} "
            f"({'; '.join(parts)}). Loading is strict so that no layer is silently left random; the checkpoint "
            "is incomplete or was written for another architecture"
        )
    return (set(state) - expected) & buffers


def _load_tokenizer(folder: Path, config: dict[str, Any], trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    source = str(folder)
    if not any((folder / name).exists() for name in TOKENIZER_FILES):
        from selectbench.models.spec import resolve_model

        source = resolve_model(config["encoder_name"]).path
    from transformers.utils import logging

    # AutoTokenizer reads config.json to guess the tokenizer class and warns that "style_ranker" is no transformers
    # model type; the tokenizer files name their class, so the warning is noise.
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise SelectbenchError(f"ranker {folder}: could not load its tokenizer: {_first_line(err)}") from None
    finally:
        logging.set_verbosity(verbosity)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ---------------------------------------------------------------------------------------------- scoring


def tokenize_texts(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each text on its own, truncated to ``max_length`` (special tokens included), unpadded."""
    return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]


def pad_batch(tokenizer: Any, ids: list[list[int]], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of a batch padded to its longest member (the tokenizer's pad side)."""
    padded = tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
    return padded["input_ids"].to(device), padded["attention_mask"].to(device)


def batch_order(instruction_ids: list[list[int]], answer_ids: list[list[int]], *, sort_by_length: bool) -> list[int]:
    """The order in which to batch examples: longest answers first (then longest instructions), so each batch
    pads little; or the given order."""
    n = len(answer_ids)
    if not sort_by_length:
        return list(range(n))
    return sorted(range(n), key=lambda i: (-len(answer_ids[i]), -len(instruction_ids[i]), i))


@torch.inference_mode()
def score_tokenized(
    model: StyleRanker,
    tokenizer: Any,
    instruction_ids: list[list[int]],
    answer_ids: list[list[int]],
    *,
    batch_size: int = 32,
    sort_by_length: bool = True,
    device: str = "cpu",
    progress: Any = None,
) -> np.ndarray:
    """Ranker scores of pre-tokenised pairs, in input order (eval mode: no dropout)."""
    was_training = model.training
    model.eval()
    order = batch_order(instruction_ids, answer_ids, sort_by_length=sort_by_length)
    scores = np.empty(len(order), dtype=np.float64)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        ins = pad_batch(tokenizer, [instruction_ids[i] for i in chunk], device)
        ans = pad_batch(tokenizer, [answer_ids[i] for i in chunk], device)
        score, _, _ = model(ins[0], ins[1], ans[0], ans[1])
        scores[chunk] = score.float().cpu().numpy()
        if progress is not None:
            progress.update(len(chunk))
    model.train(was_training)
    return scores


def score_pairs(
    model: StyleRanker,
    tokenizer: Any,
    instructions: list[str],
    answers: list[str],
    *,
    batch_size: int = 32,
    max_length: int = 512,
    sort_by_length: bool = True,
    device: str = "cpu",
    progress: bool = False,
) -> np.ndarray:
    """Score (instruction, answer) pairs: tokenise each text separately (truncated to ``max_length``), batch by
    length, and return one float per pair in input order."""
    if len(instructions) != len(answers):
        raise ValueError(f"{len(instructions)} instructions but {len(answers)} answers")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(answers), unit="ex", desc="scar scoring", file=sys.stderr, mininterval=1.0)
    try:
        return score_tokenized(
            model,
            tokenizer,
            tokenize_texts(tokenizer, instructions, max_length),
            tokenize_texts(tokenizer, answers, max_length),
            batch_size=batch_size,
            sort_by_length=sort_by_length,
            device=device,
            progress=bar,
        )
    finally:
        if bar is not None:
            bar.close()


def ranker_instruction(instruction: str, input_: str = "") -> str:
    """The instruction text the ranker sees: the instruction, with any input after ``### Input:`` (the layout of
    SCAR's own training data, which embeds Alpaca inputs that way); no template otherwise."""
    return f"{instruction}\n\n### Input:\n{input_}" if input_.strip() else instruction


__all__ = [
    "LoadedRanker",
    "StyleRanker",
    "load_ranker",
    "new_ranker",
    "ranker_instruction",
    "save_ranker",
    "score_pairs",
]
